"""`lfads sample` and `lfads evaluate`: commands on trained runs and their output files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lfads_lightning.cli.common import TRACKING_URI_HELP_NO_CONFIG, add_command, add_tracking_uri
from lfads_lightning.errors import ConfigError, DataError, LfadsError


def cmd_sample(args: argparse.Namespace) -> int:
    """Posterior-sample a run's model (or a checkpoint file) on its data or on new trials."""
    import tempfile

    run_id = args.run_id or args.run
    if bool(run_id) == bool(args.checkpoint):
        raise ConfigError("give either a run id (lfads sample RUN) or --checkpoint CKPT.ckpt")
    if args.data and not Path(args.data).is_file():
        raise DataError(f"data file not found: {args.data}; pass an existing HDF5 file of trials")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, ckpt, name, meta = (
            _run_checkpoint(args, run_id, tmp) if run_id else _file_checkpoint(args)
        )
        n_samples = args.n_samples or cfg.output.n_samples
        if args.data:
            written = [_sample_data(args, cfg, ckpt, name, n_samples, meta)]
        else:
            out_dir = Path(args.out or Path(cfg.output.dir) / name / "resampled")
            written = sample_checkpoint(cfg, ckpt, out_dir, n_samples, meta)
    for path in written:
        print(f"lfads: wrote {path}", file=sys.stderr)
    return 0


def _run_checkpoint(args: argparse.Namespace, run_id: str, tmp: str) -> tuple:
    """(config, checkpoint file, output name, attrs) of a run: its model's best checkpoint."""
    from lfads_lightning.runs import tracking
    from lfads_lightning.worker.resample import model_run
    from lfads_lightning.worker.setup import load_run_config

    uri = tracking.resolve_uri(args.tracking_uri)
    _check_run_exists(uri, run_id)
    tracking.check_store(uri, create=False)
    client = tracking.client(uri)
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise LfadsError(
            f"MLflow run {run_id} not found in {uri}; check the run id and MLFLOW_TRACKING_URI"
        ) from None
    model, artifact = model_run(client, run_id)
    cfg = load_run_config(client, model)
    ckpt = client.download_artifacts(model, artifact, tmp)
    if model != run_id:
        print(f"lfads: sampling run {run_id}'s best member {model} ({artifact})", file=sys.stderr)
    meta = {"mlflow_run_id": run_id, "lfads_model_run": model, "lfads_checkpoint": artifact}
    return cfg, ckpt, run_id, meta


def _file_checkpoint(args: argparse.Namespace) -> tuple:
    from lfads_lightning.cli.common import resolve_paths
    from lfads_lightning.config import LfadsConfig, load_config

    if not args.config and not args.data:
        raise ConfigError("--checkpoint needs --config CONFIG.yaml (the data) or --data NEW.h5")
    cfg = resolve_paths(load_config(args.config, [])) if args.config else LfadsConfig()
    if not Path(args.checkpoint).is_file():
        raise DataError(f"checkpoint not found: {args.checkpoint}; pass an existing .ckpt file")
    meta = {"lfads_checkpoint": str(Path(args.checkpoint).resolve())}
    return cfg, args.checkpoint, Path(args.checkpoint).stem, meta


def _sample_data(
    args: argparse.Namespace, cfg: Any, ckpt: str, name: str, n_samples: int, meta: dict
) -> Path:
    """`--data NEW.h5`: the trials checked against the model, sampled, written to --out."""
    from lfads_lightning.data.infer import sha256
    from lfads_lightning.worker.checkpoint import load_module
    from lfads_lightning.worker.resample import data_tag, sample_trials
    from lfads_lightning.worker.setup import set_threads

    set_threads(cfg.train.threads)
    out = Path(args.out) if args.out else Path(cfg.output.dir) / name / "samples"
    if out.suffix not in (".h5", ".hdf5"):
        out = out / f"lfads_output_{data_tag(args.data, sha256(args.data))}.h5"
    if out.resolve() == Path(args.data).resolve():
        raise ConfigError(f"--out {out} is the --data file itself; choose another output path")
    module = load_module(ckpt, map_location="cpu")
    return sample_trials(module, args.data, out, n_samples, args.session, meta, cfg.data.batch_size)


def _check_run_exists(uri: str, run_id: str) -> None:
    """An unknown run id is answered at once, without the seconds MLflow takes to import."""
    from lfads_lightning.runs import fastread, tracking

    missing = f"MLflow run {run_id} not found in {uri}; check the run id and --tracking-uri / MLFLOW_TRACKING_URI"
    tracking.require_existing(uri)
    if fastread.supported(uri):
        try:
            if fastread.get_run(uri, run_id) is None:
                raise LfadsError(missing)
        except fastread.FastReadUnavailable:
            pass


def sample_checkpoint(
    cfg: Any, ckpt: str, out_dir: Path, n_samples: int, meta: dict | None = None
) -> list[Path]:
    from lfads_lightning.worker.checkpoint import load_module
    from lfads_lightning.worker.sampling import sample_all, write_output
    from lfads_lightning.worker.setup import datamodule_for, set_threads

    set_threads(cfg.train.threads)
    dm = datamodule_for(cfg)
    module = load_module(ckpt, map_location="cpu")
    outputs = sample_all(module, dm, n_samples)
    return [
        write_output(
            out_dir / f"lfads_output_{Path(s.path).stem}.h5",
            s.path,
            per_split,
            {"n_samples": n_samples, **(meta or {})},
        )
        for s, per_split in zip(dm.sessions, outputs, strict=True)
    ]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """NLB metrics of a run's outputs (logged to it under eval/) or of one output file."""

    from lfads_lightning.runs import tracking

    target = args.target
    as_file = target.endswith((".h5", ".hdf5")) or Path(target).exists()
    if not as_file:  # an unknown run id is answered before the heavy imports
        _check_run_exists(tracking.resolve_uri(args.tracking_uri), target)
    from lfads_lightning.evaluation import evaluate

    fig_dir = Path(args.figures_dir) if args.figures_dir else None
    if as_file:
        result = evaluate.evaluate_output(target, args.psth_sd_ms)
        name = Path(target).stem
        if not args.no_figures:
            out = fig_dir or Path(target).resolve().parent / "eval_figures"
            result.figures = evaluate.make_figures(target, out, name)
        results, logged = [result], False
        uri = tracking.resolve_uri(args.tracking_uri)
        # Logged to the file's run only if its store exists: this never creates one.
        if not args.no_log and result.run_id and tracking.store_exists(uri):
            tracking.check_store(uri, create=False)
            logged = evaluate.log_file_evaluation(tracking.client(uri), result)
    else:
        uri = tracking.resolve_uri(args.tracking_uri)
        tracking.check_store(uri, create=False)
        results = evaluate.evaluate_run(
            tracking.client(uri),
            target,
            fig_dir or Path("lfads_output") / target / "eval_figures",
            args.psth_sd_ms,
            log=not args.no_log,
            figures=not args.no_figures,
        )
        logged = not args.no_log
    _print_evaluations(results, args.json)
    where = (
        f"run {results[0].run_id} (metrics {results[0].prefix}...)" if logged else _nowhere(args)
    )
    print(f"lfads: evaluation logged to {where}", file=sys.stderr)
    return 0


def _print_evaluations(results: list, as_json: bool) -> None:
    import json

    if as_json:
        payload = [
            {
                "path": str(r.path),
                "run_id": r.run_id,
                "metrics": r.metrics,
                "figures": [str(p) for p in r.figures],
            }
            for r in results
        ]
        print(json.dumps(payload, indent=2))
        return
    from lfads_lightning.evaluation.tables import metrics_table

    for r in results:
        print(f"{r.path}" + (f"  (run {r.run_id})" if r.run_id else ""))
        print(metrics_table(r.metrics))
        for p in r.figures:
            print(f"figure: {p}")


def _nowhere(args: argparse.Namespace) -> str:
    if args.no_log:
        return "nowhere (--no-log)"
    return "nowhere (printed only: the file names no run of this tracking store)"


def _add_sample(sub: argparse._SubParsersAction) -> None:
    sample = add_command(
        sub,
        "sample",
        "posterior-sample a trained model (its data, or new trials) into HDF5",
        "Posterior-sample a trained model: a run's best checkpoint (a fit run; a PBT member;\n"
        "a PBT/search parent = its best member, the best so far while it runs), or a\n"
        "checkpoint file. Without --data: the run's own data, one lfads_output_<data>.h5 per\n"
        "data file. With --data NEW.h5: a file holding only the trials to infer (encod_data;\n"
        "optional recon_data, behavior, cond_idx), checked against the model's neurons and\n"
        "bins; the output records the run and the file's sha256, so `lfads evaluate FILE`\n"
        "logs its metrics to that run as eval/<data>-<sha8>/...",
        [
            "lfads sample RUN --data new_trials.h5 --out new_rates.h5",
            "lfads sample PBT_PARENT --data new_trials.h5",
            "lfads sample --checkpoint best.ckpt --config configs/lorenz.yaml --out resampled/",
        ],
        "docs/usage.md",
    )
    sample.add_argument(
        "run_id", nargs="?", metavar="RUN", help="a fit run, a PBT member or a PBT/search parent"
    )
    sample.add_argument("--run", metavar="RUN_ID", help="the same as RUN (kept for old scripts)")
    sample.add_argument("--checkpoint", metavar="CKPT", help="a .ckpt file instead of a run")
    sample.add_argument(
        "--config", metavar="CONFIG.yaml", help="with --checkpoint: the config naming the data"
    )
    sample.add_argument(
        "--data",
        metavar="NEW.h5",
        help="an HDF5 file of the trials to infer (encod_data [trials, bins, held-in neurons])",
    )
    sample.add_argument(
        "--session",
        type=int,
        default=0,
        metavar="N",
        help="with --data and a multi-session model: the session (readin) the trials are from",
    )
    sample.add_argument(
        "--n-samples",
        type=int,
        metavar="N",
        help="posterior samples per trial (default: the run's output.n_samples)",
    )
    sample.add_argument(
        "--out",
        metavar="FILE|DIR",
        help="with --data: the output file (default <output.dir>/<run>/samples/"
        "lfads_output_<data>-<sha8>.h5); else the output directory (default "
        "<output.dir>/<run or checkpoint name>/resampled)",
    )
    add_tracking_uri(sample, TRACKING_URI_HELP_NO_CONFIG)
    sample.set_defaults(func=cmd_sample)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = add_command(
        sub,
        "evaluate",
        "NLB metrics (co-bps, fp-bps, vel R2, psth R2, rate R2) of a run or an output file",
        "Neural Latents Benchmark metrics of posterior-sampled outputs, as a table per split:\n"
        "co-bps, fp-bps, vel R2, psth R2, rate R2 (synthetic data) and bits/spike.\n"
        "Given a run id, evaluates its outputs/*.h5 and logs eval/... metrics and\n"
        "eval_figures/ to it (a PBT parent: its best member's outputs). Given an output file,\n"
        "prints the metrics and logs them to the run recorded in the file if it is in the store.",
        [
            "lfads evaluate RUN",
            "lfads evaluate lfads_output/RUN/lfads_output_lorenz.h5 --no-log",
            "lfads evaluate RUN --json --no-figures",
        ],
        "docs/evaluate.md",
    )
    ev.add_argument("target", metavar="RUN_ID|OUTPUT.h5", help="a run id or an output file")
    add_tracking_uri(ev, TRACKING_URI_HELP_NO_CONFIG)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    ev.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    ev.add_argument("--no-figures", action="store_true", help="make no figures")
    ev.add_argument(
        "--figures-dir",
        metavar="DIR",
        help="where to write the PNG figures (default: lfads_output/RUN/eval_figures, or "
        "eval_figures/ next to the file)",
    )
    ev.add_argument(
        "--psth-sd-ms",
        type=float,
        default=50.0,
        metavar="MS",
        help="Gaussian sd in ms for the true PSTHs (NLB uses 50)",
    )
    ev.set_defaults(func=cmd_evaluate)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_sample(sub)
    _add_evaluate(sub)

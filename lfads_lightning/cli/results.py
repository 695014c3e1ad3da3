"""`lfads sample` and `lfads evaluate`: commands on trained runs and their output files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lfads_lightning.cli.common import TRACKING_URI_HELP_NO_CONFIG, add_command, add_tracking_uri
from lfads_lightning.errors import ConfigError, DataError, LfadsError


def cmd_sample(args: argparse.Namespace) -> int:
    """Posterior-sample an existing run's best checkpoint (or a checkpoint file) again."""
    import tempfile

    from lfads_lightning.cli.common import resolve_paths
    from lfads_lightning.config import load_config
    from lfads_lightning.runs import tracking
    from lfads_lightning.worker.setup import load_run_config

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            uri = tracking.resolve_uri(args.tracking_uri)
            _check_run_exists(uri, args.run)
            tracking.check_store(uri, create=False)
            client = tracking.client(uri)
            try:
                client.get_run(args.run)
            except Exception:  # noqa: BLE001
                raise LfadsError(
                    f"MLflow run {args.run} not found in {uri}; check the run id and MLFLOW_TRACKING_URI"
                ) from None
            cfg = load_run_config(client, args.run)
            try:
                ckpt = client.download_artifacts(args.run, "checkpoints/best.ckpt", tmp)
            except Exception:  # noqa: BLE001
                raise LfadsError(
                    f"run {args.run} has no checkpoints/best.ckpt artifact (did it finish?)"
                ) from None
            name = args.run
        else:
            if not args.config:
                raise ConfigError("--checkpoint needs --config CONFIG.yaml for the data to sample")
            cfg = resolve_paths(load_config(args.config, []))
            ckpt = args.checkpoint
            if not Path(ckpt).is_file():
                raise DataError(f"checkpoint not found: {ckpt}; pass an existing .ckpt file")
            name = Path(ckpt).stem
        n_samples = args.n_samples or cfg.output.n_samples
        out_dir = Path(args.out or Path(cfg.output.dir) / name / "resampled")
        written = sample_checkpoint(cfg, ckpt, out_dir, n_samples)
    for path in written:
        print(f"lfads: wrote {path}", file=sys.stderr)
    return 0


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


def sample_checkpoint(cfg: Any, ckpt: str, out_dir: Path, n_samples: int) -> list[Path]:
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
            {"n_samples": n_samples},
        )
        for s, per_split in zip(dm.sessions, outputs, strict=True)
    ]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """NLB metrics of a run's outputs (logged to it under eval/) or of one output file."""
    import json

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
    if args.json:
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
    else:
        from lfads_lightning.evaluation.tables import metrics_table

        for r in results:
            print(f"{r.path}" + (f"  (run {r.run_id})" if r.run_id else ""))
            print(metrics_table(r.metrics))
            for p in r.figures:
                print(f"figure: {p}")
    where = f"run {results[0].run_id} (metrics eval/...)" if logged else "nowhere (printed only)"
    print(f"lfads: evaluation logged to {where}", file=sys.stderr)
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    sample = add_command(
        sub,
        "sample",
        "posterior-sample a trained model again into HDF5",
        "Posterior-sample a trained model again (e.g. with more samples): the best checkpoint\n"
        "of a finished run (--run), or a checkpoint file with a config naming the data. Writes\n"
        "one lfads_output_<data>.h5 per data file (input data + inferred rates, factors,\n"
        "inputs), ready for `lfads evaluate FILE`. Shows progress over samples x batches.",
        [
            "lfads sample --run RUN --n-samples 200",
            "lfads sample --checkpoint best.ckpt --config configs/lorenz.yaml --out resampled/",
        ],
        "docs/usage.md",
    )
    src = sample.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_ID", help="MLflow run id of a finished fit")
    src.add_argument("--checkpoint", metavar="CKPT", help="a .ckpt file (needs --config)")
    sample.add_argument(
        "--config", metavar="CONFIG.yaml", help="with --checkpoint: the config naming the data"
    )
    sample.add_argument(
        "--n-samples",
        type=int,
        metavar="N",
        help="posterior samples per trial (default: the run's output.n_samples)",
    )
    sample.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default: <output.dir>/<run or checkpoint name>/resampled)",
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

"""`lfads sample` and `lfads evaluate`: commands on trained runs and their output files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lfads_lightning.cli.common import add_tracking_uri
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

    from lfads_lightning.evaluation import evaluate
    from lfads_lightning.runs import tracking

    target = args.target
    as_file = target.endswith((".h5", ".hdf5")) or Path(target).exists()
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
        print(evaluate.format_table(results))
    where = f"run {results[0].run_id} (metrics eval/...)" if logged else "nowhere (printed only)"
    print(f"lfads: evaluation logged to {where}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sample = sub.add_parser("sample", help="posterior-sample a trained model again into HDF5")
    src = sample.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id of a finished fit")
    src.add_argument("--checkpoint", help="a .ckpt file (needs --config for the data)")
    sample.add_argument("--config", help="config whose data section names the files to sample")
    sample.add_argument(
        "--n-samples", type=int, help="posterior samples per trial (default: output.n_samples)"
    )
    sample.add_argument("--out", help="output directory")
    add_tracking_uri(sample)
    sample.set_defaults(func=cmd_sample)

    ev = sub.add_parser(
        "evaluate",
        help="NLB metrics (co-bps, fp-bps, vel R2, psth R2, rate R2) of a run or an output file",
        description="Given a run id, evaluates its outputs/*.h5 and logs eval/... metrics and "
        "eval_figures/ to it (a PBT parent: its best member's outputs). Given an output file, "
        "prints the metrics and logs them to the run recorded in the file if it is in the store.",
    )
    ev.add_argument("target", metavar="RUN_ID|OUTPUT.h5")
    add_tracking_uri(ev)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    ev.add_argument("--no-figures", action="store_true", help="make no figures")
    ev.add_argument("--figures-dir", help="where to write the PNG figures")
    ev.add_argument(
        "--psth-sd-ms", type=float, default=50.0, help="Gaussian sd for true PSTHs (NLB: 50)"
    )
    ev.set_defaults(func=cmd_evaluate)

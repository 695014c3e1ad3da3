"""`lfads` commands on data files and trained runs: sample, evaluate, data synth/nlb.

Kept apart from cli.py (parser, fit, pbt) so each file stays one screenful of concerns; heavy
imports stay inside the commands, as there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, LfadsError


def cmd_sample(args: argparse.Namespace) -> int:
    """Posterior-sample an existing run's best checkpoint (or a checkpoint file) again."""
    import tempfile

    from . import tracking
    from .cli import resolve_paths
    from .config import load_config
    from .training import load_run_config

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            uri = tracking.resolve_uri(args.tracking_uri)
            tracking.check_store(uri)
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
    from .module import LfadsModule
    from .sampling import sample_all, write_output
    from .training import datamodule_for, set_threads

    set_threads(cfg.train.threads)
    dm = datamodule_for(cfg)
    module = LfadsModule.load_from_checkpoint(ckpt, map_location="cpu")
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


def _parse_params(items: list[str]) -> dict[str, Any]:
    from .config import parse_override

    params = {}
    for item in items:
        path, value = parse_override(item)
        params["_".join(path)] = value
    return params


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .synth import make_dataset

    try:
        path = make_dataset(
            args.kind,
            args.out,
            seed=args.seed,
            overwrite=args.overwrite,
            **_parse_params(args.params),
        )
    except TypeError as err:
        raise ConfigError(f"bad generator parameter for {args.kind}: {err}") from None
    print(f"lfads: wrote {path}", file=sys.stderr)
    return 0


def cmd_data_nlb(args: argparse.Namespace) -> int:
    if str(args.src).endswith(".nwb"):
        from .nwb import convert_nlb_nwb

        path = convert_nlb_nwb(
            Path(args.src),
            args.out,
            align=args.align,
            valid_every=args.valid_every,
            overwrite=args.overwrite,
        )
    else:
        from .nlb import convert_nlb_tensors

        path = convert_nlb_tensors(
            args.src, args.out, valid_every=args.valid_every, overwrite=args.overwrite
        )
    print(f"lfads: wrote {path}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """NLB metrics of a run's outputs (logged to it under eval/) or of one output file."""
    import json

    from . import evaluate, tracking

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
        if not args.no_log and result.run_id:
            uri = tracking.resolve_uri(args.tracking_uri)
            tracking.check_store(uri)
            logged = evaluate.log_file_evaluation(tracking.client(uri), result)
    else:
        uri = tracking.resolve_uri(args.tracking_uri)
        tracking.check_store(uri)
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

"""`lfads fit` (one model through a launcher) and the internal `worker` / `serve` entries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launchers.registry import LAUNCHER_NAMES
from lfads_lightning.cli.common import (
    add_tracking_uri,
    prepare_run,
    split_config_and_overrides,
)


def cmd_fit(args: argparse.Namespace) -> int:
    from launchers import JobSpec, JobState, get_launcher
    from lfads_lightning.config import load_config, load_launcher_sections
    from lfads_lightning.runs import tracking

    config_path, overrides = split_config_and_overrides(args.items)
    options = load_launcher_sections(config_path, overrides).get(args.launcher, {})
    cfg = load_config(config_path, overrides)
    cfg, uri = prepare_run(cfg, args.tracking_uri, args.launcher, options)
    launcher = get_launcher(args.launcher, **options)
    run_id = tracking.create_config_run(cfg, uri, {"kind": "fit", "launcher": args.launcher})
    print(
        f"lfads: run {run_id} (experiment '{cfg.tracking.experiment}', tracking {uri}) on launcher '{args.launcher}'",
        file=sys.stderr,
    )
    try:
        spec = JobSpec(run_id, uri, threads=cfg.train.threads or None, labels={"kind": "fit"})
        handle = launcher.submit(spec)
    except Exception as err:  # never leave the run RUNNING for a job that does not exist
        tracking.mark_failed(uri, run_id, f"job submission failed: {err}")
        raise
    try:
        state = launcher.wait(handle)
    except KeyboardInterrupt:
        launcher.cancel(handle)
        tracking.mark_failed(uri, run_id, "interrupted by the user", status="KILLED")
        print("lfads: interrupted; the run is marked KILLED", file=sys.stderr)
        return 130
    if state != JobState.SUCCEEDED:
        tracking.mark_failed(uri, run_id, f"worker job ended: {launcher.describe(handle)}")
        print(
            f"lfads: run {run_id} failed (job {state}); the run is marked FAILED", file=sys.stderr
        )
        return 1
    out_dir = Path(cfg.output.dir) / run_id
    print(
        f"lfads: done. outputs in {out_dir}; score with: lfads evaluate {run_id}; browse with: lfads ui --tracking-uri {uri}",
        file=sys.stderr,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from lfads_lightning.worker.entry import run_worker

    return run_worker(args.run_id, args.tracking_uri)


def cmd_serve(args: argparse.Namespace) -> int:
    from lfads_lightning.worker.serve import serve

    return serve()


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser(
        "fit", help="train one LFADS model, log it to MLflow, write posterior-sampled outputs"
    )
    fit.add_argument(
        "--launcher", choices=LAUNCHER_NAMES, default="local", help="where the training job runs"
    )
    add_tracking_uri(fit)
    fit.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG.yaml | key=value",
        help="config file, then overrides like model.gen_dim=64",
    )
    fit.set_defaults(func=cmd_fit)

    worker = sub.add_parser("worker", help="(internal) run the job of one MLflow run")
    worker.add_argument("--run-id", required=True)
    worker.add_argument("--tracking-uri", required=True)
    worker.set_defaults(func=cmd_worker)

    serve = sub.add_parser("serve", help="(internal) a warm worker: runs jobs read from stdin")
    serve.set_defaults(func=cmd_serve)

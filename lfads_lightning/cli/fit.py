"""`lfads fit` (one model through a launcher) and the internal `worker` / `serve` entries."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from launchers.registry import LAUNCHER_NAMES
from lfads_lightning.cli.common import (
    RESULTS_BY_CLI,
    add_command,
    add_json,
    add_tracking_uri,
    prepare_run,
    print_results,
    split_config_and_overrides,
)

DEMO_COMMAND = "lfads fit --launcher local configs/lorenz.yaml"


def cmd_fit(args: argparse.Namespace) -> int:
    import signal

    from launchers import get_launcher
    from lfads_lightning.config import load_config, load_launcher_sections
    from lfads_lightning.errors import raise_on_signals, restore_signals

    if not args.items:
        args.parser.print_usage(sys.stderr)
        print(
            f"lfads fit: give a config file and/or key=value overrides; to try it: {DEMO_COMMAND}",
            file=sys.stderr,
        )
        return 2
    config_path, overrides = split_config_and_overrides(args.items)
    options = load_launcher_sections(config_path, overrides).get(args.launcher, {})
    cfg = load_config(config_path, overrides)
    cfg, uri = prepare_run(cfg, args.tracking_uri, args.launcher, options)
    launcher = get_launcher(args.launcher, **options)
    # SIGTERM and SIGHUP stop the fit like Ctrl-C: the worker is cancelled, the run closed.
    previous = raise_on_signals(signal.SIGTERM, signal.SIGHUP)
    try:
        return _fit(cfg, uri, launcher, args)
    finally:
        restore_signals(previous)


def _fit(cfg: Any, uri: str, launcher: Any, args: argparse.Namespace) -> int:
    from launchers import JobSpec, JobState
    from lfads_lightning.config import job_paths
    from lfads_lightning.errors import Terminated
    from lfads_lightning.runs import schema, tracking

    run_id = tracking.create_config_run(cfg, uri, {"kind": "fit", "launcher": args.launcher})
    out_dir = Path(cfg.output.dir) / run_id
    print(
        f"lfads: run {run_id} (experiment '{cfg.tracking.experiment}', tracking {uri}) on launcher '{args.launcher}'",
        file=sys.stderr,
    )
    os.environ[RESULTS_BY_CLI] = "1"  # the worker logs one line; the table is printed here
    try:
        threads, paths = cfg.train.threads or None, job_paths(cfg)
        spec = JobSpec(run_id, uri, threads=threads, labels={"kind": "fit"}, paths=paths)
        handle = launcher.submit(spec)
    except BaseException as err:  # never leave the run RUNNING for a job that does not exist
        schema.mark_failed(uri, run_id, f"job submission failed: {err}")
        raise
    try:
        state = launcher.wait(handle)
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else f"stopped by {stop.name}"
        launcher.cancel(handle)
        schema.mark_failed(uri, run_id, f"{what} (the fit command)", status="KILLED")
        print(
            f"lfads: {what}; the worker was stopped and run {run_id} is marked KILLED"
            f"{_leftovers(out_dir)}",
            file=sys.stderr,
        )
        return 130 if isinstance(stop, KeyboardInterrupt) else stop.exit_code
    status, reason = _outcome(tracking, uri, run_id)
    if state != JobState.SUCCEEDED or status != "FINISHED":
        reason = reason or _job_reason(launcher, handle, state, status)
        final = "KILLED" if state == JobState.CANCELLED and status != "FAILED" else "FAILED"
        schema.mark_failed(uri, run_id, reason, status=final)
        status, _ = _outcome(tracking, uri, run_id)
        print(
            f"lfads: run {run_id} failed: {reason}; the run is marked {status}"
            f"{_leftovers(out_dir)}",
            file=sys.stderr,
        )
        return 1
    metrics = tracking.client(uri).get_run(run_id).data.metrics
    extra = {"score with": f"lfads evaluate {run_id}"}
    print_results(
        f"lfads fit: run {run_id} finished", metrics, args.json, str(out_dir), uri, run_id, extra
    )
    return 0


def _job_reason(launcher: Any, handle: Any, state: Any, status: str) -> str:
    """Why the job ended without finishing its run, when the run does not say."""
    import signal

    from launchers import JobState

    sig = handle.info.get("signal")
    if sig:
        name = signal.Signals(sig).name if sig in iter(signal.Signals) else "?"
        oom = "; possibly out of memory" if sig == signal.SIGKILL else ""
        return f"the worker was killed by signal {sig} ({name}{oom})"
    if state == JobState.CANCELLED:
        return "the worker job was cancelled (stopped by a signal)"
    if state == JobState.SUCCEEDED:
        return f"the worker exited without finishing the run (run status {status})"
    return f"the worker job ended: {launcher.describe(handle)}"


def _outcome(tracking, uri: str, run_id: str) -> tuple[str, str]:
    """The run's status and the reason its job recorded (lfads.error), as the store has them."""
    try:
        run = tracking.client(uri).get_run(run_id)
    except Exception:  # noqa: BLE001 - the store is gone: nothing can be said to be done
        return "UNKNOWN", ""
    return run.info.status, run.data.tags.get(tracking.TAG_PREFIX + "error", "")


def _leftovers(out_dir: Path) -> str:
    """A failed or interrupted fit keeps its local checkpoints: say where (docs/usage.md)."""
    ckpts = sorted((out_dir / "checkpoints").glob("*.ckpt"))
    return f"; its checkpoints are kept in {out_dir / 'checkpoints'}" if ckpts else ""


def cmd_worker(args: argparse.Namespace) -> int:
    from lfads_lightning.worker.entry import run_worker

    return run_worker(args.run_id, args.tracking_uri)


def cmd_serve(args: argparse.Namespace) -> int:
    from lfads_lightning.worker.serve import serve

    return serve()


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fit = add_command(
        sub,
        "fit",
        "train one LFADS model, log it to MLflow, write posterior-sampled outputs",
        "Train one LFADS model on the data a config names, log the config, losses, checkpoints\n"
        "and figures to one MLflow run, then posterior-sample the best checkpoint into\n"
        "<output.dir>/<run_id>/lfads_output_<data>.h5. Ends with a table of co-bps, fp-bps,\n"
        "vel R2, psth R2, rate R2 and bits/spike per split, and where the outputs are.\n"
        "Every config key can be overridden as key=value after the config (values are YAML).",
        [
            "lfads fit configs/lorenz.yaml",
            "lfads fit configs/lorenz.yaml train.max_epochs=50 model.gen_dim=64",
            "lfads fit --launcher slurm --json configs/mc_maze_small.yaml > result.json",
        ],
        "docs/usage.md",
    )
    fit.add_argument(
        "--launcher", choices=LAUNCHER_NAMES, default="local", help="where the training job runs"
    )
    add_tracking_uri(fit)
    add_json(fit)
    fit.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG.yaml | key=value",
        help="config file, then overrides like model.gen_dim=64",
    )
    fit.set_defaults(func=cmd_fit, parser=fit)

    worker = add_command(
        sub,
        "worker",
        "(internal) run the job of one MLflow run",
        "Run the job an MLflow run describes (a fit or a PBT member); launchers start this.",
        ["lfads worker --run-id RUN --tracking-uri sqlite:///$PWD/mlflow.db"],
        "docs/usage.md",
    )
    worker.add_argument("--run-id", required=True, help="the MLflow run whose job to run")
    worker.add_argument("--tracking-uri", required=True, help="MLflow tracking URI of that run")
    worker.set_defaults(func=cmd_worker)

    serve = add_command(
        sub,
        "serve",
        "(internal) a warm worker: runs jobs read from stdin",
        "A warm worker for the local launcher: reads `RUN_ID TRACKING_URI` lines from stdin,\n"
        "runs each job and answers `done RUN_ID EXIT_CODE` on stdout.",
        ['echo "RUN_ID sqlite:///$PWD/mlflow.db" | lfads serve'],
        "docs/pbt.md",
    )
    serve.set_defaults(func=cmd_serve)

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

DEMO_COMMAND = "lfads fit --launcher local configs/lorenz.yaml"


def cmd_fit(args: argparse.Namespace) -> int:
    import signal

    from launchers import JobState, get_launcher
    from lfads_lightning.config import load_config, load_launcher_sections
    from lfads_lightning.errors import raise_on_signals, restore_signals
    from lfads_lightning.runs import tracking

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
        return _fit(cfg, uri, launcher, args.launcher, JobState, tracking)
    finally:
        restore_signals(previous)


def _fit(cfg, uri, launcher, launcher_name, JobState, tracking) -> int:  # noqa: N803
    import signal

    from lfads_lightning.errors import Terminated

    run_id = tracking.create_config_run(cfg, uri, {"kind": "fit", "launcher": launcher_name})
    out_dir = Path(cfg.output.dir) / run_id
    print(
        f"lfads: run {run_id} (experiment '{cfg.tracking.experiment}', tracking {uri}) on launcher '{launcher_name}'",
        file=sys.stderr,
    )
    try:
        handle = launcher.submit(run_id, uri, threads=cfg.train.threads or None)
    except BaseException as err:  # never leave the run RUNNING for a job that does not exist
        tracking.mark_failed(uri, run_id, f"job submission failed: {err}")
        raise
    try:
        state = launcher.wait(handle)
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else f"stopped by {stop.name}"
        launcher.cancel(handle)
        tracking.mark_failed(uri, run_id, f"{what} (the fit command)", status="KILLED")
        print(
            f"lfads: {what}; the worker was stopped and run {run_id} is marked KILLED"
            f"{_leftovers(out_dir)}",
            file=sys.stderr,
        )
        return 130 if isinstance(stop, KeyboardInterrupt) else stop.exit_code
    status, reason = _outcome(tracking, uri, run_id)
    if state != JobState.SUCCEEDED or status != "FINISHED":
        if not reason:
            sig = handle.info.get("signal")
            if sig:
                name = signal.Signals(sig).name if sig in iter(signal.Signals) else "?"
                oom = "; possibly out of memory" if sig == signal.SIGKILL else ""
                reason = f"the worker was killed by signal {sig} ({name}{oom})"
            elif state == JobState.CANCELLED:
                reason = "the worker job was cancelled (stopped by a signal)"
            elif state == JobState.SUCCEEDED:
                reason = f"the worker exited without finishing the run (run status {status})"
            else:
                reason = f"the worker job ended in state {state}"
        final = "KILLED" if state == JobState.CANCELLED and status != "FAILED" else "FAILED"
        tracking.mark_failed(uri, run_id, reason, status=final)
        status, _ = _outcome(tracking, uri, run_id)
        print(
            f"lfads: run {run_id} failed: {reason}; the run is marked {status}"
            f"{_leftovers(out_dir)}",
            file=sys.stderr,
        )
        return 1
    print(
        f"lfads: done. outputs in {out_dir}; score with: lfads evaluate {run_id}; browse with: lfads ui --tracking-uri {uri}",
        file=sys.stderr,
    )
    return 0


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
    fit.set_defaults(func=cmd_fit, parser=fit)

    worker = sub.add_parser("worker", help="(internal) run the job of one MLflow run")
    worker.add_argument("--run-id", required=True)
    worker.add_argument("--tracking-uri", required=True)
    worker.set_defaults(func=cmd_worker)

    serve = sub.add_parser("serve", help="(internal) a warm worker: runs jobs read from stdin")
    serve.set_defaults(func=cmd_serve)

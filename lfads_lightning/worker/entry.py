"""The one worker entry: `python -m lfads_lightning worker --run-id R --tracking-uri U` (and the
same function in-process for warm slots). It reads the run's kind and does that job; whatever
happens, the run is never left RUNNING.

Errors are one line on stderr and in the run's `lfads.error` tag; an unexpected crash's
traceback goes to the run as the artifact `traceback.txt` (and to stderr with `lfads --debug`).
SIGTERM closes the run KILLED, then the process dies of that signal as before (unless another
handler, e.g. submitit's under SLURM, already owns SIGTERM).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback
from typing import Any

from lfads_lightning.errors import (
    LfadsError,
    Terminated,
    disk_full_message,
    raise_on_signals,
    restore_signals,
)
from lfads_lightning.runs import schema, tracking
from lfads_lightning.worker import preemption
from lfads_lightning.worker.setup import load_run_config

PARENT_KINDS = ("pbt", "search")  # a parent run's job is its final posterior sampling


def run_worker(run_id: str, uri: str) -> int:
    """Entry point of `lfads worker`: never leaves the run RUNNING, whatever happens (except on
    preemption, where the run stays open for the requeued job)."""
    preemption.install()
    # Only where nobody else owns SIGTERM: under SLURM, submitit handles it (preemption).
    owned = threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) not in (signal.SIG_DFL, None)
    previous = {} if owned else raise_on_signals(signal.SIGTERM)
    try:
        return _run(run_id, uri)
    except Terminated as sig:
        restore_signals(previous)
        if not _is_parent(uri, run_id):  # a parent's controller closes it (interrupted/stopped)
            schema.mark_failed(uri, run_id, f"worker stopped by {sig.name}", status="KILLED")
        print(
            f"lfads: worker stopped by {sig.name}; run {run_id} is marked KILLED", file=sys.stderr
        )
        sys.stderr.flush()
        if signal.getsignal(sig.signum) == signal.SIG_DFL:
            os.kill(os.getpid(), sig.signum)  # die of the signal, as launchers expect
        return sig.exit_code
    finally:
        restore_signals(previous)


def _is_parent(uri: str, run_id: str) -> bool:
    try:
        run = tracking.client(uri).get_run(run_id)
    except Exception:  # noqa: BLE001 - the store is gone: nothing to close either way
        return False
    return run.data.tags.get(tracking.TAG_PREFIX + "kind") in PARENT_KINDS


def _run(run_id: str, uri: str) -> int:
    try:
        client = tracking.client(uri)
        run = client.get_run(run_id)
        kind = run.data.tags.get(tracking.TAG_PREFIX + "kind", "fit")
        if kind in PARENT_KINDS:
            return _final_sampling(client, run_id)
        if run.info.status != "RUNNING":  # requeued after its run closed (USR2 at the very end)
            print(
                f"lfads: run {run_id} is already {run.info.status}; nothing to do", file=sys.stderr
            )
            return 0
        cfg = load_run_config(client, run_id)
        if kind == "pbt_member":
            from lfads_lightning.worker.member import train_member

            fitness = train_member(cfg, run, uri)
            client.set_terminated(run_id, status="FINISHED")
            print(f"lfads: member run {run_id} finished: fitness {fitness:.6g}", file=sys.stderr)
            return 0
        from lfads_lightning.worker.fit import fit_run

        summary = fit_run(cfg, run_id, uri)
        client.set_terminated(run_id, status="FINISHED")
        _print_finished(run_id, uri, summary, cfg.output.dir)
        return 0
    except preemption.Preempted as err:
        preemption.ignore_further()
        print(f"lfads: {err}; state saved for the requeued job", file=sys.stderr)
        return preemption.REQUEUE_EXIT
    except LfadsError as err:
        _debug_traceback()
        print(f"error: {err}", file=sys.stderr)
        schema.mark_failed(uri, run_id, str(err))
        return err.exit_code
    except KeyboardInterrupt:
        schema.mark_failed(uri, run_id, "interrupted", status="KILLED")
        print("lfads: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _crash(run_id, uri, err)
        _debug_traceback()
        message = disk_full_message(err)
        print(f"error: {message}", file=sys.stderr)
        schema.mark_failed(uri, run_id, message)
        return 1
    except Exception as err:  # noqa: BLE001 - report any crash on the run, then exit non-zero
        return _crash(run_id, uri, err)


def _debug_traceback() -> None:
    if os.environ.get("LFADS_DEBUG") == "1":
        traceback.print_exc()


def _crash(run_id: str, uri: str, err: BaseException) -> int:
    """One line here; the traceback on the run (artifact traceback.txt), or here with --debug."""
    text = traceback.format_exc()
    first = (str(err).strip().splitlines() or [""])[0]
    message = f"{type(err).__name__}: {first}" if first else type(err).__name__
    where = "the run's artifact traceback.txt"
    try:
        tracking.client(uri).log_text(run_id, text, "traceback.txt")
    except Exception:  # noqa: BLE001 - the store is unusable: show it here instead
        where = "stderr"
        sys.stderr.write(text)
    if os.environ.get("LFADS_DEBUG") == "1" and where != "stderr":
        sys.stderr.write(text)
    print(f"error: worker crashed: {message} (traceback in {where})", file=sys.stderr)
    schema.mark_failed(uri, run_id, message)
    return 1


def _final_sampling(client: Any, parent: str) -> int:
    """The parent stays open whatever happens: the controller reports and closes it."""
    from lfads_lightning.worker.final import sample_best_member

    try:
        sample_best_member(client, parent)
    except LfadsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception:  # noqa: BLE001 - the controller sees the job fail and says so
        traceback.print_exc()
        return 1
    return 0


def _print_finished(run_id: str, uri: str, summary: dict[str, float], out_dir: str) -> None:
    """The metrics table in the job's log; one line when `lfads fit` prints the table itself."""
    import os
    from pathlib import Path

    from lfads_lightning.evaluation.tables import results_report

    if os.environ.get("LFADS_RESULTS_BY_CLI"):
        print(f"lfads: run {run_id} finished", file=sys.stderr)
        return
    title = f"lfads: run {run_id} finished"
    print(results_report(title, summary, str(Path(out_dir) / run_id), uri), file=sys.stderr)

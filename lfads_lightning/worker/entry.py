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

from lfads_lightning.errors import (
    LfadsError,
    Terminated,
    disk_full_message,
    raise_on_signals,
    restore_signals,
)
from lfads_lightning.runs import tracking
from lfads_lightning.worker.setup import load_run_config


def run_worker(run_id: str, uri: str) -> int:
    """Entry point of `lfads worker`: never leaves the run RUNNING, whatever happens."""
    # Only where nobody else owns SIGTERM: under SLURM, submitit handles it (preemption).
    owned = threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) not in (signal.SIG_DFL, None)
    previous = {} if owned else raise_on_signals(signal.SIGTERM)
    try:
        return _run(run_id, uri)
    except Terminated as sig:
        restore_signals(previous)
        tracking.mark_failed(uri, run_id, f"worker stopped by {sig.name}", status="KILLED")
        print(
            f"lfads: worker stopped by {sig.name}; run {run_id} is marked KILLED", file=sys.stderr
        )
        sys.stderr.flush()
        if signal.getsignal(sig.signum) == signal.SIG_DFL:
            os.kill(os.getpid(), sig.signum)  # die of the signal, as launchers expect
        return sig.exit_code
    finally:
        restore_signals(previous)


def _run(run_id: str, uri: str) -> int:
    try:
        client = tracking.client(uri)
        run = client.get_run(run_id)
        cfg = load_run_config(client, run_id)
        if run.data.tags.get(tracking.TAG_PREFIX + "kind") == "pbt_member":
            from lfads_lightning.worker.member import train_member

            fitness = train_member(cfg, run, uri)
            client.set_terminated(run_id, status="FINISHED")
            print(f"lfads: member run {run_id} finished: fitness {fitness:.6g}", file=sys.stderr)
            return 0
        from lfads_lightning.worker.fit import fit_run

        summary = fit_run(cfg, run_id, uri)
        client.set_terminated(run_id, status="FINISHED")
        shown = {k: round(v, 4) for k, v in summary.items() if k.startswith("posterior/")}
        print(f"lfads: run {run_id} finished: {shown}", file=sys.stderr)
        return 0
    except LfadsError as err:
        _debug_traceback()
        print(f"error: {err}", file=sys.stderr)
        tracking.mark_failed(uri, run_id, str(err))
        return err.exit_code
    except KeyboardInterrupt:
        tracking.mark_failed(uri, run_id, "interrupted", status="KILLED")
        print("lfads: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _crash(run_id, uri, err)
        _debug_traceback()
        message = disk_full_message(err)
        print(f"error: {message}", file=sys.stderr)
        tracking.mark_failed(uri, run_id, message)
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
    tracking.mark_failed(uri, run_id, message)
    return 1

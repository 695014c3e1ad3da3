"""`lfads pbt stop RUN` / `lfads search stop RUN`: end a PBT or search run now.

The request is a tag on the parent; a live controller winds down itself (pbt/lifecycle.py
explains the design); with none alive, this command stops the member jobs through the run's
launcher and finishes the parent with the best member so far.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from lfads_lightning.errors import LfadsError
from lfads_lightning.pbt import lifecycle
from lfads_lightning.runs import schema, tracking
from lfads_lightning.runs.schema import ParentState

FINAL_STATES = (ParentState.FINISHED, ParentState.FAILED, ParentState.STOPPED)


def _log(msg: str) -> None:
    print(f"lfads pbt stop: {msg}", file=sys.stderr, flush=True)


def check_stoppable(run: Any, uri: str) -> None:
    """One-line errors: not a parent run, or already final."""
    tags, run_id = run.data.tags, run.info.run_id
    if tags.get(tracking.TAG_PREFIX + "kind") not in ("pbt", "search"):
        raise LfadsError(
            f"run {run_id} is not a PBT or search parent run "
            f"(lfads.kind={tags.get(tracking.TAG_PREFIX + 'kind', 'fit')}); `stop` ends PBT and "
            f"search runs: pass the parent run id `lfads pbt` printed"
        )
    state = tags.get(tracking.TAG_PREFIX + "state", "running")
    if state in FINAL_STATES:
        raise LfadsError(
            f"PBT run {run_id} is already {state} ({run.info.status}); there is nothing to stop "
            f"(`lfads pbt status {run_id} --tracking-uri {uri}` shows it)"
        )


def stop_run(uri: str, parent: str, wait_s: float = 600.0) -> str:
    """Stop the run; returns its final state. Waits up to `wait_s` for a live controller."""
    tracking.require_existing(uri)
    tracking.check_store(uri, create=False)
    client = tracking.client(uri)
    try:
        run = client.get_run(parent)
    except Exception:  # noqa: BLE001
        raise lifecycle.parent_not_found(parent, uri) from None
    check_stoppable(run, uri)
    if not lifecycle.stop_requested(run):
        client.set_tag(parent, schema.STOP_REQUESTED, f"{time.time():.1f}")
    if lifecycle.controller_alive(run):
        info = lifecycle.controller_info(run)
        _log(f"asked the controller (pid {info.get('pid')} on {info.get('host')}) to stop")
        if _wait_for_controller(client, parent, wait_s):
            return client.get_run(parent).data.tags.get(tracking.TAG_PREFIX + "state", "?")
        _log("the controller ended without closing the run; stopping it here")
    _stop_here(client, uri, parent)
    return client.get_run(parent).data.tags.get(tracking.TAG_PREFIX + "state", "?")


def _wait_for_controller(client: Any, parent: str, wait_s: float) -> bool:
    """True once the parent is closed; False if its controller died first."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        run = client.get_run(parent)
        if run.info.status != "RUNNING":
            return True
        if not lifecycle.controller_alive(run):
            time.sleep(1.0)  # it may have closed the run as it ended
            return client.get_run(parent).info.status != "RUNNING"
        time.sleep(1.0)
    raise LfadsError(
        f"the controller of PBT run {parent} did not stop within {wait_s:.0f} s (still "
        f"sampling the best member?); run `lfads pbt stop {parent}` again to keep waiting"
    )


def _stop_here(client: Any, uri: str, parent: str) -> None:
    """No controller: cancel the members' jobs through the run's launcher, finish the parent."""
    from launchers import JobSpec
    from lfads_lightning.pbt.experiment import load_parent, make_launcher

    base, pbt, launcher_name, _, sections = load_parent(client, parent)
    launcher = make_launcher(launcher_name, sections, warm=False)
    run_dir = Path(base.output.dir) / parent
    log_dir = str(run_dir / "logs")
    try:
        lifecycle.stop_members(client, parent, launcher, "stopped by lfads pbt stop", _log)
        labels = {"kind": "pbt_final", "pbt-run": parent}
        threads = base.train.threads or None
        spec = JobSpec(parent, uri, threads=threads, labels=labels, log_dir=log_dir)
        lifecycle.finish_stopped(client, uri, parent, pbt, launcher, spec, run_dir)
    finally:
        launcher.close()

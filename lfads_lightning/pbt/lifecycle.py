"""Ending a PBT/search run early: `lfads pbt stop`, Ctrl-C/SIGTERM of the controller.

Design (docs/pbt.md, "Stopping"): `lfads pbt stop RUN` writes the stop request tag on the
parent. A live controller sees it at its next poll (about a second) and winds down itself: it
cancels its running member jobs through its launcher, marks them `stopped`, then finishes the
parent with the best member so far (posterior sampling, report) as state `stopped`. When no
controller is alive (its host/pid and heartbeat are recorded on the parent), `stop` does the
same work itself with a fresh launcher that adopts the recorded job handles.

Ctrl-C or SIGTERM of the controller also cancels and marks the running members `stopped`, and
marks the parent `interrupted` (MLflow KILLED): nothing is left running and `--resume`
continues it, re-running the stopped attempts. A stopped parent is final; `--resume` refuses it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from launchers import JobHandle, JobState
from lfads_lightning.errors import LfadsError
from lfads_lightning.runs import schema
from lfads_lightning.runs.schema import FINISHED, QUEUED, RUNNING, MemberRun, P, ParentState

CONTROLLER_BEAT_S = 10.0  # how often a controller refreshes its tag
CONTROLLER_STALE_S = 60.0  # a controller on another host silent this long is taken for dead
JOB_END_TIMEOUT_S = 30.0  # how long a cancelled job may take to end


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """The parent carries a stop request (`lfads pbt stop`): the controller winds down."""


def handle_of(m: MemberRun, default_launcher: str) -> JobHandle:
    """The launcher handle recorded in a member run's `lfads.job` tag."""
    info = {k: v for k, v in m.job.items() if k not in ("launcher", "job_id", "submitted_at")}
    launcher = m.job.get("launcher", default_launcher)
    return JobHandle(launcher, str(m.job.get("job_id", "")), m.run_id, info)


def closed_outcome(run: Any) -> str | None:
    """FINISHED or a failure reason for a closed member run; None while it is RUNNING."""
    status = run.info.status
    if status == "FINISHED":
        if not schema.is_finite(run.data.metrics.get(schema.FITNESS_METRIC)):
            return "finished without a finite fitness"
        return FINISHED
    if status in ("FAILED", "KILLED"):
        return run.data.tags.get(P + "error", f"run {status}")
    return None


# ---------------------------------------------------------------------- the controller's tag


beat_controller = schema.beat_controller


def controller_info(run: Any) -> dict[str, Any]:
    try:
        return json.loads(run.data.tags.get(schema.CONTROLLER, "{}"))
    except ValueError:
        return {}


def controller_alive(run: Any) -> bool:
    """A controller drives this parent now: its pid lives (same host) or it beat recently."""
    info = controller_info(run)
    if not info or run.info.status != "RUNNING":
        return False
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return time.time() - float(info.get("beat", 0)) < CONTROLLER_STALE_S


def stop_requested(run: Any) -> bool:
    return schema.STOP_REQUESTED in run.data.tags


# ---------------------------------------------------------------------- winding down


def stop_members(client: Any, parent: str, launcher: Any, why: str, log: Any = None) -> int:
    """Every queued/running member: state `stopped` (first, so the worker's own SIGTERM
    handling cannot call it failed), its job cancelled, its run closed KILLED. Returns how
    many were stopped."""
    log = log or (lambda msg: print(f"lfads pbt: {msg}", file=sys.stderr, flush=True))
    active = [m for m in schema.load_members(client, parent) if m.state in (QUEUED, RUNNING)]
    cancelled = []
    for m in active:
        schema.mark_stopped(client, m.run_id)
        if m.job.get("job_id") and m.job.get("launcher", launcher.name) == launcher.name:
            handle = handle_of(m, launcher.name)
            launcher.adopt(handle)
            launcher.cancel(handle)
            cancelled.append(handle)
    _wait_ended(launcher, cancelled)
    for m in active:
        run = client.get_run(m.run_id)
        if P + "error" not in run.data.tags:
            client.set_tag(m.run_id, P + "error", why)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(m.run_id, status="KILLED")
    if active:
        log(f"stopped {len(active)} member run(s) ({len(cancelled)} job(s) cancelled): {why}")
    return len(active)


def _wait_ended(launcher: Any, handles: list[JobHandle]) -> None:
    deadline = time.monotonic() + JOB_END_TIMEOUT_S
    pending = list(handles)
    while pending and time.monotonic() < deadline:
        pending = [h for h in pending if _still_running(launcher, h)]
        if pending:
            time.sleep(0.5)


def _still_running(launcher: Any, handle: JobHandle) -> bool:
    state = launcher.poll(handle)
    return not (state.terminal or state == JobState.UNKNOWN)


def best_so_far(client: Any, parent: str) -> str | None:
    """The usable member with the lowest fitness (latest generation on ties), if any."""
    usable = [m for m in schema.load_members(client, parent) if m.usable]
    if not usable:
        return None
    return min(usable, key=lambda m: (m.fitness, -m.generation)).run_id


def finish_stopped(
    client: Any, uri: str, parent: str, pbt: Any, launcher: Any, spec: Any, run_dir: Any
) -> None:
    """The parent after a stop: the best member so far sampled and reported, state stopped."""
    from lfads_lightning.pbt.finish import finish

    client.set_tag(parent, P + "stopped_at", f"{time.time():.1f}")
    best = best_so_far(client, parent)
    if best is None:
        client.set_tag(parent, P + "error", "stopped before any member finished a generation")
        schema.set_parent_state(client, parent, ParentState.STOPPED)
        print(
            f"lfads pbt: stopped {parent}; no member had finished a generation, so there are "
            f"no outputs",
            file=sys.stderr,
        )
        return
    finish(client, uri, parent, best, pbt, launcher, spec, run_dir, ParentState.STOPPED)


def mark_interrupted(client: Any, parent: str, why: str) -> None:
    """Only a running parent: one interrupted while finishing keeps the state it reached."""
    if client.get_run(parent).data.tags.get(P + "state", "running") != ParentState.RUNNING:
        return
    client.set_tag(parent, P + "interrupted", why)
    schema.set_parent_state(client, parent, ParentState.INTERRUPTED)


def parent_not_found(parent: str, uri: str) -> LfadsError:
    """The one error for a PBT/search parent id that is not in the store."""
    return LfadsError(
        f"PBT run {parent} not found in {uri}; check the id (the parent run id printed by "
        f"`lfads pbt`) and --tracking-uri / MLFLOW_TRACKING_URI"
    )

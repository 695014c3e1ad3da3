"""The member-run schema: the one place that writes and reads PBT/search member runs.

Population state lives only in MLflow. One parent run per experiment (kind `pbt` or `search`);
one child run per member per generation per attempt (kind `pbt_member`). Like Optuna's storage
for trials, every read and write of a member run goes through this module.

Tags (all `lfads.`-prefixed): written once at creation by the controller (`MemberTags`):
kind, member, generation, attempt, state=queued, copied_from, copied_from_member, target_epoch,
launcher, search (trials only), hparams (a display copy, see below). Written later:
state (`set_state`), job (controller, `set_job`), heartbeat (worker, `beat`), fitness
(worker, `record_fitness`, also the `pbt/fitness` metric), error (whoever fails the run first),
resumed_from / interrupted_at_epoch (worker, informational).

States (`State`) and who moves them:
    queued   -> running    controller on submit, worker on start (either may be first)
    queued   -> failed     controller (a job that never started), worker
    running  -> finished   worker, with a finite fitness
    running  -> failed     worker (crash, NaN), controller (hung, job gone)
    finished -> exploited  controller, when the member lost its generation's selection
    queued   -> stopped    controller or `lfads pbt stop` (stop request, Ctrl-C), before the
    running  -> stopped    job is cancelled; a resumed run redoes a stopped attempt (attempt + 1)
A retry is a new run (attempt + 1), so nothing moves back to queued.

Guarantees: a state tag only moves along these edges (`set_state` raises `IllegalTransition`
otherwise; writing the current state again is a no-op); failed, exploited and stopped are final and a
finished run never changes again except finished -> exploited; a finished run has a finite
fitness (`is_finite`: the one finiteness check). The check reads the current state first; MLflow
has no compare-and-swap, which is why each edge above has one kind of writer per situation.

Hyperparameters travel once: in the member's config (the config.yaml artifact and its flattened
params, e.g. param `train.lr`), set by `pbt.config.with_hparams` -> `config.set_fields` (the one
parser of 'section.key'). The worker trains with that config and re-applies its typed sections
after the checkpoint restore (`ApplyHyperparameters`); readers take the searched keys (the
parent's `pbt.space` param) from the run's params (`member_from_run`). The `lfads.hparams` tag is
written at creation for display only and never read back.
"""

from __future__ import annotations

import enum
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from lfads_lightning.runs import tracking

P = tracking.TAG_PREFIX
KIND = "pbt_member"
FITNESS_METRIC = "pbt/fitness"
RESUMED_FROM = P + "resumed_from"
INTERRUPTED_AT = P + "interrupted_at_epoch"
# Tags of a PBT/search parent run: the controller names the best member, the final sampling
# job (worker/final.py) says when its outputs are logged; the controller then closes the parent.
BEST_RUN = P + "best_run"
FINAL_SAMPLED = P + "final_sampled"  # "1" once the best member's outputs are on the parent
# The checkpoint artifact a run's model is sampled from (a member: its last, which its fitness
# measures; a fit: the best by valid/recon_smth). Written by the worker, read by `lfads sample`.
BEST_CHECKPOINT = P + "best_checkpoint"
# Parent runs: `lfads pbt stop`'s request (its time); where the controller runs and when it
# last beat (json {host, pid, beat}: `stop` and `status` tell whether it is alive).
STOP_REQUESTED = P + "stop_requested"
CONTROLLER = P + "controller"


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    EXPLOITED = "exploited"
    STOPPED = "stopped"


QUEUED, RUNNING, FINISHED, FAILED, EXPLOITED, STOPPED = tuple(State)
TRANSITIONS: dict[State, frozenset[State]] = {
    QUEUED: frozenset({RUNNING, FAILED, STOPPED}),
    RUNNING: frozenset({FINISHED, FAILED, STOPPED}),
    FINISHED: frozenset({EXPLOITED}),
    FAILED: frozenset(),
    EXPLOITED: frozenset(),
    STOPPED: frozenset(),
}


class ParentState(enum.StrEnum):
    """The `lfads.state` of a PBT/search parent run (MLflow status in brackets)."""

    RUNNING = "running"  # (RUNNING) a controller drives it, or one was SIGKILLed
    FINISHED = "finished"  # (FINISHED) ran to its end: outputs and report
    FAILED = "failed"  # (FAILED) the population could not continue
    INTERRUPTED = "interrupted"  # (KILLED) Ctrl-C/SIGTERM of the controller; --resume continues
    STOPPED = "stopped"  # (KILLED) `lfads pbt stop`: outputs of the best member so far; final


_PS = ParentState
PARENT_STATUS = {_PS.RUNNING: "RUNNING", _PS.FINISHED: "FINISHED", _PS.FAILED: "FAILED"}
PARENT_STATUS.update({_PS.INTERRUPTED: "KILLED", _PS.STOPPED: "KILLED"})
PARENT_TRANSITIONS: dict[ParentState, frozenset[ParentState]] = {
    _PS.RUNNING: frozenset(set(_PS) - {_PS.RUNNING}),
    _PS.INTERRUPTED: frozenset({_PS.RUNNING, _PS.STOPPED}),
    **{final: frozenset() for final in (_PS.FINISHED, _PS.FAILED, _PS.STOPPED)},
}


class IllegalTransition(RuntimeError):
    """A member run's state was asked to move along an edge the schema does not have."""


def is_finite(value: float | None) -> bool:
    """A usable fitness: present and finite (NaN/inf and None lose and are never copied)."""
    return value is not None and math.isfinite(value)


def check_transition(old: State | str, new: State | str) -> bool:
    """True: write `new`; False: already there (no-op). Raises IllegalTransition otherwise."""
    old, new = State(old), State(new)
    if old == new:
        return False
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"member run state cannot move {old} -> {new}")
    return True


@dataclass(frozen=True)
class MemberTags:
    """What a member run is, written once when the controller creates it."""

    member: int
    generation: int
    target_epoch: int
    attempt: int = 0
    copied_from: str | None = None
    copied_from_member: int | None = None
    launcher: str = ""
    search: str | None = None
    hparams: dict[str, float] = field(default_factory=dict)  # display copy only

    def to_tags(self) -> dict[str, str]:
        """Unprefixed tags, as `tracking.create_config_run` takes them."""
        cm = self.copied_from_member
        tags = {
            "kind": KIND,
            "member": str(self.member),
            "generation": str(self.generation),
            "attempt": str(self.attempt),
            "state": str(QUEUED),
            "copied_from": self.copied_from or "",
            "copied_from_member": "" if cm is None else str(cm),
            "hparams": json.dumps(self.hparams, sort_keys=True),
            "target_epoch": str(self.target_epoch),
            "launcher": self.launcher,
        }
        return {**tags, **({"search": self.search} if self.search else {})}

    def to_params(self) -> dict[str, Any]:
        """Lineage as params too: MLflow's compare view shows params (tags only per run)."""
        cm = self.copied_from_member
        return {
            "pbt.member": self.member,
            "pbt.generation": self.generation,
            "pbt.attempt": self.attempt,
            "pbt.copied_from_member": "" if cm is None else cm,
        }

    @classmethod
    def from_run(cls, run: Any, keys: list[str] | tuple[str, ...] = ()) -> MemberTags:
        """The tags of a member run; hparams: the searched `keys`, read from its params."""
        tags, params = run.data.tags, run.data.params
        cm = tags.get(P + "copied_from_member")
        return cls(
            member=int(tags[P + "member"]),
            generation=int(tags[P + "generation"]),
            target_epoch=int(tags.get(P + "target_epoch", "0")),
            attempt=int(tags.get(P + "attempt", "0")),
            copied_from=tags.get(P + "copied_from") or None,
            copied_from_member=int(cm) if cm not in (None, "") else None,
            launcher=tags.get(P + "launcher", ""),
            search=tags.get(P + "search") or None,
            hparams={k: float(params[k]) for k in keys if k in params},
        )


@dataclass
class MemberRun:
    run_id: str
    member: int
    generation: int
    attempt: int
    state: State
    mlflow_status: str
    fitness: float | None
    copied_from: str | None
    copied_from_member: int | None
    hparams: dict[str, float]
    job: dict[str, Any] = field(default_factory=dict)
    heartbeat: float | None = None
    start_time: float | None = None

    def __post_init__(self) -> None:
        self.state = State(self.state)

    @property
    def done(self) -> bool:
        """Finished or given up; a stopped attempt is not done: a resumed run redoes it."""
        return self.state in (FINISHED, EXPLOITED, FAILED)

    @property
    def usable(self) -> bool:
        """Finished with a finite fitness: may be compared and copied."""
        return self.state in (FINISHED, EXPLOITED) and is_finite(self.fitness)

    def retry(self, run_id: str) -> MemberRun:
        """The next attempt, just created (queued)."""
        return MemberRun(
            run_id, self.member, self.generation, self.attempt + 1, QUEUED, "RUNNING", None,
            self.copied_from, self.copied_from_member, dict(self.hparams),
        )  # fmt: skip


def _float(value: str | None) -> float | None:
    if value in (None, "", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def member_from_run(run: Any, keys: list[str] | tuple[str, ...] = ()) -> MemberRun:
    t = MemberTags.from_run(run, keys)
    tags = run.data.tags
    fitness = run.data.metrics.get(FITNESS_METRIC)
    return MemberRun(
        run_id=run.info.run_id,
        member=t.member,
        generation=t.generation,
        attempt=t.attempt,
        state=State(tags.get(P + "state", QUEUED)),
        mlflow_status=run.info.status,
        fitness=None if fitness is None else float(fitness),
        copied_from=t.copied_from,
        copied_from_member=t.copied_from_member,
        hparams=t.hparams,
        job=json.loads(tags.get(P + "job", "{}")),
        heartbeat=_float(tags.get(P + "heartbeat")),
        start_time=run.info.start_time / 1000.0 if run.info.start_time else None,
    )


def space_keys(parent: Any) -> list[str]:
    """The searched hyperparameter keys of a PBT/search parent run (its `pbt.space` param)."""
    return [hp["key"] for hp in json.loads(parent.data.params.get("pbt.space", "[]"))]


def load_members(client: Any, parent_run_id: str) -> list[MemberRun]:
    """Every child run of the PBT parent, all pages."""
    parent = client.get_run(parent_run_id)
    keys = space_keys(parent)
    runs, token = [], None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [member_from_run(r, keys) for r in runs if P + "member" in r.data.tags]


def latest_attempts(members: list[MemberRun], generation: int) -> dict[int, MemberRun]:
    """member id -> its latest attempt in `generation`."""
    latest: dict[int, MemberRun] = {}
    for m in members:
        if m.generation == generation and (
            m.member not in latest or m.attempt > latest[m.member].attempt
        ):
            latest[m.member] = m
    return latest


def best_per_generation(members: list[MemberRun]) -> list[float]:
    """Best (lowest) usable fitness of each finished generation, in order."""
    generations = sorted({m.generation for m in members})
    bests = []
    for g in generations:
        values = [m.fitness for m in latest_attempts(members, g).values() if m.usable]
        bests.append(min(values) if values else math.nan)
    return bests


# ---------------------------------------------------------------------- writers


def set_state(client: Any, run_id: str, state: State | str) -> None:
    """Move a member run's state along an allowed edge (re-writing the current one: no-op)."""
    current = client.get_run(run_id).data.tags.get(P + "state", QUEUED)
    if check_transition(current, state):
        client.set_tag(run_id, P + "state", str(State(state)))


def mark_submitted(client: Any, run_id: str) -> None:
    """The controller's queued -> running on submit; a worker that got further first wins."""
    if client.get_run(run_id).data.tags.get(P + "state", QUEUED) == QUEUED:
        client.set_tag(run_id, P + "state", str(RUNNING))


def mark_failed(uri: str, run_id: str, message: str, status: str = "FAILED") -> None:
    """Best effort: a run whose job failed must not stay RUNNING.

    The first error recorded wins: the worker's own message is more specific than what a
    launcher or controller can say afterwards.
    """
    try:
        c = tracking.client(uri)
        run = c.get_run(run_id)
        if P + "error" not in run.data.tags:
            c.set_tag(run_id, P + "error", message[:4000])
        if P + "state" in run.data.tags:
            fail_state(c, run)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            c.set_terminated(run_id, status=status)
    except Exception:  # noqa: BLE001 - nothing more can be done if the store is gone
        pass


def fail_state(client: Any, run: Any) -> None:
    """The state part of `tracking.mark_failed`: failed, unless the run is already final."""
    tags = run.data.tags
    if tags.get(P + "kind") != KIND:  # not a member run: its state tag is not ours
        client.set_tag(run.info.run_id, P + "state", "failed")
        return
    if FAILED in TRANSITIONS[State(tags.get(P + "state", QUEUED))]:
        client.set_tag(run.info.run_id, P + "state", str(FAILED))


def set_job(client: Any, run_id: str, job: dict[str, Any]) -> None:
    client.set_tag(run_id, P + "job", json.dumps(job))


def beat(client: Any, run_id: str, now: float | None = None) -> None:
    client.set_tag(run_id, P + "heartbeat", f"{time.time() if now is None else now:.1f}")


def record_fitness(client: Any, run_id: str, fitness: float, step: int) -> bool:
    """Log the fitness (tag and metric); True if it is finite (the run may finish)."""
    ok = is_finite(fitness)
    client.log_metric(run_id, FITNESS_METRIC, fitness if ok else math.nan, step=step)
    client.set_tag(run_id, P + "fitness", f"{fitness:.6g}" if ok else "nan")
    return ok


def mark_stopped(client: Any, run_id: str) -> bool:
    """queued/running -> stopped (a stop request or Ctrl-C); False if the run is already final."""
    current = State(client.get_run(run_id).data.tags.get(P + "state", QUEUED))
    if STOPPED not in TRANSITIONS[current]:
        return False
    client.set_tag(run_id, P + "state", str(STOPPED))
    return True


def set_parent_state(client: Any, run_id: str, state: ParentState | str) -> None:
    """Move a parent along PARENT_TRANSITIONS and set the matching MLflow status."""
    state = ParentState(state)
    current = ParentState(client.get_run(run_id).data.tags.get(P + "state", "running"))
    if current != state and state not in PARENT_TRANSITIONS[current]:
        raise IllegalTransition(f"PBT parent run state cannot move {current} -> {state}")
    client.set_tag(run_id, P + "state", str(state))
    if state == ParentState.RUNNING:
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=PARENT_STATUS[state])


def record_best_checkpoint(client: Any, run_id: str, artifact_path: str) -> None:
    client.set_tag(run_id, BEST_CHECKPOINT, artifact_path)


def best_checkpoint(run: Any, artifacts: list[str]) -> str | None:
    """The artifact to sample a run's model from: its BEST_CHECKPOINT tag, else
    checkpoints/best.ckpt, else checkpoints/last.ckpt (runs made before the tag existed)."""
    tagged = run.data.tags.get(BEST_CHECKPOINT)
    found = [
        p for p in (tagged, "checkpoints/best.ckpt", "checkpoints/last.ckpt") if p in artifacts
    ]
    return found[0] if found else None


def beat_controller(client: Any, parent: str) -> None:
    """The CONTROLLER tag of a parent: this process drives it, alive now."""
    import os
    import socket

    info = {"host": socket.gethostname(), "pid": os.getpid(), "beat": round(time.time(), 1)}
    client.set_tag(parent, CONTROLLER, json.dumps(info))

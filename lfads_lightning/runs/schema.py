"""Population state, kept only in MLflow.

One parent run per PBT experiment; one child run per member per generation per attempt. A child
run's tags carry everything the controller needs to rebuild the population after a crash:
member, generation, attempt, state, lineage (the run it was copied from), job handle, fitness.
State transitions are explicit: queued -> running -> finished | failed; finished -> exploited.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from lfads_lightning.runs import tracking

P = tracking.TAG_PREFIX
QUEUED, RUNNING, FINISHED, FAILED, EXPLOITED = (
    "queued",
    "running",
    "finished",
    "failed",
    "exploited",
)
FITNESS_METRIC = "pbt/fitness"


@dataclass
class MemberRun:
    run_id: str
    member: int
    generation: int
    attempt: int
    state: str
    mlflow_status: str
    fitness: float | None
    copied_from: str | None
    copied_from_member: int | None
    hparams: dict[str, float]
    job: dict[str, Any] = field(default_factory=dict)
    heartbeat: float | None = None
    start_time: float | None = None

    @property
    def done(self) -> bool:
        return self.state in (FINISHED, EXPLOITED, FAILED)

    @property
    def usable(self) -> bool:
        """Finished with a finite fitness: may be compared and copied."""
        return (
            self.state in (FINISHED, EXPLOITED)
            and self.fitness is not None
            and math.isfinite(self.fitness)
        )


def _float(value: str | None) -> float | None:
    if value in (None, "", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def member_from_run(run: Any) -> MemberRun:
    tags = run.data.tags
    fitness = run.data.metrics.get(FITNESS_METRIC)
    copied_member = tags.get(P + "copied_from_member")
    return MemberRun(
        run_id=run.info.run_id,
        member=int(tags[P + "member"]),
        generation=int(tags[P + "generation"]),
        attempt=int(tags.get(P + "attempt", "0")),
        state=tags.get(P + "state", QUEUED),
        mlflow_status=run.info.status,
        fitness=None if fitness is None else float(fitness),
        copied_from=tags.get(P + "copied_from") or None,
        copied_from_member=int(copied_member) if copied_member not in (None, "") else None,
        hparams=json.loads(tags.get(P + "hparams", "{}")),
        job=json.loads(tags.get(P + "job", "{}")),
        heartbeat=_float(tags.get(P + "heartbeat")),
        start_time=run.info.start_time / 1000.0 if run.info.start_time else None,
    )


def load_members(client: Any, parent_run_id: str) -> list[MemberRun]:
    """Every child run of the PBT parent, all pages."""
    parent = client.get_run(parent_run_id)
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
    return [member_from_run(r) for r in runs if P + "member" in r.data.tags]


def latest_attempts(members: list[MemberRun], generation: int) -> dict[int, MemberRun]:
    """member id -> its latest attempt in `generation`."""
    latest: dict[int, MemberRun] = {}
    for m in members:
        if m.generation == generation and (
            m.member not in latest or m.attempt > latest[m.member].attempt
        ):
            latest[m.member] = m
    return latest


def set_state(client: Any, run_id: str, state: str) -> None:
    client.set_tag(run_id, P + "state", state)


def best_per_generation(members: list[MemberRun]) -> list[float]:
    """Best (lowest) usable fitness of each finished generation, in order."""
    generations = sorted({m.generation for m in members})
    bests = []
    for g in generations:
        values = [m.fitness for m in latest_attempts(members, g).values() if m.usable]
        bests.append(min(values) if values else math.nan)
    return bests

"""The PBT controller: applies the pure rules to a population whose state lives in MLflow.

It keeps nothing MLflow does not have. Each pass re-reads the population, so a controller killed
at any point and started again (`lfads pbt --resume PARENT`) continues where it was: finished
member runs are never redone, running jobs are adopted, decisions already written are reused
(they are also a deterministic function of the generation's results and the seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from lfads_lightning.config import LfadsConfig, dump_yaml
from lfads_lightning.errors import LfadsError
from lfads_lightning.pbt.config import PbtConfig, with_hparams
from lfads_lightning.pbt.rules import PopulationFailed, explore, select, should_stop
from lfads_lightning.pbt.space import initial_population
from lfads_lightning.runs import tracking
from lfads_lightning.runs.schema import (
    EXPLOITED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    MemberRun,
    P,
    best_per_generation,
    latest_attempts,
    load_members,
    set_state,
)

PBT_ARTIFACT = "pbt.yaml"


def _test_kill_point(name: str, generation: int) -> None:
    """Test hook: LFADS_TEST_KILL_AT=name:generation SIGKILLs the controller right here."""
    if os.environ.get("LFADS_TEST_KILL_AT") == f"{name}:{generation}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def decisions_path(generation: int) -> str:
    return f"decisions/gen_{generation:03d}.json"


def target_epoch(pbt: PbtConfig, generation: int) -> int:
    """Cumulative epochs at the end of `generation`; the first one also covers the burn-in."""
    return pbt.burn_in + (generation + 1) * pbt.epochs_per_generation


class Controller:
    def __init__(
        self,
        uri: str,
        parent_run_id: str,
        base: LfadsConfig,
        pbt: PbtConfig,
        launcher: Any,
        poll_interval: float = 1.0,
        threads_per_member: int = 1,
        concurrency: int = 1,
        log: Any = None,
    ) -> None:
        self.uri = uri
        self.client = tracking.client(uri)
        self.parent = parent_run_id
        self.base = base
        self.pbt = pbt
        self.launcher = launcher
        self.poll_interval = poll_interval
        self.threads = threads_per_member
        # Last time each member's job was seen queued: the heartbeat clock starts when it runs.
        self._last_queued: dict[str, float] = {}
        self.concurrency = max(1, concurrency)
        self._log = log or (lambda msg: print(f"lfads pbt: {msg}", file=sys.stderr, flush=True))

    # ------------------------------------------------------------------ member runs

    def create_member_run(
        self,
        member: int,
        generation: int,
        hparams: dict[str, float],
        copied_from: str | None,
        copied_from_member: int | None,
        attempt: int = 0,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        epochs = self.epochs_for(generation)
        train = {
            "max_epochs": epochs,
            "early_stopping": False,
            "progress_bar": False,
            "threads": self.threads,
        }
        cfg = with_hparams(self.base, hparams, **train)
        name = self.run_name(member, generation) + (f"-retry{attempt}" if attempt else "")
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, run_name=name))
        tags = {
            "kind": "pbt_member",
            "member": str(member),
            "generation": str(generation),
            "attempt": str(attempt),
            "state": QUEUED,
            "copied_from": copied_from or "",
            "copied_from_member": "" if copied_from_member is None else str(copied_from_member),
            "hparams": json.dumps(hparams, sort_keys=True),
            "target_epoch": str(epochs),
            "launcher": self.launcher.name,
            **(extra_tags or {}),
        }
        # Lineage as a param too: MLflow's compare view shows params (and tags only per run).
        params = {
            "pbt.member": member,
            "pbt.generation": generation,
            "pbt.attempt": attempt,
            "pbt.copied_from_member": "" if copied_from_member is None else copied_from_member,
        }
        return tracking.create_config_run(
            cfg, self.uri, tags, parent_run_id=self.parent, extra_params=params
        )

    def epochs_for(self, generation: int) -> int:
        return target_epoch(self.pbt, generation)

    def run_name(self, member: int, generation: int) -> str:
        return f"m{member:02d}-g{generation:03d}"

    def _member_tags(self, member: int) -> dict[str, str]:
        """Per-member extra tags from the test-only fault plan (LFADS_TEST_FAULT_PLAN, JSON)."""
        plan = os.environ.get("LFADS_TEST_FAULT_PLAN")
        if not plan:
            return {}
        fault = json.loads(plan).get(str(member))
        return {"test_fault": fault} if fault else {}

    # ------------------------------------------------------------------ the loop

    def run(self) -> str:
        """Drive the population to the end; returns the best member's run id."""
        self.launcher.prestart(self.concurrency, self.threads)
        while True:
            members = load_members(self.client, self.parent)
            generation = max((m.generation for m in members), default=-1)
            if generation < 0:
                self._seed_population()
                continue
            if len(latest_attempts(members, generation)) < self.pbt.population:
                self._create_generation(generation, members)
                continue
            self._run_generation(generation)
            members = load_members(self.client, self.parent)
            latest = latest_attempts(members, generation)
            alive = [m for m in latest.values() if m.usable]
            bests = best_per_generation(members)
            self._log_generation(generation, latest, bests)
            if len(alive) < 2:
                raise LfadsError(
                    f"PBT stopped at generation {generation}: only {len(alive)} member(s) finished; "
                    f"see the failed member runs' lfads.error tags"
                )
            if generation + 1 >= self.pbt.max_generations or should_stop(
                bests, self.pbt.patience, self.pbt.min_improvement
            ):
                best = min(alive, key=lambda m: m.fitness)
                self._log(
                    f"stopping after generation {generation}; best member {best.member} (fitness {best.fitness:.6g})"
                )
                return best.run_id
            self._advance(generation, latest, members)

    def _seed_population(self) -> None:
        population = initial_population(self.pbt.space, self.pbt.population, self.pbt.seed)
        self._log(f"generation 0: creating {len(population)} members")
        for member, hparams in enumerate(population):
            self.create_member_run(
                member, 0, hparams, None, None, extra_tags=self._member_tags(member)
            )

    def _create_generation(self, generation: int, members: list[MemberRun]) -> None:
        """Create the member runs of `generation` that do not exist yet (after a crash)."""
        existing = latest_attempts(members, generation)
        if generation == 0:
            plan = {
                str(i): {"hparams": hp, "copied_from": None, "copied_from_member": None}
                for i, hp in enumerate(
                    initial_population(self.pbt.space, self.pbt.population, self.pbt.seed)
                )
            }
        else:
            plan = self._load_decisions(generation - 1)["next"]
        for key, entry in sorted(plan.items(), key=lambda kv: int(kv[0])):
            member = int(key)
            if member not in existing:
                self.create_member_run(
                    member,
                    generation,
                    entry["hparams"],
                    entry["copied_from"],
                    entry["copied_from_member"],
                    extra_tags=self._member_tags(member) if generation == 0 else None,
                )
                _test_kill_point("mid_creation", generation)

    def _run_generation(self, generation: int) -> None:
        latest = latest_attempts(load_members(self.client, self.parent), generation)
        pending: deque[MemberRun] = deque(m for _, m in sorted(latest.items()) if m.state == QUEUED)
        running: dict[int, MemberRun] = {
            i: m for i, m in latest.items() if m.state == RUNNING and m.mlflow_status == "RUNNING"
        }
        if running:
            self._log(f"generation {generation}: adopting {len(running)} running member job(s)")
        for m in latest.values():  # also the jobs that ended while no controller was running
            if m.job.get("job_id") and m.job.get("launcher") == self.launcher.name:
                self.launcher.adopt(self._handle(m), self.uri)
        n_done = sum(1 for m in latest.values() if m.done)
        self._log(
            f"generation {generation}: {n_done}/{len(latest)} done, {len(pending)} to run (target epoch {target_epoch(self.pbt, generation)})"
        )
        while pending or running:
            batch = []
            while pending and len(running) + len(batch) < self.concurrency:
                batch.append(pending.popleft())
            if batch:
                # One call per batch: the SLURM launcher sends a batch as one job array.
                for m in self._submit(batch):
                    running[m.member] = m
                _test_kill_point("after_submit", generation)
            for member_id, m in list(running.items()):
                outcome = self._check(m)
                if outcome is None:
                    continue
                del running[member_id]
                if outcome == FINISHED:
                    n_done += 1
                    self._log(
                        f"generation {generation}: member {member_id} finished ({n_done}/{len(latest)})"
                    )
                else:
                    retry = self._fail(m, outcome)
                    if retry is not None:
                        pending.append(retry)
                    else:
                        n_done += 1
            if pending or running:
                time.sleep(self.poll_interval)

    def _submit(self, members: list[MemberRun]) -> list[MemberRun]:
        handles = self.launcher.submit_many(
            [m.run_id for m in members], self.uri, threads=self.threads
        )
        submitted = []
        for m, handle in zip(members, handles, strict=True):
            job = {
                "launcher": handle.launcher,
                "job_id": handle.job_id,
                "submitted_at": time.time(),
                **handle.info,
            }
            self.client.set_tag(m.run_id, P + "job", json.dumps(job))
            set_state(self.client, m.run_id, RUNNING)
            submitted.append(dataclasses.replace(m, state=RUNNING, job=job))
        return submitted

    def _handle(self, m: MemberRun) -> Any:
        from launchers import JobHandle

        info = {k: v for k, v in m.job.items() if k not in ("launcher", "job_id", "submitted_at")}
        return JobHandle(
            m.job.get("launcher", self.launcher.name), str(m.job.get("job_id", "")), m.run_id, info
        )

    @staticmethod
    def _closed_outcome(run: Any) -> str | None:
        """FINISHED or a failure reason for a closed run; None while it is RUNNING."""
        status = run.info.status
        if status == "FINISHED":
            fitness = run.data.metrics.get("pbt/fitness")
            if fitness is None or not math.isfinite(fitness):
                return "finished without a finite fitness"
            return FINISHED
        if status in ("FAILED", "KILLED"):
            return run.data.tags.get(P + "error", f"run {status}")
        return None

    def _check(self, m: MemberRun) -> str | None:
        """None while running; FINISHED; or a failure reason."""
        run = self.client.get_run(m.run_id)
        outcome = self._closed_outcome(run)
        if outcome is not None:
            return outcome
        if not m.job.get("job_id"):
            return "no job handle recorded"
        job_state = self.launcher.poll(self._handle(m))
        if job_state.terminal or job_state.value == "unknown":
            time.sleep(0.5)  # the worker may be closing its run right now
            outcome = self._closed_outcome(self.client.get_run(m.run_id))
            return outcome or f"job ended ({job_state.value}) without closing its run"
        if job_state.value == "pending":  # waiting in a cluster queue: nothing to beat yet
            self._last_queued[m.run_id] = time.time()
            return None
        beat = run.data.tags.get(P + "heartbeat")
        last = float(beat) if beat else float(m.job.get("submitted_at", time.time()))
        last = max(last, self._last_queued.get(m.run_id, 0.0))
        if time.time() - last > self.pbt.heartbeat_timeout:
            self.launcher.cancel(self._handle(m))
            return f"no heartbeat for {self.pbt.heartbeat_timeout:.0f} s (hung)"
        return None

    def _fail(self, m: MemberRun, reason: str) -> MemberRun | None:
        """Close the failed attempt; queue a retry if attempts remain."""
        if m.job.get("job_id"):
            self.launcher.cancel(self._handle(m))
        tracking.mark_failed(self.uri, m.run_id, reason)
        set_state(self.client, m.run_id, FAILED)
        if m.attempt < self.pbt.retries:
            self._log(
                f"generation {m.generation}: member {m.member} attempt {m.attempt} failed ({reason}); retrying"
            )
            run_id = self.create_member_run(
                m.member,
                m.generation,
                m.hparams,
                m.copied_from,
                m.copied_from_member,
                attempt=m.attempt + 1,
                extra_tags=self._member_tags(m.member) if m.generation == 0 else None,
            )
            return MemberRun(
                run_id,
                m.member,
                m.generation,
                m.attempt + 1,
                QUEUED,
                "RUNNING",
                None,
                m.copied_from,
                m.copied_from_member,
                m.hparams,
            )
        self._log(
            f"generation {m.generation}: member {m.member} failed after {m.attempt + 1} attempt(s): {reason}"
        )
        return None

    # ------------------------------------------------------------------ exploit / explore

    def _load_decisions(self, generation: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(self.parent, decisions_path(generation), tmp)
            return json.loads(Path(path).read_text())

    def _decisions_exist(self, generation: int) -> bool:
        return any(
            a.path == decisions_path(generation)
            for a in self.client.list_artifacts(self.parent, "decisions")
        )

    def decide(self, generation: int, latest: dict[int, MemberRun]) -> dict[str, Any]:
        """Selection + exploration for the end of `generation`: pure given the results and seed."""
        rng = np.random.default_rng([self.pbt.seed, generation])
        ids = sorted(latest)
        scores = [latest[i].fitness if latest[i].usable else None for i in ids]
        pairs = select(scores, rng, self.pbt.selection, self.pbt.truncation_fraction)
        plan = {
            str(i): {
                "hparams": latest[i].hparams,
                "copied_from": latest[i].run_id,
                "copied_from_member": i,
                "exploited": False,
            }
            for i in ids
        }
        replacements = []
        for loser_idx, winner_idx in pairs:
            loser, winner = latest[ids[loser_idx]], latest[ids[winner_idx]]
            new_hparams, record = explore(winner.hparams, self.pbt.space, rng)
            plan[str(loser.member)] = {
                "hparams": new_hparams,
                "copied_from": winner.run_id,
                "copied_from_member": winner.member,
                "exploited": True,
            }
            replacements.append(
                {
                    "loser": loser.member,
                    "winner": winner.member,
                    "loser_run": loser.run_id,
                    "winner_run": winner.run_id,
                    "loser_fitness": loser.fitness,
                    "winner_fitness": winner.fitness,
                    "loser_state": loser.state,
                    "changes": [
                        {
                            "key": p.key,
                            "old": p.old,
                            "new": p.new,
                            "factor": p.factor,
                            "clipped": p.clipped,
                        }
                        for p in record
                    ],
                }
            )
        return {
            "generation": generation,
            "selection": self.pbt.selection,
            "seed": [self.pbt.seed, generation],
            "scores": {str(i): s for i, s in zip(ids, scores, strict=True)},
            "replacements": replacements,
            "next": plan,
        }

    def _advance(
        self, generation: int, latest: dict[int, MemberRun], members: list[MemberRun]
    ) -> None:
        if self._decisions_exist(generation):
            decisions = self._load_decisions(generation)
        else:
            try:
                decisions = self.decide(generation, latest)
            except PopulationFailed as err:
                raise LfadsError(
                    f"PBT cannot continue after generation {generation}: {err}"
                ) from None
            self.client.log_text(
                self.parent, json.dumps(decisions, indent=1), decisions_path(generation)
            )
            _test_kill_point("after_decisions", generation)
        for rep in decisions["replacements"]:
            if latest[rep["loser"]].state == FINISHED:
                set_state(self.client, rep["loser_run"], EXPLOITED)
            self._log(
                f"generation {generation}: member {rep['loser']} ({_fmt(rep['loser_fitness'])}) copies member "
                f"{rep['winner']} ({_fmt(rep['winner_fitness'])})"
            )
        self._create_generation(generation + 1, members)

    def _log_generation(
        self, generation: int, latest: dict[int, MemberRun], bests: list[float]
    ) -> None:
        fitness = [m.fitness for m in latest.values() if m.usable]
        values = {"pbt/alive": float(len(fitness))}
        if fitness:
            values.update(
                {"pbt/best_fitness": min(fitness), "pbt/median_fitness": float(np.median(fitness))}
            )
        tracking.log_metrics(self.client, self.parent, values, step=generation)
        from lfads_lightning.pbt.report import generation_summary

        self._log(generation_summary(list(latest.values()), generation, self.pbt.max_generations))


def _fmt(value: float | None) -> str:
    return "failed" if value is None else f"{value:.5g}"


def write_pbt_artifacts(client: Any, parent: str, base: LfadsConfig, pbt: PbtConfig) -> None:
    import yaml

    client.log_text(parent, dump_yaml(base), tracking.CONFIG_ARTIFACT)
    client.log_text(parent, yaml.safe_dump(dataclasses.asdict(pbt), sort_keys=False), PBT_ARTIFACT)

"""The PBT controller: applies the pure rules to a population whose state lives in MLflow.

It keeps nothing MLflow does not have. Each pass re-reads the population, so a controller killed
at any point and started again (`lfads pbt --resume PARENT`) continues where it was: finished
member runs are never redone, running jobs are adopted, decisions already written are reused
(they are also a deterministic function of the generation's results and the seed). Member runs
are written and read through `runs.schema` only; the submit/poll/retry loop is `pbt.scheduler`;
every launcher call is in one of the small methods `_submit`, `_adopt`, `_check`, `_cancel`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from launchers import JobHandle, JobSpec, JobState
from lfads_lightning import faults
from lfads_lightning.config import LfadsConfig, job_paths
from lfads_lightning.errors import LfadsError
from lfads_lightning.pbt import lifecycle
from lfads_lightning.pbt.config import PbtConfig, with_hparams
from lfads_lightning.pbt.decisions import decide, decisions_path
from lfads_lightning.pbt.rules import PopulationFailed, should_stop
from lfads_lightning.pbt.scheduler import Scheduler
from lfads_lightning.pbt.space import initial_population
from lfads_lightning.runs import schema, tracking
from lfads_lightning.runs.schema import (
    EXPLOITED,
    FINISHED,
    QUEUED,
    RUNNING,
    STOPPED,
    MemberRun,
    MemberTags,
    P,
    best_per_generation,
    latest_attempts,
    load_members,
    set_state,
)

PBT_ARTIFACT = "pbt.yaml"


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
        log_dir: str | None = None,
    ) -> None:
        self.uri = uri
        self.client = tracking.client(uri)
        self.parent = parent_run_id
        self.base = base
        self.pbt = pbt
        self.launcher = launcher
        self.poll_interval = poll_interval
        self.threads = threads_per_member
        self._job = {"threads": threads_per_member, "log_dir": log_dir, "paths": job_paths(base)}
        # Last time each member's job was seen queued: the heartbeat clock starts when it runs.
        self._last_queued: dict[str, float] = {}
        self.concurrency = max(1, concurrency)
        self.log_dir = log_dir  # where member jobs' logs go (the launcher decides if None)
        self._log = log or (lambda msg: print(f"lfads pbt: {msg}", file=sys.stderr, flush=True))

    # ------------------------------------------------------------------ member runs

    search_tag: str | None = None  # the `lfads.search` tag of the runs (SearchController)

    def create_member_run(
        self,
        member: int,
        generation: int,
        hparams: dict[str, float],
        copied_from: str | None,
        copied_from_member: int | None,
        attempt: int = 0,
    ) -> str:
        epochs = self.epochs_for(generation)
        cfg = with_hparams(
            self.base, hparams, max_epochs=epochs, early_stopping=False, progress_bar=False,
            threads=self.threads,
        )  # fmt: skip
        name = self.run_name(member, generation) + (f"-retry{attempt}" if attempt else "")
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, run_name=name))
        tags = MemberTags(
            member, generation, epochs, attempt, copied_from, copied_from_member,
            self.launcher.name, self.search_tag, hparams,
        )  # fmt: skip
        return tracking.create_config_run(
            cfg, self.uri, tags.to_tags(), parent_run_id=self.parent, extra_params=tags.to_params()
        )

    def new_member(self, member: int, hparams: dict[str, float]) -> MemberRun:
        """A fresh generation-0 member (a search trial), created and queued."""
        run_id = self.create_member_run(member, 0, hparams, None, None)
        return MemberRun(run_id, member, 0, 0, QUEUED, "RUNNING", None, None, None, hparams)

    def epochs_for(self, generation: int) -> int:
        return target_epoch(self.pbt, generation)

    def run_name(self, member: int, generation: int) -> str:
        return f"m{member:02d}-g{generation:03d}"

    # ------------------------------------------------------------------ the loop

    def run(self) -> str:
        """Drive the population to the end; returns the best member's run id."""
        self.launcher.prestart(self.concurrency, self.threads, self.log_dir)
        while True:
            members = load_members(self.client, self.parent)
            generation = max((m.generation for m in members), default=-1)
            if generation < 0 or len(latest_attempts(members, generation)) < self.pbt.population:
                self._create_generation(max(generation, 0), members)
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

    def _create_generation(self, generation: int, members: list[MemberRun]) -> None:
        """Create the member runs of `generation` that do not exist yet (also after a crash)."""
        existing = latest_attempts(members, generation)
        if generation == 0:
            population = initial_population(self.pbt.space, self.pbt.population, self.pbt.seed)
            plan = {
                str(i): {"hparams": hp, "copied_from": None, "copied_from_member": None}
                for i, hp in enumerate(population)
            }
            if not existing:
                self._log(f"generation 0: creating {len(plan)} members")
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
                )
                faults.point("controller.mid_creation", generation=generation)

    def _run_generation(self, generation: int) -> None:
        latest = latest_attempts(load_members(self.client, self.parent), generation)
        pending, running = self._resume(generation, latest)
        done = [sum(1 for m in latest.values() if m.done)]
        self._log(
            f"generation {generation}: {done[0]}/{len(latest)} done, {len(pending)} to run (target epoch {target_epoch(self.pbt, generation)})"
        )

        def on_done(m: MemberRun, outcome: str) -> None:
            done[0] += 1
            if outcome == FINISHED:
                self._log(
                    f"generation {generation}: member {m.member} finished ({done[0]}/{len(latest)})"
                )

        self.scheduler().run(pending, running, on_done=on_done)

    def scheduler(self) -> Scheduler:
        return Scheduler(
            self._submit, self._check, self._fail, self.concurrency, self.poll_interval,
            stop=self.check_stop,
        )  # fmt: skip

    def check_stop(self) -> None:
        """Each pass: refresh the controller's tag; a stop request raises StopRequested."""
        run = self.client.get_run(self.parent)
        if lifecycle.stop_requested(run):
            raise lifecycle.StopRequested(self.parent)
        if (
            time.time() - lifecycle.controller_info(run).get("beat", 0)
            >= lifecycle.CONTROLLER_BEAT_S
        ):
            lifecycle.beat_controller(self.client, self.parent)

    def _resume(
        self, generation: int, latest: dict[int, MemberRun]
    ) -> tuple[list[MemberRun], list[MemberRun]]:
        """(queued, running) members of a generation; adopts the jobs a killed controller left."""
        for key, m in sorted(latest.items()):  # stopped by Ctrl-C or SIGTERM: run it again
            if m.state == STOPPED:
                self._log(
                    f"generation {generation}: member {m.member} was stopped; running it again"
                )
                latest[key] = m.retry(self._new_attempt(m))
        pending = [m for _, m in sorted(latest.items()) if m.state == QUEUED]
        running = [
            m for _, m in sorted(latest.items())
            if m.state == RUNNING and m.mlflow_status == "RUNNING"
        ]  # fmt: skip
        if running:
            self._log(f"generation {generation}: adopting {len(running)} running member job(s)")
        for m in latest.values():  # also the jobs that ended while no controller was running
            if m.job.get("job_id") and m.job.get("launcher") == self.launcher.name:
                self._adopt(m)
        return pending, running

    # ------------------------------------------------------------------ launcher calls

    def _submit(self, members: list[MemberRun]) -> list[MemberRun]:
        handles = self.launcher.submit_many([self._spec(m) for m in members])
        submitted = []
        for m, handle in zip(members, handles, strict=True):
            job = {
                "launcher": handle.launcher,
                "job_id": handle.job_id,
                "submitted_at": time.time(),
                **handle.info,
            }
            schema.set_job(self.client, m.run_id, job)
            schema.mark_submitted(self.client, m.run_id)
            submitted.append(dataclasses.replace(m, state=RUNNING, job=job))
        return submitted

    def _spec(self, m: MemberRun) -> JobSpec:
        """The member's worker job: labelled with the PBT run, member, generation and attempt."""
        labels = {
            "kind": "pbt_member",
            "pbt-run": self.parent,
            "member": str(m.member),
            "generation": str(m.generation),
            "attempt": str(m.attempt),
        }
        name = self.run_name(m.member, m.generation) + f"-a{m.attempt}"
        return JobSpec(m.run_id, self.uri, labels=labels, name=name, **self._job)

    def final_spec(self) -> JobSpec:
        """The job that posterior-samples the best member onto the parent run (worker/final)."""
        labels = {"kind": "pbt_final", "pbt-run": self.parent}
        return JobSpec(self.parent, self.uri, labels=labels, **self._job)

    def _handle(self, m: MemberRun) -> JobHandle:
        return lifecycle.handle_of(m, self.launcher.name)

    def _adopt(self, m: MemberRun) -> None:
        self.launcher.adopt(self._handle(m))

    def _cancel(self, m: MemberRun) -> None:
        if m.job.get("launcher", self.launcher.name) == self.launcher.name:
            self.launcher.cancel(self._handle(m))

    def _check(self, m: MemberRun) -> str | None:
        """None while running; FINISHED; or a failure reason."""
        run = self.client.get_run(m.run_id)
        outcome = lifecycle.closed_outcome(run)
        if outcome is not None:
            if m.job.get("job_id") and m.job.get("launcher") == self.launcher.name:
                self.launcher.release(self._handle(m))
            return outcome
        if not m.job.get("job_id"):
            return "no job handle recorded"
        if m.job.get("launcher", self.launcher.name) != self.launcher.name:
            # Submitted by another launcher before the run moved (`--resume --launcher X`): this
            # one cannot poll it; the run's own status and its heartbeat tell.
            job_state = JobState.RUNNING
        else:
            job_state = self.launcher.poll(self._handle(m))
        if job_state.terminal or job_state == JobState.UNKNOWN:
            time.sleep(0.5)  # the worker may be closing its run right now
            outcome = lifecycle.closed_outcome(self.client.get_run(m.run_id))
            how = self.launcher.describe(self._handle(m))
            return outcome or f"job ended ({how}) without closing its run"
        if job_state == JobState.PENDING:  # waiting in a cluster queue: nothing to beat yet
            self._last_queued[m.run_id] = time.time()
            return None
        beat = run.data.tags.get(P + "heartbeat")
        last = float(beat) if beat else float(m.job.get("submitted_at", time.time()))
        last = max(last, self._last_queued.get(m.run_id, 0.0))
        if time.time() - last > self.pbt.heartbeat_timeout:  # _fail closes the run, then cancels
            return f"no heartbeat for {self.pbt.heartbeat_timeout:.0f} s (hung)"
        return None

    def _fail(self, m: MemberRun, reason: str) -> MemberRun | None:
        """Close the failed attempt (state failed, via the schema); queue a retry if any remain."""
        # The run first, then the job: a worker stopped by the cancel closes its run too (KILLED,
        # "stopped by SIGTERM"), and the controller's reason is the one that says why.
        schema.mark_failed(self.uri, m.run_id, reason)
        if m.job.get("job_id"):
            self._cancel(m)
        stopped = sum(  # stopped attempts (Ctrl-C, then --resume) are no failures
            1 for x in load_members(self.client, self.parent)
            if (x.member, x.generation, x.state) == (m.member, m.generation, STOPPED)
        )  # fmt: skip
        failures = m.attempt + 1 - stopped
        if failures <= self.pbt.retries:
            self._log(
                f"generation {m.generation}: member {m.member} attempt {m.attempt} failed ({reason}); retrying"
            )
            return m.retry(self._new_attempt(m))
        self._log(
            f"generation {m.generation}: member {m.member} failed after {m.attempt + 1} attempt(s): {reason}"
        )
        return None

    def _new_attempt(self, m: MemberRun) -> str:
        return self.create_member_run(
            m.member, m.generation, m.hparams, m.copied_from, m.copied_from_member, m.attempt + 1
        )

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

    def _advance(
        self, generation: int, latest: dict[int, MemberRun], members: list[MemberRun]
    ) -> None:
        if self._decisions_exist(generation):
            decisions = self._load_decisions(generation)
        else:
            try:
                decisions = decide(self.pbt, generation, latest)
            except PopulationFailed as err:
                raise LfadsError(
                    f"PBT cannot continue after generation {generation}: {err}"
                ) from None
            self.client.log_text(
                self.parent, json.dumps(decisions, indent=1), decisions_path(generation)
            )
            faults.point("controller.after_decisions", generation=generation)
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

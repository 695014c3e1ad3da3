"""`lfads search`: an Optuna search (random or TPE) over the PBT search space.

The baseline earlier AutoLFADS systems offered next to PBT. It uses the same launchers, the same
member worker and the same MLflow layout (a parent run, one child run per trial, all
"generation 0"); each trial trains for PBT's whole epoch budget (burn-in + max_generations x
epochs_per_generation), so both spend the same epochs per member. Trials are asked one at a time
as launcher slots free up, so TPE sees every finished trial. Resuming replays the finished trials
from MLflow into a new study.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import Any

from lfads_lightning.pbt.controller import Controller, target_epoch
from lfads_lightning.runs.schema import (
    FINISHED,
    QUEUED,
    RUNNING,
    MemberRun,
    latest_attempts,
    load_members,
)

SAMPLERS = ("random", "tpe")


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, 4))
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


class SearchController(Controller):
    def __init__(
        self, *args: Any, sampler: str = "random", n_trials: int = 8, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.n_trials = n_trials

    def epochs_for(self, generation: int) -> int:
        return target_epoch(self.pbt, self.pbt.max_generations - 1)

    def run_name(self, member: int, generation: int) -> str:
        return f"trial-{member:03d}"

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {
            hp.key: FloatDistribution(hp.min, hp.max, log=hp.sampling == "log_uniform")
            for hp in self.pbt.space
        }

    def run(self) -> str:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=make_sampler(self.sampler, self.pbt.seed))
        dists = self._distributions()
        latest = latest_attempts(load_members(self.client, self.parent), 0)
        told: set[int] = set()
        for _, m in sorted(latest.items()):
            if m.done:
                self._record(study, m, told)
        pending: deque[MemberRun] = deque(m for _, m in sorted(latest.items()) if m.state == QUEUED)
        running = {
            i: m for i, m in latest.items() if m.state == RUNNING and m.mlflow_status == "RUNNING"
        }
        next_trial = max(latest, default=-1) + 1
        asked: dict[int, Any] = {}
        self._log(
            f"{self.sampler} search: {len(told)}/{self.n_trials} trials done, {self.epochs_for(0)} epochs each"
        )
        while pending or running or next_trial < self.n_trials:
            while len(running) < self.concurrency and (pending or next_trial < self.n_trials):
                if pending:
                    m = pending.popleft()
                else:
                    trial = study.ask(dists)
                    hparams = {k: float(v) for k, v in trial.params.items()}
                    run_id = self.create_member_run(
                        next_trial, 0, hparams, None, None, extra_tags={"search": self.sampler}
                    )
                    asked[next_trial] = trial
                    m = MemberRun(
                        run_id, next_trial, 0, 0, QUEUED, "RUNNING", None, None, None, hparams
                    )
                    next_trial += 1
                (running[m.member],) = self._submit([m])
            for i, m in list(running.items()):
                outcome = self._check(m)
                if outcome is None:
                    continue
                del running[i]
                if outcome != FINISHED:
                    retry = self._fail(m, outcome)
                    if retry is not None:
                        pending.append(retry)
                        continue
                final = latest_attempts(load_members(self.client, self.parent), 0)[i]
                self._record(study, final, told, asked.pop(i, None))
                self._log(f"trial {i} done ({len(told)}/{self.n_trials}): fitness {final.fitness}")
            if pending or running or next_trial < self.n_trials:
                time.sleep(self.poll_interval)
        members = latest_attempts(load_members(self.client, self.parent), 0)
        usable = [m for m in members.values() if m.usable]
        if not usable:
            from lfads_lightning.errors import LfadsError

            raise LfadsError(
                "search finished with no successful trial; see the trial runs' lfads.error tags"
            )
        best = min(usable, key=lambda m: m.fitness)
        print(
            f"lfads search: best trial {best.member} (fitness {best.fitness:.6g})", file=sys.stderr
        )
        return best.run_id

    def _record(self, study: Any, m: MemberRun, told: set[int], trial: Any = None) -> None:
        """Tell the study a finished trial (asked here) or add it (replayed after a resume)."""
        import optuna

        if m.member in told:
            return
        told.add(m.member)
        ok = m.usable and m.fitness is not None and math.isfinite(m.fitness)
        if trial is not None:
            study.tell(
                trial, m.fitness if ok else None, state=None if ok else optuna.trial.TrialState.FAIL
            )
            return
        state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(
                params=m.hparams,
                distributions=self._distributions(),
                value=m.fitness if ok else None,
                state=state,
            )
        )

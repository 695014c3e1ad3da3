"""`lfads search`: an Optuna search (random or TPE) over the PBT search space.

The baseline earlier AutoLFADS systems offered next to PBT. It uses the same launchers, the same
member worker, the same scheduler loop (`pbt.scheduler`) and the same MLflow layout (a parent
run, one child run per trial, all "generation 0"); each trial trains for PBT's whole epoch budget
(burn-in + max_generations x epochs_per_generation), so both spend the same epochs per member.
Trials are asked one at a time as scheduler slots free up, so TPE sees every finished trial.
Resuming replays the finished trials from MLflow into a new study.
"""

from __future__ import annotations

import sys
from typing import Any

from lfads_lightning.errors import LfadsError
from lfads_lightning.pbt.controller import Controller, target_epoch
from lfads_lightning.pbt.space import distributions
from lfads_lightning.runs.schema import MemberRun, latest_attempts, load_members

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
        self.search_tag = sampler
        self.n_trials = n_trials

    def epochs_for(self, generation: int) -> int:
        return target_epoch(self.pbt, self.pbt.max_generations - 1)

    def run_name(self, member: int, generation: int) -> str:
        return f"trial-{member:03d}"

    def run(self) -> str:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=make_sampler(self.sampler, self.pbt.seed))
        dists = distributions(self.pbt.space)
        latest = latest_attempts(load_members(self.client, self.parent), 0)
        told: set[int] = set()
        for _, m in sorted(latest.items()):
            if m.done:
                self._record(study, m, told)
        pending, running = self._resume(0, latest)
        next_trial = [max(latest, default=-1) + 1]
        asked: dict[int, Any] = {}
        self._log(
            f"{self.sampler} search: {len(told)}/{self.n_trials} trials done, {self.epochs_for(0)} epochs each"
        )

        def ask() -> MemberRun | None:
            if next_trial[0] >= self.n_trials:
                return None
            trial = study.ask(dists)
            m = self.new_member(next_trial[0], {k: float(v) for k, v in trial.params.items()})
            asked[m.member] = trial
            next_trial[0] += 1
            return m

        def on_done(m: MemberRun, outcome: str) -> None:
            final = latest_attempts(load_members(self.client, self.parent), 0)[m.member]
            self._record(study, final, told, asked.pop(m.member, None))
            self._log(
                f"trial {m.member} done ({len(told)}/{self.n_trials}): fitness {final.fitness}"
            )

        self.scheduler().run(pending, running, ask=ask, on_done=on_done)
        return self._best()

    def _best(self) -> str:
        members = latest_attempts(load_members(self.client, self.parent), 0)
        usable = [m for m in members.values() if m.usable]
        if not usable:
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
        ok = m.usable  # finished with a finite fitness (schema.is_finite)
        if trial is not None:
            study.tell(
                trial, m.fitness if ok else None, state=None if ok else optuna.trial.TrialState.FAIL
            )
            return
        state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(
                params=m.hparams,
                distributions=distributions(self.pbt.space),
                value=m.fitness if ok else None,
                state=state,
            )
        )

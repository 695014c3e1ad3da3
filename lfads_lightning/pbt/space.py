"""The hyperparameter search space and the initial population (drawn with Optuna)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lfads_lightning.errors import ConfigError

SAMPLING = ("uniform", "log_uniform")


@dataclass
class HyperParameter:
    """One searched config key, e.g. `train.lr` or `loss.kl_ic_scale`."""

    key: str
    min: float
    max: float
    # A fixed starting value for every member; None draws one per member with `sampling`.
    init: float | None = None
    sampling: str = "uniform"
    explore_weight: float = 0.3
    # While exploring: True keeps values inside [min, max]; False only keeps them >= 0.
    enforce_bounds: bool = True

    def check(self) -> None:
        if self.sampling not in SAMPLING:
            raise ConfigError(
                f"pbt.space {self.key}: sampling {self.sampling!r} is not one of {', '.join(SAMPLING)}"
            )
        if not self.min < self.max:
            raise ConfigError(f"pbt.space {self.key}: min ({self.min}) must be < max ({self.max})")
        if self.sampling == "log_uniform" and self.min <= 0:
            raise ConfigError(f"pbt.space {self.key}: log_uniform needs min > 0")
        if self.init is not None and not self.min <= self.init <= self.max:
            raise ConfigError(
                f"pbt.space {self.key}: init {self.init} is outside [{self.min}, {self.max}]"
            )
        if self.explore_weight < 0:
            raise ConfigError(f"pbt.space {self.key}: explore_weight must be >= 0")


def distributions(space: Sequence[HyperParameter]) -> dict[str, Any]:
    """Optuna's distribution of each searched key (the one place they are built)."""
    from optuna.distributions import FloatDistribution

    return {
        hp.key: FloatDistribution(hp.min, hp.max, log=hp.sampling == "log_uniform") for hp in space
    }


def initial_population(
    space: Sequence[HyperParameter], size: int, seed: int
) -> list[dict[str, float]]:
    """`size` hyperparameter sets: fixed inits as given, the rest from a seeded Optuna sampler."""
    import optuna

    for hp in space:
        hp.check()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = distributions([hp for hp in space if hp.init is None])
    members = []
    for _ in range(size):
        trial = study.ask(drawn)
        values = {
            hp.key: float(hp.init) if hp.init is not None else float(trial.params[hp.key])
            for hp in space
        }
        members.append(values)
    return members

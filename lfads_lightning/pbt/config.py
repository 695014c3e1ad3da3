"""The `pbt:` section of a config file: population, generations, selection, search space."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfads_lightning.config import (
    LfadsConfig,
    apply_overrides,
    from_dict,
    pop_launcher_sections,
    read_yaml,
    set_fields,
    validate,
)
from lfads_lightning.errors import ConfigError
from lfads_lightning.pbt.space import HyperParameter


def autolfads_space() -> list[HyperParameter]:
    """The AutoLFADS search space used for NLB data (LFADS.md)."""
    return [
        HyperParameter(
            "train.lr", 1e-5, 5e-3, init=4e-3, sampling="log_uniform", explore_weight=0.3
        ),
        HyperParameter("model.dropout_rate", 0.0, 0.6, sampling="uniform", explore_weight=0.3),
        HyperParameter(
            "model.cd_rate", 0.01, 0.7, init=0.5, sampling="uniform", explore_weight=0.3
        ),
        HyperParameter(
            "loss.l2_gen_scale",
            1e-4,
            1.0,
            sampling="log_uniform",
            explore_weight=0.8,
            enforce_bounds=False,
        ),
        HyperParameter(
            "loss.l2_con_scale",
            1e-4,
            1.0,
            sampling="log_uniform",
            explore_weight=0.8,
            enforce_bounds=False,
        ),
        HyperParameter(
            "loss.kl_co_scale",
            1e-6,
            1e-4,
            sampling="log_uniform",
            explore_weight=0.8,
            enforce_bounds=False,
        ),
        HyperParameter(
            "loss.kl_ic_scale",
            1e-6,
            1e-3,
            sampling="log_uniform",
            explore_weight=0.8,
            enforce_bounds=False,
        ),
    ]


@dataclass
class PbtConfig:
    population: int = 8
    epochs_per_generation: int = 25
    # Extra epochs in the first generation, so that it also covers the KL/L2 ramps.
    burn_in: int = 80
    max_generations: int = 20
    # Stop rule: best fitness over the last `patience` generations improved by <= min_improvement.
    patience: int = 4
    min_improvement: float = 5e-4
    selection: str = "tournament"
    truncation_fraction: float = 0.25
    seed: int = 0
    # Members running at once (0: as many as the launcher suggests, e.g. the cores for local).
    concurrency: int = 0
    # Attempts after the first for a member whose job crashed, hung or reported NaN.
    retries: int = 2
    # A running member with no heartbeat for this long is considered hung (seconds).
    heartbeat_timeout: float = 600.0
    space: list[HyperParameter] = field(default_factory=autolfads_space)


def validate_pbt(pbt: PbtConfig, base: LfadsConfig) -> PbtConfig:
    if pbt.population < 2:
        raise ConfigError(f"pbt.population must be >= 2, got {pbt.population}")
    if pbt.epochs_per_generation < 1 or pbt.max_generations < 1 or pbt.burn_in < 0:
        raise ConfigError(
            "pbt.epochs_per_generation and pbt.max_generations must be >= 1, pbt.burn_in >= 0"
        )
    if pbt.selection not in ("tournament", "truncation"):
        raise ConfigError(f"pbt.selection: {pbt.selection!r} is not one of tournament, truncation")
    if not 0.0 < pbt.truncation_fraction <= 0.5:
        raise ConfigError(
            f"pbt.truncation_fraction must be in (0, 0.5], got {pbt.truncation_fraction}"
        )
    if pbt.retries < 0 or pbt.heartbeat_timeout <= 0:
        raise ConfigError("pbt.retries must be >= 0 and pbt.heartbeat_timeout > 0")
    keys = set()
    for hp in pbt.space:
        hp.check()
        section, _, name = hp.key.partition(".")
        target = getattr(base, section, None) if section in ("model", "loss", "train") else None
        if (
            target is None
            or not hasattr(target, name)
            or not isinstance(getattr(target, name), float)
        ):
            raise ConfigError(
                f"pbt.space: {hp.key!r} is not a float key of the model, loss or train sections"
            )
        if hp.key in keys:
            raise ConfigError(f"pbt.space: {hp.key!r} is listed twice")
        keys.add(hp.key)
    return pbt


def load_pbt_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> tuple[LfadsConfig, PbtConfig]:
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    pbt_raw = raw.pop("pbt", None) or {}
    pop_launcher_sections(raw)  # read by the launcher (load_launcher_sections)
    base = validate(from_dict(LfadsConfig, raw))
    pbt = validate_pbt(from_dict(PbtConfig, pbt_raw, "pbt."), base)
    return base, pbt


def with_hparams(
    cfg: LfadsConfig, hparams: dict[str, float], **train_overrides: Any
) -> LfadsConfig:
    """A copy of `cfg` with searched hyperparameters (and train fields) set."""
    return set_fields(cfg, {**hparams, **{f"train.{k}": v for k, v in train_overrides.items()}})

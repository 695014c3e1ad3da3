"""The PBT rules as pure functions: selection (exploit), perturbation (explore), stopping.

They take a `numpy.random.Generator` and return decisions; the controller applies them. Lower
fitness is better (it is `valid/recon_smth`). A member whose fitness is NaN/inf, or None (its
job failed), always loses and is never copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lfads_lightning.pbt.space import HyperParameter
from lfads_lightning.runs.schema import is_finite


class PopulationFailed(RuntimeError):
    """No member has a usable fitness: there is nobody to copy."""


is_valid = is_finite  # the schema's one finiteness check


def select(
    scores: Sequence[float | None],
    rng: np.random.Generator,
    method: str = "tournament",
    fraction: float = 0.25,
) -> list[tuple[int, int]]:
    """(loser, winner) pairs: each loser restarts from a copy of its winner.

    tournament: shuffle, pair neighbours, the worse of each pair copies the better -> floor(N/2)
    replaced. Invalid members are replaced too (by a random valid member) even when unpaired.
    truncation: the bottom `fraction` (and every invalid member) copy a random top-`fraction` member.
    """
    n = len(scores)
    valid = [i for i in range(n) if is_valid(scores[i])]
    if not valid:
        raise PopulationFailed("every member failed or has a non-finite fitness")
    if method == "tournament":
        pairs = _tournament(scores, rng)
        losers = {loser for loser, _ in pairs}
        # Donors for invalid members: valid members that keep their own weights (never a loser,
        # so what is copied does not depend on the order the controller applies the pairs).
        donors = [i for i in valid if i not in losers]
    elif method == "truncation":
        pairs, donors = _truncation(scores, valid, rng, fraction)
        losers = {loser for loser, _ in pairs}
    else:
        raise ValueError(f"unknown selection method {method!r}; valid: tournament, truncation")
    for i in range(n):  # every invalid member must be replaced, paired or not
        if not is_valid(scores[i]) and i not in losers:
            pairs.append((i, int(rng.choice(donors))))
    return sorted(pairs)


def _tournament(scores: Sequence[float | None], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Pairs of neighbours after a shuffle; pairs of two invalid members are left to select()."""
    order = rng.permutation(len(scores))
    pairs = []
    for a, b in zip(order[0::2], order[1::2], strict=False):
        a, b = int(a), int(b)
        va, vb = is_valid(scores[a]), is_valid(scores[b])
        if va and vb:
            if scores[a] == scores[b]:
                loser, winner = (a, b) if rng.random() < 0.5 else (b, a)
            else:
                loser, winner = (a, b) if scores[a] > scores[b] else (b, a)
            pairs.append((loser, winner))
        elif va or vb:
            pairs.append((b, a) if va else (a, b))
    return pairs


def _truncation(
    scores: Sequence[float | None], valid: list[int], rng: np.random.Generator, fraction: float
) -> tuple[list[tuple[int, int]], list[int]]:
    """(pairs, top members): the bottom `fraction` of valid members copy a random top member."""
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"truncation fraction must be in (0, 0.5], got {fraction}")
    ranked = sorted(valid, key=lambda i: scores[i])
    k = max(1, math.ceil(fraction * len(scores)))
    top = ranked[:k]
    bottom = [i for i in ranked[-k:] if i not in top]
    return [(i, int(rng.choice(top))) for i in bottom], top


@dataclass(frozen=True)
class Perturbation:
    key: str
    old: float
    new: float
    factor: float
    tries: int
    clipped: bool


def perturb(
    value: float, hp: HyperParameter, rng: np.random.Generator, max_tries: int = 100
) -> Perturbation:
    """value * (1 +- u), u ~ U(0.002 w, w); redrawn until inside the bounds, clipped after max_tries.

    Without enforced bounds only non-negativity is enforced (scales must stay >= 0).
    """
    w = hp.explore_weight
    low, high = (hp.min, hp.max) if hp.enforce_bounds else (0.0, math.inf)
    new, factor = value, 1.0
    for tries in range(1, max_tries + 1):
        u = rng.uniform(0.002 * w, w)
        factor = 1.0 + u if rng.random() < 0.5 else 1.0 - u
        new = value * factor
        if low <= new <= high:
            return Perturbation(hp.key, value, new, factor, tries, False)
    clipped = float(min(max(new, low), high))
    return Perturbation(
        hp.key, value, clipped, clipped / value if value else factor, max_tries, True
    )


def explore(
    hparams: dict[str, float], space: Sequence[HyperParameter], rng: np.random.Generator
) -> tuple[dict[str, float], list[Perturbation]]:
    """Perturb every hyperparameter of the space that has an explore weight > 0."""
    new = dict(hparams)
    record = []
    for hp in space:
        if hp.explore_weight <= 0:
            continue
        p = perturb(float(hparams[hp.key]), hp, rng)
        new[hp.key] = p.new
        record.append(p)
    return new, record


def should_stop(
    best_per_generation: Sequence[float], patience: int = 4, min_improvement: float = 5e-4
) -> bool:
    """Stop when the best fitness improved by at most `min_improvement` (relative) over the last
    `patience` generations: (oldest_best - newest_best) / mean(|bests|) <= min_improvement."""
    bests = [b for b in best_per_generation if is_valid(b)]
    if patience < 2 or len(bests) < patience:
        return False
    window = bests[-patience:]
    scale = float(np.mean(np.abs(window)))
    if scale == 0.0:
        return True
    return (window[0] - window[-1]) / scale <= min_improvement

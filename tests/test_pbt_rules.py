"""The PBT rules tested against their definitions (reference: LFADS.md, "AutoLFADS PBT").

Lower fitness is better. A member whose fitness is NaN/inf/None always loses and is never copied.
Properties are checked over many seeds; every test is pure numpy (plus Optuna for the initial
population) and the whole file runs in a few seconds.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from lfads_lightning.errors import ConfigError
from lfads_lightning.pbt.rules import (
    PopulationFailed,
    explore,
    is_valid,
    perturb,
    select,
    should_stop,
)
from lfads_lightning.pbt.space import HyperParameter, initial_population

SEEDS = range(200)
INVALID = (float("nan"), float("inf"), float("-inf"), None)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _score(x: float | None) -> float:
    """Sort key where an invalid score is worse than any valid one."""
    return x if is_valid(x) else math.inf


def _random_scores(rng: np.random.Generator, n: int, p_invalid: float = 0.0, ties: bool = False):
    scores: list[float | None] = []
    for _ in range(n):
        if rng.random() < p_invalid:
            scores.append(INVALID[int(rng.integers(len(INVALID)))])
        elif ties:
            scores.append(float(rng.integers(3)))  # lots of equal scores
        else:
            scores.append(float(rng.normal()))
    return scores


def _check_common(scores, pairs):
    """Properties every selection method must satisfy, whatever the population."""
    n = len(scores)
    losers = [loser for loser, _ in pairs]
    winners = [winner for _, winner in pairs]
    assert all(isinstance(i, int) and 0 <= i < n for pair in pairs for i in pair)
    assert len(set(losers)) == len(losers), "a member is replaced twice"
    for loser, winner in pairs:
        assert loser != winner
        assert is_valid(scores[winner]), f"invalid member {winner} ({scores[winner]}) copied"
        if is_valid(scores[loser]):
            assert scores[loser] >= scores[winner]
    # every invalid member is replaced
    assert {i for i in range(n) if not is_valid(scores[i])} <= set(losers)
    return losers, winners


# --------------------------------------------------------------------------- is_valid


def test_is_valid():
    assert is_valid(0.0) and is_valid(-3.5) and is_valid(1e300) and is_valid(np.float32(2.0))
    for bad in INVALID:
        assert not is_valid(bad)
    assert not is_valid(np.float64("nan"))


# --------------------------------------------------------------------------- tournament


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 11, 20])
def test_tournament_all_valid_pairs_by_definition(n):
    for seed in SEEDS:
        rng = _rng(seed)
        scores = _random_scores(rng, n)
        pairs = select(scores, rng, method="tournament")
        losers, winners = _check_common(scores, pairs)
        assert len(pairs) == n // 2
        assert not set(losers) & set(winners), "a member is both loser and winner"
        # each member is in at most one pair: the pairs partition 2*floor(N/2) members
        assert len(set(losers) | set(winners)) == 2 * (n // 2)
        for loser, winner in pairs:
            assert scores[loser] > scores[winner]  # distinct scores: strict
        untouched = set(range(n)) - set(losers) - set(winners)
        assert len(untouched) == n % 2
        best = min(range(n), key=lambda i: scores[i])
        worst = max(range(n), key=lambda i: scores[i])
        assert best not in losers
        assert worst not in winners


def test_tournament_ties():
    orientation = Counter()
    for seed in SEEDS:
        rng = _rng(seed)
        scores = _random_scores(rng, 9, ties=True)
        pairs = select(scores, rng)
        losers, winners = _check_common(scores, pairs)
        assert len(pairs) == 4
        assert not set(losers) & set(winners)
        for loser, winner in pairs:
            assert scores[loser] >= scores[winner]
    # all-equal scores: both orientations of a pair occur
    for seed in SEEDS:
        (pair,) = select([1.0, 1.0], _rng(seed))
        orientation[pair] += 1
    assert set(orientation) == {(0, 1), (1, 0)}
    assert min(orientation.values()) > 50


@pytest.mark.parametrize("n", [6, 7])
def test_tournament_uses_the_shuffle(n):
    scores = [float(i) for i in range(n)]  # fixed scores: only the rng changes the pairing
    partners: dict[int, set[int]] = {i: set() for i in range(n)}
    untouched = Counter()
    pairings = set()
    for seed in SEEDS:
        pairs = select(scores, _rng(seed))
        pairings.add(tuple(pairs))
        touched = set()
        for loser, winner in pairs:
            partners[loser].add(winner)
            partners[winner].add(loser)
            touched |= {loser, winner}
        for i in set(range(n)) - touched:
            untouched[i] += 1
    for i in range(n):
        assert partners[i] == set(range(n)) - {i}, f"member {i} met only {partners[i]}"
    assert len(pairings) > 10
    if n % 2:
        assert set(untouched) == set(range(n)), "every member should sometimes sit out"
    else:
        assert not untouched


@pytest.mark.parametrize("method", ["tournament", "truncation"])
def test_select_is_deterministic_for_a_seed(method):
    scores = [0.3, float("nan"), 0.1, None, 0.7, 0.2, 0.9, 0.4, float("inf")]
    for seed in range(20):
        assert select(scores, _rng(seed), method) == select(scores, _rng(seed), method)
    assert len({tuple(select(scores, _rng(s), method)) for s in range(20)}) > 1


# --------------------------------------------------------------------------- invalid members


@pytest.mark.parametrize("method", ["tournament", "truncation"])
@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_invalid_members_always_lose_and_are_never_copied(method, n):
    for seed in SEEDS:
        rng = _rng(seed)
        scores = _random_scores(rng, n, p_invalid=0.4)
        if not any(is_valid(s) for s in scores):
            with pytest.raises(PopulationFailed):
                select(scores, rng, method)
            continue
        pairs = select(scores, rng, method)
        _check_common(scores, pairs)


def test_tournament_invalid_pairs_and_unpaired():
    """Both members of a pair invalid, and an invalid unpaired member: all replaced, by valid ones."""
    seen_both_invalid_pair = seen_invalid_unpaired = False
    for seed in SEEDS:
        scores = [None, float("nan"), float("inf"), 2.0, 1.0]  # 3 invalid among 5
        pairs = select(scores, _rng(seed))
        losers, _ = _check_common(scores, pairs)
        assert {0, 1, 2} <= set(losers)
        assert 4 not in losers  # the best valid member is never replaced
        # replay the shuffle to see which situation this seed produced
        order = [int(i) for i in _rng(seed).permutation(5)]
        unpaired = order[-1]
        seen_invalid_unpaired |= unpaired in (0, 1, 2)
        for a, b in zip(order[0::2], order[1::2], strict=False):
            seen_both_invalid_pair |= a in (0, 1, 2) and b in (0, 1, 2)
    assert seen_both_invalid_pair and seen_invalid_unpaired


def test_single_valid_member_is_copied_by_all_invalid_ones():
    for method in ("tournament", "truncation"):
        for seed in range(20):
            scores = [None, float("nan"), 5.0, float("inf"), None]
            assert select(scores, _rng(seed), method) == [(0, 2), (1, 2), (3, 2), (4, 2)]
        assert select([1.0], _rng(0), method) == []


@pytest.mark.parametrize("method", ["tournament", "truncation"])
def test_all_invalid_population_raises(method):
    for scores in ([None], [float("nan"), None, float("inf")], [float("-inf")] * 4, []):
        with pytest.raises(PopulationFailed):
            select(scores, _rng(0), method)


def test_tournament_no_member_is_both_loser_and_winner_with_invalid_members():
    """An invalid member copies "a random valid member" (rules._tournament/select): that member can
    be a tournament loser, so it is both replaced and copied (the copy's source depends on the
    order the controller applies the pairs, and it is a beaten member). Expected: the donor is
    drawn from members that are not replaced."""
    # member 2 loses to member 1, and invalid member 0 (unpaired) copies the beaten member 2
    assert select([None, 1.0, 2.0], _rng(12)) != [(0, 2), (2, 1)]
    for seed in SEEDS:
        rng = _rng(seed)
        scores = _random_scores(rng, 7, p_invalid=0.3)
        if not any(is_valid(s) for s in scores):
            continue
        pairs = select(scores, rng)
        losers = {loser for loser, _ in pairs}
        winners = {winner for _, winner in pairs}
        assert not losers & winners, f"seed {seed}: scores={scores} pairs={pairs}"


# --------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("n", [4, 5, 8, 10, 20, 21])
def test_truncation_all_valid(n):
    k = math.ceil(0.25 * n)
    for seed in SEEDS:
        rng = _rng(seed)
        scores = _random_scores(rng, n)
        pairs = select(scores, rng, method="truncation", fraction=0.25)
        losers, winners = _check_common(scores, pairs)
        ranked = sorted(range(n), key=lambda i: scores[i])
        assert set(losers) == set(ranked[-k:])
        assert set(winners) <= set(ranked[:k])
        assert not set(losers) & set(winners)


def test_truncation_with_invalid_members_losers():
    n = 12
    k = math.ceil(0.25 * n)
    for seed in SEEDS:
        rng = _rng(seed)
        scores = [float(x) for x in rng.normal(size=n)]
        for i in rng.choice(n, size=int(rng.integers(1, 4)), replace=False):
            scores[int(i)] = INVALID[int(rng.integers(len(INVALID)))]
        pairs = select(scores, rng, method="truncation", fraction=0.25)
        losers, _ = _check_common(scores, pairs)
        valid = sorted((i for i in range(n) if is_valid(scores[i])), key=lambda i: scores[i])
        invalid = {i for i in range(n) if not is_valid(scores[i])}
        assert set(losers) == set(valid[-k:]) | invalid
        # the valid losers copy a member of the top fraction
        for loser, winner in pairs:
            if loser not in invalid:
                assert winner in valid[:k]


def test_truncation_invalid_members_copy_the_top():
    """Definition: "the bottom fraction (and every invalid member) copy a random top-fraction
    member". select() replaces invalid members with rng.choice(valid), which includes the middle
    and even the bottom (replaced) members."""
    # N = 5, k = 2: top {0, 1}, bottom {2, 3}; invalid member 4 copies member 2 (a loser)
    assert select([1.0, 2.0, 3.0, 4.0, None], _rng(0), "truncation") != [(2, 1), (3, 1), (4, 2)]
    scores = [float(i) for i in range(12)] + [None]  # N = 13, k = ceil(0.25 * 13) = 4
    k = math.ceil(0.25 * len(scores))
    for seed in SEEDS:
        pairs = select(scores, _rng(seed), method="truncation", fraction=0.25)
        (winner,) = [w for loser, w in pairs if loser == 12]
        assert winner in range(k), f"seed {seed}: invalid member copied member {winner}"


def test_truncation_small_valid_set_never_replaces_a_top_member():
    # N = 8 -> k = 2, but only 3 valid members: the bottom 2 and top 2 overlap
    scores = [None, 3.0, None, 1.0, None, 2.0, None, None]
    for seed in range(50):
        pairs = select(scores, _rng(seed), method="truncation", fraction=0.25)
        losers, winners = _check_common(scores, pairs)
        assert 3 not in losers and 5 not in losers
        assert 1 in losers  # the worst valid member is in the bottom fraction


def test_truncation_invalid_members_never_copy_a_replaced_member():
    """Same population as above: member 1 (3.0) is in the bottom fraction and is replaced, yet the
    invalid members draw their donor from all valid members, member 1 included."""
    scores = [None, 3.0, None, 1.0, None, 2.0, None, None]
    for seed in range(50):
        pairs = select(scores, _rng(seed), method="truncation", fraction=0.25)
        winners = {w for _, w in pairs}
        assert winners <= {3, 5}, f"seed {seed}: pairs={pairs}"


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.51, 1.0, float("nan")])
def test_truncation_bad_fraction(fraction):
    with pytest.raises(ValueError):
        select([1.0, 2.0, 3.0, 4.0], _rng(0), method="truncation", fraction=fraction)


def test_unknown_method():
    with pytest.raises(ValueError):
        select([1.0, 2.0], _rng(0), method="roulette")


# --------------------------------------------------------------------------- perturb / explore


def _hp(**kw) -> HyperParameter:
    base = dict(key="x", min=0.0, max=10.0, explore_weight=0.3, enforce_bounds=True)
    base.update(kw)
    return HyperParameter(**base)


@pytest.mark.parametrize("w", [0.05, 0.3, 0.8])
def test_perturb_factor_is_one_plus_minus_u(w):
    hp = _hp(min=0.0, max=1e9, explore_weight=w, enforce_bounds=False)
    rng = _rng(0)
    deviations, signs = [], Counter()
    for _ in range(2000):
        p = perturb(1.0, hp, rng)
        assert not p.clipped
        assert p.new == pytest.approx(p.old * p.factor)
        u = abs(p.factor - 1.0)
        assert 0.002 * w * (1 - 1e-9) <= u <= w * (1 + 1e-9)
        deviations.append(u)
        signs[p.factor > 1.0] += 1
    # u ~ U(0.002 w, w): mean (0.002 w + w) / 2, and the sign is a fair coin
    assert np.mean(deviations) == pytest.approx(0.501 * w, rel=0.05)
    assert min(deviations) < 0.05 * w and max(deviations) > 0.95 * w
    assert 800 < signs[True] < 1200


def test_perturb_respects_enforced_bounds():
    for seed in SEEDS:
        rng = _rng(seed)
        lo, hi = sorted(rng.uniform(0.0, 2.0, size=2))
        hi += 1e-3
        hp = _hp(min=lo, max=hi, explore_weight=float(rng.uniform(0.01, 0.9)))
        value = float(rng.uniform(lo, hi))
        for _ in range(20):
            p = perturb(value, hp, rng)
            assert lo <= p.new <= hi
            assert p.key == "x" and p.old == value
            if not p.clipped:
                assert p.new == pytest.approx(value * p.factor)
                assert 1 <= p.tries <= 100
            value = p.new


def test_perturb_value_at_a_bound_moves_inward():
    hp = _hp(min=1e-5, max=5e-3, explore_weight=0.3)
    for seed in SEEDS:
        p = perturb(5e-3, hp, _rng(seed))
        assert not p.clipped and 1e-5 <= p.new < 5e-3 and p.factor < 1
        p = perturb(1e-5, hp, _rng(seed))
        assert not p.clipped and 1e-5 < p.new <= 5e-3 and p.factor > 1


def test_perturb_tiny_room_gets_clipped_to_the_bound():
    # at max with only 1e-4 relative room below: every draw (|u| >= 0.0006) lands outside
    hp = _hp(min=0.9999, max=1.0, explore_weight=0.3)
    for seed in range(50):
        p = perturb(1.0, hp, _rng(seed))
        assert p.clipped and p.tries == 100
        assert 0.9999 <= p.new <= 1.0
        assert p.new in (0.9999, 1.0)
    # far outside the bounds: never lands inside, clipped onto the nearest bound
    for seed in range(50):
        p = perturb(100.0, _hp(min=0.0, max=1.0), _rng(seed))
        assert p.clipped and p.new == 1.0 and p.old == 100.0
        p = perturb(1e-3, _hp(min=0.5, max=1.0), _rng(seed), max_tries=7)
        assert p.clipped and p.new == 0.5 and p.tries == 7


@pytest.mark.parametrize("w", [0.8, 1.5])
def test_perturb_unenforced_bounds_allow_above_max_never_below_zero(w):
    hp = _hp(min=1e-4, max=1.0, explore_weight=w, enforce_bounds=False)
    above = 0
    for seed in SEEDS:
        rng = _rng(seed)
        value = 1.0
        for _ in range(10):
            p = perturb(value, hp, rng)
            assert p.new >= 0.0
            above += p.new > 1.0
            value = p.new
    assert above > 0
    # a negative value can never get back to >= 0 with a positive factor: clipped to 0
    p = perturb(-1.0, _hp(explore_weight=0.5, enforce_bounds=False), _rng(0))
    assert p.clipped and p.new == 0.0


def test_explore_by_definition():
    space = [
        HyperParameter("train.lr", 1e-5, 5e-3, init=4e-3, sampling="log_uniform"),
        HyperParameter("model.dropout", 0.0, 0.6),
        HyperParameter("loss.l2_gen_scale", 1e-4, 1.0, explore_weight=0.8, enforce_bounds=False),
        HyperParameter("train.frozen", 0.0, 1.0, explore_weight=0.0),
    ]
    for seed in SEEDS:
        rng = _rng(seed)
        hparams = {
            "train.lr": float(rng.uniform(1e-5, 5e-3)),
            "model.dropout": float(rng.uniform(0.0, 0.6)),
            "loss.l2_gen_scale": float(rng.uniform(0.0, 3.0)),
            "train.frozen": 0.5,
            "not.in.space": 7.0,
        }
        before = dict(hparams)
        new, record = explore(hparams, space, rng)
        assert hparams == before, "explore mutated its input"
        assert new is not hparams
        assert set(new) == set(hparams)
        assert new["train.frozen"] == 0.5 and new["not.in.space"] == 7.0
        assert [p.key for p in record] == ["train.lr", "model.dropout", "loss.l2_gen_scale"]
        for p in record:
            assert p.old == before[p.key] and p.new == new[p.key]
            if not p.clipped:
                assert abs(p.factor - 1) >= 0.002 * 0.3 * (1 - 1e-9)
                assert p.new == pytest.approx(p.old * p.factor)
        assert 1e-5 <= new["train.lr"] <= 5e-3
        assert 0.0 <= new["model.dropout"] <= 0.6
        assert new["loss.l2_gen_scale"] >= 0.0
        # same rng state -> same exploration
        assert explore(before, space, _rng(seed + 1000)) == explore(
            before, space, _rng(seed + 1000)
        )


# --------------------------------------------------------------------------- should_stop


def test_should_stop_hand_computed():
    # improvement 0.0006 over mean 0.999775 -> 6.001e-4 > 5e-4: keep going
    assert not should_stop([1.0, 0.9999, 0.9998, 0.9994])
    # improvement 0.0004 over mean 0.9999 -> 4.0004e-4 <= 5e-4: stop
    assert should_stop([1.0, 1.0, 1.0, 0.9996])
    # either side of the threshold, 1e-5 relative away
    assert not should_stop([1.0, 0.9995, 0.9995, 0.99949])  # 5.1e-4
    assert should_stop([1.0, 0.9995, 0.9995, 0.99951])  # 4.9e-4
    # scale-free: same relative numbers at a different scale / sign
    assert not should_stop([100.0, 99.99, 99.98, 99.94])
    assert should_stop([100.0, 100.0, 100.0, 99.96])
    # negative fitness: mean(|bests|) normalises
    assert not should_stop([-10.0, -10.002, -10.004, -10.006])  # 6e-4 / 10.003
    assert should_stop([-10.0, -10.001, -10.002, -10.004])  # 4e-4 / 10.0018
    # no improvement or getting worse: stop
    assert should_stop([1.0, 1.0, 1.0, 1.0])
    assert should_stop([1.0, 1.1, 1.2, 1.3])
    assert should_stop([0.0, 0.0, 0.0, 0.0])


def test_should_stop_uses_only_the_last_patience_generations():
    # a big early improvement does not count once it is out of the window
    assert should_stop([5.0, 3.0, 1.0, 1.0, 1.0, 1.0, 0.9996])
    assert not should_stop([5.0, 3.0, 1.0, 1.0, 1.0, 0.9999, 0.9994])
    # patience is honoured
    assert not should_stop([1.0, 1.0, 0.99], patience=3)
    assert should_stop([1.0, 1.0, 1.0], patience=3)
    assert not should_stop([1.0, 1.0, 1.0])  # 3 < 4 generations
    assert not should_stop([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], patience=8)


def test_should_stop_too_few_generations():
    assert not should_stop([])
    assert not should_stop([1.0])
    assert not should_stop([1.0, 1.0, 1.0])


def test_should_stop_ignores_nan_generations():
    nan = float("nan")
    assert not should_stop([1.0, nan, 1.0, nan, 1.0])  # only 3 valid generations
    assert should_stop([1.0, nan, 1.0, float("inf"), 1.0, 0.9996])
    assert not should_stop([1.0, nan, 0.9999, 0.9998, nan, 0.9994])
    assert should_stop([1.0, 1.0, 1.0, 0.9996, nan])
    assert not should_stop([nan, nan, nan, nan, nan])


def test_should_stop_property_matches_definition():
    for seed in SEEDS:
        rng = _rng(seed)
        bests = list(
            np.minimum.accumulate(1.0 + rng.normal(scale=1e-3, size=int(rng.integers(4, 10))))
        )
        window = bests[-4:]
        rel = (window[0] - window[-1]) / np.mean(np.abs(window))
        if abs(rel - 5e-4) > 1e-9:
            assert should_stop(bests) == (rel <= 5e-4)


# --------------------------------------------------------------------------- search space


NLB_SPACE = [
    HyperParameter("train.lr", 1e-5, 5e-3, init=4e-3, sampling="log_uniform"),
    HyperParameter("model.dropout_rate", 0.0, 0.6),
    HyperParameter("model.cd_rate", 0.01, 0.7, init=0.5),
    HyperParameter("loss.l2_gen_scale", 1e-4, 1.0, sampling="log_uniform", explore_weight=0.8),
    HyperParameter("loss.kl_co_scale", 1e-6, 1e-4, sampling="log_uniform", explore_weight=0.8),
]


def test_nlb_space_is_valid():
    for hp in NLB_SPACE:
        hp.check()


def test_initial_population_by_definition():
    pop = initial_population(NLB_SPACE, 20, seed=3)
    assert len(pop) == 20
    for member in pop:
        assert set(member) == {hp.key for hp in NLB_SPACE}
        assert member["train.lr"] == 4e-3
        assert member["model.cd_rate"] == 0.5
        for hp in NLB_SPACE:
            assert hp.min <= member[hp.key] <= hp.max
            assert isinstance(member[hp.key], float)
    # sampled keys differ between members
    assert len({m["model.dropout_rate"] for m in pop}) == 20
    assert initial_population(NLB_SPACE, 20, seed=3) == pop
    other = initial_population(NLB_SPACE, 20, seed=4)
    assert other != pop
    assert [m["train.lr"] for m in other] == [4e-3] * 20
    assert initial_population(NLB_SPACE, 0, seed=0) == []


def test_initial_population_log_uniform_spread():
    space = [
        HyperParameter("a", 1e-6, 1e-2, sampling="log_uniform"),
        HyperParameter("b", 0.0, 1.0),
    ]
    pop = initial_population(space, 400, seed=0)
    a = np.array([m["a"] for m in pop])
    b = np.array([m["b"] for m in pop])
    assert np.all((a >= 1e-6) & (a <= 1e-2))
    assert 1e-4 / 3 < np.median(a) < 1e-4 * 3  # a uniform draw would give ~5e-3
    # every decade is populated
    counts = np.histogram(np.log10(a), bins=4, range=(-6, -2))[0]
    assert np.all(counts > 60)
    assert 0.4 < np.median(b) < 0.6
    assert np.all((b >= 0.0) & (b <= 1.0))


@pytest.mark.parametrize(
    "kw",
    [
        dict(min=1.0, max=1.0),
        dict(min=2.0, max=1.0),
        dict(min=0.0, max=1.0, sampling="log_uniform"),
        dict(min=-1.0, max=1.0, sampling="log_uniform"),
        dict(min=0.0, max=1.0, init=1.5),
        dict(min=0.0, max=1.0, init=-0.1),
        dict(min=0.0, max=1.0, sampling="normal"),
        dict(min=0.0, max=1.0, explore_weight=-0.1),
    ],
)
def test_hyperparameter_check_rejects(kw):
    with pytest.raises(ConfigError):
        HyperParameter("x", **kw).check()


def test_hyperparameter_check_accepts_bounds_as_init():
    HyperParameter("x", 0.0, 1.0, init=0.0).check()
    HyperParameter("x", 0.0, 1.0, init=1.0).check()
    HyperParameter("x", 1e-6, 1e-2, sampling="log_uniform", explore_weight=0.0).check()

"""NLB metrics against hand-computed values and (when installed) scikit-learn / scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lfads_lightning.evaluation import metrics

# ---------------------------------------------------------------------------- Poisson NLL


def test_poisson_nll_single_entry_by_hand():
    # r = 2, n = 3: r - n ln r + ln(n!) = 2 - 3 ln 2 + ln 6
    rates = np.full((1, 1, 1), 2.0)
    spikes = np.full((1, 1, 1), 3.0)
    assert metrics.poisson_nll(rates, spikes) == pytest.approx(2 - 3 * math.log(2) + math.log(6))


def test_poisson_nll_sums_entries_and_accepts_float32():
    rates = np.array([[[0.5, 2.0]]], dtype=np.float32)
    spikes = np.array([[[0.0, 1.0]]], dtype=np.float32)
    # entry 1: 0.5 - 0 + ln 0! = 0.5 ; entry 2: 2 - ln 2 + ln 1! = 2 - ln 2
    assert metrics.poisson_nll(rates, spikes) == pytest.approx(2.5 - math.log(2))


def test_zero_rate_guard():
    zero = np.zeros((1, 1, 1))
    # n = 0: 1e-9 - 0 * ln(1e-9) + ln 0! = 1e-9 (finite, not NaN from 0 * -inf)
    assert metrics.poisson_nll(zero, np.zeros((1, 1, 1))) == pytest.approx(1e-9, abs=1e-15)
    # n = 1: 1e-9 - ln(1e-9) + ln 1! = 1e-9 + 9 ln 10
    expected = 1e-9 + 9 * math.log(10)
    assert metrics.poisson_nll(zero, np.ones((1, 1, 1))) == pytest.approx(expected, rel=1e-12)


def test_negative_or_nan_rate_raises():
    spikes = np.ones((1, 2, 1))
    with pytest.raises(ValueError, match="negative"):
        metrics.poisson_nll(np.array([[[1.0], [-0.1]]]), spikes)
    with pytest.raises(ValueError, match="NaN"):
        metrics.poisson_nll(np.array([[[1.0], [np.nan]]]), spikes)
    with pytest.raises(ValueError, match="shape"):
        metrics.poisson_nll(np.ones((1, 1, 2)), spikes)


def test_nan_spikes_are_masked():
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.1, 3, size=(4, 5, 3))
    spikes = rng.poisson(rates).astype(float)
    spikes[1, 2, 0] = spikes[3, :, 2] = np.nan
    rates[3, :, 2] = np.nan  # NaN rates are fine where the spikes are unobserved
    observed = ~np.isnan(spikes)
    assert metrics.poisson_nll(rates, spikes) == pytest.approx(
        metrics.poisson_nll(rates[observed], spikes[observed])
    )


def test_bps_nan_trial_equals_bps_without_it():
    rng = np.random.default_rng(1)
    rates = rng.uniform(0.1, 3, size=(3, 6, 4))
    spikes = rng.poisson(rates).astype(float)
    with_nan = spikes.copy()
    with_nan[2] = np.nan
    assert metrics.bits_per_spike(rates, with_nan) == pytest.approx(
        metrics.bits_per_spike(rates[:2], spikes[:2])
    )


# ---------------------------------------------------------------------------- bits per spike


def test_null_model_has_zero_bps():
    rng = np.random.default_rng(2)
    spikes = rng.poisson(1.5, size=(5, 7, 3)).astype(float)
    spikes[:, :, 2] = 0.0  # a silent neuron: null rate 0 -> 1e-9 in both models
    null = np.broadcast_to(spikes.mean(axis=(0, 1)), spikes.shape)
    assert metrics.bits_per_spike(null, spikes) == pytest.approx(0.0, abs=1e-12)


def test_true_rates_beat_null_model():
    rng = np.random.default_rng(3)
    rates = rng.uniform(0.05, 4, size=(20, 30, 5))
    spikes = rng.poisson(rates).astype(float)
    assert metrics.bits_per_spike(rates, spikes) > 0.1
    assert metrics.co_bps(rates, spikes) == metrics.bits_per_spike(rates, spikes)
    assert metrics.fp_bps(rates, spikes) == metrics.bits_per_spike(rates, spikes)


def test_bps_two_neuron_example_by_hand():
    # 1 trial, 2 bins, 2 neurons.  spikes n0 = [1, 3], n1 = [0, 2] -> null rates 2 and 1.
    spikes = np.array([[[1.0, 0.0], [3.0, 2.0]]])
    rates = np.array([[[1.0, 0.5], [3.0, 1.5]]])
    # lgamma terms are identical in both NLLs and cancel.
    # NLL_null  = (2 - 1 ln 2) + (2 - 3 ln 2) + (1 - 0) + (1 - 2 ln 1) = 6 - 4 ln 2
    # NLL_model = (1 - 1 ln 1) + (3 - 3 ln 3) + (0.5 - 0) + (1.5 - 2 ln 1.5) = 6 - 3 ln 3 - 2 ln 1.5
    # difference = 3 ln 3 + 2 ln 3 - 2 ln 2 - 4 ln 2 = 5 ln 3 - 6 ln 2 = ln(243 / 64)
    # total spikes = 6 -> bps = log2(243 / 64) / 6 = 0.32080...
    expected = math.log2(243 / 64) / 6
    assert expected == pytest.approx(0.320802, abs=1e-6)
    assert metrics.bits_per_spike(rates, spikes) == pytest.approx(expected, rel=1e-12)


def test_bps_without_spikes_is_nan():
    assert math.isnan(metrics.bits_per_spike(np.ones((2, 3, 1)), np.zeros((2, 3, 1))))
    all_nan = np.full((2, 3, 1), np.nan)
    assert math.isnan(metrics.bits_per_spike(np.ones((2, 3, 1)), all_nan))


# ---------------------------------------------------------------------------- R2


def test_r2_score_by_hand():
    # ss_res = 1, ss_tot = (1-2)^2 + 0 + (3-2)^2 = 2 -> 0.5
    assert metrics.r2_score([[1.0], [2.0], [3.0]], [[1.0], [2.0], [4.0]]) == pytest.approx(0.5)
    assert metrics.r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == pytest.approx(0.5)
    # second output constant and predicted exactly -> 1.0; uniform average -> 0.75
    y = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    p = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    assert metrics.r2_score(y, p) == pytest.approx(0.75)
    # constant output predicted wrongly -> 0.0 (not -inf)
    p[0, 1] = 6.0
    assert metrics.r2_score(y, p) == pytest.approx(0.25)


def test_rate_r2_flattens_trials_and_time():
    rng = np.random.default_rng(4)
    truth = rng.uniform(size=(3, 4, 2))
    pred = truth + rng.normal(scale=0.1, size=truth.shape)
    assert metrics.rate_r2(truth, truth) == 1.0
    assert metrics.rate_r2(truth, pred) == pytest.approx(
        metrics.r2_score(truth.reshape(12, 2), pred.reshape(12, 2))
    )


# ---------------------------------------------------------------------------- ridge


def test_ridge_small_alpha_is_least_squares_on_exact_system():
    X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [3.0, 1.0]])
    y = 2 * X[:, 0] - X[:, 1] + 1
    coef, intercept = metrics.fit_ridge(X, y, 1e-12)
    np.testing.assert_allclose(coef, [2.0, -1.0], atol=1e-9)
    assert intercept == pytest.approx(1.0, abs=1e-9)
    coef0, intercept0 = metrics.fit_ridge(X, y, 0.0)
    np.testing.assert_allclose(coef0, [2.0, -1.0], atol=1e-9)
    assert intercept0 == pytest.approx(1.0, abs=1e-9)


def test_ridge_matches_lstsq_with_intercept_column():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 4))
    Y = rng.normal(size=(30, 2))
    coef, intercept = metrics.fit_ridge(X, Y, 1e-10)
    sol = np.linalg.lstsq(np.column_stack([X, np.ones(30)]), Y, rcond=None)[0]
    np.testing.assert_allclose(coef, sol[:4], atol=1e-8)
    np.testing.assert_allclose(intercept, sol[4], atol=1e-8)


def test_ridge_primal_and_dual_agree():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(8, 12))  # more features than samples -> dual form
    Y = rng.normal(size=(8, 2))
    coef, intercept = metrics.fit_ridge(X, Y, 0.3)
    xc, yc = X - X.mean(0), Y - Y.mean(0)
    primal = np.linalg.solve(xc.T @ xc + 0.3 * np.eye(12), xc.T @ yc)
    np.testing.assert_allclose(coef, primal, atol=1e-10)
    np.testing.assert_allclose(intercept, Y.mean(0) - X.mean(0) @ primal, atol=1e-10)


def test_kfold_sizes_like_sklearn():
    folds = metrics.kfold_indices(11, 5)
    assert [len(te) for _, te in folds] == [3, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate([te for _, te in folds]), np.arange(11))
    for tr, te in folds:
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(11))


def test_ridge_cv_alpha_picks_known_alpha():
    rng = np.random.default_rng(7)
    alphas = [0.0, 1e-2, 1e9]
    # Noise-free linear target: no shrinkage is best.
    X = rng.normal(size=(100, 5))
    Y = X @ rng.normal(size=(5, 2)) + 3.0
    assert metrics.ridge_cv_alpha(X, Y, alphas) == 0.0
    # Pure noise with nearly as many features as training rows: predicting the mean is best.
    X = rng.normal(size=(50, 35))
    Y = rng.normal(size=(50, 2))
    assert metrics.ridge_cv_alpha(X, Y, alphas) == 1e9
    # Constant target: every alpha scores R2 = 1 exactly; ties go to the first alpha.
    assert metrics.ridge_cv_alpha(X, np.full((50, 2), 4.0), [0.5, 0.1, 1.0]) == 0.5


# ---------------------------------------------------------------------------- velocity R2


def _lagged_velocity(rng: np.random.Generator, n_trials: int, lag: int, w: np.ndarray):
    rates = rng.uniform(0, 2, size=(n_trials, 50, w.shape[0]))  # white in time
    vel = np.full((n_trials, 50, 2), np.nan)  # first `lag` bins unknown (NaN, dropped)
    vel[:, lag:] = rates[:, :-lag] @ w + 0.5
    return rates, vel


def test_velocity_r2_recovers_lag():
    rng = np.random.default_rng(8)
    w = rng.normal(size=(6, 2))
    tr_rates, tr_vel = _lagged_velocity(rng, 20, 3, w)
    ev_rates, ev_vel = _lagged_velocity(rng, 10, 3, w)
    right = metrics.velocity_r2(tr_rates, tr_vel, ev_rates, ev_vel, lag_bins=3)
    wrong = metrics.velocity_r2(tr_rates, tr_vel, ev_rates, ev_vel, lag_bins=0)
    assert right == pytest.approx(1.0, abs=1e-4)
    assert wrong < 0.2


def test_velocity_r2_rejects_bad_lag():
    rates, vel = np.ones((2, 4, 3)), np.ones((2, 4, 2))
    with pytest.raises(ValueError):
        metrics.velocity_r2(rates, vel, rates, vel, lag_bins=4)


# ---------------------------------------------------------------------------- PSTHs


def test_smooth_spikes_kernel_and_edges():
    kernel = metrics.gaussian_kernel(2.0)
    assert kernel.sum() == pytest.approx(1.0)
    assert len(kernel) == 2 * 8 + 1
    impulse = np.zeros((1, 41, 1))
    impulse[0, 20, 0] = 1.0
    out = metrics.smooth_spikes(impulse, 2.0)
    np.testing.assert_allclose(out[0, 12:29, 0], kernel)
    assert out.sum() == pytest.approx(1.0)
    # A constant stays constant up to the edges when renormalising...
    const = np.full((2, 10, 3), 2.0)
    np.testing.assert_allclose(metrics.smooth_spikes(const, 3.0), const)
    # ...and sags at the edges with zero padding, exactly like np.convolve(mode="same").
    zero = metrics.smooth_spikes(const, 3.0, edges="zero")
    k = metrics.gaussian_kernel(3.0)
    np.testing.assert_allclose(zero[0, :, 0], np.convolve(const[0, :, 0], k, mode="full")[12:22])
    assert zero[0, 0, 0] < 2.0
    np.testing.assert_array_equal(metrics.smooth_spikes(const, 0), const)


def test_smooth_spikes_ignores_nan():
    x = np.full((1, 9, 1), 1.0)
    x[0, 4, 0] = np.nan
    np.testing.assert_allclose(metrics.smooth_spikes(x, 1.5), np.ones((1, 9, 1)))


def test_true_psths_average_per_condition():
    spikes = np.stack([np.full((6, 2), v) for v in (1.0, 3.0, 10.0)])
    conditions, psth = metrics.true_psths(spikes, np.array([7, 7, 2]), smooth_sd_bins=1.0)
    assert list(conditions) == [2, 7]
    np.testing.assert_allclose(psth[0], 10.0)
    np.testing.assert_allclose(psth[1], 2.0)


def test_psth_r2_is_one_for_true_psths():
    rng = np.random.default_rng(9)
    conditions = np.array([0, 1, 2])
    truth = rng.uniform(size=(3, 12, 4))
    cond_idx = np.array([0, 0, 1, 2, 2, 2])
    # Each trial deviates from its PSTH but the deviations cancel within a condition.
    noise = rng.normal(scale=0.1, size=(6, 12, 4))
    noise[1], noise[2], noise[5] = -noise[0], 0.0, -noise[3] - noise[4]
    rates = truth[cond_idx] + noise
    assert metrics.psth_r2(rates, cond_idx, truth, conditions) == pytest.approx(1.0)
    worse = metrics.psth_r2(rates + rng.normal(size=rates.shape), cond_idx, truth, conditions)
    assert worse < 0.9


def test_psth_r2_skips_conditions_without_eval_trials():
    rng = np.random.default_rng(10)
    truth = rng.uniform(size=(3, 5, 2))
    rates = truth[[0, 2]]
    assert metrics.psth_r2(rates, [0, 2], truth, [0, 1, 2]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.psth_r2(rates, [5, 6], truth, [0, 1, 2])


# ---------------------------------------------------------------------------- cross-checks


def test_lgamma_matches_scipy():
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(11)
    rates = rng.uniform(0.01, 5, size=(3, 4, 5))
    spikes = rng.poisson(rates * 3).astype(float)
    expected = np.sum(rates - spikes * np.log(rates) + special.gammaln(spikes + 1))
    assert metrics.poisson_nll(rates, spikes) == pytest.approx(expected, rel=1e-12)


def test_r2_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(12)
    y = rng.normal(size=(40, 5))
    y[:, 3] = 1.0
    p = y + rng.normal(scale=0.5, size=y.shape)
    p[:, 3] = 1.0
    assert metrics.r2_score(y, p) == pytest.approx(skm.r2_score(y, p), rel=1e-12)
    p[0, 3] = 2.0
    assert metrics.r2_score(y, p) == pytest.approx(skm.r2_score(y, p), rel=1e-12)


@pytest.mark.parametrize("shape", [(60, 7), (9, 15)])
@pytest.mark.parametrize("alpha", [1e-4, 0.1, 1.0, 25.0])
def test_ridge_matches_sklearn(shape, alpha):
    lm = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(13)
    X = rng.normal(size=shape) + 2.0
    Y = rng.normal(size=(shape[0], 2)) - 1.0
    coef, intercept = metrics.fit_ridge(X, Y, alpha)
    model = lm.Ridge(alpha=alpha).fit(X, Y)
    np.testing.assert_allclose(coef, model.coef_.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(intercept, model.intercept_, rtol=1e-8, atol=1e-10)


def test_cv_matches_sklearn_grid_search():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

    rng = np.random.default_rng(14)
    X = rng.normal(size=(103, 30))
    Y = X[:, :3] @ rng.normal(size=(3, 2)) + rng.normal(scale=3.0, size=(103, 2))
    for (tr, te), (sk_tr, sk_te) in zip(
        metrics.kfold_indices(103, 5), KFold(5).split(X), strict=True
    ):
        assert np.array_equal(tr, sk_tr) and np.array_equal(te, sk_te)
    alphas = np.logspace(-1, 3, 9)
    for alpha in alphas:
        ours = []
        for tr, te in metrics.kfold_indices(103, 5):
            coef, intercept = metrics.fit_ridge(X[tr], Y[tr], alpha)
            ours.append(metrics.r2_score(Y[te], X[te] @ coef + intercept))
        np.testing.assert_allclose(ours, cross_val_score(Ridge(alpha=alpha), X, Y, cv=5))
    search = GridSearchCV(Ridge(), {"alpha": alphas}, cv=5).fit(X, Y)
    assert metrics.ridge_cv_alpha(X, Y, alphas) == search.best_params_["alpha"]


def test_velocity_r2_matches_sklearn_pipeline():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GridSearchCV

    rng = np.random.default_rng(15)
    w = rng.normal(size=(8, 2))
    tr_rates, tr_vel = _lagged_velocity(rng, 12, 2, w)
    ev_rates, ev_vel = _lagged_velocity(rng, 6, 2, w)
    tr_vel += rng.normal(scale=2.0, size=tr_vel.shape)
    ev_vel += rng.normal(scale=2.0, size=ev_vel.shape)
    lag = 2

    def rows(rates, vel):
        x = rates[:, :-lag].reshape(-1, 8)
        y = vel[:, lag:].reshape(-1, 2)
        keep = ~np.isnan(y).any(axis=1)
        return x[keep], y[keep]

    x_tr, y_tr = rows(tr_rates, tr_vel)
    x_ev, y_ev = rows(ev_rates, ev_vel)
    search = GridSearchCV(Ridge(), {"alpha": np.logspace(-4, 0, 9)}, cv=5).fit(x_tr, y_tr)
    expected = r2_score(y_ev, search.predict(x_ev))
    ours = metrics.velocity_r2(tr_rates, tr_vel, ev_rates, ev_vel, lag_bins=lag)
    assert ours == pytest.approx(expected, rel=1e-9)

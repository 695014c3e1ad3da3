"""Cross-check of our NLB metrics against the reference implementation (`nlb_tools.evaluation`).

Run by `python3 dev.py tests_nlb_tools`, which installs nlb-tools with --no-deps (its pandas pin
does not build on Python 3.11; the evaluation module needs only numpy, scipy, sklearn, h5py).
The same arrays go to both implementations: real MC_Maze_Small tensors from ../shared/data and
synthetic data with conditions. Agreement is required to 1e-6 relative.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from lfads_lightning.data.nlb import convert_nlb_tensors
from lfads_lightning.evaluation import evaluate, metrics
from lfads_lightning.worker.sampling import write_output

nlb_eval = pytest.importorskip("nlb_tools.evaluation")
pytestmark = pytest.mark.nlb_tools

REL = 1e-6
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mc_maze_small"
LAG_BINS = 24  # 120 ms at 5 ms: NLB's lag for MC_Maze_Small


def _shared_data() -> Path:
    for root in (DATA, Path(__file__).resolve().parents[1].parent / "shared/data/mc_maze_small"):
        if (root / "mc_maze_small_train.h5").is_file():
            return root
    pytest.skip(f"MC_Maze_Small tensors not found at {DATA}")


@pytest.fixture(scope="module")
def maze() -> dict[str, np.ndarray]:
    src = _shared_data()
    out = {}
    for name in ("train", "val"):
        with h5py.File(src / f"mc_maze_small_{name}.h5", "r") as f:
            out.update({k: np.asarray(f[k][()], dtype=np.float64) for k in f})
    return out


def _predict(train_in, train_out, eval_in) -> np.ndarray:
    """A deterministic rate model (smoothed held-in -> held-out by ridge, clipped >= 0) so the
    metrics see realistic, imperfect rates (co-bps about 0.09 on the val trials, near the
    README's 0.08 GLM baseline); its quality is irrelevant to the cross-check."""
    sm_tr, sm_ev = metrics.smooth_spikes(train_in, 10.0), metrics.smooth_spikes(eval_in, 10.0)
    n_in = train_in.shape[2]
    coef, icpt = metrics.fit_ridge(
        sm_tr.reshape(-1, n_in), train_out.reshape(-1, train_out.shape[2]), 100.0
    )
    pred = sm_ev.reshape(-1, n_in) @ coef + icpt
    return np.clip(pred, 1e-3, None).reshape(*eval_in.shape[:2], -1)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _show(what: str, ours: float, ref: float) -> None:
    print(f"{what}: ours {ours:.10f} nlb_tools {ref:.10f} rel {_rel(ours, ref):.1e}")


def test_co_bps_real_val_trials(maze):
    rates = _predict(
        maze["train_spikes_heldin"], maze["train_spikes_heldout"], maze["eval_spikes_heldin"]
    )
    # Zero rates where no spike fell exercise the zero-rate guard in both.
    rates[0, :3][maze["eval_spikes_heldout"][0, :3] == 0] = 0.0
    ours = metrics.co_bps(rates, maze["eval_spikes_heldout"])
    ref = nlb_eval.bits_per_spike(rates.copy(), maze["eval_spikes_heldout"])
    _show("co-bps MC_Maze_Small val", ours, ref)
    assert 0.05 < ours < 0.2 and _rel(ours, ref) < REL


def test_fp_bps_real_forward_bins_with_nan_masking(maze):
    fwd = np.concatenate(
        [maze["train_spikes_heldin_forward"], maze["train_spikes_heldout_forward"]], axis=2
    )
    # Forward rates: each neuron's rate over the last 50 ms of the observed window, held.
    obs = np.concatenate([maze["train_spikes_heldin"], maze["train_spikes_heldout"]], axis=2)
    rates = np.repeat(obs[:, -10:].mean(axis=1, keepdims=True) + 0.01, fwd.shape[1], axis=1)
    fwd[::7, -5:] = np.nan  # unobserved bins on some trials
    ours = metrics.fp_bps(rates, fwd)
    ref = nlb_eval.bits_per_spike(rates.copy(), fwd)
    _show("fp-bps MC_Maze_Small train forward", ours, ref)
    assert _rel(ours, ref) < REL


def test_vel_r2_real_behaviour_with_lag(maze):
    heldin, heldout, vel = (
        maze["train_spikes_heldin"],
        maze["train_spikes_heldout"],
        maze["train_behavior"],
    )
    tr, ev = np.arange(60), np.arange(60, 75)
    rates = np.concatenate(
        [metrics.smooth_spikes(heldin, 10.0), _predict(heldin[tr], heldout[tr], heldin)], axis=2
    )
    ours = metrics.velocity_r2(rates[tr], vel[tr], rates[ev], vel[ev], lag_bins=LAG_BINS)
    # NLB's target tensors carry the lag already: rates at t predict velocity at t + lag.
    t = rates.shape[1] - LAG_BINS
    r, v = rates[:, :t], vel[:, LAG_BINS:]
    ref = nlb_eval.velocity_decoding(
        r[tr], v[tr], np.ones((60, 1), bool), r[ev], v[ev], np.ones((15, 1), bool)
    )
    _show("vel R2 MC_Maze_Small (60 fit / 15 scored trials)", ours, ref)
    assert 0.3 < ours < 1.0 and _rel(ours, ref) < REL


@pytest.mark.parametrize("source", ["maze", "synthetic"])
def test_psth_r2_with_conditions(maze, source):
    rng = np.random.default_rng(1)
    if source == "maze":
        # MC_Maze_Small ships no condition ids: made-up labels still test the arithmetic.
        spikes = np.concatenate([maze["train_spikes_heldin"], maze["train_spikes_heldout"]], 2)
        cond = np.arange(spikes.shape[0]) % 5
        rates = metrics.smooth_spikes(spikes, 5.0) * rng.uniform(0.8, 1.2, spikes.shape[2])
        sd = 10.0  # 50 ms at 5 ms bins, NLB's choice for MC_Maze_Small
    else:
        cond = rng.integers(0, 8, 120)
        t = np.arange(40)[None, :, None]
        truth = 0.5 + 0.4 * np.sin(0.2 * t + cond[:, None, None] + np.arange(20)[None, None, :])
        spikes = rng.poisson(truth).astype(float)
        rates = truth + rng.normal(0, 0.05, truth.shape)
        sd = 1.0
    ev = np.arange(spikes.shape[0]) % 4 == 0
    conditions, psth = metrics.true_psths(spikes, cond, sd)
    ours = metrics.psth_r2(rates[ev], cond[ev], psth, conditions)
    ref = nlb_eval.eval_psth(psth, rates[ev], [np.flatnonzero(cond[ev] == c) for c in conditions])
    _show(f"psth R2 ({source})", ours, ref)
    assert _rel(ours, ref) < REL


def test_synthetic_bps_and_evaluate_end_to_end(maze, tmp_path):
    """Through the whole `lfads evaluate` path: MC_Maze_Small converted to our format, rates
    written as an output file; test_co_bps (the NLB val trials) equals nlb_tools' co-bps."""
    session = convert_nlb_tensors(_shared_data(), tmp_path / "maze.h5")
    with h5py.File(session, "r") as f:
        enc = {s: f[f"{s}_encod_data"][()] for s in ("train", "valid", "test")}
        rec = {s: f[f"{s}_recon_data"][()] for s in ("train", "valid", "test")}
    n_in, t_obs = enc["train"].shape[2], enc["train"].shape[1]
    outputs = {}
    for split in ("train", "valid", "test"):
        rates = np.full(rec[split].shape, 0.05)
        rates[:, :t_obs, n_in:] = _predict(enc["train"], rec["train"][:, :t_obs, n_in:], enc[split])
        rates[:, :t_obs, :n_in] = np.clip(metrics.smooth_spikes(enc[split], 10.0), 1e-4, None)
        outputs[split] = {"rates": rates.astype(np.float32)}
    out = write_output(tmp_path / "out.h5", session, outputs)
    result = evaluate.evaluate_output(out)
    test_rates = outputs["test"]["rates"][:, :t_obs, n_in:].astype(np.float64)
    ref = nlb_eval.bits_per_spike(test_rates, maze["eval_spikes_heldout"])
    ours = result.metrics["test_co_bps"]
    _show("lfads evaluate test_co_bps", ours, ref)
    assert _rel(result.metrics["test_co_bps"], ref) < REL
    train_rates = outputs["train"]["rates"].astype(np.float64)
    ref_fp = nlb_eval.bits_per_spike(train_rates[:, t_obs:], rec["train"][:, t_obs:].astype(float))
    assert _rel(result.metrics["train_fp_bps"], ref_fp) < REL

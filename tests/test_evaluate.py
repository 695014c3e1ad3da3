"""`lfads evaluate` on hand-made output files (known answers) and on a real fitted run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from lfads_lightning.cli import main
from lfads_lightning.data.format import write_session
from lfads_lightning.evaluation import evaluate, metrics
from lfads_lightning.worker.sampling import write_output

from .helpers import TINY_MODEL, lfads

T_ENC, T_FWD, C_IN, C_OUT = 12, 4, 5, 3


def _session(tmp_path: Path, seed: int = 0) -> tuple[Path, dict]:
    """A small session with truth, conditions and behaviour that is a lagged readout of truth."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", 16), ("valid", 8)):
        cond = np.arange(n) % 4
        t = np.arange(T_ENC + T_FWD)[None, :, None]
        phase = cond[:, None, None] * 0.8 + np.arange(C_IN + C_OUT)[None, None, :] * 0.3
        truth = 1.0 + 0.8 * np.sin(0.4 * t + phase)
        spikes = rng.poisson(truth).astype(np.float32)
        behavior = truth[:, :T_ENC, :2] @ np.array([[1.0, -0.5], [0.3, 2.0]])
        splits[split] = {
            "encod_data": spikes[:, :T_ENC, :C_IN],
            "recon_data": spikes,
            "truth": truth.astype(np.float32),
            "cond_idx": cond,
            "behavior": np.roll(behavior, 2, axis=1).astype(np.float32),
        }
    path = write_session(tmp_path / "in.h5", splits, {"bin_size_ms": 10.0, "behavior_lag_bins": 2})
    return path, splits


def test_null_model_rates_score_zero_bps_and_truth_scores_rate_r2_one(tmp_path):
    """Rates equal to each neuron's mean count (the null model) give co-bps = fp-bps = 0 by
    definition; the hand-set true rates give rate R2 = 1 on every split."""
    src, splits = _session(tmp_path)
    outputs = {}
    for split, d in splits.items():
        spikes = d["recon_data"].astype(np.float64)
        rates = np.empty_like(spikes)
        rates[:, :T_ENC] = spikes[:, :T_ENC].mean(axis=(0, 1))
        rates[:, T_ENC:] = spikes[:, T_ENC:].mean(axis=(0, 1))
        outputs[split] = {"rates": rates.astype(np.float32)}
    out = write_output(tmp_path / "null.h5", src, outputs, {"mlflow_run_id": "abc"})
    result = evaluate.evaluate_output(out)
    assert result.run_id == "abc"
    for split in ("train", "valid"):
        assert result.metrics[f"{split}_co_bps"] == pytest.approx(0.0, abs=1e-6)
        assert result.metrics[f"{split}_fp_bps"] == pytest.approx(0.0, abs=1e-6)
        assert result.metrics[f"{split}_bps"] == pytest.approx(0.0, abs=1e-6)
    # Constant predictions carry no condition structure: psth R2 is <= 0 (it is 0 minus a bit).
    assert result.metrics["valid_psth_r2"] <= 0.0

    truth = {s: {"rates": d["truth"]} for s, d in splits.items()}
    out = write_output(tmp_path / "truth.h5", src, truth)
    m = evaluate.evaluate_output(out).metrics
    assert m["train_rate_r2"] == pytest.approx(1.0) and m["valid_rate_r2"] == pytest.approx(1.0)
    # Behaviour is an exact linear readout of truth 2 bins later: lagged ridge recovers it.
    assert m["valid_vel_r2"] > 0.999
    v = splits["valid"]
    conditions, psth = metrics.true_psths(
        np.concatenate([splits["train"]["recon_data"], v["recon_data"]])[:, :T_ENC],
        np.concatenate([splits["train"]["cond_idx"], v["cond_idx"]]),
        50.0 / 10.0,
    )
    expected = metrics.psth_r2(v["truth"][:, :T_ENC], v["cond_idx"], psth, conditions)
    assert m["valid_psth_r2"] == pytest.approx(expected, rel=1e-12)
    assert m["valid_co_bps"] == pytest.approx(
        metrics.co_bps(v["truth"][:, :T_ENC, C_IN:], v["recon_data"][:, :T_ENC, C_IN:]), rel=1e-12
    )


def test_figures_are_pngs(tmp_path):
    src, splits = _session(tmp_path)
    out = write_output(
        tmp_path / "o.h5", src, {s: {"rates": d["truth"]} for s, d in splits.items()}
    )
    paths = evaluate.make_figures(out, tmp_path / "figs", "o")
    assert [p.name for p in paths] == ["o_valid_inferred_rates.png", "o_valid_rates_vs_truth.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    src, splits = _session(tmp_path)
    cases = [
        ([str(tmp_path / "missing.h5")], "output file not found"),
        ([str(src)], "no <split>_rates dataset"),
    ]
    bad = write_output(tmp_path / "bad.h5", src, {"valid": {"rates": np.zeros((8, 3, 2))}})
    cases.append(([str(bad)], "valid_rates has shape (8, 3, 2)"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from lfads_lightning.runs import tracking

    tracking.check_store(uri)  # evaluate is read-only: it never creates a store itself
    cases.append((["0123abcd", "--tracking-uri", uri], "MLflow run 0123abcd not found"))
    for argv, expected in cases:
        assert main(["evaluate", *argv]) == 2
        # (MLflow itself logs INFO lines when it creates a new sqlite store.)
        err = [x for x in capsys.readouterr().err.splitlines() if " INFO " not in x]
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_evaluate_a_fitted_run_logs_eval_metrics(tmp_path):
    """A real fit, then `lfads evaluate RUN_ID`: eval/ metrics equal the metrics the worker
    logged from the same output file, and figures are run artifacts."""
    proc = lfads(
        "data", "synth", "lorenz", "tiny.h5", "--seed", "3", "n_conditions=4",
        "trials_per_condition=5", "n_steps=20", "n_neurons=8", "n_heldout=2", "n_forward=5",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = {
        "data": {"paths": ["tiny.h5"], "synth": None, "batch_size": 8},
        "model": TINY_MODEL,
        "train": {"max_epochs": 2, "progress_bar": False},
        "output": {"n_samples": 2, "figures": False},
        "tracking": {"experiment": "ev"},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    proc = lfads("fit", "tiny.yaml", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ev").experiment_id])
    run_id = run.info.run_id

    proc = lfads("evaluate", run_id, "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (printed,) = json.loads(proc.stdout)
    logged = client.get_run(run_id).data.metrics
    for name in ("valid_co_bps", "valid_fp_bps", "valid_bps", "valid_rate_r2", "valid_psth_r2"):
        assert logged[f"eval/{name}"] == pytest.approx(printed["metrics"][name], rel=1e-9)
    for name in ("valid_co_bps", "valid_fp_bps", "valid_rate_r2", "train_bps"):
        assert logged[f"eval/{name}"] == pytest.approx(logged[f"posterior/{name}"], rel=1e-6)
    figs = {a.path for a in client.list_artifacts(run_id, "eval_figures")}
    assert figs == {
        "eval_figures/lfads_output_tiny_valid_inferred_rates.png",
        "eval_figures/lfads_output_tiny_valid_rates_vs_truth.png",
    }
    # The output file itself: same numbers, logged to the run it names.
    out = tmp_path / "lfads_output" / run_id / "lfads_output_tiny.h5"
    proc = lfads("evaluate", str(out), "--json", "--no-figures", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)[0]["metrics"] == printed["metrics"]
    assert f"logged to run {run_id}" in proc.stderr

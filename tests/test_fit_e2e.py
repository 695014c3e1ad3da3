"""`lfads fit --launcher local` end to end: real subprocess worker, real MLflow store, real files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from .helpers import TINY_MODEL, lfads

TINY_DATA = [
    "n_conditions=4",
    "trials_per_condition=5",
    "n_steps=20",
    "n_neurons=8",
    "n_heldout=2",
    "n_forward=5",
]
TINY_CONFIG = {
    "data": {"paths": ["tiny.h5"], "synth": None, "batch_size": 8},
    "model": TINY_MODEL,
    "loss": {"kl_increase_epoch": 2, "l2_increase_epoch": 2},
    "train": {"max_epochs": 3, "progress_bar": False},
    "output": {"n_samples": 3},
    "tracking": {"experiment": "e2e"},
}


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fit")
    proc = lfads("data", "synth", "lorenz", "tiny.h5", "--seed", "3", *TINY_DATA, cwd=root)
    assert proc.returncode == 0, proc.stderr
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    return root


@pytest.fixture(scope="module")
def finished_run(tiny_project) -> tuple[Path, str, str]:
    uri = f"sqlite:///{tiny_project / 'mlflow.db'}"
    proc = lfads(
        "fit",
        "--launcher",
        "local",
        "tiny.yaml",
        cwd=tiny_project,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([exp.experiment_id])
    return tiny_project, uri, run.info.run_id


def test_run_finished_with_params_metrics_and_artifacts(finished_run):
    root, uri, run_id = finished_run
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.gen_dim"] == "12" and run.data.params["train.max_epochs"] == "3"
    assert run.data.tags["lfads.launcher"] == "local"
    for key in (
        "train/loss",
        "valid/recon",
        "valid/recon_smth",
        "valid/kl_ic",
        "valid/kl_co",
        "train/l2",
        "ramp/kl",
        "valid/co_bps",
        "valid/fp_bps",
        "valid/rate_r2",
        "posterior/valid_rate_r2",
        "posterior/valid_co_bps",
        "posterior/valid_fp_bps",
        "posterior/train_bps",
    ):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "checkpoints", "outputs", "figures"} <= artifacts
    assert {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints")} >= {
        "best.ckpt",
        "last.ckpt",
    }
    figures = {Path(a.path).name for a in client.list_artifacts(run_id, "figures")}
    assert any("raster_vs_rates" in f for f in figures) and any(
        "rates_vs_truth" in f for f in figures
    )


def test_recon_smth_follows_its_definition(finished_run):
    """smth_0 = recon_0; smth_e = 0.3 * smth_{e-1} + 0.7 * recon_e (per epoch)."""
    _, uri, run_id = finished_run
    client = MlflowClient(uri)
    recon = [
        m.value
        for m in sorted(client.get_metric_history(run_id, "valid/recon"), key=lambda m: m.step)
    ]
    smth = [
        m.value
        for m in sorted(client.get_metric_history(run_id, "valid/recon_smth"), key=lambda m: m.step)
    ]
    assert len(recon) == len(smth) == 3
    expected = [recon[0]]
    for value in recon[1:]:
        expected.append(0.3 * expected[-1] + 0.7 * value)
    np.testing.assert_allclose(smth, expected, rtol=1e-5)
    ramps = [
        m.value for m in sorted(client.get_metric_history(run_id, "ramp/kl"), key=lambda m: m.step)
    ]
    np.testing.assert_allclose(ramps, [1 / 3, 2 / 3, 1.0], rtol=1e-6)  # increase 2 -> (e + 1) / 3


def test_output_file_holds_inputs_and_posterior_means(finished_run):
    root, _, run_id = finished_run
    out = root / "lfads_output" / run_id / "lfads_output_tiny.h5"
    with h5py.File(out, "r") as f, h5py.File(root / "tiny.h5", "r") as src:
        for name in src:
            np.testing.assert_array_equal(f[name][()], src[name][()])
        n_valid = src["valid_encod_data"].shape[0]
        assert f["valid_rates"].shape == (n_valid, 25, 8)  # n_neurons counts held-out ones too
        assert f["valid_factors"].shape == (n_valid, 25, 3)
        assert f["valid_co_means"].shape == (n_valid, 25, 2)
        assert f["train_ic_mean"].shape[1] == 4
        assert np.all(f["valid_rates"][()] > 0)
    assert not list(out.parent.glob(".*.tmp"))


def test_sample_again_from_the_run(finished_run):
    root, uri, run_id = finished_run
    proc = lfads(
        "sample",
        "--run",
        run_id,
        "--n-samples",
        "2",
        "--out",
        "resampled",
        cwd=root,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with h5py.File(root / "resampled" / "lfads_output_tiny.h5", "r") as f:
        assert f.attrs["n_samples"] == 2 and f["train_rates"].shape[1:] == (25, 8)


def test_failing_worker_marks_run_failed_and_writes_no_output(tiny_project):
    """A job that crashes after its run was created (here: asking for a GPU this machine lacks)."""
    uri = f"sqlite:///{tiny_project / 'fail.db'}"
    proc = lfads(
        "fit",
        "--launcher",
        "local",
        "tiny.yaml",
        "train.accelerator=cuda",
        "tracking.experiment=fail",
        cwd=tiny_project,
        env={"MLFLOW_TRACKING_URI": uri, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode != 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fail").experiment_id])
    assert run.info.status == "FAILED" and "lfads.error" in run.data.tags
    assert not list((tiny_project / "lfads_output" / run.info.run_id).glob("*.h5"))


@pytest.mark.server
def test_fit_against_a_real_mlflow_server(tiny_project, mlflow_server_uri, tmp_path):
    """Same fit, tracked by a real `mlflow server` on loopback; artifacts go over HTTP."""
    proc = lfads(
        "fit",
        "--launcher",
        "local",
        str(tiny_project / "tiny.yaml"),
        "tracking.experiment=server-fit",
        f"data.paths=[{tiny_project / 'tiny.h5'}]",
        "train.max_epochs=2",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": mlflow_server_uri},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # nothing fell back to a local store
    client = MlflowClient(mlflow_server_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("server-fit").experiment_id])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "posterior/valid_rate_r2" in run.data.metrics
    outputs = [a.path for a in client.list_artifacts(run.info.run_id, "outputs")]
    assert outputs == ["outputs/lfads_output_tiny.h5"]
    local = client.download_artifacts(
        run.info.run_id, "outputs/lfads_output_tiny.h5", str(tmp_path)
    )
    with h5py.File(local, "r") as f:
        assert "valid_rates" in f


def test_json_output_is_only_json_even_with_the_progress_bar(tiny_project, tmp_path):
    """`lfads fit --json > result.json`: the worker's progress bars go to stderr, not stdout."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = lfads(
        "fit",
        "--json",
        "tiny.yaml",
        "train.max_epochs=2",
        "train.progress_bar=true",
        f"output.dir={tmp_path / 'out'}",
        cwd=tiny_project,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # the whole of stdout
    assert len(result["run_id"]) == 32 and "valid" in result["metrics"]
    assert "Epoch 1" in proc.stderr  # the bar itself is still shown

"""`lfads sample RUN --data NEW.h5` for a fit run, a PBT parent and a PBT member, then
`lfads evaluate FILE`, whose metrics land on the source run under eval/<data>-<sha8>/.

The runs are trained for real (`lfads fit`, `lfads pbt` as processes, tiny models, few epochs);
sampling and evaluating run the real `lfads` entry point in-process (one import of torch).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from lfads_lightning.cli import main
from lfads_lightning.evaluation import metrics

from .helpers import TINY_MODEL, lfads

DATA = ["n_conditions=4", "trials_per_condition=5", "n_steps=16", "n_neurons=8"]
DATA += ["n_heldout=2", "n_forward=4"]  # held-in 6 of 8 neurons; 16 observed + 4 forward bins
BASE = {
    "data": {"paths": ["tiny.h5"], "synth": None, "batch_size": 8},
    "model": TINY_MODEL,
    "loss": {"kl_increase_epoch": 1, "l2_increase_epoch": 1},
    "output": {"n_samples": 2, "figures": False},
}
FIT = {**BASE, "train": {"max_epochs": 2, "progress_bar": False}, "tracking": {"experiment": "fit"}}
PBT = {
    **BASE,
    "tracking": {"experiment": "pbt"},
    "pbt": {"population": 2, "epochs_per_generation": 1, "burn_in": 1, "max_generations": 2,
            "concurrency": 2, "retries": 0, "patience": 10},
}  # fmt: skip


def write_trials(path: Path, source: Path, **override: np.ndarray) -> Path:
    """A file of trials to infer: the valid split of `source`, without split prefixes."""
    with h5py.File(source, "r") as src, h5py.File(path, "w") as f:
        for name in ("encod_data", "recon_data", "cond_idx", "truth"):
            f[name] = override.get(name, src[f"valid_{name}"][()])
        f.attrs["bin_size_ms"] = src.attrs["bin_size_ms"]
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_data")
    for name, seed in (("tiny.h5", "3"), ("other.h5", "4")):
        proc = lfads("data", "synth", "lorenz", name, "--seed", seed, *DATA, cwd=root)
        assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    (root / "fit.yaml").write_text(yaml.safe_dump(FIT))
    (root / "pbt.yaml").write_text(yaml.safe_dump(PBT))
    fit = lfads("fit", "--launcher", "local", "fit.yaml", cwd=root, env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    pbt = lfads("pbt", "--launcher", "local", "pbt.yaml", cwd=root, env=env)
    assert pbt.returncode == 0, pbt.stderr[-3000:]
    client = MlflowClient(uri)
    runs = {}
    for exp in ("fit", "pbt"):
        for r in client.search_runs([client.get_experiment_by_name(exp).experiment_id]):
            runs.setdefault(r.data.tags["lfads.kind"], []).append(r)
    write_trials(root / "new_trials.h5", root / "other.h5")
    return root, uri, runs


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def sample_and_evaluate(project, capsys, monkeypatch, run_id: str, out_name: str):
    root, uri, _ = project
    monkeypatch.chdir(root)
    out = root / out_name
    code, _, err = cli(
        capsys, "sample", run_id, "--data", "new_trials.h5", "--out", str(out),
        "--tracking-uri", uri,
    )  # fmt: skip
    assert code == 0, err
    digest = hashlib.sha256((root / "new_trials.h5").read_bytes()).hexdigest()
    with h5py.File(out, "r") as f, h5py.File(root / "new_trials.h5", "r") as new:
        assert f.attrs["mlflow_run_id"] == run_id
        assert f.attrs["lfads_data_sha256"] == digest
        rates = f["test_rates"][()]
        assert rates.shape == (4, 20, 8) and np.isfinite(rates).all() and (rates > 0).all()
        assert f["test_factors"].shape[:2] == (4, 20)
        np.testing.assert_array_equal(f["test_encod_data"][()], new["encod_data"][()])
        model_run, checkpoint = f.attrs["lfads_model_run"], f.attrs["lfads_checkpoint"]
        spikes, truth = new["recon_data"][()], new["truth"][()]
    code, stdout, err = cli(
        capsys, "evaluate", str(out), "--json", "--no-figures", "--tracking-uri", uri
    )
    assert code == 0, err
    (result,) = json.loads(stdout)
    prefix = f"eval/new_trials-{digest[:8]}/"
    assert f"evaluation logged to run {run_id} (metrics {prefix}" in err
    logged = MlflowClient(uri).get_run(run_id).data.metrics
    # The numbers are the NLB metrics of these rates against these trials' spikes and truth.
    bps = metrics.bits_per_spike(rates[:, :16, :6], spikes[:, :16, :6])
    assert logged[prefix + "test_bps"] == pytest.approx(bps, rel=1e-5)
    assert result["metrics"]["test_bps"] == pytest.approx(bps, rel=1e-5)
    assert logged[prefix + "test_co_bps"] == pytest.approx(
        metrics.co_bps(rates[:, :16, 6:], spikes[:, :16, 6:]), rel=1e-5
    )
    assert logged[prefix + "test_rate_r2"] == pytest.approx(metrics.rate_r2(truth, rates), rel=1e-5)
    return model_run, checkpoint


def test_fit_run_samples_new_trials_and_evaluate_logs_to_it(project, capsys, monkeypatch):
    (fit,) = project[2]["fit"]
    model, checkpoint = sample_and_evaluate(project, capsys, monkeypatch, fit.info.run_id, "f.h5")
    assert (model, checkpoint) == (fit.info.run_id, "checkpoints/best.ckpt")
    assert fit.data.tags["lfads.best_checkpoint"] == "checkpoints/best.ckpt"


def test_pbt_parent_samples_its_best_member(project, capsys, monkeypatch):
    (parent,) = project[2]["pbt"]
    run_id = parent.info.run_id
    model, checkpoint = sample_and_evaluate(project, capsys, monkeypatch, run_id, "p.h5")
    assert model == parent.data.tags["lfads.best_run"]
    assert checkpoint == "checkpoints/last.ckpt"


def test_member_samples_its_own_checkpoint(project, capsys, monkeypatch):
    parent = project[2]["pbt"][0]
    members = project[2]["pbt_member"]
    other = next(m for m in members if m.info.run_id != parent.data.tags["lfads.best_run"])
    assert other.data.tags["lfads.best_checkpoint"] == "checkpoints/last.ckpt"
    run_id = other.info.run_id
    model, checkpoint = sample_and_evaluate(project, capsys, monkeypatch, run_id, "m.h5")
    assert (model, checkpoint) == (run_id, "checkpoints/last.ckpt")
    # A member has no outputs of its own: evaluating it says how to get some.
    code, _, err = cli(capsys, "evaluate", run_id, "--tracking-uri", project[1])
    assert code != 0 and "lfads sample" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("neurons", "dataset 'encod_data' has shape (4, 16, 5) but the model takes (trials, 16, 6)"),
        ("bins", "dataset 'encod_data' has shape (4, 10, 6) but the model takes (trials, 16, 6)"),
        ("recon", "dataset 'recon_data' has shape (4, 20, 7) but the model takes (trials, 20, 8)"),
        ("no_encoder", "no encoder data (dataset 'encod_data'"),
        ("not_hdf5", "not a readable HDF5 file"),
    ],
)  # fmt: skip
def test_bad_data_files_are_one_line_errors_and_write_nothing(
    project, capsys, monkeypatch, tmp_path, case, expected
):
    root, uri, runs = project
    monkeypatch.chdir(tmp_path)  # where a default output directory would appear
    bad = tmp_path / "bad.h5"
    with h5py.File(root / "other.h5", "r") as src:
        enc, rec = src["valid_encod_data"][()], src["valid_recon_data"][()]
    if case == "not_hdf5":
        bad.write_text("trial,neuron,count\n0,0,1\n")
    elif case == "no_encoder":
        with h5py.File(bad, "w") as f:
            f["recon_data"] = rec
    else:
        override = {"neurons": {"encod_data": enc[:, :, :5]}, "bins": {"encod_data": enc[:, :10]},
                    "recon": {"recon_data": rec[:, :, :7]}}[case]  # fmt: skip
        write_trials(bad, root / "other.h5", **override)
    run_id = runs["fit"][0].info.run_id
    for out in (["--out", str(tmp_path / "out.h5")], []):
        code, _, err = cli(
            capsys, "sample", run_id, "--data", str(bad), *out, "--tracking-uri", uri
        )
        assert code != 0
        assert err.startswith(f"error: {bad}: ") and expected in err, err
        assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5"]
    assert not list(root.rglob("samples"))  # the default output directory was not made

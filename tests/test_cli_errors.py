"""Bad input: a one-line error naming the problem, a non-zero exit, and nothing half-written.

Each case runs the real `lfads` entry point in-process (same code as the console script) against
a sqlite tracking store in a temporary directory, then checks the store holds no RUNNING run and
no output directory was made.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lfads_lightning.cli import main


def _tiny_splits(rng: np.random.Generator, n_train: int = 8, n_valid: int = 4) -> dict:
    def split(n):
        x = rng.poisson(1.0, size=(n, 10, 5)).astype(np.float32)
        return {"encod_data": x, "recon_data": x.copy()}

    return {"train": split(n_train), "valid": split(n_valid)}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def assert_clean(workdir: Path) -> None:
    """No RUNNING run in the store, no output directory."""
    db = workdir / "mlflow.db"
    if db.exists():
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        exps = client.search_experiments()
        runs = client.search_runs([e.experiment_id for e in exps]) if exps else []
        assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    assert not (workdir / "lfads_output").exists()


def fit_args(*extra: str) -> list[str]:
    return ["fit", "--launcher", "local", *extra]


def test_missing_config_file(workdir, capsys):
    code, err = run_cli(fit_args("nope.yaml"), capsys)
    assert code == 2
    assert err.count("\n") == 0 and "config file not found: nope.yaml" in err
    assert_clean(workdir)


def test_unknown_config_key_lists_valid_keys(workdir, capsys):
    code, err = run_cli(fit_args("model.gen_dimm=3"), capsys)
    assert code == 2 and err.count("\n") == 0
    assert (
        "unknown config key 'model.gen_dimm'" in err
        and "model.gen_dim" in err
        and "model.fac_dim" in err
    )
    assert_clean(workdir)


def test_unknown_section_in_yaml(workdir, capsys):
    (workdir / "c.yaml").write_text("modle:\n  gen_dim: 3\n")
    code, err = run_cli(fit_args("c.yaml"), capsys)
    assert code == 2 and "unknown config key 'modle'" in err and "model.gen_dim" in err
    assert_clean(workdir)


def test_wrong_type(workdir, capsys):
    code, err = run_cli(fit_args("model.gen_dim=abc"), capsys)
    assert code == 2 and err.count("\n") == 0 and "model.gen_dim: expected int" in err
    assert_clean(workdir)


def test_invalid_yaml_syntax(workdir, capsys):
    (workdir / "c.yaml").write_text("model: [unclosed\n")
    code, err = run_cli(fit_args("c.yaml"), capsys)
    assert code == 2 and "not valid YAML" in err
    assert_clean(workdir)


def test_missing_data_file(workdir, capsys):
    code, err = run_cli(fit_args("data.paths=[missing.h5]", "data.synth=null"), capsys)
    assert code == 2 and err.count("\n") == 0
    assert "not found" in err and "missing.h5" in err and "lfads data synth" in err
    assert_clean(workdir)


def test_malformed_hdf5(workdir, capsys):
    (workdir / "bad.h5").write_bytes(b"this is not hdf5" * 10)
    code, err = run_cli(fit_args("data.paths=[bad.h5]", "data.synth=null"), capsys)
    assert code == 2 and err.count("\n") == 0 and "bad.h5" in err and "HDF5" in err
    assert_clean(workdir)


def test_wrong_shapes(workdir, capsys):
    rng = np.random.default_rng(0)
    splits = _tiny_splits(rng)
    splits["valid"]["recon_data"] = splits["valid"]["recon_data"][:3]
    _write_raw(workdir / "shape.h5", splits)
    code, err = run_cli(fit_args("data.paths=[shape.h5]", "data.synth=null"), capsys)
    assert code == 2 and err.count("\n") == 0 and "valid" in err
    assert_clean(workdir)


def _write_raw(path: Path, splits: dict) -> None:
    """Bypass write_session's own checks to produce a bad file on disk."""
    with h5py.File(path, "w") as f:
        for split, arrays in splits.items():
            for key, value in arrays.items():
                f[f"{split}_{key}"] = value


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [(np.nan, "NaN"), (-1.0, "negative"), (0.5, "integer")],
    ids=["nan", "negative-count", "non-integer-count"],
)
def test_bad_values(workdir, capsys, corrupt, expected):
    splits = _tiny_splits(np.random.default_rng(1))
    splits["train"]["encod_data"][2, 3, 1] = corrupt
    _write_raw(workdir / "vals.h5", splits)
    code, err = run_cli(fit_args("data.paths=[vals.h5]", "data.synth=null"), capsys)
    assert code == 2 and err.count("\n") == 0
    assert expected in err and "train_encod_data" in err
    assert_clean(workdir)


def test_unreachable_tracking_server(workdir, capsys):
    _write_raw(workdir / "ok.h5", _tiny_splits(np.random.default_rng(2)))
    code, err = run_cli(
        fit_args("--tracking-uri", "http://127.0.0.1:9", "data.paths=[ok.h5]", "data.synth=null"),
        capsys,
    )
    assert code == 3 and err.count("\n") == 0
    assert "unreachable" in err and "MLFLOW_TRACKING_URI" in err
    assert_clean(workdir)


def test_console_script_exit_code_and_single_line():
    """The installed `lfads` entry point (a real process) reports the same way."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lfads_lightning",
            "fit",
            "--launcher",
            "local",
            "model.recon=binomial",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.recon" in lines[0] and "poisson" in lines[0]

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


# --------------------------------------------------------------------------- config files


def _one_line(code: int, err: str, expected_code: int = 2) -> str:
    assert code == expected_code, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_duplicate_key_names_the_key_and_both_lines(workdir, capsys):
    (workdir / "c.yaml").write_text("model:\n  gen_dim: 3\n  fac_dim: 2\n  gen_dim: 4\n")
    err = _one_line(*run_cli(fit_args("c.yaml"), capsys))
    assert "duplicate key 'gen_dim' at lines 2 and 4 of c.yaml" in err
    assert_clean(workdir)


def test_binary_config_file(workdir, capsys):
    (workdir / "c.yaml").write_bytes(bytes(range(256)) * 4)
    err = _one_line(*run_cli(fit_args("c.yaml"), capsys))
    assert "c.yaml is not a text file" in err
    assert_clean(workdir)


def test_config_path_is_a_directory(workdir, capsys):
    (workdir / "configs").mkdir()
    err = _one_line(*run_cli(fit_args("configs"), capsys))
    assert "config path configs is a directory" in err
    assert_clean(workdir)


def test_empty_config_file_is_refused(workdir, capsys):
    (workdir / "c.yaml").write_text("# nothing here\n")
    err = _one_line(*run_cli(fit_args("c.yaml"), capsys))
    assert "config file c.yaml is empty" in err
    assert_clean(workdir)


def test_fit_without_any_config_prints_usage_and_the_demo(workdir, capsys):
    code, err = run_cli(fit_args(), capsys)
    assert code == 2
    assert err.startswith("usage: lfads fit")
    assert err.splitlines()[-1].endswith("lfads fit --launcher local configs/lorenz.yaml")
    assert_clean(workdir)
    assert not (workdir / "mlflow.db").exists() and not (workdir / "lorenz.h5").exists()


def test_python_yaml_tag_is_refused(workdir, capsys):
    marker = workdir / "PWNED"
    (workdir / "c.yaml").write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    err = _one_line(*run_cli(fit_args("c.yaml"), capsys))
    assert "c.yaml at line 1" in err and "python/object" in err and "plain YAML" in err
    assert not marker.exists()
    assert_clean(workdir)


def test_yaml_is_only_read_through_safe_loaders():
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for folder in ("lfads_lightning", "launchers")
        for p in (root / folder).rglob("*.py")
        if any(
            bad in p.read_text()
            for bad in ("yaml.load(", "yaml.unsafe_load", "yaml.full_load", "UnsafeLoader")
        )
    ]
    assert offenders == []


# --------------------------------------------------------------------------- data files


def test_data_path_is_a_directory(workdir, capsys):
    (workdir / "d.h5").mkdir()
    err = _one_line(*run_cli(fit_args("data.paths=[d.h5]", "data.synth=null"), capsys))
    assert "data path" in err and "d.h5 is a directory" in err and "not found" not in err
    assert_clean(workdir)


def test_unreadable_data_file(workdir, capsys, monkeypatch):
    """Tests run as root (which reads 0o000 files), so the denial is simulated where h5py
    opens the file."""
    _write_raw(workdir / "ok.h5", _tiny_splits(np.random.default_rng(3)))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(h5py, "File", denied)
    err = _one_line(*run_cli(fit_args("data.paths=[ok.h5]", "data.synth=null"), capsys))
    assert "ok.h5: cannot be read (Permission denied)" in err and "malformed" not in err
    assert_clean(workdir)


def test_huge_spike_counts_warn(workdir, capsys, monkeypatch):
    from lfads_lightning.data import format as h5data

    splits = _tiny_splits(np.random.default_rng(4))
    splits["train"]["encod_data"] = splits["train"]["encod_data"].astype(np.int64)
    splits["train"]["encod_data"][0, 0, 0] = 10_000_000
    _write_raw(workdir / "big.h5", splits)
    monkeypatch.setattr(h5data, "_warned", set())
    h5data.load_session(workdir / "big.h5")
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lfads: warning:")
    assert "'train_encod_data'" in err and "up to 1e+07" in err and "bin width" in err


def test_empty_train_split_cannot_be_dropped(workdir, capsys):
    splits = _tiny_splits(np.random.default_rng(5))
    splits["train"] = {k: v[:0] for k, v in splits["train"].items()}
    _write_raw(workdir / "e.h5", splits)
    err = _one_line(*run_cli(fit_args("data.paths=[e.h5]", "data.synth=null"), capsys))
    assert "split 'train' has 0 trials" in err and "cannot be dropped" in err
    assert "or drop the split" not in err


# --------------------------------------------------------------------------- outputs, stores


def test_output_dir_not_writable_is_found_before_the_run(workdir, capsys, monkeypatch):
    import tempfile

    _write_raw(workdir / "ok.h5", _tiny_splits(np.random.default_rng(6)))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)  # root writes 0o555 dirs
    err = _one_line(*run_cli(fit_args("data.paths=[ok.h5]", "data.synth=null"), capsys))
    assert "output.dir (outputs and checkpoints): cannot write in" in err
    assert not (workdir / "mlflow.db").exists()
    assert_clean(workdir)


def test_output_dir_under_a_file(workdir, capsys):
    _write_raw(workdir / "ok.h5", _tiny_splits(np.random.default_rng(6)))
    (workdir / "afile").write_text("x")
    args = fit_args("data.paths=[ok.h5]", "data.synth=null", "output.dir=afile/out")
    err = _one_line(*run_cli(args, capsys))
    assert "afile is not a directory" in err
    assert_clean(workdir)


def test_file_tracking_uri_is_explained(workdir, capsys):
    _write_raw(workdir / "ok.h5", _tiny_splits(np.random.default_rng(7)))
    args = fit_args("--tracking-uri", f"file://{workdir}/mlruns", "data.paths=[ok.h5]")
    err = _one_line(*run_cli([*args, "data.synth=null"], capsys), expected_code=3)
    assert "file store" in err and "switched off in MLflow 3" in err
    assert f"--tracking-uri sqlite:///{workdir}/mlflow.db" in err
    assert_clean(workdir)


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "--run", "0123abcd"],
        ["pbt", "--resume", "0123abcd"],
        ["pbt", "status", "0123abcd"],
        ["evaluate", "0123abcd"],
    ],
    ids=["sample", "pbt-resume", "pbt-status", "evaluate"],
)
def test_read_only_commands_never_create_a_store(workdir, capsys, args):
    err = _one_line(*run_cli(args, capsys), expected_code=3)
    assert f"tracking database {workdir / 'mlflow.db'} does not exist" in err
    assert list(workdir.iterdir()) == []


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(workdir, capsys, monkeypatch):
    from lfads_lightning.cli import common

    def boom(*args, **kwargs):
        raise RuntimeError("something odd\nsecond line")

    monkeypatch.delenv("LFADS_DEBUG", raising=False)
    monkeypatch.setattr(common, "resolve_paths", boom)
    err = _one_line(*run_cli(fit_args("model.gen_dim=3"), capsys), expected_code=1)
    assert err == (
        "error: unexpected RuntimeError: something odd (rerun with lfads --debug for the traceback)"
    )
    monkeypatch.setenv("LFADS_DEBUG", "0")  # restored after the test; --debug sets it to 1
    code, err = run_cli(["--debug", *fit_args("model.gen_dim=3")], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and "boom" in err

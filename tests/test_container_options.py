"""The local launcher's container options and the `run` command line they make (no runtime
needed: these check what would be run; tests/test_container.py runs it with podman)."""

from __future__ import annotations

import pytest

from launchers import JobSpec, LauncherError, get_launcher
from launchers.container import Container, job_mounts, parse_options, store_dir


def test_store_dir_of_local_and_server_uris(tmp_path):
    assert store_dir(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}") == str(tmp_path / "runs")
    assert store_dir(f"file://{tmp_path / 'mlruns'}") == str(tmp_path / "mlruns")
    assert store_dir("http://127.0.0.1:5000") is None


def test_mounts_store_rw_data_ro_nested_folded_missing_input_skipped(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    runs.mkdir()
    data.mkdir()
    (data / "a.h5").write_bytes(b"")
    paths = {
        str(data / "a.h5"): "ro",
        str(data / "gone.h5"): "ro",  # the worker reports it; no mount
        str(runs / "inside.h5"): "ro",  # inside the read-write store mount
        str(tmp_path / "out"): "rw",  # created so that it can be mounted
    }
    spec = JobSpec("r1", f"sqlite:///{runs / 'mlflow.db'}", paths=paths)
    mounts = job_mounts(spec, [])
    assert mounts == [(str(data / "a.h5"), "ro"), (str(tmp_path / "out"), "rw"), (str(runs), "rw")]
    assert (tmp_path / "out").is_dir()


def test_run_command_has_the_security_flags_threads_and_env_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LFADS_FAULTS", "secret-ish")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    container = Container(
        parse_options({"container": "img:1", "memory": "2g", "user": "1000:1000"})
    )
    spec = JobSpec("r1", f"sqlite:///{tmp_path / 'mlflow.db'}", threads=2)
    cmd = container.run_command(spec, "lfads-r1")
    line = " ".join(cmd)
    for flag in (
        "--rm --name lfads-r1 --init --user 1000:1000",
        "--read-only --cap-drop=ALL --security-opt no-new-privileges",
        "--network none",
        "--memory 2g",
        "--tmpfs /tmp",
        "--cpus 2",
        "-e OMP_NUM_THREADS=2",
    ):
        assert flag in line
    assert cmd[-1] == "img:1"
    assert "-e LFADS_FAULTS" in line and "-e MLFLOW_TRACKING_TOKEN" in line
    assert "t0ken" not in line and "secret-ish" not in line  # values stay in the environment
    assert f"{tmp_path}:{tmp_path}:rw" in line


def test_a_tracking_server_gets_the_host_network(tmp_path):
    container = Container(parse_options({"container": "img:1"}))
    assert "--network host" in " ".join(container.run_command(JobSpec("r", "http://h:5000"), "n"))


def test_container_options_need_an_image_and_valid_keys():
    with pytest.raises(LauncherError, match="set local.container=IMAGE too"):
        get_launcher("local", runtime="podman")
    with pytest.raises(LauncherError, match="unknown option 'local.imgae'.*container, runtime"):
        get_launcher("local", imgae="x")
    with pytest.raises(LauncherError, match="podman or docker"):
        get_launcher("local", container="x", runtime="lxc")
    with pytest.raises(LauncherError, match="local.memory: expected str"):
        get_launcher("local", container="x", memory=["4g"])


def test_missing_runtime_is_a_one_line_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no runtime on it
    launcher = get_launcher("local", container="x", runtime="docker", chown=False)
    with pytest.raises(LauncherError, match="'docker', which is not installed.*tools/image.sh"):
        launcher.check(f"sqlite:///{tmp_path / 'mlflow.db'}")

"""The CPU image (docker/Dockerfile.cpu, built by tools/image.sh) and the local launcher's
container mode, with real podman: the image, the workers in it, the store on the host.

Run by `nox -s tests_container` (it builds the image first); marked `container`, so the default
run skips them. Every container runs as uid 1000 with a read-only root, no capabilities,
no-new-privileges and a memory limit, as docs/containers.md describes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from launchers import JobSpec, JobState, LauncherError, get_launcher
from lfads_lightning.runs import tracking

from .helpers import TINY_MODEL, lfads, member_run_config, member_tags

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("LFADS_IMAGE", "localhost/lfads-lightning:cpu")
CONF = Path(os.environ.get("LFADS_IMAGE_CACHE", Path.home() / ".cache/lfads-image"))
SECURE = [
    "--user", "1000:1000", "--read-only", "--cap-drop=ALL", "--security-opt", "no-new-privileges",
    "--network=none", "--memory=1g", "--pids-limit=256", "--tmpfs", "/tmp",
]  # fmt: skip


def container_env() -> None:
    """podman needs runc + ulimits on this machine (tools/image.sh writes that containers.conf)."""
    conf = CONF / "containers.conf"
    if "CONTAINERS_CONF" not in os.environ and conf.exists():
        os.environ["CONTAINERS_CONF"] = str(conf)


def container_options(**extra) -> dict:
    container_env()
    return {"container": IMAGE, **extra}


@pytest.fixture(scope="module", autouse=True)
def image() -> str:
    container_env()
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed; run tools/image.sh build (it installs it)")
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        pytest.fail(f"image {IMAGE} not built; run tools/image.sh build")
    return IMAGE


def podman(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def owned_by_1000(path: Path) -> Path:
    """A directory the uid-1000 container may write (the host's tmp dirs belong to root)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 1000, 1000)
    return path


def tiny_overrides(data: Path, out: Path) -> list[str]:
    return [
        f"data.paths=[{data}]", "data.synth=null", "data.batch_size=8",
        *[f"model.{k}={v}" for k, v in TINY_MODEL.items()],
        "train.max_epochs=2", "train.progress_bar=false", "train.threads=1",
        f"output.dir={out}", "output.n_samples=2", "output.figures=false",
        "tracking.experiment=container",
    ]  # fmt: skip


def the_run(uri: str, experiment: str = "container"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return run


def test_image_runs_help_as_uid_1000():
    whoami = podman("run", "--rm", "--entrypoint", "id", IMAGE, "-u")
    assert whoami.returncode == 0 and whoami.stdout.strip() == "1000", whoami.stderr
    proc = podman("run", "--rm", *SECURE, IMAGE, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "fit" in proc.stdout and "pbt" in proc.stdout


def test_root_filesystem_is_read_only_and_tmp_is_not():
    script = "touch /tmp/ok && echo tmp-ok; touch /opt/lfads/x"
    proc = podman("run", "--rm", *SECURE, "--entrypoint", "sh", IMAGE, "-c", script)
    assert "tmp-ok" in proc.stdout
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr


def test_fit_with_the_documented_podman_command(tmp_path, data_dir):
    """docs/containers.md's direct command: `lfads fit` in the image, store on the host."""
    runs = owned_by_1000(tmp_path / "runs")
    data = tmp_path / "data"  # pytest's own folders are root's, mode 700
    data.mkdir(mode=0o755)
    shutil.copy(data_dir / "tiny.h5", data / "tiny.h5")
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    mounts = ["-v", f"{data}:{data}:ro", "-v", f"{runs}:{runs}:rw"]
    args = tiny_overrides(data / "tiny.h5", runs / "out")
    proc = podman(
        "run", "--rm", *SECURE, *mounts, IMAGE, "fit", "--launcher", "local", "--tracking-uri", uri,
        *args, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = the_run(uri)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["valid/recon_smth"] > 0
    assert (runs / "out" / run.info.run_id).is_dir()


def fit_in_container(tmp_path: Path, data_dir: Path, *extra: str):
    """The host's `lfads fit` of the tiny model with `local.container` (plus `extra`
    overrides), on a fresh sqlite store; returns (the finished process, the store URI)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    args = tiny_overrides(data_dir / "tiny.h5", tmp_path / "out")
    proc = lfads(
        "fit", "--launcher", "local", "--tracking-uri", uri, *args,
        f"local.container={IMAGE}", *extra,
        cwd=tmp_path, env={"CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", "")},
    )  # fmt: skip
    return proc, uri


def test_fit_through_the_cli_in_container_mode(tmp_path, data_dir):
    """The host's `lfads fit` with `local.container`: the worker runs in the image."""
    proc, uri = fit_in_container(tmp_path, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = the_run(uri)
    assert run.info.status == "FINISHED" and run.data.metrics["valid/recon_smth"] > 0
    assert (tmp_path / "out" / run.info.run_id).is_dir()


def test_member_over_its_memory_limit_fails(tmp_path, data_dir):
    """32 MiB cannot hold torch: the kernel kills the worker; the fit says so, run FAILED."""
    proc, uri = fit_in_container(tmp_path, data_dir, "local.memory=32m")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "signal 9" in proc.stderr and "out of memory" in proc.stderr
    assert the_run(uri).info.status == "FAILED"


def test_cancel_stops_the_container_and_the_worker_closes_its_run(tmp_path, data_dir, monkeypatch):
    """SIGTERM reaches the worker in the container (podman stop, --init): run KILLED."""
    monkeypatch.setenv("LFADS_FAULTS", "member.start=hang")  # forwarded into the container
    uri, cfg = member_run_config(tmp_path, data_dir)
    run_id = tracking.create_config_run(cfg, uri, member_tags(target_epoch=1))
    launcher = get_launcher("local", **container_options())
    launcher.check(uri)
    handle = launcher.submit(JobSpec(run_id, uri, threads=1, log_dir=str(tmp_path / "logs")))
    client = MlflowClient(uri)
    deadline = time.monotonic() + 120
    while "lfads.heartbeat" not in client.get_run(run_id).data.tags:
        assert time.monotonic() < deadline, (tmp_path / "logs" / f"{run_id}.log").read_text()
        time.sleep(0.5)
    assert launcher.poll(handle) == JobState.RUNNING
    launcher.cancel(handle)
    assert launcher.poll(handle) == JobState.CANCELLED
    assert client.get_run(run_id).info.status == "KILLED"
    assert podman("container", "exists", handle.info["container"]).returncode == 1
    assert handle.info.get("signal") != signal.SIGKILL


def test_pbt_in_container_mode(tmp_path, data_dir):
    """2 members x 2 generations, each member's worker in the image (warm `serve` containers)."""
    (tmp_path / "tiny.h5").symlink_to(data_dir / "tiny.h5")
    runs = tmp_path / "runs"
    runs.mkdir()
    config = {
        "data": {"paths": [str(data_dir / "tiny.h5")], "synth": None, "batch_size": 8},
        "model": TINY_MODEL,
        "loss": {"kl_increase_epoch": 1, "l2_increase_epoch": 1},
        "output": {"n_samples": 2, "figures": False, "dir": str(tmp_path / "out")},
        "tracking": {"experiment": "pbt"},
        "pbt": {
            "population": 2, "epochs_per_generation": 1, "burn_in": 1, "max_generations": 2,
            "concurrency": 2, "retries": 1,
        },
        "local": {"container": IMAGE, "memory": "1g"},
    }  # fmt: skip
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    env = {"CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", "")}
    proc = lfads(
        "pbt", "--launcher", "local", "--tracking-uri", uri, "pbt.yaml", cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pbt")
    runs_ = client.search_runs([exp.experiment_id], max_results=100)
    members = [r for r in runs_ if r.data.tags.get("lfads.kind") == "pbt_member"]
    assert len(members) == 4 and all(r.info.status == "FINISHED" for r in members)
    parent = [r for r in runs_ if r.data.tags.get("lfads.kind") == "pbt"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"


def test_missing_image_is_a_one_line_error_naming_the_fix(tmp_path):
    launcher = get_launcher("local", **container_options(container="localhost/no-such:image"))
    with pytest.raises(LauncherError, match="tools/image.sh build"):
        launcher.check(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")


def test_store_beside_a_git_checkout_is_refused(tmp_path):
    (tmp_path / ".git").mkdir()
    launcher = get_launcher("local", **container_options())
    with pytest.raises(LauncherError, match="directory of its own"):
        launcher.check(f"sqlite:///{tmp_path / 'mlflow.db'}")

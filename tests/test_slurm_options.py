"""The SLURM launcher's options and state mapping: checks that need no cluster (default suite).

The sbatch script is submitit's own text for the options (what sbatch would receive); the
cluster-side behaviour is tested on the real cluster in test_slurm.py.
"""

from __future__ import annotations

import os

import pytest

from launchers import JobState, LauncherError, get_launcher

from .helpers import lfads


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(LauncherError) as err:
        get_launcher("slurm", partitoin="gpu")
    msg = str(err.value)
    assert "slurm.partitoin" in msg and "slurm.partition" in msg and "slurm.setup" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"cpus_per_task": 0}, "slurm.cpus_per_task must be at least 1"),
        ({"time_min": "long"}, "slurm.time_min"),
        ({"additional_parameters": ["mail_type=END"]}, "slurm.additional_parameters"),
    ],
)
def test_bad_values_are_config_errors(options, needle):
    with pytest.raises(LauncherError, match=needle):
        get_launcher("slurm", **options)


def _srun_on_path(tmp_path, monkeypatch) -> None:
    """submitit's SlurmExecutor refuses to exist without `srun` on PATH (RuntimeError: Could not
    detect "srun", are you indeed on a slurm cluster?), even to render a script: on a machine
    without SLURM, an `srun` that fails if ever called lets this text-only check run. Nothing is
    submitted here; real submission is tested on the real cluster in test_slurm.py."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(
        "#!/bin/sh\necho 'not a SLURM cluster: test_slurm_options renders text only' >&2\nexit 1\n"
    )
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{os.environ.get('PATH', '')}{os.pathsep}{bin_dir}")


def test_sbatch_script_carries_the_options(tmp_path, monkeypatch):
    _srun_on_path(tmp_path, monkeypatch)
    launcher = get_launcher(
        "slurm",
        partition="gpu",
        account="lab",
        qos="high",
        time_min=90,
        cpus_per_task=4,
        gpus_per_node=1,
        mem="16G",
        constraint="a100",
        setup=["module load cuda/12", "source /shared/venv/bin/activate"],
        additional_parameters={"mail_type": "END"},
        array_parallelism=3,
    )
    assert launcher.default_concurrency(8) == 8 and launcher.default_threads(8) == 4
    executor = launcher._executor(tmp_path, threads=None)
    executor.parameters["map_count"] = 8  # as for a job array of 8 members
    text = executor._make_submission_file_text("python -m x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem=16G",
        "#SBATCH --constraint=a100",
        "#SBATCH --mail-type=END",
        "#SBATCH --array=0-7%3",
        "#SBATCH --signal=USR2@120",
        "module load cuda/12",
        "export OMP_NUM_THREADS=4",
    ):
        assert line in text, f"{line!r} missing from\n{text}"


@pytest.mark.parametrize(
    ("sacct", "state"),
    [
        ("PENDING", JobState.PENDING),
        ("REQUEUED", JobState.PENDING),
        ("PREEMPTED", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING),
        ("COMPLETED", JobState.SUCCEEDED),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("FAILED", JobState.FAILED),
        ("TIMEOUT", JobState.FAILED),
        ("NODE_FAIL", JobState.FAILED),
        ("OUT_OF_MEMORY", JobState.FAILED),
        ("", JobState.UNKNOWN),
    ],
)
def test_sacct_states(sacct, state):
    from launchers.slurm import map_state

    assert map_state(sacct) == state


def test_cli_rejects_a_bad_slurm_option_before_any_run(tmp_path):
    proc = lfads("fit", "--launcher", "slurm", "slurm.qoss=high", cwd=tmp_path, env={"CI": "true"})
    assert proc.returncode == 2, proc.stderr
    assert "slurm.qoss" in proc.stderr and "valid" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()

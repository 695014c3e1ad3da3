"""Launcher sections of a config file: carried to the launcher, kept out of the model config."""

from __future__ import annotations

import pytest

from launchers import LauncherError, get_launcher
from lfads_lightning.config import load_config, load_launcher_sections
from lfads_lightning.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_sections_are_split_from_the_model_config(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.002\nslurm:\n  partition: debug\n  cpus_per_task: 2\n")
    assert load_config(path).train.lr == 0.002
    sections = load_launcher_sections(path, ["slurm.partition=gpu", "kubernetes.namespace=lab"])
    assert sections == {
        "slurm": {"partition": "gpu", "cpus_per_task": 2},
        "kubernetes": {"namespace": "lab"},
    }


def test_a_section_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="section 'slurm' must be a mapping"):
        load_config(write(tmp_path, "slurm: debug\n"))


def test_unknown_launcher_option_lists_the_valid_ones(tmp_path):
    with pytest.raises(LauncherError) as err:
        get_launcher("local", bogus=1)
    assert "unknown option 'local.bogus'" in str(err.value)
    assert "warm" in str(err.value)


def test_local_launcher_defaults_follow_this_machine():
    import os

    launcher = get_launcher("local")
    cores = os.cpu_count() or 1
    assert launcher.default_concurrency(100) == cores
    assert launcher.default_concurrency(1) == 1
    assert launcher.default_threads(1) == cores
    assert launcher.default_threads(cores * 4) == 1

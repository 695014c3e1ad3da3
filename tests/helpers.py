"""Shared by the end-to-end tests: the `lfads` command as a real process, and a tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Small enough that an epoch takes a fraction of a second, with every model part present.
TINY_MODEL = {
    "ic_enc_dim": 8,
    "ci_enc_dim": 6,
    "con_dim": 6,
    "co_dim": 2,
    "ic_dim": 4,
    "gen_dim": 12,
    "fac_dim": 3,
}


# A synthetic Lorenz dataset small enough for end-to-end tests (`lfads data synth lorenz`).
TINY_DATA = ["n_conditions=4", "trials_per_condition=5", "n_steps=16", "n_neurons=8"]


def lfads(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run `python -m lfads_lightning ARGS` (what the `lfads` script runs) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "lfads_lightning", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def member_run_config(tmp_path: Path, data_dir: Path) -> tuple[str, object]:
    """A tracking store and the config of a tiny member run (`data_dir` holds tiny.h5)."""
    from lfads_lightning.config import load_config
    from lfads_lightning.runs import tracking

    (tmp_path / "tiny.h5").symlink_to(data_dir / "tiny.h5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.check_store(uri)
    cfg = load_config(
        None,
        [f"data.paths=[{tmp_path / 'tiny.h5'}]", "data.synth=null", "data.batch_size=8"]
        + [f"model.{k}={v}" for k, v in TINY_MODEL.items()]
        + ["train.progress_bar=false", "train.threads=1", "tracking.experiment=member"],
    )
    return uri, cfg


def member_tags(target_epoch: int) -> dict[str, str]:
    """The tags of a queued member 0 of generation 0, as the controller writes them."""
    from lfads_lightning.runs.schema import MemberTags

    return MemberTags(member=0, generation=0, target_epoch=target_epoch).to_tags()

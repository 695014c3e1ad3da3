"""Every config under configs/ loads as `lfads fit` and (with a `pbt:` section) as `lfads pbt`
read it, so a typo or an out-of-range value in a shipped file fails here, not on a user's run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfads_lightning.config import load_config, load_launcher_sections, read_yaml
from lfads_lightning.pbt.config import load_pbt_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_found():
    assert {"lorenz.yaml", "pbt_mc_maze_small.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path: Path):
    cfg = load_config(path)
    assert cfg.train.lr > 0 and cfg.data.batch_size >= 1
    load_launcher_sections(path)
    if "pbt" in read_yaml(path):
        base, pbt = load_pbt_config(path)
        assert pbt.population >= 2 and base == cfg


def test_mc_maze_pbt_ships_the_measured_augmentations():
    """docs/benchmarks.md "Quality" measured MC_Maze_Small PBT with a shift of std 3, max 6, and
    spike jitter of std 3 bins."""
    cfg = load_config(next(p for p in CONFIGS if p.name == "pbt_mc_maze_small.yaml"))
    assert (cfg.model.temporal_shift_std, cfg.model.temporal_shift_max) == (3.0, 6)
    assert cfg.model.spike_jitter_std == 3.0

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

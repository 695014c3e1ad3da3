#!/usr/bin/env python3
"""Developer entry point; needs only Python 3.11+ (stdlib) and network access to pip's index.

    python3 dev.py demo [overrides ...]   # fit LFADS on synthetic Lorenz data (nox session `demo`)
    python3 dev.py test [pytest args ...] # fast test suite (nox session `tests`)
    python3 dev.py SESSION [args ...]     # any other nox session, e.g. lint, tests_slow, benchmarks
    python3 dev.py list                   # list the nox sessions

On first use it creates `.venv/` in the repository root and installs nox into it; the nox
sessions then install the project itself into that same `.venv` (see noxfile.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
NOX = BIN / ("nox.exe" if os.name == "nt" else "nox")
NOX_REQUIREMENT = "nox>=2024.3"

ALIASES = {"demo": "demo", "test": "tests"}


def log(msg: str) -> None:
    print(f"dev.py: {msg}", flush=True)


def run(cmd: list[str]) -> None:
    rc = subprocess.call(cmd, stdin=subprocess.DEVNULL)
    if rc != 0:
        log(f"command failed with exit code {rc}: {' '.join(cmd)}")
        sys.exit(rc)


def ensure_venv() -> None:
    if not PYTHON.exists():
        log(
            f"creating {VENV.relative_to(ROOT)}/ with {sys.executable} (Python {sys.version.split()[0]})"
        )
        try:
            venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
        except Exception as exc:  # e.g. Debian's python3 without the python3-venv package
            log(f"could not create the virtual environment: {exc}")
            log("install the venv module (Debian/Ubuntu: apt install python3-venv) and retry")
            sys.exit(1)
    if not NOX.exists():
        log(f"installing {NOX_REQUIREMENT} into {VENV.relative_to(ROOT)}/")
        run([str(PYTHON), "-m", "pip", "install", "--quiet", NOX_REQUIREMENT])


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py may run on an older system python3)
        log(f"Python 3.11+ is required, this is {sys.version.split()[0]} ({sys.executable})")
        return 1
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    ensure_venv()
    if command in ("list", "-l", "--list"):
        nox_args = ["--list"]
    else:
        nox_args = ["-s", ALIASES.get(command, command)]
        if rest:
            nox_args += ["--", *rest]
    cmd = [str(NOX), "-f", str(ROOT / "noxfile.py"), *nox_args]
    log("running " + " ".join([f"{VENV.name}/bin/nox", *nox_args]))
    return run_to_end(cmd)


def run_to_end(cmd: list[str]) -> int:
    """Run `cmd`; on Ctrl-C keep waiting for it. The child gets the same SIGINT (same process
    group) and needs a moment to clean up and say so ("interrupted; run marked KILLED"): the
    prompt must come back after that message, not before it."""
    proc = subprocess.Popen(cmd, cwd=ROOT)
    interrupted = False
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt:
            interrupted = True  # a second Ctrl-C reaches the child too; keep waiting
    return 130 if interrupted and rc == 0 else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Nox sessions for lfads-lightning. Normally started through `python3 dev.py ...`.

All sessions share ONE environment: the virtualenv whose interpreter runs nox (`.venv/` when
started by dev.py). Nothing is created under `.nox/`; the project is installed once into that
environment and reinstalled only when pyproject.toml (or the install recipe below) changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import sysconfig
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHON = sys.executable  # the interpreter of the environment running nox
BIN = Path(PYTHON).parent
PREFIX = Path(sys.prefix)
STAMP = PREFIX / ".lfads-installed"
CONSTRAINTS = PREFIX / ".lfads-constraints.txt"

# A bare `torch` (or a range admitting newer releases) pulls a CUDA build of several GB; 2.13.0
# resolves to the local CPU wheel through pip's configured find-links. Install it first and keep
# it pinned with a constraint while installing the rest.
TORCH = "torch==2.13.0"
EXTRAS = "dev"
INSTALL_RECIPE = f"{TORCH};-e .[{EXTRAS}];compileall;v1"

# Tests that need a cluster, a browser or extra packages run in their own sessions.
DEFAULT_MARKERS = (
    "not slow and not slurm and not k8s and not nlb_tools and not browser and not ray"
    " and not container"
)

nox.options.default_venv_backend = "none"


class _QuietUvCheck(logging.Filter):
    """Sessions use this environment (venv backend "none"), never uv; nox still looks for uv
    and logs "uv binary not found.", which reads like an install error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uv binary not found" not in record.getMessage()


logging.getLogger("nox").addFilter(_QuietUvCheck())
nox.options.sessions = ["tests", "lint"]


def _in_venv() -> bool:
    return sys.prefix != sys.base_prefix


def _stamp_value() -> str:
    h = hashlib.sha256()
    h.update(INSTALL_RECIPE.encode())
    h.update(sys.version.encode())
    h.update((ROOT / "pyproject.toml").read_bytes())
    return h.hexdigest()


def _env(session: nox.Session) -> None:
    """Make child processes find this environment's scripts (lfads, mlflow, ...) first."""
    session.env["VIRTUAL_ENV"] = str(PREFIX)
    session.env["PATH"] = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])


def _install(session: nox.Session) -> None:
    """Install torch (pinned, CPU) then the project with its dev extras, once per pyproject.toml.

    Set LFADS_FORCE_INSTALL=1 to reinstall regardless of the stamp file.
    """
    _env(session)
    if not _in_venv():
        session.error(
            f"{PYTHON} is not a virtual environment; run nox from one (python3 dev.py ... does)"
        )
    want = _stamp_value()
    force = os.environ.get("LFADS_FORCE_INSTALL", "") not in ("", "0")
    if not force and STAMP.exists() and STAMP.read_text().strip() == want:
        session.log(f"project already installed in {PREFIX} (stamp {STAMP.name} up to date)")
        return
    STAMP.unlink(missing_ok=True)
    pip = [PYTHON, "-m", "pip", "install", "--progress-bar", "off"]
    session.log(f"installing {TORCH} (CPU wheel) into {PREFIX}")
    session.run(*pip, TORCH)
    CONSTRAINTS.write_text(TORCH + "\n")
    session.log(f"installing -e .[{EXTRAS}] with torch constrained to {TORCH}")
    session.run(*pip, "-c", str(CONSTRAINTS), "-e", f"{ROOT}[{EXTRAS}]")
    # This machine sets PYTHONDONTWRITEBYTECODE=1, so imports never cache bytecode; without .pyc
    # files `import lightning` took 11 s instead of 4 s here. pip compiles what it installs
    # (measured: every file but one), so this is a ~4 s safety net that skips current .pyc files.
    # A few third-party files (e.g. torch's py312-only test helpers) do not compile: ignored.
    session.log("compiling bytecode in site-packages")
    site = sysconfig.get_paths()["purelib"]
    session.run(PYTHON, "-m", "compileall", "-qq", "-j", "0", site, success_codes=[0, 1])
    STAMP.write_text(want + "\n")


@nox.session
def demo(session: nox.Session) -> None:
    """Fit LFADS on the embedded default (synthetic Lorenz data, MLflow in ./mlflow.db)."""
    _install(session)
    session.chdir(ROOT)
    # On Ctrl-C nox terminates the command after 0.3 s by default: give `lfads fit` time to
    # cancel its job, mark the run KILLED and say so.
    session.run(
        str(BIN / "lfads"),
        "fit",
        "--launcher",
        "local",
        "configs/lorenz.yaml",
        *session.posargs,
        interrupt_timeout=60,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """Fast test suite (no slow, cluster, browser or nlb-tools tests)."""
    _install(session)
    session.chdir(ROOT)
    session.run(
        PYTHON,
        "-m",
        "pytest",
        "-m",
        DEFAULT_MARKERS,
        # No -x: on a loaded machine one flaky start-up must not hide every other result.
        "-q",
        "--durations=15",
        *session.posargs,
    )


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Slow end-to-end tests (marked slow)."""
    _install(session)
    session.chdir(ROOT)
    session.run(PYTHON, "-m", "pytest", "-m", "slow", "-q", "--durations=15", *session.posargs)


@nox.session
def tests_slurm(session: nox.Session) -> None:
    """SLURM launcher tests on a real single-node cluster (needs root: installs slurm-wlm)."""
    _install(session)
    session.chdir(ROOT)
    session.run("bash", "tools/slurm_cluster.sh", "start", external=True)
    session.run(PYTHON, "-m", "pytest", "-m", "slurm", "-q", "--durations=15", *session.posargs)


@nox.session
def tests_k8s(session: nox.Session) -> None:
    """`k8s` tests on a real one-node cluster (tools/k8s/cluster.sh: binaries built once into
    ~/.cache/lfads-k8s, a kubelet on containerd + runc running our image); stopped after."""
    _install(session)
    session.chdir(ROOT)
    cluster = str(ROOT / "tools" / "k8s" / "cluster.sh")
    image = ROOT / "tools" / "image.sh"
    if image.exists():  # the pods' image: built or reused, exported where cluster.sh imports it
        session.run("bash", str(image), "build", env={"PYTHON": PYTHON}, external=True)
    session.run("bash", cluster, "start", env={"PYTHON": PYTHON}, external=True)
    try:
        session.run(PYTHON, "-m", "pytest", "-m", "k8s", "-q", "--durations=15", *session.posargs)
    finally:
        session.run("bash", cluster, "stop", external=True)


@nox.session
def tests_ray(session: nox.Session) -> None:
    """`--launcher ray` on the project's own Ray head on loopback (tools/ray_cluster.sh: own
    ports and temp dir; only that head is stopped after)."""
    _install(session)
    session.chdir(ROOT)
    pip = [PYTHON, "-m", "pip", "install", "--progress-bar", "off", "-c", str(CONSTRAINTS)]
    session.run(*pip, "ray[default]>=2.9")
    cluster = str(ROOT / "tools" / "ray_cluster.sh")
    session.run("bash", cluster, "start", env={"PYTHON": PYTHON}, external=True)
    try:
        session.run(PYTHON, "-m", "pytest", "-m", "ray", "-q", "--durations=15", *session.posargs)
    finally:
        session.run("bash", cluster, "stop", env={"PYTHON": PYTHON}, external=True)


@nox.session
def tests_container(session: nox.Session) -> None:
    """The CPU image (tools/image.sh: podman, a Debian base made by mmdebstrap where no registry
    answers; cached in ~/.cache/lfads-image) and the local launcher's container mode."""
    _install(session)
    session.chdir(ROOT)
    image = str(ROOT / "tools" / "image.sh")
    session.run("bash", image, "build", env={"PYTHON": PYTHON}, external=True)
    conf = session.run("bash", image, "conf", external=True, silent=True)
    session.env["CONTAINERS_CONF"] = str(conf).strip()
    session.run(PYTHON, "-m", "pytest", "-m", "container", "-q", "--durations=15", *session.posargs)


@nox.session
def tests_nlb_tools(session: nox.Session) -> None:
    """Cross-check our NLB metrics against nlb-tools (and NWB import with pynwb)."""
    _install(session)
    session.chdir(ROOT)
    pip = [PYTHON, "-m", "pip", "install", "--progress-bar", "off", "-c", str(CONSTRAINTS)]
    # nlb-tools pins pandas<=1.3.4 (no build on 3.11); its evaluation module needs only these.
    session.run(*pip, "--no-deps", "nlb-tools==0.0.4")
    session.run(*pip, "scipy", "scikit-learn", "pynwb")
    session.run(PYTHON, "-m", "pytest", "-m", "nlb_tools", "-q", "-rs", "-s", *session.posargs)


@nox.session
def tests_browser(session: nox.Session) -> None:
    """`lfads ui` in headless Debian chromium (apt) via chromedriver: the PBT compare view."""
    _install(session)
    session.chdir(ROOT)
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        apt = {"DEBIAN_FRONTEND": "noninteractive"}
        # Lock timeout: .ci/run may be building the image (apt installs) at the same time.
        apt_get = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
        session.run(*apt_get, "update", "-q", external=True, env=apt)
        session.run(
            *apt_get, "install", "-y", "-q", "--no-install-recommends",
            "chromium", "chromium-driver", external=True, env=apt,
        )  # fmt: skip
    session.run(PYTHON, "-m", "pip", "install", "--progress-bar", "off", "selenium")
    session.run(PYTHON, "-m", "pytest", "-m", "browser", "-q", "-rs", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    _install(session)
    session.chdir(ROOT)
    session.run(PYTHON, "-m", "ruff", "check", ".", *session.posargs)
    session.run(PYTHON, "-m", "ruff", "format", "--check", ".")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Run every benchmarks/bench_*.py (each writes JSON under benchmarks/results/)."""
    _install(session)
    session.chdir(ROOT)
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if not scripts:
        session.error("no benchmarks/bench_*.py scripts found")
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    for script in scripts:
        session.run(PYTHON, str(script.relative_to(ROOT)), *session.posargs)

"""Build, cache and load the native CPU loops of the fast path (kernels.cpp).

Why native code: on CPU the fast path's time went to the interpreter and the dispatcher (about
eight small torch ops per GRU step, 180 decoder bins and 560 encoder steps per batch), not to
arithmetic. kernels.cpp runs the same loops in C++ with the elementwise work fused, calling
ATen for the matmuls. It is compiled on first use with the system's C++ compiler against the
installed torch, cached under ~/.cache, and loaded with `torch.ops.load_library`.

Anything that prevents it (no compiler, a failed build, an unwritable cache, Windows) costs one
warning line and the fast path continues with its torch-op loops (fused.py), which compute the
same numbers. `LFADS_NATIVE_KERNELS=0` turns the native loops off; `LFADS_KERNEL_CACHE` moves
the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.cpp")
HEADERS = tuple(sorted(SOURCE.parent.glob("*.h")))  # included by SOURCE: part of the build key
ENV_SWITCH = "LFADS_NATIVE_KERNELS"
ENV_CACHE = "LFADS_KERNEL_CACHE"
log = logging.getLogger(__name__)


@dataclass
class NativeStatus:
    loaded: bool
    reason: str  # why not loaded, or where it was loaded from
    compile_s: float = 0.0  # 0 when the cached build was reused


_status: NativeStatus | None = None
_switched_off = False  # torch_ops_only(): the benchmark's and tests' A/B switch


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lfads-lightning" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _command(cxx: str, output: Path) -> list[str]:
    root = Path(torch.__file__).parent
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    return [
        cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        str(SOURCE), "-o", str(output),
        f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{root / 'lib'}",
    ]  # fmt: skip


def _build_key(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    parts = [SOURCE.read_bytes(), *(h.read_bytes() for h in HEADERS)]
    parts += [torch.__version__.encode(), version.stdout.encode()]
    parts += [_cpu_flags().encode(), sys.version.encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def _build(cxx: str, target: Path) -> float:
    """Compile into `target` (atomically: a temp file renamed into place); returns seconds."""
    import fcntl  # POSIX only; Windows falls back through the ImportError

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent workers on a fresh cache: one compiles
        if target.exists():
            return 0.0
        print(
            f"lfads: compiling the native CPU kernels once (~15 s), cached in {target.parent}",
            file=sys.stderr,
            flush=True,
        )
        started = time.perf_counter()
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                _command(cxx, Path(tmp)), capture_output=True, text=True, timeout=600
            )
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"{Path(cxx).name} failed: {tail}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return time.perf_counter() - started


def _load() -> NativeStatus:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return NativeStatus(False, f"disabled by {ENV_SWITCH}")
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    target = cache_dir() / f"lfads_kernels_{_build_key(cxx)}.so"
    compile_s = 0.0 if target.exists() else _build(cxx, target)
    torch.ops.load_library(str(target))
    return NativeStatus(True, str(target), compile_s)


def status() -> NativeStatus:
    """Load the kernels once per process (building them if needed); never raises."""
    global _status
    if _status is None:
        try:
            _status = _load()
        except Exception as exc:  # any failure: the torch-op loops compute the same numbers
            _status = NativeStatus(False, f"{type(exc).__name__}: {exc}")
            print(
                f"lfads: native CPU kernels unavailable ({_status.reason}); using the slower "
                f"torch-op loops (set {ENV_SWITCH}=0 to silence this)",
                file=sys.stderr,
                flush=True,
            )
    return _status


@contextlib.contextmanager
def torch_ops_only():
    """Within this block the fast path uses its torch-op loops (to compare the two)."""
    global _switched_off
    previous, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = previous


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the native loops serve these tensors (CPU, float32/float64, kernels loaded)."""
    if _switched_off:
        return False
    for x in tensors:
        if x is not None and (x.device.type != "cpu" or x.dtype not in _DTYPES):
            return False
    return status().loaded


def ops():
    return torch.ops.lfads_kernels


def log_factorial(x: torch.Tensor) -> torch.Tensor:
    """lgamma(x + 1), the Poisson likelihood's constant term (a table for integer counts)."""
    if x.requires_grad or not usable(x):
        return torch.lgamma(x + 1.0)
    return ops().log_factorial(x)


def dropout_mask(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor | None:
    """Inverted-dropout mask (0 or 1 / (1 - p)) drawn by the native Philox sampler, keyed by one
    draw of torch's generator (so torch.manual_seed reproduces it); None where not usable."""
    if not usable(like):
        return None
    seed = int(torch.randint(0, 2**62, (), device="cpu"))
    mask = torch.empty(shape, dtype=like.dtype)
    ops().dropout_mask(mask, float(p), seed)
    return mask


_DTYPES = (torch.float32, torch.float64)

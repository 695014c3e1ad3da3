"""The native CPU kernels' own pieces (kernels.cpp via native.py): the Philox dropout sampler, the
Poisson constant term, and the build's fallback when no compiler works.

The recurrences themselves are checked against the reference path in test_fast_path.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lfads_lightning.model import native

pytestmark = pytest.mark.skipif(
    not native.status().loaded, reason=f"native kernels not loaded: {native.status().reason}"
)


def draw(n: int, p: float, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    mask = torch.empty(n, dtype=dtype)
    native.ops().dropout_mask(mask, p, seed)
    return mask


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7])
def test_dropout_mask_values_and_rate(p):
    n = 1_000_000
    mask = draw(n, p, seed=123)
    keep = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)
    assert set(mask.unique().tolist()) == {0.0, float(keep)}
    kept = float((mask > 0).double().mean())
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sd, kept
    assert abs(float(mask.double().mean()) - 1.0) < 5 * sd / (1 - p)  # inverted dropout: mean 1


def test_dropout_mask_entries_are_independent():
    """Neighbours (within and across Philox's 4-output blocks) and lags are uncorrelated."""
    bits = (draw(1 << 20, 0.5, seed=7) > 0).double()
    bits = bits - bits.mean()
    for lag in (1, 2, 3, 4, 5, 64):
        r = float((bits[:-lag] * bits[lag:]).mean() / bits.var())
        assert abs(r) < 5 / (1 << 10), (lag, r)  # 5 standard errors of a null correlation
    lanes = bits.reshape(-1, 4)
    assert abs(float(torch.corrcoef(lanes.T)[0, 1:].abs().max())) < 5 / (1 << 9)


def test_dropout_mask_is_keyed_by_the_seed_and_counter_based():
    a, b = draw(1003, 0.3, seed=1), draw(1003, 0.3, seed=2)
    assert not torch.equal(a, b)
    assert torch.equal(a, draw(1003, 0.3, seed=1))
    assert torch.equal(draw(1000, 0.3, seed=1)[:997], a[:997])  # tail block = prefix of longer
    assert torch.equal(a > 0, draw(1003, 0.3, seed=1, dtype=torch.float64) > 0)  # same draws


def test_dropout_mask_follows_torch_manual_seed():
    like = torch.empty(0)
    torch.manual_seed(5)
    first = native.dropout_mask((3, 50), 0.3, like)
    torch.manual_seed(5)
    assert torch.equal(first, native.dropout_mask((3, 50), 0.3, like))
    assert not torch.equal(first, native.dropout_mask((3, 50), 0.3, like))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_factorial_matches_lgamma(dtype):
    counts = torch.poisson(torch.full((40, 50), 3.0)).to(dtype)
    torch.testing.assert_close(native.log_factorial(counts), torch.lgamma(counts + 1.0))
    odd = torch.tensor([0.0, 1.0, 2.5, 255.0, 256.0, 1000.0, -0.5, 1e-3], dtype=dtype)
    # float32: torch rounds x + 1 to float32 before lgamma (1e-3 + 1 loses 4 digits); native
    # adds in double, so the two differ by that rounding near x = 0
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=0.0)
    torch.testing.assert_close(native.log_factorial(odd), torch.lgamma(odd + 1.0), **tol)
    strided = counts.t()  # not contiguous
    torch.testing.assert_close(native.log_factorial(strided), torch.lgamma(strided + 1.0))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


CHECK = """
    import torch
    from lfads_lightning.model import native
    from lfads_lightning.model.network import LFADS
    from lfads_lightning.config import ModelConfig
    s = native.status()
    model = LFADS(ModelConfig(ic_enc_dim=6, ci_enc_dim=5, con_dim=5, co_dim=2, ic_dim=4,
                              gen_dim=7, fac_dim=3), [7], [9], 10, 13)
    out = model(torch.poisson(torch.full((4, 10, 7), 1.0)))
    out.params.sum().backward()
    print("loaded", s.loaded, "|", s.reason)
"""


def test_disabled_by_environment_without_a_warning(tmp_path):
    done = run_python(CHECK, LFADS_NATIVE_KERNELS="0", LFADS_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "loaded False | disabled by LFADS_NATIVE_KERNELS" in done.stdout
    assert "native" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing built or created


def test_a_failing_compiler_falls_back_with_one_warning_line(tmp_path):
    done = run_python(CHECK, CXX="/bin/false", LFADS_KERNEL_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert "loaded False" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "unavailable" in line]
    assert len(warnings) == 1, done.stderr
    assert "false failed" in warnings[0] and "torch-op loops" in warnings[0]
    assert "Traceback" not in done.stderr
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".so"]

"""The fast path (lfads_lightning/model/fused.py) against the reference path, number for number.

Both paths run on the same weights, the same data and the same random draws (the fast path's
`reference_draws` makes it draw every dropout mask with the reference's calls, in its order;
coordinated dropout is drawn before the model, from the same seed). Compared: every output of
the forward pass and the gradient of every parameter of a loss that touches every output
(reconstruction with coordinated-dropout gradient masking, both KLs, the L2 penalty, plus fixed
random weightings of all outputs). Gradient error is measured as max |g_fast - g_ref| over
max |g_ref|, per parameter.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from lfads_lightning.config import ModelConfig
from lfads_lightning.model import fused, native
from lfads_lightning.model.gru import ClippedGRUCell
from lfads_lightning.model.module import (
    apply_gradient_mask,
    cd_gradient_mask,
    coordinated_dropout,
    l2_penalty,
)
from lfads_lightning.model.network import LFADS

SMALL = dict(ic_enc_dim=6, ci_enc_dim=5, con_dim=5, co_dim=2, ic_dim=4, gen_dim=7, fac_dim=3)
T_ENC, T_REC, BATCH = 10, 13, 5
OUTPUTS = ("params", "factors", "gen_states", "ic_mean", "ic_var", "ic_sample")
CO_OUTPUTS = ("co_means", "co_vars", "co_samples")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-4)}  # (outputs abs, grads rel)


@pytest.fixture(params=["native", "torch_ops"], autouse=True)
def loops(request, monkeypatch):
    """Every test runs with both CPU loop implementations of the fast path: the native kernels
    (kernels.cpp) and the torch-op loops they fall back to."""
    if request.param == "torch_ops":
        monkeypatch.setattr(native, "_status", native.NativeStatus(False, "test: torch ops"))
    elif not native.status().loaded:
        pytest.skip(f"native kernels not loaded: {native.status().reason}")
    return request.param


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_native_kernels_build_where_a_compiler_exists(loops):
    """A broken kernels.cpp must fail here, not silently fall back to the slower loops."""
    if loops == "native":
        assert native.status().loaded, native.status().reason


def run_both(
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    device: str = "cpu",
    sessions: int = 1,
    ext: int = 0,
    sample: bool = True,
    train: bool = True,
    **model: object,
) -> tuple[dict, dict, LFADS]:
    """(reference results, fast results, model); results = {"out": {...}, "grad": {...}}."""
    cfg = ModelConfig(**{**SMALL, "readin_dim": 4 if sessions > 1 else 0, **model})
    torch.manual_seed(seed)
    encod_dims, recon_dims = [7, 6][:sessions], [9, 8][:sessions]
    lfads = LFADS(cfg, encod_dims, recon_dims, T_ENC, T_REC, ext).to(device, dtype)
    lfads.reference_draws = True
    lfads.train(train)
    session = sessions - 1
    gen = torch.Generator().manual_seed(seed + 1)
    data = torch.poisson(torch.full((BATCH, T_REC, recon_dims[session]), 1.5), generator=gen)
    data = data.to(device, dtype)
    enc = data[:, :T_ENC, : encod_dims[session]]
    ext_input = torch.randn(BATCH, T_REC, ext, generator=gen).to(device, dtype) if ext else None
    results = []
    for fast in (False, True):
        lfads.cfg = dataclasses.replace(cfg, fast_path=fast)
        lfads.zero_grad(set_to_none=True)
        torch.manual_seed(seed + 2)
        x, keep = coordinated_dropout(enc, cfg.cd_rate) if train else (enc, None)
        out = lfads(x, session=session, ext_input=ext_input, sample_posteriors=sample)
        nll = lfads.recon.nll(out.params, data)
        if keep is not None:
            nll = apply_gradient_mask(nll, cd_gradient_mask(keep, nll.shape))
        kl_ic, kl_co = lfads.kl_terms(out)
        scales = {"gen": 0.1, "con": 0.2, "ic_enc": 0.3, "ci_enc": 0.4}
        loss = nll.mean() + kl_ic + kl_co + l2_penalty(lfads.recurrent_weight_groups(), scales)
        values = {name: getattr(out, name) for name in OUTPUTS + CO_OUTPUTS}
        weights = torch.Generator().manual_seed(seed + 3)
        for v in values.values():
            loss = loss + (v * torch.randn(v.shape, generator=weights).to(v)).sum()
        loss.backward()
        grads = {n: p.grad for n, p in lfads.named_parameters() if p.requires_grad}
        results.append({"out": {k: v.detach() for k, v in values.items()}, "grad": grads})
    return results[0], results[1], lfads


def assert_same(ref: dict, fast: dict, dtype: torch.dtype) -> None:
    out_tol, grad_tol = TOL[dtype]
    for name, value in ref["out"].items():
        assert fast["out"][name].shape == value.shape, name
        if value.numel():
            err = float((fast["out"][name] - value).abs().max())
            assert err <= out_tol, f"output {name}: max abs error {err:.3g}"
    assert ref["grad"].keys() == fast["grad"].keys()
    for name, g_ref in ref["grad"].items():
        g_fast = fast["grad"][name]
        assert (g_ref is None) == (g_fast is None), name
        if g_ref is None:
            continue
        scale = float(g_ref.abs().max())
        err = float((g_fast - g_ref).abs().max()) / max(scale, 1e-30)
        assert err <= grad_tol, f"grad {name}: relative error {err:.3g} (scale {scale:.3g})"
        assert scale > 0 or float(g_fast.abs().max()) == 0.0, name


CASES = {
    "controller": {},
    "autonomous": dict(ci_enc_dim=0, con_dim=0, co_dim=0),
    "ext_inputs": dict(ext=3),
    "autonomous_ext_inputs": dict(ci_enc_dim=0, ext=2),
    "multi_session": dict(sessions=2),
    "no_sampling": dict(sample=False),
    "non_variational": dict(variational=False),
    "eval_mode": dict(train=False),
    "no_dropout": dict(dropout_rate=0.0, cd_rate=0.0),
    "equal_encoder_sizes": dict(ci_enc_dim=6),
    "ci_lag_2": dict(ci_lag=2),
    "binding_clip": dict(cell_clip=0.4),
    "gaussian": dict(recon="gaussian"),
    "gamma": dict(recon="gamma"),
    "zig": dict(recon="zig"),
    "mse": dict(recon="mse"),
}


SEEDED = [(case, 0) for case in CASES] + [
    (case, seed) for case in ("controller", "autonomous", "binding_clip") for seed in (1, 2)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("case", "seed"), SEEDED)
def test_fast_path_matches_reference_float64(case, seed, device):
    kwargs = {"dropout_rate": 0.3, "cd_rate": 0.3, **CASES[case]}
    ref, fast, _ = run_both(torch.float64, seed, device, **kwargs)
    assert_same(ref, fast, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["controller", "autonomous", "ext_inputs", "binding_clip"])
def test_fast_path_matches_reference_float32(case, device):
    kwargs = {"dropout_rate": 0.3, "cd_rate": 0.3, **CASES[case]}
    ref, fast, _ = run_both(torch.float32, 3, device, **kwargs)
    assert_same(ref, fast, torch.float32)


def test_binding_clip_case_really_clips():
    ref, fast, lfads = run_both(torch.float64, 0, cell_clip=0.4, dropout_rate=0.3, cd_rate=0.3)
    gen = ref["out"]["gen_states"].abs()
    assert 0.05 < float((gen == 0.4).double().mean()) < 0.95  # some states clipped, not all
    with torch.no_grad():
        ic_f, _ = lfads.ic_encoder(torch.randn(BATCH, T_ENC, 7, dtype=torch.float64) * 3)
    assert bool((ic_f.abs() == 0.4).any())


def test_fast_path_is_the_default_and_used_for_sampling():
    assert ModelConfig().fast_path is True
    torch.manual_seed(0)
    lfads = LFADS(ModelConfig(**SMALL), [7], [9], T_ENC, T_REC).double().eval()
    x = torch.poisson(torch.full((BATCH, T_ENC, 7), 1.0)).double()
    with torch.no_grad():
        torch.manual_seed(5)
        fast = lfads(x)
        lfads.cfg = dataclasses.replace(lfads.cfg, fast_path=False)
        torch.manual_seed(5)
        ref = lfads(x)
    for name in OUTPUTS + CO_OUTPUTS:
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_clip_gradient_is_exact(device):
    """Zero gradient where the state was clipped, full gradient on the boundary (torch.clamp)."""
    cell = ClippedGRUCell(1, 4, clip_value=5.0).double().to(device)
    with torch.no_grad():
        for w in (cell.weight_ih, cell.weight_hh_gates, cell.weight_hh_cand):
            w.zero_()
        # update gate = sigmoid(50) = 1.0 exactly: the new state is the old one, pre-clip.
        cell.bias.copy_(torch.tensor([0.0] * 4 + [50.0] * 4 + [0.3] * 4))
    h0 = torch.tensor([[9.0, -7.0, 5.0, 1.0]], dtype=torch.float64, device=device)
    x = torch.zeros(1, 1, dtype=torch.float64, device=device)
    h_ref = h0.clone().requires_grad_(True)
    cell(x, h_ref).sum().backward()
    h_fast = h0.clone().requires_grad_(True)
    states = fused.gru_scan(
        cell.project_input(x).reshape(1, 1, 1, -1),
        h_fast.unsqueeze(0),
        cell.weight_hh_gates.unsqueeze(0),
        cell.weight_hh_cand.unsqueeze(0),
        5.0,
    )
    states.sum().backward()
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64, device=device)
    assert torch.equal(states[0, 0], torch.tensor([[5.0, -5.0, 5.0, 1.0]], device=device).double())
    assert torch.equal(h_ref.grad, expected)
    assert torch.equal(h_fast.grad, expected)


@pytest.mark.parametrize("case", ["controller", "autonomous", "ext_inputs"])
def test_forward_without_grad_matches_forward_with_grad(case):
    """Without a backward to follow, the native loops keep one bin of gate buffers (scratch);
    every output must be the same as with the full tape (dropout masks on, same draws)."""
    kwargs = {"dropout_rate": 0.3, **CASES[case]}
    ext = kwargs.pop("ext", 0)
    cfg = ModelConfig(**{**SMALL, **kwargs})
    torch.manual_seed(0)
    lfads = LFADS(cfg, [7], [9], T_ENC, T_REC, ext).train()
    x = torch.poisson(torch.full((BATCH, T_ENC, 7), 1.5))
    ext_input = torch.randn(BATCH, T_REC, ext) if ext else None
    results = []
    for grad in (True, False):
        torch.manual_seed(4)
        with torch.set_grad_enabled(grad):
            out = lfads(x, ext_input=ext_input)
        results.append({name: getattr(out, name).detach() for name in OUTPUTS + CO_OUTPUTS})
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name

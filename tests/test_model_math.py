"""The model's maths against small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lfads_lightning.config import ModelConfig
from lfads_lightning.model.gru import BidirectionalClippedGRU, ClippedGRUCell
from lfads_lightning.model.module import (
    apply_gradient_mask,
    cd_gradient_mask,
    coordinated_dropout,
    l2_penalty,
    ramp_value,
)
from lfads_lightning.model.network import LFADS, NormalizedLinear, lag_ci_states
from lfads_lightning.model.priors import AutoregressivePrior, GaussianICPrior, diagonal_gaussian_kl
from lfads_lightning.model.recon import make_reconstruction


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _set_cell(cell: ClippedGRUCell, rng: np.random.Generator) -> dict[str, np.ndarray]:
    values = {
        "weight_ih": rng.normal(size=cell.weight_ih.shape),
        "weight_hh_gates": rng.normal(size=cell.weight_hh_gates.shape),
        "weight_hh_cand": rng.normal(size=cell.weight_hh_cand.shape),
        "bias": rng.normal(size=cell.bias.shape),
    }
    with torch.no_grad():
        for name, value in values.items():
            getattr(cell, name).copy_(torch.tensor(value))
    return values


def test_gru_step_matches_explicit_tensorflow_equations():
    rng = np.random.default_rng(0)
    cell = ClippedGRUCell(2, 3, clip_value=100.0).double()
    w = _set_cell(cell, rng)
    x = rng.normal(size=(1, 2))
    h = rng.normal(size=(1, 3)) * 0.5
    n = 3
    wx, b = w["weight_ih"], w["bias"]
    r = sigmoid(x @ wx[:, :n] + h @ w["weight_hh_gates"][:, :n] + b[:n])
    u = sigmoid(x @ wx[:, n : 2 * n] + h @ w["weight_hh_gates"][:, n:] + b[n : 2 * n])
    # Reset applied to h BEFORE the recurrent matmul (TensorFlow style).
    c = np.tanh(x @ wx[:, 2 * n :] + (r * h) @ w["weight_hh_cand"] + b[2 * n :])
    expected = u * h + (1 - u) * c
    got = cell(torch.tensor(x), torch.tensor(h)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_gru_bias_initialisation():
    cell = ClippedGRUCell(4, 5)
    np.testing.assert_array_equal(cell.bias.detach().numpy(), [1.0] * 10 + [0.0] * 5)


def test_gru_state_is_clipped():
    cell = ClippedGRUCell(1, 2, clip_value=5.0)
    with torch.no_grad():
        cell.weight_ih.fill_(0.0)
        cell.weight_hh_gates.fill_(0.0)
        cell.weight_hh_cand.fill_(0.0)
        cell.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 50.0, 0.0, 0.0]))  # update gate ~1
    h = torch.tensor([[9.0, -7.0]])
    out = cell(torch.zeros(1, 1), h)
    # u = sigmoid(50) ~ 1 keeps h, then clipping bounds it to +-5.
    np.testing.assert_allclose(out.detach().numpy(), [[5.0, -5.0]])


def test_bidirectional_encoder_directions():
    torch.manual_seed(0)
    enc = BidirectionalClippedGRU(3, 4).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    fwd, bwd = enc(x)
    h = enc.h0[0].expand(2, -1)
    for t in range(6):
        h = enc.fwd(x[:, t], h)
    torch.testing.assert_close(fwd[:, -1], h)
    h = enc.h0[1].expand(2, -1)
    for t in reversed(range(6)):
        h = enc.bwd(x[:, t], h)
    torch.testing.assert_close(bwd[:, 0], h)


def test_ci_lag_hides_the_current_bin():
    fwd = torch.arange(1.0, 5.0).reshape(1, 4, 1)
    bwd = torch.arange(11.0, 15.0).reshape(1, 4, 1)
    out = lag_ci_states(fwd, bwd, lag=1)[0]
    np.testing.assert_array_equal(out[:, 0].numpy(), [0.0, 1.0, 2.0, 3.0])  # fwd delayed
    np.testing.assert_array_equal(out[:, 1].numpy(), [12.0, 13.0, 14.0, 0.0])  # bwd advanced


def test_gaussian_kl_matches_closed_form_by_hand():
    # q = N(1, 0.5), p = N(0, 0.1): KL = 0.5 * (ln(0.1/0.5) + (0.5 + 1) / 0.1 - 1)
    by_hand = 0.5 * (math.log(0.2) + 15.0 - 1.0)
    got = diagonal_gaussian_kl(
        torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([0.1])
    )
    assert float(got) == pytest.approx(by_hand, rel=1e-6)
    assert by_hand == pytest.approx(6.19528, abs=1e-5)


def test_ic_prior_kl_sums_dims_and_matches_torch():
    prior = GaussianICPrior(3, 0.1)
    mean, var = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.2, 0.05, 1.0]])
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, var.sqrt()),
        torch.distributions.Normal(torch.zeros(3), math.sqrt(0.1)),
    ).sum(-1)
    torch.testing.assert_close(prior.kl(mean, var), expected)


def test_ar1_log_density_by_hand():
    tau, nvar = 10.0, 0.1
    prior = AutoregressivePrior(1, tau, nvar).double()
    u = torch.tensor([[[0.5], [0.2], [-0.1]]], dtype=torch.float64)
    a = math.exp(-1.0 / tau)
    var0 = nvar / (1 - a**2)

    def logn(x, m, v):
        return -0.5 * (math.log(2 * math.pi * v) + (x - m) ** 2 / v)

    by_hand = logn(0.5, 0.0, var0) + logn(0.2, a * 0.5, nvar) + logn(-0.1, a * 0.2, nvar)
    assert float(prior.log_prob(u)) == pytest.approx(by_hand, rel=1e-7)  # float32-stored tau, nvar


def test_ar1_kl_is_log_q_minus_log_p():
    prior = AutoregressivePrior(2, 10.0, 0.1).double()
    torch.manual_seed(1)
    mean = torch.randn(3, 5, 2, dtype=torch.float64)
    var = torch.rand(3, 5, 2, dtype=torch.float64) + 0.1
    u = mean + var.sqrt() * torch.randn_like(mean)
    log_q = torch.distributions.Normal(mean, var.sqrt()).log_prob(u).sum((1, 2))
    torch.testing.assert_close(prior.kl(u, mean, var), log_q - prior.log_prob(u))


@pytest.mark.parametrize(
    ("epoch", "start", "increase", "expected"),
    [
        (0, 0, 80, 1 / 81),
        (40, 0, 80, 41 / 81),
        (79, 0, 80, 80 / 81),
        (80, 0, 80, 1.0),
        (500, 0, 80, 1.0),
        (9, 10, 80, 0.0),
        (10, 10, 80, 1 / 81),
        (0, 0, 0, 1.0),
    ],
)
def test_ramp_values(epoch, start, increase, expected):
    assert ramp_value(epoch, start, increase) == pytest.approx(expected)


def test_coordinated_dropout_scales_kept_entries():
    torch.manual_seed(0)
    data = torch.ones(50, 40, 30)
    dropped, keep = coordinated_dropout(data, 0.3)
    values = torch.unique(dropped)
    assert (
        values.numel() == 2
        and float(values[0]) == 0.0
        and float(values[1]) == pytest.approx(1 / 0.7)
    )
    assert float(1 - keep.mean()) == pytest.approx(0.3, abs=0.01)
    torch.testing.assert_close(dropped, keep / 0.7)


def test_cd_gradient_mask_layout_and_gradients():
    keep = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # 1 trial, 2 observed bins, 2 held-in neurons
    mask = cd_gradient_mask(keep, torch.Size([1, 3, 3]))  # + 1 forward bin, + 1 held-out neuron
    expected = torch.tensor([[[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])
    torch.testing.assert_close(mask, expected)
    x = torch.arange(1.0, 10.0).reshape(1, 3, 3).requires_grad_()
    loss = apply_gradient_mask(x**2, mask)
    torch.testing.assert_close(loss, x.detach() ** 2)  # value everywhere
    loss.sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() * mask)  # gradient only where masked in


def test_factor_rows_are_l2_normalised():
    layer = NormalizedLinear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, -2.0]]))
    np.testing.assert_allclose(
        layer.normalized_weight().detach().numpy(), [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6
    )
    out = layer(torch.tensor([[1.0, 1.0]]))
    np.testing.assert_allclose(out.detach().numpy(), [[1.4, -1.0]], rtol=1e-6)


def test_l2_penalty_by_hand():
    w1 = torch.tensor([[1.0, 2.0]])  # ||w1||^2 = 5
    w2 = torch.tensor([[3.0]])  # ||w2||^2 = 9
    got = l2_penalty(
        {"gen": [w1], "con": [w2], "ic_enc": [torch.ones(4)]},
        {"gen": 0.1, "con": 1.0, "ic_enc": 0.0},
    )
    # (0.1 * 0.5 * 5 + 1.0 * 0.5 * 9) / 3 penalised weights (ic_enc has scale 0: not counted)
    assert float(got) == pytest.approx((0.25 + 4.5) / 3)


def test_poisson_gaussian_gamma_nll_by_formula():
    data = torch.tensor([[0.0, 1.0, 3.0]])
    log_rate = torch.tensor([[0.0, math.log(2.0), -1.0]])
    got = make_reconstruction("poisson").nll(log_rate.unsqueeze(-1), data)
    expected = [1.0, 2.0 - math.log(2.0), math.exp(-1) + 3.0 + math.log(6.0)]
    np.testing.assert_allclose(got.numpy()[0], expected, rtol=1e-6)

    params = torch.tensor([[[0.5, math.log(4.0)]]])
    x = torch.tensor([[1.5]])
    g = make_reconstruction("gaussian").nll(params, x)
    assert float(g) == pytest.approx(
        -torch.distributions.Normal(0.5, 2.0).log_prob(torch.tensor(1.5)).item(), rel=1e-6
    )

    gp = torch.tensor([[[math.log(2.0), math.log(3.0)]]])
    gm = make_reconstruction("gamma").nll(gp, x)
    ref = -torch.distributions.Gamma(2.0, 3.0).log_prob(torch.tensor(1.5)).item()
    assert float(gm) == pytest.approx(ref, rel=1e-5)
    assert float(make_reconstruction("gamma").mean(gp)) == pytest.approx(2.0 / 3.0, rel=1e-6)


def test_zero_inflated_gamma_nll():
    zig = make_reconstruction("zig", zig_min_value=0.1)
    params = torch.tensor(
        [[[math.log(2.0), math.log(3.0), 0.0], [math.log(2.0), math.log(3.0), 0.0]]]
    )  # q = 0.5
    data = torch.tensor([[0.0, 1.1]])
    got = zig.nll(params, data)[0]
    assert float(got[0]) == pytest.approx(math.log(2.0), rel=1e-6)  # -log(1 - q)
    event = -math.log(0.5) - torch.distributions.Gamma(2.0, 3.0).log_prob(torch.tensor(1.0)).item()
    assert float(got[1]) == pytest.approx(event, rel=1e-5)


def test_mse_reconstruction():
    mse = make_reconstruction("mse")
    assert float(mse.nll(torch.tensor([[[2.0]]]), torch.tensor([[0.5]]))) == pytest.approx(2.25)


def _model(**overrides) -> LFADS:
    dims = dict(ic_enc_dim=8, ci_enc_dim=6, con_dim=6, co_dim=2, ic_dim=5, gen_dim=10, fac_dim=4)
    cfg = ModelConfig(**{**dims, **overrides})
    return LFADS(cfg, [7], [9], encod_seq_len=12, recon_seq_len=15)


def test_forward_shapes_and_gradients_full_model():
    torch.manual_seed(0)
    m = _model()
    out = m(torch.poisson(torch.ones(3, 12, 7)))
    assert out.params.shape == (3, 15, 9, 1)
    assert out.factors.shape == (3, 15, 4) and out.co_means.shape == (3, 15, 2)
    kl_ic, kl_co = m.kl_terms(out)
    loss = m.recon.nll(out.params, torch.ones(3, 15, 9)).mean() + kl_ic + kl_co
    loss.backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if "readin" not in n)


def test_autonomous_and_non_variational_modes():
    m = _model(co_dim=0)
    assert not m.use_controller
    out = m(torch.ones(2, 12, 7))
    assert out.co_means.shape == (2, 15, 0)
    assert float(m.kl_terms(out)[1]) == 0.0
    nv = _model(variational=False)
    nv.eval()
    a, b = nv(torch.ones(2, 12, 7)), nv(torch.ones(2, 12, 7))
    torch.testing.assert_close(a.params, b.params)  # deterministic: no posterior sampling
    assert all(float(k) == 0.0 for k in nv.kl_terms(a))


def test_external_inputs_change_the_output():
    cfg = ModelConfig(
        ic_enc_dim=8,
        ci_enc_dim=0,
        con_dim=0,
        co_dim=0,
        ic_dim=5,
        gen_dim=10,
        fac_dim=4,
        dropout_rate=0.0,
    )
    m = LFADS(cfg, [7], [7], 12, 12, ext_input_dim=2)
    m.eval()
    x = torch.ones(1, 12, 7)
    a = m(x, ext_input=torch.zeros(1, 12, 2), sample_posteriors=False)
    b = m(x, ext_input=torch.ones(1, 12, 2), sample_posteriors=False)
    assert not torch.allclose(a.params, b.params)
    with pytest.raises(ValueError, match="ext_input"):
        m(x)


def test_multi_session_readin_and_pca_init():
    cfg = ModelConfig(
        ic_enc_dim=8,
        ci_enc_dim=6,
        con_dim=6,
        co_dim=2,
        ic_dim=5,
        gen_dim=10,
        fac_dim=4,
        readin_dim=3,
    )
    m = LFADS(cfg, [7, 11], [7, 11], 12, 12)
    assert m(torch.ones(2, 12, 11), session=1).params.shape == (2, 12, 11, 1)
    data = torch.randn(20, 12, 7) @ torch.randn(7, 7)
    m.init_readin_pca(0, data, freeze=True)
    w = m.readins[0].weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(3), atol=1e-5, rtol=0)  # orthonormal components
    assert not m.readins[0].weight.requires_grad
    with pytest.raises(ValueError, match="readin_dim"):
        LFADS(ModelConfig(), [7, 11], [7, 11], 12, 12)

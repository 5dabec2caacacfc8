"""kexue.torch.gumbel, kexue.torch.estimators and the categorical VAE (chapter 07)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kexue.torch import (CategoricalVAE, gumbel_from_uniform, gumbel_max, gumbel_softmax, normal_rsample,
                         probs_to_logits, sample_gumbel, score_function_surrogate, train_categorical_vae)
from kexue.torch.estimators import leave_one_out_baseline
from kexue.torch.gumbel import check_logits


def test_gumbel_noise_is_finite_at_the_ends_and_gumbel_distributed():
    for dtype in (torch.float32, torch.float64):
        ends = torch.tensor([0.0, 1e-45 if dtype == torch.float32 else 0.0, 0.5, 1 - 1e-7, 1.0], dtype=dtype)
        assert torch.isfinite(gumbel_from_uniform(ends)).all()
    g = sample_gumbel((200_000,), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert stats.kstest(g.numpy(), stats.gumbel_r.cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="`u`"):
        gumbel_from_uniform(torch.tensor([1.5]))
    with pytest.raises(TypeError, match="`u`"):
        gumbel_from_uniform(torch.tensor([0, 1]))


def test_gumbel_max_follows_p_including_a_zero_class():
    p = torch.tensor([0.5, 0.2, 0.0, 0.2, 0.1], dtype=torch.float64)
    logits = probs_to_logits(p).expand(100_000, 5)
    counts = torch.bincount(gumbel_max(logits, torch.Generator().manual_seed(1)), minlength=5).numpy()
    assert counts[2] == 0
    keep = p.numpy() > 0
    assert stats.chisquare(counts[keep], 100_000 * p.numpy()[keep]).pvalue > 1e-3


def test_gumbel_softmax_limits_and_straight_through():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1, 0.0]])).expand(4000, 4).contiguous().requires_grad_()
    cold = gumbel_softmax(logits, 0.01, generator=torch.Generator().manual_seed(0))
    assert (cold.max(dim=-1).values > 0.99).float().mean() > 0.97 and (cold[:, 3] == 0).all()
    hot = gumbel_softmax(logits, 1e4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hot[:, :3], torch.full_like(hot[:, :3], 1 / 3), atol=1e-3)
    hard = gumbel_softmax(logits, 0.5, hard=True, generator=torch.Generator().manual_seed(0))
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0} and (hard.detach().sum(-1) == 1).all()
    (hard * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("tau", [0, -1.0, float("inf"), float("nan"), torch.tensor(0.0), np.float32(-1)])
def test_gumbel_softmax_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match="`tau`"):
        gumbel_softmax(torch.zeros(3), tau)


def test_gumbel_softmax_rejects_a_subnormal_tau_and_never_overflows_above_it():
    """1e-40 (subnormal in float32) is rejected; at tau = 1e-30 logits of 1e9 would overflow (logits + g) / tau."""
    with pytest.raises(ValueError, match="`tau`"):
        gumbel_softmax(torch.zeros(3), 1e-40)
    with pytest.raises(ValueError, match="`tau`"):
        gumbel_softmax(torch.zeros(3), torch.tensor(1e-40, dtype=torch.float64))
    logits = torch.tensor([[1e9, 0.0, -1e9], [0.0, 1e9, 5.0]], requires_grad=True)
    for hard in (False, True):
        y = gumbel_softmax(logits, 1e-30, hard=hard, generator=torch.Generator().manual_seed(0))
        assert torch.equal(y.detach(), torch.eye(3)[[0, 1]])
        (y * torch.arange(3.0)).sum().backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


def test_sample_gumbel_rejects_a_bare_integer_shape():
    with pytest.raises(TypeError, match="`shape`"):
        sample_gumbel(5)
    with pytest.raises(ValueError, match="`shape`"):
        sample_gumbel((2, -1))
    assert sample_gumbel((5,)).shape == (5,) and sample_gumbel(torch.Size([2, 3])).shape == (2, 3)


def test_score_function_surrogate_holds_f_and_the_baseline_constant():
    """Gradient flows only through log_prob: f and b may depend on parameters (a learned f, a critic) but must
    not be differentiated through."""
    theta = torch.tensor([0.3, -0.2], requires_grad=True)
    phi = torch.tensor(2.0, requires_grad=True)  # a parameter of f and of the baseline only
    log_prob = torch.log_softmax(theta, 0)
    f_values = phi * torch.tensor([1.0, 3.0])
    surrogate = score_function_surrogate(log_prob, f_values, baseline=0.5 * phi)
    g_theta, g_phi = torch.autograd.grad(surrogate, (theta, phi), allow_unused=True, retain_graph=True)
    assert g_phi is None
    assert torch.allclose(g_theta, torch.autograd.grad(((f_values - 0.5 * phi).detach() * log_prob).mean(), theta)[0])


@pytest.mark.parametrize("tau", ["1", True, None, torch.ones(2), torch.tensor(1)])
def test_gumbel_softmax_rejects_tau_of_a_wrong_type(tau):
    with pytest.raises(TypeError, match="`tau`"):
        gumbel_softmax(torch.zeros(3), tau)


@pytest.mark.parametrize("tau", [np.float32(0.5), np.float64(0.5), np.int64(1), torch.tensor(0.5), 1])
def test_gumbel_softmax_takes_numpy_scalars_and_0d_tensors(tau):
    y = gumbel_softmax(torch.zeros(4, 3), tau, generator=torch.Generator().manual_seed(0))
    ref = gumbel_softmax(torch.zeros(4, 3), float(tau), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(y, ref)


def test_learnable_temperature_gets_a_gradient():
    tau = torch.tensor(0.7, requires_grad=True)
    (gumbel_softmax(torch.randn(5, 4), tau)[:, 0]).sum().backward()
    assert tau.grad is not None and torch.isfinite(tau.grad)


def test_straight_through_gradient_is_the_relaxed_jacobian_from_the_same_noise():
    """Autograd through hard=True must give J^T w, J = (diag s - s s^T) / tau at s = softmax((logits + g) / tau)."""
    for dtype, tau in ((torch.float64, 0.3), (torch.float32, 2.0)):
        logits = torch.randn(500, 6, dtype=dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
        w = torch.randn(500, 6, dtype=dtype, generator=torch.Generator().manual_seed(2))
        y = gumbel_softmax(logits, tau, hard=True, generator=torch.Generator().manual_seed(3))
        (y * w).sum().backward()
        g = sample_gumbel(logits.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
        soft = torch.softmax((logits.detach() + g) / tau, dim=-1)
        expected = soft * (w - (soft * w).sum(-1, keepdim=True)) / tau
        assert torch.equal(y.detach(), torch.nn.functional.one_hot((logits.detach() + g).argmax(-1), 6).to(dtype))
        assert torch.allclose(logits.grad, expected, rtol=1e-5, atol=1e-6)


def test_dim_argument():
    p = torch.tensor([0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    logits = probs_to_logits(p[:, None].expand(4, 50_000), dim=0)  # classes along dim 0
    y = gumbel_softmax(logits, 0.5, dim=0, generator=torch.Generator().manual_seed(0))
    assert y.shape == (4, 50_000) and torch.allclose(y.sum(0), torch.ones(50_000, dtype=torch.float64))
    hard = gumbel_softmax(logits, 0.5, hard=True, dim=0, generator=torch.Generator().manual_seed(0))
    assert (hard.sum(0) == 1).all() and (hard[3] == 0).all()
    counts = torch.bincount(gumbel_max(logits, torch.Generator().manual_seed(1), dim=0), minlength=4).numpy()
    assert counts[3] == 0 and stats.chisquare(counts[:3], 50_000 * p.numpy()[:3]).pvalue > 1e-3
    with pytest.raises(ValueError, match="`dim`"):
        gumbel_softmax(logits, 0.5, dim=2)
    with pytest.raises(TypeError, match="`dim`"):
        gumbel_max(logits, dim=0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rare_class_rate_is_right_in_low_precision(dtype):
    """p = (0.99, 0.009, 0.001): low-precision uniforms cut the Gumbel tails and draw the 0.001 class too seldom."""
    n = 2_000_000
    logits = torch.log(torch.tensor([0.99, 0.009, 0.001])).to(dtype)
    expected = torch.softmax(logits.float(), 0)[2].item()  # the probability the rounded logits stand for
    for draw in (lambda g: gumbel_max(logits.expand(n, 3), g),
                 lambda g: gumbel_softmax(logits.expand(n, 3), 1.0, hard=True, generator=g).argmax(-1)):
        rare = int((draw(torch.Generator().manual_seed(0)) == 2).sum())
        assert stats.binomtest(rare, n, expected).pvalue > 1e-3, (dtype, rare / n, expected)
    assert gumbel_softmax(logits.expand(3, 3), 0.5).dtype == dtype


def test_no_host_synchronisation_without_validation(monkeypatch):
    """validate=False must not read a tensor back (bool(), .item(), .tolist()); validate=True reads one."""
    reads = []
    for name in ("__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: reads.append(_n) or _o(self, *a))
    logits = torch.randn(8, 5)
    gumbel_softmax(logits, 0.5, hard=True, validate=False)
    gumbel_max(logits, validate=False)
    assert reads == []
    gumbel_softmax(logits, 0.5, hard=True)
    assert len(reads) == 1
    nan = torch.tensor([[0.0, float("nan")]])
    assert torch.isnan(gumbel_softmax(nan, 1.0, validate=False)).all()  # unchecked NaN propagates, visibly
    with pytest.raises(ValueError, match="NaN"):
        check_logits(nan)


def test_probs_to_logits_tolerance_follows_the_dtype():
    logits = 3 * torch.randn(32, 50_000, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, -1)  # float32 rows off 1 by about 1e-6
    assert torch.equal(probs_to_logits(probs), torch.log(probs))
    big = torch.softmax(3 * torch.randn(2, 1_000_000, generator=torch.Generator().manual_seed(1)), -1)
    assert torch.isfinite(probs_to_logits(big).max(-1).values).all()
    with pytest.raises(ValueError, match="sum to 1"):
        probs_to_logits(probs * (1 + 1e-3))
    with pytest.raises(ValueError, match="sum to 1"):
        probs_to_logits(torch.tensor([0.5, 0.5 + 1e-5], dtype=torch.float64))
    assert probs_to_logits(torch.tensor([0.5, 0.5 + 1e-5]), atol=1e-4).shape == (2,)
    with pytest.raises(ValueError, match="`atol`"):
        probs_to_logits(torch.tensor([0.5, 0.5]), atol=-1.0)


def test_bad_probabilities_and_logits():
    with pytest.raises(ValueError, match="sum to 1"):
        probs_to_logits(torch.tensor([0.5, 0.6]))
    with pytest.raises(TypeError, match="`logits`"):
        gumbel_max(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="non-negative"):
        probs_to_logits(torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match="NaN"):
        gumbel_max(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="at least one class"):
        gumbel_max(torch.tensor([-math.inf, -math.inf]))


def test_normal_reparameterization_and_score_function_are_unbiased():
    mu = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    z = normal_rsample(mu, sigma, n=400_000, generator=torch.Generator().manual_seed(0))
    (z**2).mean().backward()  # E[z^2] = mu^2 + sigma^2
    assert mu.grad.item() == pytest.approx(1.4, abs=0.02) and sigma.grad.item() == pytest.approx(2.6, abs=0.03)
    theta = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([1.0, 3.0, -2.0], dtype=torch.float64)
    p = torch.softmax(theta, 0)
    exact = (p * (f - (p * f).sum())).detach()
    idx = gumbel_max(theta.detach().expand(400_000, 3), torch.Generator().manual_seed(2))
    log_p = torch.log_softmax(theta, 0)[idx]
    score_function_surrogate(log_p, f[idx], baseline=(p * f).sum().item()).backward()
    assert torch.allclose(theta.grad, exact, atol=0.01)
    with pytest.raises(ValueError, match="must match"):
        score_function_surrogate(torch.zeros(3), torch.zeros(4))
    # a leave-one-out baseline over 4 samples per draw keeps it unbiased (a baseline that saw z_n would not)
    theta.grad = None
    idx = gumbel_max(theta.detach().expand(4, 100_000, 3), torch.Generator().manual_seed(3))
    loo = leave_one_out_baseline(f[idx])
    assert torch.allclose(loo[0], (f[idx][1:].sum(0)) / 3)
    score_function_surrogate(torch.log_softmax(theta, 0)[idx], f[idx], loo).backward()
    assert torch.allclose(theta.grad, exact, atol=0.01)
    theta.grad = None
    score_function_surrogate(torch.log_softmax(theta, 0)[idx], f[idx], f[idx].mean(0, keepdim=True)).backward()
    assert not torch.allclose(theta.grad, exact, atol=0.01)  # the mean including z_n is biased: the test can fail
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_baseline(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="sigma"):
        normal_rsample(torch.tensor(0.0), torch.tensor(-1.0))


@pytest.mark.parametrize("estimator", ["gumbel-softmax", "straight-through", "reinforce"])
def test_categorical_vae_learns(estimator):
    torch.manual_seed(0)
    x = (torch.rand(256, 16) > 0.5).float()
    x[:, 8:] = x[:, :8]  # half the pixels copy the other half: a latent code helps
    model = CategoricalVAE(16, n_latents=4, n_classes=4, hidden=32)
    curve = train_categorical_vae(model, x, x, estimator, epochs=15)
    assert np.isfinite(curve).all() and curve[-1][0] > curve[0][0]
    with pytest.raises(ValueError, match="`estimator`"):
        model.surrogate_loss(x, "vimco")


def test_categorical_vae_options():
    x = (torch.rand(100, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    model = CategoricalVAE(16, n_latents=3, n_classes=4, hidden=8)
    taus = []
    curve = train_categorical_vae(model, x, x, "gumbel-softmax", epochs=3, max_batches=1,
                                  tau=lambda epoch: taus.append(epoch) or max(0.5, 0.9**epoch))
    assert len(curve) == 3 and taus == [0, 1, 2]
    assert model.elbo(x, batch_size=7).shape == (100,)
    with pytest.raises(ValueError, match="`samples`"):
        model.surrogate_loss(x, "reinforce", samples=1)
    with pytest.raises(ValueError, match="`max_batches`"):
        train_categorical_vae(model, x, x, "reinforce", epochs=1, max_batches=0)

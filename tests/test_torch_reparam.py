"""kexue.torch.gumbel, kexue.torch.estimators and the categorical VAE (chapter 07)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kexue.torch import (CategoricalVAE, gumbel_from_uniform, gumbel_max, gumbel_softmax, normal_rsample,
                         probs_to_logits, sample_gumbel, score_function_surrogate, train_categorical_vae)


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


@pytest.mark.parametrize("tau", [0, -1.0, float("inf"), float("nan"), "1", True])
def test_gumbel_softmax_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match="`tau`"):
        gumbel_softmax(torch.zeros(3), tau)


def test_bad_probabilities_and_logits():
    with pytest.raises(ValueError, match="sum to 1"):
        probs_to_logits(torch.tensor([0.5, 0.6]))
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

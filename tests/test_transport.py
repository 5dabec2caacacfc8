"""kexue.transport and kexue.torch.wgan (chapter 05)."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import ot  # noqa: E402

from kexue.torch.wgan import clip_weights_, gradient_penalty, mlp_critic, train_wgan  # noqa: E402
from kexue.transport import (kantorovich_rubinstein, sinkhorn, wasserstein_1d, wasserstein_dual,  # noqa: E402
                             wasserstein_primal)


def problem(n=12, m=9, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((m, 2)) + 1
    a, b = rng.random(n), rng.random(m)
    return x, y, a / a.sum(), b / b.sum()


def test_primal_dual_and_pot_agree():
    x, y, a, b = problem()
    cost = ot.dist(x, y, metric="euclidean")
    value, plan = wasserstein_primal(a, b, cost)
    dual, f, g = wasserstein_dual(a, b, cost)
    assert value == pytest.approx(ot.emd2(a, b, cost), rel=1e-10) and dual == pytest.approx(value, rel=1e-10)
    assert (cost - f[:, None] - g[None]).min() > -1e-9
    assert np.allclose(plan.sum(1), a) and np.allclose(plan.sum(0), b)


def test_kantorovich_rubinstein_and_1d():
    x, y, a, b = problem(6, 5)
    value_kr, phi = kantorovich_rubinstein(np.r_[x, y], np.r_[a, np.zeros(5)], np.r_[np.zeros(6), b])
    assert value_kr == pytest.approx(wasserstein_primal(a, b, ot.dist(x, y, metric="euclidean"))[0], rel=1e-9)
    u, v = np.random.default_rng(1).standard_normal(30), np.random.default_rng(2).standard_normal(17)
    assert wasserstein_1d(u, v) == pytest.approx(ot.wasserstein_1d(u, v, p=1), rel=1e-10)
    assert wasserstein_1d(u, v, 2) == pytest.approx(np.sqrt(ot.wasserstein_1d(u, v, p=2)), rel=1e-10)


def test_sinkhorn_matches_pot_and_the_log_domain():
    x, y, a, b = problem()
    cost = ot.dist(x, y, metric="euclidean")
    for reg in (1.0, 0.1):
        reference = float(ot.sinkhorn2(a, b, cost, reg, stopThr=1e-10, numItermax=100_000))
        assert sinkhorn(a, b, cost, reg, tol=1e-10)[0] == pytest.approx(reference, rel=1e-7)
        assert sinkhorn(a, b, cost, reg, tol=1e-10, log_domain=True)[0] == pytest.approx(reference, rel=1e-7)
    with pytest.raises(FloatingPointError, match="log_domain"):
        sinkhorn(a, b, 1000 * cost, 0.01)


@pytest.mark.parametrize("call, match", [
    (lambda a, b, c: wasserstein_primal(a, b[:-1], c), "shape"),
    (lambda a, b, c: wasserstein_primal(a, 2 * b, c), "same total mass"),
    (lambda a, b, c: wasserstein_dual(-a, b, c), "non-negative"),
    (lambda a, b, c: wasserstein_primal(a, b, np.where(c > 1, np.inf, c)), "finite"),
    (lambda a, b, c: sinkhorn(a, b, c, 0), "reg"),
])
def test_bad_input(call, match):
    x, y, a, b = problem()
    with pytest.raises(ValueError, match=match):
        call(a, b, ot.dist(x, y))


def test_wgan_pieces():
    critic = mlp_critic(2)
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    assert gradient_penalty(critic, real, fake).item() >= 0
    clip_weights_(critic, 0.01)
    assert all(p.abs().max() <= 0.01 for p in critic.parameters())
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, real, fake[:8])
    sn = mlp_critic(2, spectral=True)
    sn(real)  # one forward pass runs the power iteration
    for layer in (m for m in sn if isinstance(m, torch.nn.Linear)):
        assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, rel=0.05)
    data = torch.randn(256, 2) * 0.1 + 1
    gen, _ = train_wgan(data, "gp", 20, batch_size=64)
    with pytest.raises(ValueError, match="`variant`"):
        train_wgan(data, "lsgan", 1)

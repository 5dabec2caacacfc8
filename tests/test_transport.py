"""kexue.transport and kexue.torch.wgan (chapter 05)."""

import os
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import ot  # noqa: E402
from ot.datasets import make_1D_gauss  # noqa: E402

from kexue.torch.wgan import (clip_weights_, critic_loss, generator_loss, gradient_penalty, mlp_critic,  # noqa: E402
                              train_wgan)
from kexue.transport import (check_problem, kantorovich_rubinstein, marginal_operator, sinkhorn,  # noqa: E402
                             wasserstein_1d, wasserstein_dual, wasserstein_primal)


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


# POT's own test histograms (test/test_ot.py): 100-bin Gaussians on a grid with the cost |i - j|.
GAUSS_PAIRS = [((20, 5), (60, 10)), ((20, 5), (40, 5)), ((30, 5), (50, 10)), ((20, 5), (60, 8))]


@pytest.mark.parametrize("first, second", GAUSS_PAIRS)
def test_exact_on_pots_gaussian_histograms(first, second):
    grid = np.arange(100, dtype=np.float64)
    a, b, cost = make_1D_gauss(100, *first), make_1D_gauss(100, *second), np.abs(grid[:, None] - grid[None])
    reference = ot.emd2(a, b, cost)
    assert wasserstein_primal(a, b, cost)[0] == pytest.approx(reference, abs=1e-8)
    assert wasserstein_dual(a, b, cost)[0] == pytest.approx(reference, abs=1e-8)


def test_a_shifted_histogram_costs_exactly_its_shift():
    grid = np.arange(100, dtype=np.float64)
    a = make_1D_gauss(100, 30, 5)
    b = np.r_[np.zeros(20), a[:80]]  # a moved right by 20 bins (what falls off the end is ~1e-50)
    cost = np.abs(grid[:, None] - grid[None])
    assert wasserstein_primal(a, b, cost)[0] == pytest.approx(20, abs=1e-8)
    assert wasserstein_dual(a, b, cost)[0] == pytest.approx(20, abs=1e-8)
    assert wasserstein_1d(grid, grid + 20) == pytest.approx(20, rel=1e-14)  # point masses, by sorting


def test_large_masses_within_tolerance_are_rescaled():
    x, y, a, b = problem(20, 15, seed=3)
    a, b = 1e6 * a, 1e6 * b * (1 + 5e-10)  # masses differ by 5e-10 relative, inside MASS_RTOL
    cost = ot.dist(x, y, metric="euclidean")
    reference = ot.emd2(a, b * a.sum() / b.sum(), cost)
    assert wasserstein_primal(a, b, cost)[0] == pytest.approx(reference, rel=1e-9)
    assert wasserstein_dual(a, b, cost)[0] == pytest.approx(reference, rel=1e-9)
    assert kantorovich_rubinstein(np.r_[x, y], np.r_[a, 0 * b], np.r_[0 * a, b])[0] == pytest.approx(reference, rel=1e-9)
    assert check_problem(a, b, cost)[1].sum() == pytest.approx(a.sum(), rel=1e-15)


def test_float32_normalised_masses_are_accepted():
    rng = np.random.default_rng(4)
    a, b = rng.random(300).astype(np.float32), rng.random(200).astype(np.float32)
    a, b = a / a.sum(), b / b.sum()
    cost = rng.random((300, 200))
    _, b64, _ = check_problem(a, b, cost)
    assert b64.sum() == pytest.approx(np.float64(a).sum(), rel=1e-15)
    assert sinkhorn(a, b, cost, 0.1)[0] == pytest.approx(float(ot.sinkhorn2(a, b, cost, 0.1, stopThr=1e-9)), rel=1e-6)


def test_zero_mass_bins():
    rng = np.random.default_rng(5)
    a, b, cost = rng.random(10), rng.random(8), rng.random((10, 8))
    a[[2, 5]], b[3] = 0, 0
    a, b = a / a.sum(), b / b.sum()
    reference = ot.emd2(a, b, cost)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log(0) or 0/0 warnings
        value, plan = wasserstein_primal(a, b, cost)
        dual, f, g = wasserstein_dual(a, b, cost)
        entropic = [sinkhorn(a, b, cost, 0.05, log_domain=log)[0] for log in (False, True)]
    keep_a, keep_b = a > 0, b > 0
    pot_entropic = float(ot.sinkhorn2(a[keep_a], b[keep_b], cost[keep_a][:, keep_b], 0.05, stopThr=1e-12))
    assert value == pytest.approx(reference, rel=1e-10) and dual == pytest.approx(reference, rel=1e-10)
    assert plan[[2, 5]].sum() == 0 and plan[:, 3].sum() == 0
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(g)) and (cost - f[:, None] - g[None]).min() > -1e-12
    assert entropic == pytest.approx([pot_entropic] * 2, rel=1e-8)


def test_marginal_operator_rank():
    for n, m in ((1, 1), (3, 4), (6, 5)):
        A = marginal_operator(n, m).toarray()
        assert A.shape == (n + m, n * m) and np.linalg.matrix_rank(A) == n + m - 1
        assert np.abs(np.r_[np.ones(n), -np.ones(m)] @ A).max() == 0  # the one dependency: rows sum = columns sum


def test_kantorovich_rubinstein_and_1d():
    x, y, a, b = problem(6, 5)
    value_kr, phi = kantorovich_rubinstein(np.r_[x, y], np.r_[a, np.zeros(5)], np.r_[np.zeros(6), b])
    assert value_kr == pytest.approx(wasserstein_primal(a, b, ot.dist(x, y, metric="euclidean"))[0], rel=1e-9)
    assert phi[-1] == 0
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


def test_sinkhorn_warns_when_unconverged():
    x, y, a, b = problem()
    cost = ot.dist(x, y, metric="euclidean")
    for log_domain in (False, True):
        with pytest.warns(RuntimeWarning, match="did not converge"):
            sinkhorn(a, b, cost, 0.05, max_iter=5, log_domain=log_domain)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sinkhorn(a, b, cost, 0.05, log_domain=log_domain)


@pytest.mark.parametrize("call, match", [
    (lambda a, b, c: wasserstein_primal(a, b[:-1], c), "`cost` has shape .* `a` and `b` have lengths 12 and 8"),
    (lambda a, b, c: wasserstein_primal(a, 2 * b, c), "same total mass"),
    (lambda a, b, c: wasserstein_primal(a, b * (1 + 1e-5), c), "same total mass"),
    (lambda a, b, c: wasserstein_dual(-a, b, c), "non-negative"),
    (lambda a, b, c: wasserstein_dual(0 * a, 0 * b, c), "positive total mass"),
    (lambda a, b, c: wasserstein_primal(a, b, np.where(c > 1, np.inf, c)), "finite"),
    (lambda a, b, c: sinkhorn(a, b, c, 0), "reg"),
    (lambda a, b, c: sinkhorn(0 * a, 0 * b, c, 1.0), "positive total mass"),
])
def test_bad_input(call, match):
    x, y, a, b = problem()
    with pytest.raises(ValueError, match=match):
        call(a, b, ot.dist(x, y))


def test_wasserstein_1d_refuses_what_it_would_compute_wrongly():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="1-D"):  # flattening would mix the columns POT keeps apart
        wasserstein_1d(rng.standard_normal((5, 2)), rng.standard_normal((5, 2)))
    with pytest.raises(ValueError, match="finite"):  # sum ** (1 / inf) would return 1
        wasserstein_1d([0.0, 1.0], [0.0, 5.0], np.inf)
    with pytest.raises(TypeError, match="`p`"):
        wasserstein_1d([0.0, 1.0], [0.0, 5.0], "2")
    with pytest.raises(ValueError, match="`a` must hold one mass per point"):
        kantorovich_rubinstein(np.zeros((3, 2)), [1.0, 0, 0, 0], [0, 0, 1.0])


def test_critic_and_generator_losses():
    real, fake = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0])
    assert critic_loss(real, fake).item() == pytest.approx(-1.5)  # E D(fake) - E D(real)
    assert generator_loss(fake).item() == pytest.approx(-0.5)


def test_gradient_penalty_is_exact_on_known_critics():
    linear = torch.nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[3.0, 4.0]]))  # |grad D| = 5 everywhere: penalty (5 - 1)^2
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    penalty = gradient_penalty(linear, real, fake)
    assert penalty.item() == pytest.approx(16.0, rel=1e-6)
    penalty.backward()  # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|: the penalty reaches the critic's weights
    assert torch.allclose(linear.weight.grad, torch.tensor([[4.8, 6.4]]), rtol=1e-5)

    class HalfSquare(torch.nn.Module):  # D(x) = |x|^2 / 2, grad D(x) = x: the penalty sees the interpolated points
        def forward(self, x):
            return 0.5 * (x ** 2).sum(dim=1)

    real, fake = torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    t = torch.rand((2, 1), generator=torch.Generator().manual_seed(3))
    expected = ((torch.linalg.vector_norm(t * real + (1 - t) * fake, dim=1) - 1) ** 2).mean()
    value = gradient_penalty(HalfSquare(), real, fake, generator=torch.Generator().manual_seed(3))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_wgan_pieces():
    critic = mlp_critic(2)
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    clip_weights_(critic, 0.01)
    assert all(p.abs().max() <= 0.01 for p in critic.parameters())
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(critic, real, fake[:8])
    sn = mlp_critic(2, spectral=True)
    sn(real)  # one forward pass in training mode runs the power iteration
    for layer in (m for m in sn if isinstance(m, torch.nn.Linear)):
        assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, rel=0.05)
    data = torch.randn(256, 2) * 0.1 + 1
    with pytest.raises(ValueError, match="`variant`"):
        train_wgan(data, "lsgan", 1)
    with pytest.raises(TypeError, match="`data`"):
        train_wgan(torch.ones(64, 2, dtype=torch.long), "gp", 1)
    with pytest.raises(ValueError, match="`data` must be finite"):
        train_wgan(data * float("nan"), "gp", 1)
    with pytest.raises(TypeError, match="`seed`"):
        train_wgan(data, "gp", 1, seed=1.5)


@pytest.mark.parametrize("variant", ["sn", "gp"])
def test_train_wgan_is_unaffected_by_evaluation_and_the_global_rng(variant):
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(0)) * 0.1 + 1
    probe = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))

    def scores(on_eval=None, eval_every=50):
        gen, critic = train_wgan(data, variant, 12, n_critic=2, batch_size=32, on_eval=on_eval, eval_every=eval_every)
        with torch.no_grad():
            return torch.cat([gen(probe).ravel(), critic(probe).ravel()])

    def evaluate(it, gen, critic):  # evaluates the critic many times, as the chapter's callback does
        for _ in range(3):
            critic(probe)
        torch.randn(5)  # and uses the global RNG

    torch.manual_seed(123)
    state = torch.get_rng_state()
    plain = scores()
    assert torch.equal(torch.get_rng_state(), state)  # train_wgan neither seeds nor advances the global RNG
    torch.manual_seed(7)
    assert torch.equal(scores(evaluate, eval_every=1), plain)


def test_critic_evaluation_does_not_advance_the_power_iteration():
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    buffers = []

    def record(it, gen, critic):
        before = [b.clone() for b in critic.buffers()]
        critic(data)
        buffers.append(all(torch.equal(x, y) for x, y in zip(before, critic.buffers())))

    _, critic = train_wgan(data, "sn", 3, n_critic=1, batch_size=16, on_eval=record, eval_every=1)
    assert buffers == [True, True, True] and not critic.training

"""kexue.landscape: probes along the gradient and the top Hessian eigenvalue (chapter 04)."""

import numpy as np
import pytest
import torch

from kexue.landscape import (hessian_eigenvalues, hessian_operator, hessian_vector_product, power_iteration_eigenvalue,
                             probe_gradient_direction, top_hessian_eigenvalue)


def quadratic(eigenvalues, seed=0):
    """0.5 x^T A x with A = Q diag(eigenvalues) Q^T, and its parameter."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), generator=g, dtype=torch.float64, requires_grad=True)
    return a, x, (lambda: 0.5 * x @ a @ x)


def test_top_eigenvalue_of_a_quadratic():
    a, x, loss = quadratic([0.5, 2.0, 7.0, 3.0])
    # float64 throughout: the estimate is exact to rounding (a norm taken in float32 left it ~1e-7 off)
    assert power_iteration_eigenvalue(loss, [x], iters=500, tol=1e-14) == pytest.approx(7.0, rel=1e-12)
    assert top_hessian_eigenvalue(loss, [x], tol=1e-10) == pytest.approx(7.0, rel=1e-8)
    v = torch.randn(4, dtype=torch.float64)
    assert torch.allclose(hessian_vector_product(loss, [x], [v])[0], a @ v)
    op = hessian_operator(loss, [x])
    assert np.allclose(op.matvec(v.numpy()), (a @ v).numpy())


def test_both_ends_of_an_indefinite_spectrum():
    """Power iteration returns the largest |lambda| (here negative); Lanczos returns both ends."""
    _, x, loss = quadratic([-9.0, -1.0, 0.5, 2.0, 4.0, 6.0], seed=3)
    assert power_iteration_eigenvalue(loss, [x], iters=2000, tol=1e-12) == pytest.approx(-9.0, rel=1e-6)
    low, high = hessian_eigenvalues(loss, [x], tol=1e-10)
    assert low == pytest.approx(-9.0, rel=1e-8) and high == pytest.approx(6.0, rel=1e-8)
    assert top_hessian_eigenvalue(loss, [x], tol=1e-10) == pytest.approx(6.0, rel=1e-8)
    low, high = hessian_eigenvalues(loss, [x], which="smallest", tol=1e-10)
    assert low == pytest.approx(-9.0, rel=1e-8) and np.isnan(high)


def test_power_iteration_with_few_steps_is_biased_low_and_lanczos_is_not():
    """Close top eigenvalues slow power iteration down: 30 products underestimate lambda_max."""
    eigenvalues = list(np.linspace(0.1, 9.5, 60)) + [10.0]
    _, x, loss = quadratic(eigenvalues, seed=1)
    few = power_iteration_eigenvalue(loss, [x], iters=30, tol=1e-3)
    assert few < 10.0 * (1 - 1e-3)
    assert top_hessian_eigenvalue(loss, [x], tol=1e-8) == pytest.approx(10.0, rel=1e-7)


def test_lanczos_agrees_with_the_dense_hessian_of_a_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    xb, yb = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    params = list(net.parameters())
    shapes = [p.shape for p in params]

    def loss_of_flat(flat):
        pieces = torch.split(flat, [int(np.prod(s)) for s in shapes])
        w1, b1, w2, b2 = (p.view(s) for p, s in zip(pieces, shapes))
        return torch.nn.functional.cross_entropy(torch.tanh(xb @ w1.T + b1) @ w2.T + b2, yb)

    flat0 = torch.cat([p.detach().flatten() for p in params])
    dense = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of_flat, flat0))
    low, high = hessian_eigenvalues(lambda: torch.nn.functional.cross_entropy(net(xb), yb), params, tol=1e-10)
    assert low == pytest.approx(dense[0].item(), rel=1e-6) and high == pytest.approx(dense[-1].item(), rel=1e-6)


def test_ends_near_zero_converge_to_tol_times_the_norm():
    """ARPACK's relative criterion stalls on eigenvalues near zero; the shifted solve does not."""
    _, x, loss = quadratic([-1e-7, 1e-6, 0.3, 0.5, 1.0, 2.0, 3.0] + [1e-8 * k for k in range(1, 40)], seed=2)
    low, high = hessian_eigenvalues(loss, [x], tol=1e-6, ncv=8)
    assert abs(low + 1e-7) < 1e-5 and high == pytest.approx(3.0, rel=1e-6)
    _, x, loss = quadratic([-4.0, -2.0, -1.0, 1e-9, 2e-9, 3e-9], seed=4)  # dominant end negative
    low, high = hessian_eigenvalues(loss, [x], tol=1e-8)
    assert low == pytest.approx(-4.0, rel=1e-8) and abs(high - 3e-9) < 1e-7
    assert hessian_eigenvalues(loss, [x], which="largest", tol=1e-8)[1] == pytest.approx(high, abs=1e-7)


def test_tiny_problems():
    _, x, loss = quadratic([3.0])
    assert hessian_eigenvalues(loss, [x]) == pytest.approx((3.0, 3.0))
    _, x, loss = quadratic([-1.0, 2.0])
    assert hessian_eigenvalues(loss, [x]) == pytest.approx((-1.0, 2.0))


def test_probe_on_a_quadratic_is_exact():
    a, x, loss = quadratic([1.0, 4.0])
    before = x.detach().clone()
    probe = probe_gradient_direction(loss, [x], [0.1, 0.2])
    g = (a @ before)
    for s, value, change in zip(probe.steps, probe.losses, probe.gradient_changes):
        moved = before - s * g
        assert value == pytest.approx(float(0.5 * moved @ a @ moved))
        assert change == pytest.approx(float((s * a @ g).norm()))
    assert torch.equal(x.detach(), before)  # parameters restored
    # On a quadratic the gradient change at step s is s A g, so every ratio of eq. probe is |A g| / |g|
    assert probe.gradient_norm == pytest.approx(float(g.norm()), rel=1e-14)
    assert probe.effective_smoothness == pytest.approx(float((a @ g).norm() / g.norm()), rel=1e-12)
    assert probe.max_gradient_change == pytest.approx(float((0.2 * a @ g).norm()), rel=1e-12)
    assert probe.loss_range == pytest.approx(abs(probe.losses[0] - probe.losses[1]))


def test_probe_of_a_quartic_takes_the_largest_ratio():
    """L(x) = x^4 / 4 in one dimension: the gradient x^3 is not linear, so the ratios of eq. probe differ by step."""
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    steps = [0.1, 0.2, 0.4]
    probe = probe_gradient_direction(lambda: (x ** 4).sum() / 4, [x], steps)
    changes = [abs((1 - s) ** 3 - 1) for s in steps]  # g = 1 at x = 1; the gradient at 1 - s is (1 - s)^3
    assert probe.gradient_changes == pytest.approx(changes, rel=1e-12)
    assert probe.effective_smoothness == pytest.approx(max(c / s for c, s in zip(changes, steps)), rel=1e-12)
    assert probe.max_gradient_change == pytest.approx(max(changes), rel=1e-12)
    assert probe.loss_range == pytest.approx(((1 - 0.1) ** 4 - (1 - 0.4) ** 4) / 4, rel=1e-12)  # over the probed s


def test_probe_keeps_float64_precision():
    """Losses, gradient changes and norms of a float64 model are not rounded to float32 on the way."""
    a, x, loss = quadratic([1.0, 1.0 + 1e-9, 3.0], seed=5)
    g = (a @ x.detach())
    probe = probe_gradient_direction(loss, [x], [1e-3, 2e-3])
    for s, value, change in zip(probe.steps, probe.losses, probe.gradient_changes):
        moved = x.detach() - s * g
        assert value == pytest.approx(float(0.5 * moved @ a @ moved), rel=1e-13)
        assert change == pytest.approx(float((s * a @ g).norm()), rel=1e-12)


def test_probe_of_a_float32_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    xb, yb = torch.randn(16, 4), torch.randint(0, 2, (16,))
    probe = probe_gradient_direction(lambda: torch.nn.functional.cross_entropy(net(xb), yb), list(net.parameters()),
                                     [0.1, 0.2])
    assert probe.losses.dtype == np.float64 and np.isfinite(probe.losses).all() and probe.gradient_norm > 0


def test_zero_hessian_and_unused_parameters():
    """A loss linear in its parameters has a zero Hessian (not an error); a parameter that the loss does not
    depend on at all is a mistake in `params`, reported by name."""
    lin = torch.nn.Linear(3, 1).double()
    xb = torch.randn(10, 3, dtype=torch.float64)
    linear_loss = lambda: lin(xb).mean()  # noqa: E731
    assert hessian_eigenvalues(linear_loss, list(lin.parameters())) == (0.0, 0.0)
    assert power_iteration_eigenvalue(linear_loss, list(lin.parameters())) == 0.0
    assert all((h == 0).all() for h in hessian_vector_product(linear_loss, list(lin.parameters()),
                                                              [torch.ones_like(p) for p in lin.parameters()]))
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"`params` at positions \[2\]"):
        hessian_eigenvalues(linear_loss, [*lin.parameters(), unused])
    with pytest.raises(ValueError, match="`params`"):
        probe_gradient_direction(linear_loss, [*lin.parameters(), unused], [0.1])


def test_bad_arguments():
    _, x, loss = quadratic([1.0, 2.0])
    with pytest.raises(ValueError, match="`steps`"):
        probe_gradient_direction(loss, [x], [0.0])
    with pytest.raises(ValueError, match="`params`"):
        top_hessian_eigenvalue(loss, [x.detach()])
    with pytest.raises(TypeError, match="`loss_fn`"):
        top_hessian_eigenvalue(1.0, [x])
    with pytest.raises(ValueError, match="`tol`"):
        power_iteration_eigenvalue(loss, [x], tol=0)
    with pytest.raises(ValueError, match="`tol`"):
        hessian_eigenvalues(loss, [x], tol=-1.0)
    with pytest.raises(ValueError, match="`which`"):
        hessian_eigenvalues(loss, [x], which="top")
    with pytest.raises(TypeError, match="`iters`"):
        power_iteration_eigenvalue(loss, [x], iters=2.5)
    with pytest.raises(ValueError, match="`tol`"):
        hessian_eigenvalues(loss, [x], tol=float("inf"))
    with pytest.raises(TypeError, match="`steps`"):
        probe_gradient_direction(loss, [x], "0.1")
    with pytest.raises(TypeError, match="`params`"):
        hessian_eigenvalues(loss, x)
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        hessian_eigenvalues(lambda: x * 2, [x])
    with pytest.raises(ValueError, match="`loss_fn` must return a loss that depends"):
        top_hessian_eigenvalue(lambda: x.detach().sum(), [x])
    assert np.isfinite(power_iteration_eigenvalue(loss, [x], iters=3))

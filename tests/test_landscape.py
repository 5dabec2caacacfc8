"""kexue.landscape: probes along the gradient and the top Hessian eigenvalue (chapter 04)."""

import numpy as np
import pytest
import torch

from kexue.landscape import hessian_vector_product, probe_gradient_direction, top_hessian_eigenvalue


def quadratic(eigenvalues, seed=0):
    """0.5 x^T A x with A = Q diag(eigenvalues) Q^T, and its parameter."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), generator=g, dtype=torch.float64, requires_grad=True)
    return a, x, (lambda: 0.5 * x @ a @ x)


def test_top_eigenvalue_of_a_quadratic():
    a, x, loss = quadratic([0.5, 2.0, 7.0, 3.0])
    assert top_hessian_eigenvalue(loss, [x], iters=500, tol=1e-10) == pytest.approx(7.0, rel=1e-6)
    v = torch.randn(4, dtype=torch.float64)
    assert torch.allclose(hessian_vector_product(loss, [x], [v])[0], a @ v)


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
    assert probe.effective_smoothness <= 4.0 + 1e-9
    assert probe.loss_range == pytest.approx(abs(probe.losses[0] - probe.losses[1]))


def test_bad_arguments():
    _, x, loss = quadratic([1.0, 2.0])
    with pytest.raises(ValueError, match="`steps`"):
        probe_gradient_direction(loss, [x], [0.0])
    with pytest.raises(ValueError, match="`params`"):
        top_hessian_eigenvalue(loss, [x.detach()])
    with pytest.raises(TypeError, match="`loss_fn`"):
        top_hessian_eigenvalue(1.0, [x])
    with pytest.raises(ValueError, match="`tol`"):
        top_hessian_eigenvalue(loss, [x], tol=0)
    assert np.isfinite(top_hessian_eigenvalue(loss, [x], iters=3))


def test_noisy_batchnorm_adds_noise_only_in_training():
    from kexue.torch import NoisyBatchNorm1d

    layer = NoisyBatchNorm1d(4, noise_std=0.5)
    x = torch.randn(64, 4)
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    with pytest.raises(ValueError, match="noise_std"):
        NoisyBatchNorm1d(4, noise_std=-1.0)


@pytest.mark.parametrize("variant", ["none", "BN", "BN before linear", "noisy BN", "LayerNorm", "none, careful init"])
def test_network_variants_build_and_run(variant):
    from kexue.torch import mlp_with_norm, vgg_with_norm

    mlp = mlp_with_norm(variant, 64)
    assert mlp(torch.randn(8, 64)).shape == (8, 10)
    cnn = vgg_with_norm(variant, channels=(8, 16))
    assert cnn(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    kinds = [type(m).__name__ for m in mlp]
    if variant == "BN before linear":
        assert kinds[:3] == ["BatchNorm1d", "Linear", "ReLU"]
    if variant == "BN":
        assert kinds[:3] == ["Linear", "BatchNorm1d", "ReLU"]


def test_unknown_variant():
    from kexue.torch import mlp_with_norm

    with pytest.raises(ValueError, match="`variant` must be one of"):
        mlp_with_norm("GroupNorm", 64)

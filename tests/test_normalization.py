"""kexue.torch.normalization: noisy BN and the network variants of chapter 04."""

import pytest
import torch
import torch.nn.functional as F

from kexue.torch import NORM_VARIANTS, NoisyBatchNorm1d, NoisyBatchNorm2d, mlp_with_norm, vgg_with_norm


def bn_output(layer, x):
    return F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)


def test_noise_only_in_training_and_eval_is_plain_bn():
    layer = NoisyBatchNorm1d(4)
    x = torch.randn(64, 4)
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    reference = torch.nn.BatchNorm1d(4)
    reference.load_state_dict(layer.state_dict())
    reference.eval()
    assert torch.equal(layer(x), reference(x))


def test_noise_is_drawn_per_sample():
    """Two identical samples in one batch get different noise (the noise is i.i.d. per sample and activation)."""
    torch.manual_seed(0)
    x = torch.randn(32, 5)
    x[1] = x[0]
    y = NoisyBatchNorm1d(5)(x)
    assert (y[0] - y[1]).abs().min() > 0
    y2 = NoisyBatchNorm2d(3)(torch.randn(8, 3, 4, 4).repeat(2, 1, 1, 1))
    assert not torch.allclose(y2[:8], y2[8:])


def test_step_distribution_has_bounded_positive_scale_and_shift():
    """With noise_std = 0 each unit is mapped by s y + m, with 1 <= s <= scale and |m| <= shift: never a sign flip."""
    torch.manual_seed(0)
    layer = NoisyBatchNorm1d(2000, shift=0.7, scale=1.8, noise_std=0.0)
    x = torch.randn(16, 2000)
    y, reference = layer(x), bn_output(layer, x)
    centred = reference - reference.mean(0)
    s = ((y - y.mean(0)) * centred).sum(0) / (centred ** 2).sum(0)  # least squares per unit
    m = y.mean(0) - s * reference.mean(0)
    assert torch.allclose(y, s * reference + m, atol=1e-4)
    assert s.min() >= 1 - 1e-4 and s.max() <= 1.8 + 1e-4 and m.abs().max() <= 0.7 + 1e-4
    assert s.max() > 1.7 and s.min() < 1.1 and m.max() > 0.6 and m.min() < -0.6  # the ranges are used
    y_next = layer(x)
    assert not torch.allclose(y_next.mean(0), y.mean(0))  # a new distribution at every call


def test_per_sample_noise_has_the_stated_spread():
    torch.manual_seed(0)
    layer = NoisyBatchNorm1d(50, shift=0.0, scale=1.0, noise_std=0.5)
    x = torch.randn(4000, 50)
    residual = layer(x) - bn_output(layer, x)
    assert residual.std().item() == pytest.approx(0.5, rel=0.02)
    assert residual.mean().abs().item() < 0.01


def test_bad_noise_arguments():
    with pytest.raises(ValueError, match="`noise_std`"):
        NoisyBatchNorm1d(4, noise_std=-1.0)
    with pytest.raises(ValueError, match="`scale`"):
        NoisyBatchNorm2d(4, scale=0.5)
    with pytest.raises(ValueError, match="`shift`"):
        NoisyBatchNorm1d(4, shift=-0.1)
    with pytest.raises(TypeError, match="`shift`"):
        NoisyBatchNorm1d(4, shift="1")
    with pytest.raises(ValueError, match="`shift`"):
        NoisyBatchNorm1d(4, shift=float("inf"))
    with pytest.raises(ValueError, match="`noise_std`"):
        NoisyBatchNorm2d(4, noise_std=float("nan"))


def test_a_bias_before_bn_gets_no_gradient():
    """Why the BN variants drop it: BN's centring cancels a bias, so its gradient is zero."""
    torch.manual_seed(0)
    linear, bn = torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)
    F.cross_entropy(bn(linear(torch.randn(32, 6))), torch.randint(0, 4, (32,))).backward()
    assert linear.bias.grad.abs().max() < 1e-6 < linear.weight.grad.abs().max()


@pytest.mark.parametrize("variant", NORM_VARIANTS)
def test_network_variants_build_and_run(variant):
    mlp = mlp_with_norm(variant, 64)
    assert mlp(torch.randn(8, 64)).shape == (8, 10)
    cnn = vgg_with_norm(variant, channels=(8, 16))
    assert cnn(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    kinds = [type(m).__name__ for m in mlp]
    weights = [m for m in [*mlp, *cnn] if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if variant == "BN before linear":
        assert kinds[:3] == ["BatchNorm1d", "Linear", "ReLU"]
        assert kinds[-2:] == ["BatchNorm1d", "Linear"]  # the classifier's input is normalised too
        assert [type(m).__name__ for m in cnn][-2:] == ["BatchNorm1d", "Linear"]
    if variant in ("BN", "noisy BN"):
        assert kinds[:3] == ["Linear", "BatchNorm1d" if variant == "BN" else "NoisyBatchNorm1d", "ReLU"]
        assert all(m.bias is None for m in list(mlp)[:-1] if isinstance(m, torch.nn.Linear))
        assert all(m.bias is None for m in cnn if isinstance(m, torch.nn.Conv2d))
    else:
        assert all(m.bias is not None for m in weights)


#: The layers of one hidden block, and of the head, in each variant (the chapter's list of variants).
BLOCKS = {
    "none": (["Linear", "ReLU"], ["Linear"]),
    "none, careful init": (["Linear", "ReLU"], ["Linear"]),
    "BN": (["Linear", "BatchNorm1d", "ReLU"], ["Linear"]),
    "noisy BN": (["Linear", "NoisyBatchNorm1d", "ReLU"], ["Linear"]),
    "LayerNorm": (["Linear", "LayerNorm", "ReLU"], ["Linear"]),
    "BN before linear": (["BatchNorm1d", "Linear", "ReLU"], ["BatchNorm1d", "Linear"]),
}


@pytest.mark.parametrize("variant", NORM_VARIANTS)
def test_each_variant_is_the_architecture_the_chapter_describes(variant):
    block, head = BLOCKS[variant]
    kinds = [type(m).__name__ for m in mlp_with_norm(variant, 64, depth=3)]
    assert kinds == block * 3 + head
    image_block = [{"Linear": "Conv2d", "BatchNorm1d": "BatchNorm2d", "NoisyBatchNorm1d": "NoisyBatchNorm2d",
                    "LayerNorm": "GroupNorm"}.get(k, k) for k in block]
    cnn = vgg_with_norm(variant, channels=(8, 16))
    expected = (image_block * 2 + ["MaxPool2d"]) * 2 + ["AdaptiveAvgPool2d", "Flatten"] + head
    assert [type(m).__name__ for m in cnn] == expected
    assert all(m.num_groups == 1 for m in cnn if isinstance(m, torch.nn.GroupNorm))  # LayerNorm over (C, H, W)


def test_careful_init_is_kaiming_for_relu_with_zero_biases():
    torch.manual_seed(0)
    mlp = mlp_with_norm("none, careful init", 256, width=512)
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    for m in linears[:-1]:
        assert m.weight.std().item() == pytest.approx((2 / m.in_features) ** 0.5, rel=0.02)
    assert all((m.bias == 0).all() for m in linears)
    default = [m for m in mlp_with_norm("none", 256, width=512) if isinstance(m, torch.nn.Linear)][0]
    assert default.weight.std().item() < 0.7 * (2 / 256) ** 0.5  # PyTorch's default is smaller: a real change


def test_unknown_variant():
    with pytest.raises(ValueError, match="`variant` must be one of"):
        mlp_with_norm("GroupNorm", 64)
    with pytest.raises(ValueError, match="`channels`"):
        vgg_with_norm("BN", channels=())

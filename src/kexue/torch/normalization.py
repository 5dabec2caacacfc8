"""Normalisation variants of one network, for chapter 04's experiments.

``NORM_VARIANTS`` names the variants; :func:`mlp_with_norm` (flat inputs) and :func:`vgg_with_norm`
(images, a small VGG-style CNN) build the same architecture in each of them. :class:`NoisyBatchNorm1d` and
:class:`NoisyBatchNorm2d` are the "noisy BN" of Santurkar et al. (2018): BN whose output distribution is
moved by noise that changes at every step.
"""

from __future__ import annotations


import torch
from torch import nn

from kexue._checks import finite_real, one_of, positive_int

NORM_VARIANTS = ("none", "BN", "BN before linear", "noisy BN", "LayerNorm", "none, careful init")


class _NoisyAfterNorm:
    """In training, after BN: y -> s_c y + m_c + e, with the unit's m_c ~ U(-shift, shift) and
    s_c ~ U(1, scale) drawn afresh at every call and e ~ N(0, noise_std^2) i.i.d. for every sample and activation."""

    shift: float
    scale: float
    noise_std: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # type: ignore[misc]
        if not self.training:  # type: ignore[attr-defined]
            return y
        shape = (1, y.shape[1]) + (1,) * (y.dim() - 2)
        mean = (2 * torch.rand(shape, dtype=y.dtype, device=y.device) - 1) * self.shift
        scale = 1 + (self.scale - 1) * torch.rand(shape, dtype=y.dtype, device=y.device)
        return y * scale + mean + self.noise_std * torch.randn_like(y)


def _noise(shift: float, scale: float, noise_std: float) -> tuple[float, float, float]:
    return (finite_real("shift", shift), finite_real("scale", scale, minimum=1.0),
            finite_real("noise_std", noise_std))


class NoisyBatchNorm1d(_NoisyAfterNorm, nn.BatchNorm1d):
    """BatchNorm1d followed, in training, by noise whose distribution changes at every step.

    Each unit c draws m_c ~ U(-shift, shift) and s_c ~ U(1, scale) at every call, and every activation of every
    sample gets y -> s_c y + m_c + e with i.i.d. e ~ N(0, noise_std^2): non-zero mean, non-unit variance, a new
    distribution every step (Santurkar et al. 2018, section 2.1; the exact law is ours). Evaluation mode is BN.
    """

    def __init__(self, num_features: int, shift: float = 1.0, scale: float = 2.0, noise_std: float = 0.5, **kwargs):
        super().__init__(num_features, **kwargs)
        self.shift, self.scale, self.noise_std = _noise(shift, scale, noise_std)


class NoisyBatchNorm2d(_NoisyAfterNorm, nn.BatchNorm2d):
    """BatchNorm2d followed by the noise of :class:`NoisyBatchNorm1d` (per channel m_c, s_c; e per element)."""

    def __init__(self, num_features: int, shift: float = 1.0, scale: float = 2.0, noise_std: float = 0.5, **kwargs):
        super().__init__(num_features, **kwargs)
        self.shift, self.scale, self.noise_std = _noise(shift, scale, noise_std)


def _block(variant: str, make_layer, n_in: int, n_out: int, two_d: bool) -> list[nn.Module]:
    # A bias right before BN is removed by BN's centring (its gradient is zero), so BN layers go without one.
    layer = make_layer(n_in, n_out, bias=variant not in ("BN", "noisy BN"))
    if variant == "none, careful init":
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    batch_norm = nn.BatchNorm2d if two_d else nn.BatchNorm1d
    if variant == "BN before linear":
        return [batch_norm(n_in), layer, nn.ReLU()]
    after = {
        "BN": [batch_norm(n_out)],
        "noisy BN": [(NoisyBatchNorm2d if two_d else NoisyBatchNorm1d)(n_out)],
        "LayerNorm": [nn.GroupNorm(1, n_out) if two_d else nn.LayerNorm(n_out)],
    }.get(variant, [])
    return [layer, *after, nn.ReLU()]


def _head(variant: str, n_in: int, classes: int) -> list[nn.Module]:
    """The classifier; with "BN before linear" its input is normalised too, like every other linear layer's."""
    head = nn.Linear(n_in, classes)
    if variant == "none, careful init":
        nn.init.zeros_(head.bias)
    return [nn.BatchNorm1d(n_in), head] if variant == "BN before linear" else [head]


def mlp_with_norm(variant: str, in_features: int, width: int = 128, depth: int = 3, classes: int = 10) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` ReLU units, normalised as ``variant`` (one of ``NORM_VARIANTS``)."""
    one_of("variant", variant, NORM_VARIANTS)
    widths = [positive_int("in_features", in_features)] + [positive_int("width", width)] * positive_int("depth", depth)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += _block(variant, nn.Linear, n_in, n_out, two_d=False)
    return nn.Sequential(*layers, *_head(variant, widths[-1], positive_int("classes", classes)))


def vgg_with_norm(variant: str, channels: tuple[int, ...] = (32, 64, 128), classes: int = 10) -> nn.Sequential:
    """A small VGG-style CNN for 3-channel images: per stage two 3x3 convolutions then 2x2 max-pooling."""
    one_of("variant", variant, NORM_VARIANTS)
    if isinstance(channels, (str, bytes)) or not isinstance(channels, (tuple, list)) or not channels:
        raise ValueError(f"`channels` must be a non-empty tuple of positive integers, got {channels!r}")
    conv = lambda n_in, n_out, bias: nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)  # noqa: E731
    layers: list[nn.Module] = []
    n_in = 3
    for n_out in channels:
        layers += _block(variant, conv, n_in, positive_int("channels", n_out), True)
        layers += _block(variant, conv, n_out, n_out, True)
        layers.append(nn.MaxPool2d(2))
        n_in = n_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *_head(variant, n_in, positive_int("classes", classes)))

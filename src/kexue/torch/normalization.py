"""Normalisation variants of one network, for chapter 04's experiments.

``NORM_VARIANTS`` names the variants; :func:`mlp_with_norm` (flat inputs) and :func:`vgg_with_norm`
(images, a small VGG-style CNN) build the same architecture in each of them.
"""

from __future__ import annotations

import torch
from torch import nn

from kexue._checks import one_of, positive_int

NORM_VARIANTS = ("none", "BN", "BN before linear", "noisy BN", "LayerNorm", "none, careful init")


class _NoisyAfterNorm:
    """In training, multiply each channel by 1 + s N(0, 1) and shift it by s N(0, 1), afresh at every call."""

    noise_std: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # type: ignore[misc]
        if not self.training or self.noise_std == 0:  # type: ignore[attr-defined]
            return y
        shape = (1, y.shape[1]) + (1,) * (y.dim() - 2)
        scale = 1 + self.noise_std * torch.randn(shape, dtype=y.dtype, device=y.device)
        shift = self.noise_std * torch.randn(shape, dtype=y.dtype, device=y.device)
        return y * scale + shift


def _noise(noise_std: float) -> float:
    if not noise_std >= 0:
        raise ValueError(f"`noise_std` must be >= 0, got {noise_std!r}")
    return float(noise_std)


class NoisyBatchNorm1d(_NoisyAfterNorm, nn.BatchNorm1d):
    """BatchNorm1d followed by random per-unit scale and shift noise in training: the "noisy BN" of
    Santurkar et al. (2018), whose output distribution shifts at every step."""

    def __init__(self, num_features: int, noise_std: float = 0.5, **kwargs):
        super().__init__(num_features, **kwargs)
        self.noise_std = _noise(noise_std)


class NoisyBatchNorm2d(_NoisyAfterNorm, nn.BatchNorm2d):
    """BatchNorm2d followed by random per-channel scale and shift noise in training."""

    def __init__(self, num_features: int, noise_std: float = 0.5, **kwargs):
        super().__init__(num_features, **kwargs)
        self.noise_std = _noise(noise_std)


def _block(variant: str, make_layer, n_in: int, n_out: int, two_d: bool) -> list[nn.Module]:
    layer = make_layer(n_in, n_out)
    if variant == "none, careful init":
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    batch_norm = nn.BatchNorm2d if two_d else nn.BatchNorm1d
    if variant == "BN before linear":
        return [batch_norm(n_in), layer, nn.ReLU()]
    after = {
        "BN": [batch_norm(n_out)],
        "noisy BN": [(NoisyBatchNorm2d if two_d else NoisyBatchNorm1d)(n_out, 0.5)],
        "LayerNorm": [nn.GroupNorm(1, n_out) if two_d else nn.LayerNorm(n_out)],
    }.get(variant, [])
    return [layer, *after, nn.ReLU()]


def mlp_with_norm(variant: str, in_features: int, width: int = 128, depth: int = 3, classes: int = 10) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` ReLU units, normalised as ``variant`` (one of ``NORM_VARIANTS``)."""
    one_of("variant", variant, NORM_VARIANTS)
    widths = [positive_int("in_features", in_features)] + [positive_int("width", width)] * positive_int("depth", depth)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += _block(variant, nn.Linear, n_in, n_out, two_d=False)
    return nn.Sequential(*layers, nn.Linear(widths[-1], positive_int("classes", classes)))


def vgg_with_norm(variant: str, channels: tuple[int, ...] = (32, 64, 128), classes: int = 10) -> nn.Sequential:
    """A small VGG-style CNN for 3-channel images: per stage two 3x3 convolutions then 2x2 max-pooling."""
    one_of("variant", variant, NORM_VARIANTS)
    conv = lambda n_in, n_out: nn.Conv2d(n_in, n_out, 3, padding=1)  # noqa: E731
    layers: list[nn.Module] = []
    n_in = 3
    for n_out in channels:
        layers += _block(variant, conv, n_in, positive_int("channels", n_out), True)
        layers += _block(variant, conv, n_out, n_out, True)
        layers.append(nn.MaxPool2d(2))
        n_in = n_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_in, positive_int("classes", classes)))

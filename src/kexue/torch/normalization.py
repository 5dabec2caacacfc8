"""Normalisation variants for chapter 04's experiments."""

from __future__ import annotations

import torch
from torch import nn


class NoisyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm followed, in training, by a random per-unit scale and shift drawn afresh at every step.

    The "noisy BN" of Santurkar et al. (2018): each unit's output is multiplied by 1 + s * N(0, 1) and shifted
    by s * N(0, 1), so the distribution seen by the next layer changes at every step (more internal covariate
    shift than without normalisation), while the layer's own landscape keeps BatchNorm's properties.
    """

    def __init__(self, num_features: int, noise_std: float = 0.5, **kwargs):
        super().__init__(num_features, **kwargs)
        if not noise_std >= 0:
            raise ValueError(f"`noise_std` must be >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.training or self.noise_std == 0:
            return y
        scale = 1 + self.noise_std * torch.randn(1, self.num_features, dtype=y.dtype, device=y.device)
        shift = self.noise_std * torch.randn(1, self.num_features, dtype=y.dtype, device=y.device)
        return y * scale + shift

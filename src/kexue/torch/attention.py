"""A single-head self-attention module that records its attention matrix (chapter 03's example layer)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kexue._checks import positive_int
from kexue.capture import record


class SelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(units)) V for inputs (batch, length, features), eq. attention.

    The attention matrix is marked with ``record(f"{name}/attention", ...)`` for :func:`kexue.torch.capture`.
    """

    def __init__(self, features: int, units: int, name: str = "attention"):
        super().__init__()
        self.units, self.name = positive_int("units", units), name
        features = positive_int("features", features)
        self.query, self.key, self.value = (nn.Linear(features, units, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"SelfAttention expects inputs (batch, length, features), got {tuple(x.shape)}")
        scores = self.query(x) @ self.key(x).transpose(1, 2) / math.sqrt(self.units)
        weights = record(f"{self.name}/attention", torch.softmax(scores, dim=-1))
        return weights @ self.value(x)

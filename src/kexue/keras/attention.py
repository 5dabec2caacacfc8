"""A single-head self-attention layer that records its attention matrix (chapter 03's example layer)."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from kexue._checks import positive_int
from kexue.capture import record


@keras.saving.register_keras_serializable(package="kexue")
class SelfAttention(keras.layers.Layer):
    """softmax(Q K^T / sqrt(units)) V for inputs (batch, length, features), eq. attention.

    The attention matrix (batch, length, length) is marked with ``record(f"{self.name}/attention", ...)``:
    :func:`kexue.keras.capture` returns it; everywhere else the call is plain attention.
    """

    def __init__(self, units: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.units = positive_int("units", units)

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"SelfAttention expects inputs (batch, length, features), got shape {input_shape}")
        features = input_shape[-1]
        self.query, self.key, self.value = (
            self.add_weight(shape=(features, self.units), initializer="glorot_uniform", name=name)
            for name in ("query", "key", "value"))

    def call(self, x: Any) -> Any:
        q, k, v = ops.matmul(x, self.query), ops.matmul(x, self.key), ops.matmul(x, self.value)
        scores = ops.matmul(q, ops.transpose(k, (0, 2, 1))) / math.sqrt(self.units)
        weights = record(f"{self.name}/attention", ops.softmax(scores, axis=-1))
        return ops.matmul(weights, v)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}

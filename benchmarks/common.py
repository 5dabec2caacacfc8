"""What the benchmarks share: the Keras workload (an MLP on random data, trained through model.fit)."""

from __future__ import annotations

from typing import Any


def keras_mlp_workload(optimizer: Any, n: int = 4096) -> tuple[Any, Any, Any]:
    """A compiled 256-512-512-10 Keras MLP with ``optimizer``, and ``n`` random examples (x, y) for it."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n, 256)).astype("float32"), rng.integers(0, 10, n)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, x, y

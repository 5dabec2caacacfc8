"""What the benchmarks share: the Keras workload (an MLP on random data, trained through model.fit) and a
peak-memory probe for CPU code (the CPU allocator has no peak counter, so it samples the resident set size)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss_growth() -> Iterator[dict[str, int]]:
    """``with peak_rss_growth() as m: ...`` sets ``m["peak"]``: the largest RSS growth (bytes) seen inside.

    A thread samples the RSS every 0.2 ms, so short spikes can be missed; run each contender in a fresh
    process so that memory freed to the allocator by an earlier one does not hide the growth.
    """
    base, samples, done, result = rss(), [], threading.Event(), {}

    def sample() -> None:
        while not done.is_set():
            samples.append(rss())
            time.sleep(2e-4)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["peak"] = max(samples + [rss()]) - base


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

"""One call that makes a notebook repeatable."""

from __future__ import annotations

import importlib.util
import random as _random
import sys

import numpy as np

from kexue._checks import positive_int


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy, torch (when installed) and Keras (when already imported); return ``seed``.

    Keras is seeded only if the caller has imported it, so that seeding never pays for importing
    TensorFlow. ``keras.utils.set_random_seed`` also seeds the active backend's generator.
    """
    seed = positive_int("seed", seed, minimum=0)
    _random.seed(seed)
    np.random.seed(seed % 2**32)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(seed % 2**32)
    return seed

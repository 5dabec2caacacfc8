"""Image data that ships inside scikit-learn: usable with no network, hence at quick scale."""

from __future__ import annotations

import numpy as np

from kexue._checks import positive_int
from kexue.data.common import Split


def digits() -> Split:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as floats in [0, 1], shape (n, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return Split(x=x, y=bunch.target.astype(np.int64), name="sklearn digits (8x8)")


def image_patches(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` random ``size`` x ``size`` RGB patches (floats in [0, 1]) of scikit-learn's two sample photos."""
    n = positive_int("n", n)
    size = positive_int("size", size, minimum=2)
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640x3 uint8 photos
    if size > min(min(p.shape[:2]) for p in photos):
        raise ValueError(f"`size` must be at most {min(min(p.shape[:2]) for p in photos)}, got {size}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - size + 1)
        left = rng.integers(photo.shape[1] - size + 1)
        out[i] = photo[top : top + size, left : left + size] / 255.0
    return out

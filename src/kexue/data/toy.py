"""Synthetic 2-D distributions for optimal transport, GANs and energy models."""

from __future__ import annotations

import numpy as np

from kexue._checks import one_of, positive_int

TOY_2D: tuple[str, ...] = ("gaussians8", "ring", "moons", "swissroll", "checkerboard")


def toy_2d(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples (float32, shape (n, 2)) from the named toy distribution, roughly within [-2, 2]^2.

    * ``gaussians8``: eight Gaussians (std 0.05) on the circle of radius 1.5;
    * ``ring``: a noisy circle of radius 1.5;
    * ``moons``: scikit-learn's two interleaved half moons;
    * ``swissroll``: scikit-learn's 2-D Swiss roll, rescaled;
    * ``checkerboard``: uniform on the black cells of a 4x4 board on [-2, 2]^2.
    """
    one_of("name", name, TOY_2D)
    n = positive_int("n", n)
    rng = np.random.default_rng(seed)
    if name == "gaussians8":
        angles = rng.integers(8, size=n) * (2 * np.pi / 8)
        centres = 1.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        points = centres + 0.05 * rng.standard_normal((n, 2))
    elif name == "ring":
        angles = rng.uniform(0, 2 * np.pi, size=n)
        radius = 1.5 + 0.05 * rng.standard_normal(n)
        points = radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif name == "moons":
        from sklearn.datasets import make_moons

        points, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
        points = (points - [0.5, 0.25]) * 1.5
    elif name == "swissroll":
        from sklearn.datasets import make_swiss_roll

        points3, _ = make_swiss_roll(n, noise=0.25, random_state=int(rng.integers(2**31)))
        points = points3[:, [0, 2]] / 7.5
    else:  # checkerboard
        column = rng.integers(4, size=n)
        row = 2 * rng.integers(2, size=n) + column % 2  # column + row is even: a black cell
        points = -2 + np.stack([column, row], axis=1) + rng.uniform(size=(n, 2))
    return points.astype(np.float32)

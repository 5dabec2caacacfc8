"""Lookahead's mathematics, framework-free (chapter 02): the update rule and the noisy-quadratic variance.

Reference: M. R. Zhang, J. Lucas, G. Hinton, J. Ba, "Lookahead Optimizer: k steps forward, 1 step back",
NeurIPS 2019; Su Jianlin, "Keras实现两个优化器:Lookahead和LazyOptimizer", 2019-07-30,
https://kexue.fm/archives/6869.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kexue._checks import fraction, positive_int


def lookahead_sgd_reference(
    theta0: np.ndarray,
    grad: Callable[[np.ndarray, int], np.ndarray],
    lr: float,
    steps: int,
    sync_period: int = 5,
    slow_step_size: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain NumPy Lookahead around SGD, eq. ``lookahead-rule``; returns the fast and slow weights.

    ``grad(theta, t)`` is the gradient at inner step ``t`` (0-based). The slow weights start as a copy of
    ``theta0``; after every ``sync_period``-th inner step, phi <- phi + alpha (theta - phi), theta <- phi.
    """
    sync_period = positive_int("sync_period", sync_period)
    alpha = fraction("slow_step_size", slow_step_size)
    steps = positive_int("steps", steps, minimum=0)
    theta = np.array(theta0, dtype=np.float64)
    phi = theta.copy()
    for t in range(steps):
        theta = theta - lr * grad(theta, t)
        if (t + 1) % sync_period == 0:
            phi = phi + alpha * (theta - phi)
            theta = phi.copy()
    return theta, phi


def sgd_steady_variance(lr: float, curvature: float, noise_variance: float) -> float:
    """Stationary variance of SGD on 0.5 a (x - c)^2, c ~ N(0, s^2): gamma^2 a^2 s^2 / (1 - (1 - gamma a)^2)."""
    beta = 1.0 - lr * curvature
    if not abs(beta) < 1:
        raise ValueError(f"SGD diverges: |1 - lr * curvature| = {abs(beta)} must be below 1")
    return lr**2 * curvature**2 * noise_variance / (1.0 - beta**2)


def lookahead_steady_variance(
    lr: float, curvature: float, noise_variance: float, sync_period: int, slow_step_size: float
) -> float:
    """Stationary variance of Lookahead's slow weights around SGD on the noisy quadratic, eq. ``la-variance``.

    With beta = 1 - lr * a and k = sync_period: V_LA = V_SGD * alpha (1 + beta^k) / (2 - alpha (1 - beta^k)).
    """
    k = positive_int("sync_period", sync_period)
    alpha = fraction("slow_step_size", slow_step_size)
    beta_k = (1.0 - lr * curvature) ** k
    return sgd_steady_variance(lr, curvature, noise_variance) * alpha * (1 + beta_k) / (2 - alpha * (1 - beta_k))

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


def lookahead_contraction(lr: float, curvature: float, sync_period: int, slow_step_size: float) -> float:
    """Factor by which Lookahead's mean shrinks per round of k inner SGD steps, eq. ``la-contraction``.

    On 0.5 a (x - c)^2 with beta = 1 - lr * a: 1 - alpha (1 - beta^k); SGD's own factor is beta^k
    (``slow_step_size=1``).
    """
    k = positive_int("sync_period", sync_period)
    alpha = fraction("slow_step_size", slow_step_size)
    return 1.0 - alpha * (1.0 - (1.0 - lr * curvature) ** k)


def _quadratic_arrays(
    curvatures: np.ndarray, noise_variances: np.ndarray, lr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = np.atleast_1d(np.asarray(curvatures, dtype=np.float64))
    s2 = np.broadcast_to(np.asarray(noise_variances, dtype=np.float64), h.shape)
    if h.ndim != 1 or not np.all(h > 0):
        raise ValueError("`curvatures` must be a 1-D array of positive numbers")
    if not np.all(s2 >= 0):
        raise ValueError("`noise_variances` must be non-negative")
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not lr > 0:
        raise ValueError(f"`lr` must be a positive number, got {lr!r}")
    beta = 1.0 - lr * h
    if not np.all(np.abs(beta) < 1):
        raise ValueError(f"SGD diverges: lr * max(curvature) = {lr * h.max()} must be below 2")
    return h, s2, beta


def noisy_quadratic_floor(
    curvatures: np.ndarray, noise_variances: np.ndarray, lr: float, sync_period: int = 1, slow_step_size: float = 1.0
) -> float:
    """Stationary expected excess loss sum_i 0.5 h_i Var(x_i) of Lookahead(SGD), eqs. ``la-variance``, ``nq-loss``.

    Each coordinate i is an independent noisy quadratic 0.5 h_i (x_i - c_i)^2, c_i ~ N(0, s_i^2), measured at
    synchronisation points; ``slow_step_size=1`` is SGD itself, whatever ``sync_period``.
    """
    h, s2, beta = _quadratic_arrays(curvatures, noise_variances, lr)
    k = positive_int("sync_period", sync_period)
    alpha = fraction("slow_step_size", slow_step_size)
    v_sgd = lr**2 * h**2 * s2 / (1 - beta**2)
    beta_k = beta**k
    return float(0.5 * np.sum(h * v_sgd * alpha * (1 + beta_k) / (2 - alpha * (1 - beta_k))))


def noisy_quadratic_loss_curve(
    curvatures: np.ndarray,
    noise_variances: np.ndarray,
    start: np.ndarray,
    lr: float,
    rounds: int,
    sync_period: int = 1,
    slow_step_size: float = 1.0,
) -> np.ndarray:
    """Expected excess loss sum_i 0.5 h_i (E[x_i]^2 + Var x_i) after each of ``rounds`` rounds, eq. ``nq-loss``.

    Per round the mean is multiplied by r = 1 - alpha (1 - beta^k) (eq. ``la-contraction``) and the variance
    becomes r^2 V + alpha^2 V_SGD (1 - beta^{2k}) (eq. ``inner-round``), from the deterministic point
    ``start``; in closed form E x_j = r^j x_0 and Var x_j = V_LA (1 - r^{2j}). Returns shape (rounds,); entry
    j is the loss after (j + 1) k inner steps. ``slow_step_size=1`` is SGD.
    """
    h, s2, beta = _quadratic_arrays(curvatures, noise_variances, lr)
    k = positive_int("sync_period", sync_period)
    alpha = fraction("slow_step_size", slow_step_size)
    rounds = positive_int("rounds", rounds)
    start = np.broadcast_to(np.asarray(start, dtype=np.float64), h.shape)
    beta_k = beta**k
    r2 = (1.0 - alpha * (1.0 - beta_k)) ** 2
    v_sgd = lr**2 * h**2 * s2 / (1 - beta**2)
    v_la = v_sgd * alpha * (1 + beta_k) / (2 - alpha * (1 - beta_k))
    decay = r2[None, :] ** np.arange(1, rounds + 1)[:, None]
    return 0.5 * (decay * start**2 + (1 - decay) * v_la) @ h

"""What dense Adam does to a row that gets no gradient (chapter 02, eqs. absent-drift and drift-limit).

Reference: Su Jianlin, "Keras实现两个优化器:Lookahead和LazyOptimizer", 2019-07-30,
https://kexue.fm/archives/6869; Adam as in D. P. Kingma and J. Ba, ICLR 2015 (torch.optim.Adam's form).
"""

from __future__ import annotations

import numpy as np

from kexue._checks import positive_int


def adam_absent_row_drift(
    m0: np.ndarray,
    v0: np.ndarray,
    last_step: int,
    steps: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> np.ndarray:
    """Displacement of a row after s = 1..``steps`` dense Adam steps with zero gradient, eq. ``absent-drift``.

    The row's moments were ``m0``, ``v0`` after step ``last_step`` (its last gradient). At step
    t = last_step + j its moments are beta1^j m0 and beta2^j v0 and torch.optim.Adam moves it by
    -lr (m_t / (1 - beta1^t)) / (sqrt(v_t) / sqrt(1 - beta2^t) + eps). Returns shape (steps, *m0.shape).
    """
    last_step = positive_int("last_step", last_step)
    steps = positive_int("steps", steps)
    beta1, beta2 = betas
    m0, v0 = np.asarray(m0, dtype=np.float64), np.asarray(v0, dtype=np.float64)
    moves = []
    for j in range(1, steps + 1):
        t = last_step + j
        m, v = beta1**j * m0, beta2**j * v0
        moves.append(-lr * (m / (1 - beta1**t)) / (np.sqrt(v) / np.sqrt(1 - beta2**t) + eps))
    return np.cumsum(moves, axis=0)


def drift_limit_factor(betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """rho / (1 - rho) with rho = beta1 / sqrt(beta2): the total drift in units of lr * m0 / sqrt(v0), eq. ``drift-limit``."""
    rho = betas[0] / np.sqrt(betas[1])
    if not 0 <= rho < 1:
        raise ValueError(f"beta1 / sqrt(beta2) must be in [0, 1) for the drift to stay finite, got {rho}")
    return float(rho / (1 - rho))

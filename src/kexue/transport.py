"""Discrete optimal transport: the Wasserstein distance as a linear program, its dual, and friends (chapter 05).

References: C. Villani, "Optimal Transport: Old and New" (2009); G. Peyré and M. Cuturi, "Computational Optimal
Transport" (2019); M. Cuturi, "Sinkhorn Distances", NeurIPS 2013; Su Jianlin, "从Wasserstein距离、对偶理论到WGAN",
2019-01-20, https://kexue.fm/archives/6280. Linear programs are solved by SciPy's HiGHS.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.special import logsumexp

#: Masses must agree to this relative tolerance: |sum a - sum b| <= MASS_RTOL * max(sum a, sum b).
MASS_RTOL = 1e-9


def check_problem(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate masses ``a`` (n,), ``b`` (m,) and ``cost`` (n, m); return them as float64 arrays."""
    a, b, cost = (np.asarray(v, dtype=np.float64) for v in (a, b, cost))
    if a.ndim != 1 or b.ndim != 1 or len(a) == 0 or len(b) == 0:
        raise ValueError(f"`a` and `b` must be non-empty 1-D mass vectors, got shapes {a.shape} and {b.shape}")
    if cost.shape != (len(a), len(b)):
        raise ValueError(f"`cost` must have shape ({len(a)}, {len(b)}), got {cost.shape}")
    for name, v in (("a", a), ("b", b)):
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"`{name}` must be finite and non-negative")
    if not np.all(np.isfinite(cost)):
        raise ValueError("`cost` must be finite")
    if abs(a.sum() - b.sum()) > MASS_RTOL * max(a.sum(), b.sum()):
        raise ValueError(f"`a` and `b` must have the same total mass (relative tolerance {MASS_RTOL}): "
                         f"{a.sum()!r} vs {b.sum()!r}")
    return a, b, cost


def _marginal_operator(n: int, m: int) -> sp.csr_matrix:
    """The (n + m) x (n m) matrix mapping a row-major plan P to its row sums and column sums."""
    rows = sp.kron(sp.eye(n), np.ones((1, m)))
    cols = sp.kron(np.ones((1, n)), sp.eye(m))
    return sp.vstack([rows, cols]).tocsr()


def wasserstein_primal(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[float, np.ndarray]:
    """min_P <P, C> subject to P 1 = a, P^T 1 = b, P >= 0 (eq. ``primal``); returns (value, plan)."""
    a, b, cost = check_problem(a, b, cost)
    n, m = cost.shape
    result = linprog(cost.ravel(), A_eq=_marginal_operator(n, m), b_eq=np.concatenate([a, b]),
                     bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the transport LP failed: {result.message}")
    return float(result.fun), result.x.reshape(n, m)


def wasserstein_dual(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """max_{f, g} <a, f> + <b, g> subject to f_i + g_j <= C_ij (eq. ``dual``); returns (value, f, g)."""
    a, b, cost = check_problem(a, b, cost)
    n, m = cost.shape
    result = linprog(-np.concatenate([a, b]), A_ub=_marginal_operator(n, m).T.tocsr(), b_ub=cost.ravel(),
                     bounds=(None, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the dual LP failed: {result.message}")
    return float(-result.fun), result.x[:n], result.x[n:]


def kantorovich_rubinstein(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """W1 for masses ``a`` and ``b`` on the same ``points`` as max <a - b, phi> over 1-Lipschitz phi (eq. ``kr``).

    The Lipschitz condition |phi_u - phi_v| <= |x_u - x_v| is imposed on every pair of points; returns
    (value, phi). Only sensible for a few hundred points: there are k (k - 1) constraints.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    a, b, _ = check_problem(a, b, dist)
    k = len(points)
    u, v = np.where(~np.eye(k, dtype=bool))
    constraints = sp.csr_matrix((np.r_[np.ones(len(u)), -np.ones(len(u))], (np.r_[np.arange(len(u)), np.arange(len(u))],
                                np.r_[u, v])), shape=(len(u), k))
    result = linprog(-(a - b), A_ub=constraints, b_ub=dist[u, v], bounds=(None, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the Kantorovich-Rubinstein LP failed: {result.message}")
    return float(-result.fun), result.x


def wasserstein_1d(x: np.ndarray, y: np.ndarray, p: float = 1) -> float:
    """W_p between the empirical distributions of samples ``x`` and ``y`` on the line, eq. ``quantiles``.

    W_p^p = int_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt, computed exactly on the merged grid of the two step quantile
    functions (sorting; any sample sizes).
    """
    x, y = np.sort(np.asarray(x, dtype=np.float64).ravel()), np.sort(np.asarray(y, dtype=np.float64).ravel())
    if len(x) == 0 or len(y) == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("`x` and `y` must be non-empty and finite")
    if not p >= 1:
        raise ValueError(f"`p` must be >= 1, got {p!r}")
    grid = np.union1d(np.arange(1, len(x) + 1) / len(x), np.arange(1, len(y) + 1) / len(y))
    widths = np.diff(np.r_[0.0, grid])
    mids = grid - widths / 2
    qx = x[np.minimum((mids * len(x)).astype(int), len(x) - 1)]
    qy = y[np.minimum((mids * len(y)).astype(int), len(y) - 1)]
    return float((widths * np.abs(qx - qy) ** p).sum() ** (1 / p))


def sinkhorn(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float, max_iter: int = 10_000,
             tol: float = 1e-9, log_domain: bool = False) -> tuple[float, np.ndarray]:
    """Entropic OT: min <P, C> - reg H(P) over the same plans (eq. ``entropic``); returns (<P, C>, P).

    Alternates u = a / (K v), v = b / (K^T u) with K = exp(-C / reg) until the row marginal is within ``tol``
    (L1, checked every 10 iterations; the columns are exact after each v update); ``log_domain=True`` runs the same
    iterations on log-potentials, which survives regularisations small enough to underflow K.
    """
    a, b, cost = check_problem(a, b, cost)
    if not reg > 0:
        raise ValueError(f"`reg` must be positive, got {reg!r}")
    if log_domain:
        f, g = np.zeros(len(a)), np.zeros(len(b))
        log_a, log_b = np.log(a), np.log(b)
        for i in range(max_iter):
            f = reg * (log_a - logsumexp((g[None] - cost) / reg, axis=1))
            g = reg * (log_b - logsumexp((f[:, None] - cost) / reg, axis=0))
            if i % 10 == 0:
                plan = np.exp((f[:, None] + g[None] - cost) / reg)
                if np.abs(plan.sum(1) - a).sum() < tol:  # columns are exact right after the g update
                    break
        plan = np.exp((f[:, None] + g[None] - cost) / reg)
        return float((plan * cost).sum()), plan
    kernel = np.exp(-cost / reg)
    u, v = np.ones(len(a)) / len(a), np.ones(len(b)) / len(b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(max_iter):
            u = a / (kernel @ v)
            v = b / (kernel.T @ u)
            if i % 10 == 0:
                if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
                    raise FloatingPointError("Sinkhorn scaling overflowed: use log_domain=True for this small `reg`")
                if np.abs(u * (kernel @ v) - a).sum() < tol:  # columns are exact after the v update
                    break
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        raise FloatingPointError("Sinkhorn scaling overflowed: use log_domain=True for this small `reg`")
    plan = u[:, None] * kernel * v[None]
    return float((plan * cost).sum()), plan

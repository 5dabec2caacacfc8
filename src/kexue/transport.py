"""Discrete optimal transport: the Wasserstein distance as a linear program, its dual, and friends (chapter 05).

References: C. Villani, "Optimal Transport: Old and New" (2009); G. Peyré and M. Cuturi, "Computational Optimal
Transport" (2019); M. Cuturi, "Sinkhorn Distances", NeurIPS 2013; Su Jianlin, "从Wasserstein距离、对偶理论到WGAN",
2019-01-20, https://kexue.fm/archives/6280. Linear programs are solved by SciPy's HiGHS (dual simplex, so the
answers are vertices of the feasible polytope), on a copy of the problem normalised to unit mass and unit largest
cost so that HiGHS's absolute tolerances (``LP_TOL``) mean the same at every scale.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.special import logsumexp

from kexue._checks import positive_int

#: Masses must agree to this relative tolerance, |sum a - sum b| <= MASS_RTOL * max(sum a, sum b), which accepts
#: masses normalised in float32 (as POT does, with an absolute 1e-6); ``b`` is then rescaled to ``a``'s mass.
MASS_RTOL = 1e-6

#: HiGHS's primal and dual feasibility tolerances (its smallest allowed values), on the normalised problem.
LP_TOL = 1e-10

_HIGHS = {"primal_feasibility_tolerance": LP_TOL, "dual_feasibility_tolerance": LP_TOL}


def check_problem(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate masses ``a`` (n,), ``b`` (m,) and ``cost`` (n, m) of eq. ``primal``; return float64 copies.

    ``b`` is returned rescaled to ``a``'s total mass (they may differ by ``MASS_RTOL`` relative), so that the
    marginal constraints of eq. ``standard-form`` are consistent.
    """
    a, b, cost = (np.array(v, dtype=np.float64) for v in (a, b, cost))
    if a.ndim != 1 or b.ndim != 1 or len(a) == 0 or len(b) == 0:
        raise ValueError(f"`a` and `b` must be non-empty 1-D mass vectors, got shapes {a.shape} and {b.shape}")
    if cost.shape != (len(a), len(b)):
        raise ValueError(f"`cost` has shape {cost.shape} but `a` and `b` have lengths {len(a)} and {len(b)}: "
                         f"expected ({len(a)}, {len(b)})")
    for name, v in (("a", a), ("b", b)):
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"`{name}` must be finite and non-negative")
        if not v.sum() > 0:
            raise ValueError(f"`{name}` must have a positive total mass, got {float(v.sum())!r}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("`cost` must be finite")
    if abs(a.sum() - b.sum()) > MASS_RTOL * max(a.sum(), b.sum()):
        raise ValueError(f"`a` and `b` must have the same total mass (relative tolerance {MASS_RTOL}): "
                         f"{float(a.sum())!r} vs {float(b.sum())!r}")
    return a, b * (a.sum() / b.sum()), cost


def marginal_operator(n: int, m: int) -> sp.csr_matrix:
    """The constraint matrix A of eq. ``standard-form``: (n + m) x (n m), mapping a row-major plan to its marginals.

    Row i < n sums row i of the plan, row n + j sums column j; its rank is n + m - 1 (the rows' sum equals the
    columns' sum).
    """
    n, m = positive_int("n", n), positive_int("m", m)
    rows = sp.kron(sp.eye(n), np.ones((1, m)))
    cols = sp.kron(np.ones((1, n)), sp.eye(m))
    return sp.vstack([rows, cols]).tocsr()


def _cost_scale(cost: np.ndarray) -> float:
    largest = float(np.abs(cost).max())
    return largest if largest > 0 else 1.0


def wasserstein_primal(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[float, np.ndarray]:
    """min_P <P, C> subject to P 1 = a, P^T 1 = b, P >= 0 (eq. ``primal``); returns (value, plan).

    Zero-mass bins are left out of the LP (their rows or columns of the plan are zero), and the last column
    constraint, implied by the others (eq. ``standard-form``), is dropped so that A has full row rank.
    """
    a, b, cost = check_problem(a, b, cost)
    mass, scale = a.sum(), _cost_scale(cost)
    rows, cols = np.flatnonzero(a), np.flatnonzero(b)
    sub = cost[np.ix_(rows, cols)] / scale
    result = linprog(sub.ravel(), A_eq=marginal_operator(len(rows), len(cols))[:-1],
                     b_eq=np.concatenate([a[rows], b[cols]])[:-1] / mass, bounds=(0, None), method="highs-ds",
                     options=_HIGHS)
    if result.status != 0:
        raise RuntimeError(f"the transport LP failed: {result.message}")
    plan = np.zeros(cost.shape)
    plan[np.ix_(rows, cols)] = result.x.reshape(len(rows), len(cols)) * mass
    return float(result.fun) * mass * scale, plan


def wasserstein_dual(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """max_{f, g} <a, f> + <b, g> subject to f_i + g_j <= C_ij (eq. ``dual``); returns (value, f, g).

    The potentials are defined up to f + t, g - t; the last ``g`` on the support of ``b`` is pinned to 0. On
    zero-mass bins, which the objective does not see, they are the c-transforms f_i = min_j (C_ij - g_j) and then
    g_j = min_i (C_ij - f_i): the largest feasible values.
    """
    a, b, cost = check_problem(a, b, cost)
    mass, scale = a.sum(), _cost_scale(cost)
    rows, cols = np.flatnonzero(a), np.flatnonzero(b)
    n, m = len(rows), len(cols)
    sub = cost[np.ix_(rows, cols)] / scale
    bounds = [(None, None)] * (n + m - 1) + [(0, 0)]
    result = linprog(-np.concatenate([a[rows], b[cols]]) / mass, A_ub=marginal_operator(n, m).T.tocsr(),
                     b_ub=sub.ravel(), bounds=bounds, method="highs-ds", options=_HIGHS)
    if result.status != 0:
        raise RuntimeError(f"the dual LP failed: {result.message}")
    f, g = np.full(len(a), np.inf), np.full(len(b), np.inf)
    f[rows], g[cols] = result.x[:n] * scale, result.x[n:] * scale
    zero_rows, zero_cols = np.flatnonzero(a == 0), np.flatnonzero(b == 0)
    f[zero_rows] = (cost[np.ix_(zero_rows, cols)] - g[cols]).min(axis=1)
    g[zero_cols] = (cost[:, zero_cols] - f[:, None]).min(axis=0)
    return float(-result.fun) * mass * scale, f, g


def kantorovich_rubinstein(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """W1 for masses ``a`` and ``b`` on the same ``points`` as max <a - b, phi> over 1-Lipschitz phi (eq. ``kr``).

    The Lipschitz condition |phi_u - phi_v| <= |x_u - x_v| is imposed on every pair of points, and phi's free
    constant is pinned by phi = 0 at the last point; returns (value, phi). Only sensible for a few hundred points:
    there are k (k - 1) constraints.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    if points.ndim != 2 or len(points) < 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"`points` must be a finite (k, dim) array with k >= 2, got shape {points.shape}")
    for name, v in (("a", a), ("b", b)):
        if np.ndim(v) != 1 or len(v) != len(points):
            raise ValueError(f"`{name}` must hold one mass per point ({len(points)}), got shape {np.shape(v)}")
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    a, b, _ = check_problem(a, b, dist)
    mass, scale = a.sum(), _cost_scale(dist)
    k = len(points)
    u, v = np.where(~np.eye(k, dtype=bool))
    index = np.arange(len(u))
    constraints = sp.csr_matrix((np.r_[np.ones(len(u)), -np.ones(len(u))], (np.r_[index, index], np.r_[u, v])),
                                shape=(len(u), k))
    result = linprog(-(a - b) / mass, A_ub=constraints, b_ub=dist[u, v] / scale,
                     bounds=[(None, None)] * (k - 1) + [(0, 0)], method="highs-ds", options=_HIGHS)
    if result.status != 0:
        raise RuntimeError(f"the Kantorovich-Rubinstein LP failed: {result.message}")
    return float(-result.fun) * mass * scale, result.x * scale


def wasserstein_1d(x: np.ndarray, y: np.ndarray, p: float = 1) -> float:
    """W_p between the empirical distributions of samples ``x`` and ``y`` on the line, eq. ``quantiles``.

    W_p^p = int_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt, computed exactly on the merged grid of the two step quantile
    functions (sorting; any sample sizes). ``x`` and ``y`` are 1-D: unlike POT's ``wasserstein_1d``, which treats
    the columns of a 2-D array as separate problems, a 2-D array is refused rather than flattened. ``p`` is a finite
    exponent >= 1.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"`x` and `y` must be 1-D samples, got shapes {x.shape} and {y.shape}")
    x, y = np.sort(x), np.sort(y)
    if len(x) == 0 or len(y) == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("`x` and `y` must be non-empty and finite")
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"`p` must be a real number, got {type(p).__name__}")
    if not (np.isfinite(p) and p >= 1):
        raise ValueError(f"`p` must be a finite number >= 1, got {p!r}")
    grid = np.union1d(np.arange(1, len(x) + 1) / len(x), np.arange(1, len(y) + 1) / len(y))
    widths = np.diff(np.r_[0.0, grid])
    mids = grid - widths / 2
    qx = x[np.minimum((mids * len(x)).astype(int), len(x) - 1)]
    qy = y[np.minimum((mids * len(y)).astype(int), len(y) - 1)]
    return float((widths * np.abs(qx - qy) ** p).sum() ** (1 / p))


def sinkhorn(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float, max_iter: int = 10_000,
             tol: float = 1e-9, log_domain: bool = False) -> tuple[float, np.ndarray]:
    """Entropic OT: min <P, C> - reg H(P) over the same plans (eq. ``entropic``); returns (<P, C>, P).

    Alternates u = a / (K v), v = b / (K^T u) with K = exp(-C / reg) until the row marginal is within
    ``tol`` times the total mass (L1, checked every 10 iterations; the columns are exact after each v update), and
    warns (``RuntimeWarning``) if ``max_iter`` iterations did not get there. ``log_domain=True`` runs the same
    iterations on log-potentials, which survives regularisations small enough to underflow K. Zero-mass bins get
    zero rows or columns of the plan and are left out of the iterations.
    """
    a, b, cost = check_problem(a, b, cost)
    if not reg > 0:
        raise ValueError(f"`reg` must be positive, got {reg!r}")
    max_iter = positive_int("max_iter", max_iter)
    if not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol!r}")
    rows, cols = np.flatnonzero(a), np.flatnonzero(b)
    a_s, b_s, c_s = a[rows], b[cols], cost[np.ix_(rows, cols)]
    threshold, error = tol * a.sum(), np.inf
    if log_domain:
        f, g = np.zeros(len(a_s)), np.zeros(len(b_s))
        log_a, log_b = np.log(a_s), np.log(b_s)
        for i in range(max_iter):
            f = reg * (log_a - logsumexp((g[None] - c_s) / reg, axis=1))
            g = reg * (log_b - logsumexp((f[:, None] - c_s) / reg, axis=0))
            if i % 10 == 0 or i == max_iter - 1:
                sub = np.exp((f[:, None] + g[None] - c_s) / reg)
                error = np.abs(sub.sum(1) - a_s).sum()  # columns are exact right after the g update
                if error < threshold:
                    break
        sub = np.exp((f[:, None] + g[None] - c_s) / reg)
    else:
        kernel = np.exp(-c_s / reg)
        u, v = np.ones(len(a_s)) / len(a_s), np.ones(len(b_s)) / len(b_s)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for i in range(max_iter):
                u = a_s / (kernel @ v)
                v = b_s / (kernel.T @ u)
                if i % 10 == 0 or i == max_iter - 1:
                    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
                        raise FloatingPointError("Sinkhorn scaling under- or overflowed (exp(-cost / reg) is too "
                                                 "small): use log_domain=True for this small `reg`")
                    error = np.abs(u * (kernel @ v) - a_s).sum()  # columns are exact after the v update
                    if error < threshold:
                        break
        sub = u[:, None] * kernel * v[None]
    if not error < threshold:
        warnings.warn(f"Sinkhorn did not converge in {max_iter} iterations: row-marginal error {error:.2e} > "
                      f"tol x mass = {threshold:.2e}; increase `max_iter` or `reg`", RuntimeWarning, stacklevel=2)
    plan = np.zeros(cost.shape)
    plan[np.ix_(rows, cols)] = sub
    return float((plan * cost).sum()), plan

"""Probing a loss landscape along the gradient, and its curvature (chapter 04).

After S. Santurkar, D. Tsipras, A. Ilyas, A. Madry, "How Does Batch Normalization Help Optimization?",
NeurIPS 2018; Su Jianlin, "BN究竟起了什么作用?一个闭门造车的分析", 2019-10-11, https://kexue.fm/archives/6992.
Works for any scalar ``loss_fn()`` (a closure over a model and a batch) and the tensors ``params`` it
depends on; the parameters are restored after every probe. Other side effects of ``loss_fn`` are not undone:
a model in training mode updates its BatchNorm running statistics at every evaluation, and dropout or noise
layers draw from the global random state. Probe a copy (``copy.deepcopy``) of a model that is still training.
Training and evaluation mode are different functions: in training mode BN normalises with the batch's
statistics (the landscape Santurkar et al. and chapter 04 measure), in evaluation mode with its running
statistics, an affine map whose Hessian is not the same.

The curvature is read off Hessian-vector products (the Hessian is never formed): by power iteration,
eq. ``power-iteration`` (:func:`power_iteration_eigenvalue`, the derivation), and by scipy's Lanczos solver
``eigsh`` on a :class:`scipy.sparse.linalg.LinearOperator` (:func:`hessian_eigenvalues`, what the chapter
measures with), which returns either end of the spectrum.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from kexue._checks import one_of, positive_int

LossFn = Callable[[], torch.Tensor]
WHICH = ("largest", "smallest", "both")


def _check(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if not callable(loss_fn):
        raise TypeError("`loss_fn` must be a callable that returns a scalar loss")
    if isinstance(params, torch.Tensor):
        raise TypeError("`params` must be a sequence of tensors (pass [tensor] for a single one)")
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError("`params` must be a non-empty list of tensors that require grad")
    return params


def _check_steps(steps: Sequence[float]) -> list[float]:
    try:
        if isinstance(steps, (str, bytes)):
            raise TypeError
        steps = [float(s) for s in steps]
    except (TypeError, ValueError):
        raise TypeError(f"`steps` must be a sequence of real step sizes, got {steps!r}") from None
    if not steps or not all(math.isfinite(s) and s > 0 for s in steps):
        raise ValueError(f"`steps` must be positive finite step sizes, got {steps}")
    return steps


def _check_tol(tol: float) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"`tol` must be a positive finite number, got {tol!r}")
    return float(tol)


def _loss(loss_fn: LossFn) -> torch.Tensor:
    loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}"
                         + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
    return loss.reshape(())


def _grad(loss: torch.Tensor, params: list[torch.Tensor], create_graph: bool = False) -> list[torch.Tensor]:
    """d loss / d params; a tensor the loss does not depend on at all is an error, not a silent zero."""
    if not loss.requires_grad:
        raise ValueError("`loss_fn` must return a loss that depends on `params`")
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    unused = [i for i, g in enumerate(grads) if g is None]
    if unused:
        raise ValueError(f"`params` at positions {unused} do not affect the loss")
    return list(grads)


def _second(dot: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> list[torch.Tensor]:
    """d dot / d params, where dot = <grad, v>: zero where the gradient does not depend on a parameter
    (a loss linear in it has a zero Hessian, not an error)."""
    if not dot.requires_grad:
        return [torch.zeros_like(p) for p in params]
    return list(torch.autograd.grad(dot, params, retain_graph=retain_graph, allow_unused=True,
                                    materialize_grads=True))


def gradient(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of ``loss_fn()`` with respect to ``params`` (detached)."""
    params = _check(loss_fn, params)
    return [g.detach() for g in _grad(_loss(loss_fn), params)]


@torch.no_grad()
def _shift(params: list[torch.Tensor], direction: list[torch.Tensor], scale: float) -> None:
    for p, d in zip(params, direction):
        p.add_(d, alpha=scale)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least single precision (half precision is widened; float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((_wide(t) ** 2).sum() for t in tensors))


@dataclass
class Probe:
    """Losses and gradient changes at ``theta - s * grad`` for each step size s, eq. ``probe``."""

    steps: np.ndarray
    losses: np.ndarray
    gradient_changes: np.ndarray
    gradient_norm: float

    @property
    def loss_range(self) -> float:
        """max - min of the loss along the path: how much the loss varies in the gradient's direction."""
        return float(self.losses.max() - self.losses.min())

    @property
    def max_gradient_change(self) -> float:
        """The largest ||grad(theta - s g) - grad(theta)|| along the path (gradient predictiveness)."""
        return float(self.gradient_changes.max())

    @property
    def effective_smoothness(self) -> float:
        """max_s ||grad(theta - s g) - grad(theta)|| / (s ||g||): the effective beta-smoothness, eq. ``probe``."""
        return float((self.gradient_changes / (self.steps * self.gradient_norm)).max())


def probe_gradient_direction(loss_fn: LossFn, params: Sequence[torch.Tensor], steps: Sequence[float]) -> Probe:
    """Move from the current parameters along the negative gradient by each step size; record losses and
    gradient changes (eq. ``probe``). The values stay on the parameters' device until the end of the probe."""
    params = _check(loss_fn, params)
    steps = _check_steps(steps)
    g0 = gradient(loss_fn, params)
    losses, changes = [], []
    for s in steps:
        _shift(params, g0, -s)
        try:
            with torch.enable_grad():
                loss = _loss(loss_fn)
                grads = _grad(loss, params)
            losses.append(_wide(loss.detach()))
            changes.append(_norm([g - h for g, h in zip(grads, g0)]))
        finally:
            _shift(params, g0, s)
    values = [_norm(g0), *losses, *changes]
    dtype = values[0].dtype
    for v in values[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    values = torch.stack([v.to(dtype) for v in values]).cpu().numpy().astype(np.float64)
    n = len(steps)
    return Probe(np.array(steps), values[1:1 + n], values[1 + n:], float(values[0]))


def hessian_vector_product(loss_fn: LossFn, params: Sequence[torch.Tensor],
                           vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the Hessian H of ``loss_fn()`` at ``params``, by differentiating <grad, v> once more
    (eq. ``power-iteration``, last part)."""
    params = _check(loss_fn, params)
    grads = _grad(_loss(loss_fn), params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector))
    return [h.detach() for h in _second(dot, params)]


def power_iteration_eigenvalue(loss_fn: LossFn, params: Sequence[torch.Tensor], iters: int = 100,
                               tol: float = 1e-6, generator: torch.Generator | None = None) -> float:
    """The Hessian eigenvalue of largest *magnitude* (with its sign) by power iteration, eq. ``power-iteration``.

    Iterates v <- H v / ||H v|| from a random start until the Rayleigh quotient v.Hv changes by less than
    ``tol`` (relative) or ``iters`` products have been taken (then it returns the last estimate). This is the
    derivation; the vector converges at the rate |lambda_2 / lambda_1| per product and the estimate at its
    square, so a small ``iters`` biases the estimate towards zero; when the most negative eigenvalue dominates it
    returns that one, and when lambda and -lambda tie for the largest magnitude it does not converge at all.
    :func:`hessian_eigenvalues` has none of these problems.
    """
    params = _check(loss_fn, params)
    iters = positive_int("iters", iters)
    tol = _check_tol(tol)
    v = [torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=generator) for p in params]
    norm = _norm(v)
    v = [x / norm for x in v]
    value = 0.0
    for i in range(iters):
        hv = hessian_vector_product(loss_fn, params, v)
        new = float(sum((a * b).sum() for a, b in zip(v, hv)))  # one host sync per product: the stopping rule
        norm = _norm(hv)
        if float(norm) == 0:
            return 0.0
        v = [x / norm for x in hv]
        if i > 0 and abs(new - value) <= tol * max(abs(new), 1e-12):
            return new
        value = new
    return value


def hessian_operator(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> LinearOperator:
    """The Hessian of ``loss_fn()`` at ``params`` as a symmetric scipy ``LinearOperator`` (float64 on the host).

    ``loss_fn`` is evaluated once; every product differentiates the same graph again, so a loss with its own
    randomness (noisy BN) keeps the draw it made at that one evaluation.
    """
    params = _check(loss_fn, params)
    grads = _grad(_loss(loss_fn), params, create_graph=True)
    sizes = [p.numel() for p in params]
    n = sum(sizes)

    def matvec(x: np.ndarray) -> np.ndarray:
        flat = torch.as_tensor(np.ravel(x), dtype=params[0].dtype).to(params[0].device)
        pieces = torch.split(flat, sizes)
        dot = sum((g * v.view_as(g).to(g.dtype)).sum() for g, v in zip(grads, pieces))
        hv = _second(dot, params, retain_graph=True)
        return torch.cat([h.reshape(-1).double() for h in hv]).cpu().numpy()

    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def hessian_eigenvalues(loss_fn: LossFn, params: Sequence[torch.Tensor], which: str = "both", tol: float = 1e-4,
                        seed: int = 0, ncv: int | None = None) -> tuple[float, float]:
    """The smallest and largest Hessian eigenvalues (lambda_min, lambda_max) of ``loss_fn()`` at ``params``.

    scipy's implicitly restarted Lanczos solver (``eigsh``, ARPACK) on :func:`hessian_operator`, started from a
    fixed random vector (``seed``). It finds lambda_max as the top eigenvalue of H, then lambda_min as
    c - (the top eigenvalue of c I - H) with c = max(lambda_max, 0): the shifted spectrum is >= 0 (up to the
    accuracy of lambda_max) and its top is c - lambda_min, so lambda_min is accurate to about
    ``tol * (c - lambda_min)`` even when it is close to zero (ARPACK's own criterion is relative to each
    eigenvalue, and stalls on eigenvalues near zero). ``ncv`` is the number of Lanczos vectors (scipy's default, at least 20, when None). ``which="largest"`` or ``"smallest"`` returns NaN
    for the other end. The step-size limit of eq. ``descent-lemma`` is set by ``max(|lambda_min|, |lambda_max|)``.
    """
    params = _check(loss_fn, params)
    one_of("which", which, WHICH)
    tol = _check_tol(tol)
    seed = positive_int("seed", seed, minimum=0)
    if ncv is not None:
        ncv = positive_int("ncv", ncv, minimum=3)
    op = hessian_operator(loss_fn, params)
    n = op.shape[0]
    if n <= 2:  # ARPACK needs k < n: a problem this small is solved densely
        values = np.linalg.eigvalsh(np.column_stack([op.matvec(e) for e in np.eye(n)]))
        low, high = float(values[0]), float(values[-1])
    else:
        v0 = np.random.default_rng(seed).standard_normal(n)
        if not np.any(op.matvec(v0)):  # H v0 = 0 for a random v0: H = 0 (almost surely), which ARPACK rejects
            return (0.0 if which != "largest" else math.nan), (0.0 if which != "smallest" else math.nan)
        ncv = None if ncv is None else min(ncv, n)

        def top(operator: LinearOperator, mode: str) -> float:
            return float(eigsh(operator, k=1, which=mode, tol=tol, v0=v0, ncv=ncv, return_eigenvectors=False)[0])

        high = top(op, "LA")
        low = math.nan
        if which != "largest":  # lambda_min = c - lambda_max(c I - H) with c = max(lambda_max, 0)
            c = max(high, 0.0)
            flipped = LinearOperator((n, n), matvec=lambda v: c * np.ravel(v) - op.matvec(v), dtype=np.float64)
            low = c - top(flipped, "LA")
    return (low if which != "largest" else math.nan), (high if which != "smallest" else math.nan)


def top_hessian_eigenvalue(loss_fn: LossFn, params: Sequence[torch.Tensor], tol: float = 1e-4, seed: int = 0) -> float:
    """The largest (algebraic) Hessian eigenvalue lambda_max, by Lanczos (:func:`hessian_eigenvalues`)."""
    return hessian_eigenvalues(loss_fn, params, which="largest", tol=tol, seed=seed)[1]

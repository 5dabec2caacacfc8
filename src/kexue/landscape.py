"""Probing a loss landscape along the gradient, and its curvature (chapter 04).

After S. Santurkar, D. Tsipras, A. Ilyas, A. Madry, "How Does Batch Normalization Help Optimization?",
NeurIPS 2018; Su Jianlin, "BN究竟起了什么作用?一个闭门造车的分析", 2019-10-11, https://kexue.fm/archives/6992.
Works for any scalar ``loss_fn()`` (a closure over a model and a batch) and the tensors ``params`` it
depends on; the parameters are restored after every probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kexue._checks import positive_int

LossFn = Callable[[], torch.Tensor]


def _check(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if not callable(loss_fn):
        raise TypeError("`loss_fn` must be a callable that returns a scalar loss")
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError("`params` must be a non-empty list of tensors that require grad")
    return params


def _check_steps(steps: Sequence[float]) -> list[float]:
    steps = [float(s) for s in steps]
    if not steps or not all(math.isfinite(s) and s > 0 for s in steps):
        raise ValueError(f"`steps` must be positive finite step sizes, got {steps}")
    return steps


def gradient(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of ``loss_fn()`` with respect to ``params`` (detached)."""
    params = _check(loss_fn, params)
    return [g.detach() for g in torch.autograd.grad(loss_fn(), params)]


@torch.no_grad()
def _shift(params: list[torch.Tensor], direction: list[torch.Tensor], scale: float) -> None:
    for p, d in zip(params, direction):
        p.add_(d, alpha=scale)


@dataclass
class Probe:
    """Losses and gradient changes at ``theta - s * grad`` for each step size s, eqs. ``loss-range`` and ``beta-eff``."""

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
        """max_s ||grad(theta - s g) - grad(theta)|| / (s ||g||): the effective beta-smoothness."""
        return float((self.gradient_changes / (self.steps * self.gradient_norm)).max())


def probe_gradient_direction(loss_fn: LossFn, params: Sequence[torch.Tensor], steps: Sequence[float]) -> Probe:
    """Move from the current parameters along the negative gradient by each step size; record losses and gradients."""
    params = _check(loss_fn, params)
    steps = _check_steps(steps)
    g0 = gradient(loss_fn, params)
    norm = math.sqrt(sum(float((g * g).sum()) for g in g0))
    losses, changes = [], []
    for s in steps:
        _shift(params, g0, -s)
        try:
            with torch.enable_grad():
                loss = loss_fn()
                grads = torch.autograd.grad(loss, params)
            losses.append(float(loss.detach()))
            changes.append(math.sqrt(sum(float(((g - h) ** 2).sum()) for g, h in zip(grads, g0))))
        finally:
            _shift(params, g0, s)
    return Probe(np.array(steps), np.array(losses), np.array(changes), norm)


def hessian_vector_product(loss_fn: LossFn, params: Sequence[torch.Tensor],
                           vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the Hessian H of ``loss_fn()`` at ``params``, by differentiating <grad, v> once more."""
    params = _check(loss_fn, params)
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector))
    return [h.detach() for h in torch.autograd.grad(dot, params)]


def top_hessian_eigenvalue(loss_fn: LossFn, params: Sequence[torch.Tensor], iters: int = 100, tol: float = 1e-6,
                           generator: torch.Generator | None = None) -> float:
    """The largest-magnitude Hessian eigenvalue of ``loss_fn()`` w.r.t. ``params``, by power iteration, eq. ``power-iteration``.

    Iterates v <- H v / ||H v|| from a random start until the Rayleigh quotient v.Hv changes by less than
    ``tol`` (relative) or ``iters`` products have been taken. For the curvature that limits gradient descent
    this is the top eigenvalue lambda_max (it dominates in magnitude near a minimum).
    """
    params = _check(loss_fn, params)
    iters = positive_int("iters", iters)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"`tol` must be a positive number, got {tol!r}")
    v = [torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=generator) for p in params]
    norm = math.sqrt(sum(float((x * x).sum()) for x in v))
    v = [x / norm for x in v]
    value = 0.0
    for i in range(iters):
        hv = hessian_vector_product(loss_fn, params, v)
        new = float(sum((a * b).sum() for a, b in zip(v, hv)))
        norm = math.sqrt(sum(float((x * x).sum()) for x in hv))
        if norm == 0:
            return 0.0
        v = [x / norm for x in hv]
        if i > 0 and abs(new - value) <= tol * max(abs(new), 1e-12):
            return new
        value = new
    return value

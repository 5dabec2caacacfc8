"""Lazy Adam: rows without a gradient keep their weights and moments (chapter 02, eq. sparse-rule).

Reference: Su Jianlin, "Keras实现两个优化器:Lookahead和LazyOptimizer", 2019-07-30,
https://kexue.fm/archives/6869; the rule is that of ``torch.optim.SparseAdam``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from kexue._checks import fraction


def _touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, gradient rows) of the rows that received a gradient, for sparse or dense ``grad``."""
    if grad.is_sparse:
        grad = grad.coalesce()  # the update is non-linear in the gradient: duplicate indices must be summed
        if grad.sparse_dim() != 1:
            raise ValueError("LazyAdam takes sparse gradients indexed by their first dimension only")
        return grad.indices()[0], grad.values()
    rows = grad.reshape(grad.shape[0], -1).ne(0).any(dim=1).nonzero().squeeze(1) if grad.dim() else None
    if rows is None:  # a scalar parameter is one row
        return torch.zeros(1, dtype=torch.long, device=grad.device), grad.reshape(1)
    return rows, grad.index_select(0, rows)


class LazyAdam(torch.optim.Optimizer):
    """Adam that updates only the rows of a parameter that received a gradient, eq. ``sparse-rule``.

    A row is a slice along the first dimension (a token's embedding). Rows absent from the gradient
    keep their weights *and* moments; the step count, and with it the bias correction, is the
    parameter's. On sparse gradients (``nn.Embedding(sparse=True)``) the cost is proportional to the
    touched rows and the result is that of ``torch.optim.SparseAdam``. Dense gradients are accepted too,
    and then *every* all-zero gradient row counts as absent: besides the rows of tokens missing from the
    batch, that is a row whose gradient is zero for another reason (the ``padding_idx`` row, the incoming
    weights of a dead ReLU unit in a ``Linear`` layer's weight, a row the loss ignores). Such rows keep
    weights and moments, where dense Adam would keep coasting them; give LazyAdam only the embedding
    tables you want treated lazily.

    Parameters must be real (floating point) and dense (strided) tensors: a sparse parameter or a
    complex one raises ``ValueError`` when it is added (at construction or by ``add_param_group``).

    Args:
        params: parameters or parameter groups.
        lr: learning rate, > 0.
        betas: (beta1, beta2), each in [0, 1).
        eps: added to the root of the second moment, > 0.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"`lr` must be a positive number, got {lr!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"`betas` must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if fraction(f"betas[{i}]", beta, allow_zero=True) == 1.0:
                raise ValueError(f"`betas[{i}]` must be below 1, got {beta}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"`eps` must be a positive number, got {eps!r}")
        super().__init__(params, {"lr": float(lr), "betas": tuple(float(b) for b in betas), "eps": float(eps)})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        for i, p in enumerate([params] if isinstance(params, torch.Tensor) else list(params)):
            if isinstance(p, torch.Tensor) and p.layout != torch.strided:
                raise ValueError(f"`params`[{i}] has layout {p.layout}: LazyAdam updates dense (strided) parameters "
                                 "(sparse *gradients* of a dense parameter are fine, e.g. nn.Embedding(sparse=True))")
            if isinstance(p, torch.Tensor) and not p.is_floating_point():
                raise ValueError(f"`params`[{i}] has dtype {p.dtype}: LazyAdam updates real floating-point "
                                 "parameters only (for a complex one, optimise torch.view_as_real of it)")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                rows, g = _touched_rows(p.grad)
                if rows.numel() == 0:
                    continue
                shape = (p.shape[0], -1) if p.dim() else (1, 1)
                m, v, w = state["exp_avg"].view(shape), state["exp_avg_sq"].view(shape), p.view(shape)
                g = g.reshape(len(rows), -1)
                # eq. (sparse-rule), in the same floating-point order as torch.optim.SparseAdam:
                # m += (1 - b1)(g - m), v += (1 - b2)(g^2 - v) on the touched rows only.
                m_old, v_old = m.index_select(0, rows), v.index_select(0, rows)
                m_step = (g - m_old).mul_(1 - beta1)
                v_step = (g.pow(2) - v_old).mul_(1 - beta2)
                m.index_add_(0, rows, m_step)
                v.index_add_(0, rows, v_step)
                numer = m_step.add_(m_old)
                denom = v_step.add_(v_old).sqrt_().add_(group["eps"])
                t = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                w.index_add_(0, rows, numer.div_(denom).mul_(-step_size))
        return loss

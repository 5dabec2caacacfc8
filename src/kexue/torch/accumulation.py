"""Gradient accumulation as a ``torch.optim.Optimizer`` wrapper (chapter 01, eq. accumulated-update).

Reference: Su Jianlin, "用时间换取效果:Keras梯度累积优化器", 2019-07-08, https://kexue.fm/archives/6794.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kexue._checks import positive_int


class GradientAccumulation(torch.optim.Optimizer):
    """Make any torch optimizer update once every ``steps`` micro-batches, with their mean gradient.

    The training loop stays the plain one, called once per micro-batch::

        opt = GradientAccumulation(torch.optim.Adam(model.parameters(), 1e-3), steps=4)
        for x, y in loader:                      # micro-batches of 8
            loss_fn(model(x), y).backward()
            opt.step()                           # updates on every 4th call, as with batches of 32
            opt.zero_grad()

    No gradient buffer is added: autograd already *sums* into ``p.grad`` when it is not cleared,
    so :meth:`zero_grad` clears only at update boundaries and :meth:`step` divides the sum by
    ``steps`` (eq. ``mean-of-means``) before calling the inner optimizer. Call this wrapper's
    ``zero_grad`` (not ``model.zero_grad()``, which would discard the partial sum).

    Args:
        optimizer: the ``torch.optim.Optimizer`` to wrap; this wrapper shares its ``param_groups``
            and ``state``, so learning-rate schedulers may be attached to either.
        steps: micro-batches per update, an integer >= 1.

    ``state_dict()`` holds the inner optimizer's state, ``steps`` and the position inside the
    current accumulation cycle. The partial gradient sum lives in ``p.grad`` and is not saved.

    Limitations: every micro-batch must have the same size for the mean to be the batch mean (else
    scale micro-batch k's loss by ``n * m_k / b``, chapter 01 eq. ``unequal-sizes``); with
    ``torch.amp.GradScaler``, whose ``step``/``update`` must run once per update, write the loop by hand.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, GradientAccumulation):
            raise ValueError("`optimizer` already accumulates gradients; wrap the inner optimizer once")
        self.steps = positive_int("steps", steps)
        self.optimizer = optimizer
        self.micro_step = 0  # micro-batches received since the last update
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self._share_inner()

    def _share_inner(self) -> None:
        # The inner optimizer owns the hyper-parameters and the state; this wrapper only looks at them.
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Record one micro-batch; on every ``steps``-th call apply the mean gradient with the inner optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.micro_step += 1
        if self.micro_step == self.steps:
            # eq. (accumulated-update): p.grad holds g_1 + ... + g_n; the inner optimizer gets the mean.
            if self.steps > 1:
                grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
                if grads:
                    torch._foreach_div_(grads, self.steps)
            self.optimizer.step()
            self.micro_step = 0
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients only at an update boundary; in between, autograd keeps summing into them."""
        if self.micro_step == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Called by the base constructor with the inner optimizer's own groups: nothing to add then.
        if any(param_group is g for g in self.optimizer.param_groups):
            return
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "micro_step": self.micro_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        missing = {"optimizer", "steps", "micro_step"} - set(state_dict)
        if missing:
            raise ValueError(f"`state_dict` is not a GradientAccumulation state: missing {sorted(missing)}")
        if state_dict["steps"] != self.steps:
            raise ValueError(f"`state_dict` was saved with steps={state_dict['steps']}, this wrapper has {self.steps}")
        micro_step = positive_int("state_dict['micro_step']", state_dict["micro_step"], minimum=0)
        if micro_step >= self.steps:
            raise ValueError(f"`state_dict['micro_step']` must be below steps={self.steps}, got {micro_step}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.micro_step = micro_step
        self._share_inner()  # load_state_dict replaced the inner optimizer's param_groups list

    def __repr__(self) -> str:
        return f"GradientAccumulation(steps={self.steps}, optimizer={self.optimizer!r})"

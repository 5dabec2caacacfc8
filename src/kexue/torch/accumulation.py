"""Gradient accumulation as a ``torch.optim.Optimizer`` wrapper (chapter 01, eq. accumulated-update).

Reference: Su Jianlin, "用时间换取效果:Keras梯度累积优化器", 2019-07-08, https://kexue.fm/archives/6794.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kexue._checks import positive_int
from kexue.torch.wrapper import OptimizerWrapper


class GradientAccumulation(OptimizerWrapper):
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

    _state_keys = ("steps", "micro_step")
    _repr_keys = ("steps",)

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int):
        self.steps = positive_int("steps", steps)
        self.micro_step = 0  # micro-batches received since the last update
        super().__init__(optimizer)

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

    def _wrapper_state(self) -> dict[str, int]:
        return {"steps": self.steps, "micro_step": self.micro_step}

    def _load_wrapper_state(self, state: dict) -> None:
        if state["steps"] != self.steps:
            raise ValueError(f"`state_dict` was saved with steps={state['steps']}, this wrapper has {self.steps}")
        micro_step = positive_int("state_dict['micro_step']", state["micro_step"], minimum=0)
        if micro_step >= self.steps:
            raise ValueError(f"`state_dict['micro_step']` must be below steps={self.steps}, got {micro_step}")
        self.micro_step = micro_step

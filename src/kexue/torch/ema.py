"""Exponential moving average of a PyTorch model's parameters (chapter 03, eq. ema-closed-form).

``shadow_1 = w_1``, ``shadow_t = beta * shadow_{t-1} + (1 - beta) * w_t`` after every optimizer step (call
``update()``), the rule of ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(beta)``, but
without a second copy of the module: ``with ema.swapped():`` puts the averages into the model and restores
the raw parameters bit for bit on exit. Buffers (BatchNorm's running statistics) are not averaged, as in
``AveragedModel(use_buffers=False)``, its default.

Example::

    ema = ExponentialMovingAverage(model, momentum=0.999)
    for x, y in loader:
        loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad(); ema.update()
    with ema.swapped():
        evaluate(model)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kexue._checks import fraction


class ExponentialMovingAverage:
    """Shadow copies of ``model``'s trainable parameters, updated by ``update()``, swapped in by ``swapped()``.

    Args:
        model: the module whose parameters (those with ``requires_grad``) to average.
        momentum: beta in [0, 1).
    """

    def __init__(self, model: nn.Module, momentum: float = 0.999):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
        self.momentum = fraction("momentum", momentum, allow_zero=True)
        if self.momentum == 1:
            raise ValueError("`momentum` must be < 1: with momentum 1 the average never moves")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average; the first copies the parameters."""
        if self.updates == 0:
            torch._foreach_copy_(self.shadow, [p.detach() for p in self.params])
        else:  # shadow + (1 - beta) (w - shadow) = beta shadow + (1 - beta) w, as AveragedModel computes it
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.momentum)
        self.updates += 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Averaged parameters in the model for the block; the raw ones restored exactly on exit."""
        raw = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.shadow)
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, raw)

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"state has {len(state['shadow'])} tensors, this average tracks {len(self.shadow)}")
        self.momentum, self.updates = state["momentum"], state["updates"]
        for s, value in zip(self.shadow, state["shadow"]):
            s.copy_(value)

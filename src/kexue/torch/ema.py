"""Exponential moving average of a PyTorch model's parameters (chapter 03, eq. ema-closed-form).

``shadow_1 = w_1``, ``shadow_t = beta * shadow_{t-1} + (1 - beta) * w_t`` after every optimizer step (call
``update()``), the rule of ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(beta)``, but
without a second copy of the module: ``with ema.swapped():`` puts the averages into the model and restores
the raw parameters bit for bit on exit. Buffers (BatchNorm's running statistics) are not averaged, as in
``AveragedModel(use_buffers=False)``, its default.

With ``gamma`` instead of ``momentum``, the momentum of the t-th update is ``beta_t = (1 - 1/t)^(gamma + 1)``
(eq. power-ema, Karras et al. 2024's power-function average): the t-th average weights iterate i by
``(i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1)`` (eq. power-profile), and ``gamma=0`` is the uniform average of
``AveragedModel``'s default (SWA).

Every floating-point parameter is averaged, whether or not it requires a gradient, as ``AveragedModel`` does:
a frozen parameter's average is the parameter itself, and one unfrozen later (fine-tuning) has an average of
every iterate it took, frozen ones included, with no re-tracking rule to get wrong. The price is one shadow per
frozen parameter too.

Shadows of float16/bfloat16 parameters are kept in float32 (in bfloat16, ``lerp`` by ``1 - 0.999`` rounds
away every step and the average stalls); shadows follow their parameters to another device at the next
``update``/``swapped``/``load_state_dict``.

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

from kexue._checks import finite_real, fraction, positive_int

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _shadow_of(p: torch.Tensor) -> torch.Tensor:
    return p.detach().to(torch.float32 if p.dtype in LOW_PRECISION else p.dtype, copy=True)


class ExponentialMovingAverage:
    """Shadow copies of ``model``'s floating-point parameters, updated by ``update()``, swapped in by ``swapped()``.

    Args:
        model: the module whose floating-point parameters to average (all of them, frozen ones included).
        momentum: beta in [0, 1) (eq. ema-rule); 0.999 if neither it nor ``gamma`` is given.
        gamma: instead of ``momentum``, the power-function average's exponent, a finite number >= 0: the t-th
            update uses ``beta_t = (1 - 1/t)^(gamma + 1)`` (eq. power-ema); 0 gives the uniform average (SWA).
    """

    def __init__(self, model: nn.Module, momentum: float | None = None, *, gamma: float | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
        if gamma is not None:
            if momentum is not None:
                raise ValueError("give `momentum` (a constant beta) or `gamma` (a power-function average), not both")
            self.gamma: float | None = finite_real("gamma", gamma)
            self.momentum: float | None = None
        else:
            self.gamma = None
            self.momentum = fraction("momentum", 0.999 if momentum is None else momentum, allow_zero=True)
            if self.momentum == 1:
                raise ValueError("`momentum` must be < 1: with momentum 1 the average never moves")
        self.model = model
        self.names = [name for name, p in model.named_parameters() if p.is_floating_point()]
        if not self.names:
            raise ValueError("`model` has no floating-point parameters to average")
        self.shadow = [_shadow_of(p) for p in self.params]
        self.updates = 0

    def momentum_at(self, t: int) -> float:
        """The momentum of the ``t``-th update (``t >= 1``): 0 for the first (a copy), then beta or
        ``(1 - 1/t)^(gamma + 1)`` (eq. power-ema)."""
        t = positive_int("t", t)
        if t == 1:
            return 0.0
        return self.momentum if self.gamma is None else (1 - 1 / t) ** (self.gamma + 1)

    @property
    def params(self) -> list[nn.Parameter]:
        """The averaged parameters, looked up by name each time: ``model.to(...)`` may replace them."""
        named = dict(self.model.named_parameters())
        return [named[name] for name in self.names]

    def _follow_devices(self) -> list[nn.Parameter]:
        """Move any shadow whose parameter has moved (``model.to(device)`` after construction); the params."""
        params = self.params
        for k, (s, p) in enumerate(zip(self.shadow, params)):
            if s.device != p.device:
                self.shadow[k] = s.to(p.device)
        return params

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average; the first copies the parameters."""
        params = [p.detach() if p.dtype == s.dtype else p.detach().to(s.dtype)
                  for p, s in zip(self._follow_devices(), self.shadow)]
        beta = self.momentum_at(self.updates + 1)
        if beta == 0:
            torch._foreach_copy_(self.shadow, params)
        else:  # shadow + (1 - beta) (w - shadow) = beta shadow + (1 - beta) w, as AveragedModel computes it
            torch._foreach_lerp_(self.shadow, params, 1 - beta)
        self.updates += 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Averaged parameters in the model for the block; the raw ones restored exactly on exit.

        Raises ``RuntimeError`` before the first ``update()`` (there is no average yet)."""
        if self.updates == 0:
            raise RuntimeError("nothing to swap in yet: call update() after an optimizer step first")
        params = self._follow_devices()
        raw = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, s in zip(params, self.shadow):
                    p.copy_(s)
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, raw)

    def state_dict(self) -> dict:
        """``{"momentum", "gamma", "updates", "shadow"}``; the shadows are copies."""
        return {"momentum": self.momentum, "gamma": self.gamma, "updates": self.updates,
                "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output. The momentum and gamma must equal this average's (they are not
        replaced), and every shadow must have its parameter's shape; values go to the parameters' devices."""
        if not isinstance(state, dict) or not {"momentum", "updates", "shadow"} <= set(state):
            raise ValueError("`state` must be a dict with keys 'momentum', 'updates', 'shadow' (see state_dict)")
        saved = (None if state["momentum"] is None else float(state["momentum"]), state.get("gamma"))
        if saved != (self.momentum, self.gamma):
            raise ValueError(f"`state` was saved with momentum {saved[0]}, gamma {saved[1]}; this average has "
                             f"momentum {self.momentum}, gamma {self.gamma}: construct it with the saved ones")
        updates = positive_int("state['updates']", state["updates"], minimum=0)
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"state has {len(state['shadow'])} tensors, this average tracks {len(self.shadow)}")
        for k, (s, value) in enumerate(zip(self.shadow, state["shadow"])):
            if tuple(value.shape) != tuple(s.shape):
                raise ValueError(f"state tensor {k} has shape {tuple(value.shape)}, the parameter has {tuple(s.shape)}")
        self._follow_devices()
        with torch.no_grad():
            for s, value in zip(self.shadow, state["shadow"]):
                s.copy_(value)
        self.updates = updates

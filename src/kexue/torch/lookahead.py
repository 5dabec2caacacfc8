"""Lookahead as a ``torch.optim.Optimizer`` wrapper (chapter 02, eq. lookahead-rule).

Reference: M. R. Zhang, J. Lucas, G. Hinton, J. Ba, "Lookahead Optimizer: k steps forward, 1 step back",
NeurIPS 2019; Su Jianlin, https://kexue.fm/archives/6869.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from kexue._checks import fraction, positive_int
from kexue.torch.wrapper import OptimizerWrapper


class Lookahead(OptimizerWrapper):
    """Lookahead around any torch optimizer: k fast steps forward, then one slow step back.

    The inner optimizer moves the (fast) weights as usual. Slow weights, a copy of the weights taken
    at the first step, follow them: after every ``sync_period``-th inner step,

        phi <- phi + slow_step_size * (theta - phi),   theta <- phi.

    Args:
        optimizer: the ``torch.optim.Optimizer`` to wrap; its ``param_groups`` are this wrapper's, so
            learning-rate schedulers work on either.
        sync_period: inner steps between synchronisations, k >= 1.
        slow_step_size: alpha in (0, 1]; ``slow_step_size=1`` is the inner optimizer, whatever ``sync_period``.

    Example::

        opt = Lookahead(torch.optim.Adam(model.parameters(), 1e-3), sync_period=5, slow_step_size=0.5)
        ...
        with opt.swapped():  # evaluate the slow weights, the result of the paper's Algorithm 1
            evaluate(model)

    ``state_dict()`` carries the inner state, the slow weights and the inner-step count, so a checkpoint
    taken between two synchronisations resumes exactly.
    """

    _state_keys = ("sync_period", "slow_step_size", "inner_steps", "slow")
    _repr_keys = ("sync_period", "slow_step_size")

    def __init__(self, optimizer: torch.optim.Optimizer, sync_period: int = 5, slow_step_size: float = 0.5):
        self.sync_period = positive_int("sync_period", sync_period)
        self.slow_step_size = fraction("slow_step_size", slow_step_size)
        self.inner_steps = 0
        self._slow: dict[torch.Tensor, torch.Tensor] = {}
        super().__init__(optimizer)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        params = self._params()
        if len(self._slow) != len(params):  # first step, or a parameter group was added since
            for p in params:
                if p not in self._slow:
                    self._slow[p] = p.detach().clone()
        loss = self.optimizer.step(closure)
        self.inner_steps += 1
        if self.inner_steps % self.sync_period == 0:
            # eq. (lookahead-rule): the slow weights take a step of size alpha towards the fast ones,
            # and the fast weights restart from there.
            slow = [self._slow[p] for p in params]
            torch._foreach_add_(slow, torch._foreach_sub(params, slow), alpha=self.slow_step_size)
            torch._foreach_copy_(params, slow)
        return loss

    def slow_weights(self) -> list[torch.Tensor]:
        """The slow weights in parameter order (the fast weights until the first step)."""
        return [self._slow.get(p, p).detach() for p in self._params()]

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Slow weights in the parameters for the block; the fast ones restored exactly on exit.

        Between two synchronisations the parameters hold the fast weights, k - j steps ahead of the slow
        ones the paper's Algorithm 1 returns; evaluate inside this block to see the slow weights.
        """
        params = self._params()
        fast = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                torch._foreach_copy_(params, self.slow_weights())
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, fast)

    def _wrapper_state(self) -> dict[str, Any]:
        return {
            "sync_period": self.sync_period,
            "slow_step_size": self.slow_step_size,
            "inner_steps": self.inner_steps,
            "slow": [self._slow[p].clone() if p in self._slow else None for p in self._params()],
        }

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        for key in ("sync_period", "slow_step_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"`state_dict` was saved with {key}={state[key]}, this wrapper has {getattr(self, key)}")
        params = self._params()
        if len(state["slow"]) != len(params):
            raise ValueError(f"`state_dict` holds {len(state['slow'])} slow weights for {len(params)} parameters")
        self.inner_steps = positive_int("state_dict['inner_steps']", state["inner_steps"], minimum=0)
        self._slow = {p: s.to(p).clone() for p, s in zip(params, state["slow"]) if s is not None}

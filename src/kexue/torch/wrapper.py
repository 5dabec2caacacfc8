"""The part every kexue torch optimizer wrapper shares: one inner optimizer, its groups, its state."""

from __future__ import annotations

from typing import Any

import torch


class OptimizerWrapper(torch.optim.Optimizer):
    """Base class: wrap ``optimizer`` and share its ``param_groups`` and ``state``.

    Sharing the groups is what lets a learning-rate scheduler attach to the wrapper or to the inner
    optimizer alike. ``state_dict()`` is ``{"optimizer": <inner state_dict>, **self._wrapper_state()}``;
    subclasses list the keys of their own state in ``_state_keys`` and restore it in
    ``_load_wrapper_state``.
    """

    _state_keys: tuple[str, ...] = ()

    def __init__(self, optimizer: torch.optim.Optimizer):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, type(self)):
            raise ValueError(f"`optimizer` is already a {type(self).__name__}; wrap the inner optimizer once")
        self.optimizer = optimizer
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self._share_inner()

    def _share_inner(self) -> None:
        # The inner optimizer owns the hyper-parameters and the state; this wrapper only looks at them.
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Called by the base constructor with the inner optimizer's own groups: nothing to add then.
        if any(param_group is g for g in self.optimizer.param_groups):
            return
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _wrapper_state(self) -> dict[str, Any]:
        return {}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"optimizer": self.optimizer.state_dict(), **self._wrapper_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        missing = {"optimizer", *self._state_keys} - set(state_dict)
        if missing:
            raise ValueError(f"`state_dict` is not a {type(self).__name__} state: missing {sorted(missing)}")
        self._load_wrapper_state(state_dict)  # checks and restores the wrapper's own state, then the inner one
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._share_inner()  # load_state_dict replaced the inner optimizer's param_groups list

    def __repr__(self) -> str:
        own = ", ".join(f"{key}={getattr(self, key)!r}" for key in getattr(self, "_repr_keys", ()))
        return f"{type(self).__name__}({own}, optimizer={self.optimizer!r})"

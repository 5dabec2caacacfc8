"""The part every kexue torch optimizer wrapper shares: one inner optimizer, its groups, its state."""

from __future__ import annotations

from typing import Any

import torch


class OptimizerWrapper(torch.optim.Optimizer):
    """Base class: wrap ``optimizer`` and share its ``param_groups`` and ``state``.

    Sharing the groups is what lets a learning-rate scheduler attach to the wrapper or to the inner
    optimizer alike. ``state_dict()`` is ``{"optimizer": <inner state_dict>, **self._wrapper_state()}``;
    subclasses list the keys of their own state in ``_state_keys`` and restore it in
    ``_load_wrapper_state``. The state-dict hooks of :class:`torch.optim.Optimizer`
    (``register_state_dict_pre_hook`` and the three others) run as they do for a plain optimizer.

    ``copy.deepcopy``, ``pickle`` and ``torch.save(wrapper)`` keep the whole wrapper (the inner
    optimizer and the wrapper's own attributes); like torch's optimizers they drop registered hooks.
    Subclasses name attributes that cannot be pickled in ``_transient`` and rebuild them in
    ``_restore_transient``.

    A wrapper that counts the inner optimizer's steps (Lookahead's k steps) would count micro-batches
    around a :class:`~kexue.torch.GradientAccumulation`, which steps its own inner optimizer only once
    every n calls: wrapping one is refused; put the accumulation outermost instead.
    """

    _state_keys: tuple[str, ...] = ()
    _transient: tuple[str, ...] = ()
    _updates_every_step = True  # False for a wrapper whose step() applies an update only every n-th call

    def __init__(self, optimizer: torch.optim.Optimizer):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, type(self)):
            raise ValueError(f"`optimizer` is already a {type(self).__name__}; wrap the inner optimizer once")
        if not getattr(optimizer, "_updates_every_step", True):
            raise ValueError(
                f"`optimizer` is a {type(optimizer).__name__}, which updates once every {optimizer.steps} calls, "
                f"so {type(self).__name__} would count micro-batches, not updates; put the accumulation "
                f"outermost: {type(optimizer).__name__}({type(self).__name__}(inner), ...)"
            )
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
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = {"optimizer": self.optimizer.state_dict(), **self._wrapper_state()}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if not isinstance(state_dict, dict):
            raise TypeError(f"`state_dict` must be a dict, got {type(state_dict).__name__}")
        state_dict = dict(state_dict)  # a pre-hook may edit it in place, as with torch's optimizers
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        missing = {"optimizer", *self._state_keys} - set(state_dict)
        if missing:
            raise ValueError(f"`state_dict` is not a {type(self).__name__} state: missing {sorted(missing)}")
        self._load_wrapper_state(state_dict)  # checks and restores the wrapper's own state, then the inner one
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._share_inner()  # load_state_dict replaced the inner optimizer's param_groups list
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getstate__(self) -> dict[str, Any]:  # type: ignore[override]
        # torch.optim.Optimizer keeps only defaults, state and param_groups, which would lose the inner
        # optimizer and everything the wrapper adds. Keep the whole instance but the hooks (often
        # lambdas, which cannot be pickled, and dropped by torch's optimizers too) and `_transient`.
        return {
            key: value for key, value in self.__dict__.items()
            if key not in self._transient and not (key.startswith("_optimizer_") and key.endswith("_hooks"))
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # recreates the empty hook registries
        self._share_inner()
        self._restore_transient()

    def _restore_transient(self) -> None:
        pass

    def __repr__(self) -> str:
        own = ", ".join(f"{key}={getattr(self, key)!r}" for key in getattr(self, "_repr_keys", ()))
        return f"{type(self).__name__}({own}, optimizer={self.optimizer!r})"

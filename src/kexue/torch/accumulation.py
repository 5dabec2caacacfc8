"""Gradient accumulation as a ``torch.optim.Optimizer`` wrapper (chapter 01, eq. accumulated-update).

Reference: Su Jianlin, "用时间换取效果:Keras梯度累积优化器", 2019-07-08, https://kexue.fm/archives/6794.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch

from kexue._checks import positive_int
from kexue.torch.wrapper import OptimizerWrapper

# id(parameter) -> (parameter, the GradientAccumulation whose hook scales its gradients, the hook's handle);
# the latest wrapper created over a parameter owns it. Keyed by id: a tensor's == is elementwise, and an
# attribute on the parameter would travel with copies and pickles of the model.
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref, Any]] = {}


def _owner_of(p: torch.Tensor) -> "GradientAccumulation | None":
    entry = _OWNERS.get(id(p))
    if entry is None or entry[0]() is not p:
        return None
    return entry[1]()


def _scale_by(owner: "weakref.ref[GradientAccumulation]", steps: int) -> Callable[[torch.Tensor], Any]:
    def hook(grad: torch.Tensor) -> torch.Tensor | None:
        # eq. (accumulated-update): each micro-gradient enters p.grad as g_k / n, so that after the
        # n-th backward pass p.grad is the mean. A wrapper that no longer exists scales nothing.
        return grad / steps if owner() is not None else None

    return hook


def _register_hook(p: torch.Tensor, hook: Callable[[torch.Tensor], Any]) -> Any:
    """``p.register_hook(hook)``, also for a parameter that is frozen now: the hook stays with the tensor
    through ``requires_grad_`` changes, so a parameter unfrozen later is averaged like the others."""
    if p.requires_grad:
        return p.register_hook(hook)
    p.requires_grad_(True)
    try:
        return p.register_hook(hook)
    finally:
        p.requires_grad_(False)


class GradientAccumulation(OptimizerWrapper):
    """Make any torch optimizer update once every ``steps`` micro-batches, with their mean gradient.

    The plain loop, called once per micro-batch, works unchanged::

        opt = GradientAccumulation(torch.optim.Adam(model.parameters(), 1e-3), steps=4)
        for x, y in loader:                      # micro-batches of 8
            loss_fn(model(x), y).backward()
            opt.step()                           # updates on every 4th call, as with batches of 32
            opt.zero_grad()

    Each micro-gradient is divided by ``steps`` as it arrives (a hook on every parameter), and
    :meth:`zero_grad` clears only at update boundaries, so ``p.grad`` holds the running sum
    ``(g_1 + ... + g_k) / n`` and, after the last micro-batch's backward pass, the *mean* gradient
    (eq. ``mean-of-means``), the large batch's. :attr:`sync_gradients` is True exactly then: the next
    :meth:`step` applies an update. That is the moment to clip, to unscale a ``GradScaler``'s gradients
    and to step a learning-rate scheduler, as with Hugging Face Accelerate's attribute of that name::

        scaler = torch.amp.GradScaler(device)
        for x, y in loader:
            with torch.autocast(device):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            if opt.sync_gradients:               # p.grad: the scaled mean of the n micro-gradients
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # the big batch's clipping
                scaler.step(opt)                 # an inf/nan anywhere in the cycle: the update is skipped
                scaler.update()
                scheduler.step()                 # once per update
            else:
                opt.step()                       # counts the micro-batch
            opt.zero_grad()

    Read :attr:`sync_gradients` before ``opt.step()``, as above: the updating step starts the next cycle.
    Parameters frozen (``requires_grad=False``) when the wrapper is built are averaged too once unfrozen.

    Args:
        optimizer: the ``torch.optim.Optimizer`` to wrap (not one whose ``step`` needs a closure, L-BFGS); this wrapper shares its ``param_groups``
            and ``state``, so learning-rate schedulers may be attached to either. A wrapper that counts
            steps (``Lookahead``) goes inside: ``GradientAccumulation(Lookahead(Adam(...)), n)``.
        steps: micro-batches per update, an integer >= 1.

    While the wrapper exists, *every* gradient of its parameters is divided by ``steps``, as if each
    loss were (Accelerate divides the loss itself), ``torch.autograd.grad`` included; a parameter is
    scaled by the most recent ``GradientAccumulation`` built over it only. Call this wrapper's ``zero_grad``, not
    ``model.zero_grad()``, which would discard the partial sum. ``state_dict()``, ``copy.deepcopy``
    and pickling keep the position in the cycle *and* the partial sums, so a checkpoint taken
    mid-cycle resumes exactly; :meth:`load_state_dict` writes them back into ``p.grad``.

    Limitations: every micro-batch must have the same size for the mean to be the batch mean (else
    scale micro-batch k's loss by ``n * m_k / b``, chapter 01 eq. ``unequal-sizes``); a GradScaler's
    ``step``/``update`` must run only when :attr:`sync_gradients` is True (refused otherwise).
    """

    _state_keys = ("steps", "micro_step", "partial")
    _repr_keys = ("steps",)
    _transient = ("_hooks",)  # hook handles; __setstate__ registers new hooks
    _updates_every_step = False
    _step_supports_amp_scaling = True  # GradScaler always calls step() and tells it about inf/nan

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int):
        closure = inspect.signature(optimizer.step).parameters.get("closure") if callable(
            getattr(optimizer, "step", None)) else None
        if closure is not None and closure.default is inspect.Parameter.empty:
            raise ValueError(
                f"`optimizer` is a {type(optimizer).__name__}, whose step() needs a closure to re-evaluate the loss "
                "(a line search): each evaluation needs the whole batch, which accumulation does not have"
            )
        self.steps = positive_int("steps", steps)
        self.micro_step = 0  # micro-batches received since the last update
        super().__init__(optimizer)
        self._restore_transient()

    @property
    def sync_gradients(self) -> bool:
        """True when the next :meth:`step` applies an update: ``p.grad`` then holds the mean gradient.

        Read it before ``step()``: the updating ``step()`` starts the next cycle, after which it is False
        (for ``steps > 1``). Accelerate's attribute of that name stays True until the next micro-batch,
        so a loop that tests it *after* ``optimizer.step()`` must read it before the step here.
        """
        return self.micro_step + 1 == self.steps

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _restore_transient(self) -> None:
        """Register the 1/n hooks (after construction, unpickling, or a new parameter group)."""
        if self.steps == 1:
            return
        for key in [key for key, (p, o, _) in _OWNERS.items() if p() is None or o() is None]:
            del _OWNERS[key]  # forget dead parameters and wrappers
        owner = weakref.ref(self)
        self._hooks = getattr(self, "_hooks", [])
        for p in self._params():
            if not (p.is_floating_point() or p.is_complex()) or _owner_of(p) is self:
                continue  # integer tensors never get gradients
            if id(p) in _OWNERS:  # an older wrapper over this parameter: its hook goes, this one takes over
                _OWNERS.pop(id(p))[2].remove()
            handle = _register_hook(p, _scale_by(owner, self.steps))
            _OWNERS[id(p)] = (weakref.ref(p), owner, handle)
            self._hooks.append(handle)

    def __getstate__(self) -> dict[str, Any]:  # type: ignore[override]
        state = super().__getstate__()
        state["_pickled_partial"] = self._partial_sums()  # p.grad is not pickled with a tensor
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        partial = state.pop("_pickled_partial")
        super().__setstate__(state)
        self._set_partial_sums(partial)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_hooks"):  # not during construction, which registers them all at its end
            self._restore_transient()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Record one micro-batch; on every ``steps``-th call apply the mean gradient with the inner optimizer."""
        found_inf = getattr(self, "found_inf", None)  # set by GradScaler.step, which then calls this
        grad_scale = getattr(self, "grad_scale", None)
        if found_inf is not None and not self.sync_gradients:
            raise RuntimeError(
                "GradScaler.step(opt) was called in the middle of an accumulation cycle; call scaler.step and "
                "scaler.update only when `opt.sync_gradients` is True and opt.step() otherwise, so that the "
                "scale stays the same for all micro-batches of an update"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.micro_step += 1
        if self.micro_step == self.steps:
            # eq. (accumulated-update): p.grad holds (g_1 + ... + g_n) / n, the mean.
            self.micro_step = 0
            if found_inf is not None and bool(found_inf):  # GradScaler's own test syncs with the host too
                self.optimizer.zero_grad(set_to_none=True)  # the whole cycle is dropped, as a big batch is
                return loss
            if grad_scale is not None:  # GradScaler did not unscale: do it here
                grads = [p.grad for p in self._params() if p.grad is not None]
                torch._foreach_div_(grads, grad_scale.to(grads[0].device) if grads else grad_scale)
            self.optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients only at an update boundary; in between, autograd keeps summing into them."""
        if self.micro_step == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def _partial_sums(self) -> list[torch.Tensor | None]:
        """Copies of the partial sums in ``p.grad`` (none at a cycle boundary, where there is no sum)."""
        if self.micro_step == 0:
            return []
        return [None if p.grad is None else p.grad.detach().clone() for p in self._params()]

    def _set_partial_sums(self, partial: list[torch.Tensor | None]) -> None:
        if not partial:
            return
        for p, s in zip(self._params(), partial):
            p.grad = None if s is None else s.to(device=p.device, dtype=p.dtype).clone()

    def _wrapper_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "micro_step": self.micro_step, "partial": self._partial_sums()}

    def _load_wrapper_state(self, state: dict) -> None:
        if state["steps"] != self.steps:
            raise ValueError(f"`state_dict` was saved with steps={state['steps']}, this wrapper has {self.steps}")
        micro_step = positive_int("state_dict['micro_step']", state["micro_step"], minimum=0)
        if micro_step >= self.steps:
            raise ValueError(f"`state_dict['micro_step']` must be below steps={self.steps}, got {micro_step}")
        partial = state["partial"]
        n_params = len(self._params())
        if micro_step > 0 and len(partial) != n_params:
            raise ValueError(
                f"`state_dict['partial']` holds {len(partial)} partial sums for {n_params} parameters "
                f"(a state saved {micro_step} micro-batches into a cycle must hold them)"
            )
        for i, (p, q) in enumerate(zip(self._params(), partial if micro_step > 0 else [])):
            if q is not None and (not torch.is_tensor(q) or q.shape != p.shape):
                raise ValueError(
                    f"`state_dict['partial'][{i}]` must be None or a tensor of shape {tuple(p.shape)}, "
                    f"got {tuple(q.shape) if torch.is_tensor(q) else type(q).__name__}"
                )
        self.micro_step = micro_step
        if micro_step > 0:
            self._set_partial_sums(partial)
        else:
            self.optimizer.zero_grad(set_to_none=True)  # a cycle starts from nothing

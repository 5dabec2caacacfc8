"""Where training memory goes (chapter 01, eq. memory-budget): state that is fixed, activations that scale."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

T = TypeVar("T")


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    storage = tensor.untyped_storage()
    return (str(storage.device), storage.data_ptr())


def activation_bytes(forward: Callable[[], T], exclude: Iterable[torch.Tensor] = ()) -> tuple[T, int]:
    """Run ``forward()`` and count the bytes autograd saves for the backward pass.

    Every tensor that an operation saves for backward passes through a saved-tensor hook; counting
    each distinct storage once gives the activation memory held between forward and backward,
    the term :math:`b\\,A` of eq. ``memory-budget``. Tensors in ``exclude`` (pass the model's
    parameters) are not activations and are not counted. Returns ``(forward(), bytes)``.
    """
    if not callable(forward):
        raise TypeError(f"`forward` must be a callable taking no arguments, got {type(forward).__name__}")
    excluded = {_storage_key(t) for t in exclude}
    seen: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    return out, sum(seen.values())


def _held_tensors(obj: object, excluded: set, found: dict, visited: set) -> None:
    """Collect the tensors ``obj`` holds: in containers, and in the attributes of optimizers (wrappers too)."""
    if torch.is_tensor(obj):
        key = _storage_key(obj)
        if key not in excluded:
            found[key] = max(found.get(key, 0), obj.numel() * obj.element_size())
        return
    if id(obj) in visited:
        return
    visited.add(id(obj))
    if isinstance(obj, dict):
        items = obj.values()  # an optimizer's state is keyed by the parameters themselves: not counted
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj
    elif isinstance(obj, torch.optim.Optimizer):
        items = vars(obj).values()
    else:
        return
    for item in items:
        _held_tensors(item, excluded, found, visited)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of the state that does not depend on the batch, the term :math:`(2+r)\\,P\\,w` of eq. ``memory-budget``.

    ``parameters`` and ``gradients`` are the model's parameters and one gradient per trainable parameter
    (whether or not ``.grad`` is allocated at the moment). ``optimizer`` is measured: every tensor the
    optimizer object holds, counted once per storage and parameters excluded; its ``state`` and, for a
    wrapper, the wrapped optimizer's and any buffer of the wrapper's own.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    params = [p for p in model.parameters()]
    sizes = {
        "parameters": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "optimizer": 0,
    }
    if optimizer is not None:
        excluded = {_storage_key(p) for group in optimizer.param_groups for p in group["params"]}
        excluded |= {_storage_key(p) for p in params}
        found: dict[tuple[str, int], int] = {}
        _held_tensors(optimizer, excluded, found, set())
        sizes["optimizer"] = sum(found.values())
    return sizes

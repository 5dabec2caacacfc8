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


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of the state that does not depend on the batch: parameters, gradients, optimizer state."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters()]
    sizes = {
        "parameters": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "optimizer": 0,
    }
    if optimizer is not None:
        for state in optimizer.state.values():
            sizes["optimizer"] += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return sizes

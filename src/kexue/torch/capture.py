"""Capture intermediate values of a PyTorch model in one call (chapter 03).

Forward hooks give the outputs (and inputs) of named submodules; :func:`kexue.capture.record` gives values
computed inside a module's ``forward``. The call runs under ``torch.no_grad()``; hooks are removed afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kexue.capture import record, recording, store

__all__ = ["capture", "record"]


def capture(model: nn.Module, *args: Any, modules: Sequence[str] = (),
            **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Call ``model(*args, **kwargs)`` once without gradients; return (output, captured tensors, detached).

    Args:
        model: any ``nn.Module`` (its train/eval mode is left as it is).
        modules: names from ``model.named_modules()`` whose outputs to keep as ``"{name}:output"`` (and first
            input as ``"{name}:input"``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if isinstance(modules, str):
        raise TypeError("`modules` must be a sequence of module names, not one string: use modules=[name]")
    named = dict(model.named_modules())
    unknown = [name for name in modules if name not in named]
    if unknown:
        raise ValueError(f"no submodule named {unknown}; available: {[n for n in named if n][:20]}")
    handles = []
    with recording() as values, torch.no_grad():
        try:
            for name in modules:
                def keep(module: nn.Module, inputs: tuple, output: Any, name: str = name) -> None:
                    if inputs:
                        store(values, f"{name}:input", inputs[0])
                    store(values, f"{name}:output", output)

                handles.append(named[name].register_forward_hook(keep))
            output = model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
    return output, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()}

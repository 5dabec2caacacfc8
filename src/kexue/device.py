"""Which torch device the notebooks use."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def device(name: str | None = None) -> "torch.device":
    """The torch device to run on: ``name`` if given, else CUDA when available, else the CPU."""
    import torch

    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a device string such as 'cpu' or 'cuda:0', got {name!r}")
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

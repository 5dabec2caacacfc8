"""The size of every experiment: ``KEXUE_SCALE=quick|full``.

*quick* is what CI runs on two CPU cores (each notebook in at most 90 s); *full* is sized for one
Colab GPU (a T4, at most 15 minutes a notebook). When ``KEXUE_SCALE`` is unset the scale is
*full* if a CUDA GPU is visible to torch and *quick* otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal, TypeVar

from kexue._checks import one_of

Scale = Literal["quick", "full"]
SCALES: tuple[str, ...] = ("quick", "full")
T = TypeVar("T")


def gpu_visible() -> bool:
    """True when torch is installed and sees a CUDA device (imports torch only if installed)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def scale() -> Scale:
    """The current scale: ``$KEXUE_SCALE`` if set, else ``"full"`` with a GPU and ``"quick"`` without."""
    value = os.environ.get("KEXUE_SCALE", "").strip().lower()
    if not value:
        return "full" if gpu_visible() else "quick"
    return one_of("KEXUE_SCALE", value, SCALES)  # type: ignore[return-value]


def pick(quick: T, full: T) -> T:
    """Return ``quick`` or ``full`` according to :func:`scale`: ``pick(quick=2_000, full=60_000)``."""
    return quick if scale() == "quick" else full

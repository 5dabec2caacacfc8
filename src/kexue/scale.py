"""The size of every experiment: ``KEXUE_SCALE=quick|full``, and the full-scale rehearsal.

*quick* is what CI runs on two CPU cores (each notebook in at most 90 s); *full* is sized for one
Colab GPU (a T4, at most 15 minutes a notebook). When ``KEXUE_SCALE`` is unset the scale is
*full* if a CUDA GPU is visible to torch and *quick* otherwise.

A *rehearsal* (``KEXUE_REHEARSAL=1``) runs the full configuration's code paths without a GPU or a
network: it implies ``KEXUE_SCALE=full``, the data loaders of :func:`kexue.data.full_scale` fall back
to labelled stand-ins of the real shapes, and every training loop sized with ``pick(...,
rehearsal=n)`` runs ``n`` steps. Dataset-wide passes keep their full size. Notebooks skip, visibly,
only the checks of quality that need full training.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal, TypeVar

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


_MISSING: Any = object()


def rehearsal() -> bool:
    """True when ``$KEXUE_REHEARSAL`` is ``1``/``true``/``yes`` (unset, empty, ``0``/``false``/``no``: False)."""
    value = os.environ.get("KEXUE_REHEARSAL", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"`KEXUE_REHEARSAL` must be one of '1', 'true', 'yes', '0', 'false', 'no'; got {value!r}")


def scale() -> Scale:
    """The current scale: ``$KEXUE_SCALE`` if set, else ``"full"`` with a GPU or in a rehearsal, else ``"quick"``.

    A rehearsal rehearses full scale: ``KEXUE_REHEARSAL=1`` with ``KEXUE_SCALE=quick`` is a ``ValueError``.
    """
    value = os.environ.get("KEXUE_SCALE", "").strip().lower()
    if rehearsal():
        if value not in ("", "full"):
            raise ValueError(f"`KEXUE_REHEARSAL=1` rehearses full scale, but `KEXUE_SCALE` is {value!r}")
        return "full"
    if not value:
        return "full" if gpu_visible() else "quick"
    return one_of("KEXUE_SCALE", value, SCALES)  # type: ignore[return-value]


def pick(quick: T, full: T, rehearsal: T = _MISSING) -> T:
    """``quick`` or ``full`` according to :func:`scale`; in a rehearsal, ``rehearsal`` if given, else ``full``.

    Size training loops with all three (``pick(quick=300, full=3_000, rehearsal=2)``) and dataset-wide
    passes with two, so that a rehearsal cuts the loops and keeps the passes at full size.
    """
    if scale() == "quick":
        return quick
    if rehearsal is not _MISSING and _rehearsing():
        return rehearsal
    return full


_rehearsing = rehearsal  # `pick` takes an argument of the same name

"""Optional progress bars that never leave widget debris in executed notebooks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Whether :func:`progress` shows a bar.

    ``$KEXUE_PROGRESS`` (``1``/``0``) decides when set. Otherwise bars are shown only where a person
    watches: on Colab and in a terminal. A notebook executed headless (nbval, the book build) gets
    none, so the built HTML holds no ``HBox(...)`` widget reprs.
    """
    value = os.environ.get("KEXUE_PROGRESS", "").strip()
    if value:
        return value not in {"0", "false", "no", "off"}
    return "google.colab" in sys.modules or sys.stderr.isatty()


def progress(iterable: Iterable[T], *, enabled: bool | None = None, **tqdm_kwargs: Any) -> Iterable[T]:
    """Wrap ``iterable`` in a ``tqdm.auto`` bar when ``enabled`` (default: :func:`progress_enabled`)."""
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **tqdm_kwargs)

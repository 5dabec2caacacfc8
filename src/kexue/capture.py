"""Reading values computed inside a model's forward pass, framework-free core (chapter 03).

A layer marks a value with ``record(name, value)``; it returns ``value`` unchanged, so the layer's
computation and its training graph are the same whether anyone is listening or not. Only inside a
``recording()`` block (which :func:`kexue.keras.capture` and :func:`kexue.torch.capture` open for one call
of the model) are the values kept. The active recordings live in a ``ContextVar``: a capture in one thread
(or asyncio task) never collects what another thread's model records.

Example::

    class Attention(keras.layers.Layer):
        def call(self, x):
            weights = record(f"{self.name}/attention", ops.softmax(...))
            ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
_ACTIVE: ContextVar[tuple[dict[str, Any], ...]] = ContextVar("kexue_capture_active", default=())


def record(name: str, value: T) -> T:
    """Keep ``value`` under ``name`` if a capture is active in this context; return ``value`` unchanged.

    A name recorded again in the same call (a layer applied twice) is kept as ``name/1``, ``name/2``, ...
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"`name` must be a non-empty string, got {name!r}")
    active = _ACTIVE.get()
    if active:
        store(active[-1], name, value)
    return value


def store(values: dict[str, Any], name: str, value: Any) -> None:
    """Put ``value`` into ``values`` under ``name``, or ``name/k`` for the k-th repeat."""
    key, k = name, 0
    while key in values:
        k += 1
        key = f"{name}/{k}"
    values[key] = value


@contextmanager
def recording() -> Iterator[dict[str, Any]]:
    """Collect every :func:`record` made inside the block, in this context, into the yielded dict
    (innermost block wins)."""
    values: dict[str, Any] = {}
    token = _ACTIVE.set(_ACTIVE.get() + (values,))
    try:
        yield values
    finally:
        _ACTIVE.reset(token)

"""Argument validation shared by every public function: clear errors that name the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``; raise ``TypeError``/``ValueError`` otherwise.

    Booleans are rejected although ``bool`` subclasses ``int``: ``steps=True`` is a bug, not 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}")
    return int(value)


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; raise ``ValueError`` naming them otherwise."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float in (0, 1] (or [0, 1] with ``allow_zero``); raise naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise ValueError(f"`{name}` must be in {'[0' if allow_zero else '(0'}, 1], got {value}")
    return float(value)


def finite_real(name: str, value: Any, *, minimum: float = 0.0, inclusive: bool = True) -> float:
    """Return ``value`` as a float if it is a finite real ``>= minimum`` (``> minimum`` unless ``inclusive``);
    raise ``TypeError`` for a non-number (booleans included) and ``ValueError`` otherwise, naming ``name``."""
    bound = f"{'>=' if inclusive else '>'} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a finite real number {bound}, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
        raise ValueError(f"`{name}` must be a finite real number {bound}, got {value!r}")
    return float(value)

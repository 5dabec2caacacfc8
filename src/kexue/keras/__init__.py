"""Keras 3 implementations (tensorflow and torch backends). Importing this module imports keras."""

from kexue.keras.accumulation import GradientAccumulation
from kexue.keras.lazy import LazyOptimizer
from kexue.keras.lookahead import Lookahead

__all__ = ["GradientAccumulation", "LazyOptimizer", "Lookahead"]

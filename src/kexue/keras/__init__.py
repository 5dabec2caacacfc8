"""Keras 3 implementations (tensorflow and torch backends). Importing this module imports keras."""

from kexue.keras.accumulation import GradientAccumulation

__all__ = ["GradientAccumulation"]

"""Keras 3 implementations (tensorflow and torch backends). Importing this module imports keras."""

from kexue.keras.accumulation import GradientAccumulation
from kexue.keras.attention import SelfAttention
from kexue.keras.capture import capture
from kexue.keras.ema import EMAModelCheckpoint, ExponentialMovingAverage
from kexue.keras.lazy import LazyOptimizer
from kexue.keras.lookahead import Lookahead
from kexue.keras.seeded_dataset import SeededPyDataset, batches_seen_by_fit

__all__ = ["EMAModelCheckpoint", "ExponentialMovingAverage", "GradientAccumulation", "LazyOptimizer", "Lookahead",
           "SeededPyDataset", "SelfAttention", "batches_seen_by_fit", "capture"]

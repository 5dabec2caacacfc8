"""A torch ``Dataset`` whose augmentation is keyed by (seed, epoch, index) (chapter 03).

``DataLoader`` workers are processes holding copies of the dataset; a sample's random numbers come from
``sample_rng(seed, epoch, index)``, so they do not depend on the worker, the number of workers, or any RNG
state copied into the workers. Call ``set_epoch(e)`` before iterating epoch ``e`` (as with
``DistributedSampler``); with ``persistent_workers=True`` the workers keep the epoch they started with, so
use the default ``persistent_workers=False``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from kexue._checks import positive_int
from kexue.seeded import sample_rng

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class SeededDataset(Dataset):
    """(augment(x[i], sample_rng(seed, epoch, i)), y[i]) as tensors."""

    def __init__(self, x: np.ndarray, y: np.ndarray, augment: Augment | None = None, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"`x` and `y` must have the same length, got {len(x)} and {len(y)}")
        if augment is not None and not callable(augment):
            raise TypeError(f"`augment` must be callable or None, got {type(augment).__name__}")
        self.x, self.y, self.augment = x, y, augment
        self.seed = positive_int("seed", seed, minimum=0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = positive_int("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if self.augment is not None:
            x = self.augment(x, sample_rng(self.seed, self.epoch, int(index)))
        return torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(self.y[index]))


def loader_batches(loader: torch.utils.data.DataLoader, epochs: int) -> list[list[tuple[np.ndarray, ...]]]:
    """Each epoch's batches of ``loader`` as NumPy arrays, calling ``set_epoch`` on its dataset if it has one."""
    epochs = positive_int("epochs", epochs)
    out = []
    for epoch in range(epochs):
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        out.append([tuple(t.numpy() for t in batch) for batch in loader])
    return out

"""A ``keras.utils.PyDataset`` whose shuffling and augmentation are keyed by (seed, epoch, index) (chapter 03).

Every batch is a pure function of (seed, epoch, batch index), so it is the same whether Keras reads the
dataset in the main thread, with threads or with processes (``workers``, ``use_multiprocessing``), and in
whatever order the workers finish.

The epoch in the key must be ``fit``'s epoch index, so that a resumed run (``fit(..., initial_epoch=e)``) sees
what epoch ``e`` of an uninterrupted run saw. The dataset cannot learn that index by itself (``fit`` calls
``on_epoch_end`` once before training starts, and ``evaluate`` calls it too), so it provides a callback:
``fit(dataset, callbacks=[dataset.epoch_callback()])`` sets ``dataset.epoch`` at every ``on_epoch_begin``,
before Keras starts that epoch's workers and hands them the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from kexue._checks import positive_int
from kexue.seeded import epoch_order, sample_rng

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class SeededPyDataset(keras.utils.PyDataset):
    """Batches of (x, y) in an order drawn from (seed, epoch), each sample augmented with ``sample_rng``.

    Args:
        x, y: arrays with the same first dimension.
        batch_size: examples per batch; the last batch may be smaller.
        augment: ``augment(sample, rng) -> sample`` or ``None``; it must use only ``rng`` for randomness.
        seed: the key of all randomness.
        shuffle: draw a new order every epoch (from (seed, epoch)); otherwise keep the given order.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of ``PyDataset``.

    Pass it to ``fit(dataset, shuffle=False, callbacks=[dataset.epoch_callback()])``: the callback keys the
    data to fit's epoch index. Without it the dataset counts its own ``on_epoch_end`` calls, which is not
    fit's epoch (fit's epoch 0 is then key 1, and a resumed run does not repeat the uninterrupted one).
    ``fit``'s ``shuffle``: Keras's own ``shuffle`` reorders batches with Python's global
    ``random`` module, which is exactly the kind of randomness this class exists to avoid.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, augment: Augment | None = None,
                 seed: int = 0, shuffle: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if len(x) != len(y):
            raise ValueError(f"`x` and `y` must have the same length, got {len(x)} and {len(y)}")
        if len(x) == 0:
            raise ValueError("the dataset is empty")
        if augment is not None and not callable(augment):
            raise TypeError(f"`augment` must be callable or None, got {type(augment).__name__}")
        self.x, self.y = x, y
        self.batch_size = positive_int("batch_size", batch_size)
        self.augment, self.seed, self.shuffle = augment, positive_int("seed", seed, minimum=0), bool(shuffle)
        self.epoch = 0
        self._follows_fit = False  # True once epoch_callback() was made: on_epoch_end no longer counts
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation), so it is drawn once an epoch

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        rows = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.x[rows]
        if self.augment is not None:
            x = np.stack([self.augment(self.x[i], sample_rng(self.seed, self.epoch, int(i))) for i in rows])
        return x, self.y[rows]

    def order(self) -> np.ndarray:
        """This epoch's order of the samples: ``epoch_order(n, seed, epoch)``, or the given order without shuffling."""
        if not self.shuffle:
            return np.arange(len(self.x))
        cached = self._order  # one read: another thread may replace it, never half-way
        if cached is None or cached[0] != self.epoch:
            cached = (self.epoch, epoch_order(len(self.x), self.seed, self.epoch))
            self._order = cached
        return cached[1]

    def on_epoch_end(self) -> None:
        if not self._follows_fit:
            self.epoch += 1

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A callback for ``fit`` that sets ``self.epoch`` to fit's epoch index at every epoch's start.

        From then on the dataset's own ``on_epoch_end`` no longer advances the epoch, so ``evaluate`` on the
        same object does not shift the training data.
        """
        self._follows_fit = True
        return _FitEpoch(self)


class _FitEpoch(keras.callbacks.Callback):
    """Sets ``dataset.epoch = epoch`` in ``on_epoch_begin`` (Keras starts the epoch's workers after it)."""

    def __init__(self, dataset: SeededPyDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.dataset.epoch = int(epoch)


class _Recorder(keras.Model):
    """A model that trains nothing and keeps every batch ``fit`` hands to ``train_step``."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []
        self.built = True  # no weights: nothing for fit to build from a peeked batch

    def call(self, x: Any) -> Any:
        return x

    def train_step(self, data: Any) -> dict:
        x, y = data[0], data[1]
        self.batches.append((keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y)))
        return {"examples": keras.ops.cast(keras.ops.shape(x)[0], "float32")}


def batches_seen_by_fit(dataset: keras.utils.PyDataset, epochs: int, initial_epoch: int = 0,
                        callbacks: list[keras.callbacks.Callback] | None = None,
                        ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Run ``fit(dataset, epochs, initial_epoch, shuffle=False, callbacks)`` on a recording model; return the
    batches of each epoch it ran (``epochs - initial_epoch`` of them) in order.

    This is what a model would be trained on, read through Keras's own data pipeline (its workers, threads
    or processes, and queue), so it tests a dataset exactly as ``fit`` uses it. The recording model is built
    and has no loss, so ``fit`` does not first peek at a batch to build them; see chapter 03 for what that
    peek does on the torch backend.
    """
    epochs = positive_int("epochs", epochs)
    initial_epoch = positive_int("initial_epoch", initial_epoch, minimum=0)
    if initial_epoch >= epochs:
        raise ValueError(f"`initial_epoch` must be < `epochs`, got {initial_epoch} and {epochs}")
    model = _Recorder()
    model.compile(run_eagerly=True)  # train_step in Python, so it can keep the batches
    model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch, verbose=0, shuffle=False,
              callbacks=list(callbacks or []))
    ran = epochs - initial_epoch
    per_epoch = len(model.batches) // ran
    return [model.batches[e * per_epoch:(e + 1) * per_epoch] for e in range(ran)]

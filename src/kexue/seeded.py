"""Randomness that does not depend on who computes it: generators keyed by (seed, epoch, index) (chapter 03).

A data pipeline read by several workers, threads or processes, stays reproducible only if the random
numbers used for a sample are a function of *which* sample it is, not of which worker happens to draw it or
of a generator state copied into every worker. NumPy's ``SeedSequence`` turns a tuple of integers into an
independent, well-mixed stream, so ``sample_rng(seed, epoch, index)`` is such a function.
"""

from __future__ import annotations

import numpy as np

from kexue._checks import positive_int


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` in ``epoch``: the same in every worker, different for every key."""
    key = [positive_int(name, value, minimum=0) for name, value in (("seed", seed), ("epoch", epoch),
                                                                     ("index", index))]
    return np.random.default_rng(np.random.SeedSequence(key))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on (seed, epoch)."""
    n = positive_int("n", n)
    key = [positive_int("seed", seed, minimum=0), positive_int("epoch", epoch, minimum=0), 2**32]  # not an index
    return np.random.default_rng(np.random.SeedSequence(key)).permutation(n)

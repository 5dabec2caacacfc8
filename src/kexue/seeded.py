"""Randomness that does not depend on who computes it: generators keyed by (seed, epoch, index) (chapter 03).

A data pipeline read by several workers, threads or processes, stays reproducible only if the random
numbers used for a sample are a function of *which* sample it is, not of which worker happens to draw it or
of a generator state copied into every worker. NumPy's ``SeedSequence`` turns a list of 32-bit words into an
independent, well-mixed stream; :func:`key_words` turns (purpose, seed, epoch, index) into such a list
*injectively*, so ``sample_rng(seed, epoch, index)`` is such a function and two different keys never share a
stream (eq. seeded-batch).
"""

from __future__ import annotations

import numpy as np

from kexue._checks import positive_int

SAMPLE, ORDER = 0, 1  # the purpose word: a sample's augmentation, or an epoch's order


def key_words(purpose: int, *components: int) -> list[int]:
    """An injective encoding of non-negative integers as 32-bit words: each one as [word count, words...].

    ``SeedSequence([a, b])`` splits every integer into 32-bit words and concatenates them, so a flat key is not
    injective (``[2**32 + 5, 7]`` and ``[5, 1, 7]`` give the same words); the count in front of each
    component makes the words parse back into exactly one tuple.
    """
    words = [positive_int("purpose", purpose, minimum=0)]
    for value in components:
        chunk, value = [], int(value)
        while True:
            chunk.append(value & 0xFFFFFFFF)
            value >>= 32
            if not value:
                break
        words += [len(chunk), *chunk]
    return words


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` in ``epoch``: the same in every worker, different for every key."""
    key = [positive_int(name, value, minimum=0) for name, value in (("seed", seed), ("epoch", epoch),
                                                                     ("index", index))]
    return np.random.default_rng(np.random.SeedSequence(key_words(SAMPLE, *key)))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on (seed, epoch)."""
    n = positive_int("n", n)
    key = [positive_int("seed", seed, minimum=0), positive_int("epoch", epoch, minimum=0)]
    return np.random.default_rng(np.random.SeedSequence(key_words(ORDER, *key))).permutation(n)

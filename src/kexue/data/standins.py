"""Stand-ins of the real shapes for MNIST and CIFAR-10, and the full-scale loader that uses them in a rehearsal.

A rehearsal (``KEXUE_REHEARSAL=1``, see :mod:`kexue.scale`) runs every chapter's full configuration
on a machine with no GPU and no network. The code paths, the memory of dataset-wide passes and the
shapes must be those of the real run, the numbers need not be: so where the real files are absent
a rehearsal loads a *stand-in* with the real sizes, and says so in :attr:`Split.name`. Outside a
rehearsal :func:`full_scale` is the real loader with ``download=True``; it never switches silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kexue._checks import one_of, positive_int
from kexue.data.cifar10_loader import cifar10
from kexue.data.common import Split, check_split
from kexue.data.mnist_loader import mnist
from kexue.data.packaged import digits, image_patches
from kexue.scale import rehearsal

#: (train size, test size, height, width, channels) of the real data sets.
SHAPES = {"mnist": (60_000, 10_000, 28, 28, 1), "cifar10": (50_000, 10_000, 32, 32, 3)}
LOADERS = {"mnist": mnist, "cifar10": cifar10}
STANDIN_PREFIX = "stand-in for"


def standin(name: str, split: str = "train", n: int | None = None, seed: int = 0) -> Split:
    """A stand-in for ``name`` ("mnist" or "cifar10") with the real shape, dtype and label range.

    MNIST's stand-in: scikit-learn's 8x8 digits enlarged to 20x20 and placed, shifted by up to 2
    pixels, in a 28x28 frame (MNIST centres each digit's 20x20 box), labels the digits' own. CIFAR-10's:
    random 32x32 patches of scikit-learn's two sample photos, labels drawn uniformly from 0..9. ``n``
    defaults to the real split's size. The name starts with "stand-in for" so that no reader mistakes it.
    """
    one_of("name", name, tuple(SHAPES))
    train = check_split(split)
    n_train, n_test, height, width, channels = SHAPES[name]
    n = positive_int("n", n if n is not None else (n_train if train else n_test))
    rng = np.random.default_rng([seed, int(train), len(name)])
    if name == "mnist":
        source = digits()
        small = source.x[..., 0]
        # bilinear 8x8 -> 20x20 on pixel centres
        grid = (np.arange(20) + 0.5) * 8 / 20 - 0.5
        low = np.clip(np.floor(grid).astype(int), 0, 7)
        high = np.clip(low + 1, 0, 7)
        frac = np.clip(grid - low, 0, 1).astype(np.float32)
        rows = small[:, low] * (1 - frac)[None, :, None] + small[:, high] * frac[None, :, None]
        big = rows[:, :, low] * (1 - frac)[None, None, :] + rows[:, :, high] * frac[None, None, :]
        pick = rng.integers(len(big), size=n)
        x = np.zeros((n, height, width, channels), dtype=np.float32)
        shifts = rng.integers(-2, 3, size=(n, 2))
        for shift in {tuple(s) for s in shifts}:
            rows_at = np.flatnonzero((shifts == shift).all(axis=1))
            top, left = 4 + shift[0], 4 + shift[1]
            x[rows_at, top : top + 20, left : left + 20, 0] = big[pick[rows_at]]
        y = source.y[pick]
    else:
        x = image_patches(n, size=height, seed=int(rng.integers(2**31)))
        y = rng.integers(10, size=n).astype(np.int64)
    return Split(x=x, y=y, name=f"{STANDIN_PREFIX} {'MNIST' if name == 'mnist' else 'CIFAR-10'} ({split}), "
                 f"{'enlarged sklearn digits' if name == 'mnist' else 'patches of sklearn photos, random labels'}")


def is_standin(split: Split) -> bool:
    """True when ``split`` came from :func:`standin` (its name says so)."""
    return split.name.startswith(STANDIN_PREFIX)


def full_scale(name: str, split: str = "train", root: str | Path | None = None) -> Split:
    """The real ``name`` ("mnist" or "cifar10"), downloaded if needed; in a rehearsal, a labelled stand-in.

    Outside a rehearsal this is ``mnist(split, root, download=True)`` or ``cifar10(...)``: a failed
    download raises. In a rehearsal the real files are used when they are already on disk (no download
    is tried: a rehearsal has no network), and :func:`standin` otherwise.
    """
    one_of("name", name, tuple(SHAPES))
    check_split(split)
    loader = LOADERS[name]
    if not rehearsal():
        return loader(split, root=root, download=True)
    try:
        return loader(split, root=root, download=False)
    except FileNotFoundError:
        return standin(name, split)

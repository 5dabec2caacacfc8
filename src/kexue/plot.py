"""One figure style for the whole book."""

from __future__ import annotations

from typing import Any

import matplotlib as mpl

#: Colour-blind safe palette (Okabe and Ito, 2008), used in this order by every chapter.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def use_style(**overrides: Any) -> None:
    """Apply the book's matplotlib style (readable sizes, light grid, the palette); ``overrides`` win."""
    style = {
        "figure.figsize": (7.0, 4.0),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 12,
        "axes.labelsize": 11,
        "legend.frameon": False,
        "axes.prop_cycle": mpl.cycler(color=list(PALETTE)),
    }
    style.update(overrides)
    mpl.rcParams.update(style)


def image_grid(images: "np.ndarray", rows: int, cols: int, pad: int = 1, fill: float = 0.0) -> "np.ndarray":
    """Tile ``rows * cols`` grey images of shape (h, w) into one array, ``pad`` pixels of ``fill`` between them."""
    import numpy as np

    images = np.asarray(images, dtype=float)
    if images.ndim != 3 or len(images) != rows * cols:
        raise ValueError(f"`images` must have shape ({rows * cols}, height, width), got {images.shape}")
    h, w = images.shape[1:]
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), fill)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = image
    return grid

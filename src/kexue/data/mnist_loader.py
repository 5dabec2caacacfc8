"""MNIST from its original IDX files (LeCun et al., 1998), with no torchvision or keras needed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from kexue.data.common import Split, check_split, default_root, fetch

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
#: File names and their published MD5 checksums.
FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# IDX type codes (the third byte of the magic number) and the numpy dtype they stand for.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic ``0 0 type ndim``, ``ndim`` big-endian sizes, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header promises {expected} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def mnist(
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    mirrors: tuple[str, ...] = MIRRORS,
) -> Split:
    """Load MNIST ``split`` ("train": 60,000 images, "test": 10,000) as 28x28x1 floats in [0, 1].

    Files are looked for in ``root`` (default :func:`kexue.data.common.default_root` ``/mnist``) and,
    with ``download=True``, fetched from ``mirrors`` and checked against the published MD5 sums.
    """
    train = check_split(split)
    folder = Path(root) if root is not None else default_root() / "mnist"
    prefix = "train" if train else "t10k"
    arrays = []
    for kind in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        name = f"{prefix}-{kind}"
        path = folder / name
        if not path.exists():
            if not download:
                raise FileNotFoundError(f"{path} not found; pass download=True to fetch MNIST")
            fetch([m + name for m in mirrors], path, FILES[name])
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"MNIST files in {folder} disagree: images {images.shape}, labels {labels.shape}")
    x = (images.astype(np.float32) / 255.0)[..., None]
    return Split(x=x, y=labels.astype(np.int64), name=f"MNIST ({split})")

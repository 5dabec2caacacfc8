"""CIFAR-10 from the "python version" archive of Krizhevsky (2009)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from kexue.data.common import Split, check_split, default_root, fetch

URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10(
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    urls: tuple[str, ...] = URLS,
    checksum: str | None = ARCHIVE_MD5,
) -> Split:
    """Load CIFAR-10 ``split`` ("train": 50,000 images, "test": 10,000) as 32x32x3 floats in [0, 1].

    Reads the batches straight out of ``cifar-10-python.tar.gz`` in ``root`` (default
    ``default_root()/cifar10``); ``download=True`` fetches the archive and checks its MD5.
    """
    train = check_split(split)
    folder = Path(root) if root is not None else default_root() / "cifar10"
    archive = folder / ARCHIVE
    if not archive.exists():
        if not download:
            raise FileNotFoundError(f"{archive} not found; pass download=True to fetch CIFAR-10")
        fetch(list(urls), archive, checksum)
    wanted = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    with tarfile.open(archive, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name in wanted:
            if name not in members:
                raise ValueError(f"{archive} has no member {name!r}: not a CIFAR-10 python archive")
            # The archive is a trusted, checksummed download: its batches are pickled dicts.
            batch = pickle.load(tar.extractfile(members[name]), encoding="bytes")  # noqa: S301
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    x = np.concatenate(images).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return Split(x=x, y=np.concatenate(labels), name=f"CIFAR-10 ({split})")

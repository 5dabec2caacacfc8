"""What every image loader returns, and the checked download they share."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """Images ``x`` (float32 in [0, 1], shape ``(n, height, width, channels)``), labels ``y`` (int64)."""

    x: np.ndarray
    y: np.ndarray
    name: str


def default_root() -> Path:
    """Where downloads go: ``$KEXUE_DATA`` if set, else ``~/.cache/kexue``."""
    return Path(os.environ.get("KEXUE_DATA", Path.home() / ".cache" / "kexue"))


def md5(path: Path) -> str:
    """The MD5 hex digest of a file (the published checksums of MNIST and CIFAR-10 are MD5)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(urls: list[str], target: Path, checksum: str | None) -> Path:
    """Download ``target`` from the first of ``urls`` that answers with a file of the right ``checksum``.

    Each attempt writes to a temporary file that is renamed only once its checksum matches, so an
    interrupted download never leaves a corrupt file behind. Raises ``OSError`` listing every failure.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            partial = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
            got = md5(partial)
            if checksum is not None and got != checksum:
                raise OSError(f"checksum mismatch: expected md5 {checksum}, got {got}")
            partial.replace(target)
            return target
        except OSError as error:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {error}")
        finally:
            partial.unlink(missing_ok=True)
    raise OSError(f"could not download {target.name}:\n  " + "\n  ".join(failures))


def check_split(split: str) -> bool:
    """``"train"`` -> True, ``"test"`` -> False; anything else is a ``ValueError``."""
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
    return split == "train"

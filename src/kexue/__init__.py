"""kexue: the shared, tested code behind the book's chapters.

Importing :mod:`kexue` is cheap: it never imports torch, tensorflow or keras. The framework
specific parts live in :mod:`kexue.torch` and :mod:`kexue.keras`.
"""

from kexue.device import device
from kexue.progress_bar import progress
from kexue.random import seed_everything
from kexue.scale import Scale, pick, rehearsal, scale

__version__ = "0.2.0"

__all__ = ["Scale", "__version__", "device", "pick", "progress", "rehearsal", "scale", "seed_everything"]

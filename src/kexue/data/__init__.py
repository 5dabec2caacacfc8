"""Data for the experiments.

Quick scale uses only data that ships inside installed packages or is generated (no network):
:func:`digits`, :func:`image_patches`, :func:`toy_2d`. Full scale may download real MNIST and
CIFAR-10 with :func:`mnist` and :func:`cifar10`, or :func:`full_scale`, which in a rehearsal
(``KEXUE_REHEARSAL=1``) falls back to a :func:`standin` of the real shape whose name says so. No
loader ever switches datasets silently: a missing file with ``download=False`` raises, a failed
download raises.
"""

from kexue.data.cifar10_loader import cifar10
from kexue.data.common import Split
from kexue.data.mnist_loader import mnist
from kexue.data.packaged import digits, image_patches
from kexue.data.standins import full_scale, is_standin, standin
from kexue.data.toy import TOY_2D, toy_2d

__all__ = [
    "TOY_2D", "Split", "cifar10", "digits", "full_scale", "image_patches", "is_standin", "mnist", "standin",
    "toy_2d",
]

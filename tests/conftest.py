"""Shared test settings: quick scale, no progress bars, quiet TensorFlow (the nbval kernels inherit them)."""

import os

os.environ.setdefault("KEXUE_SCALE", "quick")
os.environ.setdefault("KEXUE_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure(config):
    config.addinivalue_line("markers", "built_book: checks of the built HTML book (run by .ci/book after the build)")

"""Shared test settings: no progress bars, quiet TensorFlow (the nbval kernels inherit them), and the
plugin that hands nbval's execution of each notebook to the book build (tests/executed_cache.py).

The scale is left alone: notebooks follow KEXUE_SCALE, or the hardware when it is unset.
"""

import os

os.environ.setdefault("KEXUE_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure(config):
    from tests import executed_cache

    executed_cache.pytest_configure(config)
    config.addinivalue_line("markers", "built_book: checks of the built HTML book (run by .ci/book after the build)")

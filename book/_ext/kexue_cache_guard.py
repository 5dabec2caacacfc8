"""Render only outputs of the current code: empty the execution cache when its stamp is stale.

The book runs MyST-NB in ``cache`` mode so that it renders the outputs of the nbval run that tested each
chapter (``tests/executed_cache.py``). MyST-NB keys that cache on a notebook's code cells alone; this
extension adds the rest of what outputs depend on (kexue's sources, the pins, the installed versions,
the scale and the relevant environment) by emptying the cache, before any notebook is read, whenever
the stamp stored with it differs from the current one. It acts on every build, ``jupyter-book build .``
as much as ``.ci/book``.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def discard_stale_outputs(app, config) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.executed_cache import discard_stale

    discard_stale()


def setup(app):
    app.connect("config-inited", discard_stale_outputs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

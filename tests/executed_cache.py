"""One execution of each notebook per CI job: what nbval ran is what the book renders.

nbval executes every chapter's ``.ipynb`` twin as a test. This pytest plugin collects the outputs of
that execution cell by cell and, when every code cell of a notebook has passed, stores the executed
notebook in the book's jupyter-cache (``_build/.jupyter_cache``), keyed exactly as MyST-NB keys the
chapter's MyST source. ``jupyter-book build`` runs with ``execute_notebooks: cache``, so it renders those
outputs instead of executing the chapter a second time. A notebook with a failing, skipped or missing
cell is not stored: the build then executes it itself and, with ``raise_on_error``, fails on it too.

Outputs depend on more than the notebook's code: on ``kexue``, the pinned versions and the scale. The
cache carries a stamp of all of these (:func:`execution_stamp`); when the stamp in the cache differs
from the current one, the cache is emptied before anything is stored, and every book build empties it
before reading a notebook (``book/_ext/kexue_cache_guard.py``), so the book never shows outputs of other
code or another scale. :func:`cache_records` lets CI check that the build executed nothing itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
STAMP_NAME = "kexue-execution-stamp"


def cache_path() -> Path:
    """Where MyST-NB keeps the book's jupyter-cache (``$KEXUE_NB_CACHE`` overrides it, for tests)."""
    return Path(os.environ.get("KEXUE_NB_CACHE", ROOT / "_build" / ".jupyter_cache"))


#: Environment variables that change what a chapter computes or shows: by prefix, and by name.
ENV_PREFIXES = ("KEXUE_", "KERAS_", "TF_", "CUDA_", "OMP_", "MKL_")
ENV_NAMES = ("MPLBACKEND", "PYTHONHASHSEED")
#: ... except those that only say where things are or what CI checks, not what a chapter computes.
ENV_IGNORED = ("KEXUE_NB_CACHE", "KEXUE_EXPECT_CACHED", "KEXUE_VENV")


def execution_stamp(root: Path = ROOT) -> str:
    """A digest of what a notebook's outputs depend on besides its code cells.

    The package's sources and the dependency pins, the Python and the installed distributions with their
    versions, the scale (with the rehearsal and the device it implies), and the environment variables that
    change what a chapter computes or shows (``KEXUE_*``, ``KERAS_*`` such as the Keras backend,
    ``TF_*``, ...), less :data:`ENV_IGNORED`.
    """
    import importlib.metadata
    import platform

    import kexue

    digest = hashlib.sha256()
    files = sorted((root / "src").rglob("*.py")) + [root / "requirements.txt", root / ".ci" / "constraints.txt"]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    variables = sorted((k, v) for k, v in os.environ.items()
                       if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES) and k not in ENV_IGNORED)
    environment = (platform.python_version(), installed, kexue.scale(), kexue.rehearsal(), variables)
    digest.update(repr(environment).encode())
    return digest.hexdigest()


def discard_stale(stamp: str | None = None) -> bool:
    """Empty the cache unless it was filled under ``stamp`` (default: the current one); True if emptied.

    The book build calls this before reading any notebook (``book/_ext/kexue_cache_guard.py``), so that only
    outputs of the current code are rendered.
    """
    cache, stamp = cache_path(), stamp or execution_stamp()
    marker = cache / STAMP_NAME
    if cache.exists() and (not marker.exists() or marker.read_text().strip() != stamp):
        shutil.rmtree(cache)
        return True
    return False


def cache_records() -> list[tuple[int, str, str]]:
    """(primary key, notebook hash, creation time) of every cached notebook, for comparing before and after a build."""
    if not cache_path().exists():
        return []
    from jupyter_cache import get_cache

    return sorted((r.pk, r.hashkey, r.created.isoformat()) for r in get_cache(str(cache_path())).list_cache_records())


def open_cache(stamp: str):
    """The book's jupyter-cache, emptied first if it was filled under another stamp."""
    from jupyter_cache import get_cache

    discard_stale(stamp)
    cache_path().mkdir(parents=True, exist_ok=True)
    cache = get_cache(str(cache_path()))
    (cache_path() / STAMP_NAME).write_text(stamp + "\n")
    return cache


def myst_notebook(md: Path) -> nbformat.NotebookNode:
    """The chapter's MyST source read as MyST-NB reads it for the build (so the cache keys agree)."""
    from myst_nb.core.read import read_myst_markdown_notebook

    return read_myst_markdown_notebook(md.read_text(encoding="utf8"), add_source_map=True, path=md)


def executed_notebook(md: Path, cells: list[tuple[str, list, float]]) -> nbformat.NotebookNode:
    """The MyST notebook of ``md`` with the outputs nbval recorded for its code cells, in order.

    ``cells`` holds one ``(source, outputs, seconds)`` per code cell as nbval ran them from the
    ``.ipynb`` twin; a source that differs from the MyST cell's is a ``ValueError`` (the twins disagree).
    """
    notebook = myst_notebook(md)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if len(code) != len(cells):
        raise ValueError(f"{md.name}: {len(code)} code cells in the source, {len(cells)} executed")
    for number, (cell, (source, outputs, _)) in enumerate(zip(code, cells), start=1):
        if cell.source != source:
            raise ValueError(f"{md.name}: code cell {number} differs from its .ipynb twin (run jupytext --sync)")
        cell.outputs = [nbformat.from_dict(dict(output)) for output in outputs]
        cell.execution_count = number
        for output in cell.outputs:
            if output.output_type == "execute_result":
                output.execution_count = number
    return notebook


class ExecutedNotebooks:
    """The plugin: gathers nbval's cell outputs and caches each notebook that passed as a whole.

    A notebook that nbval ran but did not pass as a whole loses any entry an earlier run stored for the
    same code, so the build executes it again and fails where the test failed. Nothing is stored when the
    stamp changed while the tests ran (an edit of ``src/`` mid-run), and a notebook that cannot be stored
    is reported as a warning, not as an error after every test passed.
    """

    def __init__(self) -> None:
        self.runs: dict[Path, dict] = {}
        self.stamp: str | None = None

    def pytest_sessionstart(self, session):
        self.stamp = execution_stamp()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not hasattr(item, "test_outputs") or not hasattr(item, "cell_num"):
            return  # not an nbval cell
        ipynb = Path(str(item.parent.fspath))
        run = self.runs.setdefault(ipynb, {"cells": {}, "failed": False, "total": None})
        if run["total"] is None:
            run["total"] = sum(1 for c in item.parent.nb.cells if c.cell_type == "code")
        if report.failed or report.skipped:
            run["failed"] = True
        if report.when == "call" and report.passed:
            run["cells"][item.cell_num] = (item.cell.source, list(item.test_outputs or []), report.duration)

    def pytest_sessionfinish(self, session):
        runs = {ipynb: run for ipynb, run in self.runs.items() if ipynb.with_suffix(".md").exists()}
        if not runs:
            return
        from jupyter_cache.base import CacheBundleIn

        stamp = execution_stamp()
        if stamp != self.stamp:
            warnings.warn("kexue, the environment or the pins changed while the notebooks ran: nothing cached")
            discard_stale(stamp)
            return
        cache = open_cache(stamp)
        for ipynb, run in runs.items():
            md = ipynb.with_suffix(".md")
            try:
                with contextlib.suppress(KeyError):  # no entry for this code yet
                    cache.remove_cache(cache.match_cache_notebook(myst_notebook(md)).pk)
                if run["failed"] or len(run["cells"]) != run["total"]:
                    continue
                cells = [run["cells"][n] for n in sorted(run["cells"])]
                cache.cache_notebook_bundle(
                    CacheBundleIn(executed_notebook(md, cells), str(md),
                                  data={"execution_seconds": sum(duration for _, _, duration in cells)}),
                    check_validity=False,
                    overwrite=True,
                )
            except Exception as error:  # noqa: BLE001 - a cache failure must not fail a passing test run
                warnings.warn(f"{md.name}: not cached, the book build will execute it ({error!r})")


def pytest_configure(config):
    """Register the plugin when this module is loaded with ``-p tests.executed_cache``."""
    if not config.pluginmanager.has_plugin("kexue-executed-notebooks"):
        config.pluginmanager.register(ExecutedNotebooks(), "kexue-executed-notebooks")


if __name__ == "__main__":  # `python -m tests.executed_cache`: the cache's records, one per line
    for record in cache_records():
        print(*record)

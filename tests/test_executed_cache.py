"""One execution per job: nbval's outputs land in the book's jupyter-cache, keyed as MyST-NB keys the source.

Each test runs nbval in a subprocess on a tiny MyST notebook and its .ipynb twin, then asks jupyter-cache
the question the book build asks (``match_cache_notebook`` on the MyST source read by MyST-NB).
"""

import os
import subprocess
import sys
import textwrap

import jupytext
import pytest
from jupyter_cache import get_cache

from tests.executed_cache import ROOT, STAMP_NAME, discard_stale, execution_stamp, myst_notebook

HEADER = textwrap.dedent("""\
    ---
    jupytext:
      formats: ipynb,md:myst
      text_representation:
        extension: .md
        format_name: myst
        format_version: 0.13
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---

    # A tiny chapter
    """)


def write_pair(folder, second_cell: str):
    md = folder / "tiny.md"
    md.write_text(HEADER + "\n```{code-cell} ipython3\nprint('hello from nbval')\n```\n\n"
                  f"Some prose.\n\n```{{code-cell}} ipython3\n{second_cell}\n```\n")
    jupytext.write(jupytext.read(md), md.with_suffix(".ipynb"), fmt="ipynb")
    return md


def run_nbval(md, cache, **variables):
    env = {**os.environ, "KEXUE_NB_CACHE": str(cache), **variables}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.executed_cache",
         "--nbval-lax", "--nbval-current-env", str(md.with_suffix(".ipynb"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_a_passing_notebook_is_cached_under_its_myst_source(tmp_path):
    md = write_pair(tmp_path, "6 * 7")
    result = run_nbval(md, tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    cache = get_cache(str(tmp_path / "cache"))
    _, merged = cache.merge_match_into_notebook(myst_notebook(md))  # KeyError if the keys disagree
    code = [c for c in merged.cells if c.cell_type == "code"]
    assert code[0].outputs[0].text == "hello from nbval\n"
    assert code[1].outputs[0].data["text/plain"] == "42" and code[1].execution_count == 2
    # the stamp names the code and scale the outputs came from (its value moves with every edit of src/)
    assert len((tmp_path / "cache" / STAMP_NAME).read_text().strip()) == 64


@pytest.mark.slow
def test_a_notebook_that_fails_loses_the_entry_an_earlier_pass_stored(tmp_path):
    """Same code, passing then failing (its data or kexue changed): the build must not render the old pass."""
    md = write_pair(tmp_path, "import os\nassert os.environ.get('PLANTED') != '1', 'planted failure'")
    assert run_nbval(md, tmp_path / "cache").returncode == 0
    assert get_cache(str(tmp_path / "cache")).match_cache_notebook(myst_notebook(md))
    result = run_nbval(md, tmp_path / "cache", PLANTED="1")
    assert result.returncode != 0 and "planted failure" in result.stdout
    if (tmp_path / "cache").exists():
        with pytest.raises(KeyError):
            get_cache(str(tmp_path / "cache")).match_cache_notebook(myst_notebook(md))


def test_an_edited_cell_misses_the_cache(tmp_path, monkeypatch):
    """The key is the code: an edit after the test run makes the build execute the chapter again."""
    monkeypatch.setenv("KEXUE_NB_CACHE", str(tmp_path / "cache"))
    first, second = myst_notebook(write_pair(tmp_path, "6 * 7")), None
    cache = get_cache(str(tmp_path / "cache"))
    from jupyter_cache.base import CacheBundleIn

    cache.cache_notebook_bundle(CacheBundleIn(first, "tiny.md"), check_validity=False)
    assert cache.match_cache_notebook(first)
    second = myst_notebook(write_pair(tmp_path, "6 * 8"))
    with pytest.raises(KeyError):
        cache.match_cache_notebook(second)


def test_a_stale_stamp_empties_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KEXUE_NB_CACHE", str(cache))
    cache.mkdir()
    (cache / STAMP_NAME).write_text(execution_stamp() + "\n")
    assert not discard_stale() and cache.exists()
    (cache / STAMP_NAME).write_text("filled by other code\n")
    assert discard_stale() and not cache.exists()


def test_the_stamp_follows_the_scale(monkeypatch):
    monkeypatch.setenv("KEXUE_SCALE", "quick")
    monkeypatch.delenv("KEXUE_REHEARSAL", raising=False)
    quick = execution_stamp()
    monkeypatch.setenv("KEXUE_SCALE", "full")
    assert execution_stamp() != quick


def test_the_stamp_follows_the_code_the_pins_and_the_keras_backend(tmp_path, monkeypatch):
    (tmp_path / "src" / "kexue").mkdir(parents=True)
    (tmp_path / ".ci").mkdir()
    (tmp_path / "src" / "kexue" / "mod.py").write_text("x = 1\n")
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / ".ci" / "constraints.txt").write_text("numpy==2.0\n")
    first = execution_stamp(tmp_path)
    (tmp_path / "src" / "kexue" / "mod.py").write_text("x = 2\n")
    edited = execution_stamp(tmp_path)
    (tmp_path / ".ci" / "constraints.txt").write_text("numpy==2.1\n")
    repinned = execution_stamp(tmp_path)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    other_backend = execution_stamp(tmp_path)
    assert len({first, edited, repinned, other_backend}) == 4
    monkeypatch.setenv("KEXUE_NB_CACHE", str(tmp_path / "elsewhere"))  # where the cache is does not matter
    assert execution_stamp(tmp_path) == other_backend

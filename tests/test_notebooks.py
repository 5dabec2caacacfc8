"""The chapters' contract (BOOK.md): paired and stripped twins, the setup cell, the badge, the essay."""

import json
import sys
import types

import jupytext
import pytest

from tests.book_meta import NOTEBOOKS, ROOT, colab_url, config, release_tag, repository, setup_cell, version

CHAPTERS = [
    "01_gradient_accumulation", "02_lookahead_lazy", "03_keras_cooler", "04_batchnorm",
    "05_wasserstein", "06_energy_models", "07_reparameterization", "08_vq_vae",
]
ids = [p.stem for p in NOTEBOOKS]


def test_there_are_chapters_and_only_known_ones():
    assert NOTEBOOKS, "no notebooks/NN_slug.md found"
    assert {p.stem for p in NOTEBOOKS} <= set(CHAPTERS)


@pytest.mark.parametrize("md", NOTEBOOKS, ids=ids)
def test_ipynb_twin_is_in_sync_and_stripped(md):
    twin = md.with_suffix(".ipynb")
    assert twin.exists(), f"{twin.name} is missing: run `jupytext --sync {md.relative_to(ROOT)}`"
    text = jupytext.read(md)
    raw = json.loads(twin.read_text())
    notebook = jupytext.read(twin)
    source = [(c.cell_type, c.source) for c in text.cells]
    paired = [(c.cell_type, c.source) for c in notebook.cells]
    assert source == paired, f"{twin.name} is out of sync with {md.name}: run `jupytext --sync`"
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{twin.name} has outputs"
    assert raw["metadata"]["jupytext"]["formats"] == "ipynb,md:myst"


@pytest.mark.parametrize("md", NOTEBOOKS, ids=ids)
def test_first_code_cell_is_the_setup_cell(md):
    code = [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]
    assert code[0] == setup_cell(), "the setup cell differs from tests/book_meta.py:setup_cell()"


@pytest.mark.parametrize("md", NOTEBOOKS, ids=ids)
def test_badge_opens_the_ipynb_twin_on_colab(md):
    text = md.read_text()
    badge = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    assert f"{badge}({colab_url(md)})" in text
    assert text.count("colab.research.google.com/github/") == 1


@pytest.mark.parametrize("md", NOTEBOOKS, ids=ids)
def test_chapter_cites_its_essay_prints_its_scale_and_checks(md):
    text = md.read_text()
    assert "https://kexue.fm/archives/" in text
    assert "{cite}`" in text
    code = "\n".join(c.source for c in jupytext.read(md).cells if c.cell_type == "code")
    assert "kexue.scale()" in code and "print(" in code
    assert code.count("assert ") >= 3


def test_every_chapter_is_in_the_toc_and_ipynb_are_excluded_from_the_build():
    toc = (ROOT / "_toc.yml").read_text()
    for md in NOTEBOOKS:
        assert f"file: notebooks/{md.stem}\n" in toc
    assert "notebooks/*.ipynb" in config()["exclude_patterns"]


def test_config_fails_the_build_on_errors():
    execute = config()["execute"]
    assert execute["execute_notebooks"] == "cache"  # filled by nbval, see tests/executed_cache.py
    assert execute["raise_on_error"] is True and execute["allow_errors"] is False
    assert config()["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_the_release_pins_agree():
    """pyproject, kexue.__version__, the launch buttons' revision and (above) every setup cell and badge."""
    import kexue

    assert kexue.__version__ == version(), "bump src/kexue/__init__.py with pyproject.toml (use .ci/release)"
    assert repository()[2] == release_tag(), "_config.yml repository.branch must be the release tag"


def run_setup_cell(on_colab: bool, release: str | None = None) -> list[str]:
    """Execute the setup cell as IPython would (magics transformed), recording the %pip lines it runs."""
    from IPython.core.inputtransformer2 import TransformerManager

    calls: list[str] = []

    class Shell:
        def run_line_magic(self, name, line):
            calls.append(f"%{name} {line}")

    code = TransformerManager().transform_cell(setup_cell(release))
    saved = sys.modules.get("google.colab")
    if on_colab:
        sys.modules["google.colab"] = types.ModuleType("google.colab")
    else:
        sys.modules.pop("google.colab", None)
    try:
        exec(compile(code, "<setup cell>", "exec"), {"get_ipython": lambda: Shell()})
    finally:
        sys.modules.pop("google.colab", None)
        if saved is not None:
            sys.modules["google.colab"] = saved
    return calls


def test_setup_cell_installs_the_release_on_colab_only_and_checks_it_everywhere():
    url, _, _ = repository()
    assert run_setup_cell(on_colab=False) == []
    calls = run_setup_cell(on_colab=True)
    assert calls == [f'%pip install --quiet "kexue @ git+{url}@{release_tag()}"']
    assert not any(name in calls[0] for name in ("torch", "tensorflow", "keras", "-U", "--upgrade"))
    with pytest.raises(AssertionError, match="release 9.9.9 of the book; it imported kexue"):
        run_setup_cell(on_colab=False, release="9.9.9")  # a notebook never runs against another kexue


def test_a_released_version_is_not_changed_after_its_tag():
    """Once v<version> is tagged, notebooks and kexue on this commit must be that tag's, or a new release.

    The setup cell installs the tag on Colab and checks only the version string; a commit that changes
    src/ or notebooks/ after the tag without `.ci/release` would run other code than the one installed.
    """
    import subprocess

    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    tags = subprocess.run([*git, "tag", "--list", release_tag()], capture_output=True, text=True).stdout.split()
    if not tags:
        return  # the release is not tagged yet: this commit is (part of) what the tag will name
    changed = subprocess.run([*git, "diff", "--name-only", release_tag(), "--", "src", "notebooks"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert not changed, f"{release_tag()} is tagged but these changed since; run .ci/release X.Y.Z: {changed}"

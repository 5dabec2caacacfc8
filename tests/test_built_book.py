"""Checks of the built HTML (.ci/book runs them right after `jupyter-book build`)."""

import re

import pytest

from tests.book_meta import NOTEBOOKS, ROOT, colab_url

HTML = ROOT / "_build" / "html"
pytestmark = pytest.mark.built_book
ids = [p.stem for p in NOTEBOOKS]


@pytest.fixture(scope="module", autouse=True)
def built():
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `bash .ci/book`")


@pytest.mark.parametrize("md", NOTEBOOKS, ids=ids)
def test_launch_button_and_badge_open_the_ipynb(md):
    page = (HTML / "notebooks" / f"{md.stem}.html").read_text()
    links = set(re.findall(r'href="(https://colab\.research\.google\.com/github/[^"]+)"', page))
    assert links == {colab_url(md)}, links  # the header's launch button and the badge, both to the .ipynb
    assert page.count(colab_url(md)) >= 2


@pytest.mark.parametrize("md", NOTEBOOKS, ids=ids)
def test_pages_carry_figures_and_no_widget_debris(md):
    page = (HTML / "notebooks" / f"{md.stem}.html").read_text()
    assert "<img" in page and "_images/" in page
    for debris in ("HBox(", "IntProgress(", "FloatProgress(", "Traceback (most recent call last)"):
        assert debris not in page, debris


def test_execution_status_page_lists_every_chapter():
    page = (HTML / "book" / "execution.html").read_text()
    for md in NOTEBOOKS:
        assert md.stem in page
    assert "❌" not in page


@pytest.mark.parametrize("md", NOTEBOOKS, ids=ids)
def test_citations_link_to_the_chapters_own_reference_list(md):
    page = (HTML / "notebooks" / f"{md.stem}.html").read_text()
    targets = re.findall(r'<span class="bibtex-citation"[^>]*>\[<a class="reference internal" href="([^"]+)"', page)
    assert targets, "no citations rendered"
    assert all(t.startswith("#") for t in targets), [t for t in targets if not t.startswith("#")]

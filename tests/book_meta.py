"""What the book's configuration says: the repository (one place, _config.yml), the release, the chapters.

Every chapter is pinned to one release of the repository, ``v<version>`` with the version of
pyproject.toml: its setup cell installs kexue at that tag on Colab (and checks the version anywhere
else), its Colab badge and the book's launch buttons open the notebook at that tag. ``.ci/release``
moves all of them together; the commit it makes is the one to tag.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def version() -> str:
    """The package's version, from pyproject.toml (its one ``version = "..."`` line)."""
    found = re.findall(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert len(found) == 1, f"pyproject.toml must have exactly one version line, found {found}"
    return found[0]


def release_tag() -> str:
    """The git tag of the release every chapter is pinned to: ``v`` and the version."""
    return f"v{version()}"


def repository() -> tuple[str, str, str]:
    """(url, "owner/name", revision) from _config.yml; the revision is the release tag."""
    repo = config()["repository"]
    url = repo["url"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", url)
    assert match, f"repository.url in _config.yml is not a GitHub repository URL: {url}"
    return url, match.group(1), repo["branch"]


def setup_cell(release: str | None = None) -> str:
    """The setup cell every chapter starts with, pinned to the configured repository at ``release``.

    On Colab it installs kexue at the release's tag (never torch or tensorflow, which Colab ships);
    anywhere it then checks that the kexue it imports is that release, so a notebook never runs against
    other code unnoticed.
    """
    url, _, _ = repository()
    release = release or version()
    return (
        "# Setup, identical in every chapter. On Colab it installs kexue at this notebook's release (torch\n"
        "# and tensorflow come with Colab and are not reinstalled); anywhere it checks the kexue it imports.\n"
        "import sys\n"
        "\n"
        f'KEXUE_RELEASE = "{release}"\n'
        'if "google.colab" in sys.modules:\n'
        f'    %pip install --quiet "kexue @ git+{url}@v{release}"\n'
        "import kexue\n"
        "\n"
        "assert kexue.__version__ == KEXUE_RELEASE, (\n"
        '    f"this notebook is release {KEXUE_RELEASE} of the book; it imported kexue {kexue.__version__}")'
    )


def colab_url(notebook: Path) -> str:
    """Where the Colab badge of ``notebook`` (a .md) must point: its .ipynb twin at the release tag."""
    _, slug, branch = repository()
    relative = notebook.with_suffix(".ipynb").relative_to(ROOT).as_posix()
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{relative}"

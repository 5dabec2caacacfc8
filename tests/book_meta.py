"""What the book's configuration says: the repository (one place, _config.yml) and the chapters."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def repository() -> tuple[str, str, str]:
    """(url, "owner/name", branch) from _config.yml."""
    repo = config()["repository"]
    url = repo["url"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", url)
    assert match, f"repository.url in _config.yml is not a GitHub repository URL: {url}"
    return url, match.group(1), repo["branch"]


def setup_cell() -> str:
    """The setup cell every chapter must start with, pinned to the configured repository and branch."""
    url, _, branch = repository()
    return (
        "# Setup, identical in every chapter. On Colab it installs kexue at this notebook's revision\n"
        "# (torch and tensorflow come with Colab and are not reinstalled); anywhere else it does nothing.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install --quiet "kexue @ git+{url}@{branch}"'
    )


def colab_url(notebook: Path) -> str:
    """Where the Colab badge of ``notebook`` (a .md) must point: its .ipynb twin on the configured branch."""
    _, slug, branch = repository()
    relative = notebook.with_suffix(".ipynb").relative_to(ROOT).as_posix()
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{relative}"

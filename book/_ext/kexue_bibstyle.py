"""The book's bibliography style: pybtex's "alpha", plus an optional ``labelsuffix`` field per entry.

Each chapter lists its own references, so a label must mean one work across the whole book. Two works
with the same alpha label (Su's 2019 essays are all "Su19") get distinct labels from their
``labelsuffix`` field in references.bib ("Su19a", "Su19b", ...).
"""

from pybtex.plugin import register_plugin
from pybtex.style.formatting.alpha import Style as AlphaStyle
from pybtex.style.labels.alpha import LabelStyle as AlphaLabelStyle


class LabelStyle(AlphaLabelStyle):
    def format_label(self, entry):
        return super().format_label(entry) + entry.fields.get("labelsuffix", "")


class Style(AlphaStyle):
    default_label_style = LabelStyle


def setup(app):
    register_plugin("pybtex.style.formatting", "kexue", Style)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

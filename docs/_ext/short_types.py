"""Short type names in the API pages: ``Tensor``, not ``~torch.Tensor``.

With ``autodoc_typehints = "description"`` each parameter's type is written into its field as
``~torch.Tensor`` and the Python domain turns every name into a cross-reference, the ``~``
asking for the last component only. After a ``Literal[...]`` in a union, Sphinx 9 emits the
rest of the type as plain text, tilde and module path included (``Literal['pred'] | int |
~collections.abc.Sequence[int]``). This transform shortens what is left: in the types of field
lists (parameters, returns, attributes) a ``~a.b.C`` becomes ``C``. Code and prose are not
touched.
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes

_QUALIFIED = re.compile(r"~(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*)")


def _shorten(app: Any, doctree: nodes.document, docname: str) -> None:
    for field_list in doctree.findall(nodes.field_list):
        for text in list(field_list.findall(nodes.Text)):
            if "~" not in text or _inside_code(text):
                continue
            text.parent.replace(text, nodes.Text(_QUALIFIED.sub(r"\1", str(text))))


def _inside_code(node: nodes.Node) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, (nodes.literal, nodes.literal_block, nodes.doctest_block)):
            return True
        parent = parent.parent
    return False


def setup(app: Any) -> dict[str, Any]:
    """Register the transform (a Sphinx extension's entry point)."""
    app.connect("doctree-resolved", _shorten)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

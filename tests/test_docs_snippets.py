"""The Python examples of the README and of the docs' landing page run as written.

Doctests (``>>>``) in the docs are run by pytest itself; these two are plain code blocks, shown
without prompts so that they read (and copy) as a script, so they are run here.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _rst_blocks(path: Path) -> list[str]:
    blocks = []
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.strip() == ".. code-block:: python":
            body: list[str] = []
            for following in lines[index + 1 :]:
                if following.strip() and not following.startswith("   "):
                    break
                if not body and following.strip().startswith(":"):
                    continue  # the directive's options (":class: ..."), not code
                body.append(following)
            blocks.append(textwrap.dedent("\n".join(body)))
    return blocks


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(code, id=f"{name}-{number}")
        for name, blocks in [
            ("README", _readme_blocks()),
            ("index", _rst_blocks(ROOT / "docs" / "index.rst")),
        ]
        for number, code in enumerate(blocks)
    ],
)
def test_example_runs(code: str) -> None:
    assert code.strip()
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})


def test_both_pages_have_an_example() -> None:
    assert _readme_blocks()
    assert _rst_blocks(ROOT / "docs" / "index.rst")

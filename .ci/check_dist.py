"""Check what ``python -m build`` made: the sdist holds the tests, the wheel only the package.

    python .ci/check_dist.py DIST_DIR

Exits non-zero, saying what is wrong, unless DIST_DIR holds exactly one sdist and one wheel of
the version in ``src/netlens/_version.py``, the wheel holds nothing but ``netlens/`` (with its
``py.typed``) and its ``.dist-info``, and the sdist holds the package, the tests, the docs'
sources and the files the tests read.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    """Check the distributions in ``argv[0]``; print what is wrong; 0 when nothing is."""
    if len(argv) != 1:
        print(__doc__)
        return 2
    dist = Path(argv[0])
    match = re.search(r'__version__ = "([^"]+)"', (ROOT / "src/netlens/_version.py").read_text())
    version = match.group(1) if match else "?"
    wheels = sorted(dist.glob("netlens-*.whl"))
    sdists = sorted(dist.glob("netlens-*.tar.gz"))
    problems = []
    if [w.name for w in wheels] != [f"netlens-{version}-py3-none-any.whl"]:
        problems.append(
            f"expected one wheel of version {version}, found {[w.name for w in wheels]}"
        )
    if [s.name for s in sdists] != [f"netlens-{version}.tar.gz"]:
        problems.append(
            f"expected one sdist of version {version}, found {[s.name for s in sdists]}"
        )
    if problems:
        print("\n".join(problems))
        return 1

    with zipfile.ZipFile(wheels[0]) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    if tops != {"netlens", f"netlens-{version}.dist-info"}:
        problems.append(f"the wheel holds more than the package: {sorted(tops)}")
    # the atlas reads its page templates from the package
    for needed in ("netlens/__init__.py", "netlens/py.typed", "netlens/_atlas/templates/page.html"):
        if needed not in names:
            problems.append(f"the wheel lacks {needed}")

    prefix = f"netlens-{version}/"
    with tarfile.open(sdists[0]) as archive:
        members = {name.removeprefix(prefix) for name in archive.getnames()}
    tracked_tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    for needed in (
        {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CONTRIBUTING.md"}
        | {"src/netlens/__init__.py", "src/netlens/py.typed", "tests/conftest.py"}
        | {"tests/_models.py", "tests/_examples.py", "tests/_torchvision.py"}
        | {"docs/conf.py", "docs/index.rst", "docs/gallery_src/GALLERY_HEADER.rst"}
        | tracked_tests
    ):
        if needed not in members:
            problems.append(f"the sdist lacks {needed}")
    built = [m for m in members if m.startswith(("docs/_build/", "docs/gallery/"))]
    if built:
        problems.append(f"the sdist holds built docs: {built[:5]}")
    if problems:
        print("\n".join(problems))
        return 1
    print(
        f"{wheels[0].name}: {len(names)} files, the package only; "
        f"{sdists[0].name}: {len(members)} files, with {len(tracked_tests)} test modules"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

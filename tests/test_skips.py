"""Every skip in the test tree goes through `need(...)` in tests/conftest.py.

`need` is the one place that decides between skipping (a developer's machine without a tool)
and failing (CI with KDNS_REQUIRE_ALL=1, where everything is installed and a skip would hide a
test that never ran). A direct `pytest.skip`, `skipif`, `importorskip`, `unittest.skip` or
`SkipTest` elsewhere would bypass that decision, so this test reads every Python file under
tests/ and fails naming each one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# The one file allowed to skip: `need` itself lives there.
ALLOWED = {TESTS / "conftest.py"}
SKIP_NAMES = {"skip", "skipif", "importorskip", "skipIf", "skipUnless", "SkipTest"}
# Modules whose skip helpers bypass `need` (and `mark`, as in `from pytest import mark`).
SKIP_MODULES = {"pytest", "unittest", "_pytest"}
SKIP_ROOTS = SKIP_MODULES | {"mark"}


def _root_name(node: ast.expr) -> str | None:
    """`pytest` for `pytest.mark.skipif`, `unittest` for `unittest.skip`; None otherwise."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def direct_skips(source: str) -> list[tuple[int, str]]:
    """(line, what) for every use of a skip helper that is not `need` in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in SKIP_NAMES:
            if _root_name(node.value) in SKIP_ROOTS:
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            SKIP_MODULES
        ):
            for alias in node.names:
                if alias.name in SKIP_NAMES:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    return sorted(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("need(ok, 'why')\n", [], id="need"),
        pytest.param("pytest.skip('why')\n", [(1, "pytest.skip")], id="pytest.skip"),
        pytest.param(
            "@pytest.mark.skipif(True, reason='x')\ndef test(): pass\n",
            [(1, "pytest.mark.skipif")],
            id="skipif decorator",
        ),
        pytest.param(
            "pytestmark = [pytest.mark.skip(reason='x')]\n",
            [(1, "pytest.mark.skip")],
            id="module mark",
        ),
        pytest.param(
            "x = pytest.importorskip('yaml')\n", [(1, "pytest.importorskip")], id="importorskip"
        ),
        pytest.param("raise unittest.SkipTest('x')\n", [(1, "unittest.SkipTest")], id="SkipTest"),
        pytest.param(
            "from pytest import skip, mark\n@mark.skipif(True, reason='x')\ndef test(): pass\n",
            [(1, "from pytest import skip"), (2, "mark.skipif")],
            id="imported helpers",
        ),
        pytest.param("'fwmark-skipped-any-order'\nskip = 1\n", [], id="words, not calls"),
        pytest.param("ranges.skip(2)\n", [], id="another object's skip"),
    ],
)
def test_direct_skips_finds_every_way_to_skip(source: str, expected: list[object]) -> None:
    assert direct_skips(source) == expected


def test_every_skip_in_the_test_tree_goes_through_need() -> None:
    files = sorted(p for p in TESTS.rglob("*.py") if p not in ALLOWED)
    assert Path(__file__) in files  # the walk does see the tree (this very file)
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line}: {what}"
        for path in files
        for line, what in direct_skips(path.read_text())
    ]
    assert offenders == [], "skip through need(...) in tests/conftest.py instead:\n" + "\n".join(
        offenders
    )

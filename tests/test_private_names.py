"""No module reaches into another module's private names, including where ruff cannot see it.

Ruff's SLF001 (pyproject.toml) flags `obj._name` read from outside its class. Two ways around it
stay invisible to ruff: importing a private name (`from kdns.dns.wire import _split`) and
patching one by its name as a string (`monkeypatch.setattr(wire, "_split", fake)`,
`monkeypatch.setattr("kdns.dns.wire._split", fake)`). Both tie a test or module to another's
internals just the same (docs/architecture.md §13), so this test reads every Python file under
kdns/ and tests/ and fails naming each one. Dunder names (`__version__`) are public.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Packages of this repository: a private name imported from anything else (a library's
# `_pytest`, say) is that library's business, not this rule's.
OURS = {"kdns", "tests"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _patched_name(call: ast.Call) -> str | None:
    """The private name a `monkeypatch.setattr(...)` / `setattr`-style patch targets, if any:
    the second argument as a string, or a component of a dotted first argument."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr in ("setattr", "delattr")):
        return None
    if not (isinstance(func.value, ast.Name) and func.value.id == "monkeypatch"):
        return None
    for arg in call.args[:2]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            for part in arg.value.split("."):
                if _private(part):
                    return arg.value
    return None


def reaches_in(source: str) -> list[tuple[int, str]]:
    """(line, what) for every private name of this repository's modules that `source` imports
    or patches by name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if module.split(".")[0] not in OURS:
                continue
            for alias in node.names:
                if _private(alias.name) or any(_private(p) for p in module.split(".")):
                    found.append((node.lineno, f"from {module} import {alias.name}"))
        elif isinstance(node, ast.Call):
            name = _patched_name(node)
            if name is not None:
                found.append((node.lineno, f"monkeypatch of {name!r}"))
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from kdns.dns.wire import _split\n", [(1, "from kdns.dns.wire import _split")]),
        ("from kdns.dns import wire\n", []),
        ("from kdns.proxy.loopback import render as _render\n", []),  # a private alias
        ("from kdns import __version__\n", []),
        ("from _pytest.monkeypatch import MonkeyPatch\n", []),  # not ours
        ("from tests.bench.x import _helper\n", [(1, "from tests.bench.x import _helper")]),
        (
            "monkeypatch.setattr(wire, '_split', f)\n",
            [(1, "monkeypatch of '_split'")],
        ),
        (
            "monkeypatch.setattr('kdns.dns.wire._split', f)\n",
            [(1, "monkeypatch of 'kdns.dns.wire._split'")],
        ),
        ("monkeypatch.setattr(wire, 'split', f)\n", []),
        ("monkeypatch.setattr(os, '__file__', f)\n", []),
        ("monkeypatch.delattr(wire, '_memo')\n", [(1, "monkeypatch of '_memo'")]),
    ],
)
def test_the_detector_reads_like_the_rule(source: str, expected: list[tuple[int, str]]) -> None:
    assert reaches_in(source) == expected


def test_no_module_imports_or_patches_another_modules_private_names() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for top in ("kdns", "tests")
        for path in sorted((ROOT / top).rglob("*.py"))
        for line, what in reaches_in(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []

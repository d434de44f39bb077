"""Shared test helpers: `need` skips (or, in CI, fails) a test whose tool or privilege is missing."""

from __future__ import annotations

import os
import shutil

import pytest

# .ci/run sets this: there every tool is installed, so a missing one is a failure, not a skip.
REQUIRE_ALL = os.environ.get("KDNS_REQUIRE_ALL") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip the calling test with `reason` unless `condition` holds (fail instead under CI)."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} not installed (Debian package {package})")
    assert path is not None
    return path


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (network namespaces)")

"""Shared test helpers: `need` skips (or, in CI, fails) a test whose tool or privilege is missing."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

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


# Tests must never forward to this machine's real resolver (it is not on loopback): kdns
# processes started by tests read no resolv.conf unless a test gives one, and in-process apps
# get no upstreams from /etc/resolv.conf.
os.environ["KDNS_RESOLV_CONF"] = os.devnull
# kdns processes started by tests stop at once on SIGTERM (the fixtures stop them that way);
# the lifecycle tests give their own lameduck (`--lameduck`, or an environment without this).
os.environ.setdefault("KDNS_LAMEDUCK", "0")


@pytest.fixture(autouse=True)
def _no_real_upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdns import app
    from kdns.dns import forward

    real = forward.resolv_conf_nameservers

    def guarded(path: str = "/etc/resolv.conf") -> tuple[forward.Upstream, ...]:
        if os.path.realpath(path) == os.path.realpath("/etc/resolv.conf"):
            return ()
        return real(path)

    monkeypatch.setattr(app, "resolv_conf_nameservers", guarded)


@pytest.fixture(autouse=True)
def _interpreter_as_it_was() -> Iterator[None]:
    # A test that runs `kdns serve` in this process sets the interpreter up as a server
    # (kdns/interpreter.py: switch interval, collector threshold); the next test starts as
    # this one did.
    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    yield
    sys.setswitchinterval(interval)
    gc.set_threshold(*thresholds)


@contextlib.contextmanager
def throwaway_netns(prefix: str, *tools: tuple[str, str]) -> Iterator[str]:
    """A fresh network namespace named `<prefix>-<pid>` (loopback up), deleted afterwards.

    Needs root and iproute2; `tools` are further (command, Debian package) pairs the caller
    runs inside it. Tests that write rules do it here, never in the host's tables."""
    need_root()
    ip = need_tool("ip", "iproute2")
    for tool, package in tools:
        need_tool(tool, package)
    name = f"{prefix}-{os.getpid()}"
    subprocess.run([ip, "netns", "del", name], capture_output=True)
    subprocess.run([ip, "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], capture_output=True)

"""`kdns proxy` sets kube-proxy's conntrack sysctls at start, in a throwaway network namespace.

nf_conntrack_tcp_timeout_established and _close_wait are per network namespace and writable
there; nf_conntrack_max is the host's, read-only (0444) from any other namespace, so a write
to it from the namespace fails: the proxy warns and goes on. The host's values never move.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import throwaway_netns
from tests.processes import stop_process

from .conftest import EXAMPLES, kdns_command

NF = Path("/proc/sys/net/netfilter")
ESTABLISHED = "nf_conntrack_tcp_timeout_established"
CLOSE_WAIT = "nf_conntrack_tcp_timeout_close_wait"
MAX = "nf_conntrack_max"
# A ct expression loads nf_conntrack (and so its sysctls) on a node that has not yet.
LOAD_CONNTRACK = "table ip kdns-ct-probe { chain c { ct state established accept; }; }\n"
WAIT = 20.0


@pytest.fixture
def netns() -> Iterator[str]:
    with throwaway_netns("kdns-sysctl", ("nft", "nftables")) as name:
        yield name


def in_ns(ns: str, *argv: str, input_text: str | None = None) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        input=input_text,
        check=True,
    )
    return done.stdout


def ns_value(ns: str, name: str) -> str:
    return in_ns(ns, "cat", str(NF / name)).strip()


def host_values() -> dict[str, str]:
    return {name: (NF / name).read_text().strip() for name in (ESTABLISHED, CLOSE_WAIT, MAX)}


def test_the_proxy_sets_the_namespace_conntrack_timeouts_and_leaves_the_host_alone(
    netns: str,
) -> None:
    in_ns(netns, "nft", "-f", "-", input_text=LOAD_CONNTRACK)
    in_ns(netns, "nft", "delete", "table", "ip", "kdns-ct-probe")
    host = host_values()
    close_wait = ns_value(netns, CLOSE_WAIT)
    assert in_ns(netns, "stat", "-c", "%a", str(NF / MAX)).strip() == "444"
    target = "7777" if ns_value(netns, ESTABLISHED) != "7777" else "7778"
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            *kdns_command(
                "proxy",
                "--manifests",
                str(EXAMPLES),
                "--node-name",
                "node1",
                "--mode",
                "nftables",
                "--conntrack-tcp-timeout-established",
                target,
                "--conntrack-tcp-timeout-close-wait",
                "0",  # leave it alone
                "--conntrack-min",
                "2147483647",  # above any node's: a write, which the namespace refuses
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT
        while ns_value(netns, ESTABLISHED) != target:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, f"{ESTABLISHED} not {target} after {WAIT} s"
            time.sleep(0.1)
        # It goes on past the refused write: the rules go in.
        while "10.97.97.97 . tcp . 6379" not in in_ns(netns, "nft", "list", "ruleset"):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, f"no rules after {WAIT} s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
    finally:
        stop_process(proc)
    assert ns_value(netns, CLOSE_WAIT) == close_wait
    warnings = [line for line in stderr.splitlines() if "sysctl " in line and "cannot" in line]
    assert (
        len(warnings) == 1 and f"sysctl net/netfilter/{MAX}: cannot set 2147483647" in warnings[0]
    )
    assert host_values() == host

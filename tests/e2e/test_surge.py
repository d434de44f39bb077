"""A surge rollout of the node DaemonSet (`maxSurge: 1, maxUnavailable: 0`): the new `kdns
proxy --dns` starts beside the running one on the same health, metrics and DNS addresses, syncs,
takes the ports over, and the old one stops without removing the rules — while a pod polls the
node's /healthz and its DNS address without a single failure.

Each proxy runs in a PID namespace of its own, as a pod's process does: neither can see the
other's process, only its sockets (which is how the old one's stop tells a restart from an
uninstall, kdns/proxy/nodednsrules.py `other_listener`). The readiness probe of
config/kubernetes/kdns-node.yaml is run inside the new proxy's namespaces, as the kubelet would.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from tests.conftest import need_tool
from tests.e2e.test_node_dns import (  # noqa: F401 (node: the fixture)
    NODE_DNS,
    NODE_V4,
    REDIS,
    Node,
    node,
    wait_ready,
)

from .conftest import EXAMPLES

MARKER = "table inet kdns-node-dns"  # the node DNS's rules are in place (nftables mode)
WAIT = 60.0  # bound on each wait; never reached when passing
ROUNDS_AFTER = 40  # polls that must pass after each step
DEPLOY = Path(__file__).resolve().parents[2] / "config" / "kubernetes" / "kdns-node.yaml"

# One round: GET http://NODE:10256/healthz must be 200, and an A query to the node DNS address
# must answer. Prints "ok" or "fail <why>" per round until the stop file exists (at most 120 s).
POLL = """\
import os, sys, time, urllib.request
import dns.message, dns.query
node, server, name, stop = sys.argv[1:5]
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://{node}:10256/healthz", timeout=2) as reply:
            assert reply.status == 200, reply.status
        answer = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=1)
        assert answer.answer, answer
        print("ok", flush=True)
    except Exception as e:
        print("fail", type(e).__name__, e, flush=True)
    time.sleep(0.02)
"""


def readiness_probe() -> list[str]:
    """The DaemonSet's readiness probe command, read from the manifest."""
    daemonset = next(
        d for d in yaml.safe_load_all(DEPLOY.read_text()) if d and d["kind"] == "DaemonSet"
    )
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    return list(container["readinessProbe"]["exec"]["command"])


class Pod:
    """A `kdns proxy` in the node's network namespace and a PID namespace of its own."""

    def __init__(self, host: Node, logs: Path) -> None:
        self.logs = logs
        command = [host.ip, "netns", "exec", host.node, "unshare", "--pid", "--fork"]
        command += ["--mount-proc", sys.executable, "-m", "kdns", "proxy", "--mode", "nftables"]
        command += ["--manifests", str(EXAMPLES), "--node-name", "node1", "--dns", NODE_DNS]
        command += ["--healthz-addr", "0.0.0.0:10256", "--metrics-addr", "127.0.0.1:10249"]
        with open(logs, "wb") as err:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )

    def text(self) -> str:
        return self.logs.read_text()

    def pid(self) -> int:
        """The host's pid of the proxy (unshare's child)."""
        wait_for(lambda: self._children(), "the proxy process", self)
        return self._children()[0]

    def _children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def probe(self) -> int:
        """The readiness probe's exit status, run in this pod's namespaces."""
        argv = ["nsenter", "-t", str(self.pid()), "-n", "-p", "-m", *readiness_probe()]
        return subprocess.run(argv, capture_output=True, timeout=20).returncode

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends; returns the exit status."""
        self.pid()
        for child in self._children():
            subprocess.run(["kill", "-TERM", str(child)], check=False)
        return self.proc.wait(timeout=WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in self._children():
                subprocess.run(["kill", "-KILL", str(child)], check=False)
            self.proc.kill()
            self.proc.wait()


def wait_for(condition: Callable[[], object], what: str, pod: Pod | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if pod is not None:
            assert pod.proc.poll() is None, pod.text()
        assert time.monotonic() < deadline, f"no {what} within {WAIT} s"
        time.sleep(0.05)


@contextlib.contextmanager
def poller(host: Node, stop: Path) -> Iterator[list[str]]:
    """The pod's poll loop (POLL); yields the lines it printed so far (a growing list)."""
    argv = [sys.executable, "-c", POLL, NODE_V4, NODE_DNS, REDIS, str(stop)]
    proc = subprocess.Popen(
        [host.ip, "netns", "exec", host.pod, *argv], stdout=subprocess.PIPE, text=True
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(line.strip() for line in proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        stop.touch()
        proc.wait(timeout=WAIT)
        reader.join(timeout=WAIT)


def test_a_surge_rollout_keeps_health_and_dns_answering_and_the_rules(
    node: Node,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    for tool, package in (("unshare", "util-linux"), ("nsenter", "util-linux"), ("ss", "iproute2")):
        need_tool(tool, package)
    old = Pod(node, tmp_path / "old.log")
    new: Pod | None = None
    try:
        wait_ready(node, old.proc, old.logs, MARKER)
        wait_for(lambda: old.probe() == 0, "readiness of the first proxy", old)
        with poller(node, tmp_path / "stop") as polls:
            wait_for(lambda: polls.count("ok") >= ROUNDS_AFTER, "polls answered by the first")
            # The new pod: the ports are held, so it waits, then takes them over when ready.
            new = Pod(node, tmp_path / "new.log")
            wait_for(lambda: "took over ports" in new.text(), "take-over", new)
            assert "held by a running proxy" in new.text()
            assert "answering DNS on" in new.text()
            assert new.probe() == 0  # the kubelet would see it ready now, not before
            seen = len(polls)
            wait_for(lambda: len(polls) >= seen + ROUNDS_AFTER, "polls with both running")
            # The DaemonSet controller deletes the old pod: the kubelet's SIGTERM.
            assert old.stop() == 0, old.text()
            assert "rules stay" in old.text()
            assert MARKER in node.rules()
            seen = len(polls)
            wait_for(lambda: len(polls) >= seen + ROUNDS_AFTER, "polls after the old stopped")
            metrics = node.run(node.node, "python3", "-c", METRICS).stdout
            assert "kdns_proxy_syncs_total" in metrics
        failures = [line for line in polls if line != "ok"]
        assert not failures, f"{len(failures)} of {len(polls)} polls failed: {failures[:5]}"
        assert len(polls) >= 3 * ROUNDS_AFTER
        # The DaemonSet deleted (an uninstall): the last proxy's stop removes the DNS rules.
        assert new.stop() == 0, new.text()
        assert MARKER not in node.rules()
    finally:
        old.kill()
        if new is not None:
            new.kill()


METRICS = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:10249/metrics').read().decode())"
)

"""`kdns proxy --dns`: the proxy answering DNS on the node for the pods, without conntrack.

A "node" and a "pod" network namespace joined by a veth pair. This kernel has no dummy link
type, so the node DNS address (NodeLocal DNSCache's 169.254.20.10) is put on the node
namespace's `lo` before the proxy starts, standing in for the `kdns-dns` dummy device a real
node gets; the proxy then leaves the device alone and installs only the rules. The rules live in
the node namespace's tables, never the host's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tool

from .conftest import EXAMPLES
from .netns import NETNS_ETC, ip_command, node_and_pod, remove_netns_etc

NODE_DNS = "169.254.20.10"
NODE_V4, POD_V4 = "10.254.253.1", "10.254.253.2"
REDIS = "redis.default.svc.cluster.local"
REDIS_IP = "10.97.97.97"  # config/examples/redis.yaml
RESOLV_CONF = f"nameserver {NODE_DNS}\nsearch default.svc.cluster.local svc.cluster.local\n"
METRICS = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:10249/metrics').read().decode())"
)
START_TIMEOUT = 30.0  # seconds until the proxy answers and its rules are in place
STOP_TIMEOUT = 15.0


@dataclass
class Node:
    ip: str
    node: str
    pod: str

    def run(self, ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ip, "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
        )

    def rules(self) -> str:
        saved = self.run(self.node, "iptables-save").stdout
        return saved + self.run(self.node, "nft", "list", "ruleset").stdout


@pytest.fixture
def node() -> Iterator[Node]:
    need_root()
    ip = need_tool("ip", "iproute2")
    for tool, package in (
        ("dig", "bind9-dnsutils"),
        ("getent", "libc-bin"),
        ("conntrack", "conntrack"),
        ("iptables-save", "iptables"),
        ("nft", "nftables"),
    ):
        need_tool(tool, package)
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    names = Node(ip, f"kdns-dnode-{suffix}", f"kdns-dpod-{suffix}")
    with contextlib.ExitStack() as cleanup:
        node_and_pod(ip, names.node, names.pod, cleanup)
        for ns, v4 in ((names.node, NODE_V4), (names.pod, POD_V4)):
            ip_command(ip, "-n", ns, "addr", "add", f"{v4}/30", "dev", "eth0")
            ip_command(ip, "-n", ns, "link", "set", "eth0", "up")
        # The stand-in for the dummy device (module docstring), and the pod's route to it.
        ip_command(ip, "-n", names.node, "addr", "add", f"{NODE_DNS}/32", "dev", "lo")
        ip_command(ip, "-n", names.pod, "route", "add", "default", "via", NODE_V4)
        cleanup.callback(remove_netns_etc, names.pod)
        etc = NETNS_ETC / names.pod
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(RESOLV_CONF)
        (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
        (etc / "nsswitch.conf").write_text("hosts: files dns\n")
        yield names


@contextlib.contextmanager
def proxy(
    node: Node, mode: str, logs: Path, http_host: str = "127.0.0.1", *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    command = [node.ip, "netns", "exec", node.node, sys.executable, "-m", "kdns", "proxy"]
    command += ["--manifests", str(EXAMPLES), "--node-name", "node1", "--mode", mode]
    command += ["--healthz-addr", f"{http_host}:10256", "--metrics-addr", f"{http_host}:10249"]
    command += [*extra] if extra else ["--dns"]  # the default address
    with open(logs, "wb") as err:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def dig(node: Node, server: str, name: str) -> subprocess.CompletedProcess[str]:
    return node.run(node.pod, "dig", f"@{server}", "+short", "+time=1", "+tries=1", name, "A")


def wait_ready(node: Node, proc: subprocess.Popen[bytes], logs: Path, marker: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not (marker in node.rules() and dig(node, NODE_DNS, REDIS).stdout.strip()):
        assert proc.poll() is None, logs.read_text()
        assert time.monotonic() < deadline, f"not ready in {START_TIMEOUT} s:\n{logs.read_text()}"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("mode", "marker"),
    [("iptables", "-j KDNS-NODE-DNS"), ("nftables", "table inet kdns-node-dns")],
)
def test_pods_resolve_through_the_node_address_untracked(
    node: Node, mode: str, marker: str, tmp_path: Path
) -> None:
    logs = tmp_path / "proxy.log"
    with proxy(node, mode, logs) as proc:
        wait_ready(node, proc, logs, marker)
        assert node.run(node.node, "conntrack", "-F").returncode == 0
        assert dig(node, NODE_DNS, REDIS).stdout.split() == [REDIS_IP]
        # glibc's stub resolver, through the pod's resolv.conf and its search list.
        got = node.run(node.pod, "getent", "hosts", "redis")
        assert got.stdout.split()[:2] == [REDIS_IP, REDIS], got
        # The control: a query to the node's other address (nothing answers there) is tracked,
        # so the namespace does track connections; the node DNS's are not.
        dig(node, NODE_V4, REDIS)
        entries = node.run(node.node, "conntrack", "-L", "-p", "udp").stdout
        assert f"dst={NODE_V4}" in entries
        assert NODE_DNS not in entries
        assert node.run(node.node, "conntrack", "-L", "-p", "tcp").stdout.count(NODE_DNS) == 0
        # The node DNS is counted under kdns serve's metric names, on the proxy's /metrics.
        metrics = node.run(node.node, "python3", "-c", METRICS).stdout
        served = [
            line
            for line in metrics.splitlines()
            if line.startswith("kdns_dns_requests_total{")
            and f'server="dns://{NODE_DNS}:53"' in line
            and 'type="A"' in line
        ]
        assert served and float(served[0].split()[-1]) >= 2, metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, logs.read_text()
    # A stop that is not a restart: the rules go, so pods fall back to the central DNS.
    assert "KDNS-NODE-DNS" not in node.rules()
    assert "kdns-node-dns" not in node.rules()
    assert "KUBE-SERVICES" in node.rules() or "table ip kdns" in node.rules()


# 2,000 queries a second from one UDP socket for `seconds`, then a bounded wait for the last
# answers; prints "started" after the first answer, and at the end "SENT MISSING".
STREAM = """\
import socket, sys, threading, time
import dns.message
server, seconds = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.settimeout(0.1)
query = dns.message.make_query(sys.argv[3], "A")
answered, sent = set(), 0
def receive():
    while True:
        try:
            data = sock.recv(4096)
        except OSError:
            continue
        first = not answered
        answered.add(int.from_bytes(data[:2], "big"))
        if first:
            print("started", flush=True)
threading.Thread(target=receive, daemon=True).start()
start = time.monotonic()
while time.monotonic() - start < seconds:
    query.id = sent % 65536
    sock.sendto(query.to_wire(), (server, 53))
    sent += 1
    time.sleep(max(0.0, start + sent / 2000 - time.monotonic()))
deadline = time.monotonic() + 5
while len(answered) < min(sent, 65536) and time.monotonic() < deadline:
    time.sleep(0.05)
print(sent, min(sent, 65536) - len(answered), flush=True)
"""
STREAM_SECONDS = 12.0  # 24,000 queries (ids wrap at 65,536: fewer than that are sent)


def test_a_restart_of_the_node_dns_loses_no_query_and_keeps_the_rules(
    node: Node, tmp_path: Path
) -> None:
    old_logs, new_logs = tmp_path / "old.log", tmp_path / "new.log"
    with proxy(node, "iptables", old_logs) as old:
        wait_ready(node, old, old_logs, "-j KDNS-NODE-DNS")
        argv = [sys.executable, "-c", STREAM, NODE_DNS, str(STREAM_SECONDS), REDIS]
        stream = subprocess.Popen(
            [node.ip, "netns", "exec", node.pod, *argv],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert stream.stdout is not None
            assert stream.stdout.readline().strip() == "started"
            # The next proxy binds beside the first (its health and metrics ports elsewhere).
            with proxy(node, "iptables", new_logs, "127.0.0.2") as new:
                deadline = time.monotonic() + START_TIMEOUT
                while "answering DNS on" not in new_logs.read_text():
                    assert new.poll() is None, new_logs.read_text()
                    assert time.monotonic() < deadline, new_logs.read_text()
                    time.sleep(0.05)
                old.send_signal(signal.SIGTERM)
                assert old.wait(timeout=STOP_TIMEOUT) == 0, old_logs.read_text()
                assert "rules stay" in old_logs.read_text()
                assert "-j KDNS-NODE-DNS" in node.rules()
                out, _ = stream.communicate(timeout=STREAM_SECONDS + 30)
                sent, missing = (int(x) for x in out.split())
                assert sent >= 10_000
                assert missing == 0, f"{missing} of {sent} queries unanswered"
                new.send_signal(signal.SIGTERM)
                assert new.wait(timeout=STOP_TIMEOUT) == 0, new_logs.read_text()
        finally:
            if stream.poll() is None:
                stream.kill()
                stream.wait()
    assert "KDNS-NODE-DNS" not in node.rules()  # the last stop was not a restart


KUBE_DNS_IP = "10.96.0.10"
CENTRAL = "10.254.253.9"  # the central DNS's endpoint: no host has it, a DNATed query is lost
KUBE_DNS = f"""\
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: {KUBE_DNS_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-1
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints:
- addresses: [{CENTRAL}]
  conditions: {{ready: true}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
"""


@pytest.mark.parametrize(
    ("mode", "dnat"),
    [("iptables", f"-d {KUBE_DNS_IP}/32 -p udp"), ("nftables", f"{KUBE_DNS_IP} . udp . 53")],
)
def test_the_kube_dns_cluster_ip_taken_over_is_answered_locally_and_cleanup_removes_it(
    node: Node, mode: str, dnat: str, tmp_path: Path
) -> None:
    # Without the node DNS's rules the proxy's DNAT sends these queries to CENTRAL, where
    # nothing answers (checked by hand: dig times out).
    manifest = tmp_path / "kube-dns.yaml"
    manifest.write_text(KUBE_DNS)
    # The ClusterIP on the node's lo stands in for the dummy device, as NODE_DNS does.
    ip_command(node.ip, "-n", node.node, "addr", "add", f"{KUBE_DNS_IP}/32", "dev", "lo")
    logs = tmp_path / "proxy.log"
    flags = ("--manifests", str(manifest), "--dns", f"{NODE_DNS},{KUBE_DNS_IP}")
    with proxy(node, mode, logs, "127.0.0.1", *flags) as proc:
        wait_ready(node, proc, logs, dnat)  # the proxy DNATs the ClusterIP to CENTRAL …
        # … yet the pod's queries to it are answered on the node, over UDP and TCP.
        assert dig(node, KUBE_DNS_IP, REDIS).stdout.split() == [REDIS_IP]
        tcp = node.run(node.pod, "dig", f"@{KUBE_DNS_IP}", "+tcp", "+short", "+time=2", REDIS)
        assert tcp.stdout.split() == [REDIS_IP], tcp
        proc.kill()  # no chance to clean up: the rules stay
        proc.wait()
    assert "KDNS-NODE-DNS" in node.rules() or "kdns-node-dns" in node.rules()
    result = node.run(node.node, sys.executable, "-m", "kdns", "proxy", "--cleanup")
    assert (result.returncode, result.stderr) == (0, ""), result
    assert "KDNS-NODE-DNS" not in node.rules()
    assert "kdns-node-dns" not in node.rules()

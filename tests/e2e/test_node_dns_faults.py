"""The node DNS (`kdns proxy --dns`) keeps answering when what is behind it goes away.

Two failures of issue 14, in the two-node cluster of namespaces (tests/proxy/topology.py), each
node's DNS address (NodeLocal DNSCache's 169.254.20.10) on the node's `lo`, standing in for the
`kdns-dns` dummy device as in test_node_dns.py, and pods asking it with `dig` and glibc's
`getent`:

- **The API server killed.** A `kdns proxy --dns` on each node lists and watches the test API
  server (tests/kubeapi, plain HTTP on node1's address so node2 reaches it too). The server is
  stopped; once both proxies have noticed (their watch restarts are counted), pods on both
  nodes keep getting the same answers for a while, through the proxies' failed reconnects
  (counted too): Service, headless and NXDOMAIN alike, from the store each node already has. The proxies stay healthy on /healthz, as kube-proxy does
  (its health depends on applying the changes it has, and none can come), and as NodeLocal
  DNSCache does (CoreDNS's `health` stays 200 whatever its upstream does); the NOTRACK rules
  stay, so pods never fall back to conntracked DNS.
- **The central upstream killed.** Outside names go to a real dnsmasq on the "ext" host
  (the central DNS, `node.dns_upstreams`), the node DNS serving stale answers by default (`node.dns_serve_stale`).
  After dnsmasq is killed and the name's TTL has run out, the name keeps being answered with
  the stale TTL (RFC 8767 §4: 30 s), while a name never asked before fails (SERVFAIL: the
  upstream really is gone).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tool
from tests.dns.upstreams import dnsmasq_command
from tests.kubeapi import objects
from tests.kubeapi.server import ApiServer
from tests.processes import stop_process
from tests.proxy.topology import CLUSTER_CIDR, EXT_IP, NODE1_IP, Cluster

NODE_DNS = "169.254.20.10"
NETNS_ETC = Path("/etc/netns")
SEARCH = "default.svc.cluster.local svc.cluster.local cluster.local"
# Pods asking, one per node: "client" on node1, "b" on node2.
ASKERS = {"node1": "client", "node2": "b"}
WEB, WEB_IP = "web.default.svc.cluster.local", "10.96.0.80"
DB = "db.default.svc.cluster.local"  # headless: the pods' addresses
DB_PODS = {"db-0": "10.244.2.3", "db-1": "10.244.2.4"}  # pods c and d, on node2
MISSING = "nothere.default.svc.cluster.local"
START_TIMEOUT = 60.0  # proxy start → its DNS answers and its rules are in place
NOTICE_TIMEOUT = 30.0  # the API server stopped → each proxy has counted a watch restart
OUTAGE_SECONDS = 15.0  # how long pods keep asking once both proxies know the API is gone
OUTAGE_ROUNDS = 60  # … and at most this many rounds
HEALTH = (
    "import urllib.request as u; r = u.urlopen('http://127.0.0.1:10256/healthz'); print(r.status)"
)
METRICS = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:10249/metrics').read().decode())"
)


@dataclass
class Nodes:
    cluster: Cluster
    tmp: Path
    cleanup: contextlib.ExitStack

    def dig(
        self, pod: str, name: str, *options: str, wait: int = 2
    ) -> subprocess.CompletedProcess[str]:
        argv = ["dig", f"@{NODE_DNS}", f"+time={wait}", "+tries=1", *options, name, "A"]
        return self.cluster.run(pod, *argv, check=False, timeout=20)

    def answer(self, pod: str, name: str) -> tuple[str, list[str]]:
        """(status, sorted A records) as dig prints them."""
        out = self.dig(pod, name, "+noall", "+comments", "+answer").stdout
        status = re.search(r"status: (\w+)", out)
        records = sorted(line.split()[-1] for line in out.splitlines() if "\tA\t" in line)
        return (status[1] if status else "no answer"), records

    def rules(self, node: str) -> str:
        return self.cluster.run(node, "iptables-save", check=False).stdout

    def healthz(self, node: str) -> str:
        return self.cluster.run(node, sys.executable, "-c", HEALTH, check=False).stdout.strip()

    def metric(self, node: str, name: str, label: str = "") -> float:
        """The sum of a counter over its series (those whose labels hold `label`), from the
        node's proxy; 0 when absent."""
        text = self.cluster.run(node, sys.executable, "-c", METRICS, check=False).stdout
        pattern = re.compile(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", re.MULTILINE)
        return sum(float(value) for labels, value in pattern.findall(text) if label in labels)

    def proxy(self, node: str, *flags: str) -> tuple[subprocess.Popen[str], Path]:
        """`kdns proxy --dns` in the node's namespace (its /healthz and /metrics on the
        namespace's loopback), logging to a file."""
        logs = self.tmp / f"proxy-{node}.log"
        argv = [sys.executable, "-m", "kdns", "proxy", "--node-name", node, "--mode", "iptables"]
        argv += ["--cluster-cidr", CLUSTER_CIDR, "--dns", *flags]
        argv += ["--healthz-addr", "127.0.0.1:10256", "--metrics-addr", "127.0.0.1:10249"]
        with logs.open("wb") as out:
            proc = self.cluster.spawn(node, *argv, stdout=out.fileno(), stderr=out.fileno())
        return proc, logs

    def wait_ready(self, node: str, proc: subprocess.Popen[str], logs: Path, name: str) -> None:
        pod = ASKERS[node]
        deadline = time.monotonic() + START_TIMEOUT
        while not ("-j KDNS-NODE-DNS" in self.rules(node) and self.answer(pod, name)[1]):
            assert proc.poll() is None, logs.read_text()
            assert time.monotonic() < deadline, f"{node} not ready:\n{logs.read_text()}"
            time.sleep(0.2)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    need_root()
    for tool, package in (
        ("ip", "iproute2"),
        ("dig", "bind9-dnsutils"),
        ("getent", "libc-bin"),
        ("iptables-save", "iptables"),
    ):
        need_tool(tool, package)
    with contextlib.ExitStack() as cleanup:
        cluster = Cluster.create(cleanup, "nf")
        for node in ("node1", "node2"):
            cluster.run(node, "ip", "addr", "add", f"{NODE_DNS}/32", "dev", "lo")
        for pod in ASKERS.values():
            etc = NETNS_ETC / cluster.ns(pod)
            cleanup.callback(shutil.rmtree, etc, ignore_errors=True)
            etc.mkdir(parents=True)
            (etc / "resolv.conf").write_text(f"nameserver {NODE_DNS}\nsearch {SEARCH}\n")
            (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
            (etc / "nsswitch.conf").write_text("hosts: files dns\n")
        yield Nodes(cluster, tmp_path, cleanup)


# --- the API server killed -------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def api_server_in(cluster: Cluster, role: str, host: str) -> ApiServer:
    """The test API server listening on `host` inside `role`'s namespace: it is created and
    started from a thread that moved itself there (setns changes only the calling thread, and
    the server's accept and connection threads are born in it), so this process stays put."""
    made: list[ApiServer | BaseException] = []

    def create() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = os.open(f"/run/netns/{cluster.ns(role)}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            # Plain HTTP: the server's certificate names only loopback addresses.
            made.append(ApiServer(host=host, tls=False).start())
        except BaseException as e:
            made.append(e)

    thread = threading.Thread(target=create, name=f"kubeapi-in-{role}")
    thread.start()
    thread.join(30)
    if not made or isinstance(made[0], BaseException):
        raise RuntimeError(f"the API server did not start in {role}: {made}")
    return made[0]


def load_cluster(server: ApiServer) -> None:
    """A ClusterIP Service with a backend on each node, and a headless one whose pods have
    hostnames (records of their own)."""
    server.load("namespaces", [objects.namespace("default"), objects.namespace("kube-system")])
    server.load(
        "services",
        [
            objects.service("default", "web", cluster_ip=WEB_IP),
            objects.service("default", "db", headless=True),
        ],
    )
    web_backends = [
        {"address": "10.244.1.3", "node_name": "node1"},
        {"address": "10.244.2.2", "node_name": "node2"},
    ]
    db_backends = [
        {"address": ip, "hostname": host, "node_name": "node2"} for host, ip in DB_PODS.items()
    ]
    server.load(
        "endpointslices",
        [
            objects.endpointslice("default", "web", addresses=web_backends),
            objects.endpointslice("default", "db", addresses=db_backends),
        ],
    )


def expected_answers() -> dict[str, tuple[str, list[str]]]:
    """What every pod must get for each name, API server or not."""
    return {
        WEB: ("NOERROR", [WEB_IP]),
        DB: ("NOERROR", sorted(DB_PODS.values())),
        f"db-1.{DB}": ("NOERROR", [DB_PODS["db-1"]]),
        MISSING: ("NXDOMAIN", []),
    }


def ask_every_name(nodes: Nodes) -> None:
    for node, pod in ASKERS.items():
        for name, expected in expected_answers().items():
            assert nodes.answer(pod, name) == expected, (node, name)
        # glibc's stub resolver through the pod's resolv.conf and search list.
        got = nodes.cluster.run(pod, "getent", "hosts", "web", check=False)
        assert got.stdout.split()[:2] == [WEB_IP, WEB], (node, got)


def test_cluster_names_keep_answering_on_every_node_with_the_api_server_gone(
    nodes: Nodes,
) -> None:
    server = api_server_in(nodes.cluster, "node1", NODE1_IP)
    nodes.cleanup.callback(server.stop)
    load_cluster(server)
    kubeconfig = server.write_kubeconfig(nodes.tmp / "kubeconfig")
    proxies = {node: nodes.proxy(node, "--kubeconfig", str(kubeconfig)) for node in ASKERS}
    for node, (proc, logs) in proxies.items():
        nodes.wait_ready(node, proc, logs, WEB)
    ask_every_name(nodes)
    restarts = {node: nodes.metric(node, "kdns_kube_watch_restarts_total") for node in ASKERS}

    server.stop()
    # Both proxies have seen their watches end (and so try, and fail, to list again).
    deadline = time.monotonic() + NOTICE_TIMEOUT
    while any(
        nodes.metric(node, "kdns_kube_watch_restarts_total") <= restarts[node] for node in ASKERS
    ):
        assert time.monotonic() < deadline, "a proxy did not notice the API server going away"
        time.sleep(0.2)
    began, rounds = time.monotonic(), 0
    while time.monotonic() - began < OUTAGE_SECONDS and rounds < OUTAGE_ROUNDS:
        ask_every_name(nodes)
        for node, (proc, logs) in proxies.items():
            assert proc.poll() is None, logs.read_text()
            assert nodes.healthz(node) == "200", (node, logs.read_text())
            assert "-j KDNS-NODE-DNS" in nodes.rules(node), node
        rounds += 1
    assert rounds >= 3  # the outage was asked through, not skipped over
    for node in ASKERS:
        # … while the proxy was trying to reach the API server again, and failing.
        failed = nodes.metric(node, "kdns_kube_errors_total", 'reason="connection"')
        assert failed >= 1, node
    for proc, logs in proxies.values():
        stop_process(proc)
        assert proc.returncode == 0, logs.read_text()


# --- the central upstream killed ---------------------------------------------------------------

OUTSIDE, OUTSIDE_IP = "www.test", "192.0.2.10"  # tests/dns/upstreams.py's zone
NEVER_ASKED = "mail.test"
UPSTREAM_TTL = 2  # dnsmasq's --local-ttl: the cached answer expires soon after the kill
STALE_TTL = 30  # RFC 8767 §4's suggestion, kdns's stale answer TTL
STALE_ROUNDS = 5
# A stale answer is served once the upstream exchange has failed (kdns's serve_stale is
# CoreDNS's `verify`): with the central DNS's host up but its port closed, the kernel
# rate-limits the ICMP errors, so most exchanges end at the 2 s forward timeout. Pods wait
# 5 s (glibc's default `timeout`), and so does dig here.
CLIENT_WAIT = 5
STALE_TIMEOUT = 30.0


def outside(nodes: Nodes, name: str) -> tuple[str, list[tuple[int, str]]]:
    """(status, [(TTL, address)]) for an outside name, from the client pod on node1, waiting
    as long as a pod's resolver does."""
    out = nodes.dig("client", name, "+noall", "+comments", "+answer", wait=CLIENT_WAIT).stdout
    status = re.search(r"status: (\w+)", out)
    records = [
        (int(line.split()[1]), line.split()[-1]) for line in out.splitlines() if "\tA\t" in line
    ]
    return (status[1] if status else "no answer"), records


@contextlib.contextmanager
def central_dns(nodes: Nodes) -> Iterator[subprocess.Popen[str]]:
    """dnsmasq on the ext host's address, port 53: the central DNS every node forwards to."""
    exe = need_tool("dnsmasq", "dnsmasq-base")
    log = nodes.tmp / "dnsmasq.log"
    extra = [f"--listen-address={EXT_IP}"]
    argv = dnsmasq_command(exe, 53, log, False, UPSTREAM_TTL, extra)
    proc = nodes.cluster.spawn("ext", *argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        probe = nodes.cluster.run(
            "node1", "dig", f"@{EXT_IP}", "+short", "+time=1", "+tries=1", OUTSIDE, check=False
        )
        if probe.stdout.split() == [OUTSIDE_IP]:
            break
        assert proc.poll() is None and time.monotonic() < deadline, probe
        time.sleep(0.1)
    yield proc


def test_outside_names_are_answered_stale_with_the_central_upstream_gone(nodes: Nodes) -> None:
    config = nodes.tmp / "kdns.yaml"
    config.write_text(
        json.dumps({"node": {"dns_upstreams": [EXT_IP]}})  # serve-stale: the node DNS's default
    )
    manifests = Path(__file__).resolve().parents[2] / "config" / "examples"
    with central_dns(nodes) as dnsmasq:
        proc, logs = nodes.proxy("node1", "--config", str(config), "--manifests", str(manifests))
        nodes.wait_ready("node1", proc, logs, "redis.default.svc.cluster.local")
        status, records = outside(nodes, OUTSIDE)
        assert status == "NOERROR" and [ip for _, ip in records] == [OUTSIDE_IP], records
        assert records[0][0] <= UPSTREAM_TTL
        stop_process(dnsmasq)
    # The name's TTL runs out while it is asked: every answer is right, and once the cache
    # entry has expired the answer is the stale one, with the stale TTL.
    deadline = time.monotonic() + STALE_TIMEOUT
    while True:
        status, records = outside(nodes, OUTSIDE)
        assert status == "NOERROR" and [ip for _, ip in records] == [OUTSIDE_IP], records
        if records[0][0] == STALE_TTL:
            break
        assert records[0][0] <= UPSTREAM_TTL, records
        assert time.monotonic() < deadline, logs.read_text()
        time.sleep(0.2)
    for _ in range(STALE_ROUNDS):
        assert outside(nodes, OUTSIDE) == ("NOERROR", [(STALE_TTL, OUTSIDE_IP)])
    got = nodes.cluster.run("client", "getent", "hosts", OUTSIDE, check=False)
    assert got.stdout.split()[:2] == [OUTSIDE_IP, OUTSIDE], got
    assert nodes.metric("node1", "kdns_cache_served_stale_total") >= STALE_ROUNDS
    # The control: a name no one asked before has no stale answer, the upstream is gone.
    assert outside(nodes, NEVER_ASKED) == ("SERVFAIL", [])
    # Cluster names never depended on the upstream.
    assert nodes.answer("client", "redis.default.svc.cluster.local") == (
        "NOERROR",
        ["10.97.97.97"],
    )
    stop_process(proc)
    assert proc.returncode == 0, logs.read_text()

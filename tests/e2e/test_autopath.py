"""Autopath end to end: glibc in a pod namespace, its search path answered server-side by kdns.

A pod's resolv.conf (`search default.svc.cluster.local svc.cluster.local cluster.local`,
`ndots:5`) makes glibc try every search name before an external name such as
`api.example.com`. With `--autopath` (CoreDNS `autopath @kubernetes`, docs/kubernetes-dns.md row 25)
kdns answers the first one, `api.example.com.default.svc.cluster.local`, with a CNAME to the name
that exists: one query instead of four. Only for a client whose IP belongs to exactly one Running,
non-hostNetwork, non-terminating pod (`Resolver.pod_namespace`): anyone else gets plain answers.

The network, all inside namespaces this module creates (nothing is routed outside them):

    pod namespace                                     node namespace
    getent / dnspython                                kdns --autopath  10.254.254.1:53 ─┐
      │ resolv.conf: nameserver 10.96.0.10 (or .11)   kdns (plain)     10.254.254.1:54 ─┤
      │                                               kdns --autopath  [::]:55         ─┤
      ▼                                                                                 ▼
    counting relay 10.96.0.10 / .11 on lo ── veth ─▶  (from 10.254.254.2)    dnsmasq 127.0.0.1:53
                                                                            (api.example.com)

How the queries are counted. kdns has no query log or per-query metric, and tcpdump is not
installed, so a small UDP relay runs inside the pod namespace on two "Service IPs" on its
loopback (10.96.0.10 → the autopath kdns, 10.96.0.11 → the plain one). It plays kube-proxy's
DNAT of the kube-dns Service IP: it forwards each datagram from the pod's own address
(10.254.254.2), so kdns sees the pod as the client, as autopath requires, and it writes one line
per query (service IP, type, name) before forwarding it. The upstream's count is dnsmasq's own
query log (`--log-queries`). Counts are taken as the lines added during one lookup. dnsmasq
answers with TTL 0 (its default `local-ttl`), so kdns caches nothing from it and every lookup
costs the upstream the same, whatever ran before.

The other source addresses of the pod namespace (.3 to .9) stand for the cases that must get
plain behaviour: a hostNetwork pod, a terminating pod, an IP two pods share, a Pending pod, a pod
of another namespace, an IP no pod has. dnspython asks kdns directly from each of them.

A third kdns (`--autopath --dns-addr [::]:55`) listens dual-stack; the client pod also has
fd00:254:254::2 (the veth carries fd00:254:254::/64), so it is asked over IPv6 and over IPv4,
which such a socket sees as `::ffff:10.254.254.2`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tool
from tests.e2e.conftest import EXAMPLES, ROOT
from tests.e2e.netns import ip_command as _ip
from tests.e2e.netns import node_and_pod, node_upstream_dnsmasq
from tests.processes import stop_process

pytestmark = pytest.mark.root

NODE_V4 = "10.254.254.1"
POD_V4 = "10.254.254.2"  # the pod `client` in namespace default
NODE_V6, POD_V6 = "fd00:254:254::1", "fd00:254:254::2"  # the client pod is dual-stack
HOST_NETWORK_V4 = "10.254.254.3"  # a Running pod with spec.hostNetwork
TERMINATING_V4 = "10.254.254.4"  # a Running pod with metadata.deletionTimestamp
SHARED_V4 = "10.254.254.5"  # two Running pods report this IP
PENDING_V4 = "10.254.254.6"  # a Pending pod
PROD_V4 = "10.254.254.7"  # a Running pod in namespace prod
UNKNOWN_V4 = "10.254.254.9"  # no pod has this IP
EXTRA_V4 = (HOST_NETWORK_V4, TERMINATING_V4, SHARED_V4, PENDING_V4, PROD_V4, UNKNOWN_V4)

AUTOPATH_PORT, PLAIN_PORT = 53, 54  # the two kdns processes, both on NODE_V4
DUAL_STACK_PORT = 55  # a third, `--autopath --dns-addr [::]:55`: IPv4 and IPv6 on one socket
AUTOPATH_VIP, PLAIN_VIP = "10.96.0.10", "10.96.0.11"  # the relay, on the pod's loopback
UPSTREAM = "127.0.0.1:53"  # dnsmasq, on the node namespace's own loopback
EXTERNAL, EXTERNAL_V4 = "api.example.com", "192.0.2.10"  # 192.0.2.0/24: TEST-NET-1
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")

NETNS_ETC = Path("/etc/netns")
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NSSWITCH = "hosts: files dns\n"
# Environment variables that change what glibc's resolver does; the pod must not inherit them.
RESOLVER_ENV = ("LOCALDOMAIN", "RES_OPTIONS", "HOSTALIASES")
START_TIMEOUT = 15.0  # seconds until kdns, dnsmasq and the relay answer
LOG_TIMEOUT = 3.0  # seconds for dnsmasq's query log to show a query it answered


def resolv_conf(nameserver: str) -> str:
    # attempts:1: a retransmission would be an extra query in the counts (and none is expected
    # on a veth); timeout:2 keeps a failure short.
    return (
        f"nameserver {nameserver}\n"
        f"search {' '.join(SEARCH)}\n"
        "options ndots:5 timeout:2 attempts:1\n"
    )


def _pod(name: str, namespace: str, *ips: str, phase: str = "Running", **extra: object) -> dict:
    spec: dict[str, object] = {"containers": [{"name": "main", "image": "busybox"}]}
    if extra.get("host_network"):
        spec["hostNetwork"] = True
    metadata: dict[str, object] = {"name": name, "namespace": namespace}
    if extra.get("terminating"):
        metadata["deletionTimestamp"] = "2024-05-03T12:00:00Z"
    ready = "True" if phase == "Running" else "False"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": phase,
            "podIP": ips[0],
            "podIPs": [{"ip": ip} for ip in ips],
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


PODS = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        _pod("client", "default", POD_V4, POD_V6),
        _pod("node-agent", "default", HOST_NETWORK_V4, host_network=True),
        _pod("leaving", "default", TERMINATING_V4, terminating=True),
        _pod("twin-a", "default", SHARED_V4),
        _pod("twin-b", "default", SHARED_V4),
        _pod("starting", "default", PENDING_V4, phase="Pending"),
        _pod("prod-client", "prod", PROD_V4),
    ],
}

# Runs inside a namespace: forwards UDP from each `LISTEN=TARGET` to TARGET from SOURCE and logs
# "<listen ip> <type> <name>" per query, line-buffered, before forwarding it. Replies go back to
# the client from the listening socket. Runs until killed; a reply not seen in 10 s is given up.
RELAY = r"""
import selectors, socket, sys, time
TYPES = {1: "A", 28: "AAAA", 16: "TXT", 33: "SRV", 12: "PTR", 5: "CNAME"}
log = open(sys.argv[1], "a", buffering=1)
source = sys.argv[2]
sel = selectors.DefaultSelector()
for spec in sys.argv[3:]:
    listen, target = spec.split("=")
    host, port = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    sel.register(s, selectors.EVENT_READ, ("listen", s, host, (thost, int(tport))))

def question(data):
    pos, labels = 12, []
    while pos < len(data) and data[pos] and len(labels) < 128:
        n = data[pos]
        labels.append(data[pos + 1 : pos + 1 + n].decode("latin-1"))
        pos += 1 + n
    qtype = int.from_bytes(data[pos + 1 : pos + 3], "big")
    return ".".join(labels).lower(), TYPES.get(qtype, str(qtype))

while True:
    for key, _ in sel.select(timeout=1.0):
        kind, sock, a, b = key.data[:4]
        if kind == "listen":
            data, client = sock.recvfrom(65535)
            name, qtype = question(data)
            log.write(f"{a} {qtype} {name}\n")
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.bind((source, 0))
            up.connect(b)
            up.send(data)
            sel.register(up, selectors.EVENT_READ, ("reply", up, sock, client, time.monotonic()))
        else:
            try:
                a.sendto(sock.recv(65535), b)
            except OSError:
                pass
            sel.unregister(sock)
            sock.close()
    now = time.monotonic()
    for key in list(sel.get_map().values()):
        if key.data[0] == "reply" and now - key.data[4] > 10:
            sel.unregister(key.fileobj)
            key.fileobj.close()
"""

# Runs inside a namespace: argv[1] is a JSON list of queries [server, port, source, name, type,
# tcp]; prints a JSON list of {"rcode", "answer": [[owner, type, ttl, [rdata...]], ...]} or
# {"error"}. argv[2] > 0: retry each query (bounded by that many seconds) until it is NOERROR
# with an answer, for start-up waits.
QUERY = r"""
import json, sys, time
import dns.message, dns.query, dns.rcode, dns.rdatatype
queries, wait = json.loads(sys.argv[1]), float(sys.argv[2])
results = []
for server, port, source, name, rdtype, tcp in queries:
    deadline = time.monotonic() + wait
    while True:
        q = dns.message.make_query(name, rdtype)
        try:
            ask = dns.query.tcp if tcp else dns.query.udp
            r = ask(q, server, port=port, source=source, timeout=2)
            result = {
                "rcode": dns.rcode.to_text(r.rcode()),
                "answer": [
                    [str(s.name), dns.rdatatype.to_text(s.rdtype), s.ttl, sorted(x.to_text() for x in s)]
                    for s in r.answer
                ],
            }
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}"}
        if result.get("rcode") == "NOERROR" and result["answer"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    results.append(result)
print(json.dumps(results))
"""

_DNSMASQ_QUERY = re.compile(r"query\[(\w+)\] (\S+) from ")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class AutopathNetwork:
    ip: str
    node: str
    pod: str
    relay_log: Path
    upstream_log: Path
    processes: list[Process] = field(default_factory=list)

    def _run(
        self, namespace: str, *command: str, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in RESOLVER_ENV}
        return subprocess.run(
            [self.ip, "netns", "exec", namespace, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def run_in_pod(self, *command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return self._run(self.pod, *command, timeout=timeout)

    def use(self, via: str) -> None:
        """Point the pod's resolv.conf at `via` (a relay address). `ip netns exec` bind-mounts
        /etc/netns/<pod>/resolv.conf afresh for every command, so this switches the pod between
        the two kdns processes."""
        (NETNS_ETC / self.pod / "resolv.conf").write_text(resolv_conf(via))

    def getent(self, database: str, key: str, via: str) -> subprocess.CompletedProcess[str]:
        """`getent DATABASE KEY` in the pod, through `via`."""
        self.use(via)
        return self.run_in_pod("getent", database, key)

    def query(
        self,
        name: str,
        source: str,
        rdtype: str = "A",
        *,
        port: int = AUTOPATH_PORT,
        tcp: bool = False,
        namespace: str | None = None,
        server: str = NODE_V4,
    ) -> dict:
        """One dnspython query straight to kdns (not through the relay), sent from `source`."""
        result = self.queries([(server, port, source, name, rdtype, tcp)], namespace=namespace)
        return result[0]

    def queries(
        self,
        queries: Sequence[tuple[str, int, str, str, str, bool]],
        *,
        namespace: str | None = None,
        wait: float = 0.0,
    ) -> list[dict]:
        ns = namespace or self.pod
        result = self._run(
            ns, sys.executable, "-c", QUERY, json.dumps(queries), str(wait), timeout=wait + 30
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def relay_mark(self) -> int:
        return self.relay_log.stat().st_size

    def relay_queries(self, mark: int, via: str) -> list[tuple[str, str]]:
        """(type, name) of each query the relay forwarded for `via` since `mark`, in order."""
        with self.relay_log.open("rb") as f:
            f.seek(mark)
            lines = f.read().decode().splitlines()
        return [(t, n) for vip, t, n in (line.split() for line in lines) if vip == via]

    def upstream_mark(self) -> int:
        return self.upstream_log.stat().st_size

    def upstream_queries(self, mark: int, expect_at_least: int = 1) -> list[tuple[str, str]]:
        """(type, name) of each query dnsmasq logged since `mark`. dnsmasq writes its log from
        its main loop, so wait (bounded) for `expect_at_least` lines, then a moment for any
        surplus to show too."""
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            with self.upstream_log.open("rb") as f:
                f.seek(mark)
                found = _DNSMASQ_QUERY.findall(f.read().decode(errors="replace"))
            if len(found) >= expect_at_least or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if expect_at_least:
            time.sleep(0.3)
            with self.upstream_log.open("rb") as f:
                f.seek(mark)
                found = _DNSMASQ_QUERY.findall(f.read().decode(errors="replace"))
        return [(t, n.lower()) for t, n in found]

    def diagnostics(self) -> str:
        parts = [f"--- {p.name} (exit {p.proc.poll()}):\n{p.log()[-3000:]}" for p in self.processes]
        with contextlib.suppress(OSError):
            parts.append(f"--- dnsmasq log:\n{self.upstream_log.read_text()[-3000:]}")
        return "\n".join(parts)


def _remove_netns_etc(name: str) -> None:
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    # /etc/netns itself only if we left it empty (another test run may be using it).
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()


def _start(
    network: AutopathNetwork,
    cleanup: contextlib.ExitStack,
    name: str,
    namespace: str,
    command: Sequence[str],
    log_path: Path,
) -> Process:
    with open(log_path, "ab") as err:
        proc = subprocess.Popen(
            [network.ip, "netns", "exec", namespace, *command],
            stdout=err,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    cleanup.callback(stop_process, proc)
    process = Process(name, proc, log_path)
    network.processes.append(process)
    return process


def _wait_answering(network: AutopathNetwork) -> None:
    """Bounded: the upstream from the node, then both kdns through the relay from the pod; fail
    early when one of the processes exits."""
    deadline = time.monotonic() + START_TIMEOUT
    cluster = "redis.default.svc.cluster.local"
    checks = [
        (network.node, [("127.0.0.1", 53, "127.0.0.1", EXTERNAL, "A", False)]),
        (
            network.pod,
            [(vip, 53, POD_V4, cluster, "A", False) for vip in (AUTOPATH_VIP, PLAIN_VIP)]
            + [(NODE_V6, DUAL_STACK_PORT, POD_V6, cluster, "A", False)],
        ),
    ]
    for namespace, queries in checks:
        while True:
            results = network.queries(queries, namespace=namespace, wait=0.5)
            if all(r.get("rcode") == "NOERROR" and r["answer"] for r in results):
                break
            dead = [p.name for p in network.processes if p.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                pytest.fail(
                    f"not answering ({', '.join(dead) or 'all running'}; waited up to "
                    f"{START_TIMEOUT} s): {results}\n{network.diagnostics()}"
                )


@pytest.fixture(scope="module")
def autopath_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AutopathNetwork]:
    need_root()
    ip = need_tool("ip", "iproute2")
    need_tool("getent", "libc-bin")
    dnsmasq = need_tool("dnsmasq", "dnsmasq-base")
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    node, pod = f"kdns-apnode-{suffix}", f"kdns-appod-{suffix}"
    work = tmp_path_factory.mktemp("autopath")
    manifests = work / "pods.json"  # JSON is YAML: the manifest loader reads it as such
    manifests.write_text(json.dumps(PODS, indent=1))
    network = AutopathNetwork(ip, node, pod, work / "relay.log", work / "dnsmasq.log")
    network.relay_log.touch()

    with contextlib.ExitStack() as cleanup:
        node_and_pod(ip, node, pod, cleanup)
        for ns in (node, pod):
            _ip(ip, "-n", ns, "link", "set", "lo", "up")
        network_up(ip, node, pod)

        cleanup.callback(_remove_netns_etc, pod)
        etc = NETNS_ETC / pod
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(resolv_conf(AUTOPATH_VIP))
        (etc / "hosts").write_text(HOSTS)
        (etc / "nsswitch.conf").write_text(NSSWITCH)

        _start(
            network,
            cleanup,
            "dnsmasq",
            node,
            node_upstream_dnsmasq(
                dnsmasq, EXTERNAL, EXTERNAL_V4, network.upstream_log, log_queries=True
            ),
            work / "dnsmasq.stderr",
        )
        for name, listen, extra in (
            ("kdns --autopath", f"{NODE_V4}:{AUTOPATH_PORT}", ["--autopath"]),
            ("kdns", f"{NODE_V4}:{PLAIN_PORT}", []),
            ("kdns --autopath [::]", f"[::]:{DUAL_STACK_PORT}", ["--autopath"]),
        ):
            _start(
                network,
                cleanup,
                name,
                node,
                [
                    sys.executable,
                    "-m",
                    "kdns",
                    "serve",
                    "--manifests",
                    str(EXAMPLES),
                    "--manifests",
                    str(manifests),
                    "--dns-addr",
                    listen,
                    "--upstreams",
                    UPSTREAM,
                    "--health-addr",
                    "127.0.0.1:0",
                    "--ready-addr",
                    "127.0.0.1:0",
                    "--metrics-addr",
                    "127.0.0.1:0",
                    *extra,
                ],
                work / f"kdns-{listen.rsplit(':', 1)[1]}.stderr",
            )
        _start(
            network,
            cleanup,
            "relay",
            pod,
            [
                sys.executable,
                "-c",
                RELAY,
                str(network.relay_log),
                POD_V4,
                f"{AUTOPATH_VIP}:53={NODE_V4}:{AUTOPATH_PORT}",
                f"{PLAIN_VIP}:53={NODE_V4}:{PLAIN_PORT}",
            ],
            work / "relay.stderr",
        )
        _wait_answering(network)
        yield network
        dead = [p for p in network.processes if p.proc.poll() is not None]
        assert not dead, f"died during the tests:\n{network.diagnostics()}"


def network_up(ip: str, node: str, pod: str) -> None:
    _ip(ip, "-n", node, "addr", "add", f"{NODE_V4}/24", "dev", "eth0")
    _ip(ip, "-n", pod, "addr", "add", f"{POD_V4}/24", "dev", "eth0")
    # The other "pods" are extra addresses of the same namespace: /32, so the primary address
    # (POD_V4) stays the source of everything that does not choose one.
    for extra in EXTRA_V4:
        _ip(ip, "-n", pod, "addr", "add", f"{extra}/32", "dev", "eth0")
    for vip in (AUTOPATH_VIP, PLAIN_VIP):
        _ip(ip, "-n", pod, "addr", "add", f"{vip}/32", "dev", "lo")
    # nodad: the addresses are usable at once, not after duplicate address detection.
    _ip(ip, "-n", node, "addr", "add", f"{NODE_V6}/64", "dev", "eth0", "nodad")
    _ip(ip, "-n", pod, "addr", "add", f"{POD_V6}/64", "dev", "eth0", "nodad")
    _ip(ip, "-n", node, "link", "set", "eth0", "up")
    _ip(ip, "-n", pod, "link", "set", "eth0", "up")


# --- helpers for the assertions ----------------------------------------------------------------


def addresses(result: subprocess.CompletedProcess[str]) -> set[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def search_names(name: str) -> list[str]:
    """What glibc asks for `name` (fewer dots than ndots:5): each search name, then the name."""
    return [f"{name}.{domain}" for domain in SEARCH] + [name]


def cname_targets(result: dict) -> list[tuple[str, str]]:
    return [
        (owner, target)
        for owner, rdtype, _ttl, rdatas in result["answer"]
        if rdtype == "CNAME"
        for target in rdatas
    ]


def rdatas(result: dict, rdtype: str) -> set[str]:
    return {x for _owner, t, _ttl, values in result["answer"] if t == rdtype for x in values}


IN_DEFAULT = f"{EXTERNAL}.default.svc.cluster.local"


# --- glibc through the search path -------------------------------------------------------------


def test_pod_resolv_conf_is_in_place(autopath_network: AutopathNetwork) -> None:
    # Guards the other tests: they must exercise the pod's resolv.conf, not the host's.
    autopath_network.use(AUTOPATH_VIP)
    result = autopath_network.run_in_pod("cat", "/etc/resolv.conf")
    assert result.stdout == resolv_conf(AUTOPATH_VIP)


@pytest.mark.parametrize("via", [AUTOPATH_VIP, PLAIN_VIP], ids=["autopath", "plain"])
def test_external_name_resolves(autopath_network: AutopathNetwork, via: str) -> None:
    result = autopath_network.getent("hosts", EXTERNAL, via)
    assert result.returncode == 0, (result.stdout, result.stderr, autopath_network.diagnostics())
    fields = result.stdout.split()
    assert fields[:2] == [EXTERNAL_V4, EXTERNAL]


def test_autopath_costs_one_query(autopath_network: AutopathNetwork) -> None:
    net = autopath_network
    relay, upstream = net.relay_mark(), net.upstream_mark()
    result = net.getent("ahostsv4", EXTERNAL, AUTOPATH_VIP)
    assert addresses(result) == {EXTERNAL_V4}
    # glibc asks the first search name only: kdns answers it with a CNAME to the real name.
    assert net.relay_queries(relay, AUTOPATH_VIP) == [("A", IN_DEFAULT)]
    # The search names are cluster names (never forwarded); the upstream sees the real one once.
    assert net.upstream_queries(upstream) == [("A", EXTERNAL)]


def test_without_autopath_costs_one_query_per_search_name(
    autopath_network: AutopathNetwork,
) -> None:
    net = autopath_network
    relay, upstream = net.relay_mark(), net.upstream_mark()
    result = net.getent("ahostsv4", EXTERNAL, PLAIN_VIP)
    assert addresses(result) == {EXTERNAL_V4}
    assert net.relay_queries(relay, PLAIN_VIP) == [("A", n) for n in search_names(EXTERNAL)]
    assert net.upstream_queries(upstream) == [("A", EXTERNAL)]


def test_getent_hosts_query_counts_per_type(autopath_network: AutopathNetwork) -> None:
    """`getent hosts` asks AAAA first, then A. dnsmasq has no AAAA for the name (NODATA).

    Without autopath glibc searches on after each NXDOMAIN and after the final name's NODATA:
    four AAAA, then four A. With autopath the name found has no AAAA, and kdns — as CoreDNS's
    autopath (plugin/autopath cname.go), which puts no CNAME in front of an empty answer —
    answers that first AAAA with plain NODATA, so glibc searches on for AAAA as it would
    anyway (four), while A is answered at once (one)."""
    net = autopath_network
    counts: dict[str, dict[str, int]] = {}
    for via in (AUTOPATH_VIP, PLAIN_VIP):
        relay = net.relay_mark()
        result = net.getent("hosts", EXTERNAL, via)
        assert result.stdout.split()[:1] == [EXTERNAL_V4], (result.stdout, result.stderr)
        asked = net.relay_queries(relay, via)
        counts[via] = {t: sum(1 for qt, _ in asked if qt == t) for t in ("A", "AAAA")}
    assert counts == {AUTOPATH_VIP: {"A": 1, "AAAA": 4}, PLAIN_VIP: {"A": 4, "AAAA": 4}}


@pytest.mark.parametrize(
    ("via", "asked"), [(AUTOPATH_VIP, 1), (PLAIN_VIP, 2)], ids=["autopath", "plain"]
)
def test_name_found_at_the_second_search_name(
    autopath_network: AutopathNetwork, via: str, asked: int
) -> None:
    # `api.prod` is api.prod.svc.cluster.local: glibc's second try, kdns's second server-side.
    net = autopath_network
    relay = net.relay_mark()
    assert addresses(net.getent("ahostsv4", "api.prod", via)) == {"10.96.50.50"}
    assert net.relay_queries(relay, via) == [("A", n) for n in search_names("api.prod")[:asked]]


@pytest.mark.parametrize("via", [AUTOPATH_VIP, PLAIN_VIP], ids=["autopath", "plain"])
def test_cluster_name_still_resolves(autopath_network: AutopathNetwork, via: str) -> None:
    net = autopath_network
    result = net.getent("hosts", "redis", via)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.split()[:2] == ["10.97.97.97", "redis.default.svc.cluster.local"]
    relay = net.relay_mark()
    assert addresses(net.getent("ahostsv4", "redis", via)) == {"10.97.97.97"}
    # The first search name exists: one query either way, and no CNAME in front of it.
    assert net.relay_queries(relay, via) == [("A", "redis.default.svc.cluster.local")]
    direct = net.query("redis.default.svc.cluster.local", POD_V4, port=PORTS[via])
    assert direct["rcode"] == "NOERROR"
    assert cname_targets(direct) == []
    assert rdatas(direct, "A") == {"10.97.97.97"}


PORTS = {AUTOPATH_VIP: AUTOPATH_PORT, PLAIN_VIP: PLAIN_PORT}


def test_unknown_external_name_is_not_found(autopath_network: AutopathNetwork) -> None:
    net = autopath_network
    relay = net.relay_mark()
    started = time.monotonic()
    result = net.getent("ahostsv4", "nope.example.com", AUTOPATH_VIP)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert time.monotonic() - started < 1.5  # definite answers, no timeouts
    # Every server-side try failed: the original NXDOMAIN, so glibc searches on by itself.
    assert net.relay_queries(relay, AUTOPATH_VIP) == [
        ("A", n) for n in search_names("nope.example.com")
    ]
    direct = net.query("nope.example.com.default.svc.cluster.local", POD_V4)
    assert direct["rcode"] == "NXDOMAIN"
    assert direct["answer"] == []


# --- who gets autopath -------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_pod_gets_cname_to_the_name_found(autopath_network: AutopathNetwork, tcp: bool) -> None:
    result = autopath_network.query(IN_DEFAULT, POD_V4, tcp=tcp)
    assert result["rcode"] == "NOERROR", result
    assert cname_targets(result) == [(IN_DEFAULT + ".", EXTERNAL + ".")]
    assert rdatas(result, "A") == {EXTERNAL_V4}


def test_mixed_case_name_gets_autopath(autopath_network: AutopathNetwork) -> None:
    # DNS names compare case-insensitively (RFC 4343); CoreDNS lower-cases before matching.
    result = autopath_network.query("API.Example.com.Default.SVC.cluster.local", POD_V4)
    assert result["rcode"] == "NOERROR", result
    assert rdatas(result, "A") == {EXTERNAL_V4}


def test_pod_of_another_namespace_searches_its_own(autopath_network: AutopathNetwork) -> None:
    net = autopath_network
    own = net.query(f"{EXTERNAL}.prod.svc.cluster.local", PROD_V4)
    assert own["rcode"] == "NOERROR", own
    assert cname_targets(own) == [(f"{EXTERNAL}.prod.svc.cluster.local.", EXTERNAL + ".")]
    # default's first search name is not the prod pod's: plain NXDOMAIN.
    other = net.query(IN_DEFAULT, PROD_V4)
    assert other["rcode"] == "NXDOMAIN", other
    assert other["answer"] == []


@pytest.mark.parametrize(
    "source",
    [UNKNOWN_V4, HOST_NETWORK_V4, TERMINATING_V4, SHARED_V4, PENDING_V4],
    ids=["unknown-ip", "host-network", "terminating", "shared-ip", "pending"],
)
def test_client_that_is_not_one_running_pod_gets_plain_answers(
    autopath_network: AutopathNetwork, source: str
) -> None:
    result = autopath_network.query(IN_DEFAULT, source)
    assert result["rcode"] == "NXDOMAIN", result
    assert result["answer"] == []


def test_node_itself_gets_plain_answers(autopath_network: AutopathNetwork) -> None:
    net = autopath_network
    result = net.query(IN_DEFAULT, NODE_V4, namespace=net.node)
    assert result["rcode"] == "NXDOMAIN", result
    assert result["answer"] == []


def test_plain_kdns_never_autopaths(autopath_network: AutopathNetwork) -> None:
    result = autopath_network.query(IN_DEFAULT, POD_V4, port=PLAIN_PORT)
    assert result["rcode"] == "NXDOMAIN", result
    assert result["answer"] == []


def test_answers_do_not_cross_between_clients(autopath_network: AutopathNetwork) -> None:
    """kdns's answer cache is keyed by the question, not the client: a plain NXDOMAIN given to
    one client must not answer a pod's autopath question, nor a pod's CNAME anyone else's."""
    sequence = [
        (UNKNOWN_V4, "NXDOMAIN"),
        (POD_V4, "NOERROR"),
        (UNKNOWN_V4, "NXDOMAIN"),
        (POD_V4, "NOERROR"),
        (HOST_NETWORK_V4, "NXDOMAIN"),
    ]
    name = f"{EXTERNAL}.default.svc.cluster.local"
    results = autopath_network.queries(
        [(NODE_V4, AUTOPATH_PORT, source, name, "A", False) for source, _ in sequence]
    )
    assert [r.get("rcode") for r in results] == [rcode for _, rcode in sequence], results
    for (source, _), result in zip(sequence, results, strict=True):
        expected = [(name + ".", EXTERNAL + ".")] if source == POD_V4 else []
        assert cname_targets(result) == expected, (source, result)


# --- a dual-stack listener ---------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dual_stack_listener_autopaths_an_ipv6_pod(
    autopath_network: AutopathNetwork, tcp: bool
) -> None:
    result = autopath_network.query(
        IN_DEFAULT, POD_V6, port=DUAL_STACK_PORT, server=NODE_V6, tcp=tcp
    )
    assert result["rcode"] == "NOERROR", result
    assert cname_targets(result) == [(IN_DEFAULT + ".", EXTERNAL + ".")]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dual_stack_listener_autopaths_an_ipv4_pod(
    autopath_network: AutopathNetwork, tcp: bool
) -> None:
    """`--dns-addr [::]:53` (config.py's own example) takes IPv4 too (IPV6_V6ONLY off), and the
    kernel reports an IPv4 client as `::ffff:10.254.254.2`. That is still the pod's IP: the pod
    must get autopath as it does on a 0.0.0.0 listener."""
    result = autopath_network.query(IN_DEFAULT, POD_V4, port=DUAL_STACK_PORT, tcp=tcp)
    assert result["rcode"] == "NOERROR", result
    assert cname_targets(result) == [(IN_DEFAULT + ".", EXTERNAL + ".")]

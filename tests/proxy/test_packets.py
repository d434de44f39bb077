"""kdns's proxy proven with real packets: a two-node cluster in network namespaces.

For each of the iptables and nftables modes, one cluster (tests/proxy/topology.py) is built for
the module and the real `python -m kdns proxy` runs in node1, fed a manifest file the tests
rewrite. Clients (tests/proxy/echo.py) in a pod, in node1 itself and on the outside host make
real TCP connections and UDP exchanges; the backends answer with their name and the source
address they saw. Each check is bounded in time.

How a test knows its manifests are live: every manifest written carries a "generation" Service
(10.96.255.1, port 1000 + generation) backed by pod a; `Harness.apply` waits until node1 can
connect to the new generation's port. A sync is applied in one transaction (one
iptables-restore / one nft -f), so once the marker answers, every Service in that file is live.

Foreign rules (iptables and nft) are installed before the first proxy of a mode starts, and
compared byte for byte after every sync of the module plus 20 more. The order of the last
three tests matters: that comparison, then cleanup (stops the proxy, starts it again after),
then tamper repair, last because flushing the whole nat table removes the foreign nat rules.
Every other test sets up the Services it uses, so any one test can also run alone.

Runtime: about 2 min 15 s for both modes on a shared 2-core machine (`pytest -q
tests/proxy/test_packets.py`). `KDNS_PROXY_COMMAND=SCRIPT` runs SCRIPT (same arguments) instead
of `-m kdns proxy`: for negative controls, e.g. a wrapper that flushes conntrack at start must
fail test_restart_does_not_flush_conntrack.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.builders import manifest_text
from tests.conftest import need_root, need_tool
from tests.processes import stop_process
from tests.proxy.topology import (
    CLUSTER_CIDR,
    ECHO,
    EXT_IP,
    EXT_OTHER_IP,
    NODE1_EXT_IP,
    NODE1_IPS,
    SERVICE_CIDR,
    Cluster,
)

MODES = ("iptables", "nftables")
NAMESPACE = "test"
SYNC_PERIOD = 2.0  # --sync-period: also the canary / tamper-repair interval
# --min-sync-period: shorter than the default 1 s so the ~45 manifest rewrites of a mode take
# half a second each (the manifest poll and its settle time) instead of a second.
MIN_SYNC_PERIOD = 0.2
APPLY_TIMEOUT = 15.0  # seconds until a rewritten manifest must be live
START_TIMEOUT = 20.0  # seconds until a started proxy must report healthy
CLIENT_DEADLINE = 30.0  # seconds one batch of client connections may take
HEALTHZ = "127.0.0.1:10256"
METRICS = "127.0.0.1:10249"
HEALTH_CHECK_NODE_PORT = 30300

# Upper critical value of chi-square at alpha = 0.001 with 2 degrees of freedom (3 backends):
# NIST/SEMATECH e-Handbook of Statistical Methods, table 1.3.6.7.4 "Critical Values of the
# Chi-Square Distribution", row nu = 2, column 0.999: 13.816.
CHI2_CRIT_DF2 = 13.816

POD_IPS = {"client": "10.244.1.2", "a": "10.244.1.3", "b": "10.244.2.2", "c": "10.244.2.3"}
POD_IPS["d"] = "10.244.2.4"
POD_NODES = {"client": "node1", "a": "node1", "b": "node2", "c": "node2", "d": "node2"}
CLIENT_EXTRA_IPS = [f"10.244.1.{i}" for i in range(100, 110)]


# --- manifests --------------------------------------------------------------------------------


def service(
    name: str,
    cluster_ip: str,
    ports: Sequence[dict[str, Any]] = ({"port": 80, "targetPort": 8080},),
    *,
    lb_ips: Sequence[str] = (),
    **spec: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": NAMESPACE, "name": name},
        "spec": {"clusterIP": cluster_ip, "ports": [dict(p) for p in ports], **spec},
    }
    if lb_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}
    return obj


def endpoint(pod: str, **conditions: bool) -> dict[str, Any]:
    """An EndpointSlice endpoint for one of the cluster's pods, on its real node."""
    return {
        "addresses": [POD_IPS[pod]],
        "nodeName": POD_NODES[pod],
        "conditions": {"ready": True, **conditions},
        "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod},
    }


def endpoint_slice(
    service_name: str,
    endpoints: Sequence[dict[str, Any] | str],
    ports: Sequence[dict[str, Any]] = ({"port": 8080, "protocol": "TCP"},),
    suffix: str = "1",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": NAMESPACE,
            "name": f"{service_name}-{suffix}",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [endpoint(e) if isinstance(e, str) else e for e in endpoints],
        "ports": [dict(p) for p in ports],
    }


def simple(name: str, cluster_ip: str, pods: Sequence[str], **spec: Any) -> list[dict[str, Any]]:
    """A one-port TCP Service (80 → 8080) and its slice."""
    return [service(name, cluster_ip, **spec), endpoint_slice(name, pods)]


# --- the harness --------------------------------------------------------------------------------


class Harness:
    """One mode's cluster, its manifest file and the proxy running in node1."""

    def __init__(self, cluster: Cluster, mode: str, workdir: Path) -> None:
        self.cluster = cluster
        self.mode = mode
        self.manifest = workdir / "cluster.yaml"
        self.generation = 0
        self.rewrites = 0  # manifest rewrites applied (each one a sync)
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self.proc: Any = None
        self.log = workdir / "proxy.log"

    # manifests

    def apply(self, **groups: list[dict[str, Any]] | None) -> None:
        """Set (or with None remove) named groups of objects, write the file and wait until
        the proxy has made it live."""
        for key, objs in groups.items():
            if objs is None:
                self.objects.pop(key, None)
            else:
                self.objects[key] = objs
        self.generation += 1
        port = 1000 + self.generation
        marker = [
            service("generation", "10.96.255.1", [{"port": port, "targetPort": 8080}]),
            endpoint_slice("generation", ["a"]),
        ]
        docs = [o for objs in self.objects.values() for o in objs] + marker
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(manifest_text(*docs))
        os.replace(tmp, self.manifest)
        self.rewrites += 1
        if self.proc is not None:
            self.wait_reachable("node1", f"10.96.255.1:{port}", APPLY_TIMEOUT)

    def wait_reachable(self, role: str, target: str, timeout: float) -> float:
        """Seconds until one TCP connection from `role` to `target` succeeds (fails after
        `timeout`)."""
        start = time.monotonic()
        result = self.cluster.run(
            role,
            sys.executable,
            ECHO,
            "client",
            "--tcp",
            target,
            "--timeout",
            "0.3",
            "--until-ok",
            str(timeout),
            check=False,
            timeout=timeout + 10,
        )
        assert result.returncode == 0, (
            f"{target} not reachable from {role} within {timeout} s: {result.stdout}"
            f" {result.stderr}\nproxy log:\n{self.log_tail()}"
        )
        return time.monotonic() - start

    # the proxy

    def command(self, *extra: str) -> list[str]:
        """`python -m kdns proxy` with this cluster's settings (KDNS_PROXY_COMMAND, a script
        path, replaces `-m kdns proxy`: for trying the harness against a stand-in)."""
        program = os.environ.get("KDNS_PROXY_COMMAND")
        return [
            sys.executable,
            *([program] if program else ["-m", "kdns", "proxy"]),
            "--mode",
            self.mode,
            "--manifests",
            str(self.manifest),
            "--node-name",
            "node1",
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--sync-period",
            str(SYNC_PERIOD),
            "--min-sync-period",
            str(MIN_SYNC_PERIOD),
            *extra,
        ]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("a") as log:  # the child keeps its own copy of the descriptor
            self.proc = self.cluster.spawn(
                "node1", *self.command(), stdout=log.fileno(), stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self.http("node1", f"http://{HEALTHZ}/healthz")[0] != 200:
            assert self.proc.poll() is None, f"proxy exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"proxy not healthy:\n{self.log_tail()}"
            time.sleep(0.1)
        self.wait_reachable("node1", f"10.96.255.1:{1000 + self.generation}", APPLY_TIMEOUT)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the proxy's output (every run of it in this module, in order)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def run_kdns(self, *extra: str) -> Any:
        return self.cluster.run("node1", *self.command(*extra), check=False, timeout=60)

    # clients

    def client(
        self,
        role: str,
        proto: str,
        target: str,
        count: int = 1,
        timeout: float = 1.0,
        source: Sequence[str] = (),
        distinct_sports: int = 0,
    ) -> dict[str, Any]:
        args = ["client", f"--{proto}", target, "--count", str(count), "--timeout", str(timeout)]
        args += ["--deadline", str(CLIENT_DEADLINE)]
        if source:
            args += ["--source", ",".join(source)]
        if distinct_sports:
            args += ["--distinct-sports", str(distinct_sports)]
        out = self.cluster.python(role, ECHO, *args, timeout=CLIENT_DEADLINE + timeout + 30)
        return json.loads(out)

    def http(self, role: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET `url` from `role` with urllib: (status, body); (0, error) when no answer."""
        script = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen(sys.argv[1], timeout={timeout})\n"
            "    print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); print(e.read().decode())\n"
            "except OSError as e:\n"
            "    print(0); print(e)\n"
        )
        out = self.cluster.python(role, "-c", script, url, timeout=timeout + 10)
        status, _, body = out.partition("\n")
        return int(status), body

    def metrics(self) -> str:
        status, body = self.http("node1", f"http://{METRICS}/metrics")
        assert status == 200, body
        return body


def metric_sum(metrics: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (e.g. over `kind`)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- what is not kdns's ---------------------------------------------------------------------------

FOREIGN_IPTABLES = """\
*mangle
:FOREIGN-MANGLE - [0:0]
-A PREROUTING -d 192.0.2.99/32 -j FOREIGN-MANGLE
-A FOREIGN-MANGLE -j MARK --set-xmark 0x1/0x1
COMMIT
*filter
:FOREIGN-FW - [0:0]
-A INPUT -s 192.0.2.99/32 -j DROP
-A FORWARD -d 192.0.2.99/32 -j FOREIGN-FW
-A OUTPUT -d 192.0.2.98/32 -p tcp --dport 9 -j REJECT
-A FOREIGN-FW -p tcp --dport 9 -j DROP
COMMIT
*nat
:FOREIGN-NAT - [0:0]
-A PREROUTING -d 192.0.2.99/32 -j FOREIGN-NAT
-A POSTROUTING -s 192.0.2.0/24 -j FOREIGN-NAT
-A FOREIGN-NAT -s 192.0.2.0/24 -j RETURN
COMMIT
"""

FOREIGN_NFT = """\
table inet foreign {
    set blocked { type ipv4_addr; elements = { 192.0.2.97 } }
    chain input { type filter hook input priority 0; policy accept; ip saddr @blocked drop; }
    chain post { type nat hook postrouting priority 50; ip daddr 192.0.2.96 counter masquerade; }
}
table ip kdnsx {
    chain c { ip saddr 192.0.2.95 counter accept; }
}
"""

# kdns's iptables chains: kube-proxy's KUBE-* names and its canary, KDNS-CANARY.
KDNS_CHAIN = re.compile(r"\b(KUBE|KDNS)-[A-Z0-9-]+")
# Tables iptables-nft owns (compared through iptables-save) and kdns's own table.
_XTABLES = re.compile(r"^table (ip|ip6) (filter|nat|mangle|raw|security) \{$")
_KDNS_TABLE = re.compile(r"^table (ip|ip6) kdns \{$")


def foreign_state(cluster: Cluster) -> str:
    """Everything in node1's ruleset that kdns does not own, as text to compare byte for byte.

    iptables: `iptables-save` without the lines naming a KUBE- or KDNS- chain (kdns's chains
    and the jumps into them) and without the "# Generated" comments; the per-chain packet counters of
    built-in chains are blanked, because traffic moves them. nftables: `nft list ruleset` minus
    the iptables-nft tables (covered above) and minus `table ip kdns` / `ip6 kdns`; the foreign
    nft counters are blanked for the same reason.
    """
    save = cluster.run("node1", "iptables-save").stdout
    ipt = [
        re.sub(r"\[\d+:\d+\]$", "[-]", line)
        for line in save.splitlines()
        if not line.startswith("#") and not KDNS_CHAIN.search(line)
    ]
    ruleset = cluster.run("node1", "nft", "list", "ruleset").stdout
    nft: list[str] = []
    skipping = False
    for line in ruleset.splitlines():
        if line.startswith("table "):
            skipping = bool(_XTABLES.match(line) or _KDNS_TABLE.match(line))
        if not skipping:
            nft.append(re.sub(r"counter packets \d+ bytes \d+", "counter", line))
        if line == "}":
            skipping = False
    return "\n".join(["# iptables-save", *ipt, "# nft", *nft])


def kdns_leftovers(cluster: Cluster) -> list[str]:
    """Lines of node1's ruleset that belong to kdns: KUBE-/KDNS- chains and rules, kdns tables."""
    save = cluster.run("node1", "iptables-save").stdout
    tables = cluster.run("node1", "nft", "list", "tables").stdout
    return [line for line in save.splitlines() if KDNS_CHAIN.search(line)] + [
        line for line in tables.splitlines() if re.fullmatch(r"table ip6? kdns", line.strip())
    ]


# --- fixtures -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """A SIGTERM (a CI job's timeout) raises KeyboardInterrupt, so the ExitStack still deletes
    the namespaces and stops the processes: pytest's default would leave them behind."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module", params=MODES)
def harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    need_root()
    need_tool("ip", "iproute2")
    need_tool("iptables-restore", "iptables")
    need_tool("nft", "nftables")
    need_tool("conntrack", "conntrack")
    mode: str = request.param
    with contextlib.ExitStack() as cleanup, _sigterm_unwinds():
        cluster = Cluster.create(cleanup, tag=mode[:3])
        # Entries carry their start time: a flow replaced in the restart test shows it.
        cluster.run("node1", "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_timestamp=1")
        cluster.start_echo_servers()
        cluster.run("node1", "iptables-restore", "--noflush", input_text=FOREIGN_IPTABLES)
        cluster.run("node1", "nft", "-f", "-", input_text=FOREIGN_NFT)
        h = Harness(cluster, mode, tmp_path_factory.mktemp(f"proxy-{mode}"))
        h.foreign_before = foreign_state(cluster)  # type: ignore[attr-defined]
        h.apply()
        cleanup.callback(h.stop)
        yield h


@pytest.fixture
def proxy(harness: Harness) -> Harness:
    """The harness with the proxy running (started on first use, kept for the module)."""
    if harness.proc is None or harness.proc.poll() is not None:
        harness.start()
    return harness


# --- tests ----------------------------------------------------------------------------------------


SPREAD = simple("spread", "10.96.0.10", ["a", "b", "c"])


def test_render_prints_and_changes_nothing(harness: Harness) -> None:
    harness.apply(spread=SPREAD)
    before = harness.cluster.run("node1", "iptables-save").stdout
    before_nft = harness.cluster.run("node1", "nft", "list", "ruleset").stdout
    result = harness.run_kdns("--render")
    assert result.returncode == 0, result.stderr
    expected = "KUBE-SVC-" if harness.mode == "iptables" else "table ip kdns"
    assert expected in result.stdout
    assert "10.96.0.10" in result.stdout
    strip = re.compile(r"^#.*$|\[\d+:\d+\]", re.M)
    assert strip.sub("", harness.cluster.run("node1", "iptables-save").stdout) == strip.sub(
        "", before
    )
    assert harness.cluster.run("node1", "nft", "list", "ruleset").stdout == before_nft
    assert kdns_leftovers(harness.cluster) == []


def chi_square(counts: Sequence[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_even_spread(proxy: Harness, proto: str) -> None:
    proxy.apply(
        spread=SPREAD,
        spread_udp=[
            service(
                "spread-udp", "10.96.0.9", [{"port": 53, "protocol": "UDP", "targetPort": 5353}]
            ),
            endpoint_slice("spread-udp", ["a", "b", "c"], [{"port": 5353, "protocol": "UDP"}]),
        ],
    )
    target = "10.96.0.10:80" if proto == "tcp" else "10.96.0.9:53"
    n = 2000
    # Each attempt its own flow (source ports 20000 + i, below the ephemeral range): the
    # chi-square test assumes independent draws, and a reused port would meet its old
    # conntrack entry and go where it went before.
    summary = proxy.client("client", proto, target, count=n, distinct_sports=20000)
    assert summary["ok"] == n, summary | {"sequence": None}
    counts = [summary["names"].get(name, 0) for name in ("a", "b", "c")]
    assert sum(counts) == n
    stat = chi_square(counts)
    assert stat < CHI2_CRIT_DF2, f"uneven spread {counts}: chi-square {stat:.2f}"
    # Pod to ClusterIP is not masqueraded: the backend sees the pod's own address.
    assert summary["sources"] == {POD_IPS["client"]: n}


def test_multi_port_named_target_ports(proxy: Harness) -> None:
    ports = [
        {"name": "http", "port": 80, "targetPort": "web"},
        {"name": "metrics", "port": 9000, "targetPort": "metrics"},
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
    ]
    # The slice's ports carry the Service port names with the pods' target port numbers.
    slice_ports = [
        {"name": "http", "port": 8081, "protocol": "TCP"},
        {"name": "metrics", "port": 9100, "protocol": "TCP"},
        {"name": "dns", "port": 5353, "protocol": "UDP"},
    ]
    proxy.apply(
        multi=[
            service("multi", "10.96.0.11", ports),
            endpoint_slice("multi", ["b", "c"], slice_ports),
        ]
    )
    for proto, target, port in (
        ("tcp", "10.96.0.11:80", "8081"),
        ("tcp", "10.96.0.11:9000", "9100"),
        ("udp", "10.96.0.11:53", "5353"),
    ):
        summary = proxy.client("client", proto, target, count=60)
        assert summary["ok"] == 60, (target, summary)
        assert summary["ports"] == {port: 60}, target
        assert set(summary["names"]) == {"b", "c"}, target


def test_reject_and_drop(proxy: Harness) -> None:
    proxy.apply(
        empty=[service("empty", "10.96.0.12"), endpoint_slice("empty", [])],
        itp_none=simple("itp-none", "10.96.0.13", ["b", "c"], internalTrafficPolicy="Local"),
    )
    # No endpoint at all: REJECT, refused at once, from a pod (FORWARD) and from the node
    # (OUTPUT). Only 5 tries from the pod: the ICMP port-unreachable a REJECT sends to another
    # host is rate limited per destination (net.ipv4.icmp_ratelimit, a burst of 6 then one a
    # second), so a tight loop sees timeouts after the burst, with kube-proxy too. Replies to
    # the node itself go over loopback and are not limited.
    for role, count in (("client", 5), ("node1", 20)):
        summary = proxy.client(role, "tcp", "10.96.0.12:80", count=count, timeout=1.0)
        assert summary["refused"] == count, (role, summary)
        assert summary["refused_max_ms"] < 100, (role, summary)
    # internalTrafficPolicy Local with endpoints only on node2: dropped, the client times out.
    summary = proxy.client("client", "tcp", "10.96.0.13:80", count=3, timeout=1.0)
    assert summary["timeouts"] == 3, summary
    assert summary["refused"] == 0


def test_masquerade_and_hairpin(proxy: Harness) -> None:
    proxy.apply(
        nodeport=simple(
            "nodeport",
            "10.96.0.14",
            ["b", "c"],
            type="NodePort",
            ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}],
        ),
        hairpin=simple("hairpin", "10.96.0.15", ["client"]),
        spread=SPREAD,
    )
    # Pod → ClusterIP: the backend sees the pod.
    summary = proxy.client("client", "tcp", "10.96.0.10:80", count=30)
    assert summary["ok"] == 30 and summary["sources"] == {POD_IPS["client"]: 30}
    # Outside host → NodePort, Cluster policy: masqueraded to node1 (backends are on node2,
    # which has no route to ext: without masquerade the replies could not come back).
    for node_ip in NODE1_IPS:
        summary = proxy.client("ext", "tcp", f"{node_ip}:30080", count=30)
        assert summary["ok"] == 30, (node_ip, summary)
        assert set(summary["sources"]) <= set(NODE1_IPS), summary["sources"]
    # A pod reaching itself through its Service: works, and not with its own address.
    summary = proxy.client("client", "tcp", "10.96.0.15:80", count=20)
    assert summary["ok"] == 20, summary
    assert summary["names"] == {"client": 20}
    assert POD_IPS["client"] not in summary["sources"]
    assert set(summary["sources"]) <= set(NODE1_IPS), summary["sources"]


def test_nodeport_external_ip_and_lb_source_ranges(proxy: Harness) -> None:
    proxy.apply(
        lb=simple(
            "lb",
            "10.96.0.16",
            ["b", "c"],
            type="LoadBalancer",
            ports=[{"port": 80, "targetPort": 8080, "nodePort": 30081}],
            externalIPs=["192.0.2.10"],
            loadBalancerSourceRanges=[f"{EXT_IP}/32"],
            lb_ips=["192.0.2.20"],
        )
    )
    for target, source in (
        (f"{NODE1_EXT_IP}:30081", EXT_IP),
        # NodePorts are not subject to loadBalancerSourceRanges (kube-proxy behaviour).
        (f"{NODE1_EXT_IP}:30081", EXT_OTHER_IP),
        ("192.0.2.10:80", EXT_IP),
        ("192.0.2.20:80", EXT_IP),
    ):
        summary = proxy.client("ext", "tcp", target, count=20, source=[source])
        assert summary["ok"] == 20, (target, source, summary)
        assert set(summary["names"]) <= {"b", "c"}
    # The LB IP from a source outside the ranges: dropped (a timeout, not a refusal).
    summary = proxy.client("ext", "tcp", "192.0.2.20:80", count=2, source=[EXT_OTHER_IP])
    assert summary["timeouts"] == 2, summary
    # The node reaches its own NodePort, but not on localhost: kdns serves no localhost
    # NodePorts (CVE-2020-8558), so nothing answers there and the connection is refused.
    summary = proxy.client("node1", "tcp", f"{NODE1_EXT_IP}:30081", count=20)
    assert summary["ok"] == 20 and set(summary["names"]) <= {"b", "c"}, summary
    summary = proxy.client("node1", "tcp", "127.0.0.1:30081", count=2)
    assert summary["ok"] == 0 and summary["refused"] == 2, summary


def test_external_traffic_policy_local(proxy: Harness) -> None:
    def local_service(pods: list[str]) -> list[dict[str, Any]]:
        return simple(
            "etp-local",
            "10.96.0.17",
            pods,
            type="LoadBalancer",
            ports=[{"port": 80, "targetPort": 8080, "nodePort": 30082}],
            externalTrafficPolicy="Local",
            healthCheckNodePort=HEALTH_CHECK_NODE_PORT,
            lb_ips=["192.0.2.21"],
        )

    health = f"http://{NODE1_EXT_IP}:{HEALTH_CHECK_NODE_PORT}/"
    proxy.apply(etp_local=local_service(["a", "b"]))
    for target in (f"{NODE1_EXT_IP}:30082", "192.0.2.21:80"):
        summary = proxy.client("ext", "tcp", target, count=30)
        assert summary["ok"] == 30, (target, summary)
        assert summary["names"] == {"a": 30}, target  # only node1's endpoint
        assert summary["sources"] == {EXT_IP: 30}, target  # the client's address is kept
    status, body = proxy.http("ext", health)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["localEndpoints"] == 1
    assert answer["service"] == {"namespace": NAMESPACE, "name": "etp-local"}

    proxy.apply(etp_local=local_service(["b", "c"]))
    summary = proxy.client("ext", "tcp", f"{NODE1_EXT_IP}:30082", count=2)
    assert summary["timeouts"] == 2, summary  # dropped: node1 has no local endpoint
    # Pods still reach the Service through its ClusterIP (Cluster internal policy).
    summary = proxy.client("client", "tcp", "10.96.0.17:80", count=20)
    assert summary["ok"] == 20 and set(summary["names"]) <= {"b", "c"}
    status, body = proxy.http("ext", health)
    assert status == 503, body
    assert json.loads(body)["localEndpoints"] == 0


def test_internal_traffic_policy_local(proxy: Harness) -> None:
    proxy.apply(itp=simple("itp", "10.96.0.18", ["a", "b", "c"], internalTrafficPolicy="Local"))
    summary = proxy.client("client", "tcp", "10.96.0.18:80", count=100)
    assert summary["ok"] == 100, summary
    assert summary["names"] == {"a": 100}


def test_terminating_fallback(proxy: Harness) -> None:
    terminating = {"ready": False, "serving": True, "terminating": True}
    gone = {"ready": False, "serving": False, "terminating": True}

    def term(b_ready: bool) -> list[dict[str, Any]]:
        eps = [
            endpoint("a", **terminating),
            endpoint("b", **({"ready": True} if b_ready else terminating)),
            endpoint("c", **gone),
        ]
        return [service("term", "10.96.0.19"), endpoint_slice("term", eps)]

    proxy.apply(term=term(b_ready=False))
    summary = proxy.client("client", "tcp", "10.96.0.19:80", count=200)
    assert summary["ok"] == 200, summary
    assert set(summary["names"]) == {"a", "b"}, summary["names"]  # never c: not serving
    proxy.apply(term=term(b_ready=True))
    summary = proxy.client("client", "tcp", "10.96.0.19:80", count=100)
    assert summary["ok"] == 100 and summary["names"] == {"b": 100}, summary["names"]


def hinted(pod: str, zones: Sequence[str], nodes: Sequence[str] = ()) -> dict[str, Any]:
    """An endpoint with the hints the EndpointSlice controller writes (forZones, forNodes)."""
    hints: dict[str, Any] = {"forZones": [{"name": z} for z in zones]}
    if nodes:
        hints["forNodes"] = [{"name": n} for n in nodes]
    return endpoint(pod) | {"hints": hints}


def node1(zone: str) -> list[dict[str, Any]]:
    labels = {"kubernetes.io/hostname": "node1", "topology.kubernetes.io/zone": zone}
    return [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1", "labels": labels}}]


def hinted_service(
    name: str, ip: str, distribution: str | None, endpoints: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    spec = {"trafficDistribution": distribution} if distribution else {}
    return [service(name, ip, **spec), endpoint_slice(name, endpoints)]


# (Service, ClusterIP, trafficDistribution, endpoints, the backends node1's pods reach while
# node1 is in zone-a). Pod a is on node1, b, c and d on node2.
TOPOLOGY = [
    ("prefer-close", "10.96.0.40", "PreferClose",
     [hinted("a", ["zone-a"]), hinted("b", ["zone-b"]), hinted("c", ["zone-b"])], {"a"}),
    ("prefer-same-zone", "10.96.0.41", "PreferSameZone",
     [hinted("a", ["zone-a"]), hinted("b", ["zone-a"]), hinted("c", ["zone-b"])], {"a", "b"}),
    # Node hints win over zone hints: b shares node1's zone, but not its node.
    ("prefer-same-node", "10.96.0.42", "PreferSameNode",
     [hinted("a", ["zone-a"], ["node1"]), hinted("b", ["zone-a"], ["node2"]),
      hinted("c", ["zone-b"], ["node2"])], {"a"}),
    # No endpoint on node1: the zone hints, then.
    ("same-node-fallback", "10.96.0.43", "PreferSameNode",
     [hinted("b", ["zone-a"], ["node2"]), hinted("c", ["zone-b"], ["node2"])], {"b"}),
    # No endpoint for zone-a: every endpoint.
    ("zone-fallback", "10.96.0.44", "PreferSameZone",
     [hinted("b", ["zone-b"]), hinted("c", ["zone-c"])], {"b", "c"}),
    # One endpoint without a hint (the controller mid-way): the hints are ignored.
    ("partial-hints", "10.96.0.45", None,
     [hinted("a", ["zone-a"]), endpoint("b")], {"a", "b"}),
]  # fmt: skip


def test_topology_hints(proxy: Harness) -> None:
    groups = {name: hinted_service(name, ip, d, eps) for name, ip, d, eps, _ in TOPOLOGY}
    proxy.apply(node1=node1("zone-a"), **groups)
    for name, ip, _, _, expected in TOPOLOGY:
        summary = proxy.client("client", "tcp", f"{ip}:80", count=60)
        assert summary["ok"] == 60, (name, summary)
        assert set(summary["names"]) == expected, (name, summary["names"])
    # node1 relabelled to zone-b: every Service is routed for its new zone.
    proxy.apply(node1=node1("zone-b"))
    summary = proxy.client("client", "tcp", "10.96.0.40:80", count=60)
    assert summary["ok"] == 60 and set(summary["names"]) == {"b", "c"}, summary["names"]
    summary = proxy.client("client", "tcp", "10.96.0.41:80", count=30)
    assert summary["ok"] == 30 and summary["names"] == {"c": 30}, summary["names"]
    proxy.apply(node1=None, **dict.fromkeys(groups))


def service_cidr(*cidrs: str) -> list[dict[str, Any]]:
    """The default ServiceCIDR the API server makes from --service-cluster-ip-range."""
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": list(cidrs)},
        }
    ]


UNALLOCATED = "10.96.0.99"  # inside SERVICE_CIDR, held by no Service


def test_unallocated_cluster_ips(proxy: Harness) -> None:
    # Something outside the cluster holds an address of the Service CIDR no Service was given
    # (ext, node1's default route): a connection to it is refused (ext answers RST) unless the
    # proxy stops it. kube-proxy's nftables mode drops such traffic once it knows the Service
    # CIDRs (KEP-3866 "Behavior of service IPs"); its iptables mode has no such rule.
    proxy.cluster.run("ext", "ip", "addr", "add", f"{UNALLOCATED}/32", "dev", "eth0")
    try:
        proxy.apply(allocated=simple("allocated", "10.96.0.47", ["b"]))
        for role in ("client", "node1"):
            summary = proxy.client(role, "tcp", f"{UNALLOCATED}:80", count=2, timeout=1.0)
            assert summary["refused"] == 2, (role, summary)  # before: routed like any address
        proxy.apply(servicecidr=service_cidr(SERVICE_CIDR))
        for role in ("client", "node1"):
            summary = proxy.client(role, "tcp", f"{UNALLOCATED}:80", count=2, timeout=1.0)
            if proxy.mode == "nftables":
                assert summary["timeouts"] == 2 and summary["refused"] == 0, (role, summary)
            else:
                assert summary["refused"] == 2, (role, summary)
            # A Service's own ClusterIP in that CIDR still works.
            summary = proxy.client(role, "tcp", "10.96.0.47:80", count=5)
            assert summary["ok"] == 5 and summary["names"] == {"b": 5}, (role, summary)
        # The ServiceCIDR deleted: the next (full) sync takes the drop away again.
        proxy.apply(servicecidr=None)
        summary = proxy.client("client", "tcp", f"{UNALLOCATED}:80", count=2, timeout=1.0)
        assert summary["refused"] == 2, summary
    finally:
        proxy.apply(servicecidr=None, allocated=None)
        proxy.cluster.run("ext", "ip", "addr", "del", f"{UNALLOCATED}/32", "dev", "eth0")


def test_load_balancer_ip_mode_proxy(proxy: Harness) -> None:
    lb = service(
        "ipmode",
        "10.96.0.46",
        [{"port": 80, "targetPort": 8080, "nodePort": 30083}],
        type="LoadBalancer",
    )
    lb["status"] = {
        "loadBalancer": {
            "ingress": [
                {"ip": "192.0.2.24", "ipMode": "VIP"},
                {"ip": "192.0.2.25", "ipMode": "Proxy"},
            ]
        }
    }
    proxy.apply(ipmode=[lb, endpoint_slice("ipmode", ["b", "c"])])
    # The VIP is short-circuited on the node, from a pod and from outside.
    for role in ("client", "ext"):
        summary = proxy.client(role, "tcp", "192.0.2.24:80", count=20)
        assert summary["ok"] == 20 and set(summary["names"]) <= {"b", "c"}, (role, summary)
    # The Proxy IP is the load balancer's own (KEP-1860): a pod's packets to it are routed
    # out of the node untouched, and no backend ever sees them.
    summary = proxy.client("client", "tcp", "192.0.2.25:80", count=3, timeout=1.0)
    assert summary["ok"] == 0 and summary["names"] == {}, summary
    proxy.apply(ipmode=None)


def test_session_affinity(proxy: Harness) -> None:
    timeout = 2
    proxy.apply(
        sticky=simple(
            "sticky",
            "10.96.0.20",
            ["a", "b", "c"],
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": timeout}},
        )
    )

    def round_(per_source: int) -> dict[str, str]:
        summary = proxy.client(
            "client",
            "tcp",
            "10.96.0.20:80",
            count=per_source * len(CLIENT_EXTRA_IPS),
            source=CLIENT_EXTRA_IPS,
        )
        assert summary["ok"] == per_source * len(CLIENT_EXTRA_IPS), summary
        chosen = {}
        for source, names in summary["by_client"].items():
            assert len(names) == 1, f"{source} was not sticky: {names}"
            chosen[source] = next(iter(names))
        return chosen

    first = round_(10)
    # Ten clients all on one backend by chance: (1/3)^9.
    assert len(set(first.values())) > 1, first
    time.sleep(timeout / 2)
    assert round_(3) == first  # still within timeoutSeconds of the last connection
    time.sleep(timeout + 1.5)
    after = round_(3)
    # Expired: each client chose again; all ten keeping their backend by chance: (1/3)^10.
    assert after != first, (first, after)


def conntrack_ids(harness: Harness, sport: int) -> tuple[list[str], str]:
    """node1's conntrack entries of UDP flows from the client pod's `sport`, each as
    "id@start": the kernel may give a re-created entry the id of the one it replaces, not its
    start time (the harness turns conntrack timestamps on)."""
    out = harness.cluster.run(
        "node1",
        "conntrack",
        "-L",
        "-p",
        "udp",
        "--orig-src",
        POD_IPS["client"],
        "--sport",
        str(sport),
        "-o",
        "id,ktimestamp",
        check=False,
    ).stdout
    entries = re.findall(r"\[start=([^\]]+)\].*?id=(\d+)", out)
    return [f"{entry_id}@{start}" for start, entry_id in entries], out


def wait_flow(harness: Harness, sport: int, pod: str, timeout: float = 20.0) -> None:
    """Waits until the client's UDP flow from `sport` has a conntrack entry DNATed to `pod`
    that has seen a reply: the stream has reached that endpoint and heard back from it."""
    deadline = time.monotonic() + timeout
    while True:
        _, listing = conntrack_ids(harness, sport)
        replied = [
            line
            for line in listing.splitlines()
            if "[UNREPLIED]" not in line and f"src={POD_IPS[pod]} " in line
        ]
        if replied:
            return
        assert time.monotonic() < deadline, f"no replied flow to {pod} in {timeout} s: {listing}"
        time.sleep(0.05)


def wait_syncs(harness: Harness, count: int, timeout: float = 30.0) -> None:
    """Waits until the running proxy has made `count` successful syncs (its counter starts at
    0 with the process)."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = harness.metrics()
        done = metric_sum(metrics, "kdns_proxy_syncs_total", mode=harness.mode, result="ok")
        if done >= count:
            return
        assert time.monotonic() < deadline, f"{done} syncs after {timeout} s, not {count}"
        time.sleep(0.1)


def udp_service(pod: str) -> list[dict[str, Any]]:
    return [
        service("udp", "10.96.0.21", [{"port": 53, "protocol": "UDP", "targetPort": 5353}]),
        endpoint_slice("udp", [pod], [{"port": 5353, "protocol": "UDP"}]),
    ]


def udp_stream(proxy: Harness, sport: int, duration: float) -> subprocess.Popen[str]:
    """A client pod sending to the UDP Service from one fixed source port every 50 ms."""
    return proxy.cluster.spawn(
        "client",
        sys.executable,
        ECHO,
        "stream",
        "--udp",
        "10.96.0.21:53",
        "--sport",
        str(sport),
        "--interval",
        "0.05",
        "--duration",
        str(duration),
    )


def test_udp_conntrack_cleanup_on_endpoint_change(proxy: Harness) -> None:
    proxy.apply(udp=udp_service("b"))
    deletes = metric_sum(proxy.metrics(), "kdns_proxy_conntrack_deletes_total", result="ok")
    sport, duration = 40001, 6.0
    stream = udp_stream(proxy, sport, duration)
    wait_flow(proxy, sport, "b")
    changed_at = time.time()
    proxy.apply(udp=udp_service("c"))  # b keeps running: only the Service no longer uses it
    live_at = time.time()
    out, _ = stream.communicate(timeout=duration + 10)
    events = json.loads(out)["events"]
    before = [name for t, name in events if t < changed_at]
    assert before and set(before) == {"b"}, before
    first_c = next((t for t, name in events if name == "c"), None)
    assert first_c is not None, f"never reached the new endpoint: {events[-10:]}"
    # Within a couple of seconds of the sync, every datagram goes to c (without the clean-up
    # the conntrack entry would keep them going to b for as long as the client sends).
    late = [name for t, name in events if t > live_at + 2.0]
    assert late and set(late) == {"c"}, late
    metrics = proxy.metrics()
    assert metric_sum(metrics, "kdns_proxy_conntrack_deletes_total", result="ok") > deletes
    assert metric_sum(metrics, "kdns_proxy_conntrack_deletes_total", result="error") == 0


def test_udp_conntrack_cleanup_when_last_endpoint_goes(proxy: Harness) -> None:
    # N → 0 (kubernetes #125467): with no endpoint left the Service REJECTs, but only new
    # flows see that; the existing conntrack entry must go too, or the client keeps talking
    # to the (still running) old backend.
    proxy.apply(udp=udp_service("c"))
    sport, duration = 40003, 5.0
    stream = udp_stream(proxy, sport, duration)
    wait_flow(proxy, sport, "c")
    changed_at = time.time()
    proxy.apply(udp=[*udp_service("c")[:1], endpoint_slice("udp", [])])
    live_at = time.time()
    out, _ = stream.communicate(timeout=duration + 10)
    events = json.loads(out)["events"]
    before = [name for t, name in events if t < changed_at]
    assert before and set(before) == {"c"}, before
    late = [name for t, name in events if t > live_at + 2.0]
    assert late and set(late) == {None}, late


def test_restart_does_not_flush_conntrack(proxy: Harness) -> None:
    proxy.apply(udp=udp_service("c"))
    sport, duration = 40002, 8.0
    stream = udp_stream(proxy, sport, duration)
    wait_flow(proxy, sport, "c")
    ids_before, listing = conntrack_ids(proxy, sport)
    assert len(ids_before) == 1, listing
    proxy.stop()
    proxy.start()
    # The engine reconciles conntrack right after its first sync, before it starts the next:
    # a second sync means that reconciliation is over.
    wait_syncs(proxy, 2)
    ids_after, listing = conntrack_ids(proxy, sport)
    out, _ = stream.communicate(timeout=duration + 10)
    events = json.loads(out)["events"]
    assert ids_after == ids_before, f"the restart replaced the flow's conntrack entry: {listing}"
    assert {name for _, name in events} <= {"c", None}


def test_foreign_rules_untouched_by_syncs(proxy: Harness) -> None:
    # The foreign rules were installed before the first proxy of this module started; every
    # test since has rewritten the manifests. Drive 20 more syncs, each one a manifest rewrite
    # that changes a Service's endpoints, and count them in the proxy's own metrics.
    syncs = metric_sum(proxy.metrics(), "kdns_proxy_syncs_total", mode=proxy.mode, result="ok")
    for i in range(20):
        proxy.apply(churn=simple("churn", "10.96.0.30", [["a", "b", "c"][i % 3]]))
    metrics = proxy.metrics()
    ok = metric_sum(metrics, "kdns_proxy_syncs_total", mode=proxy.mode, result="ok")
    assert ok - syncs >= 20, metrics
    failures = metric_sum(metrics, "kdns_proxy_sync_failures_total", mode=proxy.mode)
    assert failures == 0, proxy.log_tail()
    assert foreign_state(proxy.cluster) == proxy.foreign_before  # type: ignore[attr-defined]


def test_cleanup(proxy: Harness) -> None:
    assert kdns_leftovers(proxy.cluster)  # the proxy installed something to clean up
    proxy.stop()
    result = proxy.run_kdns("--cleanup")
    assert result.returncode == 0, result.stderr
    assert kdns_leftovers(proxy.cluster) == []
    assert foreign_state(proxy.cluster) == proxy.foreign_before  # type: ignore[attr-defined]
    proxy.start()  # for the tests after this one


def test_tamper_repair(proxy: Harness) -> None:
    if proxy.mode == "iptables":
        tampers = [
            ("iptables", "-t", "nat", "-F", "KUBE-SERVICES"),
            ("iptables", "-t", "nat", "-F"),  # the whole nat table, foreign rules included
        ]
    else:
        tampers = [("nft", "delete", "table", "ip", "kdns")]
    proxy.apply(spread=SPREAD)
    repairs = metric_sum(proxy.metrics(), "kdns_proxy_tamper_repairs_total", mode=proxy.mode)
    for argv in tampers:
        # No check that the service is broken now: the canary may repair it before a client
        # gets there. The repair counter below shows that the tamper was seen.
        proxy.cluster.run("node1", *argv)
        took = proxy.wait_reachable("client", "10.96.0.10:80", SYNC_PERIOD * 2 + 3)
        assert took < SYNC_PERIOD + 2.5
    after = metric_sum(proxy.metrics(), "kdns_proxy_tamper_repairs_total", mode=proxy.mode)
    assert after - repairs >= len(tampers)

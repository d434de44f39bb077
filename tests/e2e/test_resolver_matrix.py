"""Real stub resolvers in a pod whose resolv.conf is kubelet's, against kdns (issue 10).

A node and a pod network namespace: kdns on the node side (NODE_V4:53) forwarding to a dnsmasq
that serves the "outside" names (`ext.example.test`) on the node's own loopback; the pod's
/etc/resolv.conf is exactly what kubelet writes for a pod in namespace `default`. Every client of
`tests/e2e/clients.py` — glibc, musl 1.2.3, Go's pure resolver, Node's getaddrinfo and c-ares,
drill — looks up the same cases and must report the same addresses: short, namespaced and full
names, a headless Service, one with 500 endpoints (at least one of its addresses, whatever the
client makes of a truncated UDP answer), dual-stack, ExternalName to an in-cluster name and to
an outside one, SRV, PTR, and a name that does not exist (a definite "not found", not a
timeout). All traffic stays inside the two namespaces.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import need_root, need_tool
from tests.dns import upstreams
from tests.e2e.clients import CLIENTS, ClientPrograms, Result, build_programs
from tests.e2e.conftest import EXAMPLES
from tests.e2e.netns import NODE_V4, PodNetwork, pod_network
from tests.e2e.test_clients import BIG_IPS, big_manifest

pytestmark = pytest.mark.root

# What kubelet writes for a pod in namespace `default` (ClusterFirst, cluster domain
# cluster.local), with kdns as the nameserver.
RESOLV_CONF = f"""\
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver {NODE_V4}
options ndots:5
"""

UPSTREAM_PORT = 5353  # dnsmasq, on the node namespace's loopback
OUTSIDE_V4, OUTSIDE_V6 = "192.0.2.80", "2001:db8::80"
EXTOUT = """\
apiVersion: v1
kind: Service
metadata:
  name: extout
  namespace: default
spec:
  type: ExternalName
  externalName: ext.example.test
"""
UPSTREAM_WAIT = 10.0  # seconds until dnsmasq must answer

PROBE_UPSTREAM = """\
import sys, time
import dns.message, dns.query
deadline = time.monotonic() + float(sys.argv[2])
q = dns.message.make_query("ext.example.test", "A")
while time.monotonic() < deadline:
    try:
        dns.query.udp(q, "127.0.0.1", port=int(sys.argv[1]), timeout=0.2)
        sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit(1)
"""


@dataclass
class Matrix:
    network: PodNetwork
    programs: ClientPrograms


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> ClientPrograms:
    return build_programs(tmp_path_factory.mktemp("clients"))


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, programs: ClientPrograms) -> Iterator[Matrix]:
    need_root()
    ip = need_tool("ip", "iproute2")
    need_tool("getent", "libc-bin")
    dnsmasq = need_tool("dnsmasq", "dnsmasq-base")
    base = tmp_path_factory.mktemp("matrix")
    extra = base / "manifests"
    extra.mkdir()
    (extra / "extout.yaml").write_text(EXTOUT)
    (extra / "big.yaml").write_text(big_manifest())
    args = ["--manifests", str(EXAMPLES), "--manifests", str(extra)]
    args += ["--upstreams", f"127.0.0.1:{UPSTREAM_PORT}"]
    with pod_network(ip, base, RESOLV_CONF, args) as network:
        command = upstreams.dnsmasq_command(
            dnsmasq,
            UPSTREAM_PORT,
            base / "dnsmasq.log",
            authoritative=True,
            ttl=600,
            extra=(f"--host-record=ext.example.test,{OUTSIDE_V4},{OUTSIDE_V6}",),
        )
        upstream = network.popen_in(network.node, *command)
        try:
            wait_upstream(network)
            yield Matrix(network, programs)
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)


def wait_upstream(network: PodNetwork) -> None:
    started = time.monotonic()
    probe = network.run_in(
        network.node,
        sys.executable,
        "-c",
        PROBE_UPSTREAM,
        str(UPSTREAM_PORT),
        str(UPSTREAM_WAIT),
        timeout=UPSTREAM_WAIT + 10,
    )
    if probe.returncode != 0:
        pytest.fail(f"dnsmasq did not answer in {time.monotonic() - started:.1f} s")


# --- the cases ---------------------------------------------------------------------------------

HEADLESS = {"10.244.1.20", "10.244.2.21", "10.244.3.22"}
REDIS = {"10.97.97.97"}


@dataclass(frozen=True)
class Case:
    name: str  # as a pod's application writes it
    fqdn: str  # for clients that do not use the search list (c-ares' resolve*, drill)
    expected: frozenset[str] = frozenset()  # exactly these, or
    subset_of: frozenset[str] = frozenset()  # at least one of these and nothing else
    not_found: bool = False


ADDRESS_CASES = {
    "short name": Case("redis", "redis.default.svc.cluster.local", frozenset(REDIS)),
    "namespaced name": Case("redis.default", "redis.default.svc.cluster.local", frozenset(REDIS)),
    "full name": Case(
        "redis.default.svc.cluster.local", "redis.default.svc.cluster.local", frozenset(REDIS)
    ),
    "headless": Case(
        "myapp-headless", "myapp-headless.default.svc.cluster.local", frozenset(HEADLESS)
    ),
    "500 endpoints": Case("big", "big.default.svc.cluster.local", subset_of=frozenset(BIG_IPS)),
    "dual-stack": Case(
        "api.prod", "api.prod.svc.cluster.local", frozenset({"10.96.50.50", "fd00:10:96::50"})
    ),
    "ExternalName in the cluster": Case(
        "cache.prod", "cache.prod.svc.cluster.local", frozenset(REDIS)
    ),
    "ExternalName outside": Case(
        "extout", "extout.default.svc.cluster.local", frozenset({OUTSIDE_V4, OUTSIDE_V6})
    ),
    "no such name": Case("nope.test", "nope.test", not_found=True),
}
SRV_CASES = {
    "SRV": Case(
        "_redis._tcp.redis.default.svc.cluster.local",
        "_redis._tcp.redis.default.svc.cluster.local",
        frozenset({"0 100 6379 redis.default.svc.cluster.local"}),
    ),
}
PTR_CASES = {
    "PTR": Case("10.97.97.97", "10.97.97.97", frozenset({"redis.default.svc.cluster.local"}))
}

NO_SEARCH = {"node-cares", "drill"}  # they ask the name as given
ADDRESS_CLIENTS = ["glibc", "musl", "go", "node-lookup", "node-cares", "drill"]
SRV_CLIENTS = ["go", "node-cares", "drill"]
PTR_CLIENTS = ["glibc", "musl", "go", "node-cares", "drill"]


def params(kind: str, clients: list[str], cases: dict[str, Case]) -> list[object]:
    return [
        pytest.param(kind, client, case, id=f"{client}: {title}")
        for client in clients
        for title, case in cases.items()
    ]


def check(result: Result, case: Case, what: str) -> None:
    if case.not_found:
        assert result.not_found, f"{what}: expected a definite 'not found', got {result}"
    elif case.expected:
        assert result.found == case.expected, f"{what}: {result}"
    else:
        assert result.found, f"{what}: nothing found: {result}"
        assert result.found <= case.subset_of, f"{what}: {result}"


@pytest.mark.parametrize(
    ("kind", "client", "case"),
    params("addr", ADDRESS_CLIENTS, ADDRESS_CASES)
    + params("srv", SRV_CLIENTS, SRV_CASES)
    + params("ptr", PTR_CLIENTS, PTR_CASES),
)
def test_client_resolves(matrix: Matrix, kind: str, client: str, case: Case) -> None:
    name = case.fqdn if client in NO_SEARCH else case.name
    result = CLIENTS[client](matrix.network, matrix.programs, kind, name)
    check(result, case, f"{client} {kind} {name}")


def test_pod_resolv_conf_is_kubelets(matrix: Matrix) -> None:
    # Guards the other tests: they exercise the pod's resolv.conf, not the host's.
    assert matrix.network.run_in_pod("cat", "/etc/resolv.conf").stdout == RESOLV_CONF


def test_musl_is_one_that_does_not_retry_over_tcp(matrix: Matrix) -> None:
    # Guards the 500-endpoint case: musl before 1.2.4 keeps a truncated UDP answer. The
    # records it reports are some, not all, of the Service's — the UDP answer's.
    result = CLIENTS["musl"](matrix.network, matrix.programs, "addr", "big")
    assert result.found and result.found < set(BIG_IPS), result

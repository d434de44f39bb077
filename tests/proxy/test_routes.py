"""kdns.proxy.routes: model → service routes, kube-proxy's endpoint categorisation and hashes.

Expectations follow kubernetes/kubernetes pkg/proxy: CategorizeEndpoints (topology.go, its
table test without hints), EndpointSliceCache (endpointslicecache.go: port matching, dedupe,
byEndpoint order), newBaseServiceInfo (serviceport.go: family filtering, zero-CIDR source
ranges, ExternalPolicyLocal, NeedsHealthCheck) and the hash vectors of
docs/kube-proxy.md.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from kdns.model import Endpoint, EndpointPort, Service, ServiceCIDR, ServicePort
from kdns.proxy.routes import (
    EXT_PREFIX,
    FW_PREFIX,
    SEP_PREFIX,
    SVC_PREFIX,
    SVL_PREFIX,
    RouteEndpoint,
    ServicePortRoute,
    build_routes,
    categorize_endpoints,
    is_service_chain,
    join_host_port,
    port_endpoints,
    port_proto_hash,
    service_cidr_ranges,
    service_port_chain_name,
    service_port_endpoint_chain_name,
    service_routes,
)

NODE = "node1"

# --- chain-name hashes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "protocol", "expected"),
    [
        # KEP-3866: "happens to represent ns4/svc4:p80tcp".
        ("ns4/svc4:p80", "tcp", "4SW47YFZTEDKD3PK"),
        # The nftables blog's KUBE-SVC-XPGD46QRK7WJZT7O; the protocol is hashed lower-case.
        ("ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"),
        ("ns1/svc1:p80", "TCP", "XPGD46QRK7WJZT7O"),
    ],
)
def test_port_proto_hash(name: str, protocol: str, expected: str) -> None:
    assert port_proto_hash(name, protocol) == expected


def test_hash_is_kube_proxys_recipe() -> None:
    # portProtoHash spelled out: base32.StdEncoding of the whole sha256, first 16 characters.
    for i in range(200):
        name = f"ns{i}/svc-{i * 7919}:port{i % 13}"
        digest = hashlib.sha256((name + "udp").encode()).digest()
        assert port_proto_hash(name, "udp") == base64.b32encode(digest).decode()[:16]


def test_chain_names() -> None:
    for prefix in (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX):
        chain = service_port_chain_name(prefix, "ns1/svc1:p80", "tcp")
        assert chain == prefix + "XPGD46QRK7WJZT7O"
        assert len(chain) <= 28  # the iptables limit the truncation exists for
        assert is_service_chain(chain)
    sep = service_port_endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80")
    assert sep == SEP_PREFIX + "SXIVWICOYRO3J4NJ"
    assert is_service_chain(sep)
    for foreign in ("KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-XLB-ABC", "CALI-SVC", "MY-CHAIN"):
        assert not is_service_chain(foreign)


@pytest.mark.parametrize(
    ("ip", "port", "expected"),
    [("10.0.0.1", 80, "10.0.0.1:80"), ("fd00::1", 8080, "[fd00::1]:8080")],
)
def test_join_host_port(ip: str, port: int, expected: str) -> None:
    assert join_host_port(ip, port) == expected


def test_route_names() -> None:
    named = ServicePortRoute(("ns", "web"), "http", "TCP", 4, "10.96.0.1", 80)
    unnamed = ServicePortRoute(("ns", "web"), "", "UDP", 4, "10.96.0.1", 53)
    assert named.name == "ns/web:http"
    assert unnamed.name == "ns/web"


# --- CategorizeEndpoints -----------------------------------------------------------------------


def rep(
    ip: str,
    *,
    ready: bool = True,
    serving: bool = True,
    terminating: bool = False,
    local: bool = False,
) -> RouteEndpoint:
    return RouteEndpoint(ip, 80, ready, serving, terminating, local, NODE if local else "node2")


READY_LOCAL = rep("10.0.0.1", local=True)
READY_REMOTE = rep("10.0.0.2")
TERM_SERVING_LOCAL = rep("10.0.0.3", ready=False, terminating=True, local=True)
TERM_SERVING_REMOTE = rep("10.0.0.4", ready=False, terminating=True)
TERM_NOT_SERVING_LOCAL = rep("10.0.0.5", ready=False, serving=False, terminating=True, local=True)
NOT_READY_REMOTE = rep("10.0.0.6", ready=False, serving=False)

# (case, endpoints, uses cluster, uses local, cluster, local, has any)
CATEGORIZE = [
    ("cluster: ready ones", [READY_LOCAL, READY_REMOTE, NOT_READY_REMOTE], True, False,
     [READY_LOCAL, READY_REMOTE], [], True),
    ("cluster: terminating ignored while one is ready", [READY_REMOTE, TERM_SERVING_LOCAL], True,
     False, [READY_REMOTE], [], True),
    ("cluster: all terminating, serving ones used", [TERM_SERVING_LOCAL, TERM_SERVING_REMOTE,
     TERM_NOT_SERVING_LOCAL], True, False, [TERM_SERVING_LOCAL, TERM_SERVING_REMOTE], [], True),
    ("cluster: none serving", [TERM_NOT_SERVING_LOCAL, NOT_READY_REMOTE], True, False, [], [],
     False),
    ("cluster: no endpoints", [], True, False, [], [], False),
    ("local only: ready local", [READY_LOCAL, READY_REMOTE], False, True, [], [READY_LOCAL], True),
    # internalTrafficPolicy Local with only remote endpoints: has any (so DROP, not REJECT).
    ("local only: none local", [READY_REMOTE], False, True, [], [], True),
    ("local only: remote terminating still counts as any", [TERM_SERVING_REMOTE], False, True,
     [], [], True),
    ("local only: nothing usable anywhere", [NOT_READY_REMOTE, TERM_NOT_SERVING_LOCAL], False,
     True, [], [], False),
    # The Local set falls back on its own: a remote ready endpoint does not stop it.
    ("local only: local serving-terminating fallback", [READY_REMOTE, TERM_SERVING_LOCAL,
     TERM_NOT_SERVING_LOCAL], False, True, [], [TERM_SERVING_LOCAL], True),
    ("local only: ready local beats terminating local", [READY_LOCAL, TERM_SERVING_LOCAL], False,
     True, [], [READY_LOCAL], True),
    ("both: ready everywhere", [READY_LOCAL, READY_REMOTE], True, True,
     [READY_LOCAL, READY_REMOTE], [READY_LOCAL], True),
    ("both: cluster ready remote, local terminating", [READY_REMOTE, TERM_SERVING_LOCAL], True,
     True, [READY_REMOTE], [TERM_SERVING_LOCAL], True),
    ("both: no local", [READY_REMOTE], True, True, [READY_REMOTE], [], True),
    ("both: nothing", [], True, True, [], [], False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("endpoints", "uses_cluster", "uses_local", "cluster", "local", "has_any"),
    [pytest.param(*case[1:], id=case[0]) for case in CATEGORIZE],
)
def test_categorize_endpoints(
    endpoints: list[RouteEndpoint],
    uses_cluster: bool,
    uses_local: bool,
    cluster: list[RouteEndpoint],
    local: list[RouteEndpoint],
    has_any: bool,
) -> None:
    got = categorize_endpoints(endpoints, uses_cluster=uses_cluster, uses_local=uses_local)
    assert got == (tuple(cluster), tuple(local), has_any)


# --- endpoints of a port -----------------------------------------------------------------------


def mep(ip: str, *ports: tuple[str, str, int], node: str = "node2", **conditions: Any) -> Endpoint:
    return Endpoint(
        ip,
        node_name=node,
        ports=tuple(EndpointPort(n, p, num) for n, p, num in ports),
        **conditions,
    )


HTTP = ("http", "TCP", 8080)


def test_port_endpoints_match_name_and_protocol() -> None:
    endpoints = [
        mep("10.0.0.1", HTTP, ("dns", "UDP", 5353)),
        mep("10.0.0.2", ("http", "UDP", 8080)),  # same name, other protocol
        mep("10.0.0.3", ("web", "TCP", 8080)),  # other name
        mep("10.0.0.4"),  # no ports
    ]
    http = port_endpoints(ServicePort("http", "TCP", 80, "web"), 4, endpoints, NODE)
    assert [(e.ip, e.port) for e in http] == [("10.0.0.1", 8080)]
    dns = port_endpoints(ServicePort("dns", "UDP", 53, 53), 4, endpoints, NODE)
    assert [(e.ip, e.port) for e in dns] == [("10.0.0.1", 5353)]


def test_port_endpoints_unnamed_port() -> None:
    endpoints = [mep("10.0.0.1", ("", "TCP", 9376))]
    got = port_endpoints(ServicePort("", "TCP", 80, 9376), 4, endpoints, NODE)
    assert [e.address for e in got] == ["10.0.0.1:9376"]


def test_port_endpoints_order_family_dedupe_local() -> None:
    endpoints = [
        mep("10.0.0.2", HTTP),
        mep("10.0.0.10", HTTP),
        mep("fd00::1", HTTP),
        # A slice rebalance lists 10.0.0.2 twice; the local copy wins, as in addEndpoints.
        mep("10.0.0.2", HTTP, node=NODE, ready=False, serving=True, terminating=True),
        mep("10.0.0.3", HTTP, node=""),  # no nodeName: never local
    ]
    port = ServicePort("http", "TCP", 80, "web")
    got = port_endpoints(port, 4, endpoints, NODE)
    # byEndpoint sorts the "ip:port" strings, so 10.0.0.10 comes before 10.0.0.2.
    assert [e.address for e in got] == ["10.0.0.10:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    assert got[1] == RouteEndpoint("10.0.0.2", 8080, False, True, True, True, NODE)
    assert not got[2].local
    assert [e.address for e in port_endpoints(port, 6, endpoints, NODE)] == ["[fd00::1]:8080"]
    # Without a node name nothing is local.
    assert not any(e.local for e in port_endpoints(port, 4, endpoints, ""))


def test_port_endpoints_same_ip_two_port_numbers() -> None:
    # Two slices with different numbers for one port name: two backends (kube-proxy keys
    # endpoints by "ip:port").
    endpoints = [mep("10.0.0.1", HTTP), mep("10.0.0.1", ("http", "TCP", 9090))]
    got = port_endpoints(ServicePort("http", "TCP", 80, "web"), 4, endpoints, NODE)
    assert [e.address for e in got] == ["10.0.0.1:8080", "10.0.0.1:9090"]


# --- service routes ----------------------------------------------------------------------------


def service(**kw: Any) -> Service:
    base: dict[str, Any] = {
        "namespace": "ns",
        "name": "web",
        "cluster_ips": ("10.96.0.10",),
        "ports": (ServicePort("http", "TCP", 80, "web"),),
    }
    base.update(kw)
    return Service(**base)


def test_skipped_services() -> None:
    endpoints = [mep("10.0.0.1", HTTP)]
    external = Service("ns", "ext", type="ExternalName", external_name="example.com")
    headless = service(cluster_ips=(), headless=True)
    no_ip = service(cluster_ips=())
    for svc in (external, headless, no_ip):
        assert service_routes(svc, endpoints, NODE) == ()
    assert service_routes(service(ports=()), endpoints, NODE) == ()


def test_cluster_ip_route() -> None:
    endpoints = [mep("10.0.0.1", HTTP), mep("10.0.0.2", HTTP, ready=False, serving=False)]
    (route,) = service_routes(service(), endpoints, NODE)
    assert route == ServicePortRoute(
        service=("ns", "web"),
        port_name="http",
        protocol="TCP",
        family=4,
        cluster_ip="10.96.0.10",
        port=80,
        endpoints=(
            RouteEndpoint("10.0.0.1", 8080, node_name="node2"),
            RouteEndpoint("10.0.0.2", 8080, False, False, node_name="node2"),
        ),
        cluster_endpoints=(RouteEndpoint("10.0.0.1", 8080, node_name="node2"),),
        has_endpoints=True,
    )
    assert route.has_internal_endpoints and route.has_external_endpoints
    assert not route.externally_accessible
    assert route.uses_cluster_endpoints and not route.uses_local_endpoints


def test_dual_stack_routes_filter_by_family() -> None:
    svc = service(
        type="LoadBalancer",
        cluster_ips=("10.96.0.10", "fd00:10::10"),
        ports=(
            ServicePort("http", "TCP", 80, "web", 30080),
            ServicePort("dns", "UDP", 53, 53, 30053),
        ),
        external_ips=("192.0.2.1", "2001:db8::1"),
        load_balancer_ips=("198.51.100.1", "2001:db8::100"),
        load_balancer_source_ranges=("203.0.113.0/24", "2001:db8:1::/48"),
    )
    endpoints = [mep("10.0.0.1", HTTP), mep("fd00::1", HTTP)]
    routes = service_routes(svc, endpoints, NODE)
    summary = [
        (
            r.port_name,
            r.family,
            r.cluster_ip,
            r.node_port,
            r.external_ips,
            r.load_balancer_ips,
            r.load_balancer_source_ranges,
            [e.address for e in r.endpoints],
        )
        for r in routes
    ]
    assert summary == [
        ("dns", 4, "10.96.0.10", 30053, ("192.0.2.1",), ("198.51.100.1",), ("203.0.113.0/24",), []),
        ("dns", 6, "fd00:10::10", 30053, ("2001:db8::1",), ("2001:db8::100",), ("2001:db8:1::/48",), []),
        ("http", 4, "10.96.0.10", 30080, ("192.0.2.1",), ("198.51.100.1",), ("203.0.113.0/24",), ["10.0.0.1:8080"]),
        ("http", 6, "fd00:10::10", 30080, ("2001:db8::1",), ("2001:db8::100",), ("2001:db8:1::/48",), ["[fd00::1]:8080"]),
    ]  # fmt: skip
    assert [r.has_endpoints for r in routes] == [False, False, True, True]


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        (("203.0.113.0/24", "198.51.100.7/32"), ("203.0.113.0/24", "198.51.100.7/32")),
        # A zero-length range means "allow any", the same as no ranges (newBaseServiceInfo).
        (("203.0.113.0/24", "0.0.0.0/0"), ()),
        # Only the other family's zero range: this family's ranges still apply.
        (("203.0.113.0/24", "::/0"), ("203.0.113.0/24",)),
    ],
)
def test_source_ranges(ranges: tuple[str, ...], expected: tuple[str, ...]) -> None:
    svc = service(type="LoadBalancer", load_balancer_source_ranges=ranges)
    (route,) = service_routes(svc, [], NODE)
    assert route.load_balancer_source_ranges == expected


@pytest.mark.parametrize(
    ("kw", "external_local", "internal_local", "health_check"),
    [
        ({}, False, False, None),
        ({"type": "NodePort", "external_traffic_policy": "Local"}, True, False, None),
        (
            {
                "type": "LoadBalancer",
                "external_traffic_policy": "Local",
                "health_check_node_port": 32000,
            },
            True,
            False,
            32000,
        ),
        # healthCheckNodePort only matters with the Local external policy.
        ({"type": "LoadBalancer", "health_check_node_port": 32000}, False, False, None),
        # externalTrafficPolicy means nothing to a ClusterIP Service (ExternalPolicyLocal).
        ({"external_traffic_policy": "Local", "external_ips": ("192.0.2.1",)}, False, False, None),
        ({"internal_traffic_policy": "Local"}, False, True, None),
    ],
)
def test_policies(
    kw: dict[str, Any], external_local: bool, internal_local: bool, health_check: int | None
) -> None:
    (route,) = service_routes(service(**kw), [], NODE)
    assert route.external_policy_local is external_local
    assert route.internal_policy_local is internal_local
    assert route.health_check_node_port == health_check


def test_affinity() -> None:
    (plain,) = service_routes(service(affinity_timeout=60), [], NODE)
    (sticky,) = service_routes(service(session_affinity="ClientIP", affinity_timeout=60), [], NODE)
    assert plain.affinity_timeout is None
    assert sticky.affinity_timeout == 60


LOCAL_READY = mep("10.0.0.1", HTTP, node=NODE)
REMOTE_READY = mep("10.0.0.2", HTTP)
LOCAL_TERMINATING = mep("10.0.0.3", HTTP, node=NODE, ready=False, terminating=True)

# (case, service fields, endpoints, cluster, local, reachable, has any, internal ok, external ok)
POLICY_ROUTES = [
    ("ITP Local, local endpoint", {"internal_traffic_policy": "Local"},
     [LOCAL_READY, REMOTE_READY], [], ["10.0.0.1"], ["10.0.0.1"], True, True, True),
    # No local endpoint: ClusterIP traffic is dropped (has any, but not internal).
    ("ITP Local, remote only", {"internal_traffic_policy": "Local"}, [REMOTE_READY], [], [], [],
     True, False, True),
    ("ITP Local, nothing", {"internal_traffic_policy": "Local"}, [], [], [], [], False, False,
     False),
    # ITP Local but reachable from outside: the Cluster set exists for external traffic.
    ("ITP Local + NodePort", {"internal_traffic_policy": "Local", "type": "NodePort",
     "ports": (ServicePort("http", "TCP", 80, "web", 30080),)}, [LOCAL_READY, REMOTE_READY],
     ["10.0.0.1", "10.0.0.2"], ["10.0.0.1"], ["10.0.0.1", "10.0.0.2"], True, True, True),
    ("ETP Local, local endpoint", {"type": "NodePort", "external_traffic_policy": "Local",
     "ports": (ServicePort("http", "TCP", 80, "web", 30080),)}, [LOCAL_READY, REMOTE_READY],
     ["10.0.0.1", "10.0.0.2"], ["10.0.0.1"], ["10.0.0.1", "10.0.0.2"], True, True, True),
    ("ETP Local, no local endpoint", {"type": "NodePort", "external_traffic_policy": "Local",
     "ports": (ServicePort("http", "TCP", 80, "web", 30080),)}, [REMOTE_READY], ["10.0.0.2"],
     [], ["10.0.0.2"], True, True, False),
    # The Local set uses its terminating endpoint while the Cluster set uses the ready remote
    # one; both get an endpoint chain (allReachableEndpoints is their union).
    ("ETP Local, local terminating", {"type": "NodePort", "external_traffic_policy": "Local",
     "ports": (ServicePort("http", "TCP", 80, "web", 30080),)},
     [REMOTE_READY, LOCAL_TERMINATING], ["10.0.0.2"], ["10.0.0.3"], ["10.0.0.2", "10.0.0.3"],
     True, True, True),
    # ETP Local on a Service nobody reaches from outside: no Local set (so, as in kube-proxy,
    # no "external endpoints" either, which is moot with no external address to drop).
    ("ETP Local, not external", {"type": "NodePort", "external_traffic_policy": "Local"},
     [LOCAL_READY], ["10.0.0.1"], [], ["10.0.0.1"], True, True, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "endpoints", "cluster", "local", "reachable", "has_any", "internal", "external"),
    [pytest.param(*case[1:], id=case[0]) for case in POLICY_ROUTES],
)
def test_policy_routes(
    kw: dict[str, Any],
    endpoints: list[Endpoint],
    cluster: list[str],
    local: list[str],
    reachable: list[str],
    has_any: bool,
    internal: bool,
    external: bool,
) -> None:
    (route,) = service_routes(service(**kw), endpoints, NODE)
    assert [e.ip for e in route.cluster_endpoints] == cluster
    assert [e.ip for e in route.local_endpoints] == local
    assert [e.ip for e in route.reachable_endpoints] == reachable
    assert route.has_endpoints is has_any
    assert route.has_internal_endpoints is internal
    assert route.has_external_endpoints is external


def test_build_routes_sorted_and_missing_endpoints() -> None:
    b = service(name="b")
    a = service(
        name="a",
        ports=(ServicePort("z", "TCP", 81, 81), ServicePort("y", "UDP", 82, 82)),
    )
    other = service(namespace="aa", name="zz")
    services = {b.key: b, a.key: a, other.key: other}
    endpoints = {b.key: (mep("10.0.0.1", HTTP),)}
    routes = build_routes(services, endpoints, NODE)
    assert [(r.name, r.protocol) for r in routes] == [
        ("aa/zz:http", "TCP"),
        ("ns/a:y", "UDP"),
        ("ns/a:z", "TCP"),
        ("ns/b:http", "TCP"),
    ]
    assert [r.has_endpoints for r in routes] == [False, False, False, True]


# --- service CIDRs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        ([], ()),
        ([("kubernetes", ("10.96.0.0/16",))], ("10.96.0.0/16",)),
        # Dual-stack: IPv4 first, whatever the order in spec.cidrs.
        ([("kubernetes", ("fd00:10:96::/112", "10.96.0.0/16"))], ("10.96.0.0/16", "fd00:10:96::/112")),
        # Two objects: their union (kube-proxy's ServiceCIDRConfig).
        ([("a", ("10.96.0.0/16",)), ("b", ("10.100.0.0/16",))], ("10.96.0.0/16", "10.100.0.0/16")),
        # A wider one covering the old one, and two halves of one range: merged.
        ([("old", ("10.96.0.0/16",)), ("new", ("10.96.0.0/12",))], ("10.96.0.0/12",)),
        ([("a", ("10.96.0.0/17",)), ("b", ("10.96.128.0/17",))], ("10.96.0.0/16",)),
    ],
)  # fmt: skip
def test_service_cidr_ranges(
    objects: list[tuple[str, tuple[str, ...]]], expected: tuple[str, ...]
) -> None:
    assert service_cidr_ranges(ServiceCIDR(name, cidrs) for name, cidrs in objects) == expected

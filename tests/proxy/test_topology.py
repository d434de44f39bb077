"""Topology-aware routing and LoadBalancer ipMode: which endpoints this node uses.

Expectations follow kube-proxy's `CategorizeEndpoints` / `topologyModeFromHints`
(pkg/proxy/topology.go, 1.33+, PreferSameTrafficDistribution on as from 1.34) and KEP-2433,
KEP-4444 and KEP-3015: Cluster-policy traffic follows node hints when every ready endpoint
has one and one names this node, else zone hints on the same terms, else every endpoint; the
Local policies and the terminating fallback ignore hints. `ipMode: Proxy` ingress IPs get no
rules (KEP-1860, `IsVIPMode`).

Each table row reads like kube-proxy's own: this node (name, zone), the endpoints (address,
node, hints), and the addresses the Cluster and Local lists end up with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from kdns.model import (
    ZONE_LABEL,
    EndpointSlice,
    Node,
    endpointslice_from_dict,
    service_from_dict,
)
from kdns.proxy import iptables, nftables
from kdns.proxy.dataplane import IptablesDataplane, run_command
from kdns.proxy.dataplane import Node as DataplaneNode
from kdns.proxy.ipvs.rules import render as ipvs_render
from kdns.proxy.routes import (
    PREFER_SAME_NODE,
    PREFER_SAME_ZONE,
    RouteEndpoint,
    build_routes,
    categorize_endpoints,
    service_routes,
    topology_mode,
)
from kdns.proxy.sync import SyncEngine
from kdns.sources import kube
from kdns.sources.scope import Scope
from kdns.store import ENDPOINTSLICES, NODES, SERVICES, Store
from tests.builders import model_endpoint, model_service
from tests.conftest import throwaway_netns
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer
from tests.proxy.builders import NODE, PODS


def hinted(
    ip: str,
    node: str,
    zones: str = "",
    nodes: str = "",
    *,
    ready: bool = True,
    terminating: bool = False,
    me: str = "node-a1",
) -> RouteEndpoint:
    """An endpoint on `node`, hinted for the comma-separated `zones` and `nodes`."""
    return RouteEndpoint(
        ip,
        80,
        ready=ready,
        serving=True,
        terminating=terminating,
        local=node == me,
        node_name=node,
        zone_hints=tuple(z for z in zones.split(",") if z),
        node_hints=tuple(n for n in nodes.split(",") if n),
    )


__all__ = ["kube_api", "kubeconfig"]  # fixtures, re-exported for pytest

# Nodes node-a1, node-a2 are in zone-a; node-b1 in zone-b; node-c1 in zone-c.
A1 = hinted("10.1.1.1", "node-a1", "zone-a")
A2 = hinted("10.1.1.2", "node-a2", "zone-a")
B1 = hinted("10.1.2.1", "node-b1", "zone-b")
C1 = hinted("10.1.3.1", "node-c1", "zone-c")
B1_NO_HINT = hinted("10.1.2.1", "node-b1")
C1_NOT_READY_NO_HINT = hinted("10.1.3.1", "node-c1", ready=False)
# PreferSameNode: the EndpointSlice controller writes both a node and a zone hint.
A1_N = hinted("10.1.1.1", "node-a1", "zone-a", "node-a1")
A2_N = hinted("10.1.1.2", "node-a2", "zone-a", "node-a2")
B1_N = hinted("10.1.2.1", "node-b1", "zone-b", "node-b1")
A2_ZONE_ONLY = hinted("10.1.1.2", "node-a2", "zone-a")
# topology-mode Auto gives an endpoint of an over-provisioned zone to another zone.
B1_FOR_A = hinted("10.1.2.1", "node-b1", "zone-a")
B2_FOR_C = hinted("10.1.2.2", "node-b1", "zone-c")
# Terminating but still serving, hinted elsewhere.
B1_TERMINATING = hinted("10.1.2.1", "node-b1", "zone-b", ready=False, terminating=True)
C1_TERMINATING = hinted("10.1.3.1", "node-c1", "zone-c", ready=False, terminating=True)

# (case, node, zone, endpoints, hints used, Cluster endpoints)
CLUSTER = [
    ("no hints: every ready endpoint", "node-a1", "zone-a",
     [hinted("10.1.1.1", "node-a1"), B1_NO_HINT], "", ["10.1.1.1", "10.1.2.1"]),
    ("zone hints: this zone's endpoints", "node-a1", "zone-a",
     [A1, A2, B1, C1], PREFER_SAME_ZONE, ["10.1.1.1", "10.1.1.2"]),
    ("zone hints: a node of another zone", "node-c1", "zone-c",
     [A1, A2, B1, C1], PREFER_SAME_ZONE, ["10.1.3.1"]),
    ("zone hints: none for this zone, fall back to all", "node-d1", "zone-d",
     [A1, A2, B1], "", ["10.1.1.1", "10.1.1.2", "10.1.2.1"]),
    ("zone hints: this node's zone is unknown, fall back to all", "node-a1", "",
     [A1, B1], "", ["10.1.1.1", "10.1.2.1"]),
    ("zone hints: one ready endpoint without a hint, ignore them all", "node-a1", "zone-a",
     [A1, A2, B1_NO_HINT], "", ["10.1.1.1", "10.1.1.2", "10.1.2.1"]),
    ("zone hints: an unhinted endpoint that is not ready does not count", "node-a1", "zone-a",
     [A1, B1, C1_NOT_READY_NO_HINT], PREFER_SAME_ZONE, ["10.1.1.1"]),
    ("zone hints: an endpoint lent to this zone by topology-mode Auto", "node-a1", "zone-a",
     [A1, B1_FOR_A, B2_FOR_C], PREFER_SAME_ZONE, ["10.1.1.1", "10.1.2.1"]),
    ("node hints: this node's endpoint", "node-a1", "zone-a",
     [A1_N, A2_N, B1_N], PREFER_SAME_NODE, ["10.1.1.1"]),
    ("node hints: none for this node, fall back to the zone", "node-a2", "zone-a",
     [A1_N, B1_N], PREFER_SAME_ZONE, ["10.1.1.1"]),
    ("node hints: none for this node or zone, fall back to all", "node-c1", "zone-c",
     [A1_N, A2_N, B1_N], "", ["10.1.1.1", "10.1.1.2", "10.1.2.1"]),
    ("node hints: one endpoint has only a zone hint, use the zone", "node-a1", "zone-a",
     [A1_N, A2_ZONE_ONLY, B1_N], PREFER_SAME_ZONE, ["10.1.1.1", "10.1.1.2"]),
    ("node hints: this node's name is unknown, use the zone", "", "zone-a",
     [A1_N, A2_N, B1_N], PREFER_SAME_ZONE, ["10.1.1.1", "10.1.1.2"]),
    ("nothing ready: serving terminating endpoints, hints ignored", "node-a1", "zone-a",
     [B1_TERMINATING, C1_TERMINATING], "", ["10.1.2.1", "10.1.3.1"]),
    ("no endpoints at all", "node-a1", "zone-a", [], "", []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("node", "zone", "endpoints", "mode", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in CLUSTER],
)
def test_cluster_endpoints(
    node: str, zone: str, endpoints: list[RouteEndpoint], mode: str, expected: list[str]
) -> None:
    endpoints = [
        hinted(e.ip, e.node_name, ",".join(e.zone_hints), ",".join(e.node_hints),
               ready=e.ready, terminating=e.terminating, me=node)
        for e in endpoints
    ]  # fmt: skip
    assert topology_mode(endpoints, node, zone) == mode
    cluster, local, has_any = categorize_endpoints(
        endpoints, uses_cluster=True, uses_local=False, node_name=node, zone=zone
    )
    assert [e.ip for e in cluster] == expected
    assert local == ()
    assert has_any == bool(expected)


# (case, node, zone, endpoints, Local endpoints): Local policy takes this node's endpoints,
# whatever their hints say.
LOCAL = [
    ("local ready endpoint hinted for another zone", "node-a1", "zone-a",
     [hinted("10.1.1.1", "node-a1", "zone-b"), B1], ["10.1.1.1"]),
    ("local ready endpoint hinted for another node", "node-a1", "zone-a",
     [hinted("10.1.1.1", "node-a1", "zone-a", "node-a2"), A2_N], ["10.1.1.1"]),
    ("no local endpoint, though this zone has one", "node-a2", "zone-a",
     [A1, B1], []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("node", "zone", "endpoints", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in LOCAL],
)
def test_local_policy_ignores_hints(
    node: str, zone: str, endpoints: list[RouteEndpoint], expected: list[str]
) -> None:
    endpoints = [
        hinted(e.ip, e.node_name, ",".join(e.zone_hints), ",".join(e.node_hints), me=node)
        for e in endpoints
    ]
    cluster, local, has_any = categorize_endpoints(
        endpoints, uses_cluster=False, uses_local=True, node_name=node, zone=zone
    )
    assert [e.ip for e in local] == expected
    assert cluster == ()
    assert has_any


# --- from API objects to routes ----------------------------------------------------------------


def slice_dict(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": "web-abc",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": endpoints,
    }


def endpoint_dict(ip: str, node: str, zone: str, distribution: str) -> dict[str, Any]:
    """An endpoint as the EndpointSlice controller writes it for `distribution`
    (staging/src/k8s.io/endpointslice/trafficdist: a zone hint for every value, a node hint
    too for PreferSameNode)."""
    hints: dict[str, Any] = {"forZones": [{"name": zone}]}
    if distribution == "PreferSameNode":
        hints["forNodes"] = [{"name": node}]
    return {"addresses": [ip], "nodeName": node, "zone": zone, "hints": hints}


def service_dict(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}], **spec},
        "status": status or {},
    }


# (trafficDistribution, node, zone, Cluster endpoints). Endpoints: 10.1.1.1 on node-a1 and
# 10.1.1.2 on node-a2 (zone-a), 10.1.2.1 on node-b1 (zone-b).
DISTRIBUTIONS = [
    ("PreferClose", "node-a1", "zone-a", ["10.1.1.1", "10.1.1.2"]),
    ("PreferSameZone", "node-b1", "zone-b", ["10.1.2.1"]),
    ("PreferSameZone", "node-c1", "zone-c", ["10.1.1.1", "10.1.1.2", "10.1.2.1"]),
    ("PreferSameNode", "node-a2", "zone-a", ["10.1.1.2"]),
    ("PreferSameNode", "node-a3", "zone-a", ["10.1.1.1", "10.1.1.2"]),
    ("PreferSameNode", "node-c1", "zone-c", ["10.1.1.1", "10.1.1.2", "10.1.2.1"]),
]


@pytest.mark.parametrize(("distribution", "node", "zone", "expected"), DISTRIBUTIONS)
def test_traffic_distribution_from_api_objects(
    distribution: str, node: str, zone: str, expected: list[str]
) -> None:
    service = service_from_dict(service_dict({"trafficDistribution": distribution}))
    assert service.traffic_distribution == distribution
    placed = [("10.1.1.1", "node-a1", "zone-a"), ("10.1.1.2", "node-a2", "zone-a"),
              ("10.1.2.1", "node-b1", "zone-b")]  # fmt: skip
    eps = endpointslice_from_dict(
        slice_dict([endpoint_dict(*p, distribution) for p in placed])
    ).endpoints
    (route,) = service_routes(service, eps, node, zone=zone)
    assert [e.ip for e in route.cluster_endpoints] == expected
    (same,) = build_routes({service.key: service}, {service.key: eps}, node, zone=zone)
    assert same == route


@pytest.mark.parametrize(
    ("policy", "expected_cluster", "expected_local"),
    [
        # internalTrafficPolicy Local: ClusterIP traffic only to this node, no Cluster list.
        ({"internalTrafficPolicy": "Local"}, [], ["10.1.2.1"]),
        # externalTrafficPolicy Local: external traffic to this node's endpoints; the Cluster
        # list (pods' short-circuit) still follows the hints.
        (
            {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
             "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            ["10.1.1.1"], ["10.1.2.1"],
        ),
    ],
)  # fmt: skip
def test_local_policies_override_topology(
    policy: dict[str, Any], expected_cluster: list[str], expected_local: list[str]
) -> None:
    # This node, node-b1, sits in zone-a by its label while its endpoint is hinted for zone-b.
    service = service_from_dict(service_dict({"trafficDistribution": "PreferClose", **policy}))
    eps = endpointslice_from_dict(
        slice_dict(
            [
                endpoint_dict("10.1.1.1", "node-a1", "zone-a", "PreferClose"),
                endpoint_dict("10.1.2.1", "node-b1", "zone-b", "PreferClose"),
            ]
        )
    ).endpoints
    (route,) = service_routes(service, eps, "node-b1", zone="zone-a")
    assert [e.ip for e in route.cluster_endpoints] == expected_cluster
    assert [e.ip for e in route.local_endpoints] == expected_local


# --- LoadBalancer ipMode -----------------------------------------------------------------------


LB_STATUS = {
    "loadBalancer": {
        "ingress": [
            {"ip": "198.51.100.7"},
            {"ip": "198.51.100.8", "ipMode": "VIP"},
            {"ip": "198.51.100.9", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"},
        ]
    }
}


def lb_routes(status: dict[str, Any]) -> tuple[Any, ...]:
    spec = {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
    service = service_from_dict(service_dict(spec, status))
    eps = endpointslice_from_dict(
        slice_dict([{"addresses": ["10.1.1.1"], "nodeName": "node-b1"}])
    ).endpoints
    return service_routes(service, eps, "node-a1")


def test_ip_mode_proxy_gets_no_route() -> None:
    (route,) = lb_routes(LB_STATUS)
    assert route.load_balancer_ips == ("198.51.100.7", "198.51.100.8")


def vip_only_status() -> dict[str, Any]:
    ingress = [i for i in LB_STATUS["loadBalancer"]["ingress"] if i.get("ipMode") != "Proxy"]
    return {"loadBalancer": {"ingress": ingress}}


def test_ip_mode_proxy_renders_nothing_in_any_mode() -> None:
    # The Proxy IP adds not one rule, set element or IPVS service to what the VIPs need: pod
    # and node traffic to it leaves for the load balancer.
    with_proxy, vips_only = lb_routes(LB_STATUS), lb_routes(vip_only_status())
    config = iptables.IptablesConfig(cluster_cidr=PODS)
    text = iptables.render_full(with_proxy, config).text
    assert "198.51.100.8" in text
    assert "198.51.100.9" not in text
    assert text == iptables.render_full(vips_only, config).text
    nft = nftables.render_full(with_proxy, nftables.NftablesConfig(cluster_cidr=PODS)).text
    assert "198.51.100.8" in nft
    assert "198.51.100.9" not in nft
    ipvs = ipvs_render(with_proxy)
    assert ipvs == ipvs_render(vips_only)
    assert "198.51.100.9" not in repr(ipvs)


def test_hints_reach_routes_through_builders() -> None:
    # The model's Endpoint carries its hints into the route's endpoints unchanged.
    hinted_ep = model_endpoint(
        "10.1.1.1", node="node-a1", zone_hints=("zone-a",), node_hints=("node-a1",)
    )
    (route,) = service_routes(model_service("ns/web"), [hinted_ep], "node-a1", zone="zone-a")
    (only,) = route.endpoints
    assert only.zone_hints == ("zone-a",)
    assert only.node_hints == ("node-a1",)


# --- the node's zone, followed by the sync engine ----------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    with throwaway_netns("kdns-topo", ("iptables-restore", "iptables")) as name:
        yield name


def test_zone_change_reroutes_every_service(netns: str) -> None:
    """kube-proxy OnTopologyChange: the node's zone label arriving, changing or going away
    rebuilds the routes in a full sync; the kernel's rules follow."""

    def runner(argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        return run_command(["ip", "netns", "exec", netns, *argv], stdin)

    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    plane = IptablesDataplane(DataplaneNode(families=(4,), cluster_cidrs=(PODS,)), runner)
    engine = SyncEngine(store, plane, NODE, min_sync_period=0.05, runner=runner)
    web = model_service("ns/web", ip="10.96.0.20")
    hinted_eps = (
        model_endpoint("10.244.1.5", node="node2", zone_hints=("zone-a",)),
        model_endpoint("10.244.2.5", node="node3", zone_hints=("zone-b",)),
    )
    web_slice = EndpointSlice("ns", "web-1", "web", "IPv4", hinted_eps)

    def cluster_ips() -> list[str]:
        return [e.ip for r in engine.routes() for e in r.cluster_endpoints]

    def kernel_has(ip: str) -> bool:
        return f"{ip}:8080" in run_command(["ip", "netns", "exec", netns, "iptables-save"])[1]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            store.replace(NODES, {NODE: Node(NODE)})  # listed, no zone label yet
            store.replace(SERVICES, {web.key: web})
            store.replace(ENDPOINTSLICES, {web_slice.key: web_slice})
            await wait_for(lambda: engine.synced)
            assert cluster_ips() == ["10.244.1.5", "10.244.2.5"]
            for zone, expected in (("zone-b", ["10.244.2.5"]), ("zone-a", ["10.244.1.5"])):
                store.upsert(NODES, Node(NODE, zone))
                await wait_for(lambda expected=expected: cluster_ips() == expected)
                await wait_for(lambda expected=expected: kernel_has(expected[0]))
                others = {"10.244.1.5", "10.244.2.5"} - set(expected)
                await wait_for(lambda others=others: not any(map(kernel_has, others)))
            store.upsert(NODES, Node(NODE, "zone-c"))  # no endpoint for zone-c: all of them
            await wait_for(lambda: cluster_ips() == ["10.244.1.5", "10.244.2.5"])
            store.delete(NODES, NODE)
            await wait_for(lambda: engine.zone == "")
            assert cluster_ips() == ["10.244.1.5", "10.244.2.5"]
            await wait_for(lambda: kernel_has("10.244.1.5") and kernel_has("10.244.2.5"))
            nursery.cancel_scope.cancel()

    trio.run(main)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


# --- the Node watch ----------------------------------------------------------------------------


def node_object(name: str, zone: str | None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if zone is not None:
        labels[ZONE_LABEL] = zone
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "labels": labels}}


FAST = {
    "reflector": {"read_timeout": 1.0, "connect_timeout": 1.0, "watch_timeout": (5, 10)},
    "backoff": {"initial": 0.1, "maximum": 0.4, "rng": lambda: 0.0},
}


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param(None, id="every-namespace"),
        # Node is cluster-scoped: a namespaces filter (CoreDNS's `namespaces`) must not drop it.
        pytest.param(Scope(frozenset({"team-a"})), id="namespaces-filter"),
    ],
)
def test_node_watch_follows_only_this_nodes_zone(
    kube_api: ApiServer, kubeconfig: Path, scope: Scope | None
) -> None:
    """kube-proxy watches its own Node only (a metadata.name field selector); a Node it may
    not read delays nothing: the store syncs on Services and EndpointSlices alone."""
    kube_api.create("nodes", node_object("node-a1", "zone-a"))
    kube_api.create("nodes", node_object("node-b1", "zone-b"))
    kube_api.faults.error_next(403, n=None, resource="nodes", kind="list")  # until clear()
    api = kube.cluster_client(str(kubeconfig), None)
    store = Store(watched=kube.KubeSource.kinds(watch_pods=False))
    source = kube.KubeSource(api, store, False, node_name="node-a1", scope=scope, **FAST)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run)
            await wait_for(lambda: store.synced)
            assert dict(store.nodes) == {}  # forbidden so far, and nobody waited for it
            kube_api.faults.clear()
            await wait_for(lambda: dict(store.nodes) == {"node-a1": Node("node-a1", "zone-a")})
            kube_api.patch("nodes", None, "node-a1", {"metadata": {"labels": {ZONE_LABEL: "z"}}})
            kube_api.patch("nodes", None, "node-b1", {"metadata": {"labels": {ZONE_LABEL: "y"}}})
            await wait_for(lambda: store.nodes.get("node-a1") == Node("node-a1", "z"))
            kube_api.patch("nodes", None, "node-a1", {"metadata": {"labels": {ZONE_LABEL: None}}})
            await wait_for(lambda: store.nodes.get("node-a1") == Node("node-a1", ""))
            assert set(store.nodes) == {"node-a1"}
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Only our Node was ever listed: the other one's zone never reached the store.
    assert kube_api.stats.count(kind="list", resource="nodes") >= 2  # refused, then listed

"""kdns.model: API dicts → slim frozen objects, errors that name the field, and the
EndpointSlice controller's derivation (slices_for_service).

Expectations follow the Kubernetes API (core/v1 Service and Pod, discovery.k8s.io/v1
EndpointSlice) and kubernetes/kubernetes staging/src/k8s.io/endpointslice (podToEndpoint,
ShouldPodBeInEndpoints, getAddressTypesForService).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kdns import model
from kdns.model import (
    SERVICE_NAME_LABEL,
    TRIGGER_TIME_ANNOTATION,
    ContainerPort,
    Endpoint,
    EndpointPort,
    ModelError,
    ServicePort,
    endpoints_to_slices,
    endpointslice_from_dict,
    node_from_dict,
    pod_from_dict,
    service_cidr_from_dict,
    service_from_dict,
    slices_for_service,
)
from tests.builders import model_pod

# --- helpers -----------------------------------------------------------------------------------


def service_dict(spec: Any = None, **top: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {} if spec is None else spec,
    }
    obj.update(top)
    return obj


def pick(obj: object, expected: dict[str, Any]) -> dict[str, Any]:
    """The attributes of `obj` named in `expected`, for a readable comparison."""
    return {k: getattr(obj, k) for k in expected}


def slice_dict(
    endpoints: Any,
    *,
    address_type: str = "IPv4",
    ports: list[Any] | None = None,
    annotations: dict[str, Any] | None = None,
    labels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "web-abcde",
        "namespace": "ns",
        "labels": {SERVICE_NAME_LABEL: "web"} if labels is None else labels,
    }
    if annotations is not None:
        meta["annotations"] = annotations
    obj: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": address_type,
        "endpoints": endpoints,
    }
    if ports is not None:
        obj["ports"] = ports
    return obj


def pod_dict(
    *,
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "web-0", "namespace": "ns"}
    metadata.update(meta or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec or {},
        "status": status or {},
    }


# --- service_from_dict: accepted objects --------------------------------------------------------

SERVICE_OK = [
    pytest.param(
        {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]},
        None,
        {
            "namespace": "ns",
            "name": "web",
            "type": "ClusterIP",
            "cluster_ips": ("10.96.0.10",),
            "headless": False,
            "ports": (ServicePort("", "UDP", 53, 53),),
            "external_name": "",
            "selector": None,
        },
        id="clusterip",
    ),
    pytest.param(
        {"clusterIP": "FD00:10:96:0:0:0:0:A"},
        None,
        {"cluster_ips": ("fd00:10:96::a",)},
        id="clusterip-ipv6-normalised",
    ),
    pytest.param(
        {"clusterIP": "fd00:10:96:0::50", "clusterIPs": ["fd00:10:96:0::50", "10.96.0.50"]},
        None,
        {"cluster_ips": ("fd00:10:96::50", "10.96.0.50"), "headless": False},
        id="dual-stack-order-kept-ipv6-first",
    ),
    pytest.param(
        {"clusterIPs": ["10.96.0.50", "fd00:10:96:0::50"]},
        None,
        {"cluster_ips": ("10.96.0.50", "fd00:10:96::50")},
        id="dual-stack-ipv4-first",
    ),
    pytest.param(
        {"clusterIP": "None", "selector": {"app": "db"}},
        None,
        {"cluster_ips": (), "headless": True, "type": "ClusterIP"},
        id="headless-clusterip",
    ),
    pytest.param(
        {"clusterIPs": ["None"]},
        None,
        {"cluster_ips": (), "headless": True},
        id="headless-clusterips",
    ),
    pytest.param(
        {"ports": [{"port": 80}]},
        None,
        {"cluster_ips": (), "headless": False},
        id="no-clusterip-yet",
    ),
    pytest.param(
        {"type": "ExternalName", "externalName": "My.Example.COM."},
        None,
        {"type": "ExternalName", "external_name": "my.example.com", "cluster_ips": ()},
        id="externalname-lowercased-dot-stripped",
    ),
    pytest.param(
        {
            "type": "NodePort",
            "clusterIP": "10.96.1.1",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
        },
        None,
        {"type": "NodePort", "ports": (ServicePort("http", "TCP", 80, 8080, 30080),)},
        id="nodeport",
    ),
    pytest.param(
        {
            "type": "LoadBalancer",
            "ports": [{"name": "https", "port": 443, "nodePort": 31443}],
        },
        None,
        {"type": "LoadBalancer", "ports": (ServicePort("https", "TCP", 443, 443, 31443),)},
        id="loadbalancer-nodeport",
    ),
    pytest.param(
        {"ports": [{"port": 80, "nodePort": 30080}]},
        None,
        {"ports": (ServicePort("", "TCP", 80, 80, None),)},
        id="nodeport-ignored-on-clusterip",
    ),
    pytest.param(
        {
            "ports": [
                {"name": "named", "port": 80, "targetPort": "http-alt"},
                {"name": "number", "port": 81, "targetPort": 8081},
                {"name": "numstr", "port": 82, "targetPort": "8082"},
                {"name": "absent", "port": 83},
            ]
        },
        None,
        {
            "ports": (
                ServicePort("named", "TCP", 80, "http-alt"),
                ServicePort("number", "TCP", 81, 8081),
                ServicePort("numstr", "TCP", 82, 8082),
                ServicePort("absent", "TCP", 83, 83),
            )
        },
        id="target-ports",
    ),
    pytest.param(
        {
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]
        },
        None,
        {"ports": (ServicePort("dns", "UDP", 53, 53), ServicePort("dns-tcp", "TCP", 53, 53))},
        id="same-port-two-protocols",
    ),
    pytest.param(
        {"selector": {"tier": "front", "app": "web"}},
        None,
        {"selector": (("app", "web"), ("tier", "front"))},
        id="selector-sorted",
    ),
    pytest.param({"selector": {}}, None, {"selector": ()}, id="selector-empty"),
    pytest.param({}, None, {"selector": None}, id="selector-absent"),
    pytest.param(
        {
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        },
        None,
        {"session_affinity": "ClientIP", "affinity_timeout": 600},
        id="affinity-clientip-timeout",
    ),
    pytest.param(
        {"sessionAffinity": "ClientIP"},
        None,
        {"session_affinity": "ClientIP", "affinity_timeout": 10800},
        id="affinity-clientip-default-timeout",
    ),
    pytest.param(
        {},
        None,
        {
            "session_affinity": "None",
            "affinity_timeout": 10800,
            "external_ips": (),
            "load_balancer_ips": (),
            "load_balancer_source_ranges": (),
            "external_traffic_policy": "Cluster",
            "internal_traffic_policy": "Cluster",
            "health_check_node_port": None,
            "publish_not_ready_addresses": False,
        },
        id="defaults",
    ),
    pytest.param(
        {"externalIPs": ["192.0.2.10", "2001:DB8:0::1"]},
        None,
        {"external_ips": ("192.0.2.10", "2001:db8::1")},
        id="external-ips",
    ),
    pytest.param(
        {"type": "LoadBalancer"},
        {
            "loadBalancer": {
                "ingress": [{"ip": "203.0.113.5"}, {"hostname": "lb.example.com"}, {"ip": "::1"}]
            }
        },
        {"load_balancer_ips": ("203.0.113.5", "::1")},
        id="lb-ingress-ips",
    ),
    pytest.param(
        {"loadBalancerSourceRanges": ["10.0.0.0/8", " 192.168.1.7/24 "]},
        None,
        {"load_balancer_source_ranges": ("10.0.0.0/8", "192.168.1.0/24")},
        id="lb-source-ranges",
    ),
    pytest.param(
        {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
        },
        None,
        {
            "external_traffic_policy": "Local",
            "internal_traffic_policy": "Local",
            "health_check_node_port": 32000,
        },
        id="traffic-policies",
    ),
    pytest.param(
        {"clusterIP": "None", "publishNotReadyAddresses": True},
        None,
        {"publish_not_ready_addresses": True},
        id="publish-not-ready",
    ),
    pytest.param(
        {"clusterIP": "10.96.0.10", "trafficDistribution": "PreferSameNode"},
        None,
        {"traffic_distribution": "PreferSameNode"},
        id="traffic-distribution",
    ),
    pytest.param(
        {"clusterIP": "10.96.0.10"},
        None,
        {"traffic_distribution": "", "load_balancer_proxy_ips": ()},
        id="traffic-distribution-unset",
    ),
    pytest.param(
        {"type": "LoadBalancer", "clusterIP": "10.96.0.10"},
        {
            "loadBalancer": {
                "ingress": [
                    {"ip": "198.51.100.7"},
                    {"ip": "198.51.100.8", "ipMode": "VIP"},
                    {"ip": "2001:db8::0009", "ipMode": "Proxy"},
                    {"hostname": "lb.example.com"},
                ]
            }
        },
        # KEP-1860: every ingress IP is kept; the Proxy ones are also listed apart.
        {
            "load_balancer_ips": ("198.51.100.7", "198.51.100.8", "2001:db8::9"),
            "load_balancer_proxy_ips": ("2001:db8::9",),
        },
        id="ingress-ip-mode",
    ),
]


@pytest.mark.parametrize(("spec", "status", "expected"), SERVICE_OK)
def test_service_from_dict(
    spec: dict[str, Any], status: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    obj = service_dict(spec) if status is None else service_dict(spec, status=status)
    assert pick(service_from_dict(obj), expected) == expected


def test_service_namespace_defaults_to_default() -> None:
    svc = service_from_dict({"metadata": {"name": "web"}, "spec": {}})
    assert svc.key == ("default", "web")


def test_service_spellings_of_one_address_compare_equal() -> None:
    a = service_from_dict(service_dict({"clusterIPs": ["10.96.0.1", "fd00:0:0:0::1"]}))
    b = service_from_dict(service_dict({"clusterIPs": ["10.96.0.1", "FD00::1"]}))
    assert a == b
    assert hash(a) == hash(b)


@pytest.mark.parametrize(
    ("spec", "families"),
    [
        pytest.param({"clusterIP": "10.96.0.1"}, ("IPv4",), id="from-clusterip"),
        pytest.param(
            {"clusterIPs": ["fd00::1", "10.96.0.1"]}, ("IPv6", "IPv4"), id="from-clusterips"
        ),
        pytest.param(
            {"clusterIP": "None", "ipFamilies": ["IPv6"]}, ("IPv6",), id="explicit-headless"
        ),
        pytest.param({"clusterIP": "None"}, (), id="headless-unsaid"),
    ],
)
def test_service_ip_families(spec: dict[str, Any], families: tuple[str, ...]) -> None:
    assert service_from_dict(service_dict(spec)).ip_families == families


# --- service_from_dict: rejected objects --------------------------------------------------------


def _two_ports(**second: Any) -> dict[str, Any]:
    return {"ports": [{"name": "a", "port": 80}, {"port": 81, **second}]}


SERVICE_ERRORS = [
    pytest.param(service_dict({"clusterIP": "10.0.0.300"}), "spec.clusterIP", id="bad-clusterip"),
    pytest.param(
        service_dict({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "nope"]}),
        "spec.clusterIPs[1]",
        id="bad-clusterips-1",
    ),
    pytest.param(
        service_dict({"clusterIPs": ["10.0.0.1", "10.0.0.2"]}),
        "spec.clusterIPs",
        id="two-ipv4-clusterips",
    ),
    pytest.param(
        service_dict({"clusterIPs": ["fd00::1", "fd00::2"]}),
        "spec.clusterIPs",
        id="two-ipv6-clusterips",
    ),
    pytest.param(service_dict({"ports": [{"port": 0}]}), "spec.ports[0].port", id="port-0"),
    pytest.param(service_dict({"ports": [{"port": 70000}]}), "spec.ports[0].port", id="port-70000"),
    pytest.param(
        service_dict({"ports": [{"name": "http"}]}), "spec.ports[0].port", id="port-missing"
    ),
    pytest.param(service_dict({"ports": [{"port": "80"}]}), "spec.ports[0].port", id="port-string"),
    pytest.param(
        service_dict({"ports": [{"port": True}]}), "spec.ports[0].port", id="port-boolean"
    ),
    pytest.param(
        service_dict({"ports": [{"port": 80, "protocol": "HTTP"}]}),
        "spec.ports[0].protocol",
        id="bad-protocol",
    ),
    pytest.param(
        service_dict({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
        "spec.ports[1]",
        id="duplicate-port",
    ),
    pytest.param(service_dict(_two_ports()), "spec.ports[1].name", id="unnamed-in-multiport"),
    pytest.param(
        service_dict({"ports": [{"port": 80}, {"name": "b", "port": 81}]}),
        "spec.ports[0].name",
        id="unnamed-first-in-multiport",
    ),
    pytest.param(
        service_dict(_two_ports(name="a")), "spec.ports[1].name", id="duplicate-port-name"
    ),
    pytest.param(
        service_dict({"ports": [{"name": "HTTP", "port": 80}]}),
        "spec.ports[0].name",
        id="bad-port-name",
    ),
    pytest.param(
        service_dict({"ports": [{"port": 80, "targetPort": 0}]}),
        "spec.ports[0].targetPort",
        id="target-port-0",
    ),
    pytest.param(
        service_dict({"ports": [{"port": 80, "targetPort": "99999"}]}),
        "spec.ports[0].targetPort",
        id="target-port-numeric-string-out-of-range",
    ),
    pytest.param(
        service_dict({"ports": [{"port": 80, "targetPort": "Not_A_Name"}]}),
        "spec.ports[0].targetPort",
        id="target-port-bad-name",
    ),
    pytest.param(
        service_dict({"ports": [{"port": 80, "targetPort": [8080]}]}),
        "spec.ports[0].targetPort",
        id="target-port-list",
    ),
    pytest.param(
        service_dict({"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]}),
        "spec.ports[0].nodePort",
        id="bad-node-port",
    ),
    pytest.param(service_dict({"type": "Magic"}), "spec.type", id="bad-type"),
    pytest.param(
        service_dict({"type": "ExternalName"}), "spec.externalName", id="externalname-missing"
    ),
    pytest.param({"metadata": {"namespace": "ns"}, "spec": {}}, "metadata.name", id="name-missing"),
    pytest.param(
        {"metadata": {"name": "Web", "namespace": "ns"}, "spec": {}},
        "metadata.name",
        id="name-not-dns-label",
    ),
    pytest.param(
        {"metadata": {"name": "web", "namespace": "Bad_NS"}, "spec": {}},
        "metadata.namespace",
        id="bad-namespace",
    ),
    pytest.param({"metadata": ["web"], "spec": {}}, "metadata", id="metadata-list"),
    pytest.param(service_dict(spec=[]), "spec", id="spec-list"),
    pytest.param(service_dict({"ports": {"port": 80}}), "spec.ports", id="ports-mapping"),
    pytest.param(service_dict({"ports": [80]}), "spec.ports[0]", id="port-not-mapping"),
    pytest.param(service_dict({"selector": ["app=web"]}), "spec.selector", id="selector-list"),
    pytest.param(service_dict({"selector": {"app": 1}}), "spec.selector.app", id="selector-int"),
    pytest.param(
        service_dict({"sessionAffinity": "Sticky"}), "spec.sessionAffinity", id="bad-affinity"
    ),
    pytest.param(
        service_dict(
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
            }
        ),
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        id="affinity-timeout-0",
    ),
    pytest.param(
        service_dict({"externalIPs": ["192.0.2.1", "nope"]}),
        "spec.externalIPs[1]",
        id="bad-external-ip",
    ),
    pytest.param(
        service_dict({"loadBalancerSourceRanges": ["bogus"]}),
        "spec.loadBalancerSourceRanges[0]",
        id="bad-source-range",
    ),
    pytest.param(
        service_dict({}, status={"loadBalancer": {"ingress": [{"ip": "nope"}]}}),
        "status.loadBalancer.ingress[0].ip",
        id="bad-ingress-ip",
    ),
    pytest.param(
        service_dict({"externalTrafficPolicy": "Sometimes"}),
        "spec.externalTrafficPolicy",
        id="bad-external-traffic-policy",
    ),
    pytest.param(
        service_dict({"internalTrafficPolicy": "Nearby"}),
        "spec.internalTrafficPolicy",
        id="bad-internal-traffic-policy",
    ),
    pytest.param(service_dict({"ipFamilies": ["IPv5"]}), "spec.ipFamilies[0]", id="bad-ip-family"),
    pytest.param(
        service_dict({"trafficDistribution": "PreferNearby"}),
        "spec.trafficDistribution",
        id="bad-traffic-distribution",
    ),
    pytest.param(
        service_dict({"trafficDistribution": 1}),
        "spec.trafficDistribution",
        id="traffic-distribution-not-a-string",
    ),
    pytest.param(
        service_dict(
            {},
            status={
                "loadBalancer": {
                    "ingress": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2", "ipMode": "Tunnel"}]
                }
            },
        ),
        "status.loadBalancer.ingress[1].ipMode",
        id="bad-ip-mode",
    ),
    pytest.param(
        service_dict(
            {}, status={"loadBalancer": {"ingress": [{"hostname": "lb", "ipMode": "VIP"}]}}
        ),
        "status.loadBalancer.ingress[0].ipMode",
        id="ip-mode-without-ip",
    ),
]


# IPv4 as the API server writes it (no leading zeros, each part 0-255) is taken as it is; any
# other spelling goes through ipaddress, which refuses leading zeros (CVE-2021-29921).
IPV4_SPELLINGS = [
    ("0.0.0.0", "0.0.0.0"),
    ("10.96.0.10", "10.96.0.10"),
    ("255.255.255.255", "255.255.255.255"),
    ("249.250.199.100", "249.250.199.100"),
    ("256.1.1.1", None),
    ("1.2.3.256", None),
    ("010.96.0.1", None),
    ("10.96.0.01", None),
    ("10.96.0", None),
    ("10.96.0.1.2", None),
    ("10..0.1", None),
    ("10.96.0.1 ", None),
    ("\u0661.2.3.4", None),  # an Arabic-Indic digit: isdigit() says yes, the API says no
]


@pytest.mark.parametrize(("text", "served"), IPV4_SPELLINGS)
def test_service_cluster_ip_spellings(text: str, served: str | None) -> None:
    obj = service_dict({"clusterIP": text})
    if served is None:
        with pytest.raises(ModelError, match=r"^spec\.clusterIP: .* is not an IP address$"):
            service_from_dict(obj)
    else:
        assert service_from_dict(obj).cluster_ips == (served,)


@pytest.mark.parametrize(("obj", "field"), SERVICE_ERRORS)
def test_service_from_dict_errors(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelError) as info:
        service_from_dict(obj)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("prometheus-metrics", id="longer-than-15"),
        pytest.param("a" * 63, id="63-characters"),
        pytest.param("8080", id="digits-only"),
    ],
)
def test_service_port_name_is_a_dns1123_label(name: str) -> None:
    # Kubernetes validates Service port names with ValidateDNS1123Label (validateServicePort);
    # the 15-character IANA_SVC_NAME rule is for container port names and named targetPorts.
    svc = service_from_dict(service_dict({"ports": [{"name": name, "port": 80}]}))
    assert svc.ports[0].name == name


def test_service_port_name_longer_than_a_label_is_rejected() -> None:
    with pytest.raises(ModelError) as info:
        service_from_dict(service_dict({"ports": [{"name": "a" * 64, "port": 80}]}))
    assert info.value.field == "spec.ports[0].name"


def test_model_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^spec\.type: "):
        service_from_dict(service_dict({"type": "Magic"}))


def test_a_huge_value_is_quoted_short_in_the_error() -> None:
    # Found by fuzzing: a 100,000-element clusterIP (cheap to write with YAML aliases) made a
    # 500 KB error line. The error quotes the value's start and stays one short line.
    with pytest.raises(ModelError) as info:
        service_from_dict(service_dict({"clusterIP": list(range(100_000))}))
    assert info.value.field == "spec.clusterIP"
    assert str(info.value) == "spec.clusterIP: [0, 1, 2, 3, 4, 5, ...] is not an IP address"


# --- endpointslice_from_dict --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        pytest.param(None, (True, True, False), id="absent"),
        pytest.param({}, (True, True, False), id="all-unset"),
        pytest.param({"ready": True}, (True, True, False), id="ready"),
        # discovery.k8s.io/v1 and kube-proxy: an unset serving reads as true, whatever ready says.
        pytest.param({"ready": False}, (False, True, False), id="serving-unset-is-true"),
        pytest.param({"serving": False}, (True, False, False), id="serving-false"),
        pytest.param(
            {"ready": False, "serving": True, "terminating": True},
            (False, True, True),
            id="terminating-serving",
        ),
        pytest.param(
            {"ready": False, "serving": False, "terminating": True},
            (False, False, True),
            id="terminating-not-serving",
        ),
    ],
)
def test_endpointslice_conditions(
    conditions: dict[str, Any] | None, expected: tuple[bool, bool, bool]
) -> None:
    endpoint: dict[str, Any] = {"addresses": ["10.1.0.1"]}
    if conditions is not None:
        endpoint["conditions"] = conditions
    (ep,) = endpointslice_from_dict(slice_dict([endpoint])).endpoints
    assert (ep.ready, ep.serving, ep.terminating) == expected


def test_endpointslice_fields() -> None:
    obj = slice_dict(
        [
            {
                "addresses": ["10.1.0.1"],
                "hostname": "DB-0",
                "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "ns"},
                "nodeName": "node-a",
                "zone": "zone-1",
            },
            {"addresses": ["10.1.0.2"], "targetRef": {"kind": "Node", "name": "node-b"}},
        ],
        ports=[
            {"name": "http", "port": 8080},
            {"name": "all"},  # port unset: "all ports", skipped
            {"name": "dns", "protocol": "UDP", "port": 53},
        ],
    )
    es = endpointslice_from_dict(obj)
    ports = (EndpointPort("http", "TCP", 8080), EndpointPort("dns", "UDP", 53))
    assert (es.namespace, es.name, es.service_name, es.address_type) == (
        "ns",
        "web-abcde",
        "web",
        "IPv4",
    )
    assert es.key == ("ns", "web-abcde")
    assert es.service_key == ("ns", "web")
    assert es.endpoints == (
        Endpoint(
            address="10.1.0.1",
            hostname="db-0",
            node_name="node-a",
            zone="zone-1",
            pod="db-0",
            ports=ports,
        ),
        Endpoint(address="10.1.0.2", pod="", ports=ports),
    )


@pytest.mark.parametrize(
    ("hints", "zones", "nodes"),
    [
        (None, (), ()),
        ({}, (), ()),
        ({"forZones": [{"name": "zone-a"}]}, ("zone-a",), ()),
        # topology-mode Auto may lend an endpoint to several zones.
        ({"forZones": [{"name": "zone-a"}, {"name": "zone-b"}]}, ("zone-a", "zone-b"), ()),
        (
            {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-a1"}]},
            ("zone-a",),
            ("node-a1",),
        ),
    ],
)
def test_endpointslice_hints(
    hints: dict[str, Any] | None, zones: tuple[str, ...], nodes: tuple[str, ...]
) -> None:
    raw: dict[str, Any] = {"addresses": ["10.1.0.1", "10.1.0.2"], "zone": "zone-a"}
    if hints is not None:
        raw["hints"] = hints
    endpoints = endpointslice_from_dict(slice_dict([raw])).endpoints
    # Every address of the endpoint carries its hints.
    assert [(e.zone_hints, e.node_hints) for e in endpoints] == [(zones, nodes)] * 2


def test_endpointslice_ipv6_addresses_normalised_one_endpoint_per_address() -> None:
    obj = slice_dict(
        [{"addresses": ["FD00:0:0::1", "fd00::2"], "hostname": "h"}], address_type="IPv6"
    )
    es = endpointslice_from_dict(obj)
    assert [(e.address, e.hostname) for e in es.endpoints] == [("fd00::1", "h"), ("fd00::2", "h")]


def test_endpointslice_fqdn_gives_no_endpoints() -> None:
    obj = slice_dict([{"addresses": ["backend.example.com"]}], address_type="FQDN")
    es = endpointslice_from_dict(obj)
    assert es.address_type == "FQDN"
    assert es.endpoints == ()


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        pytest.param("2024-01-02T03:04:05Z", 1704164645.0, id="rfc3339-z"),
        pytest.param("2024-01-02T04:04:05.5+01:00", 1704164645.5, id="rfc3339-offset"),
        pytest.param("yesterday", None, id="unreadable"),
        pytest.param(1704164645, None, id="not-a-string"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_endpointslice_trigger_time(annotation: Any, expected: float | None) -> None:
    annotations = {} if annotation is None else {TRIGGER_TIME_ANNOTATION: annotation}
    obj = slice_dict([{"addresses": ["10.1.0.1"]}], annotations=annotations)
    assert endpointslice_from_dict(obj).trigger_time == expected


ENDPOINTSLICE_ERRORS = [
    pytest.param(
        slice_dict([{"addresses": ["fd00::1"]}]),
        "endpoints[0].addresses[0]",
        id="ipv6-in-ipv4-slice",
    ),
    pytest.param(
        slice_dict([{"addresses": ["fd00::1", "10.1.0.1"]}], address_type="IPv6"),
        "endpoints[0].addresses[1]",
        id="ipv4-in-ipv6-slice",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"]}, {"addresses": ["nope"]}]),
        "endpoints[1].addresses[0]",
        id="bad-address",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"]}], labels={}),
        f"metadata.labels.{SERVICE_NAME_LABEL}",
        id="service-name-label-missing",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"]}], labels={SERVICE_NAME_LABEL: ""}),
        f"metadata.labels.{SERVICE_NAME_LABEL}",
        id="service-name-label-empty",
    ),
    pytest.param(slice_dict([{"addresses": []}]), "endpoints[0].addresses", id="no-addresses"),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"], "conditions": {"ready": "yes"}}]),
        "endpoints[0].conditions.ready",
        id="condition-not-bool",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"], "hostname": "bad_host"}]),
        "endpoints[0].hostname",
        id="bad-hostname",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"]}], address_type="IPX"),
        "addressType",
        id="bad-address-type",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"]}], ports=[{"name": "p", "port": 0}]),
        "ports[0].port",
        id="bad-port",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"]}], ports=[{"port": 1}, {"port": 1, "protocol": 6}]),
        "ports[1].protocol",
        id="bad-port-protocol",
    ),
    pytest.param(slice_dict({"addresses": ["10.1.0.1"]}), "endpoints", id="endpoints-mapping"),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"], "hints": {"forZones": {"name": "a"}}}]),
        "endpoints[0].hints.forZones",
        id="hints-for-zones-not-a-list",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"], "hints": {"forZones": ["zone-a"]}}]),
        "endpoints[0].hints.forZones[0]",
        id="zone-hint-not-a-mapping",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"], "hints": {"forNodes": [{"name": ""}]}}]),
        "endpoints[0].hints.forNodes[0].name",
        id="node-hint-without-name",
    ),
    pytest.param(
        slice_dict([{"addresses": ["10.1.0.1"], "hints": []}]),
        "endpoints[0].hints",
        id="hints-not-a-mapping",
    ),
    pytest.param(slice_dict([{"addresses": ["10.1.0.1"]}, "x"]), "endpoints[1]", id="endpoint-str"),
]


@pytest.mark.parametrize(("obj", "field"), ENDPOINTSLICE_ERRORS)
def test_endpointslice_from_dict_errors(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelError) as info:
        endpointslice_from_dict(obj)
    assert info.value.field == field


# --- node_from_dict ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "zone"),
    [
        ({"topology.kubernetes.io/zone": "europe-west1-b"}, "europe-west1-b"),
        # The deprecated beta label is not read: kube-proxy matches hints against the GA one.
        ({"failure-domain.beta.kubernetes.io/zone": "europe-west1-b"}, ""),
        ({}, ""),
        (None, ""),
    ],
)
def test_node_from_dict_zone(labels: dict[str, str] | None, zone: str) -> None:
    meta: dict[str, Any] = {"name": "node-a1"}
    if labels is not None:
        meta["labels"] = labels
    node = node_from_dict({"kind": "Node", "apiVersion": "v1", "metadata": meta})
    assert (node.key, node.zone) == ("node-a1", zone)


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({}, "metadata.name"),
        ({"name": "n", "labels": {"topology.kubernetes.io/zone": 3}}, "metadata.labels.topology.kubernetes.io/zone"),
        ({"name": "n", "labels": ["zone"]}, "metadata.labels"),
    ],
)  # fmt: skip
def test_node_from_dict_errors(meta: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelError) as info:
        node_from_dict({"kind": "Node", "apiVersion": "v1", "metadata": meta})
    assert info.value.field == field


# --- service_cidr_from_dict ----------------------------------------------------------------------


def service_cidr_dict(spec: Any, name: str = "kubernetes") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("cidrs", "expected"),
    [
        (["10.96.0.0/16"], ("10.96.0.0/16",)),
        (["10.96.0.0/16", "fd00:10:96::/112"], ("10.96.0.0/16", "fd00:10:96::/112")),
        (["FD00:0:0::/108"], ("fd00::/108",)),  # canonical spelling
        (["2001:db8::/64", "192.168.10.0/24"], ("2001:db8::/64", "192.168.10.0/24")),
    ],
)  # fmt: skip
def test_service_cidr_from_dict(cidrs: list[str], expected: tuple[str, ...]) -> None:
    obj = service_cidr_from_dict(service_cidr_dict({"cidrs": cidrs}))
    assert (obj.key, obj.cidrs) == ("kubernetes", expected)


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"metadata": {}, "spec": {"cidrs": ["10.96.0.0/16"]}}, "metadata.name"),
        (service_cidr_dict({}), "spec.cidrs"),
        (service_cidr_dict({"cidrs": []}), "spec.cidrs"),
        (service_cidr_dict({"cidrs": "10.96.0.0/16"}), "spec.cidrs"),
        (service_cidr_dict(["10.96.0.0/16"]), "spec"),
        (service_cidr_dict({"cidrs": ["10.96.0.0/16", "fd00::/108", "10.97.0.0/16"]}), "spec.cidrs"),
        (service_cidr_dict({"cidrs": ["10.96.0.1/16"]}), "spec.cidrs[0]"),  # host bits set
        (service_cidr_dict({"cidrs": ["10.96.0.0"]}), "spec.cidrs[0]"),  # no prefix length
        (service_cidr_dict({"cidrs": ["10.96.0.0/33"]}), "spec.cidrs[0]"),
        (service_cidr_dict({"cidrs": [16]}), "spec.cidrs[0]"),
        (service_cidr_dict({"cidrs": ["10.96.0.0/16", "10.97.0.0/16"]}), "spec.cidrs[1]"),
    ],
)  # fmt: skip
def test_service_cidr_from_dict_errors(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelError) as info:
        service_cidr_from_dict(obj)
    assert info.value.field == field


# --- endpoints_to_slices ------------------------------------------------------------------------

ENDPOINTS = {
    "apiVersion": "v1",
    "kind": "Endpoints",
    "metadata": {
        "name": "web",
        "namespace": "ns",
        "annotations": {TRIGGER_TIME_ANNOTATION: "2024-01-02T03:04:05Z"},
    },
    "subsets": [
        {
            "addresses": [
                {
                    "ip": "10.1.0.1",
                    "hostname": "Web-0",
                    "nodeName": "node-a",
                    "targetRef": {"kind": "Pod", "name": "web-0"},
                },
                {"ip": "FD00::0:1"},
            ],
            "notReadyAddresses": [
                {"ip": "10.1.0.2", "targetRef": {"kind": "Pod", "name": "web-1"}}
            ],
            "ports": [
                {"name": "http", "port": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        },
        {"addresses": [{"ip": "10.1.0.9"}], "ports": [{"port": 9090}]},
    ],
}


def test_endpoints_to_slices() -> None:
    slices = endpoints_to_slices(ENDPOINTS)
    ports = (EndpointPort("http", "TCP", 8080), EndpointPort("dns", "UDP", 53))
    assert [(s.namespace, s.service_name, s.address_type, s.endpoints) for s in slices] == [
        (
            "ns",
            "web",
            "IPv4",
            (
                Endpoint(
                    "10.1.0.1", hostname="web-0", node_name="node-a", pod="web-0", ports=ports
                ),
                Endpoint("10.1.0.2", ready=False, serving=False, pod="web-1", ports=ports),
            ),
        ),
        ("ns", "web", "IPv6", (Endpoint("fd00::1", ports=ports),)),
        ("ns", "web", "IPv4", (Endpoint("10.1.0.9", ports=(EndpointPort("", "TCP", 9090),)),)),
    ]
    # Every slice needs its own key, or the store would merge one over another.
    assert len({s.key for s in slices}) == len(slices)
    assert {s.trigger_time for s in slices} == {1704164645.0}


@pytest.mark.parametrize(
    ("subsets", "expected"),
    [
        pytest.param(None, (), id="no-subsets"),
        pytest.param([], (), id="empty-subsets"),
        pytest.param([{"ports": [{"port": 80}]}], (), id="subset-without-addresses"),
    ],
)
def test_endpoints_to_slices_empty(subsets: list[Any] | None, expected: tuple[Any, ...]) -> None:
    obj: dict[str, Any] = {"metadata": {"name": "web", "namespace": "ns"}}
    if subsets is not None:
        obj["subsets"] = subsets
    assert endpoints_to_slices(obj) == expected


@pytest.mark.parametrize(
    ("subsets", "field"),
    [
        pytest.param([{"addresses": [{"ip": "nope"}]}], "subsets[0].addresses[0].ip", id="bad-ip"),
        pytest.param(
            [{"addresses": [{"ip": "10.0.0.1"}]}, {"notReadyAddresses": [{}]}],
            "subsets[1].notReadyAddresses[0].ip",
            id="missing-ip",
        ),
        pytest.param(["x"], "subsets[0]", id="subset-not-mapping"),
        pytest.param(
            [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 0}]}],
            "subsets[0].ports[0].port",
            id="bad-port",
        ),
    ],
)
def test_endpoints_to_slices_errors(subsets: list[Any], field: str) -> None:
    obj = {"metadata": {"name": "web", "namespace": "ns"}, "subsets": subsets}
    with pytest.raises(ModelError) as info:
        endpoints_to_slices(obj)
    assert info.value.field == field


# --- pod_from_dict ------------------------------------------------------------------------------

POD_OK = [
    pytest.param(
        pod_dict(status={"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "FD00::5"}]}),
        {"ips": ("10.1.0.5", "fd00::5")},
        id="podips-win",
    ),
    pytest.param(pod_dict(status={"podIP": "10.1.0.5"}), {"ips": ("10.1.0.5",)}, id="podip-only"),
    pytest.param(
        pod_dict(),
        {
            "namespace": "ns",
            "name": "web-0",
            "ips": (),
            "phase": "Pending",
            "ready": False,
            "terminating": False,
            "host_network": False,
            "hostname": "",
            "subdomain": "",
            "node_name": "",
            "labels": (),
            "container_ports": (),
        },
        id="defaults",
    ),
    pytest.param(
        pod_dict(
            status={
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
            }
        ),
        {"phase": "Running", "ready": True},
        id="ready",
    ),
    pytest.param(
        pod_dict(status={"conditions": [{"type": "Ready", "status": "False"}]}),
        {"ready": False},
        id="not-ready",
    ),
    pytest.param(
        pod_dict(status={"conditions": [{"type": "Ready", "status": "Unknown"}]}),
        {"ready": False},
        id="ready-unknown",
    ),
    pytest.param(
        pod_dict(status={"conditions": [{"type": "ContainersReady", "status": "True"}]}),
        {"ready": False},
        id="containers-ready-is-not-ready",
    ),
    pytest.param(
        pod_dict(meta={"deletionTimestamp": "2024-01-02T03:04:05Z"}),
        {"terminating": True},
        id="deletion-timestamp",
    ),
    pytest.param(
        pod_dict(spec={"hostNetwork": True, "nodeName": "node-a"}),
        {"host_network": True, "node_name": "node-a"},
        id="host-network",
    ),
    pytest.param(
        pod_dict(spec={"hostname": "Web-0", "subdomain": "web"}),
        {"hostname": "web-0", "subdomain": "web"},
        id="hostname-subdomain",
    ),
    pytest.param(
        pod_dict(meta={"labels": {"tier": "front", "app": "web"}}),
        {"labels": (("app", "web"), ("tier", "front"))},
        id="labels-sorted",
    ),
    pytest.param(
        pod_dict(
            spec={
                "containers": [
                    {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                    {"name": "sidecar"},
                    {
                        "name": "dns",
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"containerPort": 9153},
                        ],
                    },
                ]
            }
        ),
        {
            "container_ports": (
                ContainerPort("http", "TCP", 8080),
                ContainerPort("dns", "UDP", 53),
                ContainerPort("", "TCP", 9153),
            )
        },
        id="container-ports",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), POD_OK)
def test_pod_from_dict(obj: dict[str, Any], expected: dict[str, Any]) -> None:
    assert pick(pod_from_dict(obj), expected) == expected


POD_ERRORS = [
    pytest.param(
        pod_dict(status={"podIPs": [{"ip": "10.1.0.5"}, {"ip": "nope"}]}),
        "status.podIPs[1].ip",
        id="bad-podips",
    ),
    pytest.param(pod_dict(status={"podIP": "nope"}), "status.podIP", id="bad-podip"),
    pytest.param(
        pod_dict(status={"conditions": [{"type": "Ready", "status": "Maybe"}]}),
        "status.conditions[0].status",
        id="bad-ready-status",
    ),
    pytest.param(
        pod_dict(spec={"containers": [{"ports": [{"name": "http"}]}]}),
        "spec.containers[0].ports[0].containerPort",
        id="container-port-missing",
    ),
    pytest.param(
        pod_dict(spec={"containers": [{}, {"ports": [{"containerPort": 0}]}]}),
        "spec.containers[1].ports[0].containerPort",
        id="container-port-0",
    ),
    pytest.param(
        pod_dict(spec={"containers": [{"ports": [{"containerPort": 80, "protocol": "tcp"}]}]}),
        "spec.containers[0].ports[0].protocol",
        id="container-port-protocol",
    ),
    pytest.param(
        pod_dict(spec={"containers": [{}, "x"]}), "spec.containers[1]", id="container-str"
    ),
    pytest.param(pod_dict(spec={"hostname": "web_0"}), "spec.hostname", id="bad-hostname"),
    pytest.param(pod_dict(spec={"subdomain": "a.b"}), "spec.subdomain", id="bad-subdomain"),
    pytest.param(pod_dict(meta={"labels": {"app": 1}}), "metadata.labels.app", id="label-int"),
    pytest.param(pod_dict(meta={"labels": ["app"]}), "metadata.labels", id="labels-list"),
    pytest.param(pod_dict(meta={"name": None}), "metadata.name", id="name-missing"),
    pytest.param(pod_dict(meta={"namespace": "NS"}), "metadata.namespace", id="bad-namespace"),
    pytest.param(
        {"metadata": {"name": "p"}, "status": "Running"}, "status", id="status-not-mapping"
    ),
]


@pytest.mark.parametrize(("obj", "field"), POD_ERRORS)
def test_pod_from_dict_errors(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelError) as info:
        pod_from_dict(obj)
    assert info.value.field == field


# --- slices_for_service: the EndpointSlice controller's derivation ------------------------------

WEB = {
    "clusterIP": "10.96.0.20",
    "selector": {"app": "web"},
    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
}


def web(**spec: Any) -> Any:
    return service_from_dict(service_dict({**copy.deepcopy(WEB), **spec}))


def addresses(slices: tuple[Any, ...]) -> list[tuple[str, list[str]]]:
    return [(s.address_type, [e.address for e in s.endpoints]) for s in slices]


def test_slices_for_service_selector_matching() -> None:
    pods = [
        model_pod("a", "10.1.0.1"),
        model_pod("b", "10.1.0.2", labels={"app": "web", "tier": "front"}),  # extra labels: fine
        model_pod("c", "10.1.0.3", labels={"app": "db"}),
        model_pod("d", "10.1.0.4", labels={}),
        model_pod("e", "10.1.0.5", labels={"tier": "front"}),
    ]
    slices = slices_for_service(web(), pods)
    assert addresses(slices) == [("IPv4", ["10.1.0.1", "10.1.0.2"])]
    (s,) = slices
    assert (s.namespace, s.service_name, s.address_type) == ("ns", "web", "IPv4")
    assert s.service_key == ("ns", "web")


def test_slices_for_service_multi_key_selector_needs_all_keys() -> None:
    svc = web(selector={"app": "web", "tier": "front"})
    pods = [
        model_pod("a", "10.1.0.1"),
        model_pod("b", "10.1.0.2", labels={"app": "web", "tier": "front"}),
    ]
    assert addresses(slices_for_service(svc, pods)) == [("IPv4", ["10.1.0.2"])]


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"selector": {}}, id="empty-selector-selects-nothing"),
        pytest.param({"selector": None}, id="no-selector"),
        pytest.param(
            {"type": "ExternalName", "externalName": "example.com", "clusterIP": ""},
            id="externalname",
        ),
    ],
)
def test_slices_for_service_none(spec: dict[str, Any]) -> None:
    raw = {**copy.deepcopy(WEB), **spec}
    raw = {k: v for k, v in raw.items() if v is not None}
    svc = service_from_dict(service_dict(raw))
    assert (
        slices_for_service(svc, [model_pod("a", "10.1.0.1"), model_pod("b", "10.1.0.2", labels={})])
        == ()
    )


@pytest.mark.parametrize(
    ("publish", "pod_ready", "terminating", "expected"),
    [
        # ready = publishNotReadyAddresses or (serving and not terminating); serving = Pod Ready
        pytest.param(False, True, False, (True, True, False), id="ready"),
        pytest.param(False, False, False, (False, False, False), id="not-ready"),
        pytest.param(False, True, True, (False, True, True), id="terminating-serving"),
        pytest.param(False, False, True, (False, False, True), id="terminating-not-serving"),
        pytest.param(True, False, False, (True, False, False), id="publish-not-ready"),
        pytest.param(True, True, True, (True, True, True), id="publish-terminating"),
    ],
)
def test_slices_for_service_conditions(
    publish: bool, pod_ready: bool, terminating: bool, expected: tuple[bool, bool, bool]
) -> None:
    svc = web(publishNotReadyAddresses=publish)
    ((ep,),) = [
        s.endpoints
        for s in slices_for_service(
            svc, [model_pod("a", "10.1.0.1", ready=pod_ready, terminating=terminating)]
        )
    ]
    assert (ep.ready, ep.serving, ep.terminating) == expected


@pytest.mark.parametrize(
    ("hostname", "subdomain", "expected"),
    [
        pytest.param("web-0", "web", "web-0", id="subdomain-is-service"),
        pytest.param("web-0", "other", "", id="subdomain-other"),
        pytest.param("web-0", "", "", id="no-subdomain"),
        pytest.param("", "web", "", id="no-hostname"),
    ],
)
def test_slices_for_service_hostname(hostname: str, subdomain: str, expected: str) -> None:
    svc = web(clusterIP="None")
    (s,) = slices_for_service(
        svc, [model_pod("web-0", "10.1.0.1", hostname=hostname, subdomain=subdomain)]
    )
    assert [e.hostname for e in s.endpoints] == [expected]


def test_slices_for_service_endpoint_fields() -> None:
    (s,) = slices_for_service(web(), [model_pod("web-0", "10.1.0.1", node_name="node-a")])
    assert s.endpoints == (
        Endpoint(
            address="10.1.0.1",
            ready=True,
            serving=True,
            terminating=False,
            hostname="",
            node_name="node-a",
            pod="web-0",
            ports=(EndpointPort("http", "TCP", 8080),),
        ),
    )


def test_slices_for_service_named_target_port() -> None:
    svc = web(
        ports=[
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
            {"name": "metrics", "port": 9153, "targetPort": 9153},
        ]
    )
    resolves = model_pod(
        "a",
        "10.1.0.1",
        container_ports=(
            ContainerPort("http", "UDP", 9000),  # right name, wrong protocol: not this one
            ContainerPort("http", "TCP", 8080),
            ContainerPort("dns", "UDP", 5353),
        ),
    )
    # "dns" exists only over TCP here, so the UDP service port cannot resolve for this pod.
    partial = model_pod(
        "b",
        "10.1.0.2",
        container_ports=(ContainerPort("http", "TCP", 8081), ContainerPort("dns", "TCP", 53)),
    )
    (s,) = slices_for_service(svc, [resolves, partial])
    assert [(e.address, e.ports) for e in s.endpoints] == [
        (
            "10.1.0.1",
            (
                EndpointPort("http", "TCP", 8080),
                EndpointPort("dns", "UDP", 5353),
                EndpointPort("metrics", "TCP", 9153),
            ),
        ),
        ("10.1.0.2", (EndpointPort("http", "TCP", 8081), EndpointPort("metrics", "TCP", 9153))),
    ]


@pytest.mark.parametrize(
    ("phase", "included"),
    [
        pytest.param("Running", True, id="running"),
        pytest.param("Pending", True, id="pending-with-ip"),
        pytest.param("Unknown", True, id="unknown"),
        pytest.param("Succeeded", False, id="succeeded"),
        pytest.param("Failed", False, id="failed"),
    ],
)
def test_slices_for_service_phase(phase: str, included: bool) -> None:
    slices = slices_for_service(web(), [model_pod("a", "10.1.0.1", phase=phase, ready=False)])
    assert addresses(slices) == ([("IPv4", ["10.1.0.1"])] if included else [])


def test_slices_for_service_skips_pods_without_ip_and_other_namespaces() -> None:
    pods = [
        model_pod("a"),
        model_pod("b", "10.1.0.2", namespace="other"),
        model_pod("c", "10.1.0.3"),
        model_pod("d", "10.1.0.4", host_network=True),  # host-network pods are still endpoints
    ]
    assert addresses(slices_for_service(web(), pods)) == [("IPv4", ["10.1.0.3", "10.1.0.4"])]


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"clusterIP": "None"}, id="headless"),
        pytest.param({"clusterIPs": ["10.96.0.20", "fd00:10:96::20"]}, id="dual-stack"),
    ],
)
def test_slices_for_service_dual_stack_pods_give_two_slices(spec: dict[str, Any]) -> None:
    pods = [model_pod("b", "10.1.0.2", "fd00:1::2"), model_pod("a", "10.1.0.1", "fd00:1::1")]
    slices = slices_for_service(web(**spec), pods)
    assert addresses(slices) == [
        ("IPv4", ["10.1.0.1", "10.1.0.2"]),
        ("IPv6", ["fd00:1::1", "fd00:1::2"]),
    ]
    assert len({s.key for s in slices}) == 2
    assert {s.service_name for s in slices} == {"web"}


@pytest.mark.parametrize(
    ("spec", "family"),
    [
        pytest.param({"clusterIP": "10.96.0.20"}, "IPv4", id="ipv4-only"),
        pytest.param({"clusterIP": "fd00:10:96::20"}, "IPv6", id="ipv6-only"),
        pytest.param({"clusterIP": "None", "ipFamilies": ["IPv6"]}, "IPv6", id="headless-ipv6"),
    ],
)
def test_slices_for_service_single_stack_service_gets_its_family_only(
    spec: dict[str, Any], family: str
) -> None:
    # getAddressTypesForService: the controller writes slices only for the Service's families.
    pods = [model_pod("a", "10.1.0.1", "fd00:1::1")]
    slices = slices_for_service(web(**spec), pods)
    assert [s.address_type for s in slices] == [family]


def test_slices_for_service_does_not_depend_on_pod_order() -> None:
    pods = [model_pod(n, f"10.1.0.{i}") for i, n in enumerate(["c", "a", "b"], start=1)]
    assert slices_for_service(web(), pods) == slices_for_service(web(), list(reversed(pods)))


# --- multicluster (KEP-1645) -------------------------------------------------------------------


def test_serviceimport_reads_type_ips_and_ports() -> None:
    got = model.serviceimport_from_dict(
        {
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "type": "ClusterSetIP",
                "ips": ["10.42.0.1", "fd00:0:0::42"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            },
        }
    )
    assert got == model.ServiceImport(
        "shop",
        "web",
        "ClusterSetIP",
        ("10.42.0.1", "fd00::42"),
        (model.EndpointPort("http", "TCP", 80),),
    )


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"type": "Headles"}, "spec.type: 'Headles' is not one of ClusterSetIP, Headless"),
        ({"ips": "10.0.0.1"}, "spec.ips: expected a list, got '10.0.0.1'"),
        ({"ips": [1]}, "spec.ips[0]: 1 is not an IP address"),
        (
            {"ips": ["10.0.0.1", "10.0.0.2"]},
            "spec.ips: holds at most one IPv4 and one IPv6 address",
        ),
        ({"ports": [1]}, "spec.ports[0]: expected a mapping, got 1"),
    ],
)
def test_serviceimport_errors_name_the_field(spec: dict, error: str) -> None:
    with pytest.raises(model.ModelError) as caught:
        model.serviceimport_from_dict({"metadata": {"name": "web"}, "spec": spec})
    assert str(caught.value) == error


def test_imported_slice_keeps_its_cluster_and_is_told_apart_from_a_local_one() -> None:
    labels = {model.IMPORT_NAME_LABEL: "db", model.SOURCE_CLUSTER_LABEL: "east"}
    obj = {
        "metadata": {"name": "db-east", "namespace": "shop", "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.5"], "hostname": "db-0"}],
    }
    assert model.is_import_slice(obj)
    got = model.import_slice_from_dict(obj)
    assert (got.key, got.import_key, got.cluster_id) == (
        ("shop", "db-east"),
        ("shop", "db"),
        "east",
    )
    assert [(e.address, e.hostname) for e in got.endpoints] == [("10.1.0.5", "db-0")]
    # A slice that also names a local Service is the local Service's.
    local = {
        **obj,
        "metadata": {**obj["metadata"], "labels": {**labels, model.SERVICE_NAME_LABEL: "db"}},
    }
    assert not model.is_import_slice(local)

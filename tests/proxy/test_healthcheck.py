"""Health-check node ports (kdns/proxy/healthcheck.py): which ports, which counts, which answer."""

from __future__ import annotations

import json

from kdns.proxy.healthcheck import health_check_ports, response
from tests.builders import model_endpoint, model_service

from .builders import NODE, routes

LB = dict(type="LoadBalancer", external_traffic_policy="Local", health_check_node_port=32000)
PORTS = (("p80", "TCP", 80, 30080), ("p443", "TCP", 443, 30443))
EP_PORTS = (("p80", "TCP", 8080), ("p443", "TCP", 8443))


def test_counts_local_ready_endpoints_once_per_address() -> None:
    s = model_service("ns/lb", ports=PORTS, **LB)
    eps = [
        model_endpoint("10.244.1.5", node=NODE, ports=EP_PORTS),
        model_endpoint("10.244.1.6", node=NODE, ports=EP_PORTS),
        model_endpoint(
            "10.244.1.7", node=NODE, ports=EP_PORTS, ready=False
        ),  # not ready: not counted
        model_endpoint("10.244.2.5", node="node2", ports=EP_PORTS),  # elsewhere: not counted
    ]
    assert health_check_ports(routes((s, eps))) == {32000: (("ns", "lb"), 2)}


def test_terminating_fallback_counts_serving_terminating() -> None:
    s = model_service("ns/lb", ports=PORTS, **LB)
    eps = [
        model_endpoint(
            "10.244.1.5", node=NODE, ports=EP_PORTS, ready=False, serving=True, terminating=True
        )
    ]
    assert health_check_ports(routes((s, eps))) == {32000: (("ns", "lb"), 1)}


def test_only_local_policy_load_balancers_have_one() -> None:
    cluster = model_service("ns/a", ports=PORTS, type="LoadBalancer", health_check_node_port=32001)
    nodeport = model_service(
        "ns/b",
        ports=PORTS,
        type="NodePort",
        external_traffic_policy="Local",
        health_check_node_port=32002,
        ip="172.30.0.42",
    )
    assert health_check_ports(routes((cluster, []), (nodeport, []))) == {}


def test_response_is_kube_proxys() -> None:
    status, ctype, body = response(("ns", "lb"), 2)
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {
        "service": {"namespace": "ns", "name": "lb"},
        "localEndpoints": 2,
        "serviceProxyHealthy": True,
    }
    assert response(("ns", "lb"), 0)[0] == 503
    assert response(("ns", "lb"), 3, proxy_healthy=False)[0] == 503

"""Small builders for the proxy tests: Services, endpoints and the routes kube-proxy would derive."""

from __future__ import annotations

from typing import Any

from kdns.model import Endpoint, EndpointPort, Service, ServicePort
from kdns.proxy.routes import ServicePortRoute, build_routes

NODE = "node1"
PODS = "10.244.0.0/16"


def svc(
    name: str,
    *,
    ports: Any = (("p80", "TCP", 80, None),),
    ip: str | tuple[str, ...] = "172.30.0.41",
    **kw: Any,
) -> Service:
    """A Service "ns/name" whose ports, given as (name, protocol, port, nodePort), target 8080."""
    namespace, _, short = name.partition("/")
    return Service(
        namespace,
        short,
        cluster_ips=(ip,) if isinstance(ip, str) else ip,
        ports=tuple(ServicePort(pn, proto, p, 8080, np) for pn, proto, p, np in ports),
        **kw,
    )


def ep(
    ip: str,
    *,
    node: str = "node2",
    ports: tuple[tuple[str, str, int], ...] = (("p80", "TCP", 8080),),
    **conditions: Any,
) -> Endpoint:
    return Endpoint(ip, node_name=node, ports=tuple(EndpointPort(*p) for p in ports), **conditions)


def routes(*pairs: tuple[Service, list[Endpoint]]) -> tuple[ServicePortRoute, ...]:
    services = {s.key: s for s, _ in pairs}
    return build_routes(services, {s.key: tuple(e) for s, e in pairs}, NODE)

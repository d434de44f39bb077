"""The proxy tests' node and pod network, and the routes kube-proxy would derive from Services.

Services and endpoints themselves come from `tests.builders` (``model_service``,
``model_endpoint``)."""

from __future__ import annotations

from kdns.model import Endpoint, Service
from kdns.proxy.routes import ServicePortRoute, build_routes

NODE = "node1"
PODS = "10.244.0.0/16"


def routes(*pairs: tuple[Service, list[Endpoint]]) -> tuple[ServicePortRoute, ...]:
    services = {s.key: s for s, _ in pairs}
    return build_routes(services, {s.key: tuple(e) for s, e in pairs}, NODE)

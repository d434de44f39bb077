"""The health-check node ports of externalTrafficPolicy Local Services: which ports to serve and
what each answers, as kube-proxy's service health server (pkg/proxy/healthcheck).

Contract:
- `health_check_ports(routes)` maps each healthCheckNodePort to its Service and the number of
  local endpoints a load balancer would reach on this node (ready ones, or the serving
  terminating ones when no ready one is left: the Local-policy endpoints routes.py chose).
- `response(service, local_endpoints, proxy_healthy)` is kube-proxy's answer: 200 with JSON
  `{"service": {"namespace", "name"}, "localEndpoints": N, "serviceProxyHealthy": …}` when N > 0
  and the proxy is healthy, else 503, so a cloud load balancer sends traffic only to nodes
  that have an endpoint (KEP-1669 also counts a proxy that is shutting down as unhealthy).
- Pure: the HTTP listeners live with the proxy's composition.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from kdns.proxy.routes import ServiceKey, ServicePortRoute


def health_check_ports(routes: Iterable[ServicePortRoute]) -> dict[int, tuple[ServiceKey, int]]:
    counts: dict[int, tuple[ServiceKey, int]] = {}
    endpoints: dict[int, set[str]] = {}
    for route in routes:
        port = route.health_check_node_port
        if not port:
            continue
        if port in counts and counts[port][0] != route.service:
            continue  # two Services claiming one port: the first in route order keeps it
        seen = endpoints.setdefault(port, set())
        seen.update(ep.address for ep in route.local_endpoints)
        counts[port] = (route.service, len({a.rsplit(":", 1)[0] for a in seen}))
    return counts


def response(
    service: ServiceKey, local_endpoints: int, proxy_healthy: bool = True
) -> tuple[int, str, bytes]:
    namespace, name = service
    body = {
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    }
    status = 200 if local_endpoints > 0 and proxy_healthy else 503
    return status, "application/json", (json.dumps(body) + "\n").encode()

"""Which UDP conntrack entries a change of endpoints leaves pointing nowhere: `conntrack -D`
filters computed from the routes before and after a sync.

Contract:
- `stale_flows(before, after)` takes the routes of the changed Services before and after a
  sync (Service key → routes) and returns the `Flow` filters to delete, as kube-proxy's
  `conntrack.CleanStaleEntries` did before its netlink reconciler (pkg/proxy/conntrack):
  - a UDP endpoint that was in use and is no longer: entries from any of the route's VIPs
    (ClusterIP, externalIPs, LB IPs) DNATed to it, and entries to its NodePort DNATed to it.
    UDP has no connection end, so without this a client keeps sending into the dead pod for
    as long as it keeps the flow alive (kubernetes#59368);
  - a UDP route that had no endpoint and now has one: entries to its VIPs and NodePort, which
    were created while packets were rejected and would otherwise never be DNATed.
- Only UDP: TCP ends on RST and SCTP has its own teardown. Nothing is computed for a Service
  absent from `before` (a restart has no "before", so a restart that changes nothing deletes
  nothing).
- `argv(flow)` is the `conntrack` command line. Pure: nothing here runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kdns.proxy.routes import ServiceKey, ServicePortRoute


@dataclass(frozen=True, slots=True, order=True)
class Flow:
    """One `conntrack -D` filter."""

    family: int
    orig_dst: str | None = None  # the VIP the client sent to
    orig_port_dst: int | None = None  # the port the client sent to
    dst_nat: str | None = None  # the endpoint the entry was DNATed to


def argv(flow: Flow) -> list[str]:
    args = ["conntrack", "-D", "-f", "ipv4" if flow.family == 4 else "ipv6", "-p", "udp"]
    if flow.orig_dst is not None:
        args += ["--orig-dst", flow.orig_dst]
    if flow.orig_port_dst is not None:
        args += ["--orig-port-dst", str(flow.orig_port_dst)]
    if flow.dst_nat is not None:
        args += ["--dst-nat", flow.dst_nat]
    return args


def _by_port(routes: Iterable[ServicePortRoute]) -> dict[tuple[str, str, int], ServicePortRoute]:
    return {(r.port_name, r.protocol, r.family): r for r in routes if r.protocol == "UDP"}


def _in_use(route: ServicePortRoute) -> set[str]:
    return {ep.ip for ep in route.reachable_endpoints}


def stale_flows(
    before: Mapping[ServiceKey, Iterable[ServicePortRoute]],
    after: Mapping[ServiceKey, Iterable[ServicePortRoute]],
) -> list[Flow]:
    """The deletions that the change from `before` to `after` calls for, sorted, no repeats."""
    flows: set[Flow] = set()
    for key, old_routes in before.items():
        old = _by_port(old_routes)
        new = _by_port(after.get(key, ()))
        for port_key, route in old.items():
            vips = (route.cluster_ip, *route.external_ips, *route.load_balancer_ips)
            successor = new.get(port_key)
            gone = _in_use(route) - (_in_use(successor) if successor else set())
            for ip in gone:
                flows.update(Flow(route.family, vip, None, ip) for vip in vips)
                if route.node_port:
                    flows.add(Flow(route.family, None, route.node_port, ip))
        for port_key, route in new.items():
            previous = old.get(port_key)
            if route.reachable_endpoints and (previous is None or not previous.reachable_endpoints):
                vips = (route.cluster_ip, *route.external_ips, *route.load_balancer_ips)
                flows.update(Flow(route.family, vip, route.port, None) for vip in vips)
                if route.node_port:
                    flows.add(Flow(route.family, None, route.node_port, None))
    return sorted(
        flows, key=lambda f: (f.family, f.orig_dst or "", f.orig_port_dst or 0, f.dst_nat or "")
    )

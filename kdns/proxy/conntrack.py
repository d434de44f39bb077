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
  - a UDP route that had no endpoint (or did not exist) and now has one: the entries to its
    VIPs and NodePort that no DNAT rewrote (reply source = original destination), created
    while packets were rejected; they would otherwise never be DNATed. Live flows never match.
- Only UDP: TCP ends on RST and SCTP has its own teardown. The engine skips the first sync
  after a start (it has no "before"), so a restart that changes nothing deletes nothing.
- `unused_dnat_flows(entries, routes)` is the reconciliation at start (kube-proxy ≥ 1.31 lists
  conntrack instead of trusting its memory): UDP entries (`parse_entries` of `conntrack -L`)
  from a route's VIP:port or NodePort that were DNATed to an address the route no longer
  uses — an endpoint that went away while the proxy was down. Entries to current endpoints
  never match, so a restart that changes nothing deletes nothing.
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
    # Un-DNATed entries answer from where the client sent to: matching the reply's source to
    # the original destination selects only those, never a live DNATed flow.
    reply_src: str | None = None
    reply_port_src: int | None = None


def argv(flow: Flow) -> list[str]:
    args = ["conntrack", "-D", "-f", "ipv4" if flow.family == 4 else "ipv6", "-p", "udp"]
    if flow.orig_dst is not None:
        args += ["--orig-dst", flow.orig_dst]
    if flow.orig_port_dst is not None:
        args += ["--orig-port-dst", str(flow.orig_port_dst)]
    if flow.dst_nat is not None:
        args += ["--dst-nat", flow.dst_nat]
    if flow.reply_src is not None:
        args += ["--reply-src", flow.reply_src]
    if flow.reply_port_src is not None:
        args += ["--reply-port-src", str(flow.reply_port_src)]
    return args


def _by_port(routes: Iterable[ServicePortRoute]) -> dict[tuple[str, str, int], ServicePortRoute]:
    return {(r.port_name, r.protocol, r.family): r for r in routes if r.protocol == "UDP"}


def _in_use(route: ServicePortRoute) -> set[str]:
    return {ep.ip for ep in route.reachable_endpoints}


def _undnated(route: ServicePortRoute) -> list[Flow]:
    """Entries to the route's VIPs and NodePort that no DNAT rewrote (made while rejecting)."""
    vips = (route.cluster_ip, *route.external_ips, *route.load_balancer_ips)
    flows = [Flow(route.family, vip, route.port, None, vip) for vip in vips]
    if route.node_port:
        flows.append(Flow(route.family, None, route.node_port, None, None, route.node_port))
    return flows


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
    for key, new_routes in after.items():
        old = _by_port(before.get(key, ()))
        for port_key, route in _by_port(new_routes).items():
            previous = old.get(port_key)
            if route.reachable_endpoints and (previous is None or not previous.reachable_endpoints):
                flows.update(_undnated(route))
    return sorted(
        flows, key=lambda f: (f.family, f.orig_dst or "", f.orig_port_dst or 0, f.dst_nat or "")
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """What the reconciliation needs of one UDP conntrack entry."""

    family: int
    orig_dst: str
    orig_dport: int
    reply_src: str  # the DNAT target; the original destination when nothing rewrote it


def parse_entries(text: str, family: int) -> list[Entry]:
    """The UDP entries of `conntrack -L -p udp` output (plain or `-o extended`)."""
    entries = []
    for line in text.splitlines():
        fields: dict[str, list[str]] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep:
                fields.setdefault(key, []).append(value)
        src, dst, dport = fields.get("src", []), fields.get("dst", []), fields.get("dport", [])
        if " udp " not in f" {line} " or len(src) < 2 or len(dst) < 1 or not dport:
            continue
        try:
            entries.append(Entry(family, dst[0], int(dport[0]), src[1]))
        except ValueError:
            continue
    return entries


def unused_dnat_flows(entries: Iterable[Entry], routes: Iterable[ServicePortRoute]) -> list[Flow]:
    """Deletions for entries DNATed from a UDP route to an address it no longer uses."""
    by_vip: dict[tuple[str, int], set[str]] = {}
    by_node_port: dict[int, set[str]] = {}
    for route in routes:
        if route.protocol != "UDP":
            continue
        used = _in_use(route)
        for vip in (route.cluster_ip, *route.external_ips, *route.load_balancer_ips):
            by_vip.setdefault((vip, route.port), set()).update(used)
        if route.node_port:
            by_node_port.setdefault(route.node_port, set()).update(used)
    flows: set[Flow] = set()
    for entry in entries:
        if entry.reply_src == entry.orig_dst:
            continue  # not DNATed: the first-endpoint clean-up's business
        used = by_vip.get((entry.orig_dst, entry.orig_dport))
        if used is not None:
            if entry.reply_src not in used:
                flows.add(
                    Flow(entry.family, entry.orig_dst, entry.orig_dport, None, entry.reply_src)
                )
            continue
        used = by_node_port.get(entry.orig_dport)
        if used is not None and entry.reply_src not in used:
            flows.add(Flow(entry.family, None, entry.orig_dport, None, entry.reply_src))
    return sorted(flows, key=repr)

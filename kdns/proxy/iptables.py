"""Routes → `iptables-restore` input with kube-proxy's chain layout, names and rule shapes.

Contract:
- `render_full(routes, config, existing_chains)` returns the whole `*filter` and `*nat` input
  kube-proxy's `syncProxyRules` (pkg/proxy/iptables/proxier.go) would write for one IP family,
  meant for `iptables-restore --noflush` (or `ip6tables-restore`): every chain line (`:CHAIN
  - [0:0]`, which also flushes it) comes before the rules, then `COMMIT`. Chains it does not
  name are left alone, so rules kdns does not own survive.
- `render_partial(routes, changed, config, existing_chains)` is kube-proxy's partial sync
  (KEP-3453): the fixed chains (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, …) in
  full, but the per-service chains (KUBE-SVC-, KUBE-SVL-, KUBE-EXT-, KUBE-FW-, KUBE-SEP-) only
  for Services in `changed`; the others keep what the kernel has.
- In both, per-service chains in `existing_chains` that the rules no longer use are flushed and
  deleted (`-X`) in the same transaction; `Rendering.active_chains` is what the caller passes as
  `existing_chains` next time (or the chains `saved_chains` reads from `iptables-save -t nat`).
- The jumps from the built-in chains (PREROUTING → KUBE-SERVICES, …) are not in the restore
  input, as in kube-proxy (rewriting PREROUTING would clobber other owners' rules): `JUMP_RULES`
  lists them for the caller to ensure with `iptables -C` / `-I`. `render_cleanup` removes what
  kdns installed.
- `release(rendering)` empties a rendering its owner is about to drop, a step at a time, and
  the render frees its own working lists so too (`release_entries`); `split_lines` splits text
  a step at a time. Why: a 5,000-Service rule set dropped, joined or split whole is one C call
  or one cascade of deallocations holding the GIL for 10 ms, and `kdns proxy --dns` answers
  DNS from another thread (docs/benchmarks.md, "Node DNS during proxy syncs").
- Output is deterministic: routes in `route_sort_key` order, endpoints by address, stale chains
  sorted. Pure: no I/O; nothing here runs iptables.
- Deliberate differences from kube-proxy: no localhost NodePorts (CVE-2020-8558: NodePorts are
  never matched on 127.0.0.0/8, so no KUBE-FIREWALL chain and no route_localnet), no nfacct
  counters, one ClusterCIDR local-traffic detector (no NodeCIDR/interface detectors).
"""

from __future__ import annotations

import ipaddress
from collections.abc import (
    Collection,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

from kdns.proxy.masquerade import (
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    forward_rules,
    postrouting_rules,
)
from kdns.proxy.routes import (
    EXT_PREFIX,
    FW_PREFIX,
    SVC_PREFIX,
    SVL_PREFIX,
    JumpRule,
    RouteChains,
    RouteEndpoint,
    ServiceKey,
    ServicePortRoute,
    check_node_config,
    is_service_chain,
    masquerade_mark,
    port_proto_hash,
    route_sort_key,
    service_port_endpoint_chain_name,
)

# Fixed chains, pkg/proxy/iptables/proxier.go constants.
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"

# The "top-level" chains every sync writes in full, in kube-proxy's order.
FILTER_CHAINS = (
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
)
NAT_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

# Above this many endpoints in total, kube-proxy's "large cluster mode" leaves the comments off
# the per-endpoint rules (largeClusterEndpointsThreshold): they are 40% of the input.
LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass(frozen=True, slots=True)
class IptablesConfig:
    """What a render depends on besides the routes: one IP family's proxier settings."""

    family: int = 4  # 4: iptables-restore; 6: ip6tables-restore
    # This family's pod CIDR (--cluster-cidr): traffic to a ClusterIP from outside it is
    # masqueraded, and pod traffic to an external destination of an externalTrafficPolicy
    # Local Service is short-circuited to the Cluster chain (LocalTrafficDetector ClusterCIDR).
    cluster_cidr: str | None = None
    masquerade_all: bool = False  # --masquerade-all: masquerade every ClusterIP connection
    masquerade_bit: int = 14  # the mark is 1 << bit (0x4000)
    random_fully: bool = True  # MASQUERADE --random-fully (iptables ≥ 1.6.2 and the kernel)
    # This family's node IP: an LB source range containing it also admits the LB IPs as
    # sources (a node reaching a VIP-style LB IP that is local to it).
    node_ip: str | None = None
    # --nodeport-addresses resolved to this node's addresses; () means every local address.
    nodeport_ips: tuple[str, ...] = ()
    # nf_conntrack_tcp_be_liberal is set: no DROP of INVALID packets in KUBE-FORWARD (#74839).
    conntrack_tcp_be_liberal: bool = False
    large_cluster_endpoints: int = LARGE_CLUSTER_ENDPOINTS

    def __post_init__(self) -> None:
        check_node_config(
            self.family, self.masquerade_bit, self.cluster_cidr, self.node_ip, self.nodeport_ips
        )

    @property
    def masquerade_mark(self) -> str:
        return masquerade_mark(self.masquerade_bit)


@dataclass(frozen=True, slots=True)
class Rendering:
    """One restore input and what the caller needs to know about it."""

    text: str
    deleted_chains: tuple[str, ...]  # stale per-service chains this input flushes and deletes
    filter_rules: int  # `-A` lines written per table (the sync metrics)
    nat_rules: int
    partial: bool
    # The per-service nat chains the rules now use (written or kept), each once: a list of its
    # own, which `release` can empty in steps (a frozenset could only be dropped whole).
    _chains: list[str] = field(repr=False, compare=False)

    @property
    def active_chains(self) -> frozenset[str]:
        """The per-service nat chains the rules now use (written or kept)."""
        return frozenset(self._chains)


def release(rendering: Rendering) -> None:
    """Empties `rendering`'s chain list a step at a time, for its owner that is about to drop
    it (its `active_chains` are empty afterwards; its text is not touched). Call it only on a
    rendering no other thread reads: the data plane releases the one it has just replaced.

    Why: no render shares those names (every render makes its own strings), and at 5,000
    Services they are ~20,000: dropped whole, they are freed in one cascade of deallocations
    during which no other thread gets the GIL, however short the switch interval (the node
    DNS of `kdns proxy --dns` answers from another thread; docs/benchmarks.md).
    """
    release_entries(rendering._chains)  # noqa: SLF001 (this module's own class, above)


# Entries freed, or lines joined or split, per step of the gentle operations below: a step is
# one C call holding the GIL for tens of microseconds; between steps the interpreter may hand
# the GIL to another thread (the switch interval).
_STEP = 512
_STEP_CHARS = 1 << 16  # characters split per step (about 600 restore lines)


def release_entries(entries: list[Any] | MutableMapping[Any, Any]) -> None:
    """Empties `entries` (a list of rules or chains, a dict of chains) a step at a time, so
    that freeing a large one is not one cascade that holds the GIL throughout."""
    if isinstance(entries, list):
        while entries:
            del entries[-_STEP:]
    else:
        while entries:
            entries.popitem()


def split_lines(text: str) -> Iterator[str]:
    """`text.split("\n")`, a step at a time: one split of a 5,000-Service restore input or
    `iptables-save` output holds the GIL ~10 ms."""
    start = 0
    while True:
        end = text.find("\n", start + _STEP_CHARS)
        if end < 0:
            yield from text[start:].split("\n")
            return
        yield from text[start:end].split("\n")
        start = end + 1


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
# kube-proxy `iptablesJumpChains`, in its order (each is prepended, so the last ends up first).
JUMP_RULES = (
    JumpRule(
        "filter",
        "INPUT",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        _NEW,
    ),
    JumpRule(
        "filter",
        "FORWARD",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        _NEW,
    ),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)


def chain_line(chain: str) -> str:
    """`utiliptables.MakeChainLine`: declares the chain, and flushes it under --noflush."""
    return f":{chain} - [0:0]"


def probability(n: int) -> str:
    """kube-proxy `computeProbability`: 1/n as `%0.10f`."""
    return f"{1.0 / n:.10f}"


def stale_chains(existing: Iterable[str], active: Collection[str]) -> tuple[str, ...]:
    """The per-service chains in `existing` that `active` no longer uses, sorted.

    Chains that are not ours (no KUBE-SVC-/SVL-/EXT-/FW-/SEP- prefix) are never stale.
    """
    return tuple(sorted(c for c in set(existing) if c not in active and is_service_chain(c)))


def render_full(
    routes: Iterable[ServicePortRoute],
    config: IptablesConfig,
    existing_chains: Iterable[str] = (),
) -> Rendering:
    """The whole restore input: every chain of every route of `config.family`."""
    return _render(routes, config, None, existing_chains)


def render_partial(
    routes: Iterable[ServicePortRoute],
    changed: Collection[ServiceKey],
    config: IptablesConfig,
    existing_chains: Iterable[str] = (),
) -> Rendering:
    """kube-proxy's partial sync: the fixed chains, plus the per-service chains of `changed`.

    `changed` holds the keys of every Service whose Service object or endpoints changed since
    the last successful restore (deleted ones included). Valid only on top of a successful
    full or partial restore of the same config; after any failure, render in full.
    """
    return _render(routes, config, set(changed), existing_chains)


class _Buffer:
    """The restore input being written: the filter rules, the nat chain lines and rules, and
    the per-service chains in use (written now, or kept as the kernel has them)."""

    def __init__(self) -> None:
        self.filter: list[str] = []
        self.nat_chains: list[str] = []
        self.nat: list[str] = []
        self.active: set[str] = set()

    def declare(self, chain: str) -> None:
        """A per-service chain this input writes (its chain line flushes it)."""
        self.nat_chains.append(chain_line(chain))
        self.active.add(chain)


def _render(
    routes: Iterable[ServicePortRoute],
    config: IptablesConfig,
    changed: set[ServiceKey] | None,
    existing_chains: Iterable[str],
) -> Rendering:
    selected = sorted((r for r in routes if r.family == config.family), key=route_sort_key)
    out = _Buffer()
    out.nat += postrouting_rules(config.masquerade_mark, config.random_fully)
    large = sum(len(r.endpoints) for r in selected) > config.large_cluster_endpoints
    for route in selected:
        chains = _RouteChains.of(route)
        _write_dispatch(chains, out)
        if changed is None or route.service in changed:
            _write_service_chains(chains, config, large, out)
        else:
            # A partial sync leaves out the chains of unchanged Services (kube-proxy writes
            # them to a discarding buffer); they still count as active.
            out.active.update(chains.used())

    deleted = stale_chains(existing_chains, out.active)
    for chain in deleted:
        # A chain line flushes it, so the -X cannot fail on rules still in it.
        out.nat_chains.append(chain_line(chain))
        out.nat.append(f"-X {chain}")
    out.nat += _nodeports_jumps(config)
    out.filter += forward_rules(config.masquerade_mark, config.conntrack_tcp_be_liberal)

    text = _joined(
        [
            ["*filter", *(chain_line(c) for c in FILTER_CHAINS)],
            out.filter,
            ["COMMIT", "*nat", *(chain_line(c) for c in NAT_CHAINS)],
            out.nat_chains,
            out.nat,
            ["COMMIT", ""],
        ]
    )
    rendering = Rendering(
        text=text,
        deleted_chains=deleted,
        filter_rules=len(out.filter),
        nat_rules=sum(1 for line in out.nat if line.startswith("-A ")),
        partial=changed is not None,
        _chains=list(out.active),
    )
    # The rules are in the text now; dropped whole, 100,000 lines at 5,000 Services would be
    # one cascade of deallocations (see `release`).
    for lines in (out.filter, out.nat_chains, out.nat):
        release_entries(lines)
    return rendering


def _joined(sections: Iterable[list[str]]) -> str:
    """`"\n".join` of every line of `sections`, a step at a time: one join of the 100,000
    lines of a full render at 5,000 Services holds the GIL ~10 ms; what is left is one copy
    of the joined steps."""
    steps = [
        "\n".join(section[i : i + _STEP])
        for section in sections
        for i in range(0, len(section), _STEP)
    ]
    return "\n".join(steps)


def _nodeports_jumps(config: IptablesConfig) -> list[str]:
    """The jump to KUBE-NODEPORTS, which must be the last rule of KUBE-SERVICES."""
    comment = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    if not config.nodeport_ips:
        loopback = "127.0.0.0/8" if config.family == 4 else "::1/128"
        return [
            f"-A {KUBE_SERVICES} -m comment --comment {comment}"
            f" -m addrtype --dst-type LOCAL ! -d {loopback} -j {KUBE_NODEPORTS}"
        ]
    return [
        f"-A {KUBE_SERVICES} -m comment --comment {comment} -d {ip} -j {KUBE_NODEPORTS}"
        for ip in config.nodeport_ips
        if not ipaddress.ip_address(ip).is_loopback  # no localhost NodePorts (CVE-2020-8558)
    ]


@dataclass(slots=True)
class _RouteChains(RouteChains):
    """`RouteChains` with iptables mode's names (KUBE-SVC-, …) and its own decisions, worked
    out once per render: the route's name and protocol match, which most of its rules carry,
    and whether it has a KUBE-FW chain."""

    name: str  # kube-proxy's ServicePortName, "ns/svc:port"
    match: str  # "-m tcp -p tcp"
    # KUBE-FW exists: LB source ranges, and endpoints (without any, the LB IPs are rejected
    # in filter anyway).
    uses_firewall: bool

    @staticmethod
    def of(route: ServicePortRoute) -> _RouteChains:
        name, proto = route.name, route.protocol.lower()
        chain_hash = port_proto_hash(name, proto)
        return _RouteChains(
            route,
            SVC_PREFIX + chain_hash,
            SVL_PREFIX + chain_hash,
            EXT_PREFIX + chain_hash,
            FW_PREFIX + chain_hash,
            name,
            f"-m {proto} -p {proto}",
            route.has_endpoints and route.has_source_ranges,
        )

    @property
    def load_balancer(self) -> str:
        """Where LB ingress traffic enters."""
        return self.firewall if self.uses_firewall else self.external

    def endpoint_chains(self, reachable: Iterable[RouteEndpoint]) -> dict[str, str]:
        """The KUBE-SEP- chain of each of the route's `reachable_endpoints`, by "ip:port"."""
        name, proto = self.name, self.route.protocol
        return {
            address: service_port_endpoint_chain_name(name, proto, address)
            for address in (ep.address for ep in reachable)
        }

    def used(self) -> list[str]:
        """Every per-service chain the route's rules use."""
        route = self.route
        chains = list(self.endpoint_chains(route.reachable_endpoints).values())
        for used, chain in (
            (route.uses_external_traffic_chain, self.external),
            (self.uses_firewall, self.firewall),
            (route.uses_cluster_policy_chain, self.cluster),
            (route.uses_local_policy_chain, self.local),
        ):
            if used:
                chains.append(chain)
        return chains


_FILTER_TARGETS = {
    "reject": ("REJECT", "has no endpoints"),
    "drop": ("DROP", "has no local endpoints"),
}


def _write_dispatch(chains: _RouteChains, out: _Buffer) -> None:
    """What a partial sync writes for every Service too: the rules of KUBE-SERVICES,
    KUBE-NODEPORTS and the filter chains, in the order of kube-proxy's syncProxyRules.

    This runs for every route of every sync: a route reachable at its ClusterIP only (most of
    them) is written here and calls nothing else; the parts for other addresses are called
    only when the route has such addresses."""
    route = chains.route
    # Capture the ClusterIP.
    internal_filter = route.internal_traffic_filter
    if internal_filter is None:
        out.nat.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{chains.name} cluster IP" {chains.match}'
            f" -d {route.cluster_ip} --dport {route.port} -j {chains.internal}"
        )
    else:
        destination = f"{chains.match} -d {route.cluster_ip} --dport {route.port}"
        _write_filtered(chains, KUBE_SERVICES, internal_filter, destination, out)
    if route.external_ips or route.load_balancer_ips:
        _write_external_addresses(chains, out)
    if route.node_port:
        _write_node_port(chains, out)
    # Accept the health-check node port whether or not there are local endpoints.
    if route.health_check_node_port:
        out.filter.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{chains.name} health check node port"'
            f" -m tcp -p tcp --dport {route.health_check_node_port} -j ACCEPT"
        )


def _write_filtered(
    chains: _RouteChains, chain: str, verdict: str, destination: str, out: _Buffer
) -> None:
    """No endpoint for this traffic: REJECT (connection refused at once) or DROP (times out)."""
    target, why = _FILTER_TARGETS[verdict]
    out.filter.append(
        f'-A {chain} -m comment --comment "{chains.name} {why}" {destination} -j {target}'
    )


def _write_external_addresses(chains: _RouteChains, out: _Buffer) -> None:
    """The capture of the route's externalIPs and load-balancer ingress IPs (KUBE-SERVICES),
    and their filter rules: what KUBE-FW did not accept, and REJECT or DROP without endpoints."""
    route = chains.route
    name, match, port = chains.name, chains.match, f"--dport {route.port}"
    external_filter = route.external_traffic_filter
    for ip in route.external_ips:
        if route.has_endpoints:
            out.nat.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{name} external IP" {match}'
                f" -d {ip} {port} -j {chains.external}"
            )
        if external_filter is not None:
            destination = f"{match} -d {ip} {port}"
            _write_filtered(chains, KUBE_EXTERNAL_SERVICES, external_filter, destination, out)
    for ip in route.load_balancer_ips:
        if route.has_endpoints:
            out.nat.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{name} loadbalancer IP" {match}'
                f" -d {ip} {port} -j {chains.load_balancer}"
            )
        if chains.uses_firewall:
            # What falls through KUBE-FW (not DNATed) is dropped here, in filter.
            out.filter.append(
                f"-A {KUBE_PROXY_FIREWALL} -m comment"
                f' --comment "{name} traffic not accepted by {chains.firewall}" {match}'
                f" -d {ip} {port} -j DROP"
            )
    if external_filter is not None:
        # kube-proxy writes the load balancers' REJECT/DROP after all their firewall drops.
        for ip in route.load_balancer_ips:
            destination = f"{match} -d {ip} {port}"
            _write_filtered(chains, KUBE_EXTERNAL_SERVICES, external_filter, destination, out)


def _write_node_port(chains: _RouteChains, out: _Buffer) -> None:
    """The capture of the NodePort (KUBE-NODEPORTS), or its REJECT/DROP without endpoints.
    NodePorts are not subject to loadBalancerSourceRanges (as in kube-proxy, which cannot
    change that now)."""
    route = chains.route
    if route.has_endpoints:
        out.nat.append(
            f"-A {KUBE_NODEPORTS} -m comment --comment {chains.name} {chains.match}"
            f" --dport {route.node_port} -j {chains.external}"
        )
    external_filter = route.external_traffic_filter
    if external_filter is not None:
        local = f"-m addrtype --dst-type LOCAL {chains.match} --dport {route.node_port}"
        _write_filtered(chains, KUBE_EXTERNAL_SERVICES, external_filter, local, out)


def _write_service_chains(
    chains: _RouteChains, config: IptablesConfig, large: bool, out: _Buffer
) -> None:
    """The per-service chains, which a partial render leaves as they are for unchanged
    Services: in the order a packet meets them, then one chain per endpoint."""
    route = chains.route
    name = chains.name
    # Masquerade ClusterIP traffic from outside the cluster: a static route for the Service
    # range may point at any node, and the reply must come back through that node.
    if route.has_internal_endpoints:
        clusterip = (
            f'-m comment --comment "{name} cluster IP" {chains.match}'
            f" -d {route.cluster_ip} --dport {route.port}"
        )
        if config.masquerade_all:
            out.nat.append(f"-A {chains.internal} {clusterip} -j {KUBE_MARK_MASQ}")
        elif config.cluster_cidr:
            out.nat.append(
                f"-A {chains.internal} {clusterip} ! -s {config.cluster_cidr} -j {KUBE_MARK_MASQ}"
            )
    if route.uses_external_traffic_chain:
        _write_external_chain(chains, config, out)
    if chains.uses_firewall:
        _write_firewall_chain(chains, config, out)
    reachable = route.reachable_endpoints
    sep_chains = chains.endpoint_chains(reachable)
    if route.uses_cluster_policy_chain:
        out.declare(chains.cluster)
        out.nat += _endpoint_jumps(
            chains, chains.cluster, route.cluster_endpoints, sep_chains, large
        )
    if route.uses_local_policy_chain:
        out.declare(chains.local)
        out.nat += _endpoint_jumps(chains, chains.local, route.local_endpoints, sep_chains, large)

    # One chain per endpoint: hairpin masquerade, then the DNAT. This loop runs for every
    # endpoint of every Service: `out.declare` is written out, names are looked up once.
    comment = "" if large else f" -m comment --comment {name}"
    match = chains.match
    nat, nat_chains, active = out.nat, out.nat_chains, out.active
    for ep in reachable:
        address = ep.address
        sep = sep_chains[address]
        nat_chains.append(chain_line(sep))
        active.add(sep)
        # A pod reaching itself through the VIP: SNAT to the node so the reply returns via us.
        nat.append(f"-A {sep}{comment} -s {ep.ip} -j {KUBE_MARK_MASQ}")
        affinity = f" -m recent --name {sep} --set" if route.affinity_timeout else ""
        nat.append(f"-A {sep}{comment}{affinity} {match} -j DNAT --to-destination {address}")


def _write_external_chain(chains: _RouteChains, config: IptablesConfig, out: _Buffer) -> None:
    """KUBE-EXT: masquerade (Cluster policy) or the short-circuits of the Local policy, then
    the chain of the external policy."""
    route, external, name = chains.route, chains.external, chains.name
    out.declare(external)
    if not route.external_policy_local:
        # Endpoints may be on other nodes: masquerade so replies come back through us.
        out.nat.append(
            f"-A {external} -m comment"
            f' --comment "masquerade traffic for {name} external destinations"'
            f" -j {KUBE_MARK_MASQ}"
        )
    else:
        # Local policy keeps the client's address. Pod traffic to an external address is
        # sent to the Cluster chain, as if it had gone out to the LB and come back in.
        if config.cluster_cidr:
            out.nat.append(
                f"-A {external} -m comment"
                f' --comment "pod traffic for {name} external destinations"'
                f" -s {config.cluster_cidr} -j {chains.cluster}"
            )
        # Traffic from the node itself has a local source (often the LB IP): masquerade it
        # and send it to the Cluster chain too.
        out.nat.append(
            f"-A {external} -m comment"
            f' --comment "masquerade LOCAL traffic for {name} external destinations"'
            f" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
        )
        out.nat.append(
            f"-A {external} -m comment"
            f' --comment "route LOCAL traffic for {name} external destinations"'
            f" -m addrtype --src-type LOCAL -j {chains.cluster}"
        )
    if route.has_external_endpoints:
        out.nat.append(f"-A {external} -j {chains.external_policy}")


def _write_firewall_chain(chains: _RouteChains, config: IptablesConfig, out: _Buffer) -> None:
    """KUBE-FW: loadBalancerSourceRanges, only for VIP-style LBs that keep the source."""
    route, fw_chain = chains.route, chains.firewall
    out.declare(fw_chain)
    head = f'-A {fw_chain} -m comment --comment "{route.name} loadbalancer IP"'
    allow_from_node = False
    for cidr in route.load_balancer_source_ranges:
        out.nat.append(f"{head} -s {cidr} -j {chains.external}")
        if config.node_ip and ipaddress.ip_address(config.node_ip) in ipaddress.ip_network(
            cidr, strict=False
        ):
            allow_from_node = True
    if allow_from_node:
        # A VIP-style LB IP is often local: the node's own request to it loops back with
        # the LB IP as its source.
        for ip in route.load_balancer_ips:
            out.nat.append(f"{head} -s {ip} -j {chains.external}")
    out.nat.append(
        f"-A {fw_chain} -m comment"
        f' --comment "other traffic to {route.name} will be dropped by KUBE-PROXY-FIREWALL"'
    )


def _endpoint_jumps(
    chains: _RouteChains,
    chain: str,
    endpoints: tuple[RouteEndpoint, ...],
    sep_chains: Mapping[str, str],
    large: bool,
) -> list[str]:
    """kube-proxy `writeServiceToEndpointRules`: affinity checks first, then the random spread.

    Rule i of n matches with probability 1/(n-i), so each endpoint gets 1/n overall; the last
    rule is unconditional.
    """
    route, name = chains.route, chains.name
    rules = []
    if route.affinity_timeout:
        for ep in endpoints:
            sep = sep_chains[ep.address]
            comment = "" if large else f' -m comment --comment "{name} -> {ep.address}"'
            rules.append(
                f"-A {chain}{comment} -m recent --name {sep}"
                f" --rcheck --seconds {route.affinity_timeout} --reap -j {sep}"
            )
    n = len(endpoints)
    for i, ep in enumerate(endpoints):
        comment = "" if large else f' -m comment --comment "{name} -> {ep.address}"'
        spread = (
            f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        )
        rules.append(f"-A {chain}{comment}{spread} -j {sep_chains[ep.address]}")
    return rules


def chain_rules(text: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """(table, chain) → its `-A` lines, from `iptables-save` output or restore input.

    A chain line (`:CHAIN …`, which under --noflush also flushes it) starts the chain empty; a
    `-X` removes it: for restore input, what each chain it names holds once it is applied."""
    chains: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in split_lines(text):
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            chains[(table, line[1:].split(" ", 1)[0])] = []
        elif line.startswith("-A "):
            chains.setdefault((table, line[3:].split(" ", 1)[0]), []).append(line)
        elif line.startswith("-X "):
            chains.pop((table, line[3:].strip()), None)
    return {key: tuple(lines) for key, lines in chains.items()}


def saved_chains(save_text: str) -> dict[str, frozenset[str]]:
    """The chains per table in `iptables-save` output (`utiliptables.GetChainsFromTable`)."""
    # The chains as `chain_rules` finds them, without keeping their rules (at 5,000 Services
    # 100,000 lines, which would then be freed at once).
    tables: dict[str, set[str]] = {}
    table = tables.setdefault("", set())
    for line in split_lines(save_text):
        if line.startswith("*"):
            table = tables.setdefault(line[1:].strip(), set())
        elif line.startswith(":"):
            table.add(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            table.add(line[3:].split(" ", 1)[0])
        elif line.startswith("-X "):
            table.discard(line[3:].strip())
    return {name: frozenset(chains) for name, chains in tables.items() if chains}


def owned_chains(
    saved: Mapping[str, Iterable[str]], others: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """kdns's chains among `saved` (the chains per table that exist, `saved_chains`): per
    table, the fixed chains, then those in `others` (another mode's fixed chains, the canary),
    then every per-service chain, sorted. Tables with none are left out."""
    fixed = {"filter": FILTER_CHAINS, "nat": NAT_CHAINS}
    owned: dict[str, list[str]] = {}
    for table in ("filter", "nat"):
        existing = set(saved.get(table, ()))
        names = [*fixed[table], *(others or {}).get(table, ())]
        ours = [c for c in dict.fromkeys(names) if c in existing]
        if table == "nat":
            ours += sorted(c for c in existing if is_service_chain(c))
        if ours:
            owned[table] = ours
    return owned


def render_cleanup(
    saved: Mapping[str, Iterable[str]], others: Mapping[str, Sequence[str]] | None = None
) -> str:
    """Restore input that flushes and deletes every chain kdns installs (kube-proxy
    `CleanupLeftovers`): `owned_chains(saved, others)`.

    Delete the `JUMP_RULES` first (`iptables -D`), or the `-X` of a chain they jump to fails.
    Unlike kube-proxy, KUBE-MARK-MASQ and KUBE-PROXY-FIREWALL go too: kdns created them.
    """
    parts: list[str] = []
    for table, ours in owned_chains(saved, others).items():
        parts += [f"*{table}", *(chain_line(c) for c in ours), *(f"-X {c}" for c in ours)]
        parts.append("COMMIT")
    return "\n".join([*parts, ""]) if parts else ""


FixedChains = dict[tuple[str, str], tuple[str, ...]]


_FIXED = frozenset({("filter", c) for c in FILTER_CHAINS} | {("nat", c) for c in NAT_CHAINS})


def fixed_chain_rules(chains: Mapping[tuple[str, str], tuple[str, ...]]) -> FixedChains:
    """The fixed chains among `chain_rules` output."""
    return {key: rules for key, rules in chains.items() if key in _FIXED}


def omit_unchanged(text: str, applied: FixedChains) -> str:
    """A partial restore input without the fixed chains whose rules equal `applied` (what the
    kernel holds after the last successful restore): under --noflush a chain the input does not
    declare is left as it is. kube-proxy rewrites KUBE-SERVICES on every partial sync (10,000
    rules at 10k Services); an endpoint change does not alter it, so here it is not sent."""
    fixed = fixed_chain_rules(chain_rules(text))
    same = {key for key, rules in fixed.items() if applied.get(key) == rules}
    if not same:
        return text
    out = []
    table = ""
    for line in text.split("\n"):
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith((":", "-A ")):
            chain = line[(1 if line[0] == ":" else 3) :].split(" ", 1)[0]
            if (table, chain) in same:
                continue
        out.append(line)
    return "\n".join(out)

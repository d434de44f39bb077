"""Routes → kube-proxy's IPVS data path: the virtual services, the addresses bound to
kube-ipvs0, the ipset contents and the iptables companion rules.

Contract:
- `render(routes, config)` returns an `IpvsRendering`: the desired `IpvsState` (virtual
  services keyed by (protocol, VIP, port), each with its scheduler, persistence and real servers,
  and the addresses bound to the dummy interface kube-ipvs0), the ipset contents and the
  `iptables-restore` input per IP family in `config.families`, as kube-proxy's IPVS proxier
  (pkg/proxy/ipvs/proxier.go syncProxyRules, writeIptablesRules) programs them. Dual-stack is
  one IPVS table holding both families, but ipsets and iptables are per family.
- `JUMP_RULES` are the jumps from the built-in chains for the caller to ensure; `NAT_CHAINS`
  and `FILTER_CHAINS` are the chains the restore input declares.
- Output is deterministic (services in `ipvsadm -S` order, addresses and set entries sorted).
- Deliberate differences from kube-proxy: no NodePort virtual servers on loopback addresses
  (CVE-2020-8558); internalTrafficPolicy Local with no local endpoint leaves the ClusterIP
  service without real servers (kube-proxy falls back to every endpoint when the Service is also
  externally reachable); when two routes claim one (protocol, VIP, port), the first in route
  order wins (kube-proxy: whichever its map yields last); the conntrack INVALID drop is written
  as the iptables renderer writes it (off with `conntrack_tcp_be_liberal`): KUBE-POSTROUTING,
  KUBE-MARK-MASQ and KUBE-FORWARD come from `proxy/masquerade.py`, which both renderers use.
- The node DNS's takeover (`config.node_dns`, `kdns proxy --dns` once it answers): a ClusterIP
  the node DNS answers on gets no virtual service, no KUBE-CLUSTER-IP entry (so no masquerade
  mark, no ACCEPT) for its port 53 over UDP and TCP, and KUBE-IPVS-FILTER lets port 53 through
  to the local socket; the address stays bound to kube-ipvs0 and the Service's other ports
  (kube-dns's 9153) keep their virtual services. Why the address stays: kdns/proxy/nodedns.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kdns.proxy.ipvs.ipset import (
    CLUSTER_IP,
    EXTERNAL_IP,
    EXTERNAL_IP_LOCAL,
    HEALTH_CHECK_NODE_PORT,
    IPSET_BY_NAME,
    IPSETS,
    IPVS_IPS,
    LOAD_BALANCER,
    LOAD_BALANCER_FW,
    LOAD_BALANCER_LOCAL,
    LOAD_BALANCER_SOURCE_CIDR,
    LOAD_BALANCER_SOURCE_IP,
    LOOP_BACK,
    NODE_PORT_LOCAL_SCTP,
    NODE_PORT_LOCAL_TCP,
    NODE_PORT_LOCAL_UDP,
    NODE_PORT_SCTP,
    NODE_PORT_TCP,
    NODE_PORT_UDP,
)
from kdns.proxy.ipvs.state import (
    DEFAULT_SCHEDULER,
    SCHEDULERS,
    IpvsState,
    RealServer,
    VirtualKey,
    VirtualService,
    ip_sort_key,
    norm_ip,
)
from kdns.proxy.masquerade import (
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    forward_rules,
    postrouting_rules,
)
from kdns.proxy.routes import (
    JumpRule,
    RouteEndpoint,
    ServicePortRoute,
    family_of,
    masquerade_mark,
    route_sort_key,
)

# Fixed chains, proxier.go constants. IPVS mode has no per-service chains.
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"
NODE_DNS_PORT = 53  # the port a ClusterIP taken over by the node DNS answers on itself
# proxier.go iptablesChains, in its order.
NAT_CHAINS = (KUBE_SERVICES, KUBE_POSTROUTING, KUBE_NODE_PORT, KUBE_LOAD_BALANCER, KUBE_MARK_MASQ)
FILTER_CHAINS = (
    KUBE_FORWARD,
    KUBE_NODE_PORT,
    KUBE_PROXY_FIREWALL,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
)

JUMP_RULES = (
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
    JumpRule("filter", "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    JumpRule("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    JumpRule("filter", "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
    JumpRule("filter", "OUTPUT", KUBE_IPVS_OUT_FILTER, "kubernetes ipvs access filter"),
)


@dataclass(frozen=True, slots=True)
class IpvsConfig:
    """What a render and a diff depend on besides the routes: the node and the proxier flags."""

    families: tuple[int, ...] = (4,)  # the IP families this proxy manages (dual-stack: (4, 6))
    scheduler: str = DEFAULT_SCHEDULER  # --ipvs-scheduler
    # The node's own addresses, on interfaces other than kube-ipvs0 (both families): an
    # externalIP or LB IP among them is served but not bound to kube-ipvs0.
    local_ips: tuple[str, ...] = ()
    # --nodeport-addresses resolved to addresses (both families); None: every local_ips entry.
    # Loopback addresses never get NodePort services.
    nodeport_ips: tuple[str, ...] | None = None
    # The node's primary IP per family: an LB source range containing it admits the LB IP as a
    # source (the node reaching its own VIP-style LB), otherwise the node is denied the LB IP.
    node_ips: tuple[str, ...] = ()
    # --cluster-cidr, one per family: ClusterIP traffic from outside it is masqueraded.
    cluster_cidrs: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    random_fully: bool = True
    conntrack_tcp_be_liberal: bool = False
    # --ipvs-exclude-cidrs: virtual services inside these are never deleted by a diff.
    exclude_cidrs: tuple[str, ...] = ()
    # Addresses the node DNS answers on port 53 and has taken over (module docstring): a
    # ClusterIP among them keeps no UDP or TCP virtual service for port 53.
    node_dns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.families or any(f not in (4, 6) for f in self.families):
            raise ValueError(f"families must be 4 and/or 6, not {self.families!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"IPVS scheduler {self.scheduler!r} is not one of the kernel's")
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(f"masquerade_bit {self.masquerade_bit} is out of range 0-31")
        for ip in (*self.local_ips, *(self.nodeport_ips or ()), *self.node_ips, *self.node_dns):
            ipaddress.ip_address(ip)
        for cidr in (*self.cluster_cidrs, *self.exclude_cidrs):
            ipaddress.ip_network(cidr, strict=False)

    @property
    def masquerade_mark(self) -> str:
        return masquerade_mark(self.masquerade_bit)

    @property
    def sched_flags(self) -> int:
        # proxier.go: the "mh" scheduler gets FlagSourceHash (flag-2, mh-port), so the hash
        # covers the source port too.
        return 2 if self.scheduler == "mh" else 0

    def nodeport_addresses(self, family: int) -> tuple[str, ...]:
        ips = self.local_ips if self.nodeport_ips is None else self.nodeport_ips
        # No NodePorts on loopback (CVE-2020-8558), unlike kube-proxy's IPVS mode.
        return tuple(
            sorted(
                {
                    norm_ip(ip)
                    for ip in ips
                    if family_of(ip) == family and not ipaddress.ip_address(ip).is_loopback
                },
                key=ip_sort_key,
            )
        )

    def node_ip(self, family: int) -> str | None:
        return next((ip for ip in self.node_ips if family_of(ip) == family), None)

    def cluster_cidr(self, family: int) -> str | None:
        return next((c for c in self.cluster_cidrs if family_of(c) == family), None)

    def excluded(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(
            address in ipaddress.ip_network(cidr, strict=False)
            for cidr in self.exclude_cidrs
            if family_of(cidr) == address.version
        )


@dataclass(frozen=True, slots=True)
class IpvsRendering:
    """Everything IPVS mode programs for a set of routes."""

    state: IpvsState
    # Per family: set name (the family's spelling) → entries, as `ipset save` prints them.
    ipsets: Mapping[int, Mapping[str, frozenset[str]]]
    iptables: Mapping[int, str]  # per family: `iptables-restore --noflush` input


def _net_entry(cidr: str) -> str:
    """A source range as ipset prints it: the network address, no prefix for a single host."""
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


class _Desired:
    """What the routes ask of IPVS mode, as they are read: the virtual services (the first
    route to claim a (protocol, VIP, port) keeps it), the addresses to bind to kube-ipvs0,
    each family's set entries, and the LB IPs the node itself is denied."""

    def __init__(self, config: IpvsConfig) -> None:
        self.config = config
        self.services: dict[VirtualKey, VirtualService] = {}
        self.bind: set[str] = set()
        self.sets = {f: {spec.name: set[str]() for spec in IPSETS} for f in config.families}
        self.no_node_access: dict[int, list[tuple[str, str, int]]] = {
            f: [] for f in config.families
        }
        self.local_ips = {norm_ip(ip) for ip in config.local_ips}
        self.nodeport_ips = {f: config.nodeport_addresses(f) for f in config.families}
        self.node_dns = {norm_ip(ip) for ip in config.node_dns}
        # Per family: (ClusterIP, protocol) whose port 53 the node DNS answers instead of IPVS.
        self.node_dns_ports: dict[int, set[tuple[str, str]]] = {f: set() for f in config.families}

    def service(
        self, route: ServicePortRoute, ip: str, port: int, endpoints: Iterable[RouteEndpoint]
    ) -> None:
        config = self.config
        service = VirtualService(
            route.protocol,
            ip,
            port,
            scheduler=config.scheduler,
            # proxier.go: ClientIP affinity is FlagPersistent with Timeout = timeoutSeconds.
            persistence=route.affinity_timeout,
            sched_flags=config.sched_flags,
            # proxier.go syncEndpoint: weight 1, masquerade (netlink's default forwarding).
            reals=tuple(RealServer(ep.ip, ep.port) for ep in endpoints),
        )
        self.services.setdefault(service.key, service)

    def taken_over(self, route: ServicePortRoute) -> bool:
        """Whether the node DNS answers this ClusterIP port itself (module docstring)."""
        return (
            route.port == NODE_DNS_PORT
            and route.protocol.upper() in ("UDP", "TCP")
            and norm_ip(route.cluster_ip) in self.node_dns
        )

    def bind_unless_local(self, ip: str) -> None:
        # "We must not add the address to the dummy device if it exist on another interface"
        if ip not in self.local_ips:
            self.bind.add(ip)


def render(routes: Iterable[ServicePortRoute], config: IpvsConfig = IpvsConfig()) -> IpvsRendering:
    """The desired IPVS state, ipsets and iptables rules of `routes` (proxier.go syncProxyRules)."""
    out = _Desired(config)
    for route in sorted(routes, key=route_sort_key):
        if route.family in config.families:
            _write_route(route, out)

    ipsets: dict[int, dict[str, frozenset[str]]] = {}
    iptables: dict[int, str] = {}
    for family in config.families:
        sets = out.sets[family]
        # KUBE-IPVS-IPS holds what is bound to kube-ipvs0: KUBE-IPVS-FILTER rejects new
        # connections to those addresses on ports no service has (#72236).
        sets[IPVS_IPS] = {ip for ip in out.bind if family_of(ip) == family}
        ipsets[family] = {
            IPSET_BY_NAME[name].set_name(family): frozenset(values) for name, values in sets.items()
        }
        iptables[family] = _render_iptables(
            family, sets, config, out.no_node_access[family], sorted(out.node_dns_ports[family])
        )
    return IpvsRendering(IpvsState(out.services, frozenset(out.bind)), ipsets, iptables)


def _write_route(route: ServicePortRoute, out: _Desired) -> None:
    """One service port: its virtual services, set entries and addresses to bind."""
    entries = out.sets[route.family]
    proto = route.protocol.lower()
    # internalTrafficPolicy decides the ClusterIP's real servers (syncEndpoint with
    # internalNodeLocal): Local ones only, possibly none.
    internal = route.local_endpoints if route.internal_policy_local else route.cluster_endpoints
    # Hairpin: a local endpoint reaching itself through a VIP is masqueraded (KUBE-LOOP-BACK
    # takes every local endpoint of the port, ready or not).
    for ep in route.endpoints:
        if ep.local:
            entries[LOOP_BACK].add(f"{ep.ip},{proto}:{ep.port},{ep.ip}")
    # The ClusterIP: always bound to kube-ipvs0, so IPVS sees it at LOCAL_IN. A port the
    # node DNS took over gets no virtual service: IPVS passes what matches none of its
    # services on to the local socket (kdns/proxy/nodedns.py says why the address stays).
    if out.taken_over(route):
        out.node_dns_ports[route.family].add((norm_ip(route.cluster_ip), proto))
    else:
        entries[CLUSTER_IP].add(f"{route.cluster_ip},{proto}:{route.port}")
        out.service(route, route.cluster_ip, route.port, internal)
    out.bind.add(route.cluster_ip)
    if route.external_ips or route.load_balancer_ips or route.node_port:
        _write_external(route, out)
    if route.health_check_node_port:
        entries[HEALTH_CHECK_NODE_PORT].add(str(route.health_check_node_port))


def _write_external(route: ServicePortRoute, out: _Desired) -> None:
    """The externalIPs, LB ingress IPs and NodePorts of one service port."""
    family, entries = route.family, out.sets[route.family]
    proto = route.protocol.lower()
    # externalTrafficPolicy Local: the external addresses get the local endpoints; with
    # none, every endpoint, so pods and the node keep access (kube-proxy PR #97081); an
    # outside client is then answered from a pod address and drops the reply.
    if route.external_policy_local and route.local_endpoints:
        external = route.local_endpoints
    else:
        external = route.cluster_endpoints
    for ip in route.external_ips:
        # Local policy keeps the client's address: a set with no masquerade rule.
        local_set = EXTERNAL_IP_LOCAL if route.external_policy_local else EXTERNAL_IP
        entries[local_set].add(f"{ip},{proto}:{route.port}")
        out.service(route, ip, route.port, external)
        out.bind_unless_local(ip)
    for ip in route.load_balancer_ips:
        entry = f"{ip},{proto}:{route.port}"
        entries[LOAD_BALANCER].add(entry)
        if route.external_policy_local:
            entries[LOAD_BALANCER_LOCAL].add(entry)
        if route.load_balancer_source_ranges:
            _write_source_ranges(route, ip, entry, out)
        out.service(route, ip, route.port, external)
        out.bind_unless_local(ip)
    nodeport_ips = out.nodeport_ips[family]
    if route.node_port and nodeport_ips:
        # NodePorts are masqueraded unless the Local policy keeps the client's address;
        # the bitmap sets match the port on any local address, SCTP's hash sets the pairs.
        if proto == "sctp":
            np_entries = [f"{ip},{proto}:{route.node_port}" for ip in nodeport_ips]
            np_set, np_local_set = NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP
        else:
            np_entries = [str(route.node_port)]
            np_set = NODE_PORT_TCP if proto == "tcp" else NODE_PORT_UDP
            np_local_set = NODE_PORT_LOCAL_TCP if proto == "tcp" else NODE_PORT_LOCAL_UDP
        entries[np_set].update(np_entries)
        if route.external_policy_local:
            entries[np_local_set].update(np_entries)
        # One virtual service per node address; node addresses are never bound.
        for ip in nodeport_ips:
            out.service(route, ip, route.node_port, external)


def _write_source_ranges(route: ServicePortRoute, ip: str, entry: str, out: _Desired) -> None:
    """loadBalancerSourceRanges of one LB IP ("ip,proto:port" `entry`): only LBs that keep
    the client's address can be filtered here."""
    family, entries = route.family, out.sets[route.family]
    entries[LOAD_BALANCER_FW].add(entry)
    node_ip = out.config.node_ip(family)
    allow_from_node = False
    for cidr in route.load_balancer_source_ranges:
        entries[LOAD_BALANCER_SOURCE_CIDR].add(f"{entry},{_net_entry(cidr)}")
        network = ipaddress.ip_network(cidr, strict=False)
        if node_ip is not None and ipaddress.ip_address(node_ip) in network:
            allow_from_node = True
    if allow_from_node:
        # The node's own request to a local LB IP arrives with the LB IP as source.
        entries[LOAD_BALANCER_SOURCE_IP].add(f"{entry},{ip}")
    else:
        # Neither range admits the node: KUBE-IPVS-OUT-FILTER blocks it (#119656).
        out.no_node_access[family].append((ip, route.protocol.lower(), route.port))


def _render_iptables(
    family: int,
    sets: Mapping[str, Collection[str]],
    config: IpvsConfig,
    no_node_access: Sequence[tuple[str, str, int]],
    node_dns_ports: Sequence[tuple[str, str]] = (),
) -> str:
    """proxier.go writeIptablesRules: the fixed chains, matching the ipsets, nat then filter."""
    nat = _nat_rules(family, sets, config)
    filt = _filter_rules(family, sets, config, no_node_access, node_dns_ports)
    lines = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), *nat, "COMMIT"]
    lines += ["*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *filt, "COMMIT", ""]
    return "\n".join(lines)


def _set_name(set_name: str, family: int) -> str:
    """The kernel name of one of the ipsets in `family` (the IPv6 ones have their own)."""
    return IPSET_BY_NAME[set_name].set_name(family)


def _comment(set_name: str) -> str:
    """The comment match kube-proxy puts on a rule that matches the ipset `set_name`."""
    return f'-m comment --comment "{IPSET_BY_NAME[set_name].comment}"'


# proxier.go ipsetWithIptablesChain: one rule per non-empty set; the Local sets RETURN
# before the masquerade rule of their kind. (set, table, chain, target, match, protocol)
_SET_RULES = (
    (LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
    (LOAD_BALANCER, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
    (LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
    (NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    (NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    (NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    (NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    (NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    (NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    (LOAD_BALANCER_FW, "filter", KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, "dst,dst", ""),
    (LOAD_BALANCER_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
    (LOAD_BALANCER_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
)


def _set_rules(table: str, family: int, sets: Mapping[str, Collection[str]]) -> list[str]:
    """The `_SET_RULES` of `table` whose set has entries, in their order."""
    rules = []
    for set_name, set_table, chain, target, match, proto in _SET_RULES:
        if set_table == table and sets[set_name]:
            proto_match = f" -p {proto}" if proto else ""
            rules.append(
                f"-A {chain}{proto_match} {_comment(set_name)}"
                f" -m set --match-set {_set_name(set_name, family)} {match} -j {target}"
            )
    return rules


def _nat_rules(family: int, sets: Mapping[str, Collection[str]], config: IpvsConfig) -> list[str]:
    """The nat table: what is masqueraded (marked, then MASQUERADE in KUBE-POSTROUTING) and
    what is accepted for IPVS to take, in writeIptablesRules' order."""
    # Connections from localhost never reach a service here (no route_localnet).
    loopback = "::1/128" if family == 6 else "127.0.0.0/8"
    return [
        f"-A {KUBE_SERVICES} -s {loopback} -j RETURN",
        *_set_rules("nat", family, sets),
        *_cluster_ip_masquerade(family, sets, config),
        *_external_ip_rules(family, sets),
        f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}",
        f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}",
        *_accept_ipvs_traffic(family, sets),
        *postrouting_rules(config.masquerade_mark, config.random_fully),
    ]


def _cluster_ip_masquerade(
    family: int, sets: Mapping[str, Collection[str]], config: IpvsConfig
) -> list[str]:
    """The KUBE-CLUSTER-IP rule: which ClusterIP traffic gets the masquerade mark."""
    if not sets[CLUSTER_IP]:
        return []
    head = (
        f"-A {KUBE_SERVICES} {_comment(CLUSTER_IP)}"
        f" -m set --match-set {_set_name(CLUSTER_IP, family)}"
    )
    cidr = config.cluster_cidr(family)
    if config.masquerade_all:
        return [f"{head} dst,dst -j {KUBE_MARK_MASQ}"]
    if cidr:
        # Off-cluster traffic to a VIP (a static route for the Service range to any node)
        # is masqueraded so the reply comes back through this node.
        return [f"{head} dst,dst ! -s {cidr} -j {KUBE_MARK_MASQ}"]
    # No local-traffic detector: masquerade node traffic whose source is a VIP (the
    # kernel picks a kube-ipvs0 address as the source of a connection to a VIP).
    return [f"{head} src,dst -j {KUBE_MARK_MASQ}"]


def _external_ip_rules(family: int, sets: Mapping[str, Collection[str]]) -> list[str]:
    """The externalIP rules: masquerade under the Cluster policy, and accept."""

    def accept(head: str) -> list[str]:
        # Accept externalIP traffic from off the machine (not from a bridge, not local), and
        # traffic to an externalIP that is a local address (GCE-style LBs).
        return [
            f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
            f"{head} -m addrtype --dst-type LOCAL -j ACCEPT",
        ]

    rules = []
    if sets[EXTERNAL_IP]:
        head = (
            f"-A {KUBE_SERVICES} {_comment(EXTERNAL_IP)}"
            f" -m set --match-set {_set_name(EXTERNAL_IP, family)} dst,dst"
        )
        rules.append(f"{head} -j {KUBE_MARK_MASQ}")
        rules += accept(head)
    if sets[EXTERNAL_IP_LOCAL]:
        rules += accept(
            f"-A {KUBE_SERVICES} {_comment(EXTERNAL_IP_LOCAL)}"
            f" -m set --match-set {_set_name(EXTERNAL_IP_LOCAL, family)} dst,dst"
        )
    return rules


def _accept_ipvs_traffic(family: int, sets: Mapping[str, Collection[str]]) -> list[str]:
    """proxier.go acceptIPVSTraffic: accept what IPVS will take, whatever rules come after
    ours."""
    return [
        f"-A {KUBE_SERVICES} -m set --match-set {_set_name(set_name, family)} dst,dst -j ACCEPT"
        for set_name in (CLUSTER_IP, LOAD_BALANCER)
        if sets[set_name]
    ]


def _filter_rules(
    family: int,
    sets: Mapping[str, Collection[str]],
    config: IpvsConfig,
    no_node_access: Sequence[tuple[str, str, int]],
    node_dns_ports: Sequence[tuple[str, str]],
) -> list[str]:
    """The filter table: LB source ranges, forwarding, health checks and the VIPs' port
    filter, in writeIptablesRules' order."""
    health_check_set = _set_name(HEALTH_CHECK_NODE_PORT, family)
    return [
        *_set_rules("filter", family, sets),
        *_source_range_rules(no_node_access),
        *forward_rules(config.masquerade_mark, config.conntrack_tcp_be_liberal),
        f"-A {KUBE_NODE_PORT} {_comment(HEALTH_CHECK_NODE_PORT)}"
        f" -m set --match-set {health_check_set} dst -j ACCEPT",
        *_ipvs_filter_rules(family, node_dns_ports),
    ]


def _source_range_rules(no_node_access: Sequence[tuple[str, str, int]]) -> list[str]:
    """What loadBalancerSourceRanges deny: other sources, and the node when left out."""
    # What KUBE-SOURCE-RANGES-FIREWALL did not RETURN is outside every source range.
    rules = [f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP"]
    # The node itself is denied an LB IP whose source ranges leave it out (#119656): IPVS
    # would otherwise accept it, the source being the LB IP on kube-ipvs0.
    for ip, proto, port in no_node_access:
        rules.append(
            f"-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {proto}"
            f" --vport {port} -j DROP"
        )
    return rules


def _ipvs_filter_rules(family: int, node_dns_ports: Sequence[tuple[str, str]]) -> list[str]:
    """KUBE-IPVS-FILTER: the VIPs answer only on their service ports, not every host port
    (#72236)."""
    rules = [
        f"-A {KUBE_IPVS_FILTER} -m set --match-set {_set_name(set_name, family)} dst,dst -j RETURN"
        for set_name in (LOAD_BALANCER, CLUSTER_IP, EXTERNAL_IP, EXTERNAL_IP_LOCAL)
    ]
    rules.append(
        f"-A {KUBE_IPVS_FILTER} -m set --match-set {_set_name(HEALTH_CHECK_NODE_PORT, family)}"
        " dst -j RETURN"
    )
    # A ClusterIP the node DNS took over: port 53 is its socket's, not a stray host port.
    # (With its NOTRACK rules the REJECT below, ctstate NEW, would not match anyway; this
    # keeps DNS working when they failed to install.)
    prefix = 128 if family == 6 else 32
    for ip, proto in node_dns_ports:
        rules.append(
            f"-A {KUBE_IPVS_FILTER} -d {ip}/{prefix} -p {proto} -m {proto} --dport {NODE_DNS_PORT}"
            f' -m comment --comment "kdns node DNS" -j RETURN'
        )
    rules.append(
        f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW"
        f" -m set --match-set {_set_name(IPVS_IPS, family)} dst -j REJECT"
    )
    return rules

"""Routes → an `nft -f` script: kube-proxy's nftables-mode layout in one table kdns owns per family.

Contract:
- `render_full(routes, config, existing)` returns one transaction that makes `table ip kdns` (or
  `ip6 kdns`) hold exactly what the routes of `config.family` need, whatever it held before:
  `add table` + `flush table` (every rule of every chain goes), the base chains re-created (so a
  changed hook priority cannot fail the transaction), the fixed chains and rules, the dispatch
  maps flushed and refilled (each map's and set's elements in one `add element`, see
  `_write_services`), every per-service chain and affinity set, and the deletion of the
  per-service chains and affinity sets in `existing` that are no longer used. Affinity sets that
  are still used are declared again but never flushed, so session affinity survives full syncs.
- `render_partial(routes, changed, previous, config)` is the incremental sync kube-proxy's
  nftables mode does (pkg/proxy/nftables/proxier.go: nftElementStorage, skipServiceUpdate), with
  `previous` the Rendering last applied: only element adds and deletes in the maps, the
  per-service chains that are new (`add chain`) or whose rules changed (`flush chain` + rules),
  new, re-timed and stale affinity sets, and the flush and delete of chains no longer used.
  Only the Services in `changed` are looked at; `routes` may hold just their routes (the other
  routes are ignored). Its cost and its size are O(what changed), apart from two dict copies.
- `release(rendering)` empties a Rendering's state entry by entry, for its owner about to drop
  it (the data plane, once a full render has replaced it: a partial one shares most of its
  entries, so dropping it frees little): no later render shares that state, and freed in small
  steps it never holds the GIL for one long cascade of deallocations.
- Applying `render_full(old)` then `render_partial(new, …)` leaves the table as
  `render_full(new)` alone would (the tests compare `nft list table` both ways in a namespace).
- Names are kube-proxy's (servicePortChainNameBase / servicePortEndpointChainNameBase):
  `service-`, `local-`, `external-`, `firewall-`, `endpoint-` + `<HASH8>-ns/svc/proto/portname`
  (endpoint: `…__ip/port`, IPv6 colons as dots), sets `affinity-<HASH8>-…`; HASH8 is the first 8
  base32 characters of sha256 of the rest; longer than 240 characters → truncated with "...".
- Dispatch is by verdict maps, so the data path stays O(1) in the number of Services:
  `service-ips` (ClusterIP, externalIP, LB IP . proto . port → goto service-/local-/external-),
  `service-nodeports`, `no-endpoint-services` / `no-endpoint-nodeports` (→ `goto reject-chain`
  with no endpoint at all, `drop` with none for a Local policy), `firewall-ips` (LB IPs with
  loadBalancerSourceRanges → `goto firewall-…`, which drops other sources) and the set
  `cluster-ips` (traffic to an unknown port of a ClusterIP is rejected, KEP-3866).
- When two Services claim one map key (an externalIP:port shared by mistake), the Service that
  sorts first owns it, in full and partial renders alike; nft would refuse the duplicate.
- Output is deterministic: Services by key, routes by `route_sort_key`, endpoints by address.
  Pure: no I/O; nothing here runs nft. `Rendering` keeps the state the next partial needs.
- Stale chains: kernels before 6.2 free a chain's reference from a deleted vmap element only
  some time later, so deleting the chain in the same transaction fails (kube-proxy flushes
  stale chains and deletes them ≥ 1 s later). With `NftablesConfig.defer_chain_deletes` they are
  flushed and listed in `Rendering.stale_chains`, and the next render built on this one deletes
  them: the sync engine must then run one (an idle partial) at least a second later.
- Service chains DNAT themselves (kube-proxy jumps to one `endpoint-…` chain per endpoint):
  ClientIP affinity checks first (`ip saddr @affinity-… update @affinity-… { ip saddr } meta
  l4proto tcp dnat to ip:port`), then an even spread, a ladder of `numgen random mod (N - i)
  == 0 [update @affinity-… { ip saddr }] meta l4proto tcp dnat to ip:port` rules. With nft
  1.0.6 every transaction that adds a rule or element first dumps every chain of the namespace,
  and the commit walks the jump graph: endpoint chains made 40,000 chains of 10,000 Services × 3
  and a one-endpoint change took ~0.3 s. From `SPREAD_VMAP_MIN_ENDPOINTS` endpoints on, the
  spread is kube-proxy's `numgen random mod N vmap { 0 : goto endpoint-…, … }` and those
  endpoints keep a chain (affinity update + DNAT); anonymous maps make large transactions
  quadratic in the kernel, so only such few Services have one (see `_endpoint_rules`).
- Hairpin: the `hairpin-endpoints` set holds `ip . ip . proto . port` of every endpoint (claimed
  like map elements, so an endpoint of two Services stays until both let it go), and the first
  rule of `masquerading` marks `ct status dnat ip saddr . ip daddr . meta l4proto . th dport
  @hairpin-endpoints`: a connection DNATed to the endpoint that opened it. kube-proxy marks in
  the endpoint chain when `ip saddr` is the endpoint's; after that chain's DNAT the packet's
  source is its destination, so both mark the same connections, except one DNATed by someone
  else's rules to an endpoint ip:port from that very endpoint (kube-proxy would not mark it).
- Masquerade is kube-proxy's: `mark-for-masquerade` sets the mark (ClusterIP traffic from
  outside `cluster_cidr`, or all of it with `masquerade_all`; external traffic under the
  Cluster policy; a pod reaching itself through its Service, see Hairpin), `masquerading` in
  postrouting clears it and masquerades fully-random.
- Deliberate differences from kube-proxy: table `kdns`; the spread, inlined DNAT and hairpin
  set above; no localhost NodePorts (CVE-2020-8558: loopback `nodeport_ips` are skipped); one
  ClusterCIDR local-traffic detector;
  no health-check accept rule (kube-proxy's nftables mode has none either: a table cannot
  override another table's drop); no topology hints (routes has none).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kdns.proxy.routes import (
    RouteChains,
    RouteEndpoint,
    ServiceKey,
    ServicePortRoute,
    check_family,
    check_node_config,
    masquerade_mark,
    route_sort_key,
)

TABLE = "kdns"

# Base chains, pkg/proxy/nftables/proxier.go nftablesBaseChains: (name, type, hook, priority).
# Filtering runs before DNAT (dstnat - 10), so it sees the service IP, not the endpoint; the
# cluster-ips check on output runs after it (dstnat + 10), when only un-DNATed packets still
# carry a ClusterIP. Priorities are written as numbers: "dstnat" is not a valid name on the
# input and forward hooks.
FILTER_PREROUTING = "filter-prerouting"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
FILTER_OUTPUT_POST_DNAT = "filter-output-post-dnat"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
_DSTNAT, _SRCNAT = -100, 100
BASE_CHAINS = (
    (FILTER_PREROUTING, "filter", "prerouting", _DSTNAT - 10),
    (FILTER_INPUT, "filter", "input", _DSTNAT - 10),
    (FILTER_FORWARD, "filter", "forward", _DSTNAT - 10),
    (FILTER_OUTPUT, "filter", "output", _DSTNAT - 10),
    (FILTER_OUTPUT_POST_DNAT, "filter", "output", _DSTNAT + 10),
    (NAT_PREROUTING, "nat", "prerouting", _DSTNAT),
    (NAT_OUTPUT, "nat", "output", _DSTNAT),
    (NAT_POSTROUTING, "nat", "postrouting", _SRCNAT),
)

# Fixed regular chains, sets and maps (proxier.go constants).
SERVICES = "services"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
FIREWALL_CHECK = "firewall-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"
MASQUERADING = "masquerading"
MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
# Not kube-proxy's: (endpoint IP . endpoint IP . proto . port) of every endpoint, for hairpin
# masquerade in postrouting (kube-proxy marks in each endpoint chain; see render_full).
HAIRPIN_ENDPOINTS = "hairpin-endpoints"

# nftablesJumpChains, in kube-proxy's order: (from base chain, match, to chain). The endpoint
# checks are not hooked at prerouting: `reject` is only valid on input, forward and output
# before kernel 5.9.
JUMP_RULES = (
    (FILTER_INPUT, "ct state new", NODEPORT_ENDPOINTS_CHECK),
    (FILTER_INPUT, "ct state new", SERVICE_ENDPOINTS_CHECK),
    (FILTER_FORWARD, "ct state new", SERVICE_ENDPOINTS_CHECK),
    (FILTER_OUTPUT, "ct state new", SERVICE_ENDPOINTS_CHECK),
    (FILTER_PREROUTING, "ct state new", FIREWALL_CHECK),
    (FILTER_OUTPUT, "ct state new", FIREWALL_CHECK),
    (NAT_OUTPUT, "", SERVICES),
    (NAT_PREROUTING, "", SERVICES),
    (NAT_POSTROUTING, "", MASQUERADING),
    (FILTER_FORWARD, "ct state new", CLUSTER_IPS_CHECK),
    (FILTER_OUTPUT_POST_DNAT, "ct state new", CLUSTER_IPS_CHECK),
)
FIXED_CHAINS = (
    NODEPORT_ENDPOINTS_CHECK,
    SERVICE_ENDPOINTS_CHECK,
    FIREWALL_CHECK,
    SERVICES,
    MASQUERADING,
    CLUSTER_IPS_CHECK,
    MARK_MASQ,
)

# Per-service name prefixes (servicePortPolicyClusterChainNamePrefix, …).
SERVICE_PREFIX = "service-"
LOCAL_PREFIX = "local-"
EXTERNAL_PREFIX = "external-"
FIREWALL_PREFIX = "firewall-"
ENDPOINT_PREFIX = "endpoint-"
AFFINITY_PREFIX = "affinity-"
# From this many endpoints on, a service chain spreads with one numgen vmap over endpoint chains
# (see _endpoint_rules); below it, the service chain DNATs itself.
SPREAD_VMAP_MIN_ENDPOINTS = 16
# knftables NameLengthMax (256) minus the longest prefix with its hyphen (chainNamePrefixLengthMax).
CHAIN_NAME_BASE_MAX = 256 - 16

# The maps, in the order elements are listed; the map type after the address part.
_MAPS = (
    (SERVICE_IPS, True, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    (SERVICE_NODEPORTS, False, "NodePort traffic"),
    (FIREWALL_IPS, True, "destinations that are subject to LoadBalancerSourceRanges"),
    (NO_ENDPOINT_SERVICES, True, "vmap to drop or reject packets to services with no endpoints"),
    (
        NO_ENDPOINT_NODEPORTS,
        False,
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ),
)


@functools.lru_cache(maxsize=1 << 17)
def hash_and_truncate(name: str) -> str:
    """kube-proxy `hashAndTruncate`: "<HASH8>-name", cut to 240 characters ending in "...".

    HASH8 is base32(sha256(name))[:8]; the first 8 base32 characters encode exactly the first
    5 bytes, so only those are encoded. Cached: every sync names the same chains again.
    """
    encoded = base64.b32encode(hashlib.sha256(name.encode()).digest()[:5]).decode("ascii")
    name = f"{encoded}-{name}"
    if len(name) > CHAIN_NAME_BASE_MAX:
        name = name[: CHAIN_NAME_BASE_MAX - 3] + "..."
    return name


def service_chain_base(route: ServicePortRoute) -> str:
    """`servicePortChainNameBase`: "ULMVA6XW-ns1/svc1/tcp/p80" (the port's name, "" if none).

    "/" separates the parts: chain names allow it and Kubernetes names do not contain it, so a
    per-service chain is recognisable by it (`isServiceChainName`).
    """
    namespace, name = route.service
    return hash_and_truncate(f"{namespace}/{name}/{route.protocol.lower()}/{route.port_name}")


def endpoint_chain_base(route: ServicePortRoute, endpoint: RouteEndpoint) -> str:
    """`servicePortEndpointChainNameBase`: "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"."""
    namespace, name = route.service
    ip = endpoint.ip.replace(":", ".")  # IPv6 colons are not allowed in chain names
    return hash_and_truncate(
        f"{namespace}/{name}/{route.protocol.lower()}/{route.port_name}__{ip}/{endpoint.port}"
    )


def is_service_chain(name: str) -> bool:
    """`isServiceChainName`: only per-service chain names contain "/"."""
    return "/" in name


def is_affinity_set(name: str) -> bool:
    """`isAffinitySetName`."""
    return name.startswith(AFFINITY_PREFIX)


@dataclass(frozen=True, slots=True)
class NftablesConfig:
    """What a render depends on besides the routes: one IP family's proxier settings."""

    family: int = 4  # 4: table ip kdns; 6: table ip6 kdns
    # This family's pod CIDR (--cluster-cidr): ClusterIP traffic from outside it is masqueraded,
    # and pod traffic to an external destination of an externalTrafficPolicy Local Service is
    # short-circuited to the Cluster chain (LocalTrafficDetector ClusterCIDR).
    cluster_cidr: str | None = None
    masquerade_all: bool = False  # --masquerade-all: masquerade every ClusterIP connection
    masquerade_bit: int = 14  # the mark is 1 << bit (0x4000)
    # This family's node IP: an LB source range containing it also admits the LB IPs as sources.
    node_ip: str | None = None
    # --nodeport-addresses resolved to this node's addresses; () means every local address
    # (`fib daddr type local`).
    nodeport_ips: tuple[str, ...] = ()
    # This family's Service CIDRs: traffic to an unallocated address in them is dropped.
    service_cidrs: tuple[str, ...] = ()
    # Kernels before 6.2: flush stale chains now and delete them in the next render.
    defer_chain_deletes: bool = False

    def __post_init__(self) -> None:
        check_node_config(
            self.family, self.masquerade_bit, self.cluster_cidr, self.node_ip, self.nodeport_ips
        )
        for cidr in self.service_cidrs:
            check_family(ipaddress.ip_network(cidr, strict=False), self.family)

    @property
    def nft_family(self) -> str:
        """The table family, also the address-match keyword: "ip" or "ip6"."""
        return "ip" if self.family == 4 else "ip6"

    @property
    def table(self) -> str:
        """`ip kdns` / `ip6 kdns`, as nft commands name the table."""
        return f"{self.nft_family} {TABLE}"

    @property
    def addr_type(self) -> str:
        return "ipv4_addr" if self.family == 4 else "ipv6_addr"

    @property
    def masquerade_mark(self) -> str:
        return masquerade_mark(self.masquerade_bit)


@dataclass(frozen=True, slots=True)
class TableObjects:
    """The per-service objects a `table … kdns` holds: what a full render must clean up."""

    chains: frozenset[str] = frozenset()  # per-service chains (names with "/")
    sets: Mapping[str, int] = field(default_factory=dict)  # affinity sets → timeout seconds
    # Chains among `chains` that an earlier transaction already flushed (deferred deletes).
    flushed_chains: frozenset[str] = frozenset()


def table_objects(*listings: str) -> TableObjects:
    """The per-service chains and affinity sets of `table … kdns` in `nft -j` listings: of the
    table (`-t list table ip kdns`), or of the family's chains and sets (`list chains ip`,
    `-t list sets ip`), whose objects of other tables are left out.

    For the first full render after a restart. Chains found here are not known to have been
    flushed long enough ago, so a deferring render flushes them first.
    """
    chains: set[str] = set()
    sets: dict[str, int] = {}
    for listing in listings:
        for item in json.loads(listing).get("nftables", ()):
            chain, set_ = item.get("chain", {}), item.get("set", {})
            if chain.get("table", TABLE) == TABLE and is_service_chain(chain.get("name", "")):
                chains.add(chain["name"])
            elif set_.get("table", TABLE) == TABLE and is_affinity_set(set_.get("name", "")):
                sets[set_["name"]] = int(set_.get("timeout", 0))
    return TableObjects(frozenset(chains), sets)


# --- what one Service contributes ------------------------------------------------------------

# One map or set element: (map or set, key, what follows the key: " : verdict", a comment, "").
_Element = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class _ServiceRules:
    """Everything of one Service in one family: its elements, chains (name → rules) and sets."""

    elements: tuple[_Element, ...]
    chains: Mapping[str, tuple[str, ...]]
    sets: Mapping[str, int]  # affinity set → timeout seconds


@dataclass(frozen=True, slots=True)
class _State:
    services: Mapping[ServiceKey, _ServiceRules]
    # (map, key) → every (Service, suffix) claiming it, the Service that sorts first first.
    claims: Mapping[tuple[str, str], tuple[tuple[ServiceKey, str], ...]]
    stale_chains: frozenset[str]  # flushed, awaiting deletion


class _ServiceBuffer:
    """What one Service's routes write: map and set elements, chains (name → rules) and
    affinity sets (name → timeout)."""

    def __init__(self) -> None:
        self.elements: dict[tuple[str, str], str] = {}
        self.chains: dict[str, tuple[str, ...]] = {}
        self.sets: dict[str, int] = {}

    def element(self, container: str, key: str, suffix: str = "") -> None:
        # The first claim within one Service wins (e.g. an externalIP also listed as LB IP).
        self.elements.setdefault((container, key), suffix)

    def rules(self) -> _ServiceRules:
        elements = tuple((m, k, s) for (m, k), s in self.elements.items())
        return _ServiceRules(elements, self.chains, self.sets)


def _service_rules(routes: Iterable[ServicePortRoute], config: NftablesConfig) -> _ServiceRules:
    """One Service's routes, each as the loop body of kube-proxy's nftables syncProxyRules."""
    out = _ServiceBuffer()
    for route in routes:
        base = service_chain_base(route)
        chains = RouteChains(
            route,
            SERVICE_PREFIX + base,
            LOCAL_PREFIX + base,
            EXTERNAL_PREFIX + base,
            FIREWALL_PREFIX + base,
        )
        _write_elements(chains, out)
        _write_chains(chains, config, out)
    return out.rules()


_FILTER_VERDICTS = {"reject": f"goto {REJECT_CHAIN}", "drop": "drop"}


def _write_elements(chains: RouteChains, out: _ServiceBuffer) -> None:
    """The route's entries in the dispatch maps and sets, in kube-proxy's order."""
    route = chains.route
    proto = route.protocol.lower()
    internal_filter = route.internal_traffic_filter
    external_filter = route.external_traffic_filter
    # No endpoint for this traffic: reject at once (connection refused, #17359), or drop
    # (a Local policy with no local endpoint: the client times out).
    no_endpoints = f' comment "{route.name}" : '
    external_verdict = no_endpoints + _FILTER_VERDICTS[external_filter] if external_filter else ""
    port_key = f" . {proto} . {route.port}"
    # Capture the ClusterIP.
    out.element(CLUSTER_IPS, route.cluster_ip)
    if internal_filter is None:
        out.element(SERVICE_IPS, route.cluster_ip + port_key, f" : goto {chains.internal}")
    else:
        verdict = no_endpoints + _FILTER_VERDICTS[internal_filter]
        out.element(NO_ENDPOINT_SERVICES, route.cluster_ip + port_key, verdict)
    # Capture externalIPs.
    for addr in route.external_ips:
        if route.has_endpoints:
            out.element(SERVICE_IPS, addr + port_key, f" : goto {chains.external}")
        if external_filter is not None:
            out.element(NO_ENDPOINT_SERVICES, addr + port_key, external_verdict)
    # Capture load-balancer ingress IPs.
    for addr in route.load_balancer_ips:
        if route.has_endpoints:
            out.element(SERVICE_IPS, addr + port_key, f" : goto {chains.external}")
        if route.has_source_ranges:
            # Unlike iptables mode, the firewall is a filter check of its own, kept with or
            # without endpoints.
            out.element(FIREWALL_IPS, addr + port_key, f" : goto {chains.firewall}")
    if external_filter is not None:
        for addr in route.load_balancer_ips:
            out.element(NO_ENDPOINT_SERVICES, addr + port_key, external_verdict)
    # Capture the NodePort. NodePorts are not subject to loadBalancerSourceRanges (as in
    # kube-proxy, which cannot change that now).
    if route.node_port:
        key = f"{proto} . {route.node_port}"
        if route.has_endpoints:
            out.element(SERVICE_NODEPORTS, key, f" : goto {chains.external}")
        if external_filter is not None:
            out.element(NO_ENDPOINT_NODEPORTS, key, external_verdict)


def _write_chains(chains: RouteChains, config: NftablesConfig, out: _ServiceBuffer) -> None:
    """The route's chains, in the order a packet meets them: external, firewall, policy (with
    its endpoints' DNATs), endpoint."""
    route = chains.route
    ip = config.nft_family
    if route.uses_external_traffic_chain:
        out.chains[chains.external] = _external_rules(chains, config)
    if route.has_source_ranges:
        sources = list(route.load_balancer_source_ranges)
        node_ip = ipaddress.ip_address(config.node_ip) if config.node_ip else None
        if node_ip and any(node_ip in ipaddress.ip_network(c, strict=False) for c in sources):
            # A VIP-style LB IP is often local: the node's own request to it loops back with
            # the LB IP as its source.
            sources.extend(route.load_balancer_ips)
        out.chains[chains.firewall] = (f"{ip} saddr != {{ {', '.join(sources)} }} drop",)
    _write_policy_chains(chains, config, out)


def _external_rules(chains: RouteChains, config: NftablesConfig) -> tuple[str, ...]:
    route = chains.route
    rules = []
    if not route.external_policy_local:
        # Endpoints may be on other nodes: masquerade so replies come back through us.
        rules.append(f"jump {MARK_MASQ}")
    else:
        # Local policy keeps the client's address. Pod traffic to an external address is
        # sent to the Cluster chain, as if it had gone out to the LB and come back in.
        if config.cluster_cidr:
            rules.append(
                f"{config.nft_family} saddr {config.cluster_cidr} goto {chains.cluster}"
                ' comment "short-circuit pod traffic"'
            )
        # Traffic from the node itself has a local source (often the LB IP): masquerade it
        # and send it to the Cluster chain too.
        rules.append(f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"')
        rules.append(
            f'fib saddr type local goto {chains.cluster} comment "short-circuit local traffic"'
        )
    if route.has_external_endpoints:
        rules.append(f"goto {chains.external_policy}")
    return tuple(rules)


def _write_policy_chains(chains: RouteChains, config: NftablesConfig, out: _ServiceBuffer) -> None:
    """The Cluster and Local policy chains: masquerade, then the endpoints (see
    `_endpoint_rules`), and the endpoint chains of large Services."""
    route = chains.route
    ip = config.nft_family
    proto = route.protocol.lower()
    # Masquerade ClusterIP traffic from outside the cluster: a static route for the Service
    # range may point at any node, and the reply must come back through that node.
    masquerade: tuple[str, ...] = ()
    if route.has_internal_endpoints:
        clusterip = f"{ip} daddr {route.cluster_ip} {proto} dport {route.port}"
        if config.masquerade_all:
            masquerade = (f"{clusterip} jump {MARK_MASQ}",)
        elif config.cluster_cidr:
            masquerade = (f"{clusterip} {ip} saddr != {config.cluster_cidr} jump {MARK_MASQ}",)

    reachable = route.reachable_endpoints
    bases = {ep.address: endpoint_chain_base(route, ep) for ep in reachable}
    affinity = route.affinity_timeout
    # Per endpoint: its DNAT statements; with ClientIP affinity its set records the client
    # (keyed on the client address only, per service port, whichever VIP was used; the timer is
    # refreshed by new connections only: nat chains see the first packet). The hairpin mark is
    # not set here: `masquerading` marks a DNATed packet whose source is its new destination,
    # by the `hairpin-endpoints` set (see render_full).
    statements = {}
    for ep in reachable:
        update = ""
        if affinity:
            out.sets[AFFINITY_PREFIX + bases[ep.address]] = affinity
            update = f"update @{AFFINITY_PREFIX}{bases[ep.address]} {{ {ip} saddr }} "
        statements[ep.address] = f"{update}meta l4proto {proto} dnat to {ep.address}"
        out.element(HAIRPIN_ENDPOINTS, f"{ep.ip} . {ep.ip} . {proto} . {ep.port}")
    for chain, endpoints, used in (
        (chains.cluster, route.cluster_endpoints, route.uses_cluster_policy_chain),
        (chains.local, route.local_endpoints, route.uses_local_policy_chain),
    ):
        if not used:
            continue
        head = masquerade if chains.internal == chain else ()
        out.chains[chain] = head + _endpoint_rules(ip, endpoints, bases, statements, affinity)
        if len(endpoints) >= SPREAD_VMAP_MIN_ENDPOINTS:
            # The vmap's targets: one chain per endpoint, only for such large Services.
            for ep in endpoints:
                out.chains[ENDPOINT_PREFIX + bases[ep.address]] = (statements[ep.address],)


def _endpoint_rules(
    ip: str,
    endpoints: tuple[RouteEndpoint, ...],
    bases: Mapping[str, str],
    statements: Mapping[str, str],
    affinity: int | None,
) -> tuple[str, ...]:
    """kube-proxy `writeServiceToEndpointRules`, with its endpoint chains inlined.

    Affinity checks first (a client in an endpoint's set goes to that endpoint again, and its
    timer is refreshed), then an even spread. kube-proxy spreads with one `numgen random mod N
    vmap { 0 : goto endpoint-…, … }`, and gives every endpoint a chain of its own. Both cost a
    one-endpoint change at 10k Services: nft 1.0.6 dumps every chain of the namespace before
    each transaction that adds a rule or an element, and the commit walks the whole jump graph,
    so an endpoint chain per endpoint made 40,000 chains out of 10,000 Services × 3. Each vmap
    rule also holds an anonymous map, and the kernel finds a new anonymous set by walking the
    whole transaction (and names it by walking every set of the table), so a full sync of
    10,000 Services spent 86 s in the kernel (nft 1.0.6, Linux 6.18) against 5 s without them.

    Below `SPREAD_VMAP_MIN_ENDPOINTS` the spread is therefore a ladder of DNAT rules in the
    service chain itself, iptables mode's probabilities in nft: rule i of N DNATs to endpoint i
    when `numgen random mod (N - i)` is 0, probability 1/(N - i), so each endpoint gets 1/N;
    the last rule is unconditional (one endpoint: a plain DNAT). Larger endpoint lists keep
    the vmap and the endpoint chains it jumps to, where one lookup beats N - 1 rules per new
    connection and such Services are few.
    """
    rules = []
    if affinity:
        for ep in endpoints:
            base = bases[ep.address]
            rules.append(f"{ip} saddr @{AFFINITY_PREFIX}{base} {statements[ep.address]}")
    n = len(endpoints)
    if n >= SPREAD_VMAP_MIN_ENDPOINTS:
        spread = ", ".join(
            f"{i} : goto {ENDPOINT_PREFIX}{bases[ep.address]}" for i, ep in enumerate(endpoints)
        )
        rules.append(f"numgen random mod {n} vmap {{ {spread} }}")
        return tuple(rules)
    for i, ep in enumerate(endpoints):
        dnat = statements[ep.address]
        rules.append(f"numgen random mod {n - i} == 0 {dnat}" if i < n - 1 else dnat)
    return tuple(rules)


# --- the result --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendering:
    """One `nft -f` transaction and the state the next partial render starts from."""

    text: str
    partial: bool
    config: NftablesConfig
    deleted_chains: tuple[str, ...]  # per-service chains this transaction deletes
    stale_chains: tuple[str, ...]  # flushed here, deleted by the next render (deferred)
    deleted_sets: tuple[str, ...]  # affinity sets this transaction deletes
    chains_written: int  # per-service chains created or rewritten (the sync metrics)
    rules_written: int  # `add rule` commands
    elements_written: int  # element adds and deletes
    _state: _State = field(repr=False, compare=False)

    @property
    def services(self) -> frozenset[ServiceKey]:
        """The Services with at least one route in this family."""
        return frozenset(self._state.services)

    @property
    def active_chains(self) -> frozenset[str]:
        """The per-service chains the rules now use."""
        return frozenset(c for s in self._state.services.values() for c in s.chains)

    @property
    def objects(self) -> TableObjects:
        """What the table holds once this transaction is applied: `existing` for render_full."""
        sets = {n: t for s in self._state.services.values() for n, t in s.sets.items()}
        stale = self._state.stale_chains
        return TableObjects(self.active_chains | stale, sets, stale)

    def elements(self) -> dict[str, dict[str, str]]:
        """map or set → key → what follows the key (" : goto …"), as the table now holds them."""
        out: dict[str, dict[str, str]] = {
            name: {} for name in (CLUSTER_IPS, HAIRPIN_ENDPOINTS, *_MAP_NAMES)
        }
        for (container, key), claims in self._state.claims.items():
            out[container][key] = claims[0][1]
        return out

    def chain_rules(self) -> dict[str, tuple[str, ...]]:
        """Per-service chain → its rules, as the table now holds them."""
        return {c: r for s in self._state.services.values() for c, r in s.chains.items()}


def _state_of(rendering: Rendering) -> _State:
    """The state `rendering` carries for the next render: the functions of this module build and
    read it (a frozen dataclass has no methods to do it), no other module does."""
    return rendering._state  # noqa: SLF001 (this module's own class, above)


def release(rendering: Rendering) -> None:
    """Empties `rendering`'s state, one Service and one element at a time, for its owner that
    is about to drop it (it is unusable afterwards).

    Why: at 5,000 Services dropping the state whole frees it in one cascade of deallocations,
    11–14 ms during which no other thread gets the GIL (no switch interval interrupts a
    cascade: the node DNS answers nothing meanwhile); emptied entry by entry, the interpreter
    can hand the GIL over between entries. A later render never shares these dicts: a partial
    one copies them, a full one builds its own.
    """
    state = _state_of(rendering)
    for entries in (state.services, state.claims):
        if isinstance(entries, dict):
            while entries:
                entries.popitem()


_MAP_NAMES = tuple(name for name, _, _ in _MAPS)


class _Script:
    """The transaction being written, with the counts Rendering reports."""

    def __init__(self, config: NftablesConfig) -> None:
        self.table = config.table
        self.lines: list[str] = []
        self.rules = 0
        self.elements = 0

    def add(self, line: str) -> None:
        self.lines.append(line)

    def chain(self, verb: str, name: str) -> None:
        self.lines.append(f"{verb} chain {self.table} {name}")

    def rule(self, chain: str, rule: str) -> None:
        self.lines.append(f"add rule {self.table} {chain} {rule}")
        self.rules += 1

    def element(self, verb: str, container: str, key: str, suffix: str = "") -> None:
        # One syntax for sets and maps: `add element TABLE NAME { key[ : value] }`.
        self.lines.append(f"{verb} element {self.table} {container} {{ {key}{suffix} }}")
        self.elements += 1

    def elements_of(self, verb: str, container: str, elements: Sequence[str]) -> None:
        """Several elements (each "key[ : value]") of one set or map in one command."""
        self.lines.append(f"{verb} element {self.table} {container} {{ {', '.join(elements)} }}")
        self.elements += len(elements)

    def text(self) -> str:
        return "\n".join([*self.lines, ""])


def _set_spec(config: NftablesConfig, timeout: int) -> str:
    # "dynamic" as kube-proxy sets it: without it some kernels add it later and the next
    # `add set` fails because the flags look changed.
    return f"{{ type {config.addr_type} ; flags dynamic,timeout ; timeout {timeout}s ; }}"


def _select(routes: Iterable[ServicePortRoute], config: NftablesConfig) -> list[ServicePortRoute]:
    return sorted((r for r in routes if r.family == config.family), key=route_sort_key)


def _group(routes: list[ServicePortRoute]) -> dict[ServiceKey, list[ServicePortRoute]]:
    grouped: dict[ServiceKey, list[ServicePortRoute]] = {}
    for route in routes:
        grouped.setdefault(route.service, []).append(route)
    return grouped


def _write_service(
    script: _Script,
    config: NftablesConfig,
    rules: _ServiceRules,
    new_chains: Collection[str],
    flush_chains: Collection[str],
    write_chains: Collection[str],
    delete_sets: Collection[str],
    add_sets: Collection[str],
) -> None:
    """A Service's block: chains created and flushed, sets re-done, then the rules.

    The order makes every reference valid when it is made, and frees every set before its
    `delete set`: the flushed chains are the only ones that named it.
    """
    for name in new_chains:
        script.chain("add", name)
    for name in flush_chains:
        script.chain("flush", name)
    for name in delete_sets:
        script.add(f"delete set {config.table} {name}")
    for name in add_sets:
        script.add(f"add set {config.table} {name} {_set_spec(config, rules.sets[name])}")
    for name in write_chains:
        for rule in rules.chains[name]:
            script.rule(name, rule)


def render_full(
    routes: Iterable[ServicePortRoute],
    config: NftablesConfig,
    existing: TableObjects | None = None,
) -> Rendering:
    """The whole table for `config.family`, in one transaction.

    `existing` is what the table may hold now (`previous.objects`, or `table_objects` of a
    listing after a restart): its per-service chains and affinity sets that are no longer used
    are deleted (or, with `defer_chain_deletes`, chains are left flushed for the next render).
    Deleting is done with `add` then `delete`, so an object someone else removed cannot fail the
    transaction.
    """
    existing = existing or TableObjects()
    s = _Script(config)
    s.add(f'add table {config.table} {{ comment "rules for kdns" ; }}')
    # Every rule of every chain goes; chains, sets and map elements stay until handled below.
    s.add(f"flush table {config.table}")

    selected = _select(routes, config)
    services = {key: _service_rules(rs, config) for key, rs in _group(selected).items()}
    wanted_sets = {n: t for r in services.values() for n, t in r.sets.items()}
    deleted_sets = _write_stale_sets(s, config, existing.sets, wanted_sets)
    _write_base_chains(s, config)
    _write_dispatch(s, config)
    claims, chains_written = _write_services(s, config, services)

    # Stale per-service chains: `flush table` emptied them and the maps no longer name them.
    active = {c for r in services.values() for c in r.chains}
    stale = sorted(existing.chains - active)
    deleted, deferred = _split_stale(config, stale, existing.flushed_chains)
    for name in deleted:
        s.chain("add", name)
        s.chain("delete", name)

    state = _State(
        services=services,
        claims=claims,
        stale_chains=frozenset(deferred),
    )
    return Rendering(
        text=s.text(),
        partial=False,
        config=config,
        deleted_chains=tuple(deleted),
        stale_chains=tuple(deferred),
        deleted_sets=tuple(deleted_sets),
        chains_written=chains_written,
        rules_written=s.rules,
        elements_written=s.elements,
        _state=state,
    )


def _write_stale_sets(
    s: _Script, config: NftablesConfig, existing: Mapping[str, int], wanted: Mapping[str, int]
) -> list[str]:
    """Affinity sets that go, or whose timeout changed: nothing refers to them any more (the
    table was flushed). Returns those that go."""
    table = config.table
    deleted_sets = []
    for name, timeout in sorted(existing.items()):
        if wanted.get(name) != timeout:
            s.add(f"add set {table} {name} {_set_spec(config, timeout)}")
            s.add(f"delete set {table} {name}")
            if name not in wanted:
                deleted_sets.append(name)
    return deleted_sets


def _write_base_chains(s: _Script, config: NftablesConfig) -> None:
    """The base and fixed chains, the jumps between them, masquerading and the reject
    helper."""
    ip = config.nft_family
    table = config.table
    mark = config.masquerade_mark
    # Base chains: add, delete, add again, so a changed priority cannot fail the transaction
    # (`add chain` cannot change a base chain's hook or priority).
    for name, kind, hook, priority in BASE_CHAINS:
        s.chain("add", name)
        s.chain("delete", name)
        s.add(f"add chain {table} {name} {{ type {kind} hook {hook} priority {priority} ; }}")
    for name in FIXED_CHAINS:
        s.chain("add", name)
    s.add(
        f"add chain {table} {REJECT_CHAIN}"
        ' { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }'
    )
    for src, match, dst in JUMP_RULES:
        s.rule(src, f"{match} jump {dst}" if match else f"jump {dst}")
    s.rule(MARK_MASQ, f"mark set mark or {mark}")
    # Declared before the rule naming it; refilled with the Services below.
    s.add(
        f"add set {table} {HAIRPIN_ENDPOINTS} {{ type {config.addr_type} . {config.addr_type}"
        ' . inet_proto . inet_service ; comment "Endpoints, for hairpin masquerade" ; }'
    )
    s.add(f"flush set {table} {HAIRPIN_ENDPOINTS}")
    # Hairpin: a pod reaching itself through a Service must be masqueraded, or it would answer
    # itself from its own address to a connection it made to the VIP. kube-proxy marks in the
    # endpoint chain when the source is that endpoint; here, after DNAT, a connection we DNATed
    # whose source is its new destination (an endpoint ip:port we DNAT to) is the same packet.
    s.rule(
        MASQUERADING,
        f"ct status dnat {ip} saddr . {ip} daddr . meta l4proto . th dport @{HAIRPIN_ENDPOINTS}"
        f' mark set mark or {mark} comment "hairpin"',
    )
    # Clear the mark so a packet that traverses the stack again is not masqueraded twice.
    s.rule(MASQUERADING, f"mark and {mark} == 0 return")
    s.rule(MASQUERADING, f"mark set mark xor {mark}")
    s.rule(MASQUERADING, "masquerade fully-random")
    s.rule(REJECT_CHAIN, "reject")


def _write_dispatch(s: _Script, config: NftablesConfig) -> None:
    """The dispatch sets and maps, declared and emptied (the Services refill them), and the
    rules that look packets up in them."""
    table = config.table
    # Sets and maps: declared (a no-op when they exist) and emptied; refilled below.
    s.add(
        f"add set {table} {CLUSTER_IPS}"
        f' {{ type {config.addr_type} ; comment "Active ClusterIPs" ; }}'
    )
    s.add(f"flush set {table} {CLUSTER_IPS}")
    s.add(
        f"add set {table} {NODEPORT_IPS}"
        f' {{ type {config.addr_type} ; comment "IPs that accept NodePort traffic" ; }}'
    )
    nodeport_ips = [a for a in config.nodeport_ips if not ipaddress.ip_address(a).is_loopback]
    if not config.nodeport_ips:
        s.add(f"delete set {table} {NODEPORT_IPS}")  # add + delete: gone, whether it was or not
    else:
        s.add(f"flush set {table} {NODEPORT_IPS}")
        for addr in nodeport_ips:  # no localhost NodePorts (CVE-2020-8558)
            s.element("add", NODEPORT_IPS, addr)
    for name, with_addr, comment in _MAPS:
        key = (
            f"{config.addr_type} . inet_proto . inet_service"
            if with_addr
            else ("inet_proto . inet_service")
        )
        s.add(f'add map {table} {name} {{ type {key} : verdict ; comment "{comment}" ; }}')
        s.add(f"flush map {table} {name}")
    _write_lookups(s, config)


def _write_lookups(s: _Script, config: NftablesConfig) -> None:
    """The rules of the fixed chains that look packets up in the dispatch sets and maps."""
    ip = config.nft_family
    s.rule(
        CLUSTER_IPS_CHECK,
        f'{ip} daddr @{CLUSTER_IPS} reject comment "Reject traffic to invalid ports of ClusterIPs"',
    )
    if config.service_cidrs:
        s.rule(
            CLUSTER_IPS_CHECK,
            f"{ip} daddr {{ {', '.join(config.service_cidrs)} }} drop"
            ' comment "Drop traffic to unallocated ClusterIPs"',
        )
    tuple_match = f"{ip} daddr . meta l4proto . th dport"
    no_localhost = "ip daddr != 127.0.0.0/8" if config.family == 4 else "ip6 daddr != ::1"
    s.rule(SERVICES, f"{tuple_match} vmap @{SERVICE_IPS}")
    if not config.nodeport_ips:
        s.rule(
            SERVICES,
            f"fib daddr type local {no_localhost}"
            f" meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        )
        s.rule(
            NODEPORT_ENDPOINTS_CHECK,
            f"{no_localhost} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
        )
    else:
        s.rule(
            SERVICES,
            f"{ip} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        )
        s.rule(
            NODEPORT_ENDPOINTS_CHECK,
            f"{ip} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
        )
    s.rule(SERVICE_ENDPOINTS_CHECK, f"{tuple_match} vmap @{NO_ENDPOINT_SERVICES}")
    s.rule(FIREWALL_CHECK, f"{tuple_match} vmap @{FIREWALL_IPS}")


def _write_services(
    s: _Script, config: NftablesConfig, services: Mapping[ServiceKey, _ServiceRules]
) -> tuple[dict[tuple[str, str], tuple[tuple[ServiceKey, str], ...]], int]:
    """Per Service: its chains, sets and rules; then, per map and set, the elements the
    Services own in one `add element` (a key two Services claim belongs to the one that sorts
    first). Returns the claims and the chains written.

    One command per map rather than per element, because nft 1.0.6 spends ~1.7 KiB on every
    command of a transaction: 50,000 one-element commands at 10k Services raised the full
    sync's peak by ~65 MiB (docs/benchmarks.md, Proxy › Memory)."""
    claims: dict[tuple[str, str], list[tuple[ServiceKey, str]]] = {}
    for key, rules in services.items():
        for container, element_key, suffix in rules.elements:
            claims.setdefault((container, element_key), []).append((key, suffix))
    owned: dict[str, list[str]] = {}
    chains_written = 0
    for key, rules in services.items():
        _write_service(
            s,
            config,
            rules,
            new_chains=rules.chains,
            flush_chains=(),
            write_chains=rules.chains,
            delete_sets=(),
            add_sets=rules.sets,
        )
        chains_written += len(rules.chains)
        for container, element_key, suffix in rules.elements:
            if claims[(container, element_key)][0][0] == key:
                owned.setdefault(container, []).append(element_key + suffix)
    for container, elements in owned.items():
        s.elements_of("add", container, elements)
    return {k: tuple(v) for k, v in claims.items()}, chains_written


def _split_stale(
    config: NftablesConfig, stale: list[str], flushed: Collection[str]
) -> tuple[list[str], list[str]]:
    """(delete now, leave flushed for later): with deferral, only chains an earlier
    transaction already flushed are deleted (kube-proxy's staleChains delay)."""
    if not config.defer_chain_deletes:
        return stale, []
    return [c for c in stale if c in flushed], [c for c in stale if c not in flushed]


def render_partial(
    routes: Iterable[ServicePortRoute],
    changed: Collection[ServiceKey],
    previous: Rendering,
    config: NftablesConfig,
) -> Rendering:
    """Only what changed since `previous`, for the Services in `changed`.

    `changed` holds the keys of every Service whose Service object or endpoints changed since
    `previous` (deleted ones included); `routes` must hold every current route of those
    Services (other routes are ignored, so the caller may pass only theirs). `previous` must be
    the Rendering last applied with success, for the same config; after a failed apply, render
    in full. An empty `text` means nothing changed: there is nothing to apply.
    """
    if previous.config != config:
        raise ValueError("the config changed since the previous render: render in full")
    changed = set(changed)
    new_routes = _group(_select((r for r in routes if r.service in changed), config))
    old_state = _state_of(previous)
    s = _Script(config)
    acc = _PartialChanges(
        services=dict(old_state.services),
        claims=dict(old_state.claims),
        pending=set(old_state.stale_chains),
    )
    empty = _ServiceRules((), {}, {})
    for key in sorted(changed):
        old = old_state.services.get(key, empty)
        new = _service_rules(new_routes[key], config) if key in new_routes else empty
        if key in new_routes:
            acc.services[key] = new
        else:
            acc.services.pop(key, None)
        _write_changed_service(s, config, acc, old, new)
        _refile_claims(acc, key, old, new)
    _write_element_changes(s, old_state.claims, acc.claims, acc.touched)
    deleted, deferred = _delete_stale_chains(s, config, acc.pending, acc.stale)
    state = _State(services=acc.services, claims=acc.claims, stale_chains=frozenset(deferred))
    return Rendering(
        text=s.text(),
        partial=True,
        config=config,
        deleted_chains=tuple(deleted),
        stale_chains=tuple(deferred),
        deleted_sets=tuple(sorted(acc.deleted_sets)),
        chains_written=acc.chains_written,
        rules_written=s.rules,
        elements_written=s.elements,
        _state=state,
    )


@dataclass(slots=True)
class _PartialChanges:
    """What `render_partial` gathers over the changed Services, starting from `previous`."""

    services: dict[ServiceKey, _ServiceRules]
    claims: dict[tuple[str, str], tuple[tuple[ServiceKey, str], ...]]
    pending: set[str]  # flushed by `previous`, still to delete
    stale: list[str] = field(default_factory=list)  # chains flushed now, no longer used
    deleted_sets: list[str] = field(default_factory=list)
    # Element keys whose owner or value may change, in first-touched order.
    touched: dict[tuple[str, str], None] = field(default_factory=dict)
    chains_written: int = 0


def _write_changed_service(
    s: _Script,
    config: NftablesConfig,
    acc: _PartialChanges,
    old: _ServiceRules,
    new: _ServiceRules,
) -> None:
    """One changed Service's block: its new chains added, changed ones flushed and rewritten,
    gone ones flushed (deleted at the end), its affinity sets added, re-timed or deleted."""
    # A set whose timeout changed is replaced; every chain naming it is rewritten first.
    retimed = [n for n, t in new.sets.items() if n in old.sets and old.sets[n] != t]
    gone_sets = [n for n in old.sets if n not in new.sets]
    added = [c for c in new.chains if c not in old.chains]
    rewritten = [
        c for c in new.chains if c in old.chains and (retimed or old.chains[c] != new.chains[c])
    ]
    gone = [c for c in old.chains if c not in new.chains]
    acc.pending.difference_update(added)  # a deferred chain in use again is simply refilled
    _write_service(
        s,
        config,
        new,
        new_chains=added,
        flush_chains=rewritten + gone,
        write_chains=added + rewritten,
        delete_sets=gone_sets + retimed,
        add_sets=[n for n in new.sets if n not in old.sets or n in retimed],
    )
    acc.chains_written += len(added) + len(rewritten)
    acc.stale.extend(gone)
    acc.deleted_sets.extend(gone_sets)


def _refile_claims(
    acc: _PartialChanges, key: ServiceKey, old: _ServiceRules, new: _ServiceRules
) -> None:
    """Re-file one Service's claims: drop the old ones, add the new ones in order (the
    Service that sorts first owns a key), and note every key it touched."""
    claims, touched = acc.claims, acc.touched
    for container, element_key, _ in old.elements:
        k = (container, element_key)
        touched[k] = None
        rest = tuple(c for c in claims.get(k, ()) if c[0] != key)
        if rest:
            claims[k] = rest
        else:
            claims.pop(k, None)
    for container, element_key, suffix in new.elements:
        k = (container, element_key)
        touched[k] = None
        claims[k] = tuple(sorted((*claims.get(k, ()), (key, suffix))))


def _write_element_changes(
    s: _Script,
    before: Mapping[tuple[str, str], tuple[tuple[ServiceKey, str], ...]],
    after: Mapping[tuple[str, str], tuple[tuple[ServiceKey, str], ...]],
    touched: Iterable[tuple[str, str]],
) -> None:
    """The map and set elements whose owner's value changed between the claims `before` and
    `after`."""
    # Elements: delete what went or changed value, then add what came or changed value.
    adds: list[tuple[str, str, str]] = []
    for k in touched:
        old_claims = before.get(k)
        new_claims = after.get(k)
        was = old_claims[0][1] if old_claims else None
        now = new_claims[0][1] if new_claims else None
        if was == now:
            continue
        if was is not None:
            s.element("delete", k[0], k[1])
        if now is not None:
            adds.append((k[0], k[1], now))
    for container, element_key, suffix in adds:
        s.element("add", container, element_key, suffix)


def _delete_stale_chains(
    s: _Script, config: NftablesConfig, pending: Collection[str], stale: list[str]
) -> tuple[list[str], list[str]]:
    """Deletes the chains deferred by the previous render and, unless deferred in turn, those
    this one flushed. Returns (deleted, deferred)."""
    # Stale chains: flushed above, and no element names them any more.
    stale.sort()
    deleted, deferred = _split_stale(config, stale, ())
    deleted = sorted(pending) + deleted  # deferred by `previous`: now deletable
    for name in deleted:
        s.chain("delete", name)
    return deleted, deferred


def render_cleanup(families: Iterable[int] = (4, 6)) -> str:
    """Removes everything kdns installed in nftables (kube-proxy `CleanupLeftovers`): its
    tables. `add` first, so a table that is not there cannot fail the transaction."""
    lines = []
    for family in families:
        table = f"{'ip' if family == 4 else 'ip6'} {TABLE}"
        lines += [f"add table {table}", f"delete table {table}"]
    return "\n".join([*lines, ""])

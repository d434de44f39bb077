"""Model → service routes: per service port and IP family, the VIPs, node port, backends,
affinity and traffic policies that every proxy mode programs.

Contract:
- `build_routes(services, endpoints, node_name)` takes the store's `services` and merged
  `endpoints` dicts and returns one `ServicePortRoute` per (service, port, IP family), sorted.
  `service_routes` does the same for one Service, so a caller can rebuild only what changed.
- A Service is proxied in each IP family it has a ClusterIP of, like kube-proxy's single-stack
  proxiers under its MetaProxier: a single-stack Service gives one route per port, a dual-stack
  one gives two. ExternalName and headless Services (no ClusterIP) give none.
- The endpoint lists are those kube-proxy would use: `endpoints` is every endpoint of the port
  (EndpointSliceCache: matched by port name and protocol, one per "ip:port", sorted by that
  string), and `cluster_endpoints`, `local_endpoints`, `has_endpoints` follow
  `proxy.CategorizeEndpoints` (pkg/proxy/topology.go, 1.33+) exactly, topology hints included:
  `zone` is this node's `topology.kubernetes.io/zone` label ("" when unknown), and the
  PreferSameTrafficDistribution gate is taken as on (its default since 1.34).
- LoadBalancer ingress IPs whose `ipMode` is `Proxy` are left out of `load_balancer_ips`, as
  kube-proxy leaves them out (`IsVIPMode`): nothing is programmed for them, so traffic to them
  goes out to the load balancer itself.
- The kube-proxy chain-name hashes (`port_proto_hash`, `service_port_chain_name`,
  `service_port_endpoint_chain_name`), the jump from a built-in chain (`JumpRule`) and which
  per-service chain a route's traffic takes (`RouteChains`) live here so every renderer names,
  hooks and routes things alike.
- `service_cidr_ranges` is the union of every ServiceCIDR's `spec.cidrs` (kube-proxy's
  ServiceCIDRConfig), overlaps merged so an nft interval set accepts them.
- Pure: no I/O, no clock. The "only the first address of an endpoint" rule is not modelled
  (the model gives every address of an endpoint).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from kdns.model import Endpoint, Service, ServiceCIDR, ServicePort

ServiceKey = tuple[str, str]

# Chain-name prefixes, pkg/proxy/iptables/proxier.go (servicePortPolicyClusterChainNamePrefix,
# …). KUBE-SVC: Cluster-policy endpoints; KUBE-SVL: Local-policy endpoints; KUBE-EXT: entry for
# NodePort / externalIP / LB traffic; KUBE-FW: loadBalancerSourceRanges; KUBE-SEP: one endpoint.
SVC_PREFIX = "KUBE-SVC-"
SVL_PREFIX = "KUBE-SVL-"
EXT_PREFIX = "KUBE-EXT-"
FW_PREFIX = "KUBE-FW-"
SEP_PREFIX = "KUBE-SEP-"
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, SEP_PREFIX, FW_PREFIX, EXT_PREFIX)


@functools.lru_cache(maxsize=1 << 17)
def _hash16(text: str) -> str:
    # The first 16 base32 characters encode exactly the first 10 bytes (base32 works in 5-byte
    # groups), so encoding only those gives kube-proxy's `encoded[:16]` at a fifth of the cost.
    # Cached: every sync names the same chains again.
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode("ascii")


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """kube-proxy `portProtoHash`: base32(sha256(servicePortName + protocol))[:16].

    `protocol` is lower-cased here, as kube-proxy lower-cases it before hashing, so
    ("ns1/svc1:p80", "TCP") gives XPGD46QRK7WJZT7O.
    """
    return _hash16(service_port_name + protocol.lower())


def service_port_chain_name(prefix: str, service_port_name: str, protocol: str) -> str:
    """`servicePortPolicyClusterChain` and friends: prefix + 16 hash characters (≤ 28 chars)."""
    return prefix + port_proto_hash(service_port_name, protocol)


def service_port_endpoint_chain_name(service_port_name: str, protocol: str, endpoint: str) -> str:
    """kube-proxy `servicePortEndpointChainName`: KUBE-SEP- + hash(name + protocol + "ip:port")."""
    return SEP_PREFIX + _hash16(service_port_name + protocol.lower() + endpoint)


def is_service_chain(chain: str) -> bool:
    """kube-proxy `isServiceChainName`: a per-service chain, deleted when no longer used."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


def family_of(ip: str) -> int:
    """4 or 6, for an address or CIDR the model has already validated."""
    return 6 if ":" in ip else 4


def join_host_port(ip: str, port: int) -> str:
    """Go `net.JoinHostPort`: "10.0.0.1:80", "[fd00::1]:80"."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class JumpRule:
    """A jump from a built-in chain into one of kube-proxy's chains, kept at the top with
    `iptables -I` (iptables and IPVS mode each list theirs: `iptablesJumpChains`)."""

    table: str
    chain: str  # the built-in chain holding the jump
    target: str  # our chain
    comment: str
    extra: tuple[str, ...] = ()  # matches before the comment, e.g. conntrack state NEW

    @property
    def args(self) -> tuple[str, ...]:
        """The rule as iptables argv after `-t TABLE -I/-C/-D CHAIN`."""
        return (*self.extra, "-m", "comment", "--comment", self.comment, "-j", self.target)


@dataclass(frozen=True, slots=True)
class RouteEndpoint:
    """One backend of one service port: kube-proxy's `BaseEndpointInfo`."""

    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    local: bool = False  # on this node (the EndpointSlice's nodeName equals ours)
    node_name: str = ""
    zone_hints: tuple[str, ...] = ()  # hints.forZones: the zones that should use it
    node_hints: tuple[str, ...] = ()  # hints.forNodes: the nodes that should use it
    # "ip:port" as kube-proxy writes it (`Endpoint.String()`): the DNAT target, the hash input.
    # Worked out once: every render reads it several times per endpoint.
    address: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", join_host_port(self.ip, self.port))


@dataclass(frozen=True, slots=True)
class ServicePortRoute:
    """One service port in one IP family: kube-proxy's `BaseServicePortInfo` plus its endpoints."""

    service: ServiceKey
    port_name: str  # "" for the unnamed port of a single-port Service
    protocol: str  # TCP | UDP | SCTP
    family: int  # 4 or 6
    cluster_ip: str
    port: int
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    # CIDRs of this family; () means "from anywhere" (also when a range is 0.0.0.0/0 or ::/0).
    load_balancer_source_ranges: tuple[str, ...] = ()
    affinity_timeout: int | None = None  # seconds, when sessionAffinity is ClientIP
    external_policy_local: bool = False  # externalTrafficPolicy Local on a NodePort/LB Service
    internal_policy_local: bool = False  # internalTrafficPolicy Local
    health_check_node_port: int | None = None  # LB Services with externalTrafficPolicy Local
    # Every endpoint of this port and family, one per "ip:port", sorted by that string.
    endpoints: tuple[RouteEndpoint, ...] = ()
    # CategorizeEndpoints: usable for Cluster policy (() when the port never uses Cluster policy).
    cluster_endpoints: tuple[RouteEndpoint, ...] = ()
    # CategorizeEndpoints: usable for Local policy (() when the port never uses Local policy).
    local_endpoints: tuple[RouteEndpoint, ...] = ()
    # A usable endpoint exists somewhere in the cluster: without one, traffic is REJECTed; with
    # one but none local under a Local policy, it is DROPped (see has_*_endpoints).
    has_endpoints: bool = False

    @property
    def name(self) -> str:
        """kube-proxy `ServicePortName.String()`: "ns/name:port", or "ns/name" when unnamed."""
        namespace, name = self.service
        return f"{namespace}/{name}:{self.port_name}" if self.port_name else f"{namespace}/{name}"

    @property
    def externally_accessible(self) -> bool:
        """`ExternallyAccessible`: reachable by NodePort, an LB ingress IP or an externalIP."""
        return bool(self.node_port or self.load_balancer_ips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        """`UsesClusterEndpoints`: Cluster internal policy, or any external access (the Local
        external policy still needs Cluster endpoints for its short-circuit of pod traffic)."""
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        """`UsesLocalEndpoints`."""
        return self.internal_policy_local or (
            self.external_policy_local and self.externally_accessible
        )

    @property
    def has_internal_endpoints(self) -> bool:
        """syncProxyRules `hasInternalEndpoints`: ClusterIP traffic has somewhere to go.

        False with has_endpoints True means internalTrafficPolicy Local and no local endpoint:
        ClusterIP traffic is dropped, not rejected.
        """
        return self.has_endpoints and (not self.internal_policy_local or bool(self.local_endpoints))

    @property
    def has_external_endpoints(self) -> bool:
        """syncProxyRules `hasExternalEndpoints`: external traffic has somewhere to go."""
        return self.has_endpoints and (not self.external_policy_local or bool(self.local_endpoints))

    @property
    def uses_cluster_policy_chain(self) -> bool:
        """syncProxyRules `usesClusterPolicyChain`: the Cluster-policy chain exists."""
        return bool(self.cluster_endpoints) and self.uses_cluster_endpoints

    @property
    def uses_local_policy_chain(self) -> bool:
        """syncProxyRules `usesLocalPolicyChain`: the Local-policy chain exists."""
        return bool(self.local_endpoints) and self.uses_local_endpoints

    @property
    def uses_external_traffic_chain(self) -> bool:
        """syncProxyRules `usesExternalTrafficChain`: even with no endpoint for external
        traffic, the external chain carries the short-circuit rules for traffic from pods and
        from the node itself."""
        return self.has_endpoints and self.externally_accessible

    @property
    def internal_traffic_filter(self) -> str | None:
        """syncProxyRules `internalTrafficFilterTarget`: what ClusterIP traffic meets when it
        has nowhere to go. "reject" when the Service has no usable endpoint at all (connection
        refused at once, #17359); "drop" when only the Local internal policy finds none (the
        client times out); None when it has endpoints."""
        if not self.has_endpoints:
            return "reject"
        return None if self.has_internal_endpoints else "drop"

    @property
    def external_traffic_filter(self) -> str | None:
        """`externalTrafficFilterTarget`: the same for NodePort, externalIP and LB traffic
        ("drop": externalTrafficPolicy Local and no local endpoint)."""
        if not self.has_endpoints:
            return "reject"
        return None if self.has_external_endpoints else "drop"

    @property
    def has_source_ranges(self) -> bool:
        """LB ingress IPs filtered by loadBalancerSourceRanges."""
        return bool(self.load_balancer_ips) and bool(self.load_balancer_source_ranges)

    @property
    def reachable_endpoints(self) -> tuple[RouteEndpoint, ...]:
        """CategorizeEndpoints `allReachableEndpoints`: the union of the Cluster and Local
        lists (the endpoints that get a chain of their own), sorted by address."""
        if not self.local_endpoints:
            return self.cluster_endpoints
        if not self.cluster_endpoints:
            return self.local_endpoints
        merged = {ep.address: ep for ep in self.cluster_endpoints}
        for ep in self.local_endpoints:
            merged[ep.address] = ep
        return tuple(merged[a] for a in sorted(merged))


@dataclass(slots=True)
class RouteChains:
    """One service port's per-service chains, named as a renderer names them, and which of
    them its traffic takes: the preamble of kube-proxy's syncProxyRules loop body, alike in
    the iptables and nftables modes.

    Not frozen: a render builds one per route (10,000s), and a frozen dataclass's __init__
    costs four times as much; nothing keeps one past the route's render."""

    route: ServicePortRoute
    cluster: str  # the Cluster-policy endpoints (KUBE-SVC-, service-)
    local: str  # the Local-policy endpoints (KUBE-SVL-, local-)
    external: str  # entry for NodePort, externalIP and LB traffic (KUBE-EXT-, external-)
    firewall: str  # loadBalancerSourceRanges (KUBE-FW-, firewall-)

    @property
    def internal(self) -> str:
        """Where ClusterIP traffic goes: the chain of the internal policy."""
        return self.local if self.route.internal_policy_local else self.cluster

    @property
    def external_policy(self) -> str:
        """Where the external chain ends: the chain of the external policy."""
        return self.local if self.route.external_policy_local else self.cluster


# What topology_mode returns: which hints pick the Cluster-policy endpoints ("" = none).
PREFER_SAME_NODE = "PreferSameNode"
PREFER_SAME_ZONE = "PreferSameZone"


def topology_mode(endpoints: Iterable[RouteEndpoint], node_name: str, zone: str) -> str:
    """kube-proxy `topologyModeFromHints`: which hints this node follows for one service port.

    Only ready endpoints count. Node hints win when every ready endpoint has some and at least
    one names this node; else zone hints, when every ready endpoint has some and at least one
    names this node's zone; else none. A partly hinted port ignores its hints on purpose
    (KEP-2433: the EndpointSlice controller may be mid-way through writing them), and so does
    a node whose zone or node hints match no endpoint: it would have nowhere to send traffic.
    """
    all_node_hints = all_zone_hints = True
    node_match = zone_match = False
    for ep in endpoints:
        if not ep.ready:
            continue
        if not ep.node_hints:
            all_node_hints = False
        elif node_name in ep.node_hints:
            node_match = True
        if not ep.zone_hints:
            all_zone_hints = False
        elif zone in ep.zone_hints:
            zone_match = True
    # node_match/zone_match imply a ready endpoint, and names are never "": an unknown node
    # name or zone matches nothing.
    if all_node_hints and node_match and node_name:
        return PREFER_SAME_NODE
    if all_zone_hints and zone_match and zone:
        return PREFER_SAME_ZONE
    return ""


def _for_topology(ep: RouteEndpoint, mode: str, node_name: str, zone: str) -> bool:
    """kube-proxy `availableForTopology`."""
    if mode == PREFER_SAME_NODE:
        return node_name in ep.node_hints
    if mode == PREFER_SAME_ZONE:
        return zone in ep.zone_hints
    return True


def categorize_endpoints(
    endpoints: Iterable[RouteEndpoint],
    *,
    uses_cluster: bool,
    uses_local: bool,
    node_name: str = "",
    zone: str = "",
) -> tuple[tuple[RouteEndpoint, ...], tuple[RouteEndpoint, ...], bool]:
    """kube-proxy `CategorizeEndpoints` (pkg/proxy/topology.go, 1.33+).

    Returns (cluster endpoints, local endpoints, has any endpoints). Usable means ready; when
    no endpoint is ready, the serving-and-terminating ones (KEP-1669), decided separately for
    the Cluster set and the Local set. Not-serving endpoints are never used. Topology hints
    (`topology_mode`) narrow the ready Cluster endpoints only: the Local set is already this
    node's, and the terminating fallback ignores hints.
    """
    endpoints = tuple(endpoints)
    cluster: tuple[RouteEndpoint, ...] = ()
    local: tuple[RouteEndpoint, ...] = ()
    has_any = False
    if uses_cluster:
        mode = topology_mode(endpoints, node_name, zone)
        cluster = tuple(
            ep for ep in endpoints if ep.ready and _for_topology(ep, mode, node_name, zone)
        )
        if not cluster:
            # No ready endpoint anywhere: fall back to terminating ones still serving.
            cluster = tuple(ep for ep in endpoints if ep.serving and ep.terminating)
        has_any = bool(cluster)
    if not uses_local:
        return cluster, local, has_any
    # The pre-scan: which kind of endpoint the Local policy uses, and whether any usable
    # endpoint exists anywhere (for a port that uses only Local policy).
    local_ready = local_serving_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            local_ready = local_ready or ep.local
        elif ep.serving and ep.terminating:
            has_any = True
            local_serving_terminating = local_serving_terminating or ep.local
    if local_ready:
        local = tuple(ep for ep in endpoints if ep.local and ep.ready)
    elif local_serving_terminating:
        local = tuple(ep for ep in endpoints if ep.local and ep.serving and ep.terminating)
    return cluster, local, has_any


def port_endpoints(
    port: ServicePort, family: int, endpoints: Iterable[Endpoint], node_name: str
) -> tuple[RouteEndpoint, ...]:
    """The endpoints of one service port in one family, as kube-proxy's EndpointSliceCache
    builds them (`endpointInfoByServicePort`, `addEndpoints`).

    An endpoint serves the port when its slice lists a port of the same name and protocol; the
    target port number comes from there. Duplicates of one "ip:port" (a slice rebalance) count
    once, the local copy winning; the result is sorted by "ip:port" (`byEndpoint`).
    """
    by_address: dict[str, RouteEndpoint] = {}
    for endpoint in endpoints:
        if family_of(endpoint.address) != family:
            continue
        for ep_port in endpoint.ports:
            if ep_port.name == port.name and ep_port.protocol == port.protocol:
                break
        else:
            continue
        local = bool(node_name) and endpoint.node_name == node_name
        route_ep = RouteEndpoint(
            ip=endpoint.address,
            port=ep_port.port,
            ready=endpoint.ready,
            serving=endpoint.serving,
            terminating=endpoint.terminating,
            local=local,
            node_name=endpoint.node_name,
            zone_hints=endpoint.zone_hints,
            node_hints=endpoint.node_hints,
        )
        if route_ep.address not in by_address or local:
            by_address[route_ep.address] = route_ep
    return tuple(by_address[a] for a in sorted(by_address))


def _is_zero_cidr(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def _family_addresses(
    service: Service, family: int
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(externalIPs, LB ingress IPs in VIP mode, LB source ranges) of `service` in `family`,
    as `service_routes` says."""
    ranges = tuple(r for r in service.load_balancer_source_ranges if family_of(r) == family)
    if any(_is_zero_cidr(r) for r in ranges):
        ranges = ()
    external_ips = tuple(ip for ip in service.external_ips if family_of(ip) == family)
    lb_ips = tuple(
        ip
        for ip in service.load_balancer_ips
        if family_of(ip) == family and ip not in service.load_balancer_proxy_ips
    )
    return external_ips, lb_ips, ranges


def _policies(service: Service) -> tuple[bool, bool, int | None, int | None]:
    """A Service's (external policy Local, internal policy Local, health-check node port,
    session affinity timeout), as kube-proxy's `newBaseServiceInfo` reads them: the external
    policy is Local only for NodePort and LoadBalancer Services
    (`apiservice.ExternalPolicyLocal`); the health-check node port only for LoadBalancer
    Services with that policy (`apiservice.NeedsHealthCheck`); the affinity timeout only
    with ClientIP affinity."""
    external_local = (
        service.type in ("NodePort", "LoadBalancer") and service.external_traffic_policy == "Local"
    )
    health_check = (
        service.health_check_node_port
        if service.type == "LoadBalancer" and external_local
        else None
    )
    affinity = service.affinity_timeout if service.session_affinity == "ClientIP" else None
    return external_local, service.internal_traffic_policy == "Local", health_check, affinity


def service_routes(
    service: Service, endpoints: Iterable[Endpoint], node_name: str, *, zone: str = ""
) -> tuple[ServicePortRoute, ...]:
    """The routes of one Service: one per port and per IP family of its ClusterIPs.

    `zone` is this node's zone, for the topology hints (see `categorize_endpoints`).
    Field by field this is kube-proxy's `newBaseServiceInfo`: externalIPs, LB ingress IPs and
    source ranges are filtered to the route's family, LB ingress IPs also to those in VIP mode
    (`IsVIPMode`: an `ipMode: Proxy` IP is the load balancer's, not a node shortcut); a
    zero-length source range means "allow any" and empties the list; policies: `_policies`.
    """
    if service.type == "ExternalName" or service.headless or not service.cluster_ips:
        return ()  # kube-proxy `ShouldSkipService`
    endpoints = tuple(endpoints)
    external_local, internal_local, health_check, affinity = _policies(service)
    routes = []
    for cluster_ip in service.cluster_ips:
        family = family_of(cluster_ip)
        external_ips, lb_ips, ranges = _family_addresses(service, family)
        for port in service.ports:
            route = ServicePortRoute(
                service=service.key,
                port_name=port.name,
                protocol=port.protocol,
                family=family,
                cluster_ip=cluster_ip,
                port=port.port,
                node_port=port.node_port or None,
                external_ips=external_ips,
                load_balancer_ips=lb_ips,
                load_balancer_source_ranges=ranges,
                affinity_timeout=affinity,
                external_policy_local=external_local,
                internal_policy_local=internal_local,
                health_check_node_port=health_check,
                endpoints=port_endpoints(port, family, endpoints, node_name),
            )
            cluster, local, has_any = categorize_endpoints(
                route.endpoints,
                uses_cluster=route.uses_cluster_endpoints,
                uses_local=route.uses_local_endpoints,
                node_name=node_name,
                zone=zone,
            )
            routes.append(
                replace(
                    route, cluster_endpoints=cluster, local_endpoints=local, has_endpoints=has_any
                )
            )
    return tuple(sorted(routes, key=route_sort_key))


def service_cidr_ranges(objects: Iterable[ServiceCIDR]) -> tuple[str, ...]:
    """Every ServiceCIDR's ranges together, IPv4 first: kube-proxy unions `spec.cidrs` of all
    objects (pkg/proxy/config ServiceCIDRConfig). Ranges that overlap (a new, wider
    ServiceCIDR while the old one drains) are merged: nft refuses overlapping intervals."""
    nets = [ipaddress.ip_network(c) for obj in objects for c in obj.cidrs]
    ranges: list[str] = []
    for version in (4, 6):
        same = [n for n in nets if n.version == version]
        ranges += [n.compressed for n in ipaddress.collapse_addresses(same)]
    return tuple(ranges)


def route_sort_key(route: ServicePortRoute) -> tuple[str, str, str, str, int]:
    """The order routes are rendered in: by Service, port name, protocol, family."""
    return (*route.service, route.port_name, route.protocol, route.family)


def build_routes(
    services: Mapping[ServiceKey, Service],
    endpoints: Mapping[ServiceKey, tuple[Endpoint, ...]],
    node_name: str,
    *,
    zone: str = "",
) -> tuple[ServicePortRoute, ...]:
    """Every route of the store's Services, sorted by `route_sort_key`."""
    routes: list[ServicePortRoute] = []
    for key in sorted(services):
        routes.extend(service_routes(services[key], endpoints.get(key, ()), node_name, zone=zone))
    return tuple(routes)


def check_family(
    value: ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv4Network
    | ipaddress.IPv6Network,
    family: int,
) -> None:
    """A renderer's config check: `value` belongs to the family (4 or 6) being rendered."""
    if value.version != family:
        raise ValueError(f"{value} is not an IPv{family} address")


def check_node_config(
    family: int,
    masquerade_bit: int,
    cluster_cidr: str | None,
    node_ip: str | None,
    nodeport_ips: tuple[str, ...],
) -> None:
    """The checks every per-family renderer config makes of its node settings."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    if not 0 <= masquerade_bit <= 31:
        raise ValueError(f"masquerade_bit {masquerade_bit} is out of range 0-31")
    if cluster_cidr is not None:
        check_family(ipaddress.ip_network(cluster_cidr, strict=False), family)
    if node_ip is not None:
        check_family(ipaddress.ip_address(node_ip), family)
    for ip in nodeport_ips:
        check_family(ipaddress.ip_address(ip), family)


def masquerade_mark(bit: int) -> str:
    """The masquerade mark as kube-proxy formats it (`%#08x`): 0x004000 for bit 14."""
    return f"{1 << bit:#08x}"

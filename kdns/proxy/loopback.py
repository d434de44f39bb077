"""Loopback VIPs for the userspace proxy: which 127.x.y.z each Service is reached at, and the
relay table built on them.

A ClusterIP is only reachable through routes or NAT, which need NET_ADMIN. Every address of
127.0.0.0/8 is local on Linux (the kernel puts the whole /8 on `lo`), and binding one needs no
privilege, so the userspace mode gives each Service with a ClusterIP a *loopback VIP* of its own
and kdns's DNS answers that VIP instead of the ClusterIP.

Contract:
- `allocate(keys)` is a pure, deterministic function of the *set* of Service keys: two processes
  (a `kdns serve` answering DNS and a `kdns proxy --mode userspace` relaying, say) given the same
  Services agree on every VIP, whatever order the Services arrived in.
- VIPs lie in `VIP_NETWORK` (127.64.0.0/10: about four million addresses, clear of
  127.0.0.0/16, where 127.0.0.1, systemd-resolved's 127.0.0.53 and Debian's 127.0.1.1 live) and
  never end in .0 or .255 (tools that guess "network" and "broadcast" addresses refuse them).
- Collisions are resolved as an ordered hash table (Amble & Knuth, 1974): keys are placed in
  sorted order, each at the first free address of its own probe sequence. The result does not
  depend on insertion order. Stability: a Service keeps its VIP while no Service that sorts
  before it comes or goes *on its probe sequence*; with 10,000 Services about one newcomer in
  400 lands on a taken address at all. Adding or removing a Service whose first probe is free
  moves nobody.
- `LoopbackVips` keeps the map for a store: `update` recomputes it only when the set of
  eligible keys changed (an endpoint change costs one set lookup) and returns the keys whose
  VIP changed, so DNS answers and relay listeners for exactly those are rebuilt.
- `relay_routes` / `relay_table` / `render_relay_table` describe what the relay serves: per
  Service with a VIP, the routes of its primary ClusterIP family (so a single-stack IPv6
  Service is still relayed, from an IPv4 VIP to IPv6 endpoints) and the endpoints a
  connection from this node may use.
- Pure: no sockets, no clock, no trio.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kdns.model import Endpoint, Service
from kdns.proxy.routes import RouteEndpoint, ServicePortRoute, family_of, service_routes

ServiceKey = tuple[str, str]

VIP_NETWORK = ipaddress.IPv4Network("127.64.0.0/10")
# Probes by hash before falling back to a linear scan (which always ends while a slot is free).
HASHED_PROBES = 32


def eligible(service: Service) -> bool:
    """A Service that gets a VIP: one kube-proxy would proxy (a ClusterIP, not headless, not
    ExternalName: `ShouldSkipService`)."""
    return service.type != "ExternalName" and not service.headless and bool(service.cluster_ips)


def _slots(network: ipaddress.IPv4Network) -> int:
    """Usable addresses of `network`: per /24, the 254 that end in neither .0 nor .255."""
    if network.prefixlen > 24:
        return network.num_addresses  # a test's tiny range: every address counts
    return network.num_addresses // 256 * 254


def _address(network: ipaddress.IPv4Network, slot: int) -> str:
    base = int(network.network_address)
    if network.prefixlen > 24:
        return str(ipaddress.IPv4Address(base + slot))
    return str(ipaddress.IPv4Address(base + slot // 254 * 256 + 1 + slot % 254))


@functools.lru_cache(maxsize=1 << 16)
def _probe_hash(key: ServiceKey, attempt: int) -> int:
    # sha256 of "namespace/name" (and "#n" for later probes): stable across processes and
    # Python versions, unlike hash(). Cached: every recomputation probes the same keys again.
    text = f"{key[0]}/{key[1]}" if attempt == 0 else f"{key[0]}/{key[1]}#{attempt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def probe(key: ServiceKey, attempt: int, slots: int) -> int:
    """The slot `key` tries at its `attempt`-th probe (0 first)."""
    if attempt < HASHED_PROBES:
        return _probe_hash(key, attempt) % slots
    # Past the hashed probes, a linear scan from the last one visits every slot once.
    return (_probe_hash(key, HASHED_PROBES - 1) + attempt - HASHED_PROBES + 1) % slots


def allocate(
    keys: Iterable[ServiceKey], network: ipaddress.IPv4Network = VIP_NETWORK
) -> dict[ServiceKey, str]:
    """key → VIP for every key, in key order, each at the first free slot of its probe
    sequence. Keys beyond the network's capacity (the last in sorted order) get none."""
    slots = _slots(network)
    taken: set[int] = set()
    vips: dict[ServiceKey, str] = {}
    for key in sorted(set(keys)):
        if len(taken) == slots:
            break
        attempt = 0
        slot = probe(key, 0, slots)
        while slot in taken:
            attempt += 1
            slot = probe(key, attempt, slots)
        taken.add(slot)
        vips[key] = _address(network, slot)
    return vips


class LoopbackVips:
    """The VIP map of a store's Services, kept up to date one change at a time."""

    def __init__(self, network: ipaddress.IPv4Network = VIP_NETWORK) -> None:
        self.network = network
        self.by_service: dict[ServiceKey, str] = {}
        self.by_address: dict[str, ServiceKey] = {}

    def address(self, key: ServiceKey) -> str | None:
        return self.by_service.get(key)

    def addresses(self, service: Service) -> tuple[str, ...]:
        """The DNS hook: what `svc.ns.svc` answers instead of the ClusterIPs (A only: the VIP
        is IPv4, and an unreachable ClusterIPv6 in AAAA would be tried first by RFC 6724
        clients)."""
        vip = self.by_service.get(service.key)
        return (vip,) if vip is not None else ()

    def update(
        self, services: Mapping[ServiceKey, Service], changed: Iterable[ServiceKey] | None = None
    ) -> set[ServiceKey]:
        """Follow the store after a change of `changed` (None: anything may have changed).
        Returns the keys whose VIP was assigned, moved or taken away."""
        if changed is not None and not any(
            (key in self.by_service) != (key in services and eligible(services[key]))
            for key in changed
        ):
            return set()  # the set of eligible keys is the same: so is every VIP
        new = allocate((k for k, s in services.items() if eligible(s)), self.network)
        old = self.by_service
        moved = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        self.by_service = new
        self.by_address = {vip: key for key, vip in new.items()}
        return moved


# --- the relay table -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayRoute:
    """One listener of the relay: a VIP, a port and a protocol, and where connections go."""

    vip: str
    route: ServicePortRoute

    @property
    def listener(self) -> tuple[str, int, str]:
        return (self.vip, self.route.port, self.route.protocol)

    @property
    def endpoints(self) -> tuple[RouteEndpoint, ...]:
        """The endpoints ClusterIP traffic from this node may use: the local ones under
        internalTrafficPolicy Local (none local: connections are reset, where kube-proxy
        drops), else CategorizeEndpoints' cluster set (ready, else serving-terminating)."""
        if self.route.internal_policy_local:
            return self.route.local_endpoints
        return self.route.cluster_endpoints


def relay_routes(
    service: Service,
    endpoints: Iterable[Endpoint],
    node_name: str,
    vip: str | None,
    *,
    zone: str = "",
) -> tuple[RelayRoute, ...]:
    """The listeners of one Service: its ports in its primary ClusterIP family, on its VIP.
    `zone` is this node's, for topology hints: the same routes as the kernel modes build."""
    if vip is None or not eligible(service):
        return ()
    family = family_of(service.cluster_ips[0])
    return tuple(
        RelayRoute(vip, route)
        for route in service_routes(service, endpoints, node_name, zone=zone)
        if route.family == family
    )


def relay_table(
    services: Mapping[ServiceKey, Service],
    endpoints: Mapping[ServiceKey, tuple[Endpoint, ...]],
    node_name: str,
    vips: Mapping[ServiceKey, str],
    *,
    zone: str = "",
) -> tuple[RelayRoute, ...]:
    """Every listener, in Service order."""
    table: list[RelayRoute] = []
    for key in sorted(services):
        entries = relay_routes(
            services[key], endpoints.get(key, ()), node_name, vips.get(key), zone=zone
        )
        table.extend(entries)
    return tuple(table)


def render_relay_table(table: Iterable[RelayRoute]) -> list[str]:
    """One line per listener, for `kdns proxy --mode userspace --render`:
    `default/redis 127.64.12.7 tcp/6379 -> 10.244.1.5:6379, 10.244.2.7:6379`."""
    lines = []
    for entry in table:
        route = entry.route
        targets = ", ".join(ep.address for ep in entry.endpoints) or "(no endpoints: reset)"
        if route.protocol not in ("TCP", "UDP"):
            targets = f"(not relayed: {route.protocol})"
        affinity = (
            f" [ClientIP affinity {route.affinity_timeout}s]"
            if route.affinity_timeout is not None
            else ""
        )
        lines.append(
            f"{route.name} {entry.vip} {route.protocol.lower()}/{route.port} -> {targets}{affinity}"
        )
    return lines

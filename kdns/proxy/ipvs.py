"""Routes → kube-proxy's IPVS data path (virtual servers, kube-ipvs0 addresses, ipsets and the
iptables companion rules); `ipvsadm -Sn` parsing, the diff to ipvsadm / ip commands, and a model
of what those commands do to the kernel.

Contract:
- `render(routes, config)` returns an `IpvsRendering`: the desired `IpvsState` (virtual
  services keyed by (protocol, VIP, port), each with its scheduler, persistence and real servers,
  and the addresses bound to the dummy interface kube-ipvs0), the ipset contents and the
  `iptables-restore` input per IP family in `config.families`, as kube-proxy's IPVS proxier
  (pkg/proxy/ipvs/proxier.go syncProxyRules, writeIptablesRules) programs them. Dual-stack is
  one IPVS table holding both families, but ipsets and iptables are per family.
- `parse_ipvsadm_save(text)` reads `ipvsadm -Sn` output into the same `IpvsState`;
  `parse_ip_addr_show` reads kube-ipvs0's addresses from `ip -o addr show dev kube-ipvs0`;
  `parse_ipset_save` reads set contents from `ipset save`. Malformed input raises
  `IpvsParseError` naming the line. Firewall-mark services (`-f`) are not kdns's: they are left
  out of the state, so nothing ever touches them.
- `diff(current, desired, config)` returns an `IpvsPlan`: argv lists for `ipvsadm` and `ip` that
  turn `current` into `desired`, in kube-proxy's order — `setup` (dummy device, added or edited
  services, added / edited / deleted real servers, address binds) before the ipset and iptables
  restores, `cleanup` (address unbinds, stale services) after them. A service or real server
  that is already right gets no command at all, so its established connections survive; a
  diff of a state against itself is empty. Only the families in `config.families` are managed,
  and services inside `config.exclude_cidrs` are never deleted (kube-proxy
  `--ipvs-exclude-cidrs`). `batch_commands` packs a command list into `ipvsadm -R` and
  `ip -batch -` runs, so a sync of 10k services is a handful of processes.
- `IpvsModel` applies those argv lists (or the batches) to an in-memory kernel exactly as
  ipvsadm and ip would — defaults, port rules and errors included (`IpvsCommandError`: adding a
  service that exists, deleting one that does not, …) — and prints itself as `ipvsadm -Sn`.
- `render_ipset_restore` writes `ipset restore` input that brings sets from their current to
  their desired contents (entries are added and deleted, never flushed, so no packet sees an
  empty set).
- `ipvs_available` decides from /proc/modules (or modules.builtin / modules.dep) text, or the
  presence of /proc/net/ip_vs, whether the kernel has IPVS; `UNAVAILABLE_MESSAGE` is the line to
  exit with when it has not.
- Pure: no I/O, no clock; nothing here runs a command or reads a file. Output is deterministic
  (services in `ipvsadm -S` order, addresses and set entries sorted).
- Deliberate differences from kube-proxy: no NodePort virtual servers on loopback addresses
  (CVE-2020-8558); a stale real server is deleted at once, not drained at weight 0 first (no
  GracefulTerminationManager: with `expire_nodest_conn=1` its connections end on their next
  packet); internalTrafficPolicy Local with no local endpoint leaves the ClusterIP service
  without real servers (kube-proxy falls back to every endpoint when the Service is also
  externally reachable); when two routes claim one (protocol, VIP, port), the first in route
  order wins (kube-proxy: whichever its map yields last); ipsets are synced by one `ipset
  restore`, not one `ipset add` per entry; the conntrack INVALID drop is written as the
  iptables renderer writes it (off with `conntrack_tcp_be_liberal`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shlex
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from kdns.proxy.routes import RouteEndpoint, ServicePortRoute, masquerade_mark, route_sort_key

DUMMY_DEVICE = "kube-ipvs0"  # proxier.go defaultDummyDevice
DEFAULT_SCHEDULER = "rr"  # proxier.go defaultScheduler
DEFAULT_PERSISTENCE = 300  # ipvsadm: `-p` without a timeout (IPVS_SVC_PERSISTENT_TIMEOUT)
MAX_PERSISTENCE = 86400 * 31  # ipvsadm MAX_TIMEOUT
# Schedulers the kernel ships (net/netfilter/ipvs/ip_vs_*.c); any other is "not found".
SCHEDULERS = frozenset(
    ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")
)

UNAVAILABLE_MESSAGE = (
    "kdns proxy: --mode ipvs needs IPVS in the kernel (module ip_vs), and this node has none;"
    " the modes that work here are iptables, nftables, userspace"
)

# Fixed chains, proxier.go constants. IPVS mode has no per-service chains.
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"
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

# ipset names (pkg/proxy/ipvs/ipset.go), as the IPv4 proxier spells them.
LOOP_BACK = "KUBE-LOOP-BACK"
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_IP = "KUBE-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "KUBE-LOAD-BALANCER"
LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
IPVS_IPS = "KUBE-IPVS-IPS"


@dataclass(frozen=True, slots=True)
class IpsetSpec:
    """One of kube-proxy's ipsets: `ipsetInfo` in proxier.go."""

    name: str  # the IPv4 name; `set_name` gives the per-family one
    type: str
    comment: str

    def set_name(self, family: int) -> str:
        """ipset.go NewIPSet: IPv6 sets are "KUBE-6-…", cut to ipset's 31 characters."""
        if family == 6:
            return ("KUBE-6-" + self.name.removeprefix("KUBE-"))[:31]
        return self.name

    def create_line(self, family: int) -> str:
        """`ipset restore` line creating the set (util/ipset createSet), idempotent."""
        name = self.set_name(family)
        if self.type == "bitmap:port":
            return f"create {name} bitmap:port range 0-65535 -exist"
        inet = "inet6" if family == 6 else "inet"
        return f"create {name} {self.type} family {inet} hashsize 1024 maxelem 65536 -exist"


# proxier.go ipsetInfo, in its order, with ipset.go's comments (used in the iptables rules).
IPSETS = (
    IpsetSpec(
        LOOP_BACK,
        "hash:ip,port,ip",
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    IpsetSpec(
        CLUSTER_IP, "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"
    ),
    IpsetSpec(
        EXTERNAL_IP,
        "hash:ip,port",
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    IpsetSpec(
        EXTERNAL_IP_LOCAL,
        "hash:ip,port",
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    IpsetSpec(LOAD_BALANCER, "hash:ip,port", "Kubernetes service lb portal"),
    IpsetSpec(
        LOAD_BALANCER_FW,
        "hash:ip,port",
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    IpsetSpec(
        LOAD_BALANCER_LOCAL,
        "hash:ip,port",
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    IpsetSpec(
        LOAD_BALANCER_SOURCE_IP,
        "hash:ip,port,ip",
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    IpsetSpec(
        LOAD_BALANCER_SOURCE_CIDR,
        "hash:ip,port,net",
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    IpsetSpec(NODE_PORT_TCP, "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    IpsetSpec(
        NODE_PORT_LOCAL_TCP,
        "bitmap:port",
        "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    ),
    IpsetSpec(NODE_PORT_UDP, "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    IpsetSpec(
        NODE_PORT_LOCAL_UDP,
        "bitmap:port",
        "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    ),
    IpsetSpec(
        NODE_PORT_SCTP,
        "hash:ip,port",
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    IpsetSpec(
        NODE_PORT_LOCAL_SCTP,
        "hash:ip,port",
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    IpsetSpec(HEALTH_CHECK_NODE_PORT, "bitmap:port", "Kubernetes health check node port"),
    IpsetSpec(IPVS_IPS, "hash:ip", "Addresses on the ipvs interface"),
)
_IPSET_BY_NAME = {spec.name: spec for spec in IPSETS}


def ipset_specs(family: int) -> dict[str, IpsetSpec]:
    """The sets of one family by their per-family name, in `IPSETS` order."""
    return {spec.set_name(family): spec for spec in IPSETS}


@dataclass(frozen=True, slots=True)
class JumpRule:
    """A jump from a built-in chain into ours, kept at the top with `iptables -I`."""

    table: str
    chain: str
    target: str
    comment: str

    @property
    def args(self) -> tuple[str, ...]:
        """The rule as iptables argv after `-t TABLE -I/-C/-D CHAIN`."""
        return ("-m", "comment", "--comment", self.comment, "-j", self.target)


# proxier.go iptablesJumpChain (each is prepended; kube-proxy ensures them on every sync).
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


class IpvsParseError(ValueError):
    """Text that is not what `ipvsadm -Sn`, `ip addr show` or `ipset save` print."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class IpvsCommandError(Exception):
    """A command the model rejects as the real tool would: message and exit status."""

    def __init__(self, argv: Sequence[str], message: str, status: int) -> None:
        super().__init__(f"{shlex.join(argv)}: {message} (exit {status})")
        self.argv = tuple(argv)
        self.message = message
        self.status = status


# --- the state ---------------------------------------------------------------------------------

VirtualKey = tuple[str, str, int]  # (protocol, VIP, port), as IPVS keys a virtual service
FORWARD_METHODS = ("m", "g", "i")  # masquerade (kube-proxy's), direct routing, ipip tunnel
PROTOCOLS = ("TCP", "UDP", "SCTP")
_PROTO_NUMBER = {"TCP": 6, "UDP": 17, "SCTP": 132}


@functools.lru_cache(maxsize=1 << 17)
def _norm_ip(text: str) -> str:
    # Cached: a saved table names each VIP on every one of its real servers' lines.
    return ipaddress.ip_address(text).compressed


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


@functools.lru_cache(maxsize=1 << 17)
def _ip_sort_key(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return (address.version, int(address))


def host_port(ip: str, port: int) -> str:
    """ipvsadm's numeric address form: "10.0.0.1:80", "[fd00::1]:80"."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class RealServer:
    """One IPVS destination of a virtual service."""

    ip: str
    port: int
    weight: int = 1
    forward: str = "m"  # FORWARD_METHODS; kube-proxy always masquerades (NAT)
    u_threshold: int = 0  # -x / -y connection thresholds; 0 is "none", kube-proxy sets neither
    l_threshold: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", _norm_ip(self.ip))
        if self.forward not in FORWARD_METHODS:
            raise ValueError(f"forwarding method {self.forward!r} is not one of m, g, i")
        if not 0 <= self.port <= 65535 or not 0 <= self.weight <= 65535:
            raise ValueError(f"real server {self.ip} port {self.port} weight {self.weight}")

    @property
    def key(self) -> tuple[str, int]:
        """What IPVS looks a destination up by."""
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class VirtualService:
    """One IPVS virtual service and its real servers (sorted as `ipvsadm -S` sorts them)."""

    protocol: str  # TCP | UDP | SCTP
    ip: str
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    persistence: int | None = None  # `-p` seconds: ClientIP session affinity
    # `-M` persistence granularity when persistent and not a single host; None is /32 or /128.
    netmask: str | None = None
    sched_flags: int = 0  # `-b` bits: 1 flag-1 (sh/mh-fallback), 2 flag-2 (sh/mh-port), 4 flag-3
    one_packet: bool = False  # `-o`
    reals: tuple[RealServer, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", self.protocol.upper())
        object.__setattr__(self, "ip", _norm_ip(self.ip))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range 0-65535")
        netmask = self.netmask
        if netmask is not None:
            # ipvsadm parse_netmask: a dotted mask for IPv4, a prefix length 1-128 for IPv6.
            try:
                if _family(self.ip) == 4:
                    netmask = ipaddress.IPv4Address(netmask).compressed
                elif not netmask.isdigit() or not 1 <= int(netmask) <= 128:
                    raise ValueError(netmask)
            except ValueError:
                raise ValueError(f"{self.describe()}: illegal netmask {netmask!r}") from None
        if self.persistence is None or netmask in ("255.255.255.255", "128"):
            netmask = None  # ipvsadm prints -M only for a persistent, non-host granularity
        object.__setattr__(self, "netmask", netmask)
        if self.one_packet and self.protocol != "UDP":
            raise ValueError(f"{self.describe()}: one-packet scheduling is only for UDP")
        reals = tuple(sorted(self.reals, key=lambda r: (_ip_sort_key(r.ip), r.port)))
        if len({r.key for r in reals}) != len(reals):
            raise ValueError(f"{self.describe()}: real servers repeat")
        object.__setattr__(self, "reals", reals)

    @property
    def key(self) -> VirtualKey:
        return (self.protocol, self.ip, self.port)

    @property
    def family(self) -> int:
        return _family(self.ip)

    def describe(self) -> str:
        return f"{self.protocol} {host_port(self.ip, self.port)}"

    def same_settings(self, other: VirtualService) -> bool:
        """Equal apart from the real servers: nothing for `ipvsadm -E` to change."""
        return (
            self.scheduler == other.scheduler
            and self.persistence == other.persistence
            and self.netmask == other.netmask
            and self.sched_flags == other.sched_flags
            and self.one_packet == other.one_packet
        )


def _service_sort_key(key: VirtualKey) -> tuple[int, int, tuple[int, int], int]:
    """libipvs ipvs_cmp_services: family (AF_INET first), protocol number, address, port."""
    protocol, ip, port = key
    return (_family(ip), _PROTO_NUMBER[protocol], _ip_sort_key(ip), port)


@dataclass(frozen=True, slots=True)
class IpvsState:
    """What IPVS mode owns in the kernel: the IPVS table and the dummy interface."""

    services: Mapping[VirtualKey, VirtualService] = field(default_factory=dict)
    addresses: frozenset[str] = frozenset()  # bound to kube-ipvs0
    device: bool = True  # kube-ipvs0 exists

    def __post_init__(self) -> None:
        for key, service in self.services.items():
            if key != service.key:
                raise ValueError(f"{service.describe()} is filed under {key}")
        object.__setattr__(self, "addresses", frozenset(_norm_ip(a) for a in self.addresses))

    @staticmethod
    def of(
        services: Iterable[VirtualService], addresses: Iterable[str] = (), device: bool = True
    ) -> IpvsState:
        """A state from a list of services (each key once)."""
        table: dict[VirtualKey, VirtualService] = {}
        for service in services:
            if service.key in table:
                raise ValueError(f"{service.describe()} is listed twice")
            table[service.key] = service
        return IpvsState(table, frozenset(addresses), device)

    def sorted_services(self) -> list[VirtualService]:
        """The services in `ipvsadm -S` order."""
        return [self.services[k] for k in sorted(self.services, key=_service_sort_key)]


# --- routes → desired state, ipsets and iptables -----------------------------------------------


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

    def __post_init__(self) -> None:
        if not self.families or any(f not in (4, 6) for f in self.families):
            raise ValueError(f"families must be 4 and/or 6, not {self.families!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"IPVS scheduler {self.scheduler!r} is not one of the kernel's")
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(f"masquerade_bit {self.masquerade_bit} is out of range 0-31")
        for ip in (*self.local_ips, *(self.nodeport_ips or ()), *self.node_ips):
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
                    _norm_ip(ip)
                    for ip in ips
                    if _family(ip) == family and not ipaddress.ip_address(ip).is_loopback
                },
                key=_ip_sort_key,
            )
        )

    def node_ip(self, family: int) -> str | None:
        return next((ip for ip in self.node_ips if _family(ip) == family), None)

    def cluster_cidr(self, family: int) -> str | None:
        return next((c for c in self.cluster_cidrs if _family(c) == family), None)

    def excluded(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(
            address in ipaddress.ip_network(cidr, strict=False)
            for cidr in self.exclude_cidrs
            if _family(cidr) == address.version
        )


@dataclass(frozen=True, slots=True)
class IpvsRendering:
    """Everything IPVS mode programs for a set of routes."""

    state: IpvsState
    # Per family: set name (the family's spelling) → entries, as `ipset save` prints them.
    ipsets: Mapping[int, Mapping[str, frozenset[str]]]
    iptables: Mapping[int, str]  # per family: `iptables-restore --noflush` input


def _reals(endpoints: Iterable[RouteEndpoint]) -> tuple[RealServer, ...]:
    # proxier.go syncEndpoint: weight 1, masquerade (the netlink default forwarding method).
    return tuple(RealServer(ep.ip, ep.port) for ep in endpoints)


def _net_entry(cidr: str) -> str:
    """A source range as ipset prints it: the network address, no prefix for a single host."""
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def render(routes: Iterable[ServicePortRoute], config: IpvsConfig = IpvsConfig()) -> IpvsRendering:
    """The desired IPVS state, ipsets and iptables rules of `routes` (proxier.go syncProxyRules)."""
    services: dict[VirtualKey, VirtualService] = {}
    bind: set[str] = set()
    sets = {f: {spec.name: set[str]() for spec in IPSETS} for f in config.families}
    no_node_access: dict[int, list[tuple[str, str, int]]] = {f: [] for f in config.families}
    local_ips = {_norm_ip(ip) for ip in config.local_ips}
    nodeport_ips = {f: config.nodeport_addresses(f) for f in config.families}

    def add_service(route: ServicePortRoute, ip: str, port: int, reals: tuple[RealServer, ...]):
        service = VirtualService(
            route.protocol,
            ip,
            port,
            scheduler=config.scheduler,
            # proxier.go: ClientIP affinity is FlagPersistent with Timeout = timeoutSeconds.
            persistence=route.affinity_timeout,
            sched_flags=config.sched_flags,
            reals=reals,
        )
        services.setdefault(service.key, service)  # the first route to claim a key keeps it

    for route in sorted(routes, key=route_sort_key):
        if route.family not in config.families:
            continue
        family = route.family
        entries = sets[family]
        proto = route.protocol.lower()

        def ip_port(ip: str, proto: str = proto, port: int = route.port) -> str:
            return f"{ip},{proto}:{port}"

        # internalTrafficPolicy decides the ClusterIP's real servers (syncEndpoint with
        # internalNodeLocal): Local ones only, possibly none.
        internal = route.local_endpoints if route.internal_policy_local else route.cluster_endpoints
        # externalTrafficPolicy Local: the external addresses get the local endpoints; with
        # none, every endpoint, so pods and the node keep access (kube-proxy PR #97081); an
        # outside client is then answered from a pod address and drops the reply.
        if route.external_policy_local and route.local_endpoints:
            external = route.local_endpoints
        else:
            external = route.cluster_endpoints

        # Hairpin: a local endpoint reaching itself through a VIP is masqueraded (KUBE-LOOP-BACK
        # takes every local endpoint of the port, ready or not).
        for ep in route.endpoints:
            if ep.local:
                entries[LOOP_BACK].add(f"{ep.ip},{proto}:{ep.port},{ep.ip}")

        # The ClusterIP: always bound to kube-ipvs0, so IPVS sees it at LOCAL_IN.
        entries[CLUSTER_IP].add(ip_port(route.cluster_ip))
        add_service(route, route.cluster_ip, route.port, _reals(internal))
        bind.add(route.cluster_ip)

        for ip in route.external_ips:
            # Local policy keeps the client's address: a set with no masquerade rule.
            local_set = EXTERNAL_IP_LOCAL if route.external_policy_local else EXTERNAL_IP
            entries[local_set].add(ip_port(ip))
            add_service(route, ip, route.port, _reals(external))
            # "We must not add the address to the dummy device if it exist on another interface"
            if ip not in local_ips:
                bind.add(ip)

        for ip in route.load_balancer_ips:
            entry = ip_port(ip)
            entries[LOAD_BALANCER].add(entry)
            if route.external_policy_local:
                entries[LOAD_BALANCER_LOCAL].add(entry)
            if route.load_balancer_source_ranges:
                # Only LBs that keep the client's address can be filtered here.
                entries[LOAD_BALANCER_FW].add(entry)
                node_ip = config.node_ip(family)
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
                    no_node_access[family].append((ip, proto, route.port))
            add_service(route, ip, route.port, _reals(external))
            if ip not in local_ips:
                bind.add(ip)

        if route.node_port and nodeport_ips[family]:
            # NodePorts are masqueraded unless the Local policy keeps the client's address;
            # the bitmap sets match the port on any local address, SCTP's hash sets the pairs.
            if proto == "sctp":
                np_entries = [ip_port(ip, port=route.node_port) for ip in nodeport_ips[family]]
                np_set, np_local_set = NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP
            else:
                np_entries = [str(route.node_port)]
                np_set = NODE_PORT_TCP if proto == "tcp" else NODE_PORT_UDP
                np_local_set = NODE_PORT_LOCAL_TCP if proto == "tcp" else NODE_PORT_LOCAL_UDP
            entries[np_set].update(np_entries)
            if route.external_policy_local:
                entries[np_local_set].update(np_entries)
            # One virtual service per node address; node addresses are never bound.
            for ip in nodeport_ips[family]:
                add_service(route, ip, route.node_port, _reals(external))

        if route.health_check_node_port:
            entries[HEALTH_CHECK_NODE_PORT].add(str(route.health_check_node_port))

    ipsets: dict[int, dict[str, frozenset[str]]] = {}
    iptables: dict[int, str] = {}
    for family in config.families:
        # KUBE-IPVS-IPS holds what is bound to kube-ipvs0: KUBE-IPVS-FILTER rejects new
        # connections to those addresses on ports no service has (#72236).
        sets[family][IPVS_IPS] = {ip for ip in bind if _family(ip) == family}
        ipsets[family] = {
            _IPSET_BY_NAME[name].set_name(family): frozenset(values)
            for name, values in sets[family].items()
        }
        iptables[family] = _render_iptables(family, sets[family], config, no_node_access[family])
    return IpvsRendering(IpvsState(services, frozenset(bind)), ipsets, iptables)


def _render_iptables(
    family: int,
    sets: Mapping[str, Collection[str]],
    config: IpvsConfig,
    no_node_access: Sequence[tuple[str, str, int]],
) -> str:
    """proxier.go writeIptablesRules: the fixed chains, matching the ipsets, nat then filter."""

    def name(set_name: str) -> str:
        return _IPSET_BY_NAME[set_name].set_name(family)

    def comment(set_name: str) -> str:
        return f'-m comment --comment "{_IPSET_BY_NAME[set_name].comment}"'

    mark = config.masquerade_mark
    nat: list[str] = []
    filt: list[str] = []
    # Connections from localhost never reach a service here (no route_localnet).
    loopback = "::1/128" if family == 6 else "127.0.0.0/8"
    nat.append(f"-A {KUBE_SERVICES} -s {loopback} -j RETURN")

    # proxier.go ipsetWithIptablesChain: one rule per non-empty set; the Local sets RETURN
    # before the masquerade rule of their kind.
    linked = (
        (LOOP_BACK, nat, KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
        (LOAD_BALANCER, nat, KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
        (LOAD_BALANCER_LOCAL, nat, KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
        (NODE_PORT_LOCAL_TCP, nat, KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
        (NODE_PORT_TCP, nat, KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
        (NODE_PORT_LOCAL_UDP, nat, KUBE_NODE_PORT, "RETURN", "dst", "udp"),
        (NODE_PORT_UDP, nat, KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
        (NODE_PORT_LOCAL_SCTP, nat, KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
        (NODE_PORT_SCTP, nat, KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
        (LOAD_BALANCER_FW, filt, KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, "dst,dst", ""),
        (LOAD_BALANCER_SOURCE_CIDR, filt, KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
        (LOAD_BALANCER_SOURCE_IP, filt, KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
    )
    for set_name, rules, chain, target, match, proto in linked:
        if sets[set_name]:
            proto_match = f" -p {proto}" if proto else ""
            rules.append(
                f"-A {chain}{proto_match} {comment(set_name)}"
                f" -m set --match-set {name(set_name)} {match} -j {target}"
            )

    if sets[CLUSTER_IP]:
        head = f"-A {KUBE_SERVICES} {comment(CLUSTER_IP)} -m set --match-set {name(CLUSTER_IP)}"
        cidr = config.cluster_cidr(family)
        if config.masquerade_all:
            nat.append(f"{head} dst,dst -j {KUBE_MARK_MASQ}")
        elif cidr:
            # Off-cluster traffic to a VIP (a static route for the Service range to any node)
            # is masqueraded so the reply comes back through this node.
            nat.append(f"{head} dst,dst ! -s {cidr} -j {KUBE_MARK_MASQ}")
        else:
            # No local-traffic detector: masquerade node traffic whose source is a VIP (the
            # kernel picks a kube-ipvs0 address as the source of a connection to a VIP).
            nat.append(f"{head} src,dst -j {KUBE_MARK_MASQ}")

    def external_ip_rules(head: str) -> None:
        # Accept externalIP traffic from off the machine (not from a bridge, not local), and
        # traffic to an externalIP that is a local address (GCE-style LBs).
        nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
        nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")

    if sets[EXTERNAL_IP]:
        head = (
            f"-A {KUBE_SERVICES} {comment(EXTERNAL_IP)}"
            f" -m set --match-set {name(EXTERNAL_IP)} dst,dst"
        )
        nat.append(f"{head} -j {KUBE_MARK_MASQ}")
        external_ip_rules(head)
    if sets[EXTERNAL_IP_LOCAL]:
        external_ip_rules(
            f"-A {KUBE_SERVICES} {comment(EXTERNAL_IP_LOCAL)}"
            f" -m set --match-set {name(EXTERNAL_IP_LOCAL)} dst,dst"
        )

    nat.append(f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}")
    nat.append(f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}")
    # What KUBE-SOURCE-RANGES-FIREWALL did not RETURN is outside every source range.
    filt.append(f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP")
    # The node itself is denied an LB IP whose source ranges leave it out (#119656): IPVS
    # would otherwise accept it, the source being the LB IP on kube-ipvs0.
    for ip, proto, port in no_node_access:
        filt.append(
            f"-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {proto}"
            f" --vport {port} -j DROP"
        )
    # acceptIPVSTraffic: accept what IPVS will take, whatever rules come after ours.
    for set_name in (CLUSTER_IP, LOAD_BALANCER):
        if sets[set_name]:
            nat.append(f"-A {KUBE_SERVICES} -m set --match-set {name(set_name)} dst,dst -j ACCEPT")

    if not config.conntrack_tcp_be_liberal:
        # As the iptables renderer: INVALID packets would reach the pod un-NATed (#74839).
        filt.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP")
    filt.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules"'
        f" -m mark --mark {mark}/{mark} -j ACCEPT"
    )
    filt.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    filt.append(
        f"-A {KUBE_NODE_PORT} {comment(HEALTH_CHECK_NODE_PORT)}"
        f" -m set --match-set {name(HEALTH_CHECK_NODE_PORT)} dst -j ACCEPT"
    )
    # KUBE-IPVS-FILTER: the VIPs answer only on their service ports, not every host port
    # (#72236).
    for set_name in (LOAD_BALANCER, CLUSTER_IP, EXTERNAL_IP, EXTERNAL_IP_LOCAL):
        filt.append(f"-A {KUBE_IPVS_FILTER} -m set --match-set {name(set_name)} dst,dst -j RETURN")
    filt.append(
        f"-A {KUBE_IPVS_FILTER} -m set --match-set {name(HEALTH_CHECK_NODE_PORT)} dst -j RETURN"
    )
    filt.append(
        f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW"
        f" -m set --match-set {name(IPVS_IPS)} dst -j REJECT"
    )

    nat.append(f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN")
    # Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
    nat.append(f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}")
    nat.append(
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT"'
        f" -j MASQUERADE{' --random-fully' if config.random_fully else ''}"
    )
    nat.append(f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}")

    lines = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), *nat, "COMMIT"]
    lines += ["*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *filt, "COMMIT", ""]
    return "\n".join(lines)


def render_ipset_restore(
    family: int,
    desired: Mapping[str, Collection[str]],
    current: Mapping[str, Collection[str]],
) -> str:
    """`ipset restore` input taking kube-proxy's sets of `family` from `current` (what
    `parse_ipset_save` read, {} when none exist yet) to `desired` (`IpvsRendering.ipsets`).

    Every set is created if missing (the filter rules name them even when empty); stale
    entries are deleted and new ones added, so a set is never briefly empty.
    """
    specs = ipset_specs(family)
    unknown = sorted(set(desired) - set(specs))
    if unknown:
        raise ValueError(f"not IPv{family} sets of IPVS mode: {', '.join(unknown)}")
    lines = [spec.create_line(family) for spec in specs.values()]
    for name in specs:
        want = frozenset(desired.get(name, ()))
        have = frozenset(current.get(name, ()))
        lines += [f"del {name} {entry} -exist" for entry in sorted(have - want)]
        lines += [f"add {name} {entry} -exist" for entry in sorted(want - have)]
    return "\n".join([*lines, ""])


def parse_ipset_save(text: str) -> dict[str, frozenset[str]]:
    """Set name → entries from `ipset save` (or `ipset list -o save`) output."""
    sets: dict[str, set[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "create" and len(fields) >= 3:
            sets.setdefault(fields[1], set())
        elif fields[0] == "add" and len(fields) >= 3:
            sets.setdefault(fields[1], set()).add(fields[2])
        else:
            raise IpvsParseError(number, f"not ipset save output: {line!r}")
    return {name: frozenset(entries) for name, entries in sets.items()}


# --- ipvsadm command lines ---------------------------------------------------------------------

_COMMANDS = {
    "-A": "A",
    "--add-service": "A",
    "-E": "E",
    "--edit-service": "E",
    "-D": "D",
    "--delete-service": "D",
    "-C": "C",
    "--clear": "C",
    "-a": "a",
    "--add-server": "a",
    "-e": "e",
    "--edit-server": "e",
    "-d": "d",
    "--delete-server": "d",
    "-S": "S",
    "--save": "S",
    "-R": "R",
    "--restore": "R",
}
_COMMAND_NAMES = {
    "A": "add-service",
    "E": "edit-service",
    "D": "delete-service",
    "C": "flush",
    "a": "add-server",
    "e": "edit-server",
    "d": "delete-server",
    "S": "save",
    "R": "restore",
}
_SERVICE_SWITCH = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
_SERVICE_OPTIONS = {
    "-t": "TCP",
    "--tcp-service": "TCP",
    "-u": "UDP",
    "--udp-service": "UDP",
    "--sctp-service": "SCTP",
}
_VALUE_OPTIONS = {
    "-s": "scheduler",
    "--scheduler": "scheduler",
    "-M": "netmask",
    "--netmask": "netmask",
    "-b": "sched-flags",
    "--sched-flags": "sched-flags",
    "-r": "real-server",
    "--real-server": "real-server",
    "-w": "weight",
    "--weight": "weight",
    "-x": "u-threshold",
    "--u-threshold": "u-threshold",
    "-y": "l-threshold",
    "--l-threshold": "l-threshold",
    "-f": "fwmark",
    "--fwmark-service": "fwmark",
}
_FORWARD_OPTIONS = {
    "-m": "m",
    "--masquerading": "m",
    "-g": "g",
    "--gatewaying": "g",
    "-i": "i",
    "--ipip": "i",
}
_FLAG_OPTIONS = {"-n": "numeric", "--numeric": "numeric", "-o": "ops", "--ops": "ops", "-6": "ipv6"}
# ipvsadm's commands_v_options table: (required, allowed) options per command.
_SERVICE_SETTINGS = frozenset(("scheduler", "persistent", "netmask", "sched-flags", "ops"))
_REAL_SETTINGS = frozenset(("forwarding-method", "weight", "u-threshold", "l-threshold"))
_LEGAL: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "A": (frozenset(("service-address",)), _SERVICE_SETTINGS),
    "E": (frozenset(("service-address",)), _SERVICE_SETTINGS),
    "D": (frozenset(("service-address",)), frozenset()),
    "C": (frozenset(), frozenset()),
    "a": (frozenset(("service-address", "real-server")), _REAL_SETTINGS),
    "e": (frozenset(("service-address", "real-server")), _REAL_SETTINGS),
    "d": (frozenset(("service-address", "real-server")), frozenset()),
    "S": (frozenset(), frozenset(("numeric",))),
    "R": (frozenset(), frozenset()),
}
_SCHED_FLAG_NAMES = {
    "sh": ("sh-fallback", "sh-port"),
    "mh": ("mh-fallback", "mh-port"),
}


class _Usage(Exception):
    """ipvsadm's `fail(2, …)`: the command line itself is wrong."""


@dataclass(slots=True)
class _Line:
    """One parsed ipvsadm command line (process_options, with its defaults applied)."""

    command: str = ""
    protocol: str = ""
    ip: str = ""
    port: int = 0
    fwmark: int | None = None
    scheduler: str = ""
    persistence: int | None = None
    netmask: str | None = None
    flags_text: str = ""  # -b, read once the scheduler is known
    sched_flags: int = 0
    one_packet: bool = False
    real_ip: str = ""
    real_port: int | None = None
    forward: str = "g"  # ipvsadm's default: direct routing
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    options: set[str] = field(default_factory=set)

    def set_option(self, option: str) -> None:
        if option in self.options:
            raise _Usage(f"multiple '{option}' options specified")
        self.options.add(option)

    def service(self) -> VirtualService:
        try:
            return VirtualService(
                self.protocol,
                self.ip,
                self.port,
                scheduler=self.scheduler,
                persistence=self.persistence,
                netmask=self.netmask,
                sched_flags=self.sched_flags,
                one_packet=self.one_packet,
            )
        except ValueError as e:
            raise _Usage(str(e)) from None

    def real(self, command: bool = True) -> RealServer:
        """The destination a command line names; `command` False reads a saved line as is."""
        port = self.port if self.real_port is None else self.real_port
        if command and self.command in ("a", "e") and self.forward in ("g", "i"):
            # process_options: DR and tunnel destinations get the service's port (a saved
            # table shows the kernel's port, which a netlink client may have set otherwise).
            port = self.port
        return RealServer(
            self.real_ip, port, self.weight, self.forward, self.u_threshold, self.l_threshold
        )


def _split_address(text: str) -> tuple[str, int | None]:
    """ipvsadm parse_service: "ip", "ip:port", "[ip6]:port" or a bare IPv6 address."""
    if not text or text.isdigit():
        raise ValueError(text)
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(text)
        port_text = rest[1:]
    elif text.count(":") > 1:
        return _norm_ip(text), None  # a bare IPv6 address: no port
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, None
    ip = _norm_ip(host)  # no host names: nothing here resolves
    if port_text is None:
        return ip, None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(text)
    return ip, int(port_text)


def _number(text: str, low: int, high: int, what: str) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise _Usage(f"illegal {what} specified")
    return int(text)


def _expand(args: Sequence[str]) -> list[str]:
    """popt's spellings: "--opt=value" and bundled short flags such as "-Sn"."""
    out: list[str] = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            out += arg.split("=", 1)
        elif (
            len(arg) > 2
            and arg[0] == "-"
            and arg[1] != "-"
            and all(f"-{c}" in _COMMANDS or f"-{c}" in _FLAG_OPTIONS for c in arg[1:])
        ):
            out += [f"-{c}" for c in arg[1:]]
        else:
            out.append(arg)
    return out


def _parse_ipvsadm(args: Sequence[str]) -> _Line:
    """ipvsadm parse_options + generic_opt_check + process_options' defaults."""
    line = _Line()
    args = _expand(args)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in _COMMANDS:
            if line.command:
                raise _Usage("multiple commands specified")
            line.command = _COMMANDS[arg]
        elif arg in _SERVICE_OPTIONS or arg in _VALUE_OPTIONS:
            if i >= len(args):
                raise _Usage(f"{arg}: missing argument")
            value = args[i]
            i += 1
            if arg in _SERVICE_OPTIONS:
                line.set_option("service-address")
                line.protocol = _SERVICE_OPTIONS[arg]
                try:
                    line.ip, port = _split_address(value)
                except ValueError:
                    raise _Usage("illegal virtual server address[:port] specified") from None
                line.port = port or 0
            else:
                _value_option(line, _VALUE_OPTIONS[arg], value)
        elif arg in ("-p", "--persistent"):
            line.set_option("persistent")
            # popt's optional argument: the next word, unless it is an option.
            if i < len(args) and not args[i].startswith("-"):
                value = args[i]
                i += 1
                if not value.isdigit() or not 1 <= int(value) <= MAX_PERSISTENCE:
                    raise _Usage(f"invalid timeout value `{value}' specified")
                line.persistence = int(value)
            else:
                line.persistence = DEFAULT_PERSISTENCE
        elif arg in _FORWARD_OPTIONS:
            line.set_option("forwarding-method")
            line.forward = _FORWARD_OPTIONS[arg]
        elif arg in _FLAG_OPTIONS:
            option = _FLAG_OPTIONS[arg]
            if option != "ipv6":
                line.set_option(option)
            line.one_packet = line.one_packet or option == "ops"
        elif arg.startswith("-"):
            raise _Usage(f"invalid option `{arg}'")
        else:
            raise _Usage(f"unexpected argument {arg}")
    if not line.command:
        raise _Usage("no command specified")
    required, allowed = _LEGAL[line.command]
    name = _COMMAND_NAMES[line.command]
    for option in sorted(required - line.options):
        raise _Usage(f"You need to supply the '{option}' option for the '{name}' command")
    for option in sorted(line.options - required - allowed):
        raise _Usage(f"Illegal '{option}' option with the '{name}' command")
    if line.command in ("A", "E"):
        if line.fwmark is None and not line.port and line.persistence is None:
            raise _Usage("Zero port specified for non-persistent service")
        if line.one_packet and line.fwmark is None and line.protocol != "UDP":
            raise _Usage("One-Packet Scheduling is only for UDP virtual services")
        line.scheduler = line.scheduler or "wlc"  # ipvsadm DEF_SCHED
        if line.flags_text:
            names = _SCHED_FLAG_NAMES.get(line.scheduler, ())
            line.sched_flags = _sched_flags(line.flags_text, names)
    return line


def _value_option(line: _Line, option: str, value: str) -> None:
    if option == "fwmark":
        line.set_option("service-address")
        if not value.isdigit() or not 0 < int(value) < 1 << 32:
            raise _Usage(f"invalid fwmark value `{value}' specified")
        line.fwmark = int(value)
        line.protocol = "TCP"  # ipvsadm: "a sane value, even though it is not used"
        return
    line.set_option(option)
    if option == "scheduler":
        line.scheduler = value
    elif option == "netmask":
        line.netmask = value
    elif option == "sched-flags":
        line.flags_text = value
    elif option == "real-server":
        try:
            line.real_ip, line.real_port = _split_address(value)
        except ValueError:
            raise _Usage("illegal real server address[:port] specified") from None
    elif option == "weight":
        line.weight = _number(value, 0, 65535, "weight")
    elif option == "u-threshold":
        line.u_threshold = _number(value, 0, 2**31 - 1, "u_threshold")
    elif option == "l-threshold":
        line.l_threshold = _number(value, 0, 2**31 - 1, "l_threshold")


def _sched_flags(text: str, names: tuple[str, ...]) -> int:
    """ipvsadm parse_sched_flags: "flag-1,flag-2,flag-3" or the scheduler's own names."""
    bits = 0
    for word in text.split(","):
        if word in ("flag-1", "flag-2", "flag-3"):
            bits |= 1 << (int(word[-1]) - 1)
        elif word in names:
            bits |= 1 << names.index(word)
        else:
            raise _Usage(f"invalid scheduler flag `{word}'")
    return bits


def _sched_flags_text(scheduler: str, bits: int) -> str:
    names = _SCHED_FLAG_NAMES.get(scheduler, ())
    words = []
    for bit in range(3):
        if bits & 1 << bit:
            words.append(names[bit] if bit < len(names) else f"flag-{bit + 1}")
    return ",".join(words)


def _service_args(service: VirtualService) -> list[str]:
    return [_SERVICE_SWITCH[service.protocol], host_port(service.ip, service.port)]


def _service_settings(service: VirtualService) -> list[str]:
    """-s, -b, -p, -M, -o: every setting, since -E resets what it is not given."""
    args = ["-s", service.scheduler]
    if service.sched_flags:
        args += ["-b", _sched_flags_text(service.scheduler, service.sched_flags)]
    if service.persistence is not None:
        args += ["-p", str(service.persistence)]
        if service.netmask is not None:
            args += ["-M", service.netmask]
    if service.one_packet:
        args.append("-o")
    return args


def _real_args(real: RealServer) -> list[str]:
    return ["-r", host_port(real.ip, real.port)]


def _real_settings(real: RealServer) -> list[str]:
    """-m/-g/-i and -w (and thresholds): every setting, since -e resets what it is not given."""
    args = [f"-{real.forward}", "-w", str(real.weight)]
    if real.u_threshold:
        args += ["-x", str(real.u_threshold)]
    if real.l_threshold:
        args += ["-y", str(real.l_threshold)]
    return args


def format_save(state: IpvsState) -> str:
    """The IPVS table as `ipvsadm -Sn` prints it (print_service_entry with FMT_RULE)."""
    lines: list[str] = []
    for service in state.sorted_services():
        svc = " ".join(_service_args(service))
        lines.append(" ".join(["-A", svc, *_service_settings(service)]))
        for real in service.reals:
            lines.append(" ".join(["-a", svc, *_real_args(real), *_real_settings(real)]))
    return "".join(f"{line}\n" for line in lines)


def parse_ipvsadm_save(text: str, addresses: Iterable[str] = (), device: bool = True) -> IpvsState:
    """`ipvsadm -Sn` output (plus kube-ipvs0's addresses, see `parse_ip_addr_show`) → state.

    Lines are `-A` (service) and `-a` (real server of a service listed before it), in any
    order ipvsadm prints them. Firewall-mark services and their servers are skipped.
    """
    services: dict[VirtualKey, VirtualService] = {}
    reals: dict[VirtualKey, dict[tuple[str, int], RealServer]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        fast = _saved_real(raw)
        if fast is not None:
            key, real = fast
            if key in services and real.key not in reals[key]:
                reals[key][real.key] = real
                continue  # otherwise the general path below reports the error
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        # Old ipvsadm prints " ops" for one-packet scheduling, which its own parser refuses.
        tokens = ["-o" if t == "ops" else t for t in tokens]
        try:
            line = _parse_ipvsadm(tokens)
            fwmark = line.fwmark is not None
            service = line.service() if line.command == "A" and not fwmark else None
        except _Usage as e:
            raise IpvsParseError(number, f"{e}: {raw.strip()!r}") from None
        if fwmark:
            continue  # not a service kdns programs
        key: VirtualKey = (line.protocol, line.ip, line.port)
        if service is not None:
            if key in services:
                raise IpvsParseError(number, f"{service.describe()} is listed twice")
            services[key] = service
            reals[key] = {}
        elif line.command == "a":
            if key not in services:
                raise IpvsParseError(number, f"real server of unlisted service: {raw.strip()!r}")
            real = line.real(command=False)
            if real.key in reals[key]:
                raise IpvsParseError(number, f"real server listed twice: {raw.strip()!r}")
            reals[key][real.key] = real
        else:
            raise IpvsParseError(number, f"not ipvsadm -S output: {raw.strip()!r}")
    table = {k: replace(s, reals=tuple(reals[k].values())) for k, s in services.items()}
    return IpvsState(table, frozenset(addresses), device)


# The shape of nearly every line of a saved table: a masqueraded (or routed) real server.
_SAVED_REAL = re.compile(r"-a (-t|-u|--sctp-service) (\S+) -r (\S+) -([mgi]) -w (\d+)")


def _saved_real(line: str) -> tuple[VirtualKey, RealServer] | None:
    """The fast path of `parse_ipvsadm_save` for `-a SVC -r ADDR -m -w N` lines (10k
    services are 40k lines); None sends the line to the general parser."""
    match = _SAVED_REAL.fullmatch(line.strip())
    if match is None:
        return None
    switch, service, real, forward, weight = match.groups()
    try:
        ip, port = _split_address(service)
        real_ip, real_port = _split_address(real)
    except ValueError:
        return None
    if port is None or real_port is None or int(weight) > 65535:
        return None
    key = (_SERVICE_OPTIONS[switch], ip, port)
    return key, RealServer(real_ip, real_port, int(weight), forward)


_ADDRESS = re.compile(r"\binet6? (\S+?)/\d+")


def parse_ip_addr_show(text: str) -> frozenset[str]:
    """The addresses in `ip [-o] addr show dev kube-ipvs0` output."""
    return frozenset(_norm_ip(m.group(1)) for m in _ADDRESS.finditer(text))


# --- the diff ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpvsPlan:
    """The commands of one sync, in two phases around the ipset and iptables restores."""

    setup: list[list[str]]  # before: device, services, real servers, address binds
    cleanup: list[list[str]]  # after: address unbinds, stale services

    @property
    def commands(self) -> list[list[str]]:
        return [*self.setup, *self.cleanup]

    def __bool__(self) -> bool:
        return bool(self.setup or self.cleanup)


def _addr_argv(verb: str, ip: str) -> list[str]:
    # kube-proxy binds each VIP as a host address (netlink EnsureAddressBind).
    return ["ip", "addr", verb, f"{ip}/{128 if ':' in ip else 32}", "dev", DUMMY_DEVICE]


def diff(current: IpvsState, desired: IpvsState, config: IpvsConfig = IpvsConfig()) -> IpvsPlan:
    """The commands that turn `current` into `desired` (proxier.go syncService, syncEndpoint,
    cleanLegacyService and the dummy-device address sync, in that order).

    Within one service, new real servers are added before stale ones are deleted, so a
    service being moved to new endpoints never has none in between.
    """
    families = set(config.families)
    setup: list[list[str]] = []
    cleanup: list[list[str]] = []
    if not current.device:
        setup.append(["ip", "link", "add", DUMMY_DEVICE, "type", "dummy"])
    for key in sorted(desired.services, key=_service_sort_key):
        want = desired.services[key]
        have = current.services.get(key)
        svc = _service_args(want)
        if have is None:
            setup.append(["ipvsadm", "-A", *svc, *_service_settings(want)])
            have_reals: dict[tuple[str, int], RealServer] = {}
        else:
            if not want.same_settings(have):
                setup.append(["ipvsadm", "-E", *svc, *_service_settings(want)])
            have_reals = {r.key: r for r in have.reals}
        want_keys = set()
        for real in want.reals:
            want_keys.add(real.key)
            old = have_reals.get(real.key)
            if old is None:
                setup.append(["ipvsadm", "-a", *svc, *_real_args(real), *_real_settings(real)])
            elif old != real:
                # e.g. weight 0 left by a graceful delete, or another forwarding method.
                setup.append(["ipvsadm", "-e", *svc, *_real_args(real), *_real_settings(real)])
        for real in have_reals.values():
            if real.key not in want_keys:
                setup.append(["ipvsadm", "-d", *svc, *_real_args(real)])
    for ip in sorted(desired.addresses - current.addresses, key=_ip_sort_key):
        setup.append(_addr_argv("add", ip))
    # The dummy device is ours: any address of a managed family that is not wanted goes.
    stale_addresses = current.addresses - desired.addresses
    for ip in sorted(stale_addresses, key=_ip_sort_key):
        if _family(ip) in families:
            cleanup.append(_addr_argv("del", ip))
    # cleanLegacyService: every service of a managed family that no route wants, except those
    # inside --ipvs-exclude-cidrs (other owners' services, e.g. keepalived's).
    for key in sorted(current.services, key=_service_sort_key):
        service = current.services[key]
        if key in desired.services or service.family not in families:
            continue
        if not config.excluded(service.ip):
            cleanup.append(["ipvsadm", "-D", *_service_args(service)])
    return IpvsPlan(setup, cleanup)


def batch_commands(commands: Iterable[Sequence[str]]) -> list[tuple[list[str], str]]:
    """Consecutive ipvsadm and ip commands packed into `ipvsadm -R` and `ip -batch -` runs:
    (argv, stdin) pairs, to run in order. The order of the commands is kept."""
    runs: list[tuple[list[str], list[str]]] = []
    for argv in commands:
        tool = argv[0]
        if tool == "ipvsadm":
            batch_argv = ["ipvsadm", "-R"]
        elif tool == "ip":
            batch_argv = ["ip", "-batch", "-"]
        else:
            raise ValueError(f"not an ipvsadm or ip command: {shlex.join(argv)}")
        if not runs or runs[-1][0] != batch_argv:
            runs.append((batch_argv, []))
        runs[-1][1].append(shlex.join(argv[1:]))
    return [(argv, "".join(f"{line}\n" for line in lines)) for argv, lines in runs]


# --- the model ---------------------------------------------------------------------------------

# libipvs ipvs_strerror, for the errors the kernel returns.
_EINVAL = "Invalid operation.  Possibly wrong module version, address not unicast, ..."


class IpvsModel:
    """An in-memory IPVS table and kube-ipvs0 that `ipvsadm` and `ip` argv lists act on.

    `apply` does what the tool would do, or raises `IpvsCommandError` with its message and
    exit status and changes nothing: ipvsadm usage errors exit 2, kernel errors 255 (adding a
    service that exists, deleting one or a destination that does not, an unknown scheduler).
    Batches (`ipvsadm -R`, `ip -batch -`) stop at the first failing line, as `ip -batch`
    does; the real `ipvsadm -R` goes on after a kernel error and exits with the last line's
    status, so a sync must re-read `ipvsadm -Sn` after a batch rather than trust that status.
    """

    def __init__(self, state: IpvsState | None = None) -> None:
        state = state or IpvsState(device=False)
        self._services: dict[VirtualKey, VirtualService] = {
            key: replace(service, reals=()) for key, service in state.services.items()
        }
        self._reals: dict[VirtualKey, dict[tuple[str, int], RealServer]] = {
            key: {r.key: r for r in service.reals} for key, service in state.services.items()
        }
        self._device = state.device
        self._addresses: dict[str, int] = {ip: 128 if ":" in ip else 32 for ip in state.addresses}
        self.applied = 0  # commands applied, batch lines counted one by one

    @property
    def state(self) -> IpvsState:
        services = {
            key: replace(service, reals=tuple(self._reals[key].values()))
            for key, service in self._services.items()
        }
        return IpvsState(services, frozenset(self._addresses), self._device)

    def save(self) -> str:
        """`ipvsadm -Sn`."""
        return format_save(self.state)

    def apply_all(self, commands: Iterable[Sequence[str]]) -> None:
        for argv in commands:
            self.apply(argv)

    def apply(self, argv: Sequence[str], stdin: str | None = None) -> None:
        argv = list(argv)
        if not argv:
            raise ValueError("empty command")
        if argv[0] == "ipvsadm":
            if argv[1:] in (["-R"], ["--restore"]):
                for line in self._batch_lines(argv, stdin):
                    self.apply(["ipvsadm", *line])
                return
            self._ipvsadm(argv)
        elif argv[0] == "ip":
            if argv[1:] == ["-batch", "-"]:
                for line in self._batch_lines(argv, stdin):
                    self.apply(["ip", *line])
                return
            self._ip(argv)
        else:
            raise ValueError(f"the model runs ipvsadm and ip, not {argv[0]!r}")
        self.applied += 1

    @staticmethod
    def _batch_lines(argv: Sequence[str], stdin: str | None) -> Iterator[list[str]]:
        if stdin is None:
            raise IpvsCommandError(argv, "reads its commands from stdin, and none was given", 2)
        for line in stdin.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                yield words

    def _ipvsadm(self, argv: list[str]) -> None:
        try:
            line = _parse_ipvsadm(argv[1:])
        except _Usage as e:
            raise IpvsCommandError(argv, str(e), 2) from None
        if line.fwmark is not None:
            raise IpvsCommandError(argv, "the model has no firewall-mark services", 2)
        key: VirtualKey = (line.protocol, line.ip, line.port)
        command = line.command

        def fail(message: str) -> None:
            raise IpvsCommandError(argv, message, 255)

        if command == "C":
            self._services.clear()
            self._reals.clear()
        elif command == "S":
            pass  # prints `save()`; changes nothing
        elif command in ("A", "E"):
            try:
                service = line.service()
            except _Usage as e:
                raise IpvsCommandError(argv, str(e), 2) from None
            if command == "A" and key in self._services:
                fail("Service already exists")
            if command == "E" and key not in self._services:
                fail("No such service")
            if service.scheduler not in SCHEDULERS:
                fail("Scheduler not found")
            self._services[key] = service
            self._reals.setdefault(key, {})
        elif command == "D":
            if key not in self._services:
                fail("No such service")
            del self._services[key]
            del self._reals[key]
        else:  # a, e, d
            if key not in self._services:
                fail("Service not defined")
            real = line.real()
            reals = self._reals[key]
            if command != "d" and _family(real.ip) != _family(line.ip) and real.forward != "i":
                fail(_EINVAL)  # the kernel forwards to another family only through a tunnel
            if command == "a":
                if real.key in reals:
                    fail("Destination already exists")
                reals[real.key] = real
            elif real.key not in reals:
                fail("No such destination")
            elif command == "e":
                reals[real.key] = real
            else:
                del reals[real.key]

    def _ip(self, argv: list[str]) -> None:
        words = argv[1:]
        if words == ["link", "add", DUMMY_DEVICE, "type", "dummy"]:
            if self._device:
                raise IpvsCommandError(argv, "RTNETLINK answers: File exists", 2)
            self._device = True
            return
        if words in (["link", "del", DUMMY_DEVICE], ["link", "delete", DUMMY_DEVICE]):
            if not self._device:
                raise IpvsCommandError(argv, f'Cannot find device "{DUMMY_DEVICE}"', 1)
            self._device = False
            self._addresses.clear()  # the addresses go with the device
            return
        if len(words) == 5 and words[0] in ("addr", "address") and words[3] == "dev":
            verb, prefix, device = words[1], words[2], words[4]
            if verb in ("add", "del", "delete") and device == DUMMY_DEVICE:
                self._ip_addr(argv, verb, prefix)
                return
        raise IpvsCommandError(argv, "the model knows ip link/addr on kube-ipvs0 only", 1)

    def _ip_addr(self, argv: list[str], verb: str, prefix: str) -> None:
        try:
            interface = ipaddress.ip_interface(prefix)
        except ValueError:
            message = f'any valid prefix is expected rather than "{prefix}"'
            raise IpvsCommandError(argv, message, 1) from None
        if "/" not in prefix:
            raise IpvsCommandError(argv, "the model wants an explicit prefix length", 1)
        if not self._device:
            raise IpvsCommandError(argv, f'Cannot find device "{DUMMY_DEVICE}"', 1)
        ip = interface.ip.compressed
        plen = interface.network.prefixlen
        if verb == "add":
            if ip in self._addresses:
                raise IpvsCommandError(argv, "RTNETLINK answers: File exists", 2)
            self._addresses[ip] = plen
        else:
            if self._addresses.get(ip) != plen:
                raise IpvsCommandError(
                    argv, "RTNETLINK answers: Cannot assign requested address", 2
                )
            del self._addresses[ip]


# --- the kernel check --------------------------------------------------------------------------

_IPVS_MODULE_PATH = re.compile(r"(?:^|/)ip_vs\.ko(?:\.(?:gz|xz|zst))?:?$")


def ipvs_available(modules_text: str, proc_net_ip_vs: bool = False) -> bool:
    """Whether the kernel has IPVS, from /proc/modules text (module `ip_vs` loaded), or
    /lib/modules/$(uname -r)/modules.builtin or modules.dep text (built in, or loadable), or
    the presence of /proc/net/ip_vs (which exists once IPVS is in the running kernel).

    The sync engine reads those files; on False it exits 2 with `UNAVAILABLE_MESSAGE`.
    """
    if proc_net_ip_vs:
        return True
    for line in modules_text.splitlines():
        fields = line.split()
        if fields and (fields[0] == "ip_vs" or _IPVS_MODULE_PATH.search(fields[0])):
            return True
    return False

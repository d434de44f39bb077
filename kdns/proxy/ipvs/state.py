"""The IPVS table as values: virtual services, their real servers, and what is bound to
kube-ipvs0 — what a render wants, what `ipvsadm -Sn` shows, what a diff compares.

Contract:
- `VirtualService` and `RealServer` hold what ipvsadm can set and print, normalised on
  construction (upper-case protocol, compressed addresses, real servers in `ipvsadm -S` order);
  a value ipvsadm would refuse raises ValueError.
- `IpvsState` maps (protocol, VIP, port) to services, plus kube-ipvs0's addresses and whether the
  device exists; `sorted_services` lists them in `ipvsadm -S` order (libipvs ipvs_cmp_services).
- `IpvsParseError` is the error of every reader of tool output in this package, naming the line.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kdns.proxy.routes import family_of, join_host_port

DEFAULT_SCHEDULER = "rr"  # proxier.go defaultScheduler

SCHEDULERS = frozenset(
    ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")
)


class IpvsParseError(ValueError):
    """Text that is not what `ipvsadm -Sn`, `ip addr show` or `ipset save` print."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


VirtualKey = tuple[str, str, int]  # (protocol, VIP, port), as IPVS keys a virtual service
FORWARD_METHODS = ("m", "g", "i")  # masquerade (kube-proxy's), direct routing, ipip tunnel
PROTOCOLS = ("TCP", "UDP", "SCTP")
_PROTO_NUMBER = {"TCP": 6, "UDP": 17, "SCTP": 132}


@functools.lru_cache(maxsize=1 << 17)
def norm_ip(text: str) -> str:
    # Cached: a saved table names each VIP on every one of its real servers' lines.
    return ipaddress.ip_address(text).compressed


@functools.lru_cache(maxsize=1 << 17)
def ip_sort_key(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return (address.version, int(address))


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
        object.__setattr__(self, "ip", norm_ip(self.ip))
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
        object.__setattr__(self, "ip", norm_ip(self.ip))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range 0-65535")
        netmask = self.netmask
        if netmask is not None:
            # ipvsadm parse_netmask: a dotted mask for IPv4, a prefix length 1-128 for IPv6.
            try:
                if family_of(self.ip) == 4:
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
        reals = tuple(sorted(self.reals, key=lambda r: (ip_sort_key(r.ip), r.port)))
        if len({r.key for r in reals}) != len(reals):
            raise ValueError(f"{self.describe()}: real servers repeat")
        object.__setattr__(self, "reals", reals)

    @property
    def key(self) -> VirtualKey:
        return (self.protocol, self.ip, self.port)

    @property
    def family(self) -> int:
        return family_of(self.ip)

    def describe(self) -> str:
        return f"{self.protocol} {join_host_port(self.ip, self.port)}"

    def same_settings(self, other: VirtualService) -> bool:
        """Equal apart from the real servers: nothing for `ipvsadm -E` to change."""
        return (
            self.scheduler == other.scheduler
            and self.persistence == other.persistence
            and self.netmask == other.netmask
            and self.sched_flags == other.sched_flags
            and self.one_packet == other.one_packet
        )


def service_sort_key(key: VirtualKey) -> tuple[int, int, tuple[int, int], int]:
    """libipvs ipvs_cmp_services: family (AF_INET first), protocol number, address, port."""
    protocol, ip, port = key
    return (family_of(ip), _PROTO_NUMBER[protocol], ip_sort_key(ip), port)


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
        object.__setattr__(self, "addresses", frozenset(norm_ip(a) for a in self.addresses))

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
        return [self.services[k] for k in sorted(self.services, key=service_sort_key)]

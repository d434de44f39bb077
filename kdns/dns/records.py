"""The Kubernetes DNS schema: which names and records a Service and its endpoints produce.

`service_records` is a pure function of one Service and its merged endpoints. Forward names
need no index: a name spells out its Service (`…svc.ns.svc`), so the resolver builds that one
Service's records when asked (and memoises them). Only reverse names need an index
(`ReverseIndex`: address → owning Services), updated one Service at a time, never rebuilt per
event (docs/architecture.md, rule 3). Memory therefore grows with the store, not with the
record count.

Names are lower-case and carry no trailing dot. Forward names are relative to the cluster zone
("redis.default.svc"), so one index serves every configured zone; reverse names are absolute
("97.97.97.10.in-addr.arpa"). A record whose target lies in the cluster zone says so
(`in_zone`), and the resolver appends the zone of the question (or, for PTR, the primary zone).

Schema (Kubernetes DNS-Based Service Discovery 1.1.0; where it is silent, CoreDNS's kubernetes
plugin, see docs/kubernetes-dns.md rows 1-11):
- ClusterIP: `svc.ns.svc` A/AAAA per ClusterIP (spec 2.3.1); `_port._proto.svc.ns.svc` SRV per
  named port (2.3.2), priority 0 and weight 100/N as CoreDNS; bare `svc.ns.svc` SRV for every
  port, unnamed included (CoreDNS extension); PTR per ClusterIP (2.3.3).
- Headless: `svc.ns.svc` A/AAAA per ready endpoint (2.4.1), nothing when none is ready (the spec's
  NXDOMAIN); `host.svc.ns.svc` per ready endpoint (2.4.1); SRV per ready endpoint and named port
  with the endpoint's name as target (2.4.2); PTR per ready endpoint (2.4.3).
- Endpoint names exist under ClusterIP services too, and their PTRs, as CoreDNS does (row 6, 11).
  An endpoint's name is its hostname, else its IP with dashes (`10-1-2-3`, `fd00--1`).
- ExternalName: `svc.ns.svc` CNAME to the external name (2.5); an IP-like external name gives no
  record at all (NXDOMAIN), as CoreDNS does (row 9) — a CNAME to "192.0.2.55." would be a lie.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import Counter
from collections.abc import Iterable
from itertools import compress, repeat
from operator import attrgetter, gt, itemgetter
from typing import NamedTuple

from dnslib import QTYPE

from kdns.model import Endpoint, EndpointPort, Service, ServicePort

A = QTYPE.A
AAAA = QTYPE.AAAA
CNAME = QTYPE.CNAME
PTR = QTYPE.PTR
SRV = QTYPE.SRV
TXT = QTYPE.TXT

ServiceKey = tuple[str, str]


class Record(NamedTuple):
    """One record of a name. A NamedTuple, not a frozen dataclass: a 500-endpoint Service
    makes 2,500 of them on each change, and a frozen dataclass's `__init__` (one
    `object.__setattr__` per field) was a third of that."""

    rtype: int
    value: str  # an address, a target name, or TXT text
    port: int = 0
    priority: int = 0
    weight: int = 0
    # The target (value) is relative to the cluster zone: the resolver appends the zone.
    in_zone: bool = False


# `_new(Record, (all six fields))` makes a Record without the generated `__new__`'s Python
# frame: less than half the cost, for the three records per endpoint a rebuild makes.
_new = tuple.__new__


class ServiceRecords:
    """Everything one Service contributes: forward names (zone-relative), reverse names, and
    the empty non-terminals among its forward names.

    The PTRs of its endpoints are made when `reverse` is first read, not with the rest: the
    first answer after a change of a 500-endpoint Service is a forward name's, and a reverse
    name of one of them is asked, if ever, later. Read and filled on the trio thread only (the
    resolver's memo, docs/architecture.md §6); the fill is two single-reference assignments."""

    __slots__ = ("_pending", "_reverse", "ents", "forward")

    def __init__(
        self,
        forward: dict[str, tuple[Record, ...]],
        reverse: dict[str, tuple[Record, ...]],
        ents: frozenset[str] = frozenset(),
        endpoint_ptrs: tuple[tuple[str, Record], ...] = (),
    ) -> None:
        self.forward = forward
        self.ents = ents
        self._reverse = reverse
        # (endpoint name, address record) whose PTR is not in `_reverse` yet.
        self._pending = endpoint_ptrs

    @property
    def reverse(self) -> dict[str, tuple[Record, ...]]:
        pending = self._pending
        if pending:
            reverse = dict(self._reverse)  # the ClusterIPs' PTRs first, as they were added
            for host, address in pending:
                ptr = _new(Record, (PTR, host, 0, 0, 0, True))
                _add(reverse, reverse_name(address.value), ptr)
            self._reverse = reverse
            self._pending = ()
        return self._reverse


def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa owner name of an address (RFC 1035 §3.5, RFC 3596 §2.5)."""
    if ":" not in ip:
        # The octets reversed: the model holds canonical dotted quads, and this is called once
        # per ready endpoint when a Service's records are built.
        return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    return ipaddress.ip_address(ip).reverse_pointer


def dashed(ip: str) -> str:
    """The label CoreDNS gives an endpoint without a hostname, and pod records use.

    IPv4 dots and IPv6 colons become dashes; a name may not begin or end with a dash in
    practice (RFC 952 hostnames), so a leading or trailing `::` gets a 0, as CoreDNS's
    `endpointHostname` does for the trailing case.
    """
    label = ip.replace(".", "-").replace(":", "-")
    if label.endswith("-"):
        label += "0"
    if label.startswith("-"):
        label = "0" + label
    return label


def _address(ip: str) -> Record:
    return Record(AAAA if ":" in ip else A, ip)


def _addresses(ips: list[str]) -> list[Record]:
    """An A or AAAA record per address. Every step here, and in the builders below, is a
    `map` or `zip` over all endpoints, run in C, where it can be: a 500-endpoint Service is
    rebuilt on each change of its endpoints, and a Python step per endpoint and pass was most
    of that build."""
    if ":" in "".join(ips):
        return [_new(Record, (AAAA if ":" in ip else A, ip, 0, 0, 0, False)) for ip in ips]
    return list(
        map(
            _new,
            repeat(Record),
            zip(repeat(A), ips, repeat(0), repeat(0), repeat(0), repeat(False)),
        )
    )


def endpoint_name(endpoint: Endpoint, pod_names: bool = False) -> str:
    """Its hostname, else (CoreDNS's `endpoint_pod_names`) its Pod's name when that fits in a
    label, else its dashed address."""
    if endpoint.hostname:
        return endpoint.hostname
    if pod_names and endpoint.pod and len(endpoint.pod) <= 63:
        return endpoint.pod
    return dashed(endpoint.address)


def _srv_set(entries: Iterable[tuple[str, int]]) -> tuple[Record, ...]:
    """SRV records for (target, port) pairs, deduplicated; weight = 100/N as CoreDNS."""
    unique = dict.fromkeys(entries)
    weight = 100 // len(unique) if unique else 0
    targets, ports = map(_first, unique), map(_second, unique)
    fields = zip(repeat(SRV), targets, ports, repeat(0), repeat(weight), repeat(True))
    return tuple(map(_new, repeat(Record), fields))


def _srv_name(port: EndpointPort | ServicePort, base: str) -> str:
    """`_name._proto.base` of a named port (spec 2.3.2, 2.4.2); "" for an unnamed one."""
    return f"_{port.name}._{port.protocol.lower()}.{base}" if port.name else ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def service_records(
    service: Service,
    endpoints: tuple[Endpoint, ...],
    cluster_ips: tuple[str, ...] | None = None,
    pod_names: bool = False,
    ignore_empty: bool = False,
) -> ServiceRecords:
    """`cluster_ips`, when given, stands in for the Service's ClusterIPs in its A/AAAA and PTR
    records (the userspace proxy's loopback VIP); headless and ExternalName ignore it.
    `pod_names` is CoreDNS's `endpoint_pod_names` (`endpoint_name`); `ignore_empty` its
    `ignore empty_service`: a ClusterIP Service with no ready endpoint has no forward name
    (NXDOMAIN, so a client's search list goes on), its ClusterIP PTR stays.

    Built in a few passes over the endpoints, one record object per address shared by every
    name that gives it: a 500-endpoint headless Service is rebuilt on each change of its
    endpoints, on the trio thread, and every other client waits while it is
    (docs/architecture.md §7)."""
    base = f"{service.name}.{service.namespace}.svc"
    forward: dict[str, tuple[Record, ...]] = {}
    reverse: dict[str, tuple[Record, ...]] = {}

    if service.type == "ExternalName":
        if not _is_ip(service.external_name):
            forward[base] = (Record(CNAME, service.external_name),)
        return _freeze(forward, reverse)

    # Only ready endpoints are published (spec 2.4.1 "ready"; EndpointSlice `ready`, which the
    # controller already sets true for publishNotReadyAddresses).
    ready = list(compress(endpoints, map(_ready, endpoints)))
    # Each ready endpoint's name and address record, made once: the SRV targets, the
    # endpoint names, the headless name and the PTRs all read them.
    ips = list(map(_address_of, ready))
    hosts = _hosts(ready, ips, base, pod_names)
    addresses = _addresses(ips)

    if service.headless:
        if not ready:
            return _freeze(forward, reverse)  # no ready endpoint: the name does not exist
        _headless_names(forward, base, ready, hosts, addresses)
    else:
        _cluster_ip_names(forward, reverse, service, base, cluster_ips)

    if ignore_empty and not service.headless and not ready:
        forward.clear()
    pairs = _endpoint_names(forward, hosts, addresses)
    return _freeze(forward, reverse, pairs)


def _headless_names(
    forward: dict[str, tuple[Record, ...]],
    base: str,
    ready: list[Endpoint],
    hosts: list[str],
    addresses: list[Record],
) -> None:
    """Adds a headless Service's own name (its ready endpoints' addresses, spec 2.4.1) and its
    SRV sets (spec 2.4.2), the endpoints' names as targets, to `forward`."""
    # An address listed twice (a slice rebalance, two hostnames) gives one record.
    forward[base] = tuple(dict.fromkeys(addresses))
    named: dict[str, list[tuple[str, int]]] = {}
    every: list[tuple[str, int]] = []
    # (target, port) in endpoint order, then port order, a run of endpoints at a time:
    # the endpoints of one slice share its ports tuple.
    for ports, targets in _runs(ready, hosts):
        if len(ports) == 1:
            every.extend(zip(targets, repeat(ports[0].port)))
        else:
            every.extend([(target, p.port) for target in targets for p in ports])
        for p in ports:
            if p.name:
                entries = named.setdefault(_srv_name(p, base), [])
                entries.extend(zip(targets, repeat(p.port)))
    shared: tuple[Record, ...] = ()
    for srv_name, entries in named.items():
        forward[srv_name] = _srv_set(entries)
        if entries == every:
            shared = forward[srv_name]  # one named port: the bare name's SRV set too
    if every:
        forward[base] += shared or _srv_set(every)


def _cluster_ip_names(
    forward: dict[str, tuple[Record, ...]],
    reverse: dict[str, tuple[Record, ...]],
    service: Service,
    base: str,
    cluster_ips: tuple[str, ...] | None,
) -> None:
    """Adds a ClusterIP Service's own name (its ClusterIPs, spec 2.3.1, or `cluster_ips`), its
    SRV sets (spec 2.3.2; the bare name's for every port, CoreDNS's extension) to `forward`,
    and its ClusterIPs' PTRs (spec 2.3.3) to `reverse`."""
    own: list[Record] = []
    for ip in service.cluster_ips if cluster_ips is None else cluster_ips:
        own.append(_address(ip))
        _add(reverse, reverse_name(ip), Record(PTR, base, in_zone=True))
    if own:
        forward[base] = tuple(dict.fromkeys(own))
    for port in service.ports:
        if port.name:
            forward[_srv_name(port, base)] = _srv_set([(base, port.port)])
    if service.ports:
        forward[base] = forward.get(base, ()) + _srv_set((base, p.port) for p in service.ports)


def _endpoint_names(
    forward: dict[str, tuple[Record, ...]], hosts: list[str], addresses: list[Record]
) -> tuple[tuple[str, Record], ...]:
    """Adds each ready endpoint's name and address to `forward`, and returns the (name,
    address) pairs whose PTRs `ServiceRecords.reverse` makes when first read."""
    # Endpoint names and their PTRs (made when first read), for ready endpoints of headless
    # and ClusterIP services.
    pairs = tuple(zip(hosts, addresses, strict=True))
    if len(set(hosts)) == len(hosts) and forward.keys().isdisjoint(hosts):
        forward.update(zip(hosts, zip(addresses), strict=True))  # one record each
    else:
        for host, address in pairs:
            _add(forward, host, address)
    return pairs


_hostname = attrgetter("hostname")
_ready = attrgetter("ready")
_address_of = attrgetter("address")
_ports = attrgetter("ports")
_first = itemgetter(0)
_second = itemgetter(1)
_FIRST = itemgetter(0)


def _hosts(ready: list[Endpoint], ips: list[str], base: str, pod_names: bool) -> list[str]:
    """Each ready endpoint's name below `base` (`endpoint_name`). The usual large headless
    Service (a Deployment's pods: IPv4, no hostnames) gets them all from one `replace` and one
    `split` of the joined addresses."""
    if pod_names or any(map(_hostname, ready)) or ":" in "".join(ips):
        return [f"{endpoint_name(e, pod_names)}.{base}" for e in ready]
    if not ips:
        return []
    dashes = "\n".join(ips).replace(".", "-")  # an address holds no newline
    return (dashes.replace("\n", f".{base}\n") + f".{base}").split("\n")


def _runs(
    ready: list[Endpoint], hosts: list[str]
) -> list[tuple[tuple[EndpointPort, ...], list[str]]]:
    """The endpoint names in order, cut where the ports tuple changes (from one slice to the
    next): (that slice's ports, its endpoints' names)."""
    ports = list(map(_ports, ready))
    if ports and ports.count(ports[0]) == len(ports):  # one slice, or slices of equal ports
        return [(ports[0], hosts)]
    runs: list[tuple[tuple[EndpointPort, ...], list[str]]] = []
    last: tuple[EndpointPort, ...] | None = None
    run: list[str] = []
    for endpoint, host in zip(ready, hosts, strict=True):
        if endpoint.ports is not last:
            last, run = endpoint.ports, []
            runs.append((last, run))
        run.append(host)
    return runs


def _add(table: dict[str, tuple[Record, ...]], name: str, record: Record) -> None:
    """`record` at `name`, once: almost every name gets one record, so a tuple grown on the
    rare second one costs less than a set per name."""
    held = table.get(name)
    if held is None:
        table[name] = (record,)
    elif record not in held:
        table[name] = (*held, record)


def _freeze(
    forward: dict[str, tuple[Record, ...]],
    reverse: dict[str, tuple[Record, ...]],
    endpoint_ptrs: tuple[tuple[str, Record], ...] = (),
) -> ServiceRecords:
    ents: set[str] = set()
    # Ancestors below the service name (`_tcp.svc.ns.svc`) are empty non-terminals; only
    # a name of more than four labels has one (an endpoint name is one label and the
    # Service's three, unless a Pod's name holds dots): those picked out in C.
    dots = map(str.count, forward, repeat("."))
    for name in compress(forward, map(gt, dots, repeat(3))):
        labels = name.split(".")
        for i in range(1, len(labels) - 3):
            ents.add(".".join(labels[i:]))
    return ServiceRecords(forward, reverse, frozenset(ents - forward.keys()), endpoint_ptrs)


def ptr_addresses(
    service: Service, endpoints: tuple[Endpoint, ...], cluster_ips: tuple[str, ...] | None = None
) -> frozenset[str]:
    """The addresses `service_records` gives a PTR: ClusterIPs (or `cluster_ips`, as there)
    and ready endpoint IPs.

    Cheaper than building the records; the reverse index needs only this."""
    if service.type == "ExternalName":
        return frozenset()
    if len(endpoints) < 16:  # most Services: the plain loop costs less than the `map`s' setup
        ready: Iterable[str] = [e.address for e in endpoints if e.ready]
    else:
        ready = map(_address_of, compress(endpoints, map(_ready, endpoints)))
    if service.headless:
        return frozenset(ready)
    return frozenset((*(service.cluster_ips if cluster_ips is None else cluster_ips), *ready))


def reverse_key(ip: str) -> str:
    """A sortable spelling of an address whose prefixes are the reverse zone's ancestors:
    dotted octets with a trailing dot for IPv4, 32 nibbles for IPv6."""
    if ":" not in ip:
        return ip + "."
    return ipaddress.IPv6Address(ip).exploded.replace(":", "")


def reverse_prefix(name: str) -> str | None:
    """The `reverse_key` prefix a reverse name stands for; None if it is not a reverse name."""
    if name.endswith(".in-addr.arpa"):
        octets = name[: -len(".in-addr.arpa")].split(".")
        if len(octets) > 4:
            return None
        return "".join(f"{o}." for o in reversed(octets))
    if name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) > 32 or any(len(n) != 1 for n in nibbles):
            return None
        return "".join(reversed(nibbles))
    return None


V6_RANGE = 16  # nibbles: a /64, the range a node's pods usually get


def _range_of(ip: str) -> str:
    """The `reverse_key` prefix of an address's /24 (IPv4) or /64 (IPv6)."""
    if ":" not in ip:
        return ip[: ip.rindex(".") + 1]
    return reverse_key(ip)[:V6_RANGE]


def _above(range_key: str) -> list[str]:
    """The `reverse_key` prefixes above a /24 ("10.", "10.1.") or a /64 (1 to 15 nibbles)."""
    if range_key.endswith("."):
        one = range_key.index(".") + 1
        return [range_key[:one], range_key[: range_key.index(".", one) + 1]]
    return [range_key[:i] for i in range(1, V6_RANGE)]


class ReverseIndex:
    """Which Services give each address a PTR, and which reverse names exist at all.

    Updated one Service at a time. Two Services may own one address (one IP selected by both
    gives two PTRs, as CoreDNS answers). `has_prefix` tells an empty non-terminal
    (`97.97.10.in-addr.arpa` above a known address: NODATA, RFC 8020) from a name with nothing
    below it (NXDOMAIN). Owned addresses are grouped by /24 (IPv4: a count) and /64 (IPv6:
    their keys, sorted), and every prefix above a group that has one is counted, so adding or
    removing an address costs one group's update (and the prefixes above it when the group
    appears or goes), whatever the cluster's size. One sorted list of every address, kept
    before, cost a move of the whole list per address: a 500-endpoint rollout step at 50,000
    addresses held the GIL for 2.6–11 ms of the trio thread, which the receive thread's answers
    waited for.
    """

    def __init__(self) -> None:
        # Almost every address has one owner: a tuple costs a fifth of a set.
        self.owners: dict[str, tuple[ServiceKey, ...]] = {}
        self.by_service: dict[ServiceKey, frozenset[str]] = {}
        self._v4: dict[str, int] = {}  # a /24's prefix → how many owned addresses in it
        self._v6: dict[str, list[str]] = {}  # a /64's nibbles → its addresses' keys, sorted
        self._above: dict[str, int] = {}  # a prefix above those → how many /24s or /64s

    def __len__(self) -> int:
        return len(self.owners)

    def update(self, key: ServiceKey, addresses: frozenset[str]) -> frozenset[str]:
        """Set the addresses `key` owns; returns the old ones (their PTRs may have changed)."""
        old = self.by_service.pop(key, frozenset())
        if addresses:
            self.by_service[key] = addresses
        gone = self._lose(key, old - addresses)
        came = self._gain(key, addresses - old)
        if gone:
            self._regroup(gone, -1)
        if came:
            self._regroup(came, 1)
        return old

    def _lose(self, key: ServiceKey, lost: frozenset[str]) -> list[str]:
        """Take `key` off the owners of `lost`; returns those nobody owns any more."""
        owned = self.owners
        held = list(map(owned.pop, lost))  # in the set's order, as `list(lost)` below
        if held.count((key,)) == len(held):  # `key` alone owned each: the usual case
            return list(lost)
        gone: list[str] = []
        for ip, owners in zip(lost, held, strict=True):
            if len(owners) == 1:
                gone.append(ip)
            else:
                owned[ip] = tuple(k for k in owners if k != key)
        return gone

    def _gain(self, key: ServiceKey, gained: frozenset[str]) -> list[str]:
        """Add `key` to the owners of `gained`; returns those nobody owned before."""
        owned = self.owners
        held = list(map(owned.get, gained))
        if held.count(None) == len(held):  # nobody owned any: one shared tuple for all
            owned.update(zip(gained, repeat((key,))))
            return list(gained)
        came: list[str] = []
        for ip, owners in zip(gained, held, strict=True):
            if owners is None:
                owned[ip] = (key,)
                came.append(ip)
            else:
                owned[ip] = (*owners, key)
        return came

    def _regroup(self, ips: list[str], sign: int) -> None:
        """Count `ips` in (`sign` 1) or out (-1) of their /24s and /64s, and a group that
        appears or goes in or out of the prefixes above it."""
        v6 = [ip for ip in ips if ":" in ip] if ":" in "".join(ips) else []
        v4 = [ip for ip in ips if ":" not in ip] if v6 else ips
        # Each IPv4 address's /24 (its text up to the last dot), counted in C: no Python
        # step per address of a 500-endpoint rollout.
        counts = Counter(map(_FIRST, map(str.rpartition, v4, repeat("."))))
        changed: list[str] = []  # groups that appeared or went
        for network, n in counts.items():
            group = network + "."
            before = self._v4.get(group, 0)
            count = before + sign * n
            if count:
                self._v4[group] = count
                if not before:
                    changed.append(group)
            else:
                del self._v4[group]
                changed.append(group)
        for ip in v6:
            rkey = reverse_key(ip)
            group = rkey[:V6_RANGE]
            bucket = self._v6.setdefault(group, [])
            if sign > 0:
                bisect.insort(bucket, rkey)
            else:
                del bucket[bisect.bisect_left(bucket, rkey)]
            if len(bucket) == (1 if sign > 0 else 0):
                changed.append(group)
            if not bucket:
                del self._v6[group]
        above = self._above
        for group in changed:
            for prefix in _above(group):
                count = above.get(prefix, 0) + sign
                if count:
                    above[prefix] = count
                else:
                    del above[prefix]

    def replace(self, addresses: dict[ServiceKey, frozenset[str]]) -> None:
        """Build from scratch (start-up, a relist): one sort per /64, not an insort each."""
        self.by_service = {k: v for k, v in addresses.items() if v}
        self.owners = {}
        for key, ips in self.by_service.items():
            for ip in ips:
                self.owners[ip] = (*self.owners.get(ip, ()), key)
        v4: dict[str, int] = {}
        v6: dict[str, list[str]] = {}
        for ip in self.owners:
            if ":" not in ip:
                group = ip[: ip.rindex(".") + 1]
                v4[group] = v4.get(group, 0) + 1
            else:
                rkey = reverse_key(ip)
                v6.setdefault(rkey[:V6_RANGE], []).append(rkey)
        above: dict[str, int] = {}
        for group in (*v4, *v6):
            for prefix in _above(group):
                above[prefix] = above.get(prefix, 0) + 1
        for bucket in v6.values():
            bucket.sort()
        self._v4, self._v6, self._above = v4, v6, above

    def has_prefix(self, prefix: str) -> bool:
        """Whether an owned address's `reverse_key` starts with `prefix` (`reverse_prefix`'s
        spelling: whole octets with their dots, or nibbles)."""
        if not prefix:
            return bool(self.owners)
        if prefix.endswith("."):  # IPv4
            octets = prefix.count(".")
            if octets == 4:
                return prefix[:-1] in self.owners
            return prefix in (self._v4 if octets == 3 else self._above)
        if len(prefix) < V6_RANGE:
            return prefix in self._above
        bucket = self._v6.get(prefix[:V6_RANGE], [])
        i = bisect.bisect_left(bucket, prefix)
        return i < len(bucket) and bucket[i].startswith(prefix)

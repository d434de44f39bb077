"""The Kubernetes DNS schema: which names and records a Service and its endpoints produce.

`service_records` is a pure function of one Service and its merged endpoints; `RecordIndex`
keeps the records of every Service by name and is updated one Service at a time (never a full
rebuild per event, DESIGN.md §1 rule 3).

Names are lower-case and carry no trailing dot. Forward names are relative to the cluster zone
("redis.default.svc"), so one index serves every configured zone; reverse names are absolute
("97.97.97.10.in-addr.arpa"). A record whose target lies in the cluster zone says so
(`in_zone`), and the resolver appends the zone of the question (or, for PTR, the primary zone).

Schema (Kubernetes DNS-Based Service Discovery 1.1.0; where it is silent, CoreDNS's kubernetes
plugin, see ../shared/reference/k8s-dns.md rows 1-11):
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

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import QTYPE

from kdns.model import Endpoint, Service

A = QTYPE.A
AAAA = QTYPE.AAAA
CNAME = QTYPE.CNAME
PTR = QTYPE.PTR
SRV = QTYPE.SRV
TXT = QTYPE.TXT

ServiceKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Record:
    rtype: int
    value: str  # an address, a target name, or TXT text
    port: int = 0
    priority: int = 0
    weight: int = 0
    # The target (value) is relative to the cluster zone: the resolver appends the zone.
    in_zone: bool = False


@dataclass(frozen=True, slots=True)
class ServiceRecords:
    """Everything one Service contributes: forward names (zone-relative) and reverse names."""

    forward: dict[str, tuple[Record, ...]]
    reverse: dict[str, tuple[Record, ...]]


def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa owner name of an address (RFC 1035 §3.5, RFC 3596 §2.5)."""
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


def endpoint_name(endpoint: Endpoint) -> str:
    return endpoint.hostname or dashed(endpoint.address)


def _srv_set(entries: Iterable[tuple[str, int]]) -> tuple[Record, ...]:
    """SRV records for (target, port) pairs, deduplicated; weight = 100/N as CoreDNS."""
    unique = list(dict.fromkeys(entries))
    weight = 100 // len(unique) if unique else 0
    return tuple(Record(SRV, target, port, 0, weight, in_zone=True) for target, port in unique)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def service_records(service: Service, endpoints: tuple[Endpoint, ...]) -> ServiceRecords:
    base = f"{service.name}.{service.namespace}.svc"
    forward: dict[str, list[Record]] = {}
    reverse: dict[str, list[Record]] = {}

    def add(table: dict[str, list[Record]], name: str, record: Record) -> None:
        records = table.setdefault(name, [])
        if record not in records:
            records.append(record)

    if service.type == "ExternalName":
        if not _is_ip(service.external_name):
            add(forward, base, Record(CNAME, service.external_name))
        return _freeze(forward, reverse)

    # Only ready endpoints are published (spec 2.4.1 "ready"; EndpointSlice `ready`, which the
    # controller already sets true for publishNotReadyAddresses).
    ready = [e for e in endpoints if e.ready]

    if service.headless:
        if not ready:
            return _freeze(forward, reverse)  # no ready endpoint: the name does not exist
        for endpoint in ready:
            add(forward, base, _address(endpoint.address))
        named: dict[str, list[tuple[str, int]]] = {}
        every: list[tuple[str, int]] = []
        for endpoint in ready:
            target = f"{endpoint_name(endpoint)}.{base}"
            for port in endpoint.ports:
                every.append((target, port.port))
                if port.name:
                    srv_name = f"_{port.name}._{port.protocol.lower()}.{base}"
                    named.setdefault(srv_name, []).append((target, port.port))
        for srv_name, entries in named.items():
            forward[srv_name] = list(_srv_set(entries))
        if every:
            forward.setdefault(base, []).extend(_srv_set(every))
    else:
        for ip in service.cluster_ips:
            add(forward, base, _address(ip))
            add(reverse, reverse_name(ip), Record(PTR, base, in_zone=True))
        for port in service.ports:
            if port.name:
                srv_name = f"_{port.name}._{port.protocol.lower()}.{base}"
                forward[srv_name] = list(_srv_set([(base, port.port)]))
        if service.ports:
            forward.setdefault(base, []).extend(_srv_set((base, p.port) for p in service.ports))

    # Endpoint names and their PTRs, for ready endpoints of headless and ClusterIP services.
    for endpoint in ready:
        host = f"{endpoint_name(endpoint)}.{base}"
        add(forward, host, _address(endpoint.address))
        add(reverse, reverse_name(endpoint.address), Record(PTR, host, in_zone=True))
    return _freeze(forward, reverse)


def _freeze(forward: dict[str, list[Record]], reverse: dict[str, list[Record]]) -> ServiceRecords:
    return ServiceRecords(
        {k: tuple(v) for k, v in forward.items()}, {k: tuple(v) for k, v in reverse.items()}
    )


class RecordIndex:
    """Records of every Service by name, updated one Service at a time.

    `forward[name]` and `reverse[name]` map a Service key to that Service's records at the name:
    two Services may own the same reverse name (one IP selected by both gives two PTRs, as
    CoreDNS answers). `forward_ents` / `reverse_ents` count the names below each ancestor, so an
    empty non-terminal (`_tcp.redis.default.svc`) answers NODATA, not NXDOMAIN (RFC 8020).
    """

    def __init__(self) -> None:
        self.forward: dict[str, dict[ServiceKey, tuple[Record, ...]]] = {}
        self.reverse: dict[str, dict[ServiceKey, tuple[Record, ...]]] = {}
        self.forward_ents: Counter[str] = Counter()
        self.reverse_ents: Counter[str] = Counter()
        self._by_service: dict[ServiceKey, ServiceRecords] = {}

    def __len__(self) -> int:
        return len(self._by_service)

    def records_of(self, key: ServiceKey) -> ServiceRecords | None:
        return self._by_service.get(key)

    def update(
        self, key: ServiceKey, service: Service | None, endpoints: tuple[Endpoint, ...]
    ) -> set[str]:
        """Replace one Service's records; returns the reverse names whose answer changed."""
        old = self._by_service.pop(key, None)
        new = service_records(service, endpoints) if service is not None else None
        if old == new:
            if old is not None:
                self._by_service[key] = old
            return set()
        if old is not None:
            _remove(self.forward, self.forward_ents, key, old.forward, stop=1)
            _remove(self.reverse, self.reverse_ents, key, old.reverse, stop=2)
        if new is not None:
            self._by_service[key] = new
            _add(self.forward, self.forward_ents, key, new.forward, stop=1)
            _add(self.reverse, self.reverse_ents, key, new.reverse, stop=2)
        before = old.reverse if old else {}
        after = new.reverse if new else {}
        return {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}

    def lookup_forward(self, name: str) -> list[Record] | None:
        owners = self.forward.get(name)
        if owners is None:
            return None
        return [r for records in owners.values() for r in records]

    def lookup_reverse(self, name: str) -> list[Record] | None:
        owners = self.reverse.get(name)
        if owners is None:
            return None
        return [r for records in owners.values() for r in records]


def _ancestors(name: str, stop: int) -> Iterable[str]:
    """Proper ancestors of `name`, keeping at least `stop` labels."""
    labels = name.split(".")
    for i in range(1, len(labels) - stop + 1):
        yield ".".join(labels[i:])


def _add(
    table: dict[str, dict[ServiceKey, tuple[Record, ...]]],
    ents: Counter[str],
    key: ServiceKey,
    names: dict[str, tuple[Record, ...]],
    stop: int,
) -> None:
    for name, records in names.items():
        table.setdefault(name, {})[key] = records
        for ancestor in _ancestors(name, stop):
            ents[ancestor] += 1


def _remove(
    table: dict[str, dict[ServiceKey, tuple[Record, ...]]],
    ents: Counter[str],
    key: ServiceKey,
    names: dict[str, tuple[Record, ...]],
    stop: int,
) -> None:
    for name in names:
        owners = table.get(name)
        if owners is not None:
            owners.pop(key, None)
            if not owners:
                del table[name]
        for ancestor in _ancestors(name, stop):
            ents[ancestor] -= 1
            if ents[ancestor] <= 0:
                del ents[ancestor]

"""The multicluster DNS schema (KEP-1645): the names a ServiceImport gives in its zone.

`import_records` is a pure function of one ServiceImport and the EndpointSlices imported for it
(one cluster per slice). Names are relative to the clusterset zone ("web.shop.svc"), lower-case,
without a trailing dot, as `kdns.dns.records` writes them, so the resolver answers both alike.

Schema (Kubernetes DNS-Based Multicluster Service Discovery, KEP-1645 specification.md; where it
is silent, CoreDNS's kubernetes `multicluster` option, docs/kubernetes-dns.md):
- ClusterSetIP import: `svc.ns.svc` A/AAAA per ClusterSetIP (spec 2.3.1); `_port._proto.svc.ns.svc`
  SRV per named port with the import's own name as target (2.3.2); bare `svc.ns.svc` SRV for every
  port, as the cluster-local schema does (CoreDNS extension). No name below the import (2.3.4:
  nothing may single out one cluster's backends).
- Headless import: `svc.ns.svc` A/AAAA per ready endpoint of every cluster (2.4.1), nothing when
  none is ready (the spec's NXDOMAIN); `host.clusterid.svc.ns.svc` per ready endpoint (2.4.1);
  SRV per ready endpoint and named port, target `host.clusterid.svc.ns.svc` (2.4.2).
  `clusterid.svc.ns.svc` does not exist (2.4.4): it is no empty non-terminal either, as CoreDNS
  answers it NXDOMAIN.
- No PTR records: the spec needs none where the address already has one, and CoreDNS's reverse
  lookups read local Services only.
"""

from __future__ import annotations

from collections.abc import Iterable

from kdns.dns.records import AAAA, SRV, A, Record, ServiceRecords, endpoint_name
from kdns.model import ImportSlice, ServiceImport


def _address(ip: str) -> Record:
    return Record(AAAA if ":" in ip else A, ip)


def _srv(entries: Iterable[tuple[str, int]]) -> list[Record]:
    """SRV records for (target, port) pairs, deduplicated; weight 100/N as the local schema."""
    unique = list(dict.fromkeys(entries))
    weight = 100 // len(unique) if unique else 0
    return [Record(SRV, target, port, 0, weight, in_zone=True) for target, port in unique]


def import_records(
    imported: ServiceImport, slices: tuple[ImportSlice, ...], pod_names: bool = False
) -> ServiceRecords:
    """The names `imported` gives under the clusterset zone; `pod_names` is CoreDNS's
    `endpoint_pod_names` (an endpoint without a hostname is named after its Pod)."""
    base = f"{imported.name}.{imported.namespace}.svc"
    forward: dict[str, list[Record]] = {}
    if not imported.headless:
        if imported.ips:
            forward[base] = [_address(ip) for ip in imported.ips]
            for port in imported.ports:
                if port.name:
                    srv_name = f"_{port.name}._{port.protocol.lower()}.{base}"
                    forward.setdefault(srv_name, []).extend(_srv([(base, port.port)]))
            if imported.ports:
                forward[base].extend(_srv((base, p.port) for p in imported.ports))
        return _freeze(forward)
    named: dict[str, list[tuple[str, int]]] = {}
    every: list[tuple[str, int]] = []
    for item in slices:
        for endpoint in item.endpoints:
            if not endpoint.ready:
                continue  # only ready endpoints are published (spec 2.4.1)
            address = _address(endpoint.address)
            target = f"{endpoint_name(endpoint, pod_names)}.{item.cluster_id}.{base}"
            for name in (base, target):
                records = forward.setdefault(name, [])
                if address not in records:
                    records.append(address)
            for port in endpoint.ports:
                every.append((target, port.port))
                if port.name:
                    srv_name = f"_{port.name}._{port.protocol.lower()}.{base}"
                    named.setdefault(srv_name, []).append((target, port.port))
    for srv_name, entries in named.items():
        forward[srv_name] = _srv(entries)
    if every:
        forward[base].extend(_srv(every))
    return _freeze(forward)


def _freeze(forward: dict[str, list[Record]]) -> ServiceRecords:
    # `_tcp.svc.ns.svc` is an empty non-terminal (RFC 8020: NODATA); `clusterid.svc.ns.svc` is
    # not (spec 2.4.4), so only underscore labels count.
    ents = {name.split(".", 1)[1] for name in forward if name.startswith("_")}
    return ServiceRecords(
        {k: tuple(v) for k, v in forward.items()}, {}, frozenset(ents - forward.keys())
    )

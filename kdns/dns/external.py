"""CoreDNS's k8s_external: a Service's outside addresses under an outside zone.

`external_records` is a pure function of one Service: the names it gives in a k8s_external zone,
relative to that zone ("web.shop"), lower-case, without a trailing dot, as `kdns.dns.records`
writes them, so the resolver answers them alike.

Schema (CoreDNS plugin/k8s_external README):
- `svc.ns.ZONE` A/AAAA: the Service's LoadBalancer ingress IPs (status.loadBalancer.ingress)
  and its spec.externalIPs, deduplicated; a Service with neither gives no name (NXDOMAIN).
- `_port._proto.svc.ns.ZONE` SRV per named port, target `svc.ns.ZONE`.
- Only A, AAAA and SRV are answered; any other type at a name that exists is NODATA.
- The apex (SOA, NS `ns1.APEX.ZONE`, and that name's addresses) is the resolver's: it needs the
  DNS Service's own outside addresses (`nameserver_addresses`).
"""

from __future__ import annotations

from kdns.dns.records import AAAA, SRV, A, Record
from kdns.model import Service

DNS_SERVICE = ("kube-system", "kube-dns")  # whose outside addresses the apex NS gives
SOA_SERIAL = 12345  # CoreDNS documents a static serial for this zone
SOA_TIMES = (14400, 3600, 604800)  # refresh, retry, expire, as CoreDNS's README shows


def outside_addresses(service: Service) -> tuple[str, ...]:
    """LoadBalancer ingress IPs, then externalIPs, each once."""
    return tuple(dict.fromkeys((*service.load_balancer_ips, *service.external_ips)))


def external_records(service: Service) -> dict[str, tuple[Record, ...]]:
    base = f"{service.name}.{service.namespace}"
    addresses = outside_addresses(service)
    if not addresses:
        return {}
    forward: dict[str, tuple[Record, ...]] = {
        base: tuple(Record(AAAA if ":" in ip else A, ip) for ip in addresses)
    }
    for port in service.ports:
        if port.name:
            # The target is in this zone: the resolver appends it (`in_zone`).
            srv = Record(SRV, base, port.port, 0, 100, in_zone=True)
            forward[f"_{port.name}._{port.protocol.lower()}.{base}"] = (srv,)
    return forward

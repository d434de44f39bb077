"""Why kdns answers a name the way it does: the resolver's answer, each record's source, reasons.

`explain(resolver, qname, qtype)` asks the resolver (the very call the DNS server makes) and then
walks the name the way the resolver does, reading the same store and the same per-Service
records (`Resolver.service_records`), to say where each record comes from (a Service field, an
EndpointSlice endpoint, a Pod) and why the name is NXDOMAIN or NODATA (no such namespace, no
ready endpoint, an unnamed port, pods disabled, …). `render` turns that into text for a person.

Contract:
- `Explanation.answer` is the resolver's `Answer` object itself, never a rebuilt one: what is
  explained is what is served. A question the resolver does not take (outside the zones, or a
  PTR that falls through) is explained as forwarded to the `upstreams` the caller names, or
  REFUSED when there are none — as the handler does (kdns/dns/handler.py).
- Every record of the answer, authority and additional sections gets an origin; `Reason.code`
  is a stable identifier (tests and scripts match on it), `Reason.text` is for people.
- Pure: no I/O, no clock; reads the store, never changes it (the resolver's memo of Service
  records may fill, as it does for any query).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR

from kdns.dns.records import Record, ServiceRecords, dashed, endpoint_name, reverse_prefix
from kdns.dns.resolver import (
    ANY,
    DNS_VERSION,
    MAX_CHASE,
    Answer,
    Resolver,
    ip_from_pod_label,
)
from kdns.model import Endpoint, Service

# Zone transfers are refused before the resolver is asked (kdns/dns/handler.py REFUSED_TYPES).
TRANSFER_TYPES = frozenset({QTYPE.AXFR, QTYPE.IXFR})

FORWARDED = "FORWARDED"
REFUSED = "REFUSED"
NODATA = "NODATA"

RRKey = tuple[str, int, str]  # (owner, type, rdata text), lower-case


@dataclass(frozen=True, slots=True)
class Reason:
    code: str  # stable: "no-namespace", "headless-no-ready", "unnamed-port", …
    text: str


@dataclass(frozen=True, slots=True)
class Sourced:
    """One record of the answer and where it comes from."""

    section: str  # "answer", "authority" or "additional"
    rr: RR
    origin: str


@dataclass(slots=True)
class Explanation:
    qname: str
    qtype: int
    zone: str | None  # the zone of kdns that holds the name; None when outside every zone
    # The resolver's answer, verbatim; None when kdns does not answer the name itself.
    answer: Answer | None
    # NOERROR, NODATA, NXDOMAIN, SERVFAIL, REFUSED, or FORWARDED (the upstream decides).
    outcome: str
    rcode: int | None  # None when forwarded
    authoritative: bool
    records: list[Sourced] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    upstreams: tuple[str, ...] = ()

    @property
    def codes(self) -> list[str]:
        return [r.code for r in self.reasons]

    def origins(self, section: str = "answer") -> list[str]:
        return [s.origin for s in self.records if s.section == section]


def explain(
    resolver: Resolver,
    qname: str,
    qtype: int,
    upstreams: Sequence[str] = (),
    upstreams_for: Callable[[str], Sequence[str]] | None = None,
) -> Explanation:
    """Explain the answer to `qname` (lower-case, no trailing dot) and `qtype`.

    `upstreams`: where the server would forward this name (its stub domain's servers, else the
    upstreams), as text; empty when it has nowhere to forward. `upstreams_for`: the same for
    any name — where the server resolves a CNAME target outside the zones; None: nowhere."""
    qname = qname.rstrip(".").lower()
    zone = resolver.zone_of(qname)
    if qtype in TRANSFER_TYPES:
        return Explanation(
            qname,
            qtype,
            zone,
            None,
            REFUSED,
            RCODE.REFUSED,
            False,
            reasons=[
                Reason(
                    "transfer-refused",
                    f"{QTYPE.get(qtype)}: zone transfers are not offered (as CoreDNS without its "
                    "transfer plugin)",
                )
            ],
        )
    answer = resolver.resolve(qname, qtype)
    walker = _Walker(resolver, upstreams_for)
    if zone is not None:
        walker.name(qname, qtype, zone, depth=0)
    if answer is None:
        reasons = list(walker.reasons)
        if zone is None:
            zones = ", ".join(sorted(set(resolver.forward_zones) | set(resolver.reverse_zones)))
            reasons.append(Reason("out-of-zone", f"{qname} is in none of kdns's zones ({zones})"))
        if upstreams:
            reasons.append(
                Reason(
                    "forwarded",
                    f"forwarded to upstream {', '.join(upstreams)}: the answer is the upstream's",
                )
            )
            return Explanation(
                qname, qtype, zone, None, FORWARDED, None, False, [], reasons, tuple(upstreams)
            )
        reasons.append(Reason("refused", "no upstream to forward it to: REFUSED"))
        return Explanation(qname, qtype, zone, None, REFUSED, RCODE.REFUSED, False, [], reasons)

    reasons = walker.reasons
    if answer.broken is not None:
        reasons.append(
            Reason(
                "cname-loop" if answer.broken == "loop" else "cname-too-long",
                f"the CNAME chain {'loops' if answer.broken == 'loop' else 'has more than 8 links'}"
                ": SERVFAIL (a configuration error; counted in "
                "kdns_dns_cname_chase_failures_total)",
            )
        )
    if not resolver.store.synced:
        kinds = ", ".join(resolver.store.unsynced_kinds())
        text = f"the cluster state is not synced yet (waiting for: {kinds})"
        if answer.rcode == RCODE.SERVFAIL:
            text += "; a negative answer becomes SERVFAIL until then (clients cache negatives)"
        reasons.append(Reason("unsynced", text))
    records = []
    for section, rrs in (
        ("answer", answer.answer),
        ("authority", answer.authority),
        ("additional", answer.additional),
    ):
        for rr in rrs:
            origin = walker.origins.get(_rr_key(rr))
            if origin is None and rr.rtype == QTYPE.SOA:
                origin = (
                    f"the SOA of zone {str(rr.rname).rstrip('.')} (synthesised; serial = the "
                    "time of the last change)"
                )
            records.append(Sourced(section, rr, origin or "?"))
    if answer.rcode == RCODE.NOERROR and not answer.answer:
        outcome = NODATA
    else:
        outcome = RCODE.get(answer.rcode)
    return Explanation(qname, qtype, zone, answer, outcome, answer.rcode, True, records, reasons)


# --- the walk ----------------------------------------------------------------------------------


def _rr_key(rr: RR) -> RRKey:
    return (str(rr.rname).rstrip(".").lower(), rr.rtype, str(rr.rdata).lower())


def _types(records: Iterable[Record]) -> str:
    return ", ".join(sorted({QTYPE.get(r.rtype) for r in records}))


def _ports_text(service: Service) -> str:
    if not service.ports:
        return "no ports"
    return "ports " + ", ".join(
        f"{p.name or '(unnamed)'} {p.port}/{p.protocol}" for p in service.ports
    )


def _service_text(service: Service) -> str:
    label = f"Service {service.namespace}/{service.name}"
    if service.type == "ExternalName":
        return f"{label} (ExternalName {service.external_name})"
    if service.headless:
        return f"{label} (headless; {_ports_text(service)})"
    ips = ", ".join(service.cluster_ips)
    return f"{label} ({service.type} {ips}; {_ports_text(service)})"


def _cluster_ip_field(service: Service, ip: str) -> str:
    i = service.cluster_ips.index(ip)
    return "spec.clusterIP" if i == 0 else f"spec.clusterIPs[{i}]"


@dataclass(frozen=True, slots=True)
class _Located:
    """An endpoint with the EndpointSlice it was read from."""

    slice_name: str
    endpoint: Endpoint

    def text(self, namespace: str) -> str:
        e = self.endpoint
        details = ["ready" if e.ready else "not ready"]
        if e.hostname:
            details.append(f"hostname {e.hostname}")
        if e.pod:
            details.append(f"Pod {e.pod}")
        return (
            f"EndpointSlice {namespace}/{self.slice_name} endpoint {e.address} "
            f"({', '.join(details)})"
        )


class _Walker:
    """Follows a name through the same branches as `Resolver`, collecting reasons and origins."""

    def __init__(
        self, resolver: Resolver, upstreams_for: Callable[[str], Sequence[str]] | None = None
    ) -> None:
        self.resolver = resolver
        self.upstreams_for = upstreams_for
        self.store = resolver.store
        self.reasons: list[Reason] = []
        self.origins: dict[RRKey, str] = {}

    def add(self, code: str, text: str) -> None:
        self.reasons.append(Reason(code, text))

    def origin(self, rr: RR, text: str) -> None:
        self.origins.setdefault(_rr_key(rr), text)

    def name(self, qname: str, qtype: int, zone: str, depth: int) -> None:
        if zone in self.resolver.reverse_zones:
            self._reverse(qname, qtype, zone)
        else:
            self._forward(qname, qtype, zone, depth)

    # --- forward names ---------------------------------------------------------------------

    def _forward(self, qname: str, qtype: int, zone: str, depth: int) -> None:
        rel = qname[: -len(zone) - 1] if qname != zone else ""
        labels = rel.split(".") if rel else []
        n = len(labels)
        if n == 0:
            return self._apex(qname, qtype, zone)
        last = labels[-1]
        if last == "svc" and n >= 3:
            return self._service_name(qname, qtype, zone, rel, labels, depth)
        if last == "svc":
            if n == 1:
                return self.add(
                    "empty-non-terminal",
                    f"svc.{zone} exists only as the parent of namespaces: NODATA (RFC 8020)",
                )
            return self._namespace_name(labels[0], zone)
        if last == "pod":
            return self._pod(qname, qtype, zone, labels)
        if rel == "dns-version":
            if qtype in (QTYPE.TXT, ANY):
                self.add("dns-version", f"the schema version {DNS_VERSION} (DNS spec 2.1)")
                self._origin_all(qname, "the Kubernetes DNS schema version (spec 2.1)")
            else:
                self.add("no-such-type", "dns-version has only a TXT record: NODATA")
            return None
        if rel in ("dns", "ns.dns") and self.resolver.ns_addresses:
            if rel == "ns.dns":
                self.add("nameserver", f"ns.dns.{zone} is kdns's own listening address")
                self._origin_all(qname, "kdns's own listening address (dns_addr)")
            else:
                self.add("empty-non-terminal", f"dns.{zone} is the parent of ns.dns.{zone}")
            return None
        return self.add(
            "unknown-name",
            f"{qname} is not a name kdns serves (under {zone}: svc, pod and dns-version): NXDOMAIN",
        )

    def _origin_all(self, qname: str, text: str) -> None:
        answer = self.resolver.resolve(qname, ANY, minimal_any=False)
        for rr in answer.answer if answer is not None else ():
            self.origin(rr, text)

    def _apex(self, qname: str, qtype: int, zone: str) -> None:
        target, _ = self.resolver.nameserver(zone)
        if target.startswith("kube-dns.kube-system.svc."):
            ns_origin = "the cluster DNS Service kube-system/kube-dns"
        else:
            ns_origin = "kdns itself (no Service kube-system/kube-dns is known)"
        answer = self.resolver.resolve(qname, ANY, minimal_any=False)
        for rr in answer.answer if answer is not None else ():
            if rr.rtype == QTYPE.NS:
                self.origin(rr, ns_origin)
        for rr in answer.additional if answer is not None else ():
            self.origin(rr, f"glue for the nameserver {target}: {ns_origin}")
        if qtype in (QTYPE.SOA, QTYPE.NS, ANY):
            self.add("apex", f"{zone} is the zone apex: SOA and NS")
        else:
            self.add("no-such-type", f"the zone apex {zone} has only SOA and NS: NODATA")

    def _namespace_exists(self, namespace: str) -> bool:
        return self.resolver.namespace_exists(namespace)

    def _no_namespace(self, namespace: str) -> None:
        known = sorted(self.store.namespaces)
        close = difflib.get_close_matches(namespace, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        self.add("no-namespace", f"no namespace {namespace!r}{hint}: NXDOMAIN")

    def _namespace_name(self, namespace: str, zone: str) -> None:
        if self._namespace_exists(namespace):
            self.add(
                "empty-non-terminal",
                f"namespace {namespace} exists; {namespace}.svc.{zone} is only the parent of its "
                "Services: NODATA (RFC 8020)",
            )
        else:
            self._no_namespace(namespace)

    def _service_name(
        self, qname: str, qtype: int, zone: str, rel: str, labels: list[str], depth: int
    ) -> None:
        namespace, name = labels[-2], labels[-3]
        key = (namespace, name)
        records = self.resolver.service_records(key)
        service = self.store.services.get(key)
        if records is None or service is None:
            if not self._namespace_exists(namespace):
                return self._no_namespace(namespace)
            names = sorted(n for ns, n in self.store.services if ns == namespace)
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            return self.add(
                "no-service", f"no Service {name!r} in namespace {namespace}{hint}: NXDOMAIN"
            )
        self.add("service", _service_text(service))
        base = f"{name}.{namespace}.svc"
        located = self._endpoints(key)
        here = records.forward.get(rel)
        if here is None:
            return self._missing(service, records, located, rel, base, zone)
        self._origins(qname, zone, service, records, located, here)
        cname = next((r for r in here if r.rtype == QTYPE.CNAME), None)
        if cname is not None:
            return self._external(qname, qtype, zone, cname, depth)
        if qtype != ANY and all(r.rtype != qtype for r in here):
            return self._no_such_type(service, located, rel, base, qtype, here)
        if rel == base:
            if service.headless:
                ready = [x for x in located if x.endpoint.ready]
                self.add(
                    "ready-endpoints",
                    "headless: one record per ready endpoint (spec 2.4.1): "
                    + ", ".join(x.endpoint.address for x in ready),
                )
                self._not_ready(namespace, located)
            elif not any(x.endpoint.ready for x in located):
                self.add(
                    "clusterip-without-ready",
                    "the Service has no ready endpoint; its ClusterIP is answered anyway (as "
                    "CoreDNS without `ignore empty_service`)",
                )
        elif rel.count(".") == base.count(".") + 1 and not rel.startswith("_"):
            host = rel.split(".", 1)[0]
            how = (
                "its hostname"
                if any(x.endpoint.hostname == host for x in located)
                else "its IP with dashes (it has no hostname)"
            )
            self.add(
                "endpoint-name",
                f"{host!r} is the name of a ready endpoint of the Service, by {how} (spec 2.4.1; "
                "under ClusterIP Services too, as CoreDNS)",
            )
        return None

    def _endpoints(self, key: tuple[str, str]) -> list[_Located]:
        """The Service's endpoints with their slices, in the store's merge order, deduplicated."""
        slices = sorted(
            (s for s in self.store.slices.values() if s.service_key == key), key=lambda s: s.key
        )
        seen: dict[Endpoint, _Located] = {}
        for s in slices:
            for endpoint in s.endpoints:
                seen.setdefault(endpoint, _Located(s.name, endpoint))
        return list(seen.values())

    def _not_ready(self, namespace: str, located: list[_Located]) -> None:
        skipped = [x for x in located if not x.endpoint.ready]
        if skipped:
            self.add(
                "not-ready-skipped",
                "not-ready endpoints are left out (spec 2.4.1): "
                + "; ".join(x.text(namespace) for x in skipped),
            )

    def _origins(
        self,
        qname: str,
        zone: str,
        service: Service,
        records: ServiceRecords,
        located: list[_Located],
        here: tuple[Record, ...],
    ) -> None:
        """Origins for every record at `qname`, and for the glue of its SRV targets."""
        ns = service.namespace
        label = f"Service {ns}/{service.name}"
        by_address: dict[str, list[_Located]] = {}
        for x in located:
            if x.endpoint.ready:
                by_address.setdefault(x.endpoint.address, []).append(x)

        def address_origin(ip: str) -> str:
            if not service.headless and ip in service.cluster_ips:
                return f"{label} {_cluster_ip_field(service, ip)}"
            return "; ".join(x.text(ns) for x in by_address.get(ip, ())) or "?"

        for record in here:
            rr = self.resolver.record_rr(qname, record, zone)
            if record.rtype in (QTYPE.A, QTYPE.AAAA):
                self.origin(rr, address_origin(record.value))
            elif record.rtype == QTYPE.CNAME:
                self.origin(rr, f"{label} spec.externalName")
            elif record.rtype == QTYPE.SRV:
                self.origin(rr, self._srv_origin(service, located, record))
                glue = records.forward.get(record.value, ())
                for g in glue:
                    if g.rtype in (QTYPE.A, QTYPE.AAAA):
                        grr = self.resolver.record_rr(f"{record.value}.{zone}", g, zone)
                        self.origin(
                            grr, f"glue for {record.value}.{zone}: {address_origin(g.value)}"
                        )

    def _srv_origin(self, service: Service, located: list[_Located], record: Record) -> str:
        ns = service.namespace
        base = f"{service.name}.{ns}.svc"
        if record.value == base:
            ports = [
                f"spec.ports[{i}] ({p.name or 'unnamed'} {p.port}/{p.protocol})"
                for i, p in enumerate(service.ports)
                if p.port == record.port
            ]
            return f"Service {ns}/{service.name} " + ", ".join(ports)
        host = record.value[: -len(base) - 1]
        sources = [
            x.text(ns) + f" port {record.port}"
            for x in located
            if x.endpoint.ready
            and endpoint_name(x.endpoint) == host
            and any(p.port == record.port for p in x.endpoint.ports)
        ]
        return "; ".join(sources) or "?"

    def _no_such_type(
        self,
        service: Service,
        located: list[_Located],
        rel: str,
        base: str,
        qtype: int,
        here: tuple[Record, ...],
    ) -> None:
        wanted = QTYPE.get(qtype)
        text = f"the name exists with {_types(here)} but no {wanted}: NODATA"
        if qtype in (QTYPE.A, QTYPE.AAAA) and rel == base and not service.headless:
            families = ", ".join(service.ip_families) or "none"
            text += f" (the Service's IP families: {families}; its ClusterIPs: "
            text += f"{', '.join(service.cluster_ips)})"
        elif qtype in (QTYPE.A, QTYPE.AAAA):
            family = "IPv6" if qtype == QTYPE.AAAA else "IPv4"
            text += f" (no ready {family} endpoint)"
        self.add("no-such-type", text)

    def _missing(
        self,
        service: Service,
        records: ServiceRecords,
        located: list[_Located],
        rel: str,
        base: str,
        zone: str,
    ) -> None:
        """A name at or below a Service that has no record: why."""
        ns = service.namespace
        if rel in records.ents:
            below = sorted(n for n in records.forward if n.endswith("." + rel))
            self.add(
                "empty-non-terminal",
                f"{rel}.{zone} has no record but names below it exist ("
                + ", ".join(f"{n}.{zone}" for n in below)
                + "): NODATA (RFC 8020)",
            )
            return None
        if service.type == "ExternalName":
            if rel == base:
                self.add(
                    "externalname-ip",
                    f"spec.externalName {service.external_name!r} is an IP address: no record "
                    "at all (a CNAME to an address would be wrong; CoreDNS drops it too): "
                    "NXDOMAIN",
                )
            else:
                self.add(
                    "externalname-only",
                    "an ExternalName Service has only its own name (a CNAME): NXDOMAIN",
                )
            return None
        ready = [x for x in located if x.endpoint.ready]
        if rel == base:
            # Only a headless Service can lack its own name: it has no ready endpoint.
            if not located:
                self.add(
                    "headless-no-endpoints",
                    "headless, and no EndpointSlice names this Service: NXDOMAIN (spec 2.4.1)",
                )
            else:
                self.add(
                    "headless-no-ready",
                    "headless with no ready endpoint: NXDOMAIN (spec 2.4.1)",
                )
                self._not_ready(ns, located)
            return None
        sub = rel[: -len(base) - 1].split(".")
        if len(sub) == 2 and sub[0].startswith("_") and sub[1].startswith("_"):
            return self._missing_srv(service, located, sub[0][1:], sub[1][1:])
        if len(sub) == 1:
            return self._missing_endpoint(service, located, ready, sub[0])
        self.add(
            "unknown-name",
            f"no name {rel}.{zone} below {_service_text(service)}: NXDOMAIN",
        )
        return None

    def _missing_srv(
        self, service: Service, located: list[_Located], port_name: str, proto: str
    ) -> None:
        if service.headless:
            # Headless SRV records come from the ready endpoints' ports (spec 2.4.2).
            ready = [x for x in located if x.endpoint.ready]
            if not ready:
                self.add(
                    "headless-no-ready",
                    "headless with no ready endpoint, so no SRV records (spec 2.4.2): NXDOMAIN",
                )
                return self._not_ready(service.namespace, located)
            ports = sorted({(p.name, p.protocol, p.port) for x in ready for p in x.endpoint.ports})
            where = "its ready endpoints' EndpointSlice ports"
        else:
            ports = sorted((p.name, p.protocol, p.port) for p in service.ports)
            where = "spec.ports"
        same_name = [p for p in ports if p[0] == port_name]
        unnamed = [p for p in ports if not p[0]]
        if same_name:
            protos = ", ".join(sorted({p[1] for p in same_name}))
            self.add(
                "wrong-protocol",
                f"port {port_name!r} is {protos}, not {proto.upper()}: NXDOMAIN",
            )
        elif unnamed:
            listed = ", ".join(f"{p[2]}/{p[1]}" for p in unnamed)
            self.add(
                "unnamed-port",
                f"no port named {port_name!r} in {where}; port {listed} has no name, and an "
                "unnamed port gets no _port._proto SRV name (spec 2.3.2) — an SRV query for "
                "the Service's own name lists every port: NXDOMAIN",
            )
        else:
            named = ", ".join(f"{p[0]} {p[2]}/{p[1]}" for p in ports) or "none"
            self.add(
                "no-such-port",
                f"no port named {port_name!r} in {where} (named ports: {named}): NXDOMAIN",
            )
        return None

    def _missing_endpoint(
        self, service: Service, located: list[_Located], ready: list[_Located], label: str
    ) -> None:
        ns = service.namespace
        not_ready = [
            x for x in located if not x.endpoint.ready and endpoint_name(x.endpoint) == label
        ]
        shadowed = [x for x in ready if x.endpoint.hostname and dashed(x.endpoint.address) == label]
        if not_ready:
            self.add(
                "endpoint-not-ready",
                f"{label!r} names an endpoint that is not ready, so it has no record (spec "
                "2.4.1): " + "; ".join(x.text(ns) for x in not_ready) + ": NXDOMAIN",
            )
        elif shadowed:
            self.add(
                "hostname-shadows-ip",
                f"the endpoint {shadowed[0].endpoint.address} has hostname "
                f"{shadowed[0].endpoint.hostname!r}: it is named by its hostname, not by its "
                "dashed IP (as CoreDNS): NXDOMAIN",
            )
        else:
            names = ", ".join(sorted({endpoint_name(x.endpoint) for x in ready})) or "none"
            self.add(
                "no-such-endpoint",
                f"no ready endpoint is named {label!r} (endpoint names: {names}; an endpoint "
                "without a hostname is named by its IP with dashes): NXDOMAIN",
            )
        return None

    def _external(self, qname: str, qtype: int, zone: str, cname: Record, depth: int) -> None:
        target = cname.value
        if qtype in (QTYPE.CNAME, ANY):
            self.add("externalname", f"ExternalName: CNAME to {target} (spec 2.5)")
            return None
        target_zone = self.resolver.zone_of(target)
        if target_zone is not None and depth < MAX_CHASE:
            self.add(
                "externalname",
                f"ExternalName: CNAME to {target}, which is in zone {target_zone}: kdns "
                "follows it and answers its records too (RFC 1034 §4.3.2)",
            )
            return self.name(target, qtype, target_zone, depth + 1)
        upstreams = self.upstreams_for(target) if self.upstreams_for is not None else ()
        if target_zone is None and upstreams:
            self.add(
                "externalname",
                f"ExternalName: CNAME to {target}, outside kdns's zones (spec 2.5)",
            )
            self.add(
                "chase-upstream",
                f"kdns resolves {target} {QTYPE.get(qtype)} through upstream "
                f"{', '.join(upstreams)} and answers the CNAME followed by its records, with "
                "its rcode (as CoreDNS; RFC 1034 §4.3.2): those records are the upstream's, "
                "not shown here",
            )
            return None
        self.add(
            "externalname",
            f"ExternalName: CNAME to {target}; the client's resolver follows it (kdns "
            "answers only the CNAME for a name outside its zones when it has no upstream)",
        )
        return None

    # --- pod names -------------------------------------------------------------------------

    def _pod(self, qname: str, qtype: int, zone: str, labels: list[str]) -> None:
        mode = self.resolver.pods
        n = len(labels)
        if mode == "disabled":
            return self.add(
                "pods-disabled", "pod records are disabled (config `pods: disabled`): NXDOMAIN"
            )
        if n > 3:
            return self.add(
                "unknown-name", "a pod name is IP.NAMESPACE.pod.ZONE; this has more labels"
            )
        if n == 1:
            return self.add(
                "empty-non-terminal", f"pod.{zone} is only the parent of namespaces: NODATA"
            )
        namespace = labels[-2]
        if not self.store.namespace_exists(namespace):
            return self._no_namespace(namespace)
        if n == 2:
            return self.add(
                "empty-non-terminal",
                f"namespace {namespace} exists; {namespace}.pod.{zone} is only the parent of its "
                "pod names: NODATA",
            )
        ip = ip_from_pod_label(labels[0])
        if ip is None:
            return self.add(
                "pod-not-ip",
                f"{labels[0]!r} is not an IP address with dashes (10-244-1-5, fd00-10--1): "
                "NXDOMAIN",
            )
        if mode == "verified":
            if not self._pod_verified(qname, namespace, ip):
                return None
        else:
            self.add(
                "pod-insecure",
                f"pods insecure: the address {ip} is read from the name; only the namespace "
                f"{namespace} is checked (as kube-dns and CoreDNS `pods insecure`)",
            )
            self._origin_all(qname, f"the name itself (pods insecure, namespace {namespace})")
        family = "IPv6" if ":" in ip else "IPv4"
        if qtype not in (ANY, QTYPE.AAAA if family == "IPv6" else QTYPE.A):
            self.add(
                "no-such-type",
                f"{ip} is an {family} address; the name has no {QTYPE.get(qtype)}: NODATA",
            )
        return None

    def _pod_verified(self, qname: str, namespace: str, ip: str) -> bool:
        pods = self.store.pods_by_ip.get(ip, ())
        good = [
            p
            for p in pods
            if p.namespace == namespace
            and p.phase not in ("Succeeded", "Failed", "Unknown")
            and not p.terminating
        ]
        if good:
            names = ", ".join(f"Pod {p.namespace}/{p.name} ({p.phase})" for p in good)
            self.add("pod-verified", f"pods verified: {names} has the address {ip}")
            self._origin_all(qname, f"{names} status.podIPs (pods verified)")
            return True
        others = []
        for p in pods:
            if p.namespace != namespace:
                others.append(f"Pod {p.namespace}/{p.name} has it, in another namespace")
            elif p.terminating:
                others.append(f"Pod {p.namespace}/{p.name} has it but is terminating")
            else:
                others.append(f"Pod {p.namespace}/{p.name} has it but is {p.phase}")
        detail = f" ({'; '.join(others)})" if others else ""
        self.add(
            "pod-not-found",
            f"pods verified: no running Pod in namespace {namespace} has the address "
            f"{ip}{detail}: NXDOMAIN",
        )
        return False

    # --- reverse names ---------------------------------------------------------------------

    def _reverse(self, qname: str, qtype: int, zone: str) -> None:
        if qname == zone:
            return self._apex(qname, qtype, zone)
        ip = self.resolver.reverse_ip(qname)
        if ip is None:
            full = qname.count(".") + 1 in (6, 34)
            if full:
                return self.add(
                    "unknown-name",
                    f"{qname} is not the canonical reverse name of an address: NXDOMAIN",
                )
            prefix = reverse_prefix(qname)
            if prefix is not None and self.resolver.reverse.has_prefix(prefix):
                return self.add(
                    "empty-non-terminal",
                    f"{qname} is part of the reverse name of an address kdns knows: NODATA "
                    "(RFC 8020)",
                )
            return self.add("no-ptr-owner", f"no address kdns knows lies under {qname}: NXDOMAIN")
        owners = sorted(self.resolver.reverse.owners.get(ip, ()))
        if not owners:
            return self._no_ptr_owner(ip)
        for key in owners:
            service = self.store.services.get(key)
            records = self.resolver.service_records(key)
            if service is None or records is None:
                continue
            located = self._endpoints(key)
            for record in records.reverse.get(qname, ()):
                rr = self.resolver.record_rr(qname, record, self.resolver.primary)
                base = f"{service.name}.{service.namespace}.svc"
                if record.value == base:
                    origin = f"Service {key[0]}/{key[1]} {_cluster_ip_field(service, ip)}"
                else:
                    origin = "; ".join(
                        x.text(key[0]) + f" of Service {key[0]}/{key[1]}"
                        for x in located
                        if x.endpoint.ready and x.endpoint.address == ip
                    )
                self.origin(rr, origin)
                self.add("ptr-owner", f"{ip} → {record.value}.{self.resolver.primary}: {origin}")
        if qtype not in (QTYPE.PTR, ANY):
            self.add("no-such-type", "the reverse name has only PTR records: NODATA")
        return None

    def _no_ptr_owner(self, ip: str) -> None:
        notes = []
        for (ns, name), endpoints in sorted(self.store.endpoints.items()):
            for e in endpoints:
                if e.address == ip and not e.ready:
                    notes.append(f"a not-ready endpoint of Service {ns}/{name} (no PTR)")
        for pod in self.store.pods_by_ip.get(ip, ()):
            notes.append(
                f"the address of Pod {pod.namespace}/{pod.name}, but a pod IP that no Service "
                "selects gets no PTR (as CoreDNS)"
            )
        detail = f"; it is {'; '.join(notes)}" if notes else ""
        self.add(
            "no-ptr-owner",
            f"no Service has {ip} as a ClusterIP or a ready endpoint{detail}"
            + ("" if self.resolver.reverse_fallthrough else ": NXDOMAIN"),
        )


# --- text --------------------------------------------------------------------------------------


def render(explanation: Explanation) -> str:
    """The explanation as dig-like text: question, status, sections with origins, then why."""
    e = explanation
    lines = [f";; QUESTION: {e.qname}. IN {QTYPE.get(e.qtype)}"]
    if e.outcome == FORWARDED:
        lines.append(f";; status: forwarded to {', '.join(e.upstreams)} (not kdns's to answer)")
    else:
        status = RCODE.get(e.rcode) if e.rcode is not None else e.outcome
        if e.outcome == NODATA:
            status += " (NODATA)"
        flags = "qr aa" if e.authoritative else "qr"
        counts = ", ".join(
            f"{section}: {sum(1 for s in e.records if s.section == section)}"
            for section in ("answer", "authority", "additional")
        )
        zone = f"zone {e.zone}; " if e.zone else ""
        lines.append(f";; {zone}status: {status}, flags: {flags}; {counts}")
    for section in ("answer", "authority", "additional"):
        rows = [s for s in e.records if s.section == section]
        if not rows:
            continue
        lines += ["", f";; {section.upper()} SECTION:"]
        for s in rows:
            lines.append(f"{' '.join(str(s.rr).split())}  ← {s.origin}")
    lines += ["", ";; WHY:"]
    lines += [f"- {r.text}" for r in e.reasons]
    return "\n".join(lines)


def reverse_name_of(text: str) -> str | None:
    """`10.97.97.97` → `97.97.97.10.in-addr.arpa` (as `dig -x`); None if `text` is no address."""
    try:
        return ipaddress.ip_address(text).reverse_pointer
    except ValueError:
        return None

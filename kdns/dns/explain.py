"""Why kdns answers a name the way it does: the resolver's answer, each record's source, reasons.

`explain_asked(plugins, resolver, qname, qtype)` first names the rewrite, template or hosts rule
behind an answer (their Corefile lines), as the handler runs them before the cluster zones;
`explain(resolver, qname, qtype)` asks the resolver (the very call the DNS server makes) with a
`Trace`, in which the resolver records each decision it takes and where each record it adds
comes from. Explain only puts that in words: a reason per decision, in the resolver's order, and
an origin per record (a Service field, an EndpointSlice endpoint, a Pod). It reads the store for
detail a decision does not carry — close matches for a misspelt name, the EndpointSlice of an
endpoint, why a name below a Service is missing (no ready endpoint, an unnamed port, the wrong
protocol) — but never decides what the answer is, so it cannot drift from the resolver. `render`
turns that into text for a person.

Contract:
- `Explanation.answer` is the resolver's `Answer` object itself, never a rebuilt one: what is
  explained is what is served (for a template or hosts answer: their records, as served). A
  question the resolver does not take (outside the zones, or a PTR that falls through) is
  explained as forwarded to the `upstreams` the caller names, or REFUSED when there are none —
  as the handler does (kdns/dns/handler.py).
- Every record of the answer, authority and additional sections gets an origin; `Reason.code`
  is a stable identifier (tests and scripts match on it), `Reason.text` is for people.
- Pure: no I/O, no clock; reads the store and the resolver's public methods, never changes
  them (the resolver's memo of Service records may fill, as it does for any query).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RCODE, RR

from kdns.dns.plugins import PluginAnswer, Plugins
from kdns.dns.records import Record, ServiceRecords, dashed, endpoint_name
from kdns.dns.resolver import ANY, DNS_VERSION, Answer, Resolver, Trace
from kdns.model import Endpoint, Pod, Service

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
        return _transfer_refused(qname, qtype, zone)
    trace = Trace()
    answer = resolver.resolve(qname, qtype, trace=trace)
    walker = _Renderer(resolver, upstreams_for)
    walker.run(trace)
    if answer is None:
        return _not_answered(resolver, qname, qtype, zone, list(walker.reasons), upstreams)

    reasons = walker.reasons
    reasons.extend(_answer_reasons(resolver, answer))
    records = _sourced(answer, walker.origins)
    if answer.rcode == RCODE.NOERROR and not answer.answer:
        outcome = NODATA
    else:
        outcome = RCODE.get(answer.rcode)
    return Explanation(qname, qtype, zone, answer, outcome, answer.rcode, True, records, reasons)


def _transfer_refused(qname: str, qtype: int, zone: str | None) -> Explanation:
    """AXFR and IXFR: refused before the resolver is asked, as the handler does."""
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


def _not_answered(
    resolver: Resolver,
    qname: str,
    qtype: int,
    zone: str | None,
    reasons: list[Reason],
    upstreams: Sequence[str],
) -> Explanation:
    """A question the resolver does not take: forwarded to `upstreams`, else REFUSED; `reasons`
    (the trace's, in words) get why."""
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


def _answer_reasons(resolver: Resolver, answer: Answer) -> list[Reason]:
    """What the trace does not say about an answer: a broken CNAME chain, an unsynced store."""
    reasons: list[Reason] = []
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
    return reasons


def _sourced(answer: Answer, origins: dict[RRKey, str]) -> list[Sourced]:
    """Every record of the answer's three sections with its origin from the trace; an SOA,
    which the trace does not name, as the zone's synthesised one."""
    records: list[Sourced] = []
    for section, rrs in (
        ("answer", answer.answer),
        ("authority", answer.authority),
        ("additional", answer.additional),
    ):
        for rr in rrs:
            origin = origins.get(_rr_key(rr))
            if origin is None and rr.rtype == QTYPE.SOA:
                origin = (
                    f"the SOA of zone {str(rr.rname).rstrip('.')} (synthesised; serial = the "
                    "time of the last change)"
                )
            records.append(Sourced(section, rr, origin or "?"))
    return records


def explain_asked(
    plugins: Plugins | None,
    resolver: Resolver,
    qname: str,
    qtype: int,
    upstreams_for: Callable[[str], Sequence[str]] | None = None,
) -> Explanation:
    """`explain`, behind the plugins the handler runs first (kdns/dns/plugins.py): a rewrite
    names its rules' Corefile lines and explains the renamed question; a template or hosts
    answer names the rule or file it came from."""
    qname = qname.rstrip(".").lower()
    reasons: list[Reason] = []
    name = qname
    rewritten = plugins.rewrite(qname) if plugins is not None else None
    if rewritten is not None:
        lines = ", ".join(r.where or "dns.rewrites" for r in rewritten.rules)
        if not rewritten.name:
            why = Reason("rewrite-invalid", f"the rewrite rule at {lines} makes no valid name")
            return Explanation(
                qname, qtype, None, None, "SERVFAIL", RCODE.SERVFAIL, False, [], [why]
            )
        reasons.append(
            Reason(
                "rewritten",
                f"rewritten to {rewritten.name} by the rewrite rule at {lines}; the client gets "
                f"its question back, answer names renamed as the rule says",
            )
        )
        name = rewritten.name
    found = plugins.answer(name, qtype) if plugins is not None else None
    if found is not None:
        return _plugin_answered(found, resolver, name, qtype, reasons)
    upstreams = tuple(upstreams_for(name)) if upstreams_for is not None else ()
    explained = explain(resolver, name, qtype, upstreams, upstreams_for)
    explained.reasons[:0] = reasons
    return explained


def _plugin_answered(
    found: PluginAnswer, resolver: Resolver, name: str, qtype: int, reasons: list[Reason]
) -> Explanation:
    """The explanation of an answer a template or hosts rule gave (`found`) for `name`, after
    `reasons` (a rewrite's): each record from the rule or file it names."""
    answer = Answer(found.rcode, found.answer, found.authority, found.additional)
    records = [
        Sourced(section, rr, found.origin)
        for section, rrs in (
            ("answer", found.answer),
            ("authority", found.authority),
            ("additional", found.additional),
        )
        for rr in rrs
    ]
    reasons.append(Reason(found.plugin, f"answered by {found.origin}, before the cluster zones"))
    outcome = (
        NODATA if found.rcode == RCODE.NOERROR and not found.answer else RCODE.get(found.rcode)
    )
    zone = resolver.zone_of(name)
    return Explanation(name, qtype, zone, answer, outcome, found.rcode, True, records, reasons)


# --- the trace, in words ---------------------------------------------------------------------


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


class _Renderer:
    """The resolver's trace in words: a reason per decision it took (in its order), an origin
    per record it added. Reads the store for what a decision does not carry — close matches,
    the EndpointSlice of an endpoint, the endpoints left out — but never decides the answer:
    that is the resolver's, recorded in the trace."""

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

    def run(self, trace: Trace) -> None:
        for code, *facts in trace.steps:
            getattr(self, "_step_" + code.replace("-", "_"))(*facts)
        for rr, (code, *facts) in trace.origins:
            origin = getattr(self, "_from_" + code.replace("-", "_"))(*facts)
            self.origins.setdefault(_rr_key(rr), origin)

    # --- decisions at forward names --------------------------------------------------------

    def _step_apex(self, zone: str, has_type: bool) -> None:
        if has_type:
            self.add("apex", f"{zone} is the zone apex: SOA and NS")
        else:
            self.add("no-such-type", f"the zone apex {zone} has only SOA and NS: NODATA")

    def _step_svc_parent(self, zone: str) -> None:
        self.add(
            "empty-non-terminal",
            f"svc.{zone} exists only as the parent of namespaces: NODATA (RFC 8020)",
        )

    def _step_namespace_name(self, namespace: str, zone: str, exists: bool) -> None:
        if exists:
            self.add(
                "empty-non-terminal",
                f"namespace {namespace} exists; {namespace}.svc.{zone} is only the parent of its "
                "Services: NODATA (RFC 8020)",
            )
        else:
            self._no_namespace(namespace)

    def _step_dns_version(self, has_type: bool) -> None:
        if has_type:
            self.add("dns-version", f"the schema version {DNS_VERSION} (DNS spec 2.1)")
        else:
            self.add("no-such-type", "dns-version has only a TXT record: NODATA")

    def _step_nameserver(self, zone: str) -> None:
        self.add("nameserver", f"ns.dns.{zone} is kdns's own listening address")

    def _step_dns_parent(self, zone: str, qname: str) -> None:
        self.add("empty-non-terminal", f"dns.{zone} is the parent of ns.dns.{zone}")

    def _step_unknown(self, zone: str, qname: str) -> None:
        self.add(
            "unknown-name",
            f"{qname} is not a name kdns serves (under {zone}: svc, pod and dns-version): NXDOMAIN",
        )

    def _no_namespace(self, namespace: str) -> None:
        known = sorted(self.store.namespaces)
        close = difflib.get_close_matches(namespace, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        self.add("no-namespace", f"no namespace {namespace!r}{hint}: NXDOMAIN")

    # --- decisions at Service names ---------------------------------------------------------

    def _step_service_name(self, key: tuple[str, str], rel: str, zone: str, known: bool) -> None:
        namespace, name = key
        service = self.store.services.get(key)
        records = self.resolver.service_records(key)
        if not known or service is None or records is None:
            if not self.resolver.namespace_exists(namespace):
                return self._no_namespace(namespace)
            names = sorted(n for ns, n in self.store.services if ns == namespace)
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            return self.add(
                "no-service", f"no Service {name!r} in namespace {namespace}{hint}: NXDOMAIN"
            )
        self.add("service", _service_text(service))
        if rel not in records.forward:
            base = f"{name}.{namespace}.svc"
            self._missing(service, records, self._endpoints(key), rel, base, zone)
        return None

    # --- clusterset (KEP-1645) and k8s_external names -----------------------------------------

    def _step_import_name(self, key: tuple[str, str], rel: str, zone: str, known: bool) -> None:
        namespace, name = key
        imported = self.store.imports.get(key)
        if imported is None:
            return self.add(
                "no-import",
                f"no ServiceImport {name!r} in namespace {namespace} ({zone}): NXDOMAIN",
            )
        ips = ", ".join(imported.ips) or "none"
        clusters = sorted({s.cluster_id for s in self.store.import_slices.get(key, ())})
        self.add(
            "import",
            f"ServiceImport {namespace}/{name}: {imported.type}, ClusterSetIPs {ips}, "
            f"endpoints from clusters {', '.join(clusters) or 'none'}",
        )
        records = self.resolver.import_records(key)
        if records is not None and rel not in records.forward:
            self.add("no-import-name", f"{rel}.{zone} is no name of it (KEP-1645 §2.3-2.4)")
        return None

    def _step_import_records(
        self, key: tuple[str, str], rel: str, qtype: int, here: tuple[Record, ...]
    ) -> None:
        if qtype != ANY and all(r.rtype != qtype for r in here):
            have = ", ".join(sorted({QTYPE.get(r.rtype) for r in here}))
            self.add("no-such-type", f"the name has {have}, not {QTYPE.get(qtype)}: NODATA")

    def _from_import(self, key: tuple[str, str], record: Record, zone: str) -> str:
        label = f"ServiceImport {key[0]}/{key[1]}"
        if record.rtype == QTYPE.SRV:
            return f"{label} port {record.port} (target {record.value}.{zone})"
        imported = self.store.imports.get(key)
        if imported is not None and record.value in imported.ips:
            return f"{label} spec.ips"
        clusters = [
            s.cluster_id
            for s in self.store.import_slices.get(key, ())
            if any(e.address == record.value for e in s.endpoints)
        ]
        return f"{label}: an endpoint imported from cluster {', '.join(clusters)}"

    def _from_import_glue(self, key: tuple[str, str], target: str, zone: str, ip: str) -> str:
        return f"glue for {target}.{zone}: ServiceImport {key[0]}/{key[1]}"

    def _step_external_name(
        self, zone: str, key: tuple[str, str] | None, rel: str, found: bool
    ) -> None:
        if key is None or found:
            return None
        service = self.store.services.get(key)
        if service is None:
            return self.add("no-service", f"no Service {key[1]!r} in namespace {key[0]}: NXDOMAIN")
        return self.add(
            "no-outside-address",
            f"Service {key[0]}/{key[1]} has no LoadBalancer ingress IP or externalIP "
            f"(k8s_external {zone}): no name",
        )

    def _from_external(self, key: tuple[str, str], record: Record, zone: str) -> str:
        service = self.store.services[key]
        if record.rtype == QTYPE.SRV:
            return f"Service {key[0]}/{key[1]} port {record.port} (k8s_external {zone})"
        if record.value in service.load_balancer_ips:
            return f"Service {key[0]}/{key[1]} status.loadBalancer.ingress (k8s_external {zone})"
        return f"Service {key[0]}/{key[1]} spec.externalIPs (k8s_external {zone})"

    def _step_externalname(
        self, target: str, qtype: int, target_zone: str | None, broken: str | None
    ) -> None:
        if target_zone is not None and broken is None:
            self.add(
                "externalname",
                f"ExternalName: CNAME to {target}, which is in zone {target_zone}: kdns "
                "follows it and answers its records too (RFC 1034 §4.3.2)",
            )
            return None
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

    def _step_records(
        self, key: tuple[str, str], rel: str, qtype: int, here: tuple[Record, ...]
    ) -> None:
        """The name has records; which kind of name it is, or why it has none of `qtype`."""
        service = self.store.services[key]
        cname = next((r for r in here if r.rtype == QTYPE.CNAME), None)
        if cname is not None:  # asked for the CNAME itself (or ANY): not followed
            self.add("externalname", f"ExternalName: CNAME to {cname.value} (spec 2.5)")
            return None
        located = self._endpoints(key)
        base = f"{service.name}.{service.namespace}.svc"
        if qtype != ANY and all(r.rtype != qtype for r in here):
            return self._no_such_type(service, rel, base, qtype, here)
        if rel == base:
            if service.headless:
                ready = [x for x in located if x.endpoint.ready]
                self.add(
                    "ready-endpoints",
                    "headless: one record per ready endpoint (spec 2.4.1): "
                    + ", ".join(x.endpoint.address for x in ready),
                )
                self._not_ready(service.namespace, located)
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

    # --- origins ------------------------------------------------------------------------------

    def _address_origin(self, key: tuple[str, str], ip: str) -> str:
        service = self.store.services[key]
        if not service.headless and ip in service.cluster_ips:
            return f"Service {key[0]}/{key[1]} {_cluster_ip_field(service, ip)}"
        located = self._endpoints(key)
        sources = [x.text(key[0]) for x in located if x.endpoint.ready and x.endpoint.address == ip]
        return "; ".join(sources) or "?"

    def _from_record(self, key: tuple[str, str], record: Record, zone: str) -> str:
        service = self.store.services[key]
        if record.rtype == QTYPE.CNAME:
            return f"Service {key[0]}/{key[1]} spec.externalName"
        if record.rtype == QTYPE.SRV:
            return self._srv_origin(service, self._endpoints(key), record)
        return self._address_origin(key, record.value)

    def _from_glue(self, key: tuple[str, str], target: str, zone: str, ip: str) -> str:
        return f"glue for {target}.{zone}: {self._address_origin(key, ip)}"

    def _from_ptr(self, key: tuple[str, str], record: Record, ip: str) -> str:
        service = self.store.services[key]
        if record.value == f"{service.name}.{service.namespace}.svc":
            return f"Service {key[0]}/{key[1]} {_cluster_ip_field(service, ip)}"
        return "; ".join(
            x.text(key[0]) + f" of Service {key[0]}/{key[1]}"
            for x in self._endpoints(key)
            if x.endpoint.ready and x.endpoint.address == ip
        )

    @staticmethod
    def _ns_origin(target: str) -> str:
        if target.startswith("kube-dns.kube-system.svc."):
            return "the cluster DNS Service kube-system/kube-dns"
        return "kdns itself (no Service kube-system/kube-dns is known)"

    def _from_nameserver(self, target: str) -> str:
        return self._ns_origin(target)

    def _from_ns_glue(self, target: str, ip: str) -> str:
        return f"glue for the nameserver {target}: {self._ns_origin(target)}"

    def _from_dns_version(self) -> str:
        return "the Kubernetes DNS schema version (spec 2.1)"

    def _from_dns_addr(self, ip: str) -> str:
        return "kdns's own listening address (dns_addr)"

    def _from_pod(self, mode: str, namespace: str, ip: str) -> str:
        if mode == "verified":
            return f"{self._pod_names(namespace, ip)} status.podIPs (pods verified)"
        return f"the name itself (pods insecure, namespace {namespace})"

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
        """A name at or below a Service that has no record: why, by what the name is (an
        empty non-terminal, an ExternalName's, the Service's own, an SRV name, an
        endpoint's, or one it never has)."""
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
            return self._missing_externalname(service, rel == base)
        if rel == base:
            return self._missing_headless(service, located)
        sub = rel[: -len(base) - 1].split(".")
        if len(sub) == 2 and sub[0].startswith("_") and sub[1].startswith("_"):
            return self._missing_srv(service, located, sub[0][1:], sub[1][1:])
        if len(sub) == 1:
            ready = [x for x in located if x.endpoint.ready]
            return self._missing_endpoint(service, located, ready, sub[0])
        self.add(
            "unknown-name",
            f"no name {rel}.{zone} below {_service_text(service)}: NXDOMAIN",
        )
        return None

    def _missing_externalname(self, service: Service, own_name: bool) -> None:
        """An ExternalName Service's name with no record: its own (`own_name`), whose
        spec.externalName is an IP address, or one below it, which it never has."""
        if own_name:
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

    def _missing_headless(self, service: Service, located: list[_Located]) -> None:
        """A Service's own name with no record: only a headless Service can lack it, when it
        has no ready endpoint (spec 2.4.1)."""
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
            self._not_ready(service.namespace, located)

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

    # --- decisions at pod names ------------------------------------------------------------

    def _step_pod(self, kind: str, zone: str, *facts: Any) -> None:
        if kind == "disabled":
            self.add(
                "pods-disabled", "pod records are disabled (config `pods: disabled`): NXDOMAIN"
            )
        elif kind == "too-long":
            self.add("unknown-name", "a pod name is IP.NAMESPACE.pod.ZONE; this has more labels")
        elif kind == "parent":
            self.add("empty-non-terminal", f"pod.{zone} is only the parent of namespaces: NODATA")
        elif kind == "no-namespace":
            self._no_namespace(facts[0])
        elif kind == "namespace":
            self.add(
                "empty-non-terminal",
                f"namespace {facts[0]} exists; {facts[0]}.pod.{zone} is only the parent of its "
                "pod names: NODATA",
            )
        elif kind == "not-ip":
            self.add(
                "pod-not-ip",
                f"{facts[1]!r} is not an IP address with dashes (10-244-1-5, fd00-10--1): NXDOMAIN",
            )
        elif kind == "insecure":
            namespace, ip = facts
            self.add(
                "pod-insecure",
                f"pods insecure: the address {ip} is read from the name; only the namespace "
                f"{namespace} is checked (as kube-dns and CoreDNS `pods insecure`)",
            )
        elif kind == "verified":
            namespace, ip = facts
            names = self._pod_names(namespace, ip)
            self.add("pod-verified", f"pods verified: {names} has the address {ip}")
        elif kind == "not-verified":
            self._pod_not_found(*facts)
        elif kind == "no-such-type":
            _, ip, qtype = facts
            family = "IPv6" if ":" in ip else "IPv4"
            self.add(
                "no-such-type",
                f"{ip} is an {family} address; the name has no {QTYPE.get(qtype)}: NODATA",
            )

    def _good_pods(self, namespace: str, ip: str) -> list[Pod]:
        # As the resolver's `pods verified` check: in the namespace, neither finished nor
        # terminating.
        return [
            p
            for p in self.store.pods_by_ip.get(ip, ())
            if p.namespace == namespace
            and p.phase not in ("Succeeded", "Failed", "Unknown")
            and not p.terminating
        ]

    def _pod_names(self, namespace: str, ip: str) -> str:
        return ", ".join(
            f"Pod {p.namespace}/{p.name} ({p.phase})" for p in self._good_pods(namespace, ip)
        )

    def _pod_not_found(self, namespace: str, ip: str) -> None:
        others = []
        for p in self.store.pods_by_ip.get(ip, ()):
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

    # --- decisions at reverse names --------------------------------------------------------

    def _step_no_ptr(self, qname: str, ip: str | None, full: bool, exists: bool) -> None:
        if ip is not None:
            return self._no_ptr_owner(ip)
        if full:
            return self.add(
                "unknown-name",
                f"{qname} is not the canonical reverse name of an address: NXDOMAIN",
            )
        if exists:
            return self.add(
                "empty-non-terminal",
                f"{qname} is part of the reverse name of an address kdns knows: NODATA (RFC 8020)",
            )
        return self.add("no-ptr-owner", f"no address kdns knows lies under {qname}: NXDOMAIN")

    def _step_ptr(self, ip: str, qtype: int, records: list[tuple[tuple[str, str], Record]]) -> None:
        for key, record in records:
            origin = self._from_ptr(key, record, ip)
            self.add("ptr-owner", f"{ip} → {record.value}.{self.resolver.primary}: {origin}")
        if qtype not in (QTYPE.PTR, ANY):
            self.add("no-such-type", "the reverse name has only PTR records: NODATA")

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

"""Authoritative answers for the cluster zones: NOERROR, NODATA, NXDOMAIN or SERVFAIL — or None.

`Resolver.resolve(qname, qtype)` answers a question from the store, or returns None when the
name is in none of our zones (the caller forwards or refuses it). A forward name spells out its
Service, whose records are built on demand and memoised; reverse names go through the
`ReverseIndex`. `Resolver.apply(change)` keeps both up to date after a store change and returns
the cache tags whose answers may have changed.

Contract:
- Pure: no I/O, no clock; answers are dnslib RRs owned by lower-case names, so the wire layer
  can patch the client's spelling of the question in (CoreDNS echoes the query's case).
- A Service of `interpreter.LARGE_BUILD` endpoints or more has its records built, and its
  change applied (not in a bulk change), and an RRset of as many records is answered, under
  `interpreter.handing_over()`: a shorter switch interval for those milliseconds of Python
  (and, on the trio thread, for the rest of its step), set back after, also on an exception,
  so the UDP receive thread answers meanwhile. A name such a Service does not have, or a
  small RRset of it, is answered as before. Scheduling only: no answer changes.
- NXDOMAIN and NODATA carry the zone's SOA in the authority section and set AA (RFC 2308 §3).
  An empty non-terminal is NODATA, never NXDOMAIN (RFC 8020).
- Before the store has synced every watched kind, a negative answer becomes SERVFAIL (clients
  cache negatives; a name that exists must never be denied), as CoreDNS's kubernetes plugin does.
- Every answer names the tags of the names it read (`Answer.tags`), so a cached copy is dropped
  exactly when one of them changes (docs/architecture.md §7).
- A CNAME is followed inside our zones (RFC 1034 §4.3.2); a target outside them is named in
  `Answer.chase` for the caller to resolve upstream. A loop, or a chain of more than
  `MAX_CHASE` links, is SERVFAIL (`Answer.broken` says which), never a partial chain.
- ANY gets one RRset of the name (RFC 8482 §4.1), not every record it has.
- `resolve(..., trace=Trace())` also records why (each decision, each record's origin), for
  `kdns explain`; the DNS path passes no trace.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from typing import Any

from cachetools import LRUCache
from dnslib import AAAA as AAAA_RD
from dnslib import CNAME as CNAME_RD
from dnslib import NS as NS_RD
from dnslib import PTR as PTR_RD
from dnslib import QTYPE, RCODE, RR, SOA, SRV, TXT, DNSLabel
from dnslib import A as A_RD

from kdns.config import Config
from kdns.dns import external, pack
from kdns.dns.multicluster import import_records
from kdns.dns.records import (
    Record,
    ReverseIndex,
    ServiceRecords,
    ptr_addresses,
    reverse_name,
    reverse_prefix,
    service_records,
)
from kdns.dns.srvparts import srv_rrset
from kdns.dns.wireparts import address_bytes, labels, name_parts
from kdns.interpreter import LARGE_BUILD, handing_over
from kdns.model import Endpoint, Service
from kdns.store import Change, Store

ANY = QTYPE.ANY
# Plain ints: `QTYPE.A` is a Python-level attribute lookup (dnslib's Bimap), six per endpoint of
# a large answer.
_A, _AAAA, _SRV, _CNAME = pack.A, pack.AAAA, pack.SRV, pack.CNAME
DNS_VERSION = "1.1.0"  # Kubernetes DNS-Based Service Discovery, schema version (spec §2.1)
DNS_VERSION_TTL = 28800  # the spec's example, and what CoreDNS serves
MAX_CHASE = 8  # CNAME links one answer may hold; a longer chain is SERVFAIL
MAX_LABEL = 63  # octets (RFC 1035 §2.3.4)
SOA_TIMES = (7200, 1800, 86400)  # refresh, retry, expire: CoreDNS's synthesised SOA

Tag = tuple[str, ...]
Key = tuple[str, str]  # a Service's: namespace, name
APEX_TAG: Tag = ("apex",)
ZONE_TAG: Tag = ("zone",)
POD_TAG: Tag = ("pod",)
REVERSE_ENT_TAG: Tag = ("rev-ent",)
ALL_TAG: Tag = ("*",)  # every cached answer
BULK = 256  # Services changed at once beyond which the resolver rebuilds instead of updating


class Trace:
    """Why an answer is what it is, for `kdns explain`: the decisions the resolver took, in
    order (`steps`: a code and its facts), and where each record came from (`origins`: the RR
    and a code and its facts). Filled only when a caller passes one to `resolve`; the DNS path
    passes None and pays one `is None` test per decision on the slow path (never on a cache hit).
    """

    __slots__ = ("origins", "steps")

    def __init__(self) -> None:
        self.steps: list[tuple[Any, ...]] = []
        self.origins: list[tuple[RR, tuple[Any, ...]]] = []

    def step(self, code: str, *facts: Any) -> None:
        self.steps.append((code, *facts))

    def origin(self, rr: RR, code: str, *facts: Any) -> None:
        self.origins.append((rr, (code, *facts)))


@dataclass(slots=True)
class Answer:
    rcode: int = RCODE.NOERROR
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    tags: set[Tag] = field(default_factory=set)
    cacheable: bool = True
    fallthrough: bool = False  # not ours after all: forward it
    # The answer ends in a CNAME to `chase`, a name in none of our zones: the caller resolves
    # it through the upstreams and appends its records (RFC 1034 §4.3.2 step 3a), as CoreDNS
    # does for an ExternalName; with no upstream the CNAME alone is the answer.
    chase: str | None = None
    # Why a CNAME chain was not followed to its end ("loop", "too long"): the answer is SERVFAIL.
    broken: str | None = None
    trace: Trace | None = None  # explain's record of the decisions; None when serving
    # A Service's A, AAAA and SRV records (and SRV glue) of the name asked come as `pack.Rec`,
    # not dnslib RRs: what the handler asks for, to encode large answers quickly.
    packed: bool = False


def service_tag(namespace: str, name: str) -> Tag:
    return ("svc", namespace, name)


def import_tag(namespace: str, name: str) -> Tag:
    return ("import", namespace, name)


def namespace_tag(namespace: str) -> Tag:
    return ("ns", namespace)


REVERSE = "ptr"


def reverse_tag(ip: str) -> Tag:
    return (REVERSE, ip)


@lru_cache(maxsize=8192)
def dns_name(name: str) -> DNSLabel:
    """`DNSLabel(name)`, without its IDNA pass for the usual name (ASCII, no escapes, labels of
    1-63 octets), which that pass leaves as it is: a 500-endpoint answer builds 1,500 names.
    Kept (a few MiB at most): an SRV target is also its glue's owner, and a rollout keeps most
    endpoint names. Answers share the objects; nothing mutates a label."""
    if name.isascii() and "\\" not in name:
        labels = tuple(name.encode().split(b"."))
        if labels and not labels[-1]:
            labels = labels[:-1]  # the root
        if all(0 < len(label) <= MAX_LABEL for label in labels):
            return DNSLabel(labels)
    return DNSLabel(name)


_RR_HEAD = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_SRV_TAIL = struct.Struct("!HHIHHHH")  # the same, then priority, weight, port


def ip_from_pod_label(label: str) -> str | None:
    """`10-244-1-10` → 10.244.1.10, `fd00-10--1` → fd00:10::1 (CoreDNS's reading,
    docs/kubernetes-dns.md row 12)."""
    if label.count("-") == 3 and "--" not in label:
        text = label.replace("-", ".")
    else:
        text = label.replace("-", ":")
    if "%" in text:
        return None  # a scoped address (fe80::1%eth0) is no pod IP
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


class Resolver:
    def __init__(
        self,
        store: Store,
        config: Config,
        ns_addresses: tuple[str, ...] = (),
        memo_size: int = 4096,
        reverse_fallthrough: bool = False,
        service_addresses: Callable[[Service], tuple[str, ...]] | None = None,
    ) -> None:
        self.store = store
        # What a ClusterIP Service's A/AAAA and PTR records give instead of its ClusterIPs (the
        # userspace proxy's loopback VIPs); None: the ClusterIPs. Whoever changes its answers
        # passes the affected Services to `apply`.
        self.service_addresses = service_addresses
        self.reverse = ReverseIndex()
        # Records of recently asked Services; dropped per Service when it changes.
        self._memo: LRUCache[tuple[str, str], ServiceRecords] = LRUCache(maxsize=memo_size)
        self._import_memo: LRUCache[tuple[str, str], ServiceRecords] = LRUCache(maxsize=memo_size)
        self._known: set[tuple[str, str]] = set()
        self._soa_memo: dict[str, tuple[int, RR]] = {}  # zone → (serial, its SOA)
        self._soa_names: dict[str, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
        self._services_per_namespace: Counter[str] = Counter()
        self.ttl = config.dns.ttl
        self._options = config.dns  # endpoint_pod_names, noendpoints, ignore_empty_service
        self.pods = config.dns.pods
        self.forward_zones = config.dns.forward_zones
        self.reverse_zones = config.dns.reverse_zones
        # Clusterset zones (KEP-1645): their names come from ServiceImports, not Services. Served
        # even when `zones` leaves them out (the Corefile translation always lists them there).
        self.multicluster_zones = frozenset(config.dns.multicluster)
        # CoreDNS's k8s_external: outside zones giving Services' outside addresses.
        self.external_zones = frozenset(config.dns.external_zones)
        self.external_apex = config.dns.external_apex
        self.external_ttl = config.dns.external_ttl
        # Longest zone first, so "sub.cluster.local" wins over "cluster.local".
        self._zones = sorted(
            {*config.dns.zones, *self.multicluster_zones, *self.external_zones},
            key=len,
            reverse=True,
        )
        self._zone_suffixes = tuple((zone, "." + zone) for zone in self._zones)
        # Zones whose names `_forward` answers from Services (`certainly_absent`).
        self._service_zones = frozenset(self._zones) - (
            self.external_zones | set(self.reverse_zones) | self.multicluster_zones
        )
        self.primary = self.forward_zones[0] if self.forward_zones else "cluster.local"
        self.ns_addresses = ns_addresses
        # A PTR for an address no Service owns goes upstream instead of NXDOMAIN (CoreDNS's
        # `fallthrough in-addr.arpa ip6.arpa`), when there is an upstream to ask.
        self.reverse_fallthrough = reverse_fallthrough
        self._rebuild()

    # --- keeping up with the store -----------------------------------------------------------

    def apply(self, change: Change) -> set[Tag]:
        if len(change.services) > BULK:
            return self._apply_bulk(change)
        tags: set[Tag] = {APEX_TAG}
        reverse_changed = False
        for key in change.services:
            self._memo.pop(key, None)
            service = self.store.services.get(key)
            endpoints = self._endpoints(key)
            # A large Service's addresses and reverse names are a pass over its endpoints: the
            # UDP receive thread gets the GIL after 0.1 ms meanwhile (kdns/interpreter.py). Not
            # in a bulk change (a relist), where a short interval lost queries.
            with handing_over() if len(endpoints) >= LARGE_BUILD else nullcontext():
                addresses = (
                    ptr_addresses(service, endpoints, self._cluster_ips(service))
                    if service is not None
                    else frozenset()
                )
                old = self.reverse.update(key, addresses)
            if key in self.reverse.by_service or old:
                reverse_changed = True
            # An address the Service gained or lost: its PTR answer changed (another owner, or
            # none). One it kept may point elsewhere now (a new hostname): that answer is
            # tagged with its owners' Service tags (`_reverse`), so the Service's tag drops
            # it. Tags of the changed addresses only: a rollout step names a few, not every
            # address of a 500-endpoint Service. `zip`, not `map(reverse_tag, …)`: the tuples
            # made without a Python call each.
            tags.update(zip(repeat(REVERSE), old ^ addresses))
            tags.add(service_tag(*key))
            # Kept per change, not recounted: a recount is O(services) per event.
            if service is None and key in self._known:
                self._known.discard(key)
                self._services_per_namespace[key[0]] -= 1
            elif service is not None and key not in self._known:
                self._known.add(key)
                self._services_per_namespace[key[0]] += 1
        if reverse_changed:
            tags.add(REVERSE_ENT_TAG)
        for key in change.imports:
            self._import_memo.pop(key, None)
            tags.add(import_tag(*key))
        if change.namespaces:
            # A new snapshot, swapped in one step (namespaces change rarely; see
            # `certainly_absent`).
            self._namespaces = frozenset(self.store.namespaces)
            tags.update(namespace_tag(ns) for ns in change.namespaces)
            tags.add(POD_TAG)
        if change.pod_ips:
            tags.add(POD_TAG)
        return tags

    def _apply_bulk(self, change: Change) -> set[Tag]:
        """Many Services at once (a first list, a relist): rebuild in one pass — one sort
        instead of an insertion per address — and drop every cached answer."""
        self._memo.clear()
        self._import_memo.clear()
        self._rebuild()
        return {ALL_TAG}

    def _rebuild(self) -> None:
        services = self.store.services
        self.reverse.replace(
            {
                key: ptr_addresses(service, self._endpoints(key), self._cluster_ips(service))
                for key, service in services.items()
            }
        )
        self._known = set(services)
        self._services_per_namespace = Counter(ns for ns, _ in services)
        self._namespaces = frozenset(self.store.namespaces)

    def service_records(self, key: tuple[str, str]) -> ServiceRecords | None:
        records = self._memo.get(key)
        if records is None:
            service = self.store.services.get(key)
            if service is None:
                return None
            endpoints = self._endpoints(key)
            # A large Service's records are passes over its endpoints: the UDP receive thread
            # gets the GIL after 0.1 ms meanwhile, not 1 ms (kdns/interpreter.py).
            with handing_over() if len(endpoints) >= LARGE_BUILD else nullcontext():
                records = service_records(
                    service,
                    endpoints,
                    self._cluster_ips(service),
                    pod_names=self._options.endpoint_pod_names,
                    ignore_empty=self._options.ignore_empty_service,
                )
            self._memo[key] = records
        return records

    def import_records(self, key: tuple[str, str]) -> ServiceRecords | None:
        """The clusterset names of the ServiceImport `key`, or None when there is none."""
        records = self._import_memo.get(key)
        if records is None:
            imported = self.store.imports.get(key)
            if imported is None:
                return None
            # `noendpoints` drops imported endpoints as it drops local ones.
            slices = () if self._options.noendpoints else self.store.import_slices.get(key, ())
            records = import_records(imported, slices, self._options.endpoint_pod_names)
            self._import_memo[key] = records
        return records

    def _endpoints(self, key: tuple[str, str]) -> tuple[Endpoint, ...]:
        # CoreDNS's `noendpoints`: no endpoint names, no headless answers (NXDOMAIN).
        return () if self._options.noendpoints else self.store.endpoints.get(key, ())

    def _cluster_ips(self, service: Service) -> tuple[str, ...] | None:
        hook = self.service_addresses
        return None if hook is None else hook(service)

    # --- answering ---------------------------------------------------------------------------

    def zone_of(self, qname: str) -> str | None:
        for zone, dotted in self._zone_suffixes:
            if qname.endswith(dotted) or qname == zone:
                return zone
        return None

    def resolve(
        self,
        qname: str,
        qtype: int,
        minimal_any: bool = True,
        trace: Trace | None = None,
        packed: bool = False,
    ) -> Answer | None:
        """Answer `qname` (lower-case, no trailing dot) or return None if it is not ours.

        `minimal_any=False` gives every RRset at the name for ANY, not the one RRset a client
        gets. `trace`, when given, records why (explain); it is filled even when the name turns
        out not to be ours (a PTR that falls through). `packed` (ignored with a trace): the
        A, AAAA and SRV records of a Service's name, and their glue, come as `pack.Rec`, for
        `wire.encode` (`Answer.packed`)."""
        zone = self.zone_of(qname)
        if zone is None:
            return None
        answer = Answer(trace=trace, packed=packed and trace is None)
        self._resolve_into(answer, qname, qtype, zone, depth=0)
        if answer.fallthrough:
            return None
        if answer.broken is not None:
            # A CNAME loop or a chain past MAX_CHASE: no answer is right (RFC 1034 §3.6.2:
            # such a chain signals a configuration error), and it is not cached, so every
            # query is counted.
            answer.rcode = RCODE.SERVFAIL
            answer.answer.clear()
            answer.authority.clear()
            answer.additional.clear()
            answer.cacheable = False
            answer.chase = None
            return answer
        if qtype == ANY and minimal_any:
            _minimal_any(answer)
        if not self.store.synced:
            answer.cacheable = False
            if answer.rcode == RCODE.NXDOMAIN or (
                answer.rcode == RCODE.NOERROR and not answer.answer
            ):
                answer.rcode = RCODE.SERVFAIL
                answer.answer.clear()
        return answer

    def _resolve_into(self, answer: Answer, qname: str, qtype: int, zone: str, depth: int) -> None:
        if zone in self.external_zones:
            self._external(answer, qname, qtype, zone)
        elif zone in self.reverse_zones:
            self._reverse(answer, qname, qtype, zone)
        else:
            self._forward(answer, qname, qtype, zone, depth)

    def _forward(self, answer: Answer, qname: str, qtype: int, zone: str, depth: int) -> None:
        """A name in a cluster zone, by its last label (spec 2.3-2.4): a Service's names
        (`svc` and at least two labels before it) or what is between them and the zone
        (`_svc_parent`), a Pod's (`pod`), the apex, or the zone's own names (`_zone_name`)."""
        rel = qname[: -len(zone) - 1] if qname != zone else ""
        labels = rel.split(".") if rel else []
        n = len(labels)
        if n == 0:
            answer.tags.add(APEX_TAG)
            return self._apex(answer, qname, qtype, zone)
        last = labels[-1]
        if last == "svc":
            if n >= 3:
                key = (labels[-2], labels[-3])
                # Not one hand-over scope for the records and the answer: the sleep after each
                # (kdns/interpreter.py) is when the queries that queued meanwhile are answered,
                # and with one sleep fewer those of a 500-endpoint rebuild waited longer (p90
                # 2.4 against 1.4 ms, tests/bench/big_answer.py) for 50 µs of CPU saved.
                return self._service_name(answer, qname, qtype, zone, depth, rel, key)
            return self._svc_parent(answer, zone, labels)
        if last == "pod":
            answer.tags.add(POD_TAG)
            return self._pod(answer, qname, qtype, zone, labels)
        answer.tags.add(ZONE_TAG)
        return self._zone_name(answer, qname, qtype, zone, rel)

    def _svc_parent(self, answer: Answer, zone: str, labels: list[str]) -> None:
        """`svc.ZONE` or `NAMESPACE.svc.ZONE`: names with no record, so NODATA where they
        exist (`svc` always, a namespace while it exists) and NXDOMAIN where not."""
        trace = answer.trace
        if len(labels) == 1:
            answer.tags.add(ZONE_TAG)
            if trace is not None:
                trace.step("svc-parent", zone)
            return self._negative(answer, zone, exists=True)
        answer.tags.add(namespace_tag(labels[0]))
        exists = self.namespace_exists(labels[0])
        if trace is not None:
            trace.step("namespace-name", labels[0], zone, exists)
        return self._negative(answer, zone, exists)

    def _zone_name(self, answer: Answer, qname: str, qtype: int, zone: str, rel: str) -> None:
        """A name of the zone outside `svc` and `pod`: `dns-version` (its TXT, spec 2.2),
        `ns.dns` (the nameserver's addresses, when known) and `dns` above it; any other
        is NXDOMAIN."""
        trace = answer.trace
        if rel == "dns-version":
            if trace is not None:
                trace.step("dns-version", qtype in (QTYPE.TXT, ANY))
            if qtype in (QTYPE.TXT, ANY):
                rr = RR(qname + ".", QTYPE.TXT, rdata=TXT(DNS_VERSION), ttl=DNS_VERSION_TTL)
                answer.answer.append(rr)
                if trace is not None:
                    trace.origin(rr, "dns-version")
                return None
            return self._negative(answer, zone, exists=True)
        if rel == "ns.dns" and self.ns_addresses:
            if trace is not None:
                trace.step("nameserver", zone)
            self._addresses(answer.answer, qname, qtype, self.ns_addresses, answer, "dns_addr")
            if not answer.answer:
                return self._negative(answer, zone, exists=True)
            return None
        if trace is not None:
            trace.step(
                "dns-parent" if rel == "dns" and self.ns_addresses else "unknown", zone, qname
            )
        return self._negative(
            answer, zone, exists=rel in ("dns", "ns.dns") and bool(self.ns_addresses)
        )

    def _external(self, answer: Answer, qname: str, qtype: int, zone: str) -> None:
        """A k8s_external zone (kdns/dns/external.py): the apex and `ns1.APEX` here, Services'
        outside addresses from `external_records`."""
        rel = qname[: -len(zone) - 1] if qname != zone else ""
        labels = rel.split(".") if rel else []
        trace = answer.trace
        dns_key = external.DNS_SERVICE
        if not labels or labels[-1] == self.external_apex:
            answer.tags.add(service_tag(*dns_key))  # the nameserver's addresses are its
            return self._external_apex(answer, qname, qtype, zone, rel)
        key = (labels[-1], labels[-2]) if len(labels) >= 2 else None
        records: tuple[Record, ...] | None = None
        names: dict[str, tuple[Record, ...]] = {}
        if key is not None:
            answer.tags.add(service_tag(*key))
            service = self.store.services.get(key)
            names = external.external_records(service) if service is not None else {}
            records = names.get(rel)
        else:
            answer.tags.add(ZONE_TAG)
        if trace is not None:
            trace.step("external-name", zone, key, rel, records is not None)
        ents = {name.split(".", 1)[1] for name in names if name.startswith("_")}
        if records is None or qtype not in (QTYPE.A, QTYPE.AAAA, QTYPE.SRV, ANY):
            # `_tcp.svc.ns` and `ns` are empty non-terminals (RFC 8020) while names lie below.
            exists = records is not None or rel in ents
            if len(labels) == 1:
                answer.tags.add(namespace_tag(labels[0]))
                exists = self.namespace_exists(labels[0])
            return self._external_negative(answer, zone, exists)
        for record in records:
            if qtype not in (record.rtype, ANY):
                continue
            rr = self.record_rr(qname, record, zone)
            rr.ttl = self.external_ttl
            answer.answer.append(rr)
            if trace is not None:
                trace.origin(rr, "external", key, record, zone)
            if record.rtype == QTYPE.SRV:
                glue = tuple(g.value for g in names.get(record.value, ()))
                self._addresses(answer.additional, f"{record.value}.{zone}", ANY, glue)
        for rr in answer.additional:
            rr.ttl = self.external_ttl
        if not answer.answer:
            self._external_negative(answer, zone, exists=True)
        return None

    def _external_apex(self, answer: Answer, qname: str, qtype: int, zone: str, rel: str) -> None:
        nameserver = f"ns1.{self.external_apex}.{zone}"
        dns_service = self.store.services.get(external.DNS_SERVICE)
        glue = external.outside_addresses(dns_service) if dns_service is not None else ()
        before = len(answer.answer)
        if not rel:
            if qtype in (QTYPE.SOA, ANY):
                answer.answer.append(self._external_soa(zone))
            if qtype in (QTYPE.NS, ANY):
                rr = RR(qname + ".", QTYPE.NS, rdata=NS_RD(nameserver + "."), ttl=self.external_ttl)
                answer.answer.append(rr)
                self._addresses(answer.additional, nameserver, ANY, glue)
        elif qname == nameserver:
            self._addresses(answer.answer, nameserver, qtype, glue)
        elif rel != self.external_apex:
            return self._external_negative(answer, zone, exists=False)
        for rr in (*answer.answer[before:], *answer.additional):
            rr.ttl = self.external_ttl
        if len(answer.answer) == before:
            self._external_negative(answer, zone, exists=True)
        return None

    def _external_soa(self, zone: str) -> RR:
        # CoreDNS's k8s_external README: a static serial, the minimum the zone's TTL.
        soa = SOA(
            mname=f"ns1.{self.external_apex}.{zone}.",
            rname=f"hostmaster.{zone}.",
            times=(external.SOA_SERIAL, *external.SOA_TIMES, self.external_ttl),
        )
        return RR(zone + ".", QTYPE.SOA, rdata=soa, ttl=self.external_ttl)

    def _external_negative(self, answer: Answer, zone: str, exists: bool) -> None:
        answer.rcode = RCODE.NOERROR if exists else RCODE.NXDOMAIN
        answer.authority.append(self._external_soa(zone))

    def certainly_absent(self, qname: str) -> str | None:
        """The zone of `qname` when it is certainly NXDOMAIN, for every type, from what this
        resolver has applied: a name under `<ns>.svc` that names no Service (`_forward`, a
        missing Service), or `<ns>.svc` for a namespace that does not exist. None: not
        certain — another zone kind, another shape, not synced (SERVFAIL), or it exists.

        Safe from the UDP receive thread (docs/architecture.md §6) while the trio thread
        applies changes: it reads the Service keys (`_known`, updated one `add`/`discard` at a
        time or swapped whole by a relist), the per-namespace Service counts (one item read)
        and the namespace snapshot (a frozenset swapped in one step), each read atomic under
        the GIL, never a table of the store (a relist refills those in place). A change is
        seen as soon as `apply` returns."""
        if not self.store.synced:
            return None
        zone = self.zone_of(qname)
        if zone not in self._service_zones or qname == zone:
            return None
        rel = qname[: -len(zone) - 1]
        if not rel.endswith(".svc"):
            return None
        # `<…>.<name>.<namespace>.svc`, read from the right: only the last labels matter.
        head, _, namespace = rel[:-4].rpartition(".")
        if not head:
            if namespace in self._namespaces or self._services_per_namespace[namespace] > 0:
                return None
            return zone
        return None if (namespace, head.rpartition(".")[2]) in self._known else zone

    def soa_fields(
        self, zone: str
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...], int, tuple[int, int, int, int, int]]:
        """The SOA `_soa` gives `zone`, as `pack.soa_denial` takes it: (mname labels, rname
        labels, TTL, (serial, refresh, retry, expire, minimum)). Reads, writes nothing."""
        names = self._soa_names.get(zone)
        if names is None:
            forward = zone if zone in self.forward_zones else self.primary
            names = (labels(f"ns.dns.{forward}"), labels(f"hostmaster.{forward}"))
            # Zones are fixed for the resolver's life: a race stores the same value twice.
            self._soa_names[zone] = names
        return (*names, min(self.ttl, 300), (self.store.last_change, *SOA_TIMES, self.ttl))

    def namespace_exists(self, namespace: str) -> bool:
        """Whether `ns.svc.Z` exists: a watched Namespace, or any Service in it (Namespaces
        are not always watched)."""
        return self.store.namespace_exists(namespace) or self._services_per_namespace[namespace] > 0

    def _apex(self, answer: Answer, qname: str, qtype: int, zone: str) -> None:
        trace = answer.trace
        if trace is not None:
            trace.step("apex", zone, qtype in (QTYPE.SOA, QTYPE.NS, ANY))
        if qtype in (QTYPE.SOA, ANY):
            answer.answer.append(self._soa(zone))
        if qtype in (QTYPE.NS, ANY):
            target, glue = self.nameserver(zone)
            rr = RR(qname + ".", QTYPE.NS, rdata=NS_RD(target + "."), ttl=self.ttl)
            answer.answer.append(rr)
            if trace is not None:
                trace.origin(rr, "nameserver", target)
            self._addresses(answer.additional, target, QTYPE.ANY, glue, answer, "ns-glue", target)
        if not answer.answer:
            self._negative(answer, zone, exists=True)

    def nameserver(self, zone: str) -> tuple[str, tuple[str, ...]]:
        """The apex NS: the cluster DNS Service when it is known (as the coredns/ci tests
        expect, `kube-dns.kube-system.svc.Z` with its ClusterIP as glue), else `ns.dns.Z`."""
        forward = zone if zone in self.forward_zones else self.primary
        dns_service = self.store.services.get(("kube-system", "kube-dns"))
        if dns_service is not None and dns_service.cluster_ips:
            glue = self._cluster_ips(dns_service)
            return f"kube-dns.kube-system.svc.{forward}", (
                dns_service.cluster_ips if glue is None else glue
            )
        return f"ns.dns.{forward}", self.ns_addresses

    def _soa(self, zone: str) -> RR:
        # CoreDNS's synthesised SOA (plugin/backend_lookup.go): TTL min(ttl, 300), the minimum
        # field = ttl, so resolvers cache our negative answers for the record TTL (RFC 2308 §5).
        # Kept per zone until the serial moves: every NXDOMAIN of a random-name flood carries
        # it, and building it (labels, rdata) was a third of such an answer's cost. Answers
        # share the RR; nothing mutates an answer's records.
        serial = self.store.last_change
        kept = self._soa_memo.get(zone)
        if kept is not None and kept[0] == serial:
            return kept[1]
        forward = zone if zone in self.forward_zones else self.primary
        soa = SOA(
            mname=f"ns.dns.{forward}.",
            rname=f"hostmaster.{forward}.",
            times=(serial, *SOA_TIMES, self.ttl),
        )
        rr = RR(zone + ".", QTYPE.SOA, rdata=soa, ttl=min(self.ttl, 300))
        self._soa_memo[zone] = (serial, rr)
        return rr

    def _negative(self, answer: Answer, zone: str, exists: bool) -> None:
        answer.rcode = RCODE.NOERROR if exists else RCODE.NXDOMAIN
        answer.authority.append(self._soa(zone))

    def _addresses(
        self,
        section: list[RR],
        owner: str,
        qtype: int,
        ips: tuple[str, ...],
        answer: Answer | None = None,
        *origin: Any,
    ) -> None:
        """A/AAAA records of `ips` at `owner`; with `answer` tracing, each gets `origin` and
        its address as its origin."""
        trace = answer.trace if answer is not None else None
        name = dns_name(owner + ".")
        for ip in ips:
            v6 = ":" in ip
            if v6 and qtype in (QTYPE.AAAA, ANY):
                rr = RR(name, QTYPE.AAAA, rdata=AAAA_RD(ip), ttl=self.ttl)
            elif not v6 and qtype in (QTYPE.A, ANY):
                rr = RR(name, QTYPE.A, rdata=A_RD(ip), ttl=self.ttl)
            else:
                continue
            section.append(rr)
            if trace is not None:
                trace.origin(rr, *origin, ip)

    def _service_name(
        self, answer: Answer, qname: str, qtype: int, zone: str, depth: int, rel: str, key: Key
    ) -> None:
        """A name below a Service (or, in a clusterset zone, a ServiceImport): `rel`, the name
        relative to `zone`; `key`, the Service's."""
        trace = answer.trace
        clusterset = zone in self.multicluster_zones
        answer.tags.add(import_tag(*key) if clusterset else service_tag(*key))
        service = self.import_records(key) if clusterset else self.service_records(key)
        records = service.forward.get(rel) if service is not None else None
        if trace is not None:
            step = "import-name" if clusterset else "service-name"
            trace.step(step, key, rel, zone, service is not None)
        if records is None:
            return self._negative(answer, zone, exists=service is not None and rel in service.ents)
        kind = "import" if clusterset else "record"
        if len(records) < LARGE_BUILD:
            return self._records(answer, qname, qtype, zone, key, service, records, depth, kind)
        # Milliseconds of Python for a large answer: the UDP receive thread gets the GIL
        # after 0.1 ms meanwhile, not 1 ms (kdns/interpreter.py). Not for a name a large
        # Service does not have: a flood of those costs what it did.
        with handing_over():
            return self._records(answer, qname, qtype, zone, key, service, records, depth, kind)

    def _records(
        self,
        answer: Answer,
        qname: str,
        qtype: int,
        zone: str,
        key: tuple[str, str],
        service: ServiceRecords,
        records: tuple[Record, ...],
        depth: int,
        kind: str = "record",
    ) -> None:
        """`kind` names, for explain, where the records come from: "record" (a Service) or
        "import" (a ServiceImport, which never has a CNAME)."""
        trace = answer.trace
        cname = next((r for r in records if r.rtype == _CNAME), None)
        if cname is not None and qtype not in (_CNAME, ANY):
            return self._externalname(answer, qname, qtype, zone, key, cname, depth)
        if trace is not None:
            code = "records" if kind == "record" else "import-records"
            trace.step(code, key, qname[: -len(zone) - 1], qtype, records)
        if answer.packed and depth == 0 and kind == "record":
            return self._packed_records(answer, qname, qtype, zone, service, records)
        return self._rrset(answer, qname, qtype, zone, key, service, records, kind)

    def _externalname(
        self,
        answer: Answer,
        qname: str,
        qtype: int,
        zone: str,
        key: tuple[str, str],
        cname: Record,
        depth: int,
    ) -> None:
        """The CNAME of an ExternalName Service at `qname`, and its target's records or the
        reason they are not there (`Answer.chase`, `Answer.broken`)."""
        trace = answer.trace
        # ExternalName (spec 2.5): the CNAME first, then the target's records (RFC 1034
        # §4.3.2 step 3a): a target inside our zones is chased here, one outside by the
        # caller through the upstreams (`Answer.chase`).
        rr = RR(qname + ".", _CNAME, rdata=CNAME_RD(cname.value + "."), ttl=self.ttl)
        answer.answer.append(rr)
        if trace is not None:
            trace.origin(rr, "record", key, cname, zone)
        target = cname.value
        target_zone = self.zone_of(target)
        if any(str(rr.rname).rstrip(".") == target for rr in answer.answer):
            answer.broken = "loop"
        elif depth + 1 > MAX_CHASE:
            answer.broken = "too long"
        elif target_zone is None:
            answer.chase = target
        if trace is not None:
            trace.step("externalname", target, qtype, target_zone, answer.broken)
        if answer.broken is None and target_zone is not None:
            self._resolve_into(answer, target, qtype, target_zone, depth + 1)

    def _rrset(
        self,
        answer: Answer,
        qname: str,
        qtype: int,
        zone: str,
        key: tuple[str, str],
        service: ServiceRecords,
        records: tuple[Record, ...],
        kind: str,
    ) -> None:
        """The records of `qtype` (every one for ANY) at `qname` as dnslib RRs, each SRV's
        target's addresses as glue, with their origins when traced; NODATA when none."""
        trace = answer.trace
        found = False
        # The glue already given per SRV target: one set per target, so a 500-endpoint headless
        # Service costs one pass, not a scan of the additional section per SRV record.
        glued: dict[str, set[str]] = {}
        owner = dns_name(qname + ".")  # one label object for the whole RRset
        glue = "glue" if kind == "record" else "import-glue"  # the glue's origin, for explain
        for record in records:
            if record.rtype != qtype and qtype != ANY:
                continue
            found = True
            rr = self.record_rr(owner, record, zone)
            answer.answer.append(rr)
            if trace is not None:
                trace.origin(rr, kind, key, record, zone)
            if record.rtype == _SRV:
                # Glue for the target (spec 2.3.2: the additional section MAY carry it).
                # SRV targets are names of the same Service: its own name or its endpoints'.
                target = record.value
                held = service.forward.get(target, ())
                present = glued.setdefault(target, set())
                ips = tuple(
                    ip
                    for ip in dict.fromkeys(g.value for g in held if g.rtype in (_A, _AAAA))
                    if ip not in present
                )
                present.update(ips)
                self._addresses(
                    answer.additional, f"{target}.{zone}", ANY, ips, answer, glue, key, target, zone
                )
        if not found:
            self._negative(answer, zone, exists=True)

    def _packed_records(
        self,
        answer: Answer,
        qname: str,
        qtype: int,
        zone: str,
        service: ServiceRecords,
        records: tuple[Record, ...],
    ) -> None:
        """`_rrset` without a trace, A, AAAA and SRV as `pack.Rec` (the same records, the
        same order, the same glue), each encoded but for its owner: a 500-endpoint headless
        answer built as dnslib objects cost more than all the rest of its answer, and then
        writing each record's fields one by one most of what was left."""
        ttl = self.ttl
        owner = labels(qname)
        heads = {_A: _RR_HEAD.pack(_A, 1, ttl, 4), _AAAA: _RR_HEAD.pack(_AAAA, 1, ttl, 16)}
        suffix = "." + zone
        if qtype == _SRV:
            # The usual large answer: every part made in passes over all records (srvparts).
            made = srv_rrset(owner, suffix, ttl, heads, records, service.forward.get)
            if made is not None:
                answer.answer.extend(made[0])
                answer.additional.extend(made[1])
                return None
        glued: set[str] = set()
        found = False
        out = answer.answer
        # Names bound once: the loop runs once per endpoint of a headless Service.
        new, Rec = tuple.__new__, pack.Rec
        for record in records:
            rtype, target, _, _, _, _ = record
            if rtype != qtype and qtype != ANY:
                continue
            found = True
            head = heads.get(rtype)
            if head is not None:  # A or AAAA
                out.append(new(Rec, (owner, rtype, head + address_bytes(target))))
            elif rtype == _SRV:  # not the usual SRV answer, which srv_rrset made
                self._packed_srv(answer, owner, record, suffix, heads, service, glued)
            else:
                out.append(self.record_rr(qname, record, zone))
        if not found:
            self._negative(answer, zone, exists=True)
        return None

    def _packed_srv(
        self,
        answer: Answer,
        owner: tuple[bytes, ...],
        record: Record,
        suffix: str,
        heads: dict[int, bytes],
        service: ServiceRecords,
        glued: set[str],
    ) -> None:
        """One SRV record of `_packed_records`' general loop at `owner`, and, the first time
        its target is named (`glued` holds those already named), the target's addresses as
        glue (spec 2.3.2), each address once per target, as `_rrset` adds them: a target's
        records hold each address once, so the first SRV naming a target gives all of them
        and a later one none."""
        _, target, port, priority, weight, in_zone = record
        # The glue's owner and, in the zone (every SRV records.py makes), the target.
        target_labels, name = name_parts(target + suffix)
        if not in_zone:
            name = name_parts(target)[1]
        tail = (
            None
            if name is None
            else _SRV_TAIL.pack(_SRV, 1, self.ttl, 6 + len(name), priority, weight, port) + name
        )
        answer.answer.append(tuple.__new__(pack.Rec, (owner, _SRV, tail)))
        if target in glued:
            return None
        glued.add(target)
        for glue in service.forward.get(target, ()):
            head = heads.get(glue[0])
            if head is not None:  # A or AAAA
                tail = head + address_bytes(glue[1])
                answer.additional.append(tuple.__new__(pack.Rec, (target_labels, glue[0], tail)))
        return None

    def record_rr(self, owner: str | DNSLabel, record: Record, zone: str) -> RR:
        """The RR `record` gives at `owner` (a name without the trailing dot, or its label) in
        `zone`, as answers carry it."""
        value = f"{record.value}.{zone}." if record.in_zone else record.value
        if record.rtype == QTYPE.A:
            rdata = A_RD(value)
        elif record.rtype == QTYPE.AAAA:
            rdata = AAAA_RD(value)
        elif record.rtype == QTYPE.SRV:
            rdata = SRV(record.priority, record.weight, record.port, dns_name(value))
        elif record.rtype == QTYPE.PTR:
            rdata = PTR_RD(dns_name(value))
        elif record.rtype == QTYPE.CNAME:
            rdata = CNAME_RD(dns_name(value + "."))
        else:  # pragma: no cover - records.py produces only the types above
            raise ValueError(f"unexpected record type {record.rtype}")
        name = owner if isinstance(owner, DNSLabel) else dns_name(owner + ".")
        return RR(name, record.rtype, rdata=rdata, ttl=self.ttl)

    def _reverse(self, answer: Answer, qname: str, qtype: int, zone: str) -> None:
        if qname == zone:
            answer.tags.add(APEX_TAG)
            return self._apex(answer, qname, qtype, zone)
        trace = answer.trace
        ip = self.reverse_ip(qname)
        records = self._ptr_records(qname, ip) if ip is not None else []
        answer.tags.add(reverse_tag(ip) if ip is not None else REVERSE_ENT_TAG)
        if ip is not None:
            # A change of an owner keeps the address's tag out of its tags (`apply`).
            answer.tags.update(service_tag(*key) for key in self.reverse.owners.get(ip, ()))
        if not records:
            full = qname.count(".") + 1 in (6, 34)  # a whole IPv4 or IPv6 reverse name
            prefix = reverse_prefix(qname)
            exists = prefix is not None and not full and self.reverse.has_prefix(prefix)
            if trace is not None:
                trace.step("no-ptr", qname, ip, full, exists)
            if not exists and self.reverse_fallthrough:
                answer.fallthrough = True
                return None
            return self._negative(answer, zone, exists=exists)
        if trace is not None:
            trace.step("ptr", ip, qtype, records)
        # PTR targets always name the primary zone (CoreDNS plugin/kubernetes/reverse.go).
        found = False
        for key, record in records:
            if qtype in (QTYPE.PTR, ANY):
                found = True
                rr = self.record_rr(qname, record, self.primary)
                answer.answer.append(rr)
                if trace is not None:
                    trace.origin(rr, "ptr", key, record, ip)
        if not found:
            self._negative(answer, zone, exists=True)
        return None

    def reverse_ip(self, qname: str) -> str | None:
        """The address a whole, canonically spelled reverse name stands for, else None."""
        prefix = reverse_prefix(qname)
        if prefix is None or qname.count(".") + 1 not in (6, 34):
            return None
        try:
            if qname.endswith(".in-addr.arpa"):
                ip = ipaddress.IPv4Address(prefix[:-1]).compressed
            else:
                ip = str(ipaddress.IPv6Address(int(prefix, 16)))
        except ValueError:
            return None
        if reverse_name(ip) != qname:
            return None  # "010.1.1.1": not the canonical spelling of any address
        return ip

    def _ptr_records(self, qname: str, ip: str) -> list[tuple[tuple[str, str], Record]]:
        """The PTR records of `qname`, each with the Service it comes from."""
        records: list[tuple[tuple[str, str], Record]] = []
        for key in sorted(self.reverse.owners.get(ip, ())):
            service = self.service_records(key)
            if service is not None:
                records.extend((key, record) for record in service.reverse.get(qname, ()))
        return records

    def _pod(self, answer: Answer, qname: str, qtype: int, zone: str, labels: list[str]) -> None:
        trace = answer.trace
        n = len(labels)
        if self.pods == "disabled" or n > 3:
            if trace is not None:
                trace.step("pod", "disabled" if self.pods == "disabled" else "too-long", zone)
            return self._negative(answer, zone, exists=False)
        if n == 1:
            if trace is not None:
                trace.step("pod", "parent", zone)
            return self._negative(answer, zone, exists=True)
        namespace = labels[-2]
        if not self.store.namespace_exists(namespace):
            if trace is not None:
                trace.step("pod", "no-namespace", zone, namespace)
            return self._negative(answer, zone, exists=False)
        if n == 2:
            if trace is not None:
                trace.step("pod", "namespace", zone, namespace)
            return self._negative(answer, zone, exists=True)
        ip = ip_from_pod_label(labels[0])
        if ip is None:
            if trace is not None:
                trace.step("pod", "not-ip", zone, namespace, labels[0])
            return self._negative(answer, zone, exists=False)
        verified = self.pods != "verified" or self._pod_verified(namespace, ip)
        if trace is not None:
            trace.step("pod", self.pods if verified else "not-verified", zone, namespace, ip)
        if not verified:
            return self._negative(answer, zone, exists=False)
        self._addresses(answer.answer, qname, qtype, (ip,), answer, "pod", self.pods, namespace)
        if not answer.answer:
            if trace is not None:
                trace.step("pod", "no-such-type", zone, namespace, ip, qtype)
            self._negative(answer, zone, exists=True)
        return None

    def pod_namespace(self, ip: str) -> str | None:
        """The namespace of the pod that owns `ip`, for autopath — only when that is certain.

        A reused IP (two pods), a hostNetwork pod (the node's IP, shared by many), or a pod that
        is not running or is terminating gives None: a wrong namespace would answer a name from
        the wrong search list."""
        pods = self.store.pods_by_ip.get(ip, ())
        if len(pods) != 1:
            return None
        pod = pods[0]
        if pod.host_network or pod.terminating or pod.phase != "Running":
            return None
        return pod.namespace

    def _pod_verified(self, namespace: str, ip: str) -> bool:
        # `pods verified`: a watched Pod in that namespace has that IP and is neither finished
        # nor terminating (CoreDNS plugin/kubernetes findPods / object/pod.go).
        return any(
            pod.namespace == namespace
            and pod.phase not in ("Succeeded", "Failed", "Unknown")
            and not pod.terminating
            for pod in self.store.pods_by_ip.get(ip, ())
        )


# RFC 8482 §4.1: an ANY answer holds one RRset of the name, the first of these that it has.
ANY_ORDER = (QTYPE.CNAME, QTYPE.A, QTYPE.AAAA, QTYPE.SRV, QTYPE.PTR, QTYPE.TXT, QTYPE.SOA, QTYPE.NS)


def _minimal_any(answer: Answer) -> None:
    """Cut an ANY answer down to one RRset (RFC 8482 §4.1): ANY over UDP with every record of
    a 500-endpoint Service would be an amplifier. The glue of dropped SRV records goes too."""
    if not answer.answer:
        return
    present = {rr.rtype for rr in answer.answer}
    keep = next(t for t in ANY_ORDER if t in present)
    answer.answer[:] = [rr for rr in answer.answer if rr.rtype == keep]
    if keep != QTYPE.SRV and keep != QTYPE.NS:
        answer.additional.clear()

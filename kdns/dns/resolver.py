"""Authoritative answers for the cluster zones: NOERROR, NODATA, NXDOMAIN or SERVFAIL — or None.

`Resolver.resolve(qname, qtype)` answers a question from the store, or returns None when the
name is in none of our zones (the caller forwards or refuses it). A forward name spells out its
Service, whose records are built on demand and memoised; reverse names go through the
`ReverseIndex`. `Resolver.apply(change)` keeps both up to date after a store change and returns
the cache tags whose answers may have changed.

Contract:
- Pure: no I/O, no clock; answers are dnslib RRs owned by lower-case names, so the wire layer
  can patch the client's spelling of the question in (CoreDNS echoes the query's case).
- NXDOMAIN and NODATA carry the zone's SOA in the authority section and set AA (RFC 2308 §3).
  An empty non-terminal is NODATA, never NXDOMAIN (RFC 8020).
- Before the store has synced every watched kind, a negative answer becomes SERVFAIL (clients
  cache negatives; a name that exists must never be denied), as CoreDNS's kubernetes plugin does.
- Every answer names the tags of the names it read (`Answer.tags`), so a cached copy is dropped
  exactly when one of them changes (docs/architecture.md §7).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache
from dnslib import AAAA as AAAA_RD
from dnslib import CNAME as CNAME_RD
from dnslib import NS as NS_RD
from dnslib import PTR as PTR_RD
from dnslib import QTYPE, RCODE, RR, SOA, SRV, TXT
from dnslib import A as A_RD

from kdns.config import Config
from kdns.dns.records import (
    Record,
    ReverseIndex,
    ServiceRecords,
    ptr_addresses,
    reverse_name,
    reverse_prefix,
    service_records,
)
from kdns.model import Service
from kdns.store import Change, Store

ANY = QTYPE.ANY
DNS_VERSION = "1.1.0"  # Kubernetes DNS-Based Service Discovery, schema version (spec §2.1)
DNS_VERSION_TTL = 28800  # the spec's example, and what CoreDNS serves
MAX_CHASE = 8  # CNAME chain length we follow inside our zones

Tag = tuple[str, ...]
APEX_TAG: Tag = ("apex",)
ZONE_TAG: Tag = ("zone",)
POD_TAG: Tag = ("pod",)
REVERSE_ENT_TAG: Tag = ("rev-ent",)
ALL_TAG: Tag = ("*",)  # every cached answer
BULK = 256  # Services changed at once beyond which the resolver rebuilds instead of updating


@dataclass(slots=True)
class Answer:
    rcode: int = RCODE.NOERROR
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    tags: set[Tag] = field(default_factory=set)
    cacheable: bool = True
    fallthrough: bool = False  # not ours after all: forward it


def service_tag(namespace: str, name: str) -> Tag:
    return ("svc", namespace, name)


def namespace_tag(namespace: str) -> Tag:
    return ("ns", namespace)


def reverse_tag(ip: str) -> Tag:
    return ("ptr", ip)


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
        self._known: set[tuple[str, str]] = set()
        self._services_per_namespace: Counter[str] = Counter()
        self.ttl = config.ttl
        self.pods = config.pods
        self.forward_zones = config.forward_zones
        self.reverse_zones = config.reverse_zones
        # Longest zone first, so "sub.cluster.local" wins over "cluster.local".
        self._zones = sorted(config.zones, key=len, reverse=True)
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
            addresses = (
                ptr_addresses(
                    service, self.store.endpoints.get(key, ()), self._cluster_ips(service)
                )
                if service is not None
                else frozenset()
            )
            old = self.reverse.update(key, addresses)
            if key in self.reverse.by_service or old:
                reverse_changed = True
            # An address the Service gained or kept may now point elsewhere (a new hostname).
            tags.update(reverse_tag(ip) for ip in old | addresses)
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
        if change.namespaces:
            tags.update(namespace_tag(ns) for ns in change.namespaces)
            tags.add(POD_TAG)
        if change.pod_ips:
            tags.add(POD_TAG)
        return tags

    def _apply_bulk(self, change: Change) -> set[Tag]:
        """Many Services at once (a first list, a relist): rebuild in one pass — one sort
        instead of an insertion per address — and drop every cached answer."""
        self._memo.clear()
        self._rebuild()
        return {ALL_TAG}

    def _rebuild(self) -> None:
        services = self.store.services
        self.reverse.replace(
            {
                key: ptr_addresses(
                    service, self.store.endpoints.get(key, ()), self._cluster_ips(service)
                )
                for key, service in services.items()
            }
        )
        self._known = set(services)
        self._services_per_namespace = Counter(ns for ns, _ in services)

    def service_records(self, key: tuple[str, str]) -> ServiceRecords | None:
        records = self._memo.get(key)
        if records is None:
            service = self.store.services.get(key)
            if service is None:
                return None
            records = service_records(
                service, self.store.endpoints.get(key, ()), self._cluster_ips(service)
            )
            self._memo[key] = records
        return records

    def _cluster_ips(self, service: Service) -> tuple[str, ...] | None:
        hook = self.service_addresses
        return None if hook is None else hook(service)

    # --- answering ---------------------------------------------------------------------------

    def zone_of(self, qname: str) -> str | None:
        for zone in self._zones:
            if qname == zone or qname.endswith("." + zone):
                return zone
        return None

    def resolve(self, qname: str, qtype: int) -> Answer | None:
        """Answer `qname` (lower-case, no trailing dot) or return None if it is not ours."""
        zone = self.zone_of(qname)
        if zone is None:
            return None
        answer = Answer()
        self._resolve_into(answer, qname, qtype, zone, depth=0)
        if answer.fallthrough:
            return None
        if not self.store.synced:
            answer.cacheable = False
            if answer.rcode == RCODE.NXDOMAIN or (
                answer.rcode == RCODE.NOERROR and not answer.answer
            ):
                answer.rcode = RCODE.SERVFAIL
                answer.answer.clear()
        return answer

    def _resolve_into(self, answer: Answer, qname: str, qtype: int, zone: str, depth: int) -> None:
        if zone in self.reverse_zones:
            self._reverse(answer, qname, qtype, zone)
        else:
            self._forward(answer, qname, qtype, zone, depth)

    def _forward(self, answer: Answer, qname: str, qtype: int, zone: str, depth: int) -> None:
        rel = qname[: -len(zone) - 1] if qname != zone else ""
        labels = rel.split(".") if rel else []
        n = len(labels)
        if n == 0:
            answer.tags.add(APEX_TAG)
            return self._apex(answer, qname, qtype, zone)
        last = labels[-1]
        if last == "svc" and n >= 3:
            key = (labels[-2], labels[-3])
            answer.tags.add(service_tag(*key))
            service = self.service_records(key)
            records = service.forward.get(rel) if service is not None else None
            if records is None:
                return self._negative(
                    answer, zone, exists=service is not None and rel in service.ents
                )
            return self._records(answer, qname, qtype, zone, service, records, depth)
        if last == "svc":
            if n == 1:
                answer.tags.add(ZONE_TAG)
                return self._negative(answer, zone, exists=True)
            answer.tags.add(namespace_tag(labels[0]))
            exists = (
                self.store.namespace_exists(labels[0])
                or self._services_per_namespace[labels[0]] > 0
            )
            return self._negative(answer, zone, exists)
        if last == "pod":
            answer.tags.add(POD_TAG)
            return self._pod(answer, qname, qtype, zone, labels)
        answer.tags.add(ZONE_TAG)
        if rel == "dns-version":
            if qtype in (QTYPE.TXT, ANY):
                answer.answer.append(
                    RR(qname + ".", QTYPE.TXT, rdata=TXT(DNS_VERSION), ttl=DNS_VERSION_TTL)
                )
                return None
            return self._negative(answer, zone, exists=True)
        if rel == "ns.dns" and self.ns_addresses:
            self._addresses(answer.answer, qname, qtype, self.ns_addresses)
            if not answer.answer:
                return self._negative(answer, zone, exists=True)
            return None
        return self._negative(
            answer, zone, exists=rel in ("dns", "ns.dns") and bool(self.ns_addresses)
        )

    def _apex(self, answer: Answer, qname: str, qtype: int, zone: str) -> None:
        if qtype in (QTYPE.SOA, ANY):
            answer.answer.append(self._soa(zone))
        if qtype in (QTYPE.NS, ANY):
            target, glue = self._nameserver(zone)
            answer.answer.append(RR(qname + ".", QTYPE.NS, rdata=NS_RD(target + "."), ttl=self.ttl))
            self._addresses(answer.additional, target, QTYPE.ANY, glue)
        if not answer.answer:
            self._negative(answer, zone, exists=True)

    def _nameserver(self, zone: str) -> tuple[str, tuple[str, ...]]:
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
        forward = zone if zone in self.forward_zones else self.primary
        soa = SOA(
            mname=f"ns.dns.{forward}.",
            rname=f"hostmaster.{forward}.",
            times=(self.store.last_change, 7200, 1800, 86400, self.ttl),
        )
        return RR(zone + ".", QTYPE.SOA, rdata=soa, ttl=min(self.ttl, 300))

    def _negative(self, answer: Answer, zone: str, exists: bool) -> None:
        answer.rcode = RCODE.NOERROR if exists else RCODE.NXDOMAIN
        answer.authority.append(self._soa(zone))

    def _addresses(self, section: list[RR], owner: str, qtype: int, ips: tuple[str, ...]) -> None:
        for ip in ips:
            v6 = ":" in ip
            if v6 and qtype in (QTYPE.AAAA, ANY):
                section.append(RR(owner + ".", QTYPE.AAAA, rdata=AAAA_RD(ip), ttl=self.ttl))
            elif not v6 and qtype in (QTYPE.A, ANY):
                section.append(RR(owner + ".", QTYPE.A, rdata=A_RD(ip), ttl=self.ttl))

    def _records(
        self,
        answer: Answer,
        qname: str,
        qtype: int,
        zone: str,
        service: ServiceRecords,
        records: tuple[Record, ...],
        depth: int,
    ) -> None:
        cname = next((r for r in records if r.rtype == QTYPE.CNAME), None)
        if cname is not None and qtype not in (QTYPE.CNAME, ANY):
            # ExternalName (spec 2.5): the CNAME first; a target inside our zones is chased here
            # (RFC 1034 §4.3.2 step 3a), one outside is left to the client's resolver.
            answer.answer.append(
                RR(qname + ".", QTYPE.CNAME, rdata=CNAME_RD(cname.value + "."), ttl=self.ttl)
            )
            target_zone = self.zone_of(cname.value)
            if target_zone is not None and depth < MAX_CHASE:
                self._resolve_into(answer, cname.value, qtype, target_zone, depth + 1)
            return None
        found = False
        for record in records:
            if record.rtype != qtype and qtype != ANY:
                continue
            found = True
            answer.answer.append(self._rr(qname, record, zone))
            if record.rtype == QTYPE.SRV:
                # Glue for the target (spec 2.3.2: the additional section MAY carry it).
                # SRV targets are names of the same Service: its own name or its endpoints'.
                target = record.value
                glue = service.forward.get(target, ())
                ips = tuple(g.value for g in glue if g.rtype in (QTYPE.A, QTYPE.AAAA))
                present = {
                    str(rr.rdata) for rr in answer.additional if rr.rname == f"{target}.{zone}."
                }
                self._addresses(
                    answer.additional,
                    f"{target}.{zone}",
                    ANY,
                    tuple(ip for ip in dict.fromkeys(ips) if ip not in present),
                )
        if not found:
            self._negative(answer, zone, exists=True)
        return None

    def _rr(self, owner: str, record: Record, zone: str) -> RR:
        value = f"{record.value}.{zone}." if record.in_zone else record.value
        if record.rtype == QTYPE.A:
            rdata = A_RD(value)
        elif record.rtype == QTYPE.AAAA:
            rdata = AAAA_RD(value)
        elif record.rtype == QTYPE.SRV:
            rdata = SRV(record.priority, record.weight, record.port, value)
        elif record.rtype == QTYPE.PTR:
            rdata = PTR_RD(value)
        elif record.rtype == QTYPE.CNAME:
            rdata = CNAME_RD(value + ".")
        else:  # pragma: no cover - records.py produces only the types above
            raise ValueError(f"unexpected record type {record.rtype}")
        return RR(owner + ".", record.rtype, rdata=rdata, ttl=self.ttl)

    def _reverse(self, answer: Answer, qname: str, qtype: int, zone: str) -> None:
        if qname == zone:
            answer.tags.add(APEX_TAG)
            return self._apex(answer, qname, qtype, zone)
        ip = self._reverse_ip(qname)
        records = self._ptr_records(qname, ip) if ip is not None else []
        answer.tags.add(reverse_tag(ip) if ip is not None else REVERSE_ENT_TAG)
        if not records:
            full = qname.count(".") + 1 in (6, 34)  # a whole IPv4 or IPv6 reverse name
            prefix = reverse_prefix(qname)
            exists = prefix is not None and not full and self.reverse.has_prefix(prefix)
            if not exists and self.reverse_fallthrough:
                answer.fallthrough = True
                return None
            return self._negative(answer, zone, exists=exists)
        # PTR targets always name the primary zone (CoreDNS plugin/kubernetes/reverse.go).
        found = False
        for record in records:
            if qtype in (QTYPE.PTR, ANY):
                found = True
                answer.answer.append(self._rr(qname, record, self.primary))
        if not found:
            self._negative(answer, zone, exists=True)
        return None

    def _reverse_ip(self, qname: str) -> str | None:
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

    def _ptr_records(self, qname: str, ip: str) -> list[Record]:
        records: list[Record] = []
        for key in sorted(self.reverse.owners.get(ip, ())):
            service = self.service_records(key)
            if service is not None:
                records.extend(service.reverse.get(qname, ()))
        return records

    def _pod(self, answer: Answer, qname: str, qtype: int, zone: str, labels: list[str]) -> None:
        n = len(labels)
        if self.pods == "disabled" or n > 3:
            return self._negative(answer, zone, exists=False)
        if n == 1:
            return self._negative(answer, zone, exists=True)
        namespace = labels[-2]
        if not self.store.namespace_exists(namespace):
            return self._negative(answer, zone, exists=False)
        if n == 2:
            return self._negative(answer, zone, exists=True)
        ip = ip_from_pod_label(labels[0])
        if ip is None or (self.pods == "verified" and not self._pod_verified(namespace, ip)):
            return self._negative(answer, zone, exists=False)
        self._addresses(answer.answer, qname, qtype, (ip,))
        if not answer.answer:
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

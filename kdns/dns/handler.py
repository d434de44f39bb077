"""One DNS request, bytes in → bytes out: the cache hot path, else parse, resolve and encode.

Contract:
- `Handler.handle(data, udp, client)` returns a `Reply`, the pair (response bytes, metrics
  label id), None when the packet is to be dropped (no header, or not a query), or a `Deferred`
  when the answer needs the network (forwarding, autopath): the listener then awaits
  `Handler.complete(deferred)`, which returns a `Reply`, in a task of its own, so one slow
  upstream never holds up other queries. Neither raises: this is the request boundary of
  docs/architecture.md §10, where an unexpected error becomes SERVFAIL, is logged and counted.
- Malformed queries get FORMERR with the client's ID; opcodes other than QUERY get NOTIMP; EDNS
  versions other than 0 get BADVERS (RFC 6891 §6.1.3); zone transfers and non-IN classes get
  REFUSED, and so do names outside our zones when there is no upstream to forward them to.
- A `Reply`'s label is the metrics label id (`dns.stats.LABELS`) of its response; it travels
  with the bytes, so nothing is left in the handler for the listener to read back. The zone is
  the authoritative zone the name falls in, the stub domain or "." for forwarded names, and
  "dropped" for queries refused before any lookup (CoreDNS's `vars.Dropped`).
- A CNAME whose target is outside our zones (an ExternalName to an external name) is answered
  as CoreDNS does: the CNAME, then the target's records of the asked type from the forwarder
  (its cache and stub domains; a `Deferred` when it must ask), with the target's rcode; with
  no upstream for the target, the CNAME alone. Autopath answers chase the same way and carry
  AA when the answer found was kdns's own. A broken chain (loop, too long) is SERVFAIL, logged
  and counted (`kdns_dns_cname_chase_failures_total`).
- Malformed queries and internal errors are logged with a `consolidate` key, so a flood of them
  becomes one line per interval (kdns/logs.py).
- `forward_miss(miss, receiver)` (the UDP receive thread): whether the forwarder's relay took
  a miss of a name only the upstreams answer (kdns/dns/miss_relay.py); never raises.
- The synchronous part is pure: no sockets and no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnslib import CNAME, QTYPE, RR, DNSRecord

from kdns import metrics
from kdns.dns import pack, wire
from kdns.dns.forward import Forwarder
from kdns.dns.plugins import Plugins, renamed
from kdns.dns.resolver import Answer, Resolver
from kdns.dns.stats import LABELS
from kdns.dns.wire import AnswerCache, Query, Reply

log = logging.getLogger(__name__)

CLASS_IN = 1
# Zone transfers are not offered (CoreDNS without its `transfer` plugin answers REFUSED).
REFUSED_TYPES = frozenset({QTYPE.AXFR, QTYPE.IXFR})
DENIAL_SHAPES_KEPT = 1024  # SOA records kept by `denial`: zones × serials × name lengths
DROPPED = "dropped"  # CoreDNS's zone label for queries that never reach a plugin


@dataclass(slots=True)
class Deferred:
    """A question that needs the network (forwarding, autopath): the listener awaits
    `Handler.complete(deferred)` in a task of its own and sends the `Reply` it returns."""

    query: Query
    udp: bool
    search: tuple[str, ...] = ()  # autopath: the client's search list, first element matched
    chase: Answer | None = None  # an answer whose CNAME target the upstreams must resolve
    # rewrite: `query` is the renamed question; the answer goes back as the client asked it.
    client_query: Query | None = None
    revert: Callable[[str], str] | None = None


class Handler:
    def __init__(
        self,
        resolver: Resolver,
        cache: AnswerCache | None = None,
        forwarder: Forwarder | None = None,
        autopath: bool = False,
        host_search: tuple[str, ...] = (),
        loadbalance: str = "round_robin",
        plugins: Plugins | None = None,
        fallthrough: tuple[str, ...] = (),
    ) -> None:
        self.resolver = resolver
        self.plugins = plugins  # rewrite, template, hosts (kdns/dns/plugins.py), if configured
        # CoreDNS's kubernetes `fallthrough ZONES`: NXDOMAIN there goes on to the upstreams.
        self.fallthrough = fallthrough
        # `loadbalance round_robin` (the kubeadm Corefile's): each answer rotates its A, AAAA
        # or SRV RRset, so clients that take the first address spread over the endpoints.
        self.cache = cache if cache is not None else AnswerCache(rotate=loadbalance != "off")
        self.forwarder = forwarder
        self.autopath = autopath
        self.host_search = host_search
        self.recursion_available = forwarder is not None
        # Forwarded hits the UDP receive thread answers; not with rewrite/template/hosts, which
        # come before the upstreams and may change their answers (a hosts file reload).
        self.forwarded = forwarder.cache.fast if forwarder is not None and plugins is None else None
        self.errors = 0
        # `denial` (the receive thread) answers only where nothing but the cluster zones can:
        # rewrite, template and hosts come first, autopath searches from a pod's namespace,
        # and `fallthrough` sends NXDOMAIN upstream; with any of them, trio answers as before.
        self._denials = plugins is None and not autopath and not fallthrough
        # Metrics label ids of NXDOMAIN answers by (zone label, qtype, DO), filled by the trio
        # thread (`QueryLabels.id` may add a label, which only one thread may do) and read by
        # the receive thread: a shape trio has not answered yet is handed to trio once.
        self._denial_labels: dict[tuple[str, int, bool], int] = {}
        # The SOA record of a denial by (zone, serial, where the zone starts in the question).
        self._denial_tails: dict[tuple[str, int, int], bytes] = {}

    def handle(self, data: bytes, udp: bool, client: str | None = None) -> Reply | Deferred | None:
        data = bytes(data)  # a no-op for the bytes sockets give; keys must be hashable
        hit = self.cache.answer(data, udp)
        if hit is not None:
            return hit
        # Trio reads queued datagrams itself under a miss-heavy load (kdns/dns/server.py), and
        # TCP clients ask too: a never-asked name costs them what it costs the receive thread.
        denied = self.denial(data)
        if denied is not None:
            return denied
        return self.handle_miss(data, udp, client)

    def denial(self, data: bytes) -> Reply | None:
        """The NXDOMAIN for a cluster name that certainly does not exist, built from the
        store's state alone, or None (hand the query to trio, which answers it as before).

        The receive thread's second chance after a cache miss (kdns/dns/receiver.py): a
        random-subdomain flood (`<random>.<ns>.svc.<zone>`) costs one pass here instead of
        trio's hand-off and the whole miss path. It reads only what the trio thread publishes
        by single reference swaps or single set/dict operations (`Resolver.certainly_absent`),
        writes nothing but the kept denials (below), and stores no entry in the answer cache: a
        one-off name would only push out the names that are asked again.
        Only a plain query (one uncompressed question, QUERY, class IN, no records but an EDNS
        version 0 OPT) takes this path; the answer is what `_slow` gives, byte for byte.

        The answer is kept apart from the answer cache's entries (`AnswerCache.keep_denial`),
        so the same question asked again, as pods ask the search expansions of outside names
        (`www.example.com.<ns>.svc.<zone>`), is answered by `AnswerCache.lookup` as cheaply as
        a hit, until the next store change."""
        if not self._denials:
            return None
        try:
            # Read before the store's state: a change applied from here on swaps it, and what
            # is built from the state before then goes nowhere (AnswerCache.keep_denial).
            kept = self.cache.denials
            found = self._denial(data)
            if found is not None:
                self.cache.keep_denial(data, found, kept)
            return found
        except Exception:
            # Never in the receive thread: trio answers the query; the bug is logged (one line
            # per interval however often it fires, kdns/logs.py).
            log.exception(
                "internal error in the receive thread's NXDOMAIN",
                extra={"consolidate": "internal error in the receive thread's NXDOMAIN"},
            )
            return None

    def _denial(self, data: bytes) -> Reply | None:
        """The NXDOMAIN for a plain question (`wire.plain_question`) of class IN whose name
        the resolver knows to be absent (`Resolver.certainly_absent`), built from the query's
        bytes and the zone's kept SOA tail (`_denial_tail`), with its query-log label; None
        for anything else, which trio answers."""
        plain = wire.plain_question(data)
        if plain is None:
            return None
        labels, qend, edns, do = plain
        qtype = int.from_bytes(data[qend - 4 : qend - 2])
        if data[qend - 2 : qend] != b"\x00\x01" or qtype in REFUSED_TYPES:
            return None
        joined = b".".join(labels)
        if joined.count(b".") != len(labels) - 1 or b"\\" in joined:
            return None  # a label holding a dot or a backslash: `Query.qname` escapes it
        zone = self.resolver.certainly_absent(joined.decode("latin-1").lower())
        if zone is None:
            return None
        label = self._denial_labels.get((zone + ".", qtype, do))
        if label is None:
            return None
        flags = (
            wire.QR
            | wire.AA
            | (wire.RA if self.recursion_available else 0)
            | (int.from_bytes(data[2:4]) & (wire.RD | wire.CD))
            | wire.NXDOMAIN
        )
        counts = (
            b"\x00\x01\x00\x00\x00\x01\x00\x01" if edns else b"\x00\x01\x00\x00\x00\x01\x00\x00"
        )
        # The SOA record's bytes depend on the zone, its serial (the rest of the SOA is fixed
        # for the resolver's life) and where the zone's name starts in the question (its
        # compression pointers), nothing else: the label before the zone is `svc`, so no
        # longer suffix of the question matches the SOA's names. Kept per shape.
        key = (zone, self.resolver.store.last_change, qend - 4 - len(zone) - 2)
        tail = self._denial_tails.get(key)
        if tail is None:
            tail = self._denial_tail(data, labels, qend, key)
            if tail is None:
                return None
        response = data[:2] + flags.to_bytes(2) + counts + data[12:qend] + tail
        return (response + wire.opt_bytes(do, wire.NXDOMAIN) if edns else response), label

    def _denial_tail(
        self, data: bytes, labels: tuple[bytes, ...], qend: int, key: tuple[str, int, int]
    ) -> bytes | None:
        """The authority section of `_denial`'s NXDOMAIN for the question ending at `qend`
        (the zone's SOA), made the first time a shape `key` (zone, serial, where the zone's
        name starts) is seen, and kept; None when the serial moved since `key` was read."""
        zone = key[0]
        soa = self.resolver.soa_fields(zone)
        if soa[3][0] != key[1]:
            return None  # the serial moved between the two reads: trio answers this one
        full = pack.soa_denial(
            bytes(12),
            tuple(label_.lower() for label_ in labels),
            data[qend - 4 : qend],
            tuple(zone.encode("latin-1").split(b".")),
            soa,
        )
        if full is None:
            return None
        tail = full[qend:]
        if len(self._denial_tails) >= DENIAL_SHAPES_KEPT:
            self._denial_tails.clear()
        self._denial_tails[key] = tail  # computed from immutable inputs: a race redoes it
        return tail

    def forward_miss(self, miss: tuple[Any, ...], receiver: Any) -> bool:
        """Whether the receive thread sent this miss upstream itself (kdns/dns/miss_relay.py),
        answered later by that thread when the reply comes; False: hand it to trio as before.

        Only where nothing but the upstreams answers, as for `remember`'s forwarded hits:
        no rewrite, template or hosts (they come first and may change), and a name in no zone
        (so no autopath search and no `fallthrough`); the forwarder checks the rest (a plain
        query, nothing cached under its key, a healthy plain-UDP upstream)."""
        if self.forwarded is None or self.forwarder is None:
            return False
        try:
            return self.forwarder.forward_miss(miss, receiver, self.resolver.zone_of)
        except Exception:
            # Never in the receive thread: trio answers the query; the bug is logged, as above.
            log.exception(
                "internal error sending a miss upstream from the receive thread",
                extra={"consolidate": "internal error sending a miss upstream"},
            )
            return False

    def handle_miss(
        self, data: bytes, udp: bool, client: str | None = None
    ) -> Reply | Deferred | None:
        """Everything but the cache hit; listeners that tried `cache.answer` call this."""
        try:
            return self._slow(data, udp, client)
        except Exception:
            # The request boundary (docs/architecture.md §10): a bug answers SERVFAIL and is logged,
            # it never takes the server down.
            self.errors += 1
            metrics.PANICS.inc()
            log.exception(
                "internal error answering a query", extra={"consolidate": "internal error"}
            )
            if len(data) < 12:
                return None
            qid, flags = int.from_bytes(data[:2]), int.from_bytes(data[2:4])
            servfail = wire.error_response(qid, flags, wire.SERVFAIL)
            return (servfail, LABELS.id(DROPPED, 0, wire.SERVFAIL, "", False))

    def zone(self, qname: str) -> str:
        """The zone label of `qname`: the authoritative zone it falls in, else the stub domain
        or "." that forwards it (CoreDNS's server block zone), else "dropped" (refused)."""
        zone = self.resolver.zone_of(qname)
        if zone is not None:
            return zone + "."
        if self.forwarder is not None and self.forwarder.upstreams_for(qname):
            return self.forwarder.zone_for(qname)
        return DROPPED

    def _refuse(self, query: Query, rcode: int, udp: bool) -> Reply:
        response = wire.error_response(query.id, query.flags, rcode, query)
        if self.recursion_available:
            response = _with_ra(response)
        label = LABELS.id(DROPPED, query.qtype, rcode, "", query.do)
        return (wire.finish(response, query, udp), label)

    def _slow(self, data: bytes, udp: bool, client: str | None) -> Reply | Deferred | None:
        """A query the receive thread did not answer: screened (dropped, FORMERR, NOTIMP,
        BADVERS, REFUSED), then the plugins, autopath and the resolver; the resolver's answer
        is chased, forwarded or encoded and cached by one of the methods below."""
        query = wire.parse_query(data)
        if query is None:
            return None  # dropped
        if not isinstance(query, Query):
            log.warning(
                "malformed query from %s: answered FORMERR",
                client or "a TCP client",
                extra={"consolidate": "malformed queries answered FORMERR"},
            )
            return (query, LABELS.id(DROPPED, 0, wire.FORMERR, "", False))
        if query.opcode != 0:
            return self._refuse(query, wire.NOTIMP, udp)
        if query.edns and query.edns_version != 0:
            return self._refuse(query, wire.BADVERS, udp)
        if query.qclass != CLASS_IN or query.qtype in REFUSED_TYPES:
            return self._refuse(query, wire.REFUSED, udp)
        if self.plugins is not None:
            handled = self._plugins(query, udp)
            if handled is not None:
                return handled
        qname = query.qname  # computed once: a miss reads it several times
        if self.autopath and client is not None:
            search = self._search_list(qname, client)
            if search:
                return Deferred(query, udp, search)
        # Packed: a Service's records come in wire parts, not dnslib objects (pack.Rec).
        answer = self.resolver.resolve(qname, query.qtype, packed=True)
        if answer is not None and answer.rcode == wire.NXDOMAIN and self.fallthrough:
            answer = self._fall_through(qname, answer)
        if answer is not None and answer.broken is not None:
            self._broken_chain(query, answer)
        if answer is not None and self._chases(answer):
            return self._chased(query, qname, answer, udp)
        if answer is None:
            return self._upstream(data, query, qname, udp)
        return self._authoritative(data, query, qname, answer, udp)

    def _chased(self, query: Query, qname: str, answer: Answer, udp: bool) -> Reply | Deferred:
        """Our CNAME, then its outside target's records from the forwarder's cache; a
        `Deferred` when the upstreams must be asked."""
        assert answer.chase is not None and self.forwarder is not None
        cached = self.forwarder.cached(_sub_query(query, answer.chase))
        if cached is None:
            return Deferred(query, udp, chase=answer)
        response = self._after_cname(query, answer, cached)
        label = LABELS.id(self.zone(qname), query.qtype, response[3] & 0xF, "kubernetes", query.do)
        return (wire.finish(response, query, udp), label)

    def _upstream(self, data: bytes, query: Query, qname: str, udp: bool) -> Reply | Deferred:
        """A question the resolver left to the upstreams (a name outside our zones, a
        `fallthrough` NXDOMAIN): REFUSED without an upstream for it, else the forwarder's fresh
        cached answer, else a `Deferred` to ask the upstreams."""
        if self.forwarder is None or not self.forwarder.upstreams_for(qname):
            return self._refuse(query, wire.REFUSED, udp)
        # A fresh upstream-cache hit needs no network: answer it here, without a task.
        cached = self.forwarder.cached(query)
        if cached is None:
            return Deferred(query, udp)
        label = LABELS.id(
            self.forwarder.zone_for(qname),
            query.qtype,
            cached[3] & 0xF,
            "cache",
            query.do,
        )
        response = wire.finish(_with_ra(cached), query, udp)
        if udp and self.forwarded is not None and self.resolver.zone_of(qname) is None:
            # Only the upstreams answer this name (no plugin, no zone, no fallthrough,
            # no autopath: those are all inside a zone), so the receive thread may
            # answer its next hits (kdns/dns/upstream_hits.py).
            self.forwarder.remember(data, query, response, label)
        return (response, label)

    def _authoritative(
        self, data: bytes, query: Query, qname: str, answer: Answer, udp: bool
    ) -> Reply:
        """The resolver's answer encoded, its label noted for `denial` when NXDOMAIN, and
        stored in the answer cache when it may be shared."""
        # The layout comes from the encoder: the cache and a UDP cut need not parse the answer.
        response, layout = wire.encode_layout(
            query,
            answer.rcode,
            answer.answer,
            answer.authority,
            answer.additional,
            recursion_available=self.recursion_available,
            rotate=self.cache.rotate,
        )
        zone = self.zone(qname)
        label = LABELS.id(zone, query.qtype, answer.rcode, "kubernetes", query.do)
        if answer.rcode == wire.NXDOMAIN:
            # The receive thread answers this shape itself from now on (`denial`).
            self._denial_labels[(zone, query.qtype, query.do)] = label
        if answer.cacheable and not (
            self.autopath and answer.rcode == wire.NXDOMAIN and self._in_a_namespace(qname)
        ):
            # With autopath, a pod's NXDOMAIN for `<name>.<its ns>.svc.<zone>` is answered by
            # searching; the shared cache (keyed without the client) must not answer it.
            # A hit counts as a cache hit of CoreDNS's type: NXDOMAIN and NODATA are denial.
            denial = answer.rcode == wire.NXDOMAIN or (
                answer.rcode == wire.NOERROR and not answer.answer
            )
            hit_label = LABELS.id(
                zone,
                query.qtype,
                answer.rcode,
                "kubernetes",
                query.do,
                "denial" if denial else "success",
            )
            self.cache.store(data, query, response, answer.tags, hit_label, layout)
        return (wire.finish(response, query, udp, layout), label)

    def _fall_through(self, qname: str, answer: Answer) -> Answer | None:
        """None (forward it) when `qname` is in a `fallthrough` zone and there are upstreams."""
        within = any(z == "." or qname == z or qname.endswith("." + z) for z in self.fallthrough)
        if within and self.forwarder is not None and self.forwarder.upstreams_for(qname):
            return None
        return answer

    # --- rewrite, template, hosts (CoreDNS's plugins before kubernetes) ------------------------

    def _plugins(self, query: Query, udp: bool) -> Reply | Deferred | None:
        """rewrite, then template and hosts, before the cluster zones (CoreDNS's plugin order);
        None: the question goes on as if they were not there. Their answers are not cached
        here: the hosts file may change under them."""
        assert self.plugins is not None
        rewritten = self.plugins.rewrite(query.qname)
        if rewritten is not None and not rewritten.name:
            servfail = wire.error_response(query.id, query.flags, wire.SERVFAIL, query)
            label = LABELS.id(DROPPED, query.qtype, wire.SERVFAIL, "rewrite", query.do)
            return (wire.finish(servfail, query, udp), label)
        asked = query if rewritten is None else _sub_query(query, rewritten.name)
        found = self.plugins.answer(asked.qname, asked.qtype)
        if rewritten is None and found is None:
            return None
        plugin = found.plugin if found is not None else "kubernetes"
        answer = found or self.resolver.resolve(asked.qname, asked.qtype)
        if rewritten is not None and (answer is None or isinstance(answer, Answer)):
            # The renamed question takes the path of any other (chase, upstreams), then is
            # renamed back for the client.
            if answer is not None and answer.broken is not None:
                self._broken_chain(asked, answer)
            if answer is None or self._chases(answer):
                if self.forwarder is None or not self.forwarder.upstreams_for(asked.qname):
                    return self._refuse(query, wire.REFUSED, udp)
                chase = answer if answer is not None and self._chases(answer) else None
                return Deferred(
                    asked, udp, chase=chase, client_query=query, revert=rewritten.revert
                )
        assert answer is not None
        response = wire.encode(
            asked,
            answer.rcode,
            answer.answer,
            answer.authority,
            answer.additional,
            recursion_available=self.recursion_available,
        )
        if rewritten is not None:
            response = renamed(query, response, rewritten.revert, self.recursion_available)
        label = LABELS.id(self.zone(asked.qname), query.qtype, answer.rcode, plugin, query.do)
        return (wire.finish(response, query, udp), label)

    # --- the network part --------------------------------------------------------------------

    async def complete(self, deferred: Deferred) -> Reply:
        query = deferred.query
        try:
            if deferred.search:
                plugin = "autopath"
                response = await self._autopath(query, deferred.search)
            elif deferred.chase is not None:
                plugin = "kubernetes"
                response = await self._chase(query, deferred.chase, looked_up=True)
            else:
                assert self.forwarder is not None
                plugin = "forward"
                # `_slow` looked it up in the upstream cache already (`cached`).
                response = await self.forwarder.resolve(query, looked_up=True)
        except Exception:
            self.errors += 1
            metrics.PANICS.inc()
            log.exception(
                "internal error answering a forwarded query",
                extra={"consolidate": "internal error answering a forwarded query"},
            )
            plugin = ""
            response = wire.error_response(query.id, query.flags, wire.SERVFAIL, query)
        label = LABELS.id(self.zone(query.qname), query.qtype, response[3] & 0xF, plugin, query.do)
        if deferred.client_query is not None and deferred.revert is not None:
            query = deferred.client_query
            response = renamed(query, response, deferred.revert, True)
        return (wire.finish(_with_ra(response), query, deferred.udp), label)

    # --- CNAMEs to names outside our zones ---------------------------------------------------

    def _chases(self, answer: Answer) -> bool:
        """Whether the answer's CNAME target is to be resolved through the upstreams: with
        forwarding off (or no upstream for that name) the CNAME alone is the answer."""
        return (
            answer.chase is not None
            and self.forwarder is not None
            and bool(self.forwarder.upstreams_for(answer.chase))
        )

    def _broken_chain(self, query: Query, answer: Answer) -> None:
        metrics.CNAME_CHASE_FAILURES.labels(answer.broken).inc()
        log.warning(
            "%s: the CNAME chain %s: SERVFAIL",
            query.qname + ".",
            "loops" if answer.broken == "loop" else "has more than 8 links",
            extra={"consolidate": f"CNAME chains that {answer.broken}"},
        )

    async def _chase(self, query: Query, answer: Answer, looked_up: bool = False) -> bytes:
        assert answer.chase is not None and self.forwarder is not None
        sub = _sub_query(query, answer.chase)
        return self._after_cname(query, answer, await self.forwarder.resolve(sub, looked_up))

    def _after_cname(self, query: Query, answer: Answer, target: bytes) -> bytes:
        """Our CNAME chain followed by the upstream's answer for its target (CoreDNS's
        kubernetes plugin does the same for an ExternalName). The rcode is the target's, and an
        NXDOMAIN keeps the CNAME (RFC 6604 §3); an upstream failure is ours (SERVFAIL)."""
        found = DNSRecord.parse(target)
        rcode = found.header.rcode
        if rcode not in (wire.NOERROR, wire.NXDOMAIN):
            return wire.error_response(query.id, query.flags, wire.SERVFAIL, query)
        return wire.encode(
            query,
            rcode,
            [*answer.answer, *found.rr],
            found.auth,
            (),
            recursion_available=self.recursion_available,
        )

    # --- autopath (CoreDNS `autopath @kubernetes`) --------------------------------------------

    def _in_a_namespace(self, qname: str) -> bool:
        for zone in self.resolver.forward_zones:
            if qname.endswith(".svc." + zone):
                return qname[: -len(zone) - 5].count(".") >= 1
        return False

    def _search_list(self, qname: str, client: str) -> tuple[str, ...]:
        """The client pod's search list when `qname` ends in its first element, else ()."""
        if client.startswith("::ffff:"):
            client = client[7:]  # an IPv4 pod seen through a dual-stack ("::") socket
        namespace = self.resolver.pod_namespace(client)
        if namespace is None:
            return ()
        for zone in self.resolver.forward_zones:
            first = f"{namespace}.svc.{zone}"
            if qname.endswith("." + first):
                return (first, f"svc.{zone}", zone, *self.host_search)
        return ()

    async def _autopath(self, query: Query, search: tuple[str, ...]) -> bytes:
        """Try the pod's search list server-side and answer the first name that exists, behind
        a CNAME from the name asked (coredns/coredns plugin/autopath): one round trip instead
        of one per search domain. Only NXDOMAIN moves on to the next name, as in CoreDNS."""
        base = query.qname[: -len(search[0]) - 1]
        first: bytes | None = None
        for i, domain in enumerate((*search, "")):
            name = f"{base}.{domain}" if domain else base
            response = await self._lookup(query, name)
            if i == 0:
                first = response
            if response[3] & 0xF == wire.NXDOMAIN:
                continue
            if i == 0 or int.from_bytes(response[6:8]) == 0:
                # The name asked exists, or the one found has no record of this type: as
                # CoreDNS's cnamer, no CNAME in front of an empty answer — the client goes on
                # with its own search list.
                return response if i == 0 else self._as_asked(query, response)
            return self._behind_cname(query, name, response)
        assert first is not None
        return first

    async def _lookup(self, query: Query, name: str) -> bytes:
        """The response for `name` (same type) as kdns would give it, by the client's ID."""
        sub = _sub_query(query, name)
        # CoreDNS's autopath asks the plugins after it for each name: template, hosts, then
        # kubernetes (and its fallthrough), then forward.
        found = self.plugins.answer(name, query.qtype) if self.plugins is not None else None
        if found is not None:
            return wire.encode(
                sub,
                found.rcode,
                found.answer,
                found.authority,
                found.additional,
                recursion_available=self.recursion_available,
            )
        answer = self.resolver.resolve(name, query.qtype)
        if answer is not None and answer.rcode == wire.NXDOMAIN and self.fallthrough:
            answer = self._fall_through(name, answer)
        if answer is not None and answer.broken is not None:
            self._broken_chain(sub, answer)
        if answer is not None and self._chases(answer):
            return await self._chase(sub, answer)
        if answer is not None:
            return wire.encode(
                sub,
                answer.rcode,
                answer.answer,
                answer.authority,
                answer.additional,
                recursion_available=self.recursion_available,
            )
        if self.forwarder is None or not self.forwarder.upstreams_for(name):
            return wire.error_response(sub.id, sub.flags, wire.NXDOMAIN, sub)
        return await self.forwarder.resolve(sub)

    def _as_asked(self, query: Query, response: bytes) -> bytes:
        """`response` (for another name) re-encoded for the name the client asked."""
        found = DNSRecord.parse(response)
        return wire.encode(
            query,
            found.header.rcode,
            found.rr,
            found.auth,
            [rr for rr in found.ar if rr.rtype != wire.OPT],
            # AA as the answer found had it: set when kdns answered from its own zone (as
            # CoreDNS's autopath, whose answer comes from the kubernetes plugin), an
            # upstream's otherwise.
            authoritative=bool(response[2] & (wire.AA >> 8)),
            recursion_available=self.recursion_available,
        )

    def _behind_cname(self, query: Query, name: str, response: bytes) -> bytes:
        found = DNSRecord.parse(response)
        ttl = found.rr[0].ttl if found.rr else self.resolver.ttl
        cname = RR(query.qname + ".", QTYPE.CNAME, rdata=CNAME(name + "."), ttl=ttl)
        return wire.encode(
            query,
            found.header.rcode,
            [cname, *found.rr],
            found.auth,
            [rr for rr in found.ar if rr.rtype != wire.OPT],
            # AA as the answer found had it: set when kdns answered from its own zone (as
            # CoreDNS's autopath, whose answer comes from the kubernetes plugin), an
            # upstream's otherwise.
            authoritative=bool(response[2] & (wire.AA >> 8)),
            recursion_available=self.recursion_available,
        )


def _with_ra(response: bytes) -> bytes:
    # We recurse for the client, whatever flags the upstream's answer carried.
    return response[:3] + bytes((response[3] | 0x80,)) + response[4:]


def _sub_query(query: Query, name: str) -> Query:
    """The same question for another name (a search domain's, a CNAME target), by the
    client's ID and flags."""
    labels = tuple(label.encode("latin-1") for label in name.split(".") if label)
    question = b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"
    question += query.qtype.to_bytes(2) + query.qclass.to_bytes(2)
    return Query(
        query.id,
        query.flags,
        labels,
        query.qtype,
        query.qclass,
        question,
        False,
        edns=query.edns,
        payload=query.payload,
        do=query.do,
    )

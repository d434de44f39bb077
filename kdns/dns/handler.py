"""One DNS request, bytes in → bytes out: the cache hot path, else parse, resolve and encode.

Contract:
- `Handler.handle(data, udp)` returns the response bytes, or None when the packet is to be
  dropped (no header, or not a query). It never raises: this is the request boundary of
  DESIGN.md §5, where an unexpected error becomes SERVFAIL, is logged and counted.
- Malformed queries get FORMERR with the client's ID; opcodes other than QUERY get NOTIMP; EDNS
  versions other than 0 get BADVERS (RFC 6891 §6.1.3); zone transfers, non-IN classes and names
  outside our zones get REFUSED.
- Pure: no sockets and no clock, so the whole request path is testable without trio.
"""

from __future__ import annotations

import logging

from dnslib import QTYPE

from kdns.dns import wire
from kdns.dns.resolver import Resolver
from kdns.dns.wire import AnswerCache, Query

log = logging.getLogger(__name__)

CLASS_IN = 1
# Zone transfers are not offered (CoreDNS without its `transfer` plugin answers REFUSED).
REFUSED_TYPES = frozenset({QTYPE.AXFR, QTYPE.IXFR})


class Handler:
    def __init__(self, resolver: Resolver, cache: AnswerCache | None = None) -> None:
        self.resolver = resolver
        self.cache = cache if cache is not None else AnswerCache()
        self.errors = 0

    def handle(self, data: bytes, udp: bool) -> bytes | None:
        data = bytes(data)  # a no-op for the bytes sockets give; keys must be hashable
        hit = self.cache.answer(data, udp)
        if hit is not None:
            return hit
        return self.handle_miss(data, udp)

    def handle_miss(self, data: bytes, udp: bool) -> bytes | None:
        """Everything but the cache hit; listeners that tried `cache.answer` call this."""
        try:
            return self._slow(data, udp)
        except Exception:
            # The request boundary (DESIGN.md §5): a bug answers SERVFAIL and is logged, it
            # never takes the server down.
            self.errors += 1
            log.exception("internal error answering a query")
            if len(data) < 12:
                return None
            qid, flags = int.from_bytes(data[:2]), int.from_bytes(data[2:4])
            return wire.error_response(qid, flags, wire.SERVFAIL)

    def _slow(self, data: bytes, udp: bool) -> bytes | None:
        query = wire.parse_query(data)
        if not isinstance(query, Query):
            return query  # None (drop) or an encoded FORMERR
        if query.opcode != 0:
            return wire.finish(
                wire.error_response(query.id, query.flags, wire.NOTIMP, query), query, udp
            )
        if query.edns and query.edns_version != 0:
            return wire.finish(
                wire.error_response(query.id, query.flags, wire.BADVERS, query), query, udp
            )
        if query.qclass != CLASS_IN or query.qtype in REFUSED_TYPES:
            return wire.finish(
                wire.error_response(query.id, query.flags, wire.REFUSED, query), query, udp
            )
        answer = self.resolver.resolve(query.qname, query.qtype)
        if answer is None:
            # Not in our zones; forwarding comes with the resolver issue — until then, REFUSED.
            return wire.finish(
                wire.error_response(query.id, query.flags, wire.REFUSED, query), query, udp
            )
        response = wire.encode(
            query, answer.rcode, answer.answer, answer.authority, answer.additional
        )
        if answer.cacheable:
            self.cache.store(data, query, response, answer.tags)
        return wire.finish(response, query, udp)

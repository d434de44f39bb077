"""The answers to relayed misses: an upstream reply made into each client's.

Pure (bytes in, bytes out; no sockets, no threads): kdns/dns/relayed.py calls it from the
receive thread that sent the miss upstream and read its reply (kdns/dns/miss_relay.py). Its
contract is byte equality with trio's path: a client gets exactly what `Forwarder.resolve`
then `Handler.complete` would have sent it (tests/dns/test_fast_misses.py compares them).

- `ClientShaped(response, entry, ttls)`: one upstream response (OPT stripped) whose records
  carry `ttls`, with the TTLs of the cache entry just made from it (0 s elapsed, as
  `from_cache` gives) or as the upstream sent them when it is not cached (`relabel`);
  `answer(data, qend)` makes it the answer to the plain query `data` without parsing it — its
  ID, RD and CD (cached answers: as the client asked), RA, its question's spelling, our OPT
  when it sent one — or None when the answer must be cut for the client's UDP size.
- `generic_answer(data, response, entry, now)`: the same answer by trio's own functions
  (`from_cache` or `relabel`, then `wire.finish`), for what `ClientShaped` leaves (the cut).
"""

from __future__ import annotations

import struct

from kdns.dns import wire
from kdns.dns.upstream_cache import CacheEntry, from_cache
from kdns.dns.upstream_response import relabel
from kdns.dns.wire import Query

_TTL = struct.Struct("!I")


class ClientShaped:
    """One upstream response made into each waiting client's answer, byte for byte what trio
    sends (`from_cache` of the entry just stored, 0 s elapsed, or `relabel` when it is not
    cached; then `Handler.complete`: RA, the client's question, our OPT), without parsing the
    query: the receive thread, for a relayed miss. A plain query's question has the response's
    length (`matches` compared them), so the records start at the same offset."""

    __slots__ = ("arcount", "base", "cached", "flags", "rcode")

    def __init__(
        self, response: bytes, entry: CacheEntry | None, ttls: list[int] | None = None
    ) -> None:
        # `ttls`: those `response` carries (the usual case: none above the entry's, nothing to
        # rewrite); None: not known, written from the entry.
        if entry is not None and entry.ttls != ttls:
            base = bytearray(response)
            for offset, ttl in zip(entry.ttl_offsets, entry.ttls, strict=True):
                _TTL.pack_into(base, offset, ttl)  # the entry's TTLs, stored just now
            response = bytes(base)
        self.base = response
        self.cached = entry is not None
        self.flags = int.from_bytes(response[2:4])
        self.rcode = response[3] & 0xF
        self.arcount = int.from_bytes(response[10:12])

    def answer(self, data: bytes, qend: int) -> bytes | None:
        """The answer for the plain query `data` (question ending at `qend`); None when it
        must be cut for the client's UDP size (the generic path cuts)."""
        flags = self.flags
        if self.cached:  # `from_cache`: RD and CD as the client asked
            flags = flags & ~(wire.RD | wire.CD) | (int.from_bytes(data[2:4]) & (wire.RD | wire.CD))
        base = self.base
        edns = len(data) > qend
        out = (
            data[:2]
            + (flags | wire.RA).to_bytes(2)
            + base[4:10]
            + (self.arcount + edns).to_bytes(2)
            + data[12:qend]
            + base[qend:]
        )
        limit = wire.CLASSIC_UDP_PAYLOAD
        if edns:
            out += wire.opt_bytes(bool(data[qend + 7] & 0x80), self.rcode)
            payload = int.from_bytes(data[qend + 3 : qend + 5])
            limit = max(limit, min(payload, wire.MAX_UDP_PAYLOAD))
        return out if len(out) <= limit else None


def generic_answer(
    data: bytes, response: bytes, entry: CacheEntry | None, now: float
) -> bytes | None:
    """What trio sends, by trio's own functions: `resolve` (from the entry just stored,
    0 s elapsed, or relabelled when not cacheable), then `Handler.complete` (RA, the
    client's question, the UDP cut). None when `data` is not a query trio would answer."""
    query = wire.parse_query(data)
    if not isinstance(query, Query):
        return None
    body = from_cache(entry, query, now) if entry is not None else relabel(response, query)
    return wire.finish(body[:3] + bytes((body[3] | 0x80,)) + body[4:], query, True)

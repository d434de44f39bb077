"""Reading upstream responses: where a response's TTLs are, and making it the client's answer.

Pure (bytes in, bytes out; no sockets, no clock): what the forwarder (kdns/dns/forward.py), the
upstream cache (kdns/dns/upstream_cache.py) and the relay's trio side (kdns/dns/relayed.py)
share about an upstream's reply.

- `parse_response(data, question_end)` walks every record once and returns a `Parsed`: the
  rcode, each TTL
  and its offset (OPT's excluded), the answer section's TTLs, the negative-caching TTL of the
  authority section's SOA (RFC 2308 §5: min(SOA TTL, SOA MINIMUM)) and the OPT record's span;
  a malformed response raises `wire.WireError`. `question_end`: where its one question ends,
  when the caller has compared it with its own already (the relay's `matches`), not walked again.
- `strip_opt(data, parsed)` drops the upstream's OPT record (ours is added per client, RFC
  6891 §7) and moves `parsed`'s TTL offsets with it.
- `relabel(response, query)`: an uncached response as the answer to `query` (its ID, the
  client's spelling of the question, our OPT).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kdns.dns import wire
from kdns.dns.wire import Query

OPT = 41
SOA = 6
RRHeader = struct.Struct("!HHIH")
_HEADER = struct.Struct("!6H")
_TO_QUESTION = b"\xc0\x0c"  # a compression pointer to offset 12: the first question's name


@dataclass(slots=True)
class Parsed:
    """Where the TTLs are in a response, and what they say."""

    rcode: int
    ancount: int
    ttl_offsets: list[int] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)
    answer_ttls: list[int] = field(default_factory=list)
    soa_negative_ttl: int | None = None  # min(SOA TTL, SOA MINIMUM) from the authority section
    opt_span: tuple[int, int] | None = None  # the OPT record's bytes, to strip


def parse_response(data: bytes, question_end: int | None = None) -> Parsed:
    """Walk a response's records (raises wire.WireError when it is malformed)."""
    if len(data) < 12:
        raise wire.WireError("short response")
    _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if question_end is not None and qdcount == 1:
        pos = question_end
    else:
        pos = 12
        for _ in range(qdcount):
            _, pos = wire.read_name(data, pos)
            pos += 4
    parsed = Parsed(rcode=flags & 0xF, ancount=ancount)
    offsets, ttls, answer_ttls = parsed.ttl_offsets, parsed.ttls, parsed.answer_ttls
    size, header = len(data), RRHeader.unpack_from
    for section, count in ((0, ancount), (1, nscount), (2, arcount)):
        for _ in range(count):
            start = pos
            if qdcount and data[pos : pos + 2] == _TO_QUESTION:
                pos += 2  # the question's name, which read_name has already walked
            else:
                _, pos = wire.read_name(data, pos)
            if pos + 10 > size:
                raise wire.WireError("record header runs past the end")
            rtype, _rclass, ttl, rdlength = header(data, pos)
            ttl_offset = pos + 4
            pos += 10 + rdlength
            if pos > size:
                raise wire.WireError("rdata runs past the end")
            if rtype == OPT:
                parsed.opt_span = (start, pos)
                continue
            offsets.append(ttl_offset)
            ttls.append(ttl)
            if section == 0:
                answer_ttls.append(ttl)
            elif section == 1 and rtype == SOA and rdlength >= 20:
                minimum = struct.unpack_from("!I", data, pos - 4)[0]
                parsed.soa_negative_ttl = min(ttl, minimum)
    return parsed


def strip_opt(data: bytes, parsed: Parsed) -> bytes:
    """The response without its OPT record: ours is added per client (RFC 6891 §7)."""
    if parsed.opt_span is None:
        return data
    start, end = parsed.opt_span
    arcount = struct.unpack_from("!H", data, 10)[0]
    out = data[:10] + struct.pack("!H", arcount - 1) + data[12:start] + data[end:]
    shift = end - start
    parsed.ttl_offsets = [o if o < start else o - shift for o in parsed.ttl_offsets]
    parsed.opt_span = None
    return out


def relabel(response: bytes, query: Query) -> bytes:
    """An upstream response (OPT stripped) as the answer to `query`, not cached: its ID and
    question, our OPT when the client sent one (RFC 6891 §7)."""
    out = bytearray(response)
    out[0:2] = query.id.to_bytes(2)
    if not query.compressed:
        out[12 : 12 + len(query.question)] = query.question
    if query.edns:
        out[10:12] = (int.from_bytes(out[10:12]) + 1).to_bytes(2)
        out += wire.opt_record(query, out[3] & 0xF)
    return bytes(out)

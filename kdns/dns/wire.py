"""The DNS wire format at kdns's edge: strict query parsing, encoding, and the answer cache.

- `parse_query` validates a query before anything else reads it (dnslib alone accepts qdcount 0,
  64-octet labels, and recurses on pointer chains): it returns a `Query`, an encoded error
  response (FORMERR with the client's ID; NOTIMP for an opcode other than QUERY), or None when
  the packet must be dropped (shorter than a header, or a response — answering responses
  invites reflection loops).
- `split` cuts a response at its record boundaries (`Layout`): `Layout.fit` truncates it for
  UDP keeping whole records, `Layout.tail` rotates its first A/AAAA/SRV RRset.
- `encode` turns an answer into wire bytes, owner names compressed against a lower-case copy of
  the question, so that patching in the client's spelling later echoes its case everywhere.
- `AnswerCache` is the hot path (docs/architecture.md §7): whole encoded answers keyed by the
  question's wire bytes (name lower-cased), the header flags and the EDNS shape. A hit costs one
  dict lookup and one bytes join: the client's ID and question are copied into the stored answer
  (and, with rotation, one counter step picks the rotation). Entries carry the tags of the
  names they read and are dropped when one of those changes, and an opaque int the caller gave
  (`label`, the metrics label of a hit) that a hit returns with the bytes: `lookup` as a
  `Reply`, the pair `(bytes, label)`.
  `stats()` gives its entries by CoreDNS's cache type (success, denial) and its misses.

Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import operator
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from dnslib import RR, DNSBuffer, DNSLabel

from kdns.dns import pack
from kdns.dns.stats import CacheStats

MAX_UDP_PAYLOAD = 1232  # EDNS payload cap (DNS Flag Day 2020; RFC 9715 guidance)
CLASSIC_UDP_PAYLOAD = 512  # RFC 1035 §4.2.1, without EDNS
MAX_NAME = 255  # octets on the wire, RFC 1035 §3.1
MAX_LABEL = 63
OPT = 41


# A response to send and the metrics label id (`dns.stats.LABELS`) it is counted under. A plain
# pair, not a NamedTuple: a cache hit hands on the pair `lookup` built, where making a NamedTuple
# per hit cost about 150 ns more (a sixth of a hit, tests/bench/answer_cache.py).
Reply: TypeAlias = tuple[bytes, int]

# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
CD = 0x0010

# RCODEs (RFC 1035, RFC 6891 for the extended BADVERS).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

_HEADER = struct.Struct("!6H")
_TYPE_CLASS = struct.Struct("!HH")


@dataclass(slots=True)
class Query:
    id: int
    flags: int
    labels: tuple[bytes, ...]  # as the client spelled them
    qtype: int
    qclass: int
    question: bytes  # the question section as sent (name + type + class)
    compressed: bool  # the question name used a compression pointer
    edns: bool = False
    payload: int = CLASSIC_UDP_PAYLOAD
    do: bool = False
    edns_version: int = 0

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def qname(self) -> str:
        """The name, lower-case text without the trailing dot, for lookups.

        A label holding a dot or a backslash is escaped, so it can never match one of our
        names by accident (`a.b` as one label is not the two labels `a`, `b`)."""
        labels = self.labels
        joined = b".".join(labels)
        if joined.count(b".") == len(labels) - 1 and b"\\" not in joined:
            # No label holds a dot or a backslash (the usual case): one decode for the name.
            return joined.decode("latin-1").lower()
        return ".".join(_text_label(label) for label in labels)

    def udp_limit(self) -> int:
        if not self.edns:
            return CLASSIC_UDP_PAYLOAD
        return max(CLASSIC_UDP_PAYLOAD, min(self.payload, MAX_UDP_PAYLOAD))


def _text_label(label: bytes) -> str:
    text = label.decode("latin-1").lower()
    if "." in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace(".", "\\.")
    return text


class WireError(ValueError):
    """A malformed packet: the reason, for logs and metrics."""


def read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """Read a (possibly compressed) name: (labels, the offset just after it).

    A pointer may only point to a prior occurrence (RFC 1035 §4.1.4): before everything this name
    has read so far, and past the header. Each jump therefore lands strictly lower than the last,
    which rules out loops without a hop counter. The 0x40 and 0x80 label types are obsolete or
    undefined (RFC 6891 §5) and rejected.
    """
    labels: list[bytes] = []
    length = 1  # the root label's octet
    end = -1
    pos = lowest = offset
    n = len(data)
    while True:
        if pos >= n:
            raise WireError("name runs past the end of the packet")
        size = data[pos]
        if size == 0:
            if end < 0:
                end = pos + 1
            return tuple(labels), end
        kind = size & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise WireError("compression pointer runs past the end of the packet")
            target = ((size & 0x3F) << 8) | data[pos + 1]
            if target >= lowest or target < 12:
                raise WireError("compression pointer does not point to a prior name (loop)")
            if end < 0:
                end = pos + 2
            pos = lowest = target
            continue
        if kind:
            raise WireError(f"unsupported label type 0x{kind:02x}")
        if size > MAX_LABEL:  # pragma: no cover - kind==0 already bounds size to 63
            raise WireError("label longer than 63 octets")
        if pos + 1 + size > n:
            raise WireError("label runs past the end of the packet")
        length += size + 1
        if length > MAX_NAME:
            raise WireError("name longer than 255 octets")
        labels.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size


def _skip_rr(data: bytes, offset: int) -> tuple[int, int, int, int, bytes, int]:
    """Read one resource record: (name length 1 if root, type, class, ttl, rdata, next offset)."""
    labels, pos = read_name(data, offset)
    if pos + 10 > len(data):
        raise WireError("resource record header runs past the end of the packet")
    rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", data, pos)
    pos += 10
    if pos + rdlength > len(data):
        raise WireError("rdata runs past the end of the packet")
    return len(labels), rtype, rclass, ttl, data[pos : pos + rdlength], pos + rdlength


def parse_query(data: bytes) -> Query | bytes | None:
    if len(data) < 12:
        return None  # not even a header: nothing to answer to
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        return None  # a response: never answer it (reflection, loops)
    # An opcode we do not implement is NOTIMP whatever the rest holds (RFC 1035 §4.1.1): its
    # sections may mean something else (UPDATE's zone section), so their form is not ours to
    # judge. The handler gives a well-formed one the same rcode, with its question.
    malformed = FORMERR if not (flags >> 11) & 0xF else NOTIMP
    if qdcount != 1:
        return error_response(qid, flags, malformed)
    try:
        labels, pos = read_name(data, 12)
        compressed = pos != 12 + sum(len(label) + 1 for label in labels) + 1
        if pos + 4 > len(data):
            raise WireError("question runs past the end of the packet")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        query = Query(qid, flags, labels, qtype, qclass, data[12:pos], compressed)
        for _ in range(ancount + nscount):
            pos = _skip_rr(data, pos)[-1]
        for _ in range(arcount):
            name_labels, rtype, rclass, ttl, _rdata, pos = _skip_rr(data, pos)
            if rtype != OPT:
                continue
            if query.edns:
                raise WireError("more than one OPT record (RFC 6891 §6.1.1)")
            if name_labels:
                raise WireError("OPT record owner is not the root (RFC 6891 §6.1.2)")
            query.edns = True
            query.payload = rclass
            query.edns_version = (ttl >> 16) & 0xFF
            query.do = bool(ttl & 0x8000)
        if pos != len(data):
            raise WireError("trailing bytes after the last record")
    except WireError:
        return error_response(qid, flags, malformed)
    return query


def error_response(qid: int, flags: int, rcode: int, query: Query | None = None) -> bytes:
    """A response with no records: the client's ID, opcode, RD and CD; the question if known."""
    out_flags = QR | (flags & (0x7800 | RD | CD)) | (rcode & 0xF)
    if query is None:
        return _HEADER.pack(qid, out_flags, 0, 0, 0, 0)
    opt = opt_record(query, rcode) if query.edns else b""
    return _HEADER.pack(qid, out_flags, 1, 0, 0, 1 if opt else 0) + query.question + opt


def opt_record(query: Query, rcode: int = NOERROR) -> bytes:
    """Our OPT: payload size we accept, the upper rcode bits, version 0, DO echoed (RFC 3225)."""
    return opt_bytes(query.do, rcode)


def opt_bytes(do: bool, rcode: int = NOERROR) -> bytes:
    ttl = ((rcode >> 4) << 24) | (0x8000 if do else 0)
    return struct.pack("!BHHIH", 0, OPT, MAX_UDP_PAYLOAD, ttl, 0)


def encode(
    query: Query,
    rcode: int,
    answer: Iterable[RR | pack.Rec] = (),
    authority: Iterable[RR] = (),
    additional: Iterable[RR | pack.Rec] = (),
    authoritative: bool = True,
    recursion_available: bool = False,
) -> bytes:
    """Encode a response to `query`, question and owner names lower-case, ID as the client's.

    The client's spelling of the question is patched in by `finish`."""
    return encode_layout(
        query, rcode, answer, authority, additional, authoritative, recursion_available
    )[0]


def encode_layout(
    query: Query,
    rcode: int,
    answer: Iterable[RR | pack.Rec] = (),
    authority: Iterable[RR] = (),
    additional: Iterable[RR | pack.Rec] = (),
    authoritative: bool = True,
    recursion_available: bool = False,
    rotate: bool | None = None,
) -> tuple[bytes, Layout | None]:
    """`encode`, and with `rotate` given (True or False) the response's `Layout` as `split`
    would give it, read from where the encoder wrote each record instead of parsing the
    response again (None when dnslib encoded it)."""
    answer, authority, additional = list(answer), list(authority), list(additional)
    flags = QR | (query.flags & (RD | CD)) | (rcode & 0xF)
    if authoritative:
        flags |= AA
    if recursion_available:
        flags |= RA
    opt = opt_record(query, rcode) if query.edns else b""
    header = _HEADER.pack(
        query.id, flags, 1, len(answer), len(authority), len(additional) + (1 if opt else 0)
    )
    lower = tuple(label.lower() for label in query.labels)
    sections = (answer, authority, additional)
    marks = pack.Marks() if rotate is not None else None
    # The direct encoder writes what dnslib would, several times faster (kdns/dns/pack.py);
    # dnslib stays for what it does not know.
    packed = pack.message(
        header, lower, _TYPE_CLASS.pack(query.qtype, query.qclass), sections, marks
    )
    if packed is not None:
        if marks is None:
            return packed + opt, None
        return packed + opt, _marked(packed + opt, opt, sections, marks.offsets, bool(rotate))
    if any(type(rr) is pack.Rec for section in sections for rr in section):
        # A record in wire parts that the direct encoder refused: a name over a length limit,
        # which dnslib refuses too.
        raise ValueError("a record's name is longer than DNS allows")
    buffer = DNSBuffer()
    buffer.append(header)
    buffer.encode_name(DNSLabel(lower))
    buffer.pack("!HH", query.qtype, query.qclass)
    for rr in answer:
        rr.pack(buffer)
    for rr in authority:
        rr.pack(buffer)
    for rr in additional:
        rr.pack(buffer)
    return bytes(buffer.data) + opt, None


_OWNER = operator.itemgetter(0)  # a `pack.Rec`'s owner labels
_RTYPE = operator.itemgetter(1)  # and its type


def _owner(rr: RR | pack.Rec) -> tuple[bytes, ...]:
    # A Rec's owner is lower-case already (the resolver builds it from the lower-case qname).
    if type(rr) is pack.Rec:
        return rr.owner
    return tuple(label.lower() for label in rr.rname.label)


def _marked(
    response: bytes,
    opt: bytes,
    sections: tuple[list[RR | pack.Rec], list[RR], list[RR | pack.Rec]],
    offsets: list[int],
    rotate: bool,
) -> Layout:
    """The `Layout` of a response `pack.message` wrote, from its record offsets: what `split`
    reads back by parsing, grouped the same way (consecutive records of one owner and type)."""
    answer, authority, additional = sections
    an, ns, ar = len(answer), len(authority), len(additional)
    # Each answer record's bytes, cut in one pass of slices (a 500-record RRset's pieces).
    pieces = tuple(map(response.__getitem__, map(slice, offsets[:an], offsets[1 : an + 1])))
    spans, types = _one_rrset(answer, offsets) or _rrsets(answer, pieces)
    return Layout(
        response[:12],
        response[12 : offsets[0]],
        pieces,
        tuple(spans),
        response[offsets[an] : offsets[an + ns]],
        ns,
        response[offsets[an + ns] : offsets[an + ns + ar]],
        ar,
        opt,
        _rotatable(spans, types) if rotate else (0, 0),
    )


def _one_rrset(
    answer: list[RR | pack.Rec], offsets: list[int]
) -> tuple[list[tuple[int, int, int]], list[int]] | None:
    """The span of an answer section that is one RRset of `pack.Rec`s (a large Service's
    answer: one owner, one type), without a step per record; None for any other."""
    an = len(answer)
    if an < pack.RUN or set(map(type, answer)) != {pack.Rec}:
        return None
    owners = list(map(_OWNER, answer))
    rtypes = list(map(_RTYPE, answer))
    if owners.count(owners[0]) != an or rtypes.count(rtypes[0]) != an:
        return None
    return [(0, an, offsets[an] - offsets[0])], [rtypes[0]]


def _rrsets(
    answer: list[RR | pack.Rec], pieces: tuple[bytes, ...]
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """The spans of the answer section's RRsets (consecutive records of one owner and type:
    first index, end index, octets) and each one's type."""
    spans: list[tuple[int, int, int]] = []
    types: list[int] = []
    last: tuple[tuple[bytes, ...], int] | None = None
    for i, rr in enumerate(answer):
        owner = (_owner(rr), rr.rtype)
        if owner != last:
            spans.append((i, i + 1, len(pieces[i])))
            types.append(rr.rtype)
            last = owner
        else:
            first, _, size = spans[-1]
            spans[-1] = (first, i + 1, size + len(pieces[i]))
    return spans, types


# --- truncation and rotation --------------------------------------------------------------------

A_TYPE, AAAA_TYPE, SRV_TYPE = 1, 28, 33
# Round robin rotates these (CoreDNS's `loadbalance` rotates A, AAAA and MX; kdns serves SRV
# where CoreDNS would MX, and a client that takes the first SRV target is as common).
ROTATED_TYPES = frozenset({A_TYPE, AAAA_TYPE, SRV_TYPE})


@dataclass(frozen=True, slots=True)
class Layout:
    """A response cut at its record boundaries: what truncation and rotation rearrange.

    Compression pointers only point backwards (RFC 1035 §4.1.4), so any prefix of the records
    stays valid. Rotation moves whole records of one RRset; `split` offers it only for a
    response `encode` built, where those records hold no name that a later one points into
    (their owner is a pointer to the question or a CNAME target, SRV targets are not
    compressed, RFC 2782)."""

    header: bytes  # 12 octets
    question: bytes
    answer: tuple[bytes, ...]  # one item per record
    # Per answer RRset (same owner and type, consecutive): its records answer[first:last], and
    # their octets.
    spans: tuple[tuple[int, int, int], ...]
    authority: bytes
    nscount: int
    additional: bytes  # every additional record except OPT
    arcount: int  # of `additional`
    opt: bytes
    rotation: tuple[int, int] = (0, 0)  # answer[start:end] is the RRset to rotate

    @property
    def turns(self) -> int:
        """How many distinct rotations there are (1: nothing rotates)."""
        start, end = self.rotation
        return max(1, end - start)

    def answer_bytes(self, turn: int = 0) -> bytes:
        start, end = self.rotation
        if end - start < 2:
            return b"".join(self.answer)
        k = start + turn % (end - start)
        answer = self.answer
        return b"".join((*answer[:start], *answer[k:end], *answer[start:k], *answer[end:]))

    def tail(self, turn: int = 0) -> bytes:
        """Everything after the question, the answer rotated by `turn`."""
        return self.answer_bytes(turn) + self.authority + self.additional + self.opt

    def fit(self, limit: int, turn: int = 0) -> tuple[bytes, bytes]:
        """(header octets 2-12, tail) of the answer cut to `limit` octets, for UDP.

        As many whole answer records as fit, whole RRsets first: once an RRset does not fit,
        the records of it that fit end the answer (a client that does not retry over TCP —
        musl before 1.2.4, drill — still gets addresses). TC is set when answer or authority
        records were left out; leaving out additional records alone does not set it (RFC 2181
        §9: TC only when a required RRset could not be included)."""
        room = limit - 12 - len(self.question) - len(self.opt)
        answer = self.answer
        start, end = self.rotation
        if end - start >= 2:
            k = start + turn % (end - start)
            answer = (*answer[:start], *answer[k:end], *answer[start:k], *answer[end:])
        kept = 0  # answer[:kept] goes out
        cut = False
        for first, last, size in self.spans:
            if size <= room:
                room -= size
                kept = last
                continue
            for record in answer[first:last]:
                if len(record) > room:
                    break
                room -= len(record)
                kept += 1
            cut = True
            break
        authority, nscount = b"", 0
        additional, arcount = b"", 0
        if not cut:
            if len(self.authority) <= room:
                authority, nscount = self.authority, self.nscount
                room -= len(authority)
                if len(self.additional) <= room:
                    additional, arcount = self.additional, self.arcount
            else:
                cut = True
        flags = int.from_bytes(self.header[2:4]) | (TC if cut else 0)
        header = struct.pack("!5H", flags, 1, kept, nscount, arcount + (1 if self.opt else 0))
        return header, b"".join(answer[:kept]) + authority + additional + self.opt


def split(response: bytes, rotate: bool = False) -> Layout:
    """Cut a response with one question at its record boundaries (raises WireError).

    `rotate`: mark the first answer RRset of A, AAAA or SRV with more than one record for
    rotation — only for responses `encode` built (see `Layout`)."""
    _, _, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(response)
    if qdcount != 1:
        raise WireError("a response to split has one question")
    _, pos = read_name(response, 12)
    qend = pos + 4
    pos = qend
    answer: list[bytes] = []
    spans: list[tuple[int, int, int]] = []
    types: list[int] = []  # per span
    last: tuple[tuple[bytes, ...], int] | None = None
    for i in range(ancount):
        labels, _ = read_name(response, pos)
        _, rtype, _, _, _, end = _skip_rr(response, pos)
        owner = (tuple(label.lower() for label in labels), rtype)
        if owner != last:
            spans.append((i, i + 1, end - pos))
            types.append(rtype)
            last = owner
        else:
            first, _, size = spans[-1]
            spans[-1] = (first, i + 1, size + end - pos)
        answer.append(response[pos:end])
        pos = end
    authority_start = pos
    for _ in range(nscount):
        pos = _skip_rr(response, pos)[-1]
    authority = response[authority_start:pos]
    additional: list[bytes] = []
    opt = b""
    for _ in range(arcount):
        rtype, end = _skip_rr(response, pos)[1::4]
        if rtype == OPT:
            opt = response[pos:end]
        else:
            additional.append(response[pos:end])
        pos = end
    return Layout(
        response[:12],
        response[12:qend],
        tuple(answer),
        tuple(spans),
        authority,
        nscount,
        b"".join(additional),
        len(additional),
        opt,
        _rotatable(spans, types) if rotate else (0, 0),
    )


def _rotatable(spans: list[tuple[int, int, int]], types: list[int]) -> tuple[int, int]:
    """The span of the first A, AAAA or SRV RRset with more than one record, else (0, 0)."""
    for (first, last, _), rtype in zip(spans, types, strict=True):
        if last - first > 1 and rtype in ROTATED_TYPES:
            return first, last
    return 0, 0


def finish(response: bytes, query: Query, udp: bool, layout: Layout | None = None) -> bytes:
    """Patch the client's spelling of the question in, and truncate for UDP if needed
    (`layout`, when given, is the response's, as `encode_layout` made it)."""
    if not query.compressed:
        response = response[:12] + query.question + response[12 + len(query.question) :]
    limit = query.udp_limit()
    if udp and len(response) > limit:
        if layout is None:
            layout = split(response)
        header, tail = layout.fit(limit)
        return response[:2] + header + response[12 : 12 + len(layout.question)] + tail
    return response


# --- the answer cache ----------------------------------------------------------------------------


def cache_key(data: bytes) -> tuple[bytes, int, int] | None:
    """(key, question end, UDP limit) for a query the cache can serve, else None.

    Servable: one uncompressed question, no answer/authority records, and either no additional
    record or exactly one EDNS version 0 OPT. The key is the header flags and counts, the name
    lower-cased, type and class, and the DO bit: everything the answer depends on.
    """
    n = len(data)
    z = data.find(0, 12)
    if z < 0 or n < z + 5:
        return None
    qend = z + 5
    if n == qend:
        if data[4:12] != _COUNTS_PLAIN:
            return None
        return data[2:z].lower() + data[z:qend], qend, CLASSIC_UDP_PAYLOAD
    # One OPT record in the additional section: root name, type 41, payload, ext-rcode,
    # version, flags, rdlength.
    if data[4:12] != _COUNTS_EDNS:
        return None
    if n < qend + 11 or data[qend] != 0 or data[qend + 1 : qend + 3] != b"\x00\x29":
        return None
    if data[qend + 6] != 0 or int.from_bytes(data[qend + 9 : qend + 11]) != n - qend - 11:
        return None
    payload = int.from_bytes(data[qend + 3 : qend + 5])
    limit = CLASSIC_UDP_PAYLOAD if payload < CLASSIC_UDP_PAYLOAD else min(payload, MAX_UDP_PAYLOAD)
    do = b"D" if data[qend + 7] & 0x80 else b"E"
    return data[2:z].lower() + data[z:qend] + do, qend, limit


def plain_question(data: bytes) -> tuple[tuple[bytes, ...], int, bool, bool] | None:
    """(labels as sent, the question's end, EDNS, DO) of a plain query, else None.

    Plain: a QUERY (not a response), one uncompressed question whose name is within the
    limits `parse_query` checks, no answer or authority records, and either no additional
    record or exactly one EDNS version 0 OPT (`cache_key`'s shapes): a query `parse_query`
    takes as it is. Anything else is for the full parse."""
    if len(data) < 17 or data[2] & 0xF8:  # QR, or an opcode other than QUERY
        return None
    end = data.find(0, 12)  # the root label's octet, unless a label holds a zero (below)
    qend = end + 5
    n = len(data)
    if end < 0 or n < qend or end - 12 + 1 > MAX_NAME:
        return None
    if n == qend:
        if data[4:12] != _COUNTS_PLAIN:
            return None
        edns = False
    elif (
        data[4:12] != _COUNTS_EDNS
        or n < qend + 11
        or data[qend] != 0
        or data[qend + 1 : qend + 3] != b"\x00\x29"
        or data[qend + 6] != 0  # EDNS version 0
        or int.from_bytes(data[qend + 9 : qend + 11]) != n - qend - 11
    ):
        return None
    else:
        edns = True
    labels = []
    pos = 12
    while pos < end:
        size = data[pos]
        if size > MAX_LABEL:  # a pointer or an obsolete label type too
            return None
        labels.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size
    if pos != end:
        return None  # a zero octet inside a label ended the name early
    return tuple(labels), qend, edns, edns and bool(data[qend + 7] & 0x80)


Tag = tuple[str, ...]
# qdcount 1, no answer or authority records, and no / one additional record.
_COUNTS_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_COUNTS_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x01"


ROTATIONS_KEPT = 64  # an RRset up to this size keeps every rotation encoded; larger ones re-join
CUTS_KEPT = 256  # UDP cuts (limit, rotation) kept per entry: a few hundred kB at most
# The kept denials (`AnswerCache.keep_denial`): the bytes they may hold, by `_kept_size` (a
# name of podmix's `<outside name>.<ns>.svc.<zone>` shape takes ~400: some 10,000 questions).
DENIALS_MAX_BYTES = 4 << 20
DENIAL_OVERHEAD = 300  # the tuple, two bytes objects' headers, the dict slot (CPython 3.11)

# An entry: (header octets 2-12, the tail after the question per rotation — () when re-joined
# per answer —, full length, the Layout, the rotation turns to come, the label, the UDP cuts
# made, its estimated size, its tags). Immutable once stored but for the count and the cuts
# memo (see `AnswerCache.lookup`).
Entry = tuple[
    bytes,
    tuple[bytes, ...],
    int,
    Layout,
    "itertools.count[int]",
    int,
    dict[tuple[int, int], tuple[bytes, bytes]],
    int,
    tuple[Tag, ...],
]


class AnswerCache:
    """Encoded answers by `cache_key`, dropped by tag; bounded by entry count.

    A hit is rebuilt around the client's own ID and question with one join. With `rotate`
    (CoreDNS's `loadbalance round_robin`), an entry whose answer has an A, AAAA or SRV RRset of
    several records gives each hit the next rotation of it: each entry counts its own turns, so
    a client asking A and AAAA in alternation still sees every rotation of both. Rotations of
    an RRset up to `ROTATIONS_KEPT` records are encoded once, when stored; a larger one is
    re-joined from its records per answer. A UDP answer over the client's limit is cut per
    `Layout.fit` from the same rotation.

    Bounded by `max_entries` and by `max_bytes`, the estimated memory of its entries
    (`entry_size`; the UDP cuts an entry keeps as it is asked are not counted, `CUTS_KEPT`
    bounds them): a store that would exceed either evicts the oldest entries first, counted in
    `evictions_success` / `evictions_denial` (CoreDNS's `cache_evictions_total`).

    Only the trio thread stores, drops and evicts; `lookup` may run in another thread.

    Beside the entries, the *kept denials*: NXDOMAINs the receive thread built from the store's
    state (`Handler.denial`, a random-subdomain flood, the search expansions of outside names),
    which are not entries (a flood would push out the names asked again), kept by
    `keep_denial` in a dict of their own, bounded by DENIALS_MAX_BYTES (emptied when full), and
    answered by `lookup` after the entries, as cheaply. Every NXDOMAIN carries the zone's SOA
    serial, which every store change moves, so `drop` (called after each change is applied)
    and `clear` swap in an empty dict. Either thread may keep one (see `keep_denial`).
    """

    def __init__(
        self, max_entries: int = 100_000, rotate: bool = True, max_bytes: int = 32 << 20
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.rotate = rotate
        self.entries: dict[bytes, Entry] = {}
        self.by_tag: dict[Tag, set[bytes]] = {}
        self.bytes = 0  # the estimated size of every entry (`entry_size`)
        self.hits = 0
        self.misses = 0
        self.evictions_success = 0
        self.evictions_denial = 0
        # key → (header octets 2-12, what follows the question, label id); swapped, never
        # emptied in place, so a denial built from a state since changed lands in a dead dict.
        self.denials: dict[bytes, tuple[bytes, bytes, int]] = {}
        self.denial_bytes = 0  # their estimated size (`_kept_size`)

    def __len__(self) -> int:
        return len(self.entries)

    def answer(self, data: bytes, udp: bool) -> Reply | None:
        """A full response for `data` with its entry's label, or None (take the slow path);
        counts hits and misses. The trio thread's entry point (TCP, `Handler.handle`)."""
        found = self.lookup(data, udp)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return found

    def lookup(self, data: bytes, udp: bool) -> Reply | None:
        """The hot path: a full response for `data` and its entry's label, or None.

        Safe to call from another thread than the one that stores (the UDP receive thread,
        kdns/dns/receiver.py): it writes nothing of the cache's own, reads one dict entry
        (atomic under the GIL), and an entry is immutable once stored but for its rotation
        counter (`next` on an itertools.count is atomic) and its memo of UDP cuts (a dict set
        of a value computed from the immutable layout: two threads at worst compute it twice).

        The common shape (no EDNS) is keyed inline; everything else goes through `cache_key`.
        Only a plain query can be in the cache, and the key holds the whole header, so a query
        of any other shape simply misses. A kept denial (the class docstring) is read the same
        way: one dict entry, an immutable tuple."""
        z = data.find(0, 12)
        qend = z + 5
        if z >= 12 and len(data) == qend:
            key = data[2:z].lower() + data[z:qend]
            entry = self.entries.get(key)
            limit = CLASSIC_UDP_PAYLOAD
        else:
            found = cache_key(data) if z >= 12 else None
            if found is None:
                return None
            key, qend, limit = found
            entry = self.entries.get(key)
        if entry is None:
            # A denial kept for this question (never over 512 bytes: no cut needed).
            kept = self.denials.get(key)
            if kept is None:
                return None
            return data[:2] + kept[0] + data[12:qend] + kept[1], kept[2]
        if udp and entry[2] > limit:
            header, tail = self._cut(entry, limit)
            return data[:2] + header + data[12:qend] + tail, entry[5]
        tails = entry[1]
        if len(tails) == 1:
            return data[:2] + entry[0] + data[12:qend] + tails[0], entry[5]
        turn = next(entry[4])
        tail = tails[turn % len(tails)] if tails else entry[3].tail(turn)
        return data[:2] + entry[0] + data[12:qend] + tail, entry[5]

    @staticmethod
    def _cut(entry: Entry, limit: int) -> tuple[bytes, bytes]:
        """The answer of `entry` cut to `limit` for UDP, the next rotation; each cut is kept in
        the entry (up to `CUTS_KEPT`), so a busy large Service costs a dict lookup per hit."""
        layout, turn, cuts = entry[3], entry[4], entry[6]
        turns = layout.turns
        key = (limit, next(turn) % turns if turns > 1 else 0)
        cut = cuts.get(key)
        if cut is None:
            cut = layout.fit(limit, key[1])
            if len(cuts) < CUTS_KEPT:
                cuts[key] = cut
        return cut

    def store(
        self,
        data: bytes,
        query: Query,
        response: bytes,
        tags: Iterable[Tag],
        label: int = 0,
        layout: Layout | None = None,
    ) -> None:
        """Remember `response` (encoded by `encode`, not yet finished) for queries like `data`;
        a hit on it returns `label` with the response. `layout`, when given, is the response's
        as `encode_layout` made it with this cache's `rotate` (saves parsing it again)."""
        found = _storable_key(data, query)
        if found is None:
            return
        key, qend = found
        if layout is None:
            layout = split(response, rotate=self.rotate)
        turns = layout.turns
        if turns == 1:
            tails: tuple[bytes, ...] = (response[qend:],)
        elif turns <= ROTATIONS_KEPT:
            tails = tuple(layout.tail(turn) for turn in range(turns))
        else:
            tails = ()
        tags = tuple(tags)
        size = entry_size(key, tails, response, layout, tags)
        if size > self.max_bytes:
            return  # larger than the whole budget: answered from the slow path each time
        self._remove(key)  # a store over a live entry (two misses in flight) replaces it
        self._make_room(size)
        # The slow path answered turn 0: the first hit gives the next rotation. The tuple is
        # complete before it is published: the receive thread may read it from the next line.
        self.entries[key] = (
            response[2:12],
            tails,
            len(response),
            layout,
            itertools.count(1),
            label,
            {},
            size,
            tags,
        )
        self.bytes += size
        for tag in tags:
            self.by_tag.setdefault(tag, set()).add(key)

    def _make_room(self, size: int) -> None:
        """Evict the oldest entries until one more of `size` bytes fits both budgets.

        A flood of distinct names (random-subdomain attacks) must not grow us without bound:
        the oldest entries make room (insertion order; a hot entry evicted costs one slow-path
        answer, then it is back)."""
        while self.entries and (
            len(self.entries) >= self.max_entries or self.bytes + size > self.max_bytes
        ):
            self._evict(next(iter(self.entries)))

    def _remove(self, key: bytes) -> Entry | None:
        """Forget one entry, its bytes and its place under each of its tags."""
        entry = self.entries.pop(key, None)
        if entry is None:
            return None
        self.bytes -= entry[7]
        for tag in entry[8]:
            keys = self.by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_tag[tag]
        return entry

    def _evict(self, key: bytes) -> None:
        entry = self._remove(key)
        if entry is not None:
            if _is_denial(entry[0]):
                self.evictions_denial += 1
            else:
                self.evictions_success += 1

    def keep_denial(
        self, data: bytes, reply: Reply, into: dict[bytes, tuple[bytes, bytes, int]]
    ) -> None:
        """Keep the NXDOMAIN `reply` to `data` for `lookup`, in `into`: the `denials` dict the
        caller read *before* it read the store's state to build the reply. A change applied
        meanwhile has swapped `denials` (`drop`): the reply, maybe built from the state before,
        then goes into the dead dict and is never served.

        Bounded by emptying `into` whenever the next one would pass DENIALS_MAX_BYTES: a
        random-name flood fills it with names never asked again, and what pods do ask again
        is kept anew on its next question (one rebuild each). Not oldest-first: popping a
        dict's oldest key over and over leaves deleted slots at its front that every
        `next(iter(...))` walks again (measured: a never-asked name cost 1.2× the CPU).

        Safe from the receive thread (and from trio, and two receive threads sharing a
        handler): one dict set of an immutable tuple, or one `clear` (a dead dict's, at
        worst); two threads at once at worst skew `denial_bytes`, an estimate, until the next
        swap."""
        response, label = reply
        if into is not self.denials or len(response) > CLASSIC_UDP_PAYLOAD:
            return
        if data[2] >= 0x41 or data[3] >= 0x41:
            return  # as `store`: equal keys must mean equal headers
        z = data.find(0, 12)
        qend = z + 5
        if z >= 12 and len(data) == qend:
            key = data[2:z].lower() + data[z:qend]  # as `lookup` keys the common shape
        else:
            found = cache_key(data)
            if found is None:
                return
            key, qend, _ = found
        kept = (response[2:12], response[qend:], label)
        size = _kept_size(key, kept)
        if self.denial_bytes + size > DENIALS_MAX_BYTES:
            into.clear()
            self.denial_bytes = 0
        self.denial_bytes += size
        into[key] = kept

    def drop(self, tags: Iterable[Tag]) -> int:
        # Every change moves the SOA serial each kept denial carries: start afresh (a swap,
        # see `keep_denial`).
        self.denials, self.denial_bytes = {}, 0
        tags = set(tags)
        if ("*",) in tags:  # the resolver rebuilt: nothing cached can be trusted
            dropped = len(self.entries)
            self.clear()
            return dropped
        dropped = 0
        # Only the tags some entry has: a change of a 500-endpoint Service names a thousand
        # addresses' tags, and the intersection skips those no answer read in one C pass.
        for tag in self.by_tag.keys() & tags:
            for key in tuple(self.by_tag.get(tag, ())):
                dropped += self._remove(key) is not None
        return dropped

    def clear(self) -> None:
        self.denials, self.denial_bytes = {}, 0
        self.entries.clear()
        self.by_tag.clear()
        self.bytes = 0

    def stats(self) -> CacheStats:
        """Entries by type, read from each stored header: NXDOMAIN and NODATA (NOERROR, no
        answer records) are CoreDNS's denial, the rest success. Hits are not given: the listener
        counts them as the queries they answer."""
        denial = sum(_is_denial(entry[0]) for entry in self.entries.values())
        return CacheStats(
            success=len(self.entries) - denial,
            denial=denial,
            misses=self.misses,
            evictions_success=self.evictions_success,
            evictions_denial=self.evictions_denial,
        )


def _kept_size(key: bytes, kept: tuple[bytes, bytes, int]) -> int:
    """The estimated bytes one kept denial holds (`AnswerCache.keep_denial`)."""
    return DENIAL_OVERHEAD + len(key) + len(kept[0]) + len(kept[1])


def _is_denial(header: bytes) -> bool:
    """Whether a stored answer (its bytes 2-12: flags, then the four counts) is CoreDNS's denial:
    NXDOMAIN, or NODATA (NOERROR without answer records)."""
    rcode = header[1] & 0xF
    return rcode == NXDOMAIN or (rcode == NOERROR and header[4:6] == b"\0\0")


# What an entry costs beyond its bytes: the dict slot, the entry tuple, the count, the Layout and
# its lists, the cuts dict and the by_tag sets, measured with tracemalloc on CPython 3.11
# (tests/dns/test_wire.py checks the estimate stays close).
ENTRY_OVERHEAD = 1000
BYTES_OVERHEAD = 33  # a bytes object's header
SPAN_OVERHEAD = 120  # a span's tuple and its ints
TAG_OVERHEAD = 120  # the entry's key in one by_tag set (its tag tuple is shared, mostly)


def _storable_key(data: bytes, query: Query) -> tuple[bytes, int] | None:
    """The answer cache's key for `query` (parsed from `data`) and where its question ends,
    or None when its answer may not be stored: a compressed question, an opcode other than
    QUERY, an EDNS version other than 0, or header or question bytes a key would not tell
    apart (below)."""
    found = cache_key(data)
    if found is None or query.compressed or query.opcode != 0 or query.edns_version != 0:
        return None
    if data[2] >= 0x41 or data[3] >= 0x41:
        # Keys lower-case the header bytes with the name; only header bytes that lower-casing
        # leaves alone may be stored, so a hit implies the client's header is the stored one.
        return None
    key, qend, _ = found
    if qend != 12 + len(query.question):
        # The key found the name's end by the first zero octet; a zero inside a label
        # (legal, if odd) makes that a different question. Such a query is not cached,
        # so every stored key is a well-formed question and a hit is the same question.
        return None
    return key, qend


def entry_size(
    key: bytes, tails: tuple[bytes, ...], response: bytes, layout: Layout, tags: tuple[Tag, ...]
) -> int:
    """The memory one entry holds, estimated: its key, its encoded tails, the Layout's copy of
    the response in pieces, and a fixed overhead per object."""
    pieces = len(layout.answer) + 5  # and the header, question, authority, additional, OPT
    return (
        ENTRY_OVERHEAD
        + len(key)
        + sum(len(t) + BYTES_OVERHEAD for t in tails)
        + len(response)
        + (BYTES_OVERHEAD + 8) * pieces
        + SPAN_OVERHEAD * len(layout.spans)
        + TAG_OVERHEAD * len(tags)
    )

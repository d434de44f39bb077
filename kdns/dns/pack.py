"""Direct encoding of a response: the bytes dnslib would write, without its buffer machinery.

The miss path (a name never asked before, an answer rebuilt after a change) spent most of its
time in dnslib's per-field `struct` calls and label objects. `message` writes the same wire
form from the records' fields with one `bytearray`, compressing names as dnslib does (RFC 1035
§4.1.4): every suffix of a name written in an owner, or in the rdata of NS, CNAME, PTR or SOA
(RFC 3597 §4: the types whose rdata names may be compressed), is remembered by its offset, and
the longest suffix already written becomes a pointer. SRV targets are never compressed nor
remembered (RFC 2782), so no later record points into a rotated SRV RRset.

Records come as dnslib RRs or as `Rec`, a record kept in wire parts (its owner's labels, and
every octet after the owner already encoded) that the resolver builds for large answers without
dnslib's object model (docs/architecture.md §7): a 500-endpoint headless answer spent most of
its time building dnslib objects, then writing each record's fields.

Contract: `message(...)` returns the encoded response, byte for byte what `wire.encode`'s
dnslib path gives for the same input, or None when a record is of a type it does not know or a
name breaks a length limit (the caller then encodes with dnslib, which raises as before; a
`Rec` it cannot write makes the caller raise, as dnslib would for such a name). With a
`Marks` it also notes where each record starts, so the caller can cut the response into
records without parsing it again. `soa_denial` writes a negative answer (NXDOMAIN or NODATA
with the zone's SOA, RFC 2308 §3) from plain values. Pure: no I/O; a message of
`LARGE_BUILD` records or more is written under `interpreter.handing_over()` (a shorter switch
interval, set back after it or after the trio step: scheduling only, no output changes).
"""

from __future__ import annotations

import operator
import struct
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate, repeat
from operator import add

from dnslib import RR

from kdns.interpreter import LARGE_BUILD, handing_over

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33
_NAMED = frozenset({NS, CNAME, PTR})  # rdata is one compressible name
MAX_POINTER = 0x3FFF  # a pointer holds a 14-bit offset
MAX_NAME = 255  # octets on the wire with the root label (RFC 1035 §3.1)
_RR = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")
_SOA_TIMES = struct.Struct("!IIIII")
# A compression pointer's two octets, made once for the offsets most pointers hold (the
# question's names, at 12 on): 18 KiB, not the 700 KiB of every offset.
NEAR = 512
_POINTER = tuple((0xC000 | offset).to_bytes(2) for offset in range(NEAR))
_LENGTH = tuple(bytes((n,)) for n in range(64))  # a label's length octet, by length
# A section of this many `Rec`s or more is written a run at a time (`_write_run`); below,
# the checks cost more than they save.
RUN = 16
_OWNER = operator.itemgetter(0)
_TAIL = operator.itemgetter(2)

Names = dict[tuple[bytes, ...], int]


class Rec(tuple[tuple[bytes, ...], int, bytes | None]):
    """One record in wire parts: `owner` labels (lower-case, compressed when written), then
    `tail`, every octet after the owner — type, class, TTL, RDLENGTH and RDATA — already
    encoded, for the types whose RDATA holds no compressible name (A, AAAA, and SRV, whose
    target is never compressed, RFC 2782); None when a name in it breaks a length limit (the
    encoder then refuses the record, as dnslib would). `rtype` is kept for the layout and for
    RFC 8482's cut. A tuple: a 500-endpoint answer makes a thousand, and
    `tuple.__new__(Rec, (owner, rtype, tail))` makes one without `__new__`'s Python frame.
    Answers share them."""

    __slots__ = ()
    rclass = 1  # IN

    def __new__(cls, owner: tuple[bytes, ...], rtype: int, tail: bytes | None) -> Rec:
        return tuple.__new__(cls, (owner, rtype, tail))

    owner = property(operator.itemgetter(0))
    rtype = property(operator.itemgetter(1))
    tail = property(operator.itemgetter(2))

    def __repr__(self) -> str:
        return f"Rec({b'.'.join(self.owner)!r}, {self.rtype}, {self.tail!r})"


def name_wire(labels: tuple[bytes, ...]) -> bytes | None:
    """`labels` uncompressed, with the root label; None when a limit is broken (a label of
    over 63 octets, a name of over 255)."""
    out = bytearray()
    if not _write_plain(out, labels):
        return None
    return bytes(out)


class Marks:
    """Where each record of `message`'s output starts (and where the last one ends)."""

    __slots__ = ("offsets",)

    def __init__(self) -> None:
        self.offsets: list[int] = []


def write_name(out: bytearray, names: Names, labels: tuple[bytes, ...]) -> bool:
    """Append `labels`, compressed against `names` (updated); False if a limit is broken."""
    if sum(map(len, labels)) + len(labels) >= MAX_NAME:
        return False
    for i in range(len(labels)):
        suffix = labels[i:]
        pointer = names.get(suffix)
        if pointer is not None:
            out += _POINTER[pointer] if pointer < NEAR else (0xC000 | pointer).to_bytes(2)
            return True
        if len(out) <= MAX_POINTER:
            names[suffix] = len(out)
        label = labels[i]
        if len(label) > 63:
            return False
        out.append(len(label))
        out += label
    out.append(0)
    return True


def _write_under(out: bytearray, names: Names, labels: tuple[bytes, ...]) -> bool:
    """`write_name` for a name not written before: the two steps `write_name` takes for a name
    whose first label alone is new (an endpoint's name below its Service's, written in the
    question), or `write_name` itself for any other."""
    if len(labels) < 2:
        return write_name(out, names, labels)
    rest = names.get(labels[1:])
    head = labels[0]
    if rest is None or len(head) > 63 or sum(map(len, labels)) + len(labels) >= MAX_NAME:
        return write_name(out, names, labels)
    if len(out) <= MAX_POINTER:
        names[labels] = len(out)
    out.append(len(head))
    out += head
    out += _POINTER[rest] if rest < NEAR else (0xC000 | rest).to_bytes(2)
    return True


def _write_plain(out: bytearray, labels: tuple[bytes, ...]) -> bool:
    if sum(map(len, labels)) + len(labels) >= MAX_NAME:
        return False
    for label in labels:
        if len(label) > 63:
            return False
        out.append(len(label))
        out += label
    out.append(0)
    return True


def write_rec(out: bytearray, names: Names, rec: Rec) -> bool:
    """Append one `Rec`; False (and `out` unusable) for a name it cannot write."""
    tail = rec.tail
    if tail is None:
        return False
    pointer = names.get(rec.owner)
    if pointer is not None:
        # The whole owner written before (every record of an RRset after its first, and the
        # question's name): the pointer `write_name` would find first, without its checks,
        # which that name passed when it was written.
        out += _POINTER[pointer] if pointer < NEAR else (0xC000 | pointer).to_bytes(2)
    elif not _write_under(out, names, rec.owner):
        return False
    out += tail
    return True


def write_rr(out: bytearray, names: Names, rr: RR | Rec) -> bool:
    """Append one record; False (and `out` unusable) for a type or name it cannot write."""
    if type(rr) is Rec:
        return write_rec(out, names, rr)
    if not write_name(out, names, rr.rname.label):
        return False
    rtype = rr.rtype
    start = len(out) + 10
    out += _RR.pack(rtype, rr.rclass, rr.ttl, 0)
    rdata = rr.rdata
    if rtype in (A, AAAA):
        out += bytes(rdata.data)
    elif rtype in _NAMED:
        if not write_name(out, names, rdata.label.label):
            return False
    elif rtype == SRV:
        out += _SRV.pack(rdata.priority, rdata.weight, rdata.port)
        if not _write_plain(out, rdata.target.label):
            return False
    elif rtype == SOA:
        if not write_name(out, names, rdata.mname.label):
            return False
        if not write_name(out, names, rdata.rname.label):
            return False
        out += _SOA_TIMES.pack(*rdata.times)
    elif rtype == TXT:
        for text in rdata.data:
            if len(text) > 255:
                return False
            out.append(len(text))
            out += text
    else:
        return False
    size = len(out) - start
    if size > 0xFFFF:
        return False
    out[start - 2 : start] = size.to_bytes(2)
    return True


def message(
    header: bytes,
    labels: tuple[bytes, ...],
    type_class: bytes,
    sections: Sequence[Sequence[RR | Rec]],
    marks: Marks | None = None,
) -> bytes | None:
    """`header` (12 octets, counts included), the question (`labels` as given, then its type
    and class), then every record of `sections` in order; None when `write_rr` cannot. With
    `marks`, the offset of every record and of the end."""
    if sum(map(len, sections)) < LARGE_BUILD:
        return _message(header, labels, type_class, sections, marks)
    # A large answer is most of a millisecond to write: the UDP receive thread gets the GIL
    # after 0.1 ms meanwhile, not 1 ms (kdns/interpreter.py).
    with handing_over():
        return _message(header, labels, type_class, sections, marks)


def _message(
    header: bytes,
    labels: tuple[bytes, ...],
    type_class: bytes,
    sections: Sequence[Sequence[RR | Rec]],
    marks: Marks | None,
) -> bytes | None:
    out = bytearray(header)
    names: Names = {}
    if not write_name(out, names, labels):
        return None
    out += type_class
    offsets = marks.offsets if marks is not None else None
    for section in sections:
        if len(section) >= RUN and set(map(type, section)) == {Rec}:
            # A large RRset, or its glue: written a run at a time (`_write_run`).
            if not _write_run(out, names, section, offsets):
                return None
            continue
        for rr in section:
            if offsets is not None:
                offsets.append(len(out))
            if type(rr) is not Rec:
                if not write_rr(out, names, rr):
                    return None
                continue
            # `write_rec`, inline: most records of a large answer are `Rec`s.
            owner, _, tail = rr
            pointer = names.get(owner)
            if tail is None:
                return None
            if pointer is not None:
                out += _POINTER[pointer] if pointer < NEAR else (0xC000 | pointer).to_bytes(2)
            elif not _write_under(out, names, owner):
                return None
            out += tail
    if offsets is None:
        return bytes(out)
    offsets.append(len(out))
    return bytes(out)


def _pointer(offset: int) -> bytes:
    return _POINTER[offset] if offset < NEAR else (0xC000 | offset).to_bytes(2)


def _write_run(
    out: bytearray, names: Names, recs: Sequence[Rec], offsets: list[int] | None
) -> bool:
    """Append `recs` (and their offsets), byte for byte what `write_rec` gives one at a time:
    the records of one owner (an RRset: every one after the first a pointer), or of distinct
    owners each one label below a name written before (the glue of an SRV answer, each owner
    a new label and a pointer) as one join; else one at a time. A 500-endpoint headless SRV
    answer spent a third of its encoding in one call per record."""
    owners = list(map(_OWNER, recs))
    tails = list(map(_TAIL, recs))
    if None in tails:
        return False
    first = owners[0]
    if owners.count(first) == len(owners):  # equal tuples, most of them the same object
        if offsets is not None:
            offsets.append(len(out))
        if not write_rec(out, names, recs[0]):
            return False
        pointer = names.get(first)
        if pointer is not None:  # else past the pointer range: one at a time, as below
            return _join(out, _pointer(pointer), tails[1:], offsets)
        return _write_each(out, names, recs[1:], offsets)
    pieces = _below_known(names, owners, tails)
    if pieces is None:
        return _write_each(out, names, recs, offsets)
    starts = list(accumulate(map(len, pieces), initial=len(out)))
    starts.pop()  # the end
    out += b"".join(pieces)
    # Each owner remembered where it starts, as `_write_under` would, while a pointer can
    # reach it; none was known before, so none replaces an older offset.
    names.update(zip(owners[: bisect_right(starts, MAX_POINTER)], starts, strict=False))
    if offsets is not None:
        offsets += starts
    return True


def _join(out: bytearray, pointer: bytes, tails: list[bytes], offsets: list[int] | None) -> bool:
    """Append records whose owner is `pointer`, one per tail."""
    if offsets is not None:
        sizes = map(len, tails)
        offsets += accumulate(map(add, sizes, repeat(len(pointer))), initial=len(out))
        offsets.pop()  # the end: the next record's start, appended by whoever writes it
    if tails:
        out += pointer
        out += pointer.join(tails)
    return True


def _write_each(
    out: bytearray, names: Names, recs: Sequence[Rec], offsets: list[int] | None
) -> bool:
    for rec in recs:
        if offsets is not None:
            offsets.append(len(out))
        if not write_rec(out, names, rec):
            return False
    return True


def _below_known(
    names: Names, owners: list[tuple[bytes, ...]], tails: list[bytes]
) -> list[bytes] | None:
    """The encoded records of distinct owners, none written before, each one label below a
    name written before: each the new label, a pointer to its parent, its tail. None when the
    run is not of that shape, or a name in it breaks a limit (then written one at a time)."""
    distinct = set(owners)
    if len(distinct) != len(owners) or not names.keys().isdisjoint(distinct):
        return None
    parents = [owner[1:] for owner in owners]
    known = list(map(names.get, parents))
    if None in known:
        return None
    heads = list(map(_OWNER, owners))
    parent_size = max(sum(map(len, p)) + len(p) for p in set(parents))
    longest = max(map(len, heads))
    if longest > 63 or longest + 1 + parent_size >= MAX_NAME:
        return None
    pointers = {offset: _pointer(offset) for offset in set(known)}
    return [
        _LENGTH[len(head)] + head + pointer + tail
        for head, pointer, tail in zip(heads, map(pointers.__getitem__, known), tails, strict=True)
    ]


def soa_denial(
    header: bytes,
    labels: tuple[bytes, ...],
    type_class: bytes,
    zone: tuple[bytes, ...],
    soa: tuple[tuple[bytes, ...], tuple[bytes, ...], int, tuple[int, int, int, int, int]],
) -> bytes | None:
    """`header`, the question, and one authority record: `zone`'s SOA, `soa` being (mname,
    rname, the record's TTL, (serial, refresh, retry, expire, minimum)); the bytes `message`
    gives for the same SOA as a dnslib RR. None when a name breaks a limit."""
    mname, rname, ttl, times = soa
    out = bytearray(header)
    names: Names = {}
    if not write_name(out, names, labels):
        return None
    out += type_class
    if not write_name(out, names, zone):
        return None
    start = len(out) + 10
    out += _RR.pack(SOA, 1, ttl, 0)
    if not write_name(out, names, mname) or not write_name(out, names, rname):
        return None
    out += _SOA_TIMES.pack(*times)
    out[start - 2 : start] = (len(out) - start).to_bytes(2)
    return bytes(out)

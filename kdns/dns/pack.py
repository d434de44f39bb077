"""Direct encoding of a response: the bytes dnslib would write, without its buffer machinery.

The miss path (a name never asked before, an answer rebuilt after a change) spent most of its
time in dnslib's per-field `struct` calls and label objects. `message` writes the same wire
form from the records' fields with one `bytearray`, compressing names as dnslib does (RFC 1035
§4.1.4): every suffix of a name written in an owner, or in the rdata of NS, CNAME, PTR or SOA
(RFC 3597 §4: the types whose rdata names may be compressed), is remembered by its offset, and
the longest suffix already written becomes a pointer. SRV targets are never compressed nor
remembered (RFC 2782), so no later record points into a rotated SRV RRset.

Contract: `message(...)` returns the encoded response, byte for byte what `wire.encode`'s
dnslib path gives for the same input, or None when a record is of a type it does not know or a
name breaks a length limit (the caller then encodes with dnslib, which raises as before). Pure:
no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from dnslib import RR

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33
_NAMED = frozenset({NS, CNAME, PTR})  # rdata is one compressible name
MAX_POINTER = 0x3FFF  # a pointer holds a 14-bit offset
MAX_NAME = 255  # octets on the wire with the root label (RFC 1035 §3.1)
_RR = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")
_SOA_TIMES = struct.Struct("!IIIII")

Names = dict[tuple[bytes, ...], int]


def write_name(out: bytearray, names: Names, labels: tuple[bytes, ...]) -> bool:
    """Append `labels`, compressed against `names` (updated); False if a limit is broken."""
    if sum(map(len, labels)) + len(labels) >= MAX_NAME:
        return False
    for i in range(len(labels)):
        suffix = labels[i:]
        pointer = names.get(suffix)
        if pointer is not None:
            out += (0xC000 | pointer).to_bytes(2)
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


def write_rr(out: bytearray, names: Names, rr: RR) -> bool:
    """Append one record; False (and `out` unusable) for a type or name it cannot write."""
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
    sections: Sequence[Sequence[RR]],
) -> bytes | None:
    """`header` (12 octets, counts included), the question (`labels` as given, then its type
    and class), then every record of `sections` in order; None when `write_rr` cannot."""
    out = bytearray(header)
    names: Names = {}
    if not write_name(out, names, labels):
        return None
    out += type_class
    for section in sections:
        for rr in section:
            if not write_rr(out, names, rr):
                return None
    return bytes(out)

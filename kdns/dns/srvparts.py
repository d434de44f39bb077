"""A Service's SRV RRset and its glue as `pack.Rec`s, made in passes of `map` over all records.

A 500-endpoint headless Service's SRV answer is 500 SRV records and 500 glue addresses, and
after each change of its endpoints it is made anew on the trio thread while the UDP receive
thread waits for the GIL (docs/architecture.md §7). Made a record per Python step, it was a
quarter of that answer's CPU; here each step (the targets' names, their wire form, the SRV
fields, the glue's octets, the records) is one `map` or one join over all of them, run in C.

Contract: `srv_rrset(owner, suffix, ttl, heads, records, glue_of)` gives the records the
resolver's general loop gives for an SRV question (`Resolver._packed_records`), in the same
order: an SRV `Rec` at `owner` per SRV record of `records`, its target (zone-relative,
`in_zone`) with `suffix` appended, uncompressed (RFC 2782); then the glue (spec 2.3.2): per
target, in the order the SRV records first name it, the A/AAAA records `glue_of(target)` holds
(each address once: a name's records hold it once), at the target's labels. `heads` maps A and
AAAA to the encoded type, class, TTL and RDLENGTH of their records. None, with nothing made, when
a record needs the general loop: a target outside the zone or too long for DNS, no SRV record.
Pure: no I/O; reads and fills `wireparts`' memos (the trio thread's).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import add, itemgetter

from kdns.dns import pack
from kdns.dns.records import Record
from kdns.dns.wireparts import Parts, addresses_bytes, names_parts

SRV = pack.SRV
Labels = tuple[bytes, ...]
GlueOf = Callable[[str, tuple[Record, ...]], tuple[Record, ...]]

_SRV_TAIL = struct.Struct("!HHIHHHH")  # type, class, TTL, RDLENGTH, priority, weight, port
_new = tuple.__new__  # `_new(Rec, (owner, rtype, tail))`: a Rec without `__new__`'s frame
_RTYPE = itemgetter(0)  # of a Record
_VALUE = itemgetter(1)
_IN_ZONE = itemgetter(5)
_PRIORITY_WEIGHT_PORT = itemgetter(3, 4, 2)
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


def srv_rrset(
    owner: Labels,
    suffix: str,
    ttl: int,
    heads: dict[int, bytes],
    records: Sequence[Record],
    glue_of: GlueOf,
) -> tuple[list[pack.Rec], list[pack.Rec]] | None:
    """The SRV records of `records` at `owner`, and their glue (the module docstring)."""
    srvs = records
    if list(map(_RTYPE, records)).count(SRV) != len(records):
        srvs = [record for record in records if record[0] == SRV]
    if not srvs or False in map(_IN_ZONE, srvs):  # every SRV records.py makes is in_zone
        return None
    targets = list(map(_VALUE, srvs))
    parts: list[Parts] = names_parts(list(map(add, targets, repeat(suffix))))
    wires = list(map(_SECOND, parts))
    if None in wires:
        return None
    answer = _srv_recs(owner, ttl, srvs, wires)  # type: ignore[arg-type]
    # One entry per target, in the order the SRV records first name it.
    owners = dict(zip(targets, map(_FIRST, parts), strict=True))
    return answer, _glue(owners, heads, glue_of)


def _srv_recs(
    owner: Labels, ttl: int, srvs: Sequence[Record], wires: list[bytes]
) -> list[pack.Rec]:
    """An SRV `Rec` per record, each target's wire form after its fixed fields."""
    fields = set(map(_PRIORITY_WEIGHT_PORT, srvs))
    if len(fields) == 1:
        # One port, one weight (100/N): the fields differ only in RDLENGTH, by target length.
        ((priority, weight, port),) = fields
        fixed = {
            size: _SRV_TAIL.pack(SRV, 1, ttl, 6 + size, priority, weight, port)
            for size in set(map(len, wires))
        }
        tails = list(map(add, map(fixed.__getitem__, map(len, wires)), wires))
    else:
        tails = [
            _SRV_TAIL.pack(SRV, 1, ttl, 6 + len(wire), r[3], r[4], r[2]) + wire
            for r, wire in zip(srvs, wires, strict=True)
        ]
    return list(map(_new, repeat(pack.Rec), zip(repeat(owner), repeat(SRV), tails)))


def _glue(owners: dict[str, Labels], heads: dict[int, bytes], glue_of: GlueOf) -> list[pack.Rec]:
    """Each target's A/AAAA records at its labels, targets in `owners`' order."""
    held = list(map(glue_of, owners, repeat(())))
    if list(map(len, held)).count(1) == len(held):  # one address per target: the usual case
        records = list(map(_FIRST, held))
        rtypes = list(map(_RTYPE, records))
        for rtype, head in heads.items():
            if rtypes.count(rtype) == len(rtypes):  # and all of one family
                tails = map(add, repeat(head), addresses_bytes(list(map(_VALUE, records))))
                return list(map(_new, repeat(pack.Rec), zip(owners.values(), repeat(rtype), tails)))
    glue = [
        (labels, record)
        for labels, records in zip(owners.values(), held, strict=True)
        for record in records
        if record[0] in heads
    ]
    octets = addresses_bytes([record[1] for _, record in glue])
    return [
        _new(pack.Rec, (labels, record[0], heads[record[0]] + address))
        for (labels, record), address in zip(glue, octets, strict=True)
    ]

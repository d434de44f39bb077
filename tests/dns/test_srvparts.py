"""srvparts.py: a Service's SRV RRset and its glue as `pack.Rec`s, read back as zone-file text.

Each row is an SRV RRset (records.py's `Record`s) and the A/AAAA records of its targets; the
records `srv_rrset` makes are encoded as the answer to `_http._tcp.hl.ns.svc.cluster.local` SRV
and read back with dnspython (strict): the SRV records in order, then the glue per target in the
order the SRV records first name it, each address once.
"""

from __future__ import annotations

import struct

import dns.message
import pytest

from kdns.dns import pack
from kdns.dns.records import AAAA, SRV, A, Record
from kdns.dns.srvparts import srv_rrset
from kdns.dns.wireparts import labels

QNAME = "_http._tcp.hl.ns.svc.cluster.local"
SUFFIX = ".cluster.local"
TTL = 5
HEADS = {A: struct.pack("!HHIH", A, 1, TTL, 4), AAAA: struct.pack("!HHIH", AAAA, 1, TTL, 16)}


def srv(target: str, port: int = 80, weight: int = 50, in_zone: bool = True) -> Record:
    return Record(SRV, target, port, 0, weight, in_zone)


def zone_text(answer: list[pack.Rec], additional: list[pack.Rec]) -> list[str]:
    """The response `pack.message` writes for these sections, as dnspython reads it."""
    header = struct.pack("!6H", 0, 0x8400, 1, len(answer), 0, len(additional))
    response = pack.message(header, labels(QNAME), b"\x00\x21\x00\x01", (answer, [], additional))
    assert response is not None
    message = dns.message.from_wire(response)
    return [
        " ".join(line.split())
        for section in (message.answer, message.additional)
        for rrset in section
        for line in rrset.to_text().splitlines()
    ]


def many(n: int) -> tuple[list[Record], dict[str, tuple[Record, ...]]]:
    names = [f"10-0-{i // 250}-{i % 250 + 1}.hl.ns.svc" for i in range(n)]
    glue = {name: (Record(A, f"10.0.{i // 250}.{i % 250 + 1}"),) for i, name in enumerate(names)}
    return [srv(name, 80, 100 // n) for name in names], glue


ROWS = [
    (
        "one port, one address per target",
        [srv("web-0.hl.ns.svc"), srv("10-0-0-2.hl.ns.svc")],
        {
            "web-0.hl.ns.svc": (Record(A, "10.0.0.1"),),
            "10-0-0-2.hl.ns.svc": (Record(A, "10.0.0.2"),),
        },
        [
            f"{QNAME}. 5 IN SRV 0 50 80 web-0.hl.ns.svc.cluster.local.",
            f"{QNAME}. 5 IN SRV 0 50 80 10-0-0-2.hl.ns.svc.cluster.local.",
            "web-0.hl.ns.svc.cluster.local. 5 IN A 10.0.0.1",
            "10-0-0-2.hl.ns.svc.cluster.local. 5 IN A 10.0.0.2",
        ],
    ),
    (
        "two ports: a target named twice gets its glue once, where first named",
        [srv("web-0.hl.ns.svc", 80, 25), srv("web-0.hl.ns.svc", 8080, 25), srv("web-1.hl.ns.svc")],
        {
            "web-0.hl.ns.svc": (Record(A, "10.0.0.1"),),
            "web-1.hl.ns.svc": (Record(A, "10.0.0.2"),),
        },
        [
            f"{QNAME}. 5 IN SRV 0 25 80 web-0.hl.ns.svc.cluster.local.",
            f"{QNAME}. 5 IN SRV 0 25 8080 web-0.hl.ns.svc.cluster.local.",
            f"{QNAME}. 5 IN SRV 0 50 80 web-1.hl.ns.svc.cluster.local.",
            "web-0.hl.ns.svc.cluster.local. 5 IN A 10.0.0.1",
            "web-1.hl.ns.svc.cluster.local. 5 IN A 10.0.0.2",
        ],
    ),
    (
        "dual-stack: a target with both families, one with IPv6 alone",
        [srv("web-0.hl.ns.svc"), srv("web-1.hl.ns.svc")],
        {
            "web-0.hl.ns.svc": (Record(A, "10.0.0.1"), Record(AAAA, "fd00::1")),
            "web-1.hl.ns.svc": (Record(AAAA, "fd00::2"),),
        },
        [
            f"{QNAME}. 5 IN SRV 0 50 80 web-0.hl.ns.svc.cluster.local.",
            f"{QNAME}. 5 IN SRV 0 50 80 web-1.hl.ns.svc.cluster.local.",
            "web-0.hl.ns.svc.cluster.local. 5 IN A 10.0.0.1",
            "web-0.hl.ns.svc.cluster.local. 5 IN AAAA fd00::1",
            "web-1.hl.ns.svc.cluster.local. 5 IN AAAA fd00::2",
        ],
    ),
    (
        "IPv6 alone, and a target without an address record",
        [srv("web-0.hl.ns.svc"), srv("gone.hl.ns.svc")],
        {"web-0.hl.ns.svc": (Record(AAAA, "fd00::1"),)},
        [
            f"{QNAME}. 5 IN SRV 0 50 80 web-0.hl.ns.svc.cluster.local.",
            f"{QNAME}. 5 IN SRV 0 50 80 gone.hl.ns.svc.cluster.local.",
            "web-0.hl.ns.svc.cluster.local. 5 IN AAAA fd00::1",
        ],
    ),
    (
        "records of other types are left out",
        [Record(A, "10.0.0.9"), srv("web-0.hl.ns.svc")],
        {"web-0.hl.ns.svc": (Record(A, "10.0.0.1"),)},
        [
            f"{QNAME}. 5 IN SRV 0 50 80 web-0.hl.ns.svc.cluster.local.",
            "web-0.hl.ns.svc.cluster.local. 5 IN A 10.0.0.1",
        ],
    ),
]


@pytest.mark.parametrize(
    ("records", "glue", "expected"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_an_srv_rrset_and_its_glue(
    records: list[Record], glue: dict[str, tuple[Record, ...]], expected: list[str]
) -> None:
    made = srv_rrset(labels(QNAME), SUFFIX, TTL, HEADS, records, glue.get)
    assert made is not None
    assert zone_text(*made) == expected


def test_a_large_rrset_is_every_target_and_address_in_order() -> None:
    records, glue = many(300)
    made = srv_rrset(labels(QNAME), SUFFIX, TTL, HEADS, records, glue.get)
    assert made is not None
    text = zone_text(*made)
    assert text[0] == f"{QNAME}. 5 IN SRV 0 0 80 10-0-0-1.hl.ns.svc.cluster.local."
    assert text[299] == f"{QNAME}. 5 IN SRV 0 0 80 10-0-1-50.hl.ns.svc.cluster.local."
    assert text[300] == "10-0-0-1.hl.ns.svc.cluster.local. 5 IN A 10.0.0.1"
    assert text[599] == "10-0-1-50.hl.ns.svc.cluster.local. 5 IN A 10.0.1.50"
    assert len(text) == 600


@pytest.mark.parametrize(
    "records",
    [
        [],  # no SRV record: the general loop answers NODATA
        [Record(A, "10.0.0.1")],
        [srv("web-0.hl.ns.svc"), srv("www.example.com", in_zone=False)],  # outside the zone
        [srv("x" * 64 + ".hl.ns.svc")],  # a label past 63 octets: the general loop refuses it
    ],
    ids=["empty", "no-srv", "outside-the-zone", "too-long"],
)
def test_what_it_leaves_to_the_general_loop(records: list[Record]) -> None:
    assert srv_rrset(labels(QNAME), SUFFIX, TTL, HEADS, records, {}.get) is None

"""Truncation for UDP (`wire.Layout.fit`): which records a response keeps within a limit.

Each case is a response written as zone-file text, encoded as kdns encodes it, and cut to the
client's limit; the expectation is the records kept, in zone-file text, and the TC bit. Sizes in
the comments count octets on the wire (RFC 1035 §4.1): a header is 12, an owner that repeats the
question is a 2-octet pointer, an A record is then 2 + 10 + 4 = 16, an AAAA 28; SRV targets are
written out in full (RFC 2782: not compressed).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.message
import pytest
from dnslib import QTYPE, RR

from kdns.dns import wire
from kdns.dns.wire import Query

ZONE = "cluster.local"


def question(name: str, qtype: int, edns: bool) -> Query:
    labels = tuple(label.encode() for label in name.split("."))
    wire_name = b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"
    return Query(
        0x1234,
        wire.RD,
        labels,
        qtype,
        1,
        wire_name + qtype.to_bytes(2) + b"\x00\x01",
        False,
        edns=edns,
        payload=1232 if edns else 512,
    )


def records(text: str) -> list[RR]:
    return list(RR.fromZone("\n".join(line.strip() for line in text.splitlines() if line)))


def addresses(name: str, count: int, first: str = "10.1.0.1") -> str:
    base = ipaddress.ip_address(first)
    return "\n".join(f"{name}. 5 IN A {base + i}" for i in range(count))


def srvs(name: str, targets: list[str]) -> str:
    return "\n".join(f"{name}. 5 IN SRV 0 20 80 {t}." for t in targets)


def glue(targets: list[str], first: str = "10.244.1.20") -> str:
    base = ipaddress.ip_address(first)
    return "\n".join(f"{t}. 5 IN A {base + i}" for i, t in enumerate(targets))


MID = f"mid.default.svc.{ZONE}"  # 29 octets on the wire + 4: a question of 35 octets
HL = f"myapp-headless.default.svc.{ZONE}"
SRV_NAME = f"_http._tcp.{HL}"  # 53 octets + 4: a question of 57
TEN = [f"10-244-1-{20 + i}.{HL}" for i in range(10)]  # 53 octets each, uncompressed
TARGETS = TEN[:5]
CACHE = f"cache.prod.svc.{ZONE}"


@dataclass(frozen=True)
class Case:
    qname: str
    qtype: int
    edns: bool
    answer: str
    additional: str = ""
    authority: str = ""
    rcode: int = wire.NOERROR


@dataclass(frozen=True)
class Kept:
    answer: str
    additional: str = ""
    authority: str = ""
    tc: bool = False


CASES = [
    pytest.param(
        # 512 - 12 - 35 = 465 octets of room: 29 A records (464) of the 40.
        Case(MID, QTYPE.A, False, addresses(MID, 40)),
        Kept(addresses(MID, 29), tc=True),
        id="40 A records, no EDNS: the first 29, TC",
    ),
    pytest.param(
        # EDNS: 1232 - 12 - 35 - 11 (our OPT) = 1174 octets: all 40 (640) fit.
        Case(MID, QTYPE.A, True, addresses(MID, 40)),
        Kept(addresses(MID, 40)),
        id="40 A records, EDNS 1232: all of them",
    ),
    pytest.param(
        # EDNS: 1174 octets of room: 73 A records (1168) of the 500.
        Case(MID, QTYPE.A, True, addresses(MID, 500)),
        Kept(addresses(MID, 73), tc=True),
        id="500 A records, EDNS 1232: the first 73, TC",
    ),
    pytest.param(
        # 5 SRV records of 2 + 10 + 6 + 53 = 71 octets: 12 + 57 + 355 = 424 fit in 512; their
        # glue (5 × 28 = 140) does not, and leaving it out sets no TC (RFC 2181 §9).
        Case(SRV_NAME, QTYPE.SRV, False, srvs(SRV_NAME, TARGETS), glue(TARGETS)),
        Kept(srvs(SRV_NAME, TARGETS)),
        id="5 SRV with glue, no EDNS: the SRVs, no glue, no TC",
    ),
    pytest.param(
        Case(SRV_NAME, QTYPE.SRV, True, srvs(SRV_NAME, TARGETS), glue(TARGETS)),
        Kept(srvs(SRV_NAME, TARGETS), glue(TARGETS)),
        id="5 SRV with glue, EDNS 1232: everything",
    ),
    pytest.param(
        # 6 SRV records: 12 + 57 + 426 = 495; a 7th (71) would pass 512.
        Case(SRV_NAME, QTYPE.SRV, False, srvs(SRV_NAME, TEN), glue(TEN)),
        Kept(srvs(SRV_NAME, TEN[:6]), tc=True),
        id="10 SRV, no EDNS: the first 6, TC",
    ),
    pytest.param(
        # The CNAME (2 + 10 + 14: "mid", "default" and a pointer) is one whole RRset and stays;
        # the A RRset after it does not fit whole, so as many of its records as fit:
        # (512 - 12 - 34 - 26) / 16 = 27.
        Case(
            CACHE,
            QTYPE.A,
            False,
            f"{CACHE}. 5 IN CNAME {MID}.\n" + addresses(MID, 40),
        ),
        Kept(f"{CACHE}. 5 IN CNAME {MID}.\n" + addresses(MID, 27), tc=True),
        id="CNAME then 40 A records, no EDNS: the CNAME and 27, TC",
    ),
    pytest.param(
        Case(
            f"nope.default.svc.{ZONE}",
            QTYPE.A,
            False,
            "",
            authority=f"{ZONE}. 5 IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 5",
            rcode=wire.NXDOMAIN,
        ),
        Kept(
            "",
            authority=f"{ZONE}. 5 IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 5",
        ),
        id="NXDOMAIN with its SOA: unchanged",
    ),
]


def zone_lines(rrs: list[RR]) -> list[str]:
    return [" ".join(str(rr).lower().split()) for rr in rrs]


def as_zone(section: list[dns.rrset.RRset]) -> list[str]:
    """A dnspython section as dnslib prints records, one line per record."""
    out = []
    for rrset in section:
        for rdata in rrset:
            line = f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
            out.extend(zone_lines(list(RR.fromZone(line))))
    return out


@pytest.mark.parametrize(("case", "kept"), CASES)
def test_fit_keeps_whole_records(case: Case, kept: Kept) -> None:
    query = question(case.qname, case.qtype, case.edns)
    response = wire.encode(
        query,
        case.rcode,
        records(case.answer),
        records(case.authority),
        records(case.additional),
    )
    limit = query.udp_limit()
    header, tail = wire.split(response).fit(limit)
    cut = response[:2] + header + query.question + tail
    assert len(cut) <= limit
    message = dns.message.from_wire(cut)  # strict: every kept pointer still resolves
    assert message.rcode() == case.rcode
    assert bool(message.flags & dns.flags.TC) == kept.tc
    assert as_zone(message.answer) == zone_lines(records(kept.answer))
    assert as_zone(message.authority) == zone_lines(records(kept.authority))
    assert as_zone(message.additional) == zone_lines(records(kept.additional))
    assert (message.edns >= 0) == case.edns


@pytest.mark.parametrize(("case", "kept"), CASES)
def test_finish_cuts_only_what_does_not_fit(case: Case, kept: Kept) -> None:
    query = question(case.qname, case.qtype, case.edns)
    response = wire.encode(
        query, case.rcode, records(case.answer), records(case.authority), records(case.additional)
    )
    over_udp = wire.finish(response, query, udp=True)
    over_tcp = wire.finish(response, query, udp=False)
    assert over_tcp == response
    if len(response) <= query.udp_limit():
        assert over_udp == response
    else:
        assert len(over_udp) <= query.udp_limit()

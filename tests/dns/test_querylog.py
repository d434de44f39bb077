"""The query log lines, field by field: CoreDNS's log plugin format and the JSON form."""

from __future__ import annotations

import json
import logging

import dns.flags
import dns.message
import pytest

from kdns.dns.querylog import QueryLog, duration_text, fields, text_line
from kdns.dns.stats import LABELS


def response(flags: int, size: int, rcode: int = 0) -> bytes:
    header = (0).to_bytes(2) + (flags | rcode).to_bytes(2) + bytes(8)
    return header + bytes(size - len(header))


QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010


def query(name: str, rdtype: str = "A", qid: int = 1234, **kwargs: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    q.id = qid
    q.flags = dns.flags.RD
    return q.to_wire()


@pytest.mark.parametrize(
    ("addr", "proto", "data", "reply", "rcode", "seconds", "line"),
    [
        # The brief's example: 29 octets, no EDNS (bufsize 512), authoritative.
        (
            ("127.0.0.1", 55555),
            "udp",
            query("example.org."),
            response(QR | AA | RD, 97),
            "NOERROR",
            0.000123,
            '[INFO] 127.0.0.1:55555 - 1234 "A IN example.org. udp 29 false 512" '
            "NOERROR qr,aa,rd 97 0.000123s",
        ),
        # CoreDNS's README example: IPv6 remote in brackets, EDNS size advertised, flags order.
        (
            ("::1", 50759),
            "udp",
            query("Example.ORG.", qid=29008, use_edns=0, payload=4096),
            response(QR | RD | RA | AD, 68),
            "NOERROR",
            0.037990251,
            '[INFO] [::1]:50759 - 29008 "A IN example.org. udp 40 false 4096" '
            "NOERROR qr,rd,ra,ad 68 0.037990251s",
        ),
        # DO set; an EDNS size under 512 counts as 512; NXDOMAIN.
        (
            ("10.0.0.1", 1),
            "udp",
            query("x.cluster.local.", "AAAA", qid=7, use_edns=0, payload=300, want_dnssec=True),
            response(QR | AA | RD | CD, 120, 3),
            "NXDOMAIN",
            1.0,
            '[INFO] 10.0.0.1:1 - 7 "AAAA IN x.cluster.local. udp 44 true 512" '
            "NXDOMAIN qr,aa,rd,cd 120 1s",
        ),
        # TCP: bufsize 65535 whatever was advertised; a type without a name; truncation flag.
        (
            ("10.0.0.2", 40000),
            "tcp",
            query("a.b.", 65280, qid=65535),
            response(QR | TC, 12),
            "SERVFAIL",
            0.5,
            '[INFO] 10.0.0.2:40000 - 65535 "TYPE65280 IN a.b. tcp 21 false 65535" '
            "SERVFAIL qr,tc 12 0.5s",
        ),
        # A query too malformed to read (qdcount 0): the empty value "-" for what is unknown.
        (
            ("10.0.0.3", 53),
            "udp",
            bytes.fromhex("abcd0100000000000000 0000".replace(" ", "")),
            response(QR | RD, 12, 1),
            "FORMERR",
            0.0,
            '[INFO] 10.0.0.3:53 - 43981 "- - - udp 12 - -" FORMERR qr,rd 12 0s',
        ),
    ],
)
def test_text_lines(
    addr: tuple[str, int],
    proto: str,
    data: bytes,
    reply: bytes,
    rcode: str,
    seconds: float,
    line: str,
) -> None:
    assert text_line(fields(addr, proto, data, reply, rcode, seconds)) == line


def test_duration_is_written_as_go_writes_seconds() -> None:
    assert duration_text(0.000123) == "0.000123s"
    assert duration_text(2.5e-06) == "0.0000025s"  # never an exponent
    assert duration_text(12.0) == "12s"
    assert duration_text(0.0) == "0s"


def test_json_has_every_field_by_name(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test-querylog-json")
    log = QueryLog("json", logger)
    label = LABELS.id("cluster.local.", 1, 3, "kubernetes", True)
    data = query("nope.default.svc.cluster.local.", use_edns=0, want_dnssec=True)
    with caplog.at_level(logging.INFO, logger=logger.name):
        log(("192.0.2.7", 3333), "udp", data, response(QR | AA | RD, 150, 3), label, 0.25)
    (record,) = caplog.records
    out = json.loads(record.getMessage())
    assert out.pop("time").endswith("Z")
    assert out == {
        "level": "info",
        "remote": "192.0.2.7",
        "port": 3333,
        "id": 1234,
        "type": "A",
        "class": "IN",
        "name": "nope.default.svc.cluster.local.",
        "proto": "udp",
        "size": len(data),
        "do": True,
        "bufsize": 1232,
        "rcode": "NXDOMAIN",
        "rflags": "qr,aa,rd",
        "rsize": 150,
        "duration": 0.25,
    }


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        QueryLog("yaml")

"""Property tests on `Handler.handle`: whatever arrives, it never raises and answers sanely.

For any input: the handler returns None or bytes that dnspython reads as a whole DNS message
(no trailing bytes), with the client's ID and QR set; any input of a full header with QR clear
gets an answer; no input takes the internal-error path (`handler.errors` stays 0); a UDP answer
fits the query's limit; and asking twice gives the same bytes (the cache answers as the slow
path does).

Runs are derandomised and keep no example database, so a failure is reproducible as is.
"""

from __future__ import annotations

import struct

import dns.exception
import dns.message
import pytest
from dnslib import QTYPE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdns.dns import wire
from kdns.dns.handler import Handler
from kdns.dns.wire import Query
from kdns.store import ENDPOINTSLICES
from tests.dns.test_wire import (
    Cluster,
    build_cluster,
    cookie_option,
    endpoint_ips,
    endpoint_slice,
    headless_service,
    make_query,
    opt_rr,
    text_name,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def fuzz_cluster() -> Cluster:
    cluster = build_cluster()
    cluster.upsert_service(headless_service("mid", "default"))
    slices = [endpoint_slice("mid", "default", endpoint_ips(40))]
    cluster.store.replace(ENDPOINTSLICES, {s.key: s for s in slices})
    return cluster


# One handler for the module: the cache fills across examples, which is what the properties need
# (hits for repeats, entries of one query in the way of another).
CLUSTER = fuzz_cluster()
HANDLER: Handler = CLUSTER.handler


def for_dnspython(response: bytes) -> bytes:
    """dnspython reads an UPDATE's question as a zone section and insists on SOA there; the
    layout is the same for every opcode, so read an UPDATE answer as if it were a QUERY."""
    if (response[2] >> 3) & 0xF == 5:
        return response[:2] + bytes([response[2] & 0x87]) + response[3:]
    return response


def check(data: bytes, udp: bool) -> bytes | None:
    """Handle `data` and assert every property; returns the response."""
    errors = HANDLER.errors
    reply = HANDLER.handle(data, udp)
    assert HANDLER.errors == errors, "the handler took its internal-error path"
    if len(data) >= 12 and not data[2] & 0x80:
        assert reply is not None, "a query with a full header was dropped"
    if reply is None:
        return None
    assert isinstance(reply, tuple)
    response = reply[0]
    assert response[:2] == data[:2], "the response does not carry the query's ID"
    assert response[2] & 0x80, "QR is not set"
    try:
        dns.message.from_wire(for_dnspython(response), ignore_trailing=False)
    except dns.exception.DNSException as e:
        raise AssertionError(f"unparseable response {response.hex()}: {e!r}") from e
    if udp:
        parsed = wire.parse_query(data)
        limit = parsed.udp_limit() if isinstance(parsed, Query) else wire.CLASSIC_UDP_PAYLOAD
        assert len(response) <= limit, f"{len(response)} bytes over UDP, limit {limit}"
    asked_again = HANDLER.handle(data, udp)
    assert isinstance(asked_again, tuple)
    again = asked_again[0]
    if again != response:
        # Round robin: the same header and records in another order — or, cut to the UDP
        # limit, another window of whole records of the same size.
        assert again[:12] == response[:12], "asking twice gave two headers"
        assert len(again) == len(response), "asking twice gave answers of two sizes"
        if not response[2] & (wire.TC >> 8):
            first = dns.message.from_wire(for_dnspython(response))
            second = dns.message.from_wire(for_dnspython(again))
            assert first == second, "asking twice gave two answers (cache and slow path disagree)"
    return response


# --- inputs --------------------------------------------------------------------------------------

NAMES = [
    "web.default.svc.cluster.local",
    "WEB.Default.svc.cluster.local",
    "cache.prod.svc.cluster.local",
    "mid.default.svc.cluster.local",
    "_http._tcp.web.default.svc.cluster.local",
    "10-244-1-10.default.pod.cluster.local",
    "10.0.96.10.in-addr.arpa",
    "nope.default.svc.cluster.local",
    "default.svc.cluster.local",
    "cluster.local",
    "dns-version.cluster.local",
    "example.com",
]
QTYPES = [QTYPE.A, QTYPE.AAAA, QTYPE.SRV, QTYPE.PTR, QTYPE.TXT, QTYPE.ANY, QTYPE.SOA, QTYPE.NS]


@st.composite
def valid_queries(draw: st.DrawFn) -> bytes:
    edns = draw(st.sampled_from([None, 512, 1232, 4096]))
    return make_query(
        draw(st.sampled_from(NAMES)),
        draw(st.sampled_from(QTYPES)),
        qid=draw(st.integers(0, 0xFFFF)),
        flags=draw(st.sampled_from([0, wire.RD, wire.RD | wire.CD])),
        edns=edns,
        do=draw(st.booleans()),
        options=cookie_option() if edns is not None and draw(st.booleans()) else b"",
    )


MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "overwrite"]),
    st.integers(0, 1 << 16),
    st.integers(0, 255),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        pos = where % (len(out) + 1)
        if kind == "insert":
            out[pos:pos] = bytes([value])
        elif not out:
            continue
        elif kind == "delete":
            del out[pos % len(out)]
        elif kind == "flip":
            out[pos % len(out)] ^= 1 << (value % 8)
        else:
            out[pos % len(out)] = value
    return bytes(out)


RECORD_SHAPES = st.sampled_from(
    [
        opt_rr(),
        opt_rr(4096, do=True),
        opt_rr(1232, version=1),
        opt_rr(options=cookie_option()),
        b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + bytes(4),
        b"\x00" + struct.pack("!HHIH", 16, 1, 5, 3) + b"\x02hi",
    ]
)


PLAIN_FLAGS = st.sampled_from([0, wire.RD, wire.RD | wire.CD, 0x0020, 0x0040])
ODD_FLAGS = st.sampled_from([2 << 11, 4 << 11, 5 << 11 | wire.RD, wire.AA | wire.TC, wire.QR])
FLAGS = st.one_of(PLAIN_FLAGS, PLAIN_FLAGS, ODD_FLAGS, st.integers(0, 0xFFFF))
# Names whose answers are big (mid: 40 A records, over 512 bytes), small, or negative.
SHAPE_NAMES = ["mid.default.svc.cluster.local", "web.default.svc.cluster.local", "nope.default"]


@st.composite
def header_combinations(draw: st.DrawFn) -> bytes:
    """A question and a few records of any shape, in any section, under any flags; the counts
    usually add up to the records present, and sometimes do not."""
    records = draw(st.lists(RECORD_SHAPES, max_size=3))
    sections = [draw(st.integers(0, 2)) for _ in records]
    counts = [draw(st.sampled_from([1, 1, 1, 1, 0, 2]))] + [sections.count(i) for i in range(3)]
    if draw(st.integers(0, 3)) == 0:
        counts = draw(st.lists(st.integers(0, 3), min_size=4, max_size=4))
    # Records go in section order, as the counts say they are.
    ordered = [r for _, r in sorted(zip(sections, records, strict=True), key=lambda p: p[0])]
    body = text_name(draw(st.sampled_from(SHAPE_NAMES))) + struct.pack(
        "!HH",
        draw(st.sampled_from([QTYPE.A, QTYPE.ANY, QTYPE.AAAA, QTYPE.AXFR, 41])),
        draw(st.sampled_from([1, 1, 1, 3, 255])),
    )
    header = struct.pack("!6H", draw(st.integers(0, 0xFFFF)), draw(FLAGS), *counts)
    return header + body + b"".join(ordered)


@st.composite
def compressed_questions(draw: st.DrawFn) -> bytes:
    """A question name that ends in a compression pointer anywhere before it: into the header,
    into its own labels, or at itself."""
    labels = draw(st.lists(st.sampled_from([b"web", b"default", b"svc", b"Cluster"]), max_size=3))
    prefix = b"".join(bytes([len(label)]) + label for label in labels)
    here = 12 + len(prefix)
    target = draw(st.one_of(st.sampled_from(range(12)), st.integers(0, here)))
    edns = draw(st.sampled_from([None, 1232]))
    header = struct.pack(
        "!6H", draw(st.integers(0, 0xFFFF)), draw(FLAGS), 1, 0, 0, 0 if edns is None else 1
    )
    qtype = draw(st.sampled_from([QTYPE.A, QTYPE.AXFR, QTYPE.SOA]))
    question = prefix + struct.pack("!H", 0xC000 | target) + struct.pack("!HH", qtype, 1)
    return header + question + (b"" if edns is None else opt_rr(edns))


# --- properties ----------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=600), udp=st.booleans())
def test_random_bytes(data: bytes, udp: bool) -> None:
    check(data, udp)


@FUZZ
@given(
    data=st.binary(min_size=12, max_size=600).map(lambda b: b[:2] + bytes([b[2] & 0x7F]) + b[3:]),
    udp=st.booleans(),
)
def test_random_bytes_with_qr_clear_always_answered(data: bytes, udp: bool) -> None:
    assert check(data, udp) is not None


@FUZZ
@given(query=valid_queries(), mutations=st.lists(MUTATION, min_size=1, max_size=6))
@pytest.mark.parametrize("udp", [True, False], ids=["udp", "tcp"])
def test_mutated_valid_queries(
    query: bytes, mutations: list[tuple[str, int, int]], udp: bool
) -> None:
    check(mutate(query, mutations), udp)


@FUZZ
@given(data=header_combinations(), udp=st.booleans())
def test_header_flag_and_count_combinations(data: bytes, udp: bool) -> None:
    check(data, udp)


@FUZZ
@given(data=compressed_questions(), udp=st.booleans())
def test_compressed_questions(data: bytes, udp: bool) -> None:
    check(data, udp)


@FUZZ
@given(query=valid_queries(), udp=st.booleans())
def test_valid_queries_are_answered_without_formerr(query: bytes, udp: bool) -> None:
    response = check(query, udp)
    assert response is not None
    assert response[3] & 0xF != wire.FORMERR

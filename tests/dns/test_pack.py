"""The direct encoder (`kdns.dns.pack`) against dnslib's: the same bytes for every answer shape.

Each row is a question to the small cluster of `tests.dns.cluster`; its answer is encoded by
`wire.encode` (the direct encoder) and by dnslib's own packing of the same records (what kdns
answered before), and the two must be equal byte for byte. The response must also read back,
with dnspython (strict), as the zone-file text of the row: the client's question (0x20 case
kept), the rcode, and the records.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest
from dnslib import EDNS0, MX, QTYPE, RR, DNSBuffer, DNSLabel, DNSRecord
from dnslib.label import DNSLabelError
from hypothesis import given, settings
from hypothesis import strategies as st

from kdns.dns import pack, wire
from kdns.dns.resolver import Answer, dns_name
from kdns.dns.wire import Query
from kdns.model import endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, SERVICES
from tests.builders import api_endpoint, api_endpointslice, api_service
from tests.dns.cluster import make_handler


def dnslib_encode(query: Query, answer: Answer, recursion_available: bool = False) -> bytes:
    """What `wire.encode` wrote before the direct encoder: dnslib's buffer, record by record."""
    buffer = DNSBuffer()
    buffer.append(
        wire.encode(query, answer.rcode, recursion_available=recursion_available)[:4]
        + bytes(
            b
            for n in (1, len(answer.answer), len(answer.authority), len(answer.additional))
            for b in n.to_bytes(2)
        )
    )
    if query.edns:  # the OPT record counts in the additional section
        header = bytearray(buffer.data)
        header[10:12] = (len(answer.additional) + 1).to_bytes(2)
        buffer.data = header
    buffer.encode_name(DNSLabel(tuple(label.lower() for label in query.labels)))
    buffer.pack("!HH", query.qtype, query.qclass)
    for rr in (*answer.answer, *answer.authority, *answer.additional):
        rr.pack(buffer)
    return bytes(buffer.data) + (wire.opt_record(query, answer.rcode) if query.edns else b"")


def ask(qname: str, qtype: str, edns: bool = False) -> Query:
    request = DNSRecord.question(qname, qtype)
    if edns:
        request.add_ar(EDNS0(udp_len=1232))
    query = wire.parse_query(bytes(request.pack()))
    assert isinstance(query, Query)
    return query


SHAPES = [
    # (question, type, rcode, records in the answer response, zone-file text)
    (
        "redis.default.svc.cluster.local",
        "A",
        "NOERROR",
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97",
    ),
    (
        "API.prod.SVC.cluster.LOCAL",
        "AAAA",
        "NOERROR",
        "api.prod.svc.cluster.local. 5 IN AAAA fd00:10:96::50",
    ),
    (
        "_http._tcp.hl.default.svc.cluster.local",
        "SRV",
        "NOERROR",
        """_http._tcp.hl.default.svc.cluster.local. 5 IN SRV 0 50 8080 web-0.hl.default.svc.cluster.local.
        _http._tcp.hl.default.svc.cluster.local. 5 IN SRV 0 50 8080 10-244-1-6.hl.default.svc.cluster.local.
        web-0.hl.default.svc.cluster.local. 5 IN A 10.244.1.5
        10-244-1-6.hl.default.svc.cluster.local. 5 IN A 10.244.1.6""",
    ),
    (
        "97.97.97.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        "97.97.97.10.in-addr.arpa. 5 IN PTR redis.default.svc.cluster.local.",
    ),
    (
        "ext.default.svc.cluster.local",
        "CNAME",
        "NOERROR",
        "ext.default.svc.cluster.local. 5 IN CNAME www.example.com.",
    ),
    (
        "Alias.Prod.svc.cluster.local",
        "A",
        "NOERROR",
        """alias.prod.svc.cluster.local. 5 IN CNAME redis.default.svc.cluster.local.
        redis.default.svc.cluster.local. 5 IN A 10.97.97.97""",
    ),
    ("nosuch.default.svc.cluster.local", "A", "NXDOMAIN", "cluster.local. 5 IN SOA"),
    ("rAnDoM-x1.svc.cluster.local", "A", "NXDOMAIN", "cluster.local. 5 IN SOA"),
    ("redis.default.svc.cluster.local", "TXT", "NOERROR", "cluster.local. 5 IN SOA"),
    (
        "dns-version.cluster.local",
        "TXT",
        "NOERROR",
        'dns-version.cluster.local. 28800 IN TXT "1.1.0"',
    ),
    (
        "cluster.local",
        "NS",
        "NOERROR",
        """cluster.local. 5 IN NS kube-dns.kube-system.svc.cluster.local.
        kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10""",
    ),
]


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
@pytest.mark.parametrize(("qname", "qtype", "rcode", "records"), SHAPES)
def test_direct_encoding_is_dnslibs(
    qname: str, qtype: str, rcode: str, records: str, edns: bool
) -> None:
    _, resolver, handler = make_handler()
    query = ask(qname, qtype, edns)
    answer = resolver.resolve(query.qname, query.qtype)
    assert answer is not None
    encoded = wire.encode(query, answer.rcode, answer.answer, answer.authority, answer.additional)
    assert encoded == dnslib_encode(query, answer)
    # And as a client reads it, through the whole miss path.
    reply = handler.handle(DNSRecord.parse(_raw(qname, qtype, edns)).pack(), udp=False)
    assert isinstance(reply, tuple)
    response = reply[0]
    message = dns.message.from_wire(response)
    assert str(message.question[0].name) == qname + "."  # the client's case, echoed
    assert dns.rcode.to_text(message.rcode()) == rcode
    got = {
        " ".join(line.split()[:4]).lower()
        if line.split()[3] == "SOA"
        else " ".join(line.split()).lower()
        for section in (message.answer, message.authority, message.additional)
        for rrset in section
        for line in rrset.to_text().splitlines()
    }
    want = {" ".join(line.split()).lower() for line in records.splitlines() if line.strip()}
    assert got == want
    assert (message.edns == 0) is edns


def _raw(qname: str, qtype: str, edns: bool) -> bytes:
    request = DNSRecord.question(qname, qtype)
    if edns:
        request.add_ar(EDNS0(udp_len=1232))
    return request.pack()


def test_a_500_endpoint_headless_answer_is_dnslibs_past_the_pointer_range() -> None:
    """Past 16 KiB no name may be pointed at (a pointer holds 14 bits); dnslib's bytes there."""
    store, resolver, _ = make_handler()
    store.upsert(SERVICES, service_from_dict(api_service("big", "hl", clusterIP="None")))
    endpoints = [api_endpoint(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(500)]
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}]
    store.upsert(
        ENDPOINTSLICES,
        endpointslice_from_dict(api_endpointslice("big", "hl", "hl-a", endpoints, ports)),
    )
    query = ask("_http._tcp.hl.big.svc.cluster.local", "SRV")
    answer = resolver.resolve(query.qname, query.qtype)
    assert answer is not None and len(answer.answer) == 500 and len(answer.additional) == 500
    encoded = wire.encode(query, answer.rcode, answer.answer, answer.authority, answer.additional)
    assert len(encoded) > 0x4000
    assert encoded == dnslib_encode(query, answer)
    assert len(DNSRecord.parse(encoded).ar) == 500


def test_a_type_it_does_not_know_goes_to_dnslib() -> None:
    query = ask("mail.example.com", "MX")
    mx = RR("mail.example.com.", QTYPE.MX, rdata=MX("mx.example.com."), ttl=30)
    question = wire.encode(query, wire.NOERROR)
    assert (
        pack.message(question[:12], (b"mail", b"example", b"com"), question[-4:], ([mx],)) is None
    )
    encoded = wire.encode(query, wire.NOERROR, [mx])
    assert DNSRecord.parse(encoded).rr[0].rdata.label == DNSLabel("mx.example.com.")


LABELS = st.sampled_from([b"a", b"b", b"svc", b"cluster", b"local", b"x" * 63])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(
    lambda labels: ".".join(x.decode() for x in labels) + "."
)


@st.composite
def records(draw: st.DrawFn) -> RR:
    owner = draw(NAMES)
    kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "PTR", "NS", "SRV", "TXT"]))
    target = draw(NAMES)
    zone = {
        "A": "10.0.0.1",
        "AAAA": "fd00::1",
        "SRV": f"0 50 80 {target}",
        "TXT": '"hello"',
    }.get(kind, target)
    return RR.fromZone(f"{owner} 30 IN {kind} {zone}")[0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(LABELS, min_size=1, max_size=4),
    st.lists(st.lists(records(), max_size=4), min_size=3, max_size=3),
)
def test_compression_matches_dnslib_for_any_names(
    qlabels: list[bytes], sections: list[list[RR]]
) -> None:
    """Names sharing suffixes with the question and with each other: pointers where dnslib
    puts them, none into an SRV target."""
    labels = tuple(qlabels)
    header = bytes(12)
    packed = pack.message(header, labels, b"\x00\x01\x00\x01", sections)
    reference = DNSBuffer()
    reference.append(header)
    try:
        # The question too may pass 255 octets (four 63-octet labels and the root).
        reference.encode_name(DNSLabel(labels))
        reference.pack("!HH", 1, 1)
        for rr in (rr for section in sections for rr in section):
            rr.pack(reference)
    except DNSLabelError:  # a name past 255 octets: the caller falls back to dnslib, which raises
        assert packed is None
        return
    assert packed == bytes(reference.data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=5))
def test_the_question_text_is_each_label_escaped_and_lowered(labels: list[bytes]) -> None:
    """`Query.qname` takes one decode for the usual name; any label with a dot or a backslash
    is escaped as before, so `a.b` as one label never reads as two."""
    query = Query(1, 0, tuple(labels), 1, 1, b"", False)
    escaped = [
        x.decode("latin-1").lower().replace("\\", "\\\\").replace(".", "\\.") for x in labels
    ]
    assert query.qname == ".".join(escaped)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text("abc-_09XÿäA", min_size=1, max_size=70), min_size=1, max_size=4),
    st.booleans(),
)
def test_names_built_without_the_idna_pass_are_dnslibs(labels: list[str], rooted: bool) -> None:
    """`dns_name` skips dnslib's IDNA pass only where that pass changes nothing."""
    name = ".".join(labels) + ("." if rooted else "")
    try:
        want = DNSLabel(name).label
    except Exception as error:  # a label dnslib refuses (too long, not IDNA): refused alike
        with pytest.raises(type(error)):
            dns_name(name)
        return
    assert dns_name(name).label == want


def one_at_a_time(
    header: bytes, labels: tuple[bytes, ...], sections: list[list[pack.Rec]]
) -> tuple[bytes | None, list[int]]:
    """What `pack.message` wrote before it wrote runs: `write_rec` per record, and each one's
    offset."""
    out = bytearray(header)
    names: pack.Names = {}
    if not pack.write_name(out, names, labels):
        return None, []
    out += b"\x00\x21\x00\x01"
    offsets: list[int] = []
    for section in sections:
        for rec in section:
            offsets.append(len(out))
            if not pack.write_rec(out, names, rec):
                return None, []
    offsets.append(len(out))
    return bytes(out), offsets


HEADS = st.sampled_from([b"a", b"b", b"web-0", b"10-0-0-1", b"x" * 63, b"y" * 64])


@st.composite
def runs(draw: st.DrawFn, question: tuple[bytes, ...]) -> list[pack.Rec]:
    """A section of `Rec`s, long enough to be written as a run: one owner (an RRset), owners one
    label below a suffix of the question (glue), or any owners."""
    n = draw(st.integers(pack.RUN - 2, pack.RUN + 20))
    shape = draw(st.sampled_from(["rrset", "glue", "glue", "any"]))
    tail = (
        st.one_of(st.binary(min_size=4, max_size=40), st.just(None))
        if draw(st.booleans())
        else st.binary(min_size=4, max_size=40)
    )
    suffixes = [question[i:] for i in range(len(question))]
    if shape == "rrset":
        owner = draw(st.sampled_from([question, *(((h, *question)) for h in [b"a", b"zz"])]))
        owners = [owner] * n
    elif shape == "glue":
        parent = draw(st.sampled_from(suffixes))
        heads = draw(
            st.lists(st.binary(min_size=1, max_size=8), min_size=n, max_size=n, unique=True)
        )
        if draw(st.booleans()):  # a clash: a repeated owner, or a label past 63 octets
            heads[-1] = draw(st.sampled_from([heads[0], b"y" * 64]))
        owners = [(head, *parent) for head in heads]
    else:
        owners = draw(
            st.lists(
                st.sampled_from(suffixes) | st.lists(HEADS, min_size=1, max_size=3).map(tuple),
                min_size=n,
                max_size=n,
            )
        )
    return [pack.Rec(owner, pack.A, draw(tail)) for owner in owners]


@settings(max_examples=300, deadline=None)
@given(st.data(), st.lists(LABELS, min_size=1, max_size=4).map(tuple))
def test_runs_of_recs_are_written_as_one_at_a_time(
    data: st.DataObject, question: tuple[bytes, ...]
) -> None:
    """An RRset, glue below the question, repeated or clashing owners, labels past 63 octets,
    tails the encoder refuses: the bytes and offsets of writing each record in turn."""
    sections = [data.draw(runs(question)) for _ in range(3)]
    header = bytes(12)
    marks = pack.Marks()
    packed = pack.message(header, question, b"\x00\x21\x00\x01", sections, marks)
    expected, offsets = one_at_a_time(header, question, sections)
    assert packed == expected
    if expected is not None:
        assert marks.offsets == offsets


def test_a_run_past_the_pointer_range_names_no_owner_there() -> None:
    """Glue owners written past 16 KiB cannot be pointed at: a later record of the same owner
    spells it out again, as one at a time does."""
    question = (b"_http", b"_tcp", b"hl", b"ns", b"svc", b"cluster", b"local")
    parent = question[2:]
    bulky = [pack.Rec(question, pack.A, bytes(600)) for _ in range(30)]  # past 16 KiB
    glue = [pack.Rec((b"h%d" % i, *parent), pack.A, bytes(14)) for i in range(20)]
    again = [pack.Rec(glue[0].owner, pack.A, bytes(14)), pack.Rec(glue[0].owner, pack.A, b"")]
    sections = [bulky, glue, again]
    marks = pack.Marks()
    packed = pack.message(bytes(12), question, b"\x00\x21\x00\x01", sections, marks)
    expected, offsets = one_at_a_time(bytes(12), question, sections)
    assert packed == expected and marks.offsets == offsets
    assert packed is not None and packed[offsets[50] : offsets[50] + 3] == b"\x02h0"

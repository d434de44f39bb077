"""The wire edge and the answer cache: `parse_query` tables, `Handler.handle` tables, cache tags.

Pure: no sockets. Queries are built with dnslib or, when malformed, byte by byte with struct;
answers are read with dnspython (`dns.message.from_wire`), which is strict about the wire format.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import EDNS0, QTYPE, DNSRecord

from kdns.config import Config
from kdns.dns import wire
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.dns.stats import LABELS, QueryLabel
from kdns.dns.wire import Query
from kdns.model import (
    EndpointSlice,
    Namespace,
    Service,
    endpointslice_from_dict,
    namespace_from_dict,
    service_from_dict,
)
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store

ZONE = "cluster.local"
QID = 0x1234

# --- a small cluster -----------------------------------------------------------------------------


def namespace(name: str) -> Namespace:
    return namespace_from_dict({"metadata": {"name": name}})


def cluster_ip_service(name: str, ns: str, ip: str) -> Service:
    return service_from_dict(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
        }
    )


def external_service(name: str, ns: str, target: str) -> Service:
    return service_from_dict(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ExternalName", "externalName": target},
        }
    )


def headless_service(name: str, ns: str) -> Service:
    return service_from_dict(
        {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": "None"}}
    )


def endpoint_ips(count: int, prefix: str = "10.1.0.0") -> list[str]:
    base = ipaddress.ip_address(prefix)
    return [str(base + 1 + i) for i in range(count)]


def endpoint_slice(service: str, ns: str, ips: Iterable[str]) -> EndpointSlice:
    return endpointslice_from_dict(
        {
            "metadata": {
                "name": f"{service}-abc",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip]} for ip in ips],
        }
    )


BIG_COUNT = 500  # a headless service whose A answer fits no UDP packet
MID_COUNT = 40  # one whose A answer fits 1232 bytes but not 512


def default_services(sized: bool = False) -> list[Service]:
    """web, redis, other and the ExternalName cache.prod; `sized` adds the headless big and mid."""
    services = [
        cluster_ip_service("web", "default", "10.96.0.10"),
        cluster_ip_service("redis", "default", "10.96.0.20"),
        cluster_ip_service("other", "default", "10.96.0.30"),
        external_service("cache", "prod", f"redis.default.svc.{ZONE}"),
    ]
    if sized:
        services += [headless_service("big", "default"), headless_service("mid", "default")]
    return services


def default_slices(sized: bool = False) -> list[EndpointSlice]:
    if not sized:
        return []
    return [
        endpoint_slice("big", "default", endpoint_ips(BIG_COUNT)),
        endpoint_slice("mid", "default", endpoint_ips(MID_COUNT, "10.2.0.0")),
    ]


@dataclass
class Cluster:
    """A store, resolver and handler wired as kdns.app wires them."""

    store: Store
    resolver: Resolver
    handler: Handler
    services: dict[tuple[str, str], Service] = field(default_factory=dict)

    def set_services(self, services: Iterable[Service]) -> None:
        self.services = {s.key: s for s in services}
        self.store.replace(SERVICES, self.services)

    def upsert_service(self, service: Service) -> None:
        self.set_services([*self.services.values(), service])

    def set_namespaces(self, names: Iterable[str]) -> None:
        self.store.replace(NAMESPACES, {n: namespace(n) for n in names})


def build_cluster(
    services: Iterable[Service] | None = None,
    slices: Iterable[EndpointSlice] | None = None,
    namespaces: Iterable[str] = ("default", "prod", "kube-system"),
    sized: bool = False,
) -> Cluster:
    store = Store()
    resolver = Resolver(store, Config())
    handler = Handler(resolver)
    store.subscribe(lambda change: handler.cache.drop(resolver.apply(change)))
    cluster = Cluster(store, resolver, handler)
    cluster.set_namespaces(namespaces)
    cluster.set_services(default_services(sized) if services is None else services)
    chosen = default_slices(sized) if slices is None else slices
    store.replace(ENDPOINTSLICES, {s.key: s for s in chosen})
    store.replace(PODS, {})
    assert store.synced
    return cluster


@pytest.fixture
def cluster() -> Cluster:
    return build_cluster()


@pytest.fixture
def sized() -> Cluster:
    """The cluster with the headless services big (500 endpoints) and mid (40)."""
    return build_cluster(sized=True)


# --- building queries ----------------------------------------------------------------------------

RD = wire.RD


def wire_name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def text_name(name: str) -> bytes:
    return wire_name(*(label.encode() for label in name.rstrip(".").split(".") if label))


def header(
    qid: int = QID, flags: int = RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def opt_rr(
    payload: int = 1232,
    version: int = 0,
    do: bool = False,
    options: bytes = b"",
    owner: bytes = b"\x00",
    ext_rcode: int = 0,
) -> bytes:
    ttl = (ext_rcode << 24) | (version << 16) | (0x8000 if do else 0)
    return owner + struct.pack("!HHIH", wire.OPT, payload, ttl, len(options)) + options


def cookie_option(client_cookie: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08") -> bytes:
    return struct.pack("!HH", 10, len(client_cookie)) + client_cookie  # RFC 7873 COOKIE


def make_query(
    name: str,
    qtype: int = QTYPE.A,
    *,
    qid: int = QID,
    flags: int = RD,
    qclass: int = 1,
    edns: int | None = None,
    do: bool = False,
    version: int = 0,
    options: bytes = b"",
) -> bytes:
    """A query, byte by byte: `edns` is the OPT payload size, None for no OPT."""
    opt = b"" if edns is None else opt_rr(edns, version, do, options)
    return (
        header(qid, flags, ar=1 if opt else 0)
        + text_name(name)
        + struct.pack("!HH", qtype, qclass)
        + opt
    )


def dnslib_query(name: str, qtype: str = "A", qid: int = QID, payload: int | None = None) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    if payload is not None:
        record.add_ar(EDNS0(udp_len=payload))
    return bytes(record.pack())


def question_bytes(data: bytes) -> bytes:
    """The question section of a packet with one uncompressed question (header excluded)."""
    end = data.index(0, 12) + 5
    return data[12:end]


def svc(name: str) -> str:
    return f"{name}.svc.{ZONE}"


# --- reading answers -----------------------------------------------------------------------------


def ask(handler: Handler, data: bytes, udp: bool = True) -> bytes:
    reply = handler.handle(data, udp)
    assert isinstance(reply, tuple), "the handler dropped a query"
    return reply[0]


def parse(response: bytes) -> dns.message.Message:
    return dns.message.from_wire(response, ignore_trailing=False)


def rcode_of(response: bytes) -> int:
    return parse(response).rcode()


def a_records(message: dns.message.Message) -> list[str]:
    return sorted(
        rdata.address
        for rrset in message.answer
        if rrset.rdtype == dns.rdatatype.A
        for rdata in rrset
    )


def opt_ttl(response: bytes) -> int:
    """The TTL field of the response's OPT record (the last record, as we encode it)."""
    assert response[-11:-8] == b"\x00\x00\x29", "no OPT record at the end"
    return int(struct.unpack_from("!I", response, len(response) - 6)[0])


# =================================================================================================
# parse_query
# =================================================================================================

A_QUESTION = text_name(svc("web.default")) + struct.pack("!HH", QTYPE.A, 1)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x12\x34", id="two bytes"),
        pytest.param(header()[:11], id="eleven bytes"),
        pytest.param(header(flags=wire.QR) + A_QUESTION, id="a response (QR set)"),
        pytest.param(header(flags=wire.QR | RD, qd=0), id="a response without question"),
    ],
)
def test_parse_query_drops(data: bytes) -> None:
    assert wire.parse_query(data) is None


def _label_loop() -> bytes:
    # "a" then a pointer back to "a": backwards, but endless; the 255-octet bound ends it.
    return header() + b"\x01a\xc0\x0c" + struct.pack("!HH", 1, 1)


def _name_of_length(total: int) -> bytes:
    """A wire name of exactly `total` octets (labels of 63, then the rest, then the root)."""
    labels: list[bytes] = []
    remaining = total - 1
    while remaining > 0:
        size = min(63, remaining - 1)
        labels.append(b"a" * size)
        remaining -= size + 1
    name = wire_name(*labels)
    assert len(name) == total
    return name


FORMERR_CASES = [
    pytest.param(header(qd=0), id="qdcount 0"),
    pytest.param(header(qd=2) + A_QUESTION + A_QUESTION, id="qdcount 2"),
    pytest.param(header(qd=0, ar=1) + opt_rr(), id="qdcount 0 with OPT"),
    pytest.param(header() + b"\xc0\x0c" + struct.pack("!HH", 1, 1), id="pointer to itself"),
    pytest.param(
        header() + b"\xc0\x0e\x00\x01\x01\x00\x01" + struct.pack("!HH", 1, 1),
        id="forward pointer",
    ),
    pytest.param(_label_loop(), id="label and pointer loop"),
    pytest.param(header() + b"\xc0", id="pointer cut in half"),
    pytest.param(
        header() + _name_of_length(256) + struct.pack("!HH", 1, 1), id="name of 256 octets"
    ),
    pytest.param(header() + wire_name(*[b"x" * 63] * 5) + struct.pack("!HH", 1, 1), id="321"),
    pytest.param(
        header() + b"\x40" + b"a" * 64 + wire_name(b"local") + struct.pack("!HH", 1, 1),
        id="64-octet label (type bits 01)",
    ),
    pytest.param(
        header() + b"\x80" + b"a" * 20 + b"\x00" + struct.pack("!HH", 1, 1),
        id="label type bits 10",
    ),
    pytest.param(header() + b"\x03www\x07exam", id="name runs past the end"),
    pytest.param(header() + text_name(svc("web.default")), id="question without type/class"),
    pytest.param(header() + text_name(svc("web.default")) + b"\x00\x01\x00", id="class cut"),
    pytest.param(header(ar=1) + A_QUESTION + opt_rr()[:7], id="truncated OPT header"),
    pytest.param(
        header(ar=1) + A_QUESTION + opt_rr(options=cookie_option())[:-3], id="truncated OPT rdata"
    ),
    pytest.param(header(ar=1) + A_QUESTION, id="arcount 1, no record"),
    pytest.param(header(an=1) + A_QUESTION, id="ancount 1, no record"),
    pytest.param(header() + A_QUESTION + b"\x00", id="one trailing byte"),
    pytest.param(header() + A_QUESTION + b"garbage", id="trailing garbage"),
    pytest.param(header(ar=1) + A_QUESTION + opt_rr() + b"\x00\x00", id="garbage after OPT"),
    pytest.param(header(ar=2) + A_QUESTION + opt_rr() + opt_rr(), id="two OPT records"),
    pytest.param(
        header(ar=1) + A_QUESTION + opt_rr(owner=wire_name(b"x")), id="OPT owner not root"
    ),
    pytest.param(
        header(ar=1) + A_QUESTION + opt_rr(owner=b"\xc0\x0c"), id="OPT owner the question name"
    ),
]


@pytest.mark.parametrize("data", FORMERR_CASES)
@pytest.mark.parametrize(
    ("flags", "rcode"),
    [(RD, wire.FORMERR), (0x2000 | RD | wire.CD, wire.NOTIMP), (15 << 11, wire.NOTIMP)],
    ids=["QUERY", "NOTIFY+CD", "opcode 15"],
)
def test_parse_query_formerr(data: bytes, flags: int, rcode: int) -> None:
    # Malformed: FORMERR — unless the opcode is one kdns does not implement, which is NOTIMP
    # whatever the form (a compliance tester sends opcode 15 without a question).
    data = struct.pack("!HH", 0xBEEF, flags) + data[4:]
    result = wire.parse_query(data)
    assert isinstance(result, bytes), result
    qid, out_flags, qd, an, ns, ar = struct.unpack("!6H", result)
    assert qid == 0xBEEF
    assert out_flags & wire.QR
    assert out_flags & 0xF == rcode
    assert out_flags & 0x7800 == flags & 0x7800  # the opcode is echoed
    assert out_flags & (RD | wire.CD) == flags & (RD | wire.CD)
    assert (qd, an, ns, ar) == (0, 0, 0, 0)
    assert len(result) == 12


def test_formerr_through_handler_is_a_parseable_response(cluster: Cluster) -> None:
    response = ask(cluster.handler, header(qid=0x0102, qd=2) + A_QUESTION + A_QUESTION)
    message = parse(response)
    assert message.id == 0x0102
    assert message.flags & dns.flags.QR
    assert message.rcode() == dns.rcode.FORMERR
    assert cluster.handler.errors == 0


@pytest.mark.parametrize(
    ("name", "expected_miss", "expected_hit"),
    [
        # What each response is counted under (CoreDNS's coredns_dns_responses_total labels and
        # coredns_cache_hits_total type): the first answer is the kubernetes plugin's, a second
        # ask of the same question is an answer-cache hit of its cache type.
        pytest.param(
            "web.default",
            QueryLabel(ZONE + ".", "A", "NOERROR", "kubernetes", False),
            QueryLabel(ZONE + ".", "A", "NOERROR", "kubernetes", False, "success"),
            id="success",
        ),
        pytest.param(
            "nope.default",
            QueryLabel(ZONE + ".", "A", "NXDOMAIN", "kubernetes", False),
            QueryLabel(ZONE + ".", "A", "NXDOMAIN", "kubernetes", False, "denial"),
            id="denial",
        ),
    ],
)
def test_each_reply_carries_its_metrics_label(
    cluster: Cluster, name: str, expected_miss: QueryLabel, expected_hit: QueryLabel
) -> None:
    data = make_query(svc(name))
    first, second = cluster.handler.handle(data, True), cluster.handler.handle(data, True)
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert cluster.handler.cache.hits == 1
    assert LABELS.labels[first[1]] == expected_miss
    assert LABELS.labels[second[1]] == expected_hit
    # A malformed query never reaches a plugin: CoreDNS's "dropped" zone, type "other".
    formerr = cluster.handler.handle(header(qid=0x0102, qd=2) + A_QUESTION + A_QUESTION, True)
    assert isinstance(formerr, tuple)
    assert LABELS.labels[formerr[1]] == QueryLabel("dropped", "other", "FORMERR", "", False)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            make_query("Web.Default.svc.cluster.local"),
            {
                "labels": (b"Web", b"Default", b"svc", b"cluster", b"local"),
                "qname": "web.default.svc.cluster.local",
                "edns": False,
                "payload": 512,
                "compressed": False,
            },
            id="case kept in labels, qname lower-case",
        ),
        pytest.param(
            make_query("a.b", QTYPE.AAAA, edns=4096, do=True),
            {"edns": True, "payload": 4096, "do": True, "edns_version": 0, "qtype": QTYPE.AAAA},
            id="EDNS with DO",
        ),
        pytest.param(
            make_query("a.b", edns=1232, version=1),
            {"edns": True, "edns_version": 1, "do": False},
            id="EDNS version 1 parses (the handler answers BADVERS)",
        ),
        pytest.param(
            make_query("a.b", edns=1232, options=cookie_option()),
            {"edns": True, "payload": 1232},
            id="OPT with a cookie",
        ),
        pytest.param(
            header() + wire_name() + struct.pack("!HH", QTYPE.NS, 1),
            {"labels": (), "qname": "", "qtype": QTYPE.NS},
            id="the root",
        ),
        pytest.param(
            header() + _name_of_length(255) + struct.pack("!HH", 1, 1),
            {"compressed": False},
            id="name of exactly 255 octets",
        ),
        pytest.param(
            header() + wire_name(b"a" * 63, b"local") + struct.pack("!HH", 1, 1),
            {"labels": (b"a" * 63, b"local")},
            id="63-octet label",
        ),
        pytest.param(
            header(ar=1) + A_QUESTION + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4),
            {"edns": False, "qname": svc("web.default")},
            id="an A record in additional, compressed against the question",
        ),
        pytest.param(
            header(ar=2) + A_QUESTION + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 0) + opt_rr(),
            {"edns": True},
            id="OPT after another additional record",
        ),
        pytest.param(
            header() + wire_name(b"a.b", b"c\\d") + struct.pack("!HH", 1, 1),
            {"qname": "a\\.b.c\\\\d", "labels": (b"a.b", b"c\\d")},
            id="dots and backslashes inside labels are escaped",
        ),
    ],
)
def test_parse_query_accepts(data: bytes, expected: dict[str, Any]) -> None:
    query = wire.parse_query(data)
    assert isinstance(query, Query)
    assert query.id == QID
    for attribute, value in expected.items():
        assert getattr(query, attribute) == value, attribute


def test_parse_query_keeps_the_question_as_sent() -> None:
    data = make_query("WWW.Example.COM", QTYPE.MX, edns=1400)
    query = wire.parse_query(data)
    assert isinstance(query, Query)
    assert query.question == text_name("WWW.Example.COM") + struct.pack("!HH", QTYPE.MX, 1)


@pytest.mark.parametrize(
    ("payload", "limit"), [(None, 512), (100, 512), (512, 512), (1232, 1232), (4096, 1232)]
)
def test_udp_limit(payload: int | None, limit: int) -> None:
    query = wire.parse_query(make_query("a.b", edns=payload))
    assert isinstance(query, Query)
    assert query.udp_limit() == limit


# =================================================================================================
# Handler.handle: what gets refused, NOTIMP, BADVERS, and EDNS echo
# =================================================================================================


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        pytest.param(make_query(svc("web.default"), flags=2 << 11), dns.rcode.NOTIMP, id="STATUS"),
        pytest.param(
            make_query(svc("web.default"), QTYPE.SOA, flags=4 << 11), dns.rcode.NOTIMP, id="NOTIFY"
        ),
        pytest.param(
            # dnspython reads an UPDATE's question as its zone section: it must ask for SOA.
            make_query(ZONE, QTYPE.SOA, flags=5 << 11),
            dns.rcode.NOTIMP,
            id="UPDATE",
        ),
        pytest.param(make_query(ZONE, QTYPE.AXFR), dns.rcode.REFUSED, id="AXFR"),
        pytest.param(make_query(ZONE, QTYPE.IXFR), dns.rcode.REFUSED, id="IXFR"),
        pytest.param(make_query(svc("web.default"), qclass=3), dns.rcode.REFUSED, id="class CH"),
        pytest.param(make_query(svc("web.default"), qclass=255), dns.rcode.REFUSED, id="class ANY"),
        pytest.param(make_query("version.bind", QTYPE.TXT, qclass=3), dns.rcode.REFUSED, id="CH"),
        pytest.param(make_query("example.com"), dns.rcode.REFUSED, id="example.com"),
        pytest.param(make_query("cluster.local.example.com"), dns.rcode.REFUSED, id="suffix"),
        pytest.param(make_query("."), dns.rcode.REFUSED, id="the root"),
        pytest.param(make_query(svc("web.default")), dns.rcode.NOERROR, id="a service"),
        pytest.param(make_query(svc("nope.default")), dns.rcode.NXDOMAIN, id="no such service"),
    ],
)
@pytest.mark.parametrize("edns", [None, 1232], ids=["plain", "edns"])
def test_handler_rcodes(cluster: Cluster, data: bytes, rcode: int, edns: int | None) -> None:
    if edns is not None:  # the same query with an OPT record appended
        data = data[:10] + b"\x00\x01" + data[12:] + opt_rr(edns)
    response = ask(cluster.handler, data)
    message = parse(response)
    assert message.id == QID
    assert message.flags & dns.flags.QR
    assert message.rcode() == rcode
    assert message.opcode() == (data[2] >> 3) & 0xF
    assert bool(message.flags & dns.flags.RD) == bool(data[2] & 1)
    assert response[12 : 12 + len(question_bytes(data))] == question_bytes(data)
    assert (message.edns >= 0) == (edns is not None)
    assert cluster.handler.errors == 0


def test_refused_and_notimp_answers_carry_no_records(cluster: Cluster) -> None:
    for data in (make_query("example.com"), make_query(ZONE, QTYPE.AXFR, flags=2 << 11)):
        message = parse(ask(cluster.handler, data))
        assert (message.answer, message.authority, message.additional) == ([], [], [])


@pytest.mark.parametrize("do", [False, True])
def test_badvers(cluster: Cluster, do: bool) -> None:
    response = ask(cluster.handler, make_query(svc("web.default"), edns=1232, version=1, do=do))
    flags = struct.unpack_from("!H", response, 2)[0]
    assert flags & wire.QR
    assert flags & 0xF == 0  # the lower four bits of 16
    ttl = opt_ttl(response)
    assert ttl >> 24 == 1  # the upper eight bits of BADVERS (16 >> 4)
    assert (ttl >> 16) & 0xFF == 0  # we speak version 0
    assert bool(ttl & 0x8000) == do
    message = parse(response)
    assert message.rcode() == dns.rcode.BADVERS
    assert message.answer == []


@pytest.mark.parametrize(
    ("payload", "do"), [(512, False), (1232, True), (4096, False), (4096, True), (65535, True)]
)
def test_opt_echoed_with_our_payload_and_do(cluster: Cluster, payload: int, do: bool) -> None:
    response = ask(cluster.handler, make_query(svc("web.default"), edns=payload, do=do))
    message = parse(response)
    assert message.edns == 0
    assert message.payload == wire.MAX_UDP_PAYLOAD
    assert bool(message.ednsflags & dns.flags.DO) == do
    assert message.options == ()
    assert a_records(message) == ["10.96.0.10"]


def test_no_opt_when_the_query_had_none(cluster: Cluster) -> None:
    for data in (make_query(svc("web.default")), make_query(svc("nope.default"))):
        response = ask(cluster.handler, data)
        assert struct.unpack_from("!H", response, 10)[0] == 0  # arcount
        assert parse(response).edns == -1


def test_cookie_is_not_echoed(cluster: Cluster) -> None:
    # We do not implement RFC 7873; an OPT without the option is the RFC's answer for that.
    query = make_query(svc("web.default"), edns=1232, options=cookie_option())
    message = parse(ask(cluster.handler, query))
    assert message.options == ()


def test_dnslib_built_query_is_answered(cluster: Cluster) -> None:
    response = ask(cluster.handler, dnslib_query(svc("redis.default"), "A", qid=77, payload=1232))
    record = DNSRecord.parse(response)
    assert record.header.id == 77
    assert record.header.aa == 1
    assert [str(rr.rdata) for rr in record.rr] == ["10.96.0.20"]
    assert [rr.rtype for rr in record.ar] == [QTYPE.OPT]


# =================================================================================================
# The answer cache
# =================================================================================================


def test_second_identical_query_is_a_cache_hit(cluster: Cluster) -> None:
    cache = cluster.handler.cache
    first = ask(cluster.handler, make_query(svc("web.default"), qid=1))
    assert (cache.hits, len(cache)) == (0, 1)
    second = ask(cluster.handler, make_query(svc("web.default"), qid=2))
    assert cache.hits == 1
    assert second[:2] == b"\x00\x02"
    assert second[2:] == first[2:]
    assert a_records(parse(second)) == ["10.96.0.10"]


@pytest.mark.parametrize("edns", [None, 4096])
def test_cache_echoes_the_clients_case(cluster: Cluster, edns: int | None) -> None:
    ask(cluster.handler, make_query(svc("web.default"), edns=edns))
    spelled = "wEb.DEFAULT.Svc.Cluster.LOCAL"
    response = ask(cluster.handler, make_query(spelled, qid=9, edns=edns))
    assert cluster.handler.cache.hits == 1
    message = parse(response)
    assert message.id == 9
    assert message.question[0].name.to_text() == spelled + "."
    assert [rrset.name.to_text() for rrset in message.answer] == [spelled + "."]
    assert a_records(message) == ["10.96.0.10"]
    # The wire bytes themselves: the question as the client sent it.
    assert response[12 : 12 + len(text_name(spelled))] == text_name(spelled)


def test_slow_path_echoes_the_clients_case_in_owner_names(cluster: Cluster) -> None:
    spelled = "REDIS.default.SVC.cluster.local"
    message = parse(ask(cluster.handler, make_query(spelled)))
    assert cluster.handler.cache.hits == 0
    assert message.question[0].name.to_text() == spelled + "."
    assert [rrset.name.to_text() for rrset in message.answer] == [spelled + "."]


BASE = {"name": svc("web.default"), "qtype": QTYPE.A, "flags": RD, "edns": 1232, "do": False}


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({"qtype": QTYPE.AAAA}, id="qtype"),
        pytest.param({"qtype": QTYPE.SRV}, id="qtype SRV"),
        pytest.param({"flags": 0}, id="RD clear"),
        pytest.param({"flags": RD | wire.CD}, id="CD set"),
        pytest.param({"do": True}, id="DO set"),
        pytest.param({"edns": None}, id="no EDNS"),
        pytest.param({"name": svc("redis.default")}, id="name"),
    ],
)
def test_cache_entries_differ_by(cluster: Cluster, variant: dict[str, Any]) -> None:
    cache = cluster.handler.cache
    base_response = ask(cluster.handler, make_query(**BASE))
    params = {**BASE, **variant}
    data = make_query(**params)
    response = ask(cluster.handler, data)
    assert cache.hits == 0, "a different query was answered from another query's entry"
    assert len(cache) == 2
    assert response != base_response
    message = parse(response)
    assert bool(message.flags & dns.flags.RD) == bool(params["flags"] & RD)
    assert bool(message.flags & dns.flags.CD) == bool(params["flags"] & wire.CD)
    assert (message.edns == 0) == (params["edns"] is not None)
    assert bool(message.ednsflags & dns.flags.DO) == params["do"]
    assert message.question[0].rdtype == params["qtype"]
    # Each variant then hits its own entry.
    again = ask(cluster.handler, data)
    assert cache.hits == 1
    assert again == response


def test_cache_key_ignores_option_contents_and_payload(cluster: Cluster) -> None:
    plain = make_query(svc("web.default"), edns=1232)
    variants = [
        make_query(svc("web.default"), edns=1232, options=cookie_option()),
        make_query(svc("web.default"), edns=1232, options=cookie_option(b"\xff" * 8)),
        make_query(svc("web.default"), edns=4096),
        make_query(svc("web.default"), edns=600),
    ]
    key = wire.cache_key(plain)
    assert key is not None
    for data in variants:
        found = wire.cache_key(data)
        assert found is not None
        assert found[0] == key[0]
    # The key does include the DO bit and the EDNS shape.
    for other in (make_query(svc("web.default"), edns=1232, do=True), make_query(svc("web"))):
        found = wire.cache_key(other)
        assert found is not None
        assert found[0] != key[0]


def test_query_with_cookie_hits_the_cache(cluster: Cluster) -> None:
    cache = cluster.handler.cache
    first = ask(cluster.handler, make_query(svc("web.default"), edns=1232))
    with_cookie = make_query(svc("web.default"), qid=0x4242, edns=1232, options=cookie_option())
    response = ask(cluster.handler, with_cookie)
    assert cache.hits == 1
    assert response == b"\x42\x42" + first[2:]
    assert parse(response).options == ()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (make_query(svc("web.default"), edns=1232, version=1), "EDNS version 1"),
        (make_query(svc("web.default"), flags=2 << 11), "opcode STATUS"),
        (
            # The name ends in a pointer to offset 3, the flags' low byte (0x00: the root);
            # a question has no prior name to point to, so this is FORMERR, and not stored.
            header(flags=0) + text_name(svc("web.default"))[:-1] + b"\xc0\x03" + b"\x00\x01" * 2,
            "compressed question",
        ),
    ],
)
def test_unusual_queries_are_not_stored(cluster: Cluster, data: bytes, reason: str) -> None:
    ask(cluster.handler, data)
    assert len(cluster.handler.cache) == 0, reason


def test_service_change_drops_only_its_own_entries(cluster: Cluster) -> None:
    cache = cluster.handler.cache
    web, redis = make_query(svc("web.default")), make_query(svc("redis.default"))
    ask(cluster.handler, web)
    ask(cluster.handler, redis)
    ask(cluster.handler, web)
    ask(cluster.handler, redis)
    assert cache.hits == 2

    cluster.upsert_service(cluster_ip_service("web", "default", "10.96.1.99"))

    assert a_records(parse(ask(cluster.handler, web))) == ["10.96.1.99"]
    assert cache.hits == 2, "the stale answer for web was served from the cache"
    assert a_records(parse(ask(cluster.handler, redis))) == ["10.96.0.20"]
    assert cache.hits == 3, "the entry for redis was dropped although redis did not change"
    ask(cluster.handler, web)
    assert cache.hits == 4  # the new answer is cached in turn


def test_unchanged_replace_keeps_the_cache(cluster: Cluster) -> None:
    ask(cluster.handler, make_query(svc("web.default")))
    cluster.set_services(default_services())  # same objects by value: nothing changed
    ask(cluster.handler, make_query(svc("web.default")))
    assert cluster.handler.cache.hits == 1


def test_cached_nxdomain_dropped_when_the_service_appears(cluster: Cluster) -> None:
    cache = cluster.handler.cache
    query = make_query(svc("new.default"))
    assert rcode_of(ask(cluster.handler, query)) == dns.rcode.NXDOMAIN
    assert rcode_of(ask(cluster.handler, query)) == dns.rcode.NXDOMAIN
    assert cache.hits == 1

    cluster.upsert_service(cluster_ip_service("new", "default", "10.96.0.77"))

    message = parse(ask(cluster.handler, query))
    assert message.rcode() == dns.rcode.NOERROR
    assert a_records(message) == ["10.96.0.77"]
    assert cache.hits == 1


def test_externalname_answer_dropped_when_its_target_changes(cluster: Cluster) -> None:
    cache = cluster.handler.cache
    query = make_query(svc("cache.prod"))
    message = parse(ask(cluster.handler, query))
    assert [rrset.rdtype for rrset in message.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert message.answer[0][0].target.to_text() == svc("redis.default") + "."
    assert a_records(message) == ["10.96.0.20"]
    ask(cluster.handler, query)
    assert cache.hits == 1

    cluster.upsert_service(cluster_ip_service("redis", "default", "10.96.0.21"))

    message = parse(ask(cluster.handler, query))
    assert a_records(message) == ["10.96.0.21"]
    assert cache.hits == 1, "the chased answer outlived a change of its target"


def test_pod_answer_dropped_when_the_namespace_disappears(cluster: Cluster) -> None:
    cache = cluster.handler.cache
    query = make_query(f"10-244-1-10.default.pod.{ZONE}")
    message = parse(ask(cluster.handler, query))
    assert a_records(message) == ["10.244.1.10"]
    ask(cluster.handler, query)
    assert cache.hits == 1

    cluster.set_namespaces(["prod", "kube-system"])

    assert rcode_of(ask(cluster.handler, query)) == dns.rcode.NXDOMAIN
    assert cache.hits == 1


def test_unsynced_store_answers_servfail_and_caches_nothing() -> None:
    store = Store()
    resolver = Resolver(store, Config())
    handler = Handler(resolver)
    store.replace(NAMESPACES, {"default": namespace("default")})
    for _ in range(2):
        assert rcode_of(ask(handler, make_query(svc("web.default")))) == dns.rcode.SERVFAIL
    assert (handler.cache.hits, len(handler.cache)) == (0, 0)


# =================================================================================================
# Truncation
# =================================================================================================

BIG = svc("big.default")
MID = svc("mid.default")


A_RECORD = 16  # an A record whose owner is a pointer: 2 + 10 + 4 octets


def assert_truncated(response: bytes, data: bytes, limit: int, edns: bool) -> None:
    """TC set, and as many whole A records as fit the limit (issue 10: a client that does not
    retry over TCP still gets addresses), each one of the Service's, none twice."""
    assert limit - A_RECORD < len(response) <= limit
    qid, flags, qd, an, ns, ar = struct.unpack_from("!6H", response)
    assert qid == struct.unpack_from("!H", data)[0]
    assert flags & wire.TC
    assert flags & wire.QR
    assert (qd, ns, ar) == (1, 0, 1 if edns else 0)
    assert response[12 : 12 + len(question_bytes(data))] == question_bytes(data)
    message = parse(response)
    assert message.rcode() == dns.rcode.NOERROR
    found = a_records(message)
    assert len(found) == an == len(set(found))
    assert set(found) <= set(endpoint_ips(BIG_COUNT)) | set(endpoint_ips(MID_COUNT, "10.2.0.0"))
    if edns:
        assert message.payload == wire.MAX_UDP_PAYLOAD


@pytest.mark.parametrize(
    ("edns", "limit"), [(None, 512), (512, 512), (1232, 1232), (4096, 1232), (65535, 1232)]
)
def test_big_answer_over_udp_is_truncated(sized: Cluster, edns: int | None, limit: int) -> None:
    data = make_query(BIG, edns=edns)
    first = ask(sized.handler, data)
    assert_truncated(first, data, limit, edns is not None)
    again = make_query(BIG.upper(), qid=0x0BAD, edns=edns)
    second = ask(sized.handler, again)
    assert sized.handler.cache.hits == 1
    assert_truncated(second, again, limit, edns is not None)


@pytest.mark.parametrize("edns", [None, 4096])
def test_big_answer_over_tcp_is_whole(sized: Cluster, edns: int | None) -> None:
    expected = sorted(endpoint_ips(BIG_COUNT))
    for qid in (1, 2):  # the slow path, then the cache
        response = ask(sized.handler, make_query(BIG, qid=qid, edns=edns), udp=False)
        flags = struct.unpack_from("!H", response, 2)[0]
        assert not flags & wire.TC
        assert len(response) > wire.MAX_UDP_PAYLOAD
        assert a_records(parse(response)) == expected
    assert sized.handler.cache.hits == 1


def test_udp_truncation_then_tcp_from_the_same_entry(sized: Cluster) -> None:
    cache = sized.handler.cache
    assert ask(sized.handler, make_query(BIG))[3] & 0xF == 0
    assert struct.unpack_from("!H", ask(sized.handler, make_query(BIG)), 2)[0] & wire.TC
    whole = parse(ask(sized.handler, make_query(BIG), udp=False))
    assert cache.hits == 2
    assert len(a_records(whole)) == BIG_COUNT
    # ... and UDP after TCP still truncates.
    assert struct.unpack_from("!H", ask(sized.handler, make_query(BIG)), 2)[0] & wire.TC


@pytest.mark.parametrize(
    ("edns", "truncated"), [(None, True), (512, True), (1232, False), (4096, False)]
)
def test_mid_sized_answer_depends_on_the_payload(
    sized: Cluster, edns: int | None, truncated: bool
) -> None:
    for qid in (1, 2):  # the slow path, then the cache
        data = make_query(MID, qid=qid, edns=edns)
        response = ask(sized.handler, data)
        if truncated:
            assert_truncated(response, data, 512, edns is not None)
        else:
            assert 512 < len(response) <= 1232
            assert len(a_records(parse(response))) == MID_COUNT
    assert sized.handler.cache.hits == 1


def test_truncated_answer_shared_by_payload_sizes(sized: Cluster) -> None:
    # One entry serves payloads 512 and 4096: the limit comes from the query, not the entry.
    small = ask(sized.handler, make_query(MID, edns=512))
    large = ask(sized.handler, make_query(MID, edns=4096))
    assert sized.handler.cache.hits == 1
    assert struct.unpack_from("!H", small, 2)[0] & wire.TC
    assert not struct.unpack_from("!H", large, 2)[0] & wire.TC
    assert len(a_records(parse(large))) == MID_COUNT


# =================================================================================================
# Regressions: bugs these tests found (each test states the contract it checks)
# =================================================================================================


def test_pod_name_with_an_ipv6_scope_is_nxdomain_not_an_internal_error(cluster: Cluster) -> None:
    # `fe80--1%eth0` reads as fe80::1%eth0: ipaddress accepts the scope, dnslib's AAAA does not.
    # A name a client can send is bad input (docs/architecture.md §10), never an internal error.
    response = ask(cluster.handler, make_query(f"fe80--1%eth0.default.pod.{ZONE}", QTYPE.AAAA))
    assert cluster.handler.errors == 0
    assert rcode_of(response) == dns.rcode.NXDOMAIN


def test_question_pointing_into_the_header_gets_a_parseable_answer(cluster: Cluster) -> None:
    # The name is a pointer to offset 2, the flags' high byte (0x00: the root). Echoing that
    # question verbatim makes it point at the response's flags (0x80: an invalid label type).
    data = struct.pack("!6H", QID, 0, 1, 0, 0, 0) + b"\xc0\x02" + struct.pack("!HH", 1, 1)
    response = ask(cluster.handler, data)
    message = parse(response)  # raises BadLabelType when the echoed question is unreadable
    assert message.id == QID
    assert message.rcode() in (dns.rcode.FORMERR, dns.rcode.REFUSED)


def _nul_label_query(rest: tuple[bytes, ...], qtype: int) -> bytes:
    """A query whose first label starts with a NUL and then bytes that, to `cache_key`'s
    `find(0)`, look like the end of the question and an OPT record swallowing the rest."""
    tail = wire_name(*rest) + struct.pack("!HH", qtype, 1)
    label = b"\x00" + struct.pack("!HH", 1, 1) + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
    label += struct.pack("!H", len(tail))
    return header() + bytes([len(label)]) + label + tail


def test_cache_never_answers_a_different_question(cluster: Cluster) -> None:
    first = _nul_label_query((b"default", b"svc", b"cluster", b"local"), QTYPE.A)
    second = _nul_label_query((b"kube-system", b"svc", b"cluster", b"local"), QTYPE.TXT)
    ask(cluster.handler, first)
    response = ask(cluster.handler, second)
    message = parse(response)
    query = wire.parse_query(second)
    assert isinstance(query, Query)
    assert message.question[0].rdtype == QTYPE.TXT
    assert response[12 : 12 + len(query.question)] == query.question


def test_cache_hit_keeps_512_for_a_query_without_edns(sized: Cluster) -> None:
    # ancount=1, and that answer record happens to be OPT-shaped: the query has no EDNS
    # (parse_query reads OPT only in the additional section), so its UDP limit is 512.
    data = header(an=1) + text_name(MID) + struct.pack("!HH", QTYPE.A, 1) + opt_rr(payload=4096)
    query = wire.parse_query(data)
    assert isinstance(query, Query)
    assert not query.edns
    first = ask(sized.handler, data)
    second = ask(sized.handler, data)
    assert len(first) <= 512
    assert len(second) <= 512
    assert second == first

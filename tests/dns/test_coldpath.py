"""Cold answers: records in wire parts (`pack.Rec`), the encoder's layout, and the receive
thread's NXDOMAIN for names that do not exist (`Handler.denial`).

Every answer the fast builders give is compared with the dnslib-built answer of the same
question, byte for byte, and read back with dnspython (strict) as zone-file text.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trio
from dnslib import EDNS0, QTYPE, DNSRecord

from kdns.config import Config
from kdns.dns import wire
from kdns.dns.handler import Handler
from kdns.dns.plugins import Plugins
from kdns.dns.resolver import Resolver
from kdns.dns.wire import Query
from kdns.model import endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, SERVICES, Store
from tests.builders import api_endpoint, api_endpointslice, api_service
from tests.dns.cluster import load, make_handler
from tests.dns.test_pack import dnslib_encode
from tests.dns.test_server import start, udp_exchange
from tests.dns.test_wire import (
    ZONE,
    a_records,
    build_cluster,
    cluster_ip_service,
    make_query,
    rcode_of,
)


def ask(qname: str, qtype: str, edns: bool = False) -> Query:
    request = DNSRecord.question(qname, qtype)
    if edns:
        request.add_ar(EDNS0(udp_len=1232))
    query = wire.parse_query(bytes(request.pack()))
    assert isinstance(query, Query)
    return query


def big_cluster(endpoints: int = 500) -> tuple[Store, Resolver, Handler]:
    """The small cluster plus `hl.big`: a headless Service with `endpoints` ready endpoints,
    half of them IPv6, a named port."""
    store, resolver, handler = make_handler()
    store.upsert(SERVICES, service_from_dict(api_service("big", "hl", clusterIP="None")))
    addresses = [
        api_endpoint(f"10.1.{i // 250}.{i % 250 + 1}")
        if i % 2
        else api_endpoint(f"fd00::{i + 1:x}", hostname=f"host-{i}")
        for i in range(endpoints)
    ]
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}]
    for family, chosen in (("IPv4", addresses[1::2]), ("IPv6", addresses[::2])):
        slice_ = api_endpointslice("big", "hl", f"hl-{family}", chosen, ports, family)
        store.upsert(ENDPOINTSLICES, endpointslice_from_dict(slice_))
    return store, resolver, handler


def zone_text(response: bytes) -> tuple[str, list[str]]:
    """(rcode, every record as one normalised zone-file line, section order kept)."""
    message = dns.message.from_wire(response)
    lines = [
        " ".join(line.split()).lower()
        for section in (message.answer, message.authority, message.additional)
        for rrset in section
        for line in rrset.to_text().splitlines()
    ]
    return dns.rcode.to_text(message.rcode()), lines


# (question, type, what the answer holds, as zone-file lines that must be among its records)
PACKED = [
    (
        "hl.default.svc.cluster.local",
        "A",
        [
            "hl.default.svc.cluster.local. 5 in a 10.244.1.5",
            "hl.default.svc.cluster.local. 5 in a 10.244.1.6",
        ],
    ),
    (
        "_http._tcp.hl.default.svc.cluster.local",
        "SRV",
        [
            "_http._tcp.hl.default.svc.cluster.local. 5 in srv 0 50 8080 web-0.hl.default.svc.cluster.local.",
            "_http._tcp.hl.default.svc.cluster.local. 5 in srv 0 50 8080 10-244-1-6.hl.default.svc.cluster.local.",
            "web-0.hl.default.svc.cluster.local. 5 in a 10.244.1.5",
            "10-244-1-6.hl.default.svc.cluster.local. 5 in a 10.244.1.6",
        ],
    ),
    (
        "web-0.HL.default.svc.cluster.local",
        "A",
        ["web-0.hl.default.svc.cluster.local. 5 in a 10.244.1.5"],
    ),
    (
        "api.prod.svc.cluster.local",
        "AAAA",
        ["api.prod.svc.cluster.local. 5 in aaaa fd00:10:96::50"],
    ),
    ("hl.default.svc.cluster.local", "ANY", ["hl.default.svc.cluster.local. 5 in a 10.244.1.5"]),
    ("hl.default.svc.cluster.local", "AAAA", ["cluster.local. 5 in soa"]),
    ("hl.big.svc.cluster.local", "AAAA", ["hl.big.svc.cluster.local. 5 in aaaa fd00::1"]),
    (
        "_http._tcp.hl.big.svc.cluster.local",
        "SRV",
        [
            "_http._tcp.hl.big.svc.cluster.local. 5 in srv 0 0 80 host-0.hl.big.svc.cluster.local.",
            "_http._tcp.hl.big.svc.cluster.local. 5 in srv 0 0 80 10-1-0-2.hl.big.svc.cluster.local.",
            "host-0.hl.big.svc.cluster.local. 5 in aaaa fd00::1",
            "10-1-0-2.hl.big.svc.cluster.local. 5 in a 10.1.0.2",
        ],
    ),
    ("hl.big.svc.cluster.local", "SRV", ["host-498.hl.big.svc.cluster.local. 5 in aaaa fd00::1f3"]),
]


@pytest.fixture(scope="module")
def big() -> tuple[Store, Resolver, Handler]:
    return big_cluster()


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
@pytest.mark.parametrize(("qname", "qtype", "records"), PACKED)
def test_records_in_wire_parts_encode_as_dnslibs(
    big: tuple[Store, Resolver, Handler], qname: str, qtype: str, records: list[str], edns: bool
) -> None:
    _, resolver, _ = big
    query = ask(qname, qtype, edns)
    packed = resolver.resolve(query.qname, query.qtype, packed=True)
    objects = resolver.resolve(query.qname, query.qtype)
    assert packed is not None and objects is not None
    sections = (packed.answer, packed.authority, packed.additional)
    encoded = wire.encode(query, packed.rcode, *sections)
    assert encoded == dnslib_encode(query, objects)
    assert packed.tags == objects.tags and packed.rcode == objects.rcode
    rcode, lines = zone_text(encoded)
    assert rcode == dns.rcode.to_text(objects.rcode)
    soa_cut = [" ".join(x.split()[:4]) if " soa " in x else x for x in lines]
    assert set(records) <= set(soa_cut)


@pytest.mark.parametrize("rotate", [False, True], ids=["fixed", "rotate"])
@pytest.mark.parametrize(("qname", "qtype", "records"), PACKED)
def test_the_encoders_layout_is_splits(
    big: tuple[Store, Resolver, Handler], qname: str, qtype: str, records: list[str], rotate: bool
) -> None:
    _, resolver, _ = big
    query = ask(qname, qtype, edns=True)
    answer = resolver.resolve(query.qname, query.qtype, packed=True)
    assert answer is not None
    response, layout = wire.encode_layout(
        query, answer.rcode, answer.answer, answer.authority, answer.additional, rotate=rotate
    )
    assert layout == wire.split(response, rotate=rotate)


@pytest.mark.parametrize(
    ("qname", "qtype", "kept"),
    [
        # 512 octets less header and question leave 470: 29 A records of 16 octets; 459 for
        # the SRV question: 8 SRV records of 51-57 octets (targets not compressed).
        ("hl.big.svc.cluster.local", "A", 29),
        ("_http._tcp.hl.big.svc.cluster.local", "SRV", 8),
    ],
)
def test_udp_cuts_from_the_encoders_layout_are_the_same(
    big: tuple[Store, Resolver, Handler], qname: str, qtype: str, kept: int
) -> None:
    _, resolver, _ = big
    query = ask(qname.upper(), qtype)  # the client's case is echoed in the cut answer too
    answer = resolver.resolve(query.qname, query.qtype, packed=True)
    assert answer is not None
    response, layout = wire.encode_layout(
        query, answer.rcode, answer.answer, answer.authority, answer.additional, rotate=True
    )
    cut = wire.finish(response, query, udp=True, layout=layout)
    assert cut == wire.finish(response, query, udp=True)
    message = dns.message.from_wire(cut)
    assert message.flags & dns.flags.TC
    assert str(message.question[0].name) == qname.upper() + "."
    assert sum(len(rrset) for rrset in message.answer) == kept
    assert not message.additional  # whole RRsets first: glue only when every SRV fits
    assert len(cut) <= 512


def test_the_handler_answers_a_large_srv_from_wire_parts_and_caches_it(
    big: tuple[Store, Resolver, Handler],
) -> None:
    _, resolver, handler = big
    data = make_query("_http._tcp.hl.big.svc.cluster.local", QTYPE.SRV, qid=9)
    reply = handler.handle(data, udp=False)
    assert isinstance(reply, tuple)
    query = wire.parse_query(data)
    assert isinstance(query, Query)
    objects = resolver.resolve(query.qname, query.qtype)
    assert objects is not None
    assert reply[0] == wire.finish(dnslib_encode(query, objects), query, udp=False)
    # The cached copy answers with the next rotation of the same 500 SRV records.
    hit = handler.handle(data, udp=False)
    assert isinstance(hit, tuple)
    first, again = DNSRecord.parse(reply[0]), DNSRecord.parse(hit[0])
    assert [str(rr) for rr in again.rr] == [str(rr) for rr in first.rr[1:] + first.rr[:1]]
    assert len(again.ar) == 500


# --- the receive thread's NXDOMAIN ---------------------------------------------------------------


def primed(handler: Handler, edns: bool = False, do: bool = False) -> None:
    """One NXDOMAIN through trio's path, which gives `denial` its metrics label."""
    data = make_query("primer.default.svc.cluster.local", edns=1232 if edns else None, do=do)
    assert handler.handle_miss(data, udp=True) is not None


DENIED = [
    # (question, edns, DO): each NXDOMAIN with the zone's SOA, as the trio path answers it
    ("nosuch.default.svc.cluster.local", None, False),
    ("R4nd0m-Label.default.svc.CLUSTER.local", None, False),
    ("x.nosuch-namespace.svc.cluster.local", 1232, False),
    ("_http._tcp.gone.default.svc.cluster.local", 1232, True),
    ("no-such-namespace.svc.cluster.local", None, False),
    ("a.b.c.d.e.f.default.svc.cluster.local", None, False),  # default.f is no Service
]


@pytest.mark.parametrize(("qname", "edns", "do"), DENIED)
def test_denial_is_the_trio_paths_nxdomain_byte_for_byte(
    qname: str, edns: int | None, do: bool
) -> None:
    _, _, handler = make_handler()
    data = make_query(qname, qid=0x5151, edns=edns, do=do)
    assert handler.denial(data) is None  # the label comes from trio's first answer
    primed(handler, edns is not None, do)
    thread = handler.denial(data)
    assert thread is not None
    trio_path = handler.handle_miss(data, udp=True)
    assert thread == trio_path
    rcode, lines = zone_text(thread[0])
    assert rcode == "NXDOMAIN"
    assert [" ".join(x.split()[:4]) for x in lines] == ["cluster.local. 5 in soa"]
    message = dns.message.from_wire(thread[0])
    assert str(message.question[0].name) == qname + "."
    assert message.flags & dns.flags.AA and message.id == 0x5151


def test_denial_leaves_the_answer_cache_alone() -> None:
    _, _, handler = make_handler()
    primed(handler)
    before = len(handler.cache)
    for i in range(50):
        assert handler.denial(make_query(f"flood-{i}.default.svc.cluster.local")) is not None
    # Trio's own path (TCP, and the datagrams trio reads itself) answers them the same way.
    for i in range(50):
        data = make_query(f"flood-{i}.default.svc.cluster.local", qid=i)
        reply = handler.handle(data, udp=i % 2 == 0)
        assert reply == handler.denial(data)
    assert len(handler.cache) == before


NOT_DENIED = [
    # (question, type, why the receive thread hands it to trio)
    ("redis.default.svc.cluster.local", QTYPE.A, "the Service exists"),
    ("nosuch.redis.default.svc.cluster.local", QTYPE.A, "under a Service: trio knows"),
    ("default.svc.cluster.local", QTYPE.A, "a namespace that exists: NODATA"),
    ("quiet.svc.cluster.local", QTYPE.A, "a namespace without Services that exists"),
    ("svc.cluster.local", QTYPE.A, "svc itself exists"),
    ("cluster.local", QTYPE.SOA, "the apex"),
    ("nosuch.cluster.local", QTYPE.A, "not under svc"),
    ("10-0-0-1.default.pod.cluster.local", QTYPE.A, "pod names follow `pods`"),
    ("1.0.0.10.in-addr.arpa", QTYPE.PTR, "reverse zones"),
    ("www.example.com", QTYPE.A, "not ours"),
    ("nosuch.default.svc.cluster.local", QTYPE.AXFR, "refused"),
]


@pytest.mark.parametrize(("qname", "qtype", "why"), NOT_DENIED)
def test_denial_hands_over_what_is_not_certain(qname: str, qtype: int, why: str) -> None:
    _, _, handler = make_handler()
    primed(handler)
    assert handler.denial(make_query(qname, qtype)) is None, why


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (make_query("nosuch.default.svc.cluster.local", qclass=3), "class CH"),
        (make_query("nosuch.default.svc.cluster.local", flags=0x2900), "opcode 5 (UPDATE)"),
        (make_query("nosuch.default.svc.cluster.local", flags=0x8100), "a response"),
        (make_query("nosuch.default.svc.cluster.local", edns=1232, version=1), "EDNS version 1"),
        (make_query("nosuch.default.svc.cluster.local")[:-1], "cut short"),
        (make_query("a\\.b.default.svc.cluster.local"), "a label holding a dot"),
    ],
)
def test_denial_takes_only_plain_queries(data: bytes, why: str) -> None:
    _, _, handler = make_handler()
    primed(handler)
    assert handler.denial(data) is None, why


def test_denial_is_off_where_other_plugins_or_autopath_come_first() -> None:
    name = "nosuch.default.svc.cluster.local"
    data = make_query(name)
    hosts = Config().with_overrides(**{"hosts.file": "/NodeHosts", "hosts.fallthrough": ["."]})
    for options in (
        # autopath answers a pod's `<x>.<its ns>.svc` by searching its list.
        {"autopath": True},
        # fallthrough sends the NXDOMAIN upstream.
        {"fallthrough": ("cluster.local",)},
        # hosts comes before kubernetes and knows this name.
        {"plugins": Plugins.from_config(hosts, f"192.0.2.7 {name}\n")},
    ):
        store = Store()
        resolver = Resolver(store, Config())
        handler = Handler(resolver, **options)  # type: ignore[arg-type]
        load(store)
        primed(handler)
        assert handler.denial(data) is None, options
    reply = handler.handle(data, udp=True)
    assert isinstance(reply, tuple)
    assert zone_text(reply[0]) == ("NOERROR", [f"{name}. 3600 in a 192.0.2.7"])


def test_nothing_is_certainly_absent_before_sync() -> None:
    # Rule 4: until every kind is listed, trio answers SERVFAIL, never NXDOMAIN.
    _, resolver, _ = make_handler()
    assert resolver.certainly_absent("nosuch.default.svc.cluster.local") == "cluster.local"
    _, unsynced, _ = make_handler(synced=False)
    assert unsynced.certainly_absent("nosuch.default.svc.cluster.local") is None


def test_a_change_is_seen_by_the_next_denial() -> None:
    store, _, handler = make_handler()
    primed(handler)
    data = make_query("late.default.svc.cluster.local")
    assert handler.denial(data) is not None
    store.upsert(SERVICES, service_from_dict(api_service("default", "late", clusterIP="10.96.9.9")))
    assert handler.denial(data) is None
    reply = handler.handle(data, udp=True)
    assert isinstance(reply, tuple)
    assert zone_text(reply[0]) == ("NOERROR", ["late.default.svc.cluster.local. 5 in a 10.96.9.9"])
    store.delete(SERVICES, ("default", "late"))
    # NXDOMAIN again at once, with the SOA serial the change moved (RFC 2308 §3).
    after = handler.denial(data)
    assert after is not None
    assert after == handler.handle_miss(data, udp=True)
    assert dns.message.from_wire(after[0]).authority[0][0].serial == store.last_change
    # A namespace that appears with its first Service.
    ns_data = make_query("brand-new.svc.cluster.local")
    assert handler.denial(ns_data) is not None
    store.upsert(SERVICES, service_from_dict(api_service("brand-new", "a", clusterIP="10.96.9.8")))
    assert handler.denial(ns_data) is None


# --- over real UDP, through the receive thread -----------------------------------------------


async def test_never_asked_names_are_answered_by_the_receive_thread(
    nursery: trio.Nursery,
) -> None:
    cluster = build_cluster()
    running = await start(nursery, cluster)
    # The first NXDOMAIN of a shape goes through trio, which stores it and names its label.
    first = await udp_exchange(running, make_query(f"first.default.svc.{ZONE}", qid=1))
    assert rcode_of(first) == wire.NXDOMAIN
    stored = len(cluster.handler.cache)
    for i in range(200):
        name = f"RND-{i}.default.svc.{ZONE}" if i % 2 else f"rnd-{i}.svc.{ZONE}"
        response = await udp_exchange(running, make_query(name, qid=1000 + i))
        message = dns.message.from_wire(response)
        assert message.id == 1000 + i
        assert message.rcode() == dns.rcode.NXDOMAIN
        assert str(message.question[0].name) == name + "."
        assert [rrset.rdtype for rrset in message.authority] == [dns.rdatatype.SOA]
    # None of them reached trio: trio's miss path would have stored each one.
    assert len(cluster.handler.cache) == stored


async def test_a_store_change_between_two_queries_is_answered_at_once(
    nursery: trio.Nursery,
) -> None:
    cluster = build_cluster()
    running = await start(nursery, cluster)
    await udp_exchange(running, make_query(f"first.default.svc.{ZONE}", qid=1))
    name = f"fresh.default.svc.{ZONE}"
    assert rcode_of(await udp_exchange(running, make_query(name, qid=2))) == wire.NXDOMAIN
    # The trio thread applies the change; the very next query sees the Service.
    cluster.upsert_service(cluster_ip_service("fresh", "default", "10.96.7.7"))
    response = await udp_exchange(running, make_query(name, qid=3))
    assert rcode_of(response) == wire.NOERROR
    assert a_records(dns.message.from_wire(response)) == ["10.96.7.7"]
    # And gone again: NXDOMAIN at once, from the thread (nothing stored).
    cluster.set_services([s for s in cluster.services.values() if s.name != "fresh"])
    stored = len(cluster.handler.cache)
    other = f"not-there.default.svc.{ZONE}"
    for data in (make_query(name, qid=4), make_query(other, qid=5)):
        assert rcode_of(await udp_exchange(running, data)) == wire.NXDOMAIN
    assert len(cluster.handler.cache) == stored

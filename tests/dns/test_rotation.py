"""Round robin (`loadbalance: round_robin`, CoreDNS's `loadbalance`): A, AAAA and SRV RRsets of
several records come in a new order per answer, from the slow path and the answer cache alike;
`loadbalance: off` keeps one order. Also: the SRV answer of a small headless Service fits 512
octets once its glue is left out (issue 10).

Pure: the handler is called directly, as the UDP and TCP listeners call it.
"""

from __future__ import annotations

from collections import Counter

import dns.flags
import dns.rdatatype
import pytest
from dnslib import QTYPE

from kdns.config import Config
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.model import EndpointSlice, Service, endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store
from tests.dns.test_wire import ask, make_query, namespace, parse

ZONE = "cluster.local"
ANSWERS = 3000


def headless(
    name: str, ips: list[str], family: str = "IPv4", port: str = "http"
) -> tuple[Service, EndpointSlice]:
    service = service_from_dict(
        {
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"name": port, "port": 80}]},
        }
    )
    endpoints = endpointslice_from_dict(
        {
            "metadata": {
                "name": f"{name}-{family.lower()}",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": family,
            "endpoints": [{"addresses": [ip]} for ip in ips],
            "ports": [{"name": port, "port": 8080, "protocol": "TCP"}],
        }
    )
    return service, endpoints


THREE = ["10.244.1.1", "10.244.2.2", "10.244.3.3"]
SIX = ["fd00::1", "fd00::2"]
FIVE = [f"10.244.1.{20 + i}" for i in range(5)]
BIG = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(500)]


def handler(loadbalance: str = "round_robin") -> Handler:
    store = Store()
    resolver = Resolver(store, Config())
    built = Handler(resolver, loadbalance=loadbalance)
    store.subscribe(lambda change: built.cache.drop(resolver.apply(change)))
    pairs = [
        headless("three", THREE),
        headless("dual", THREE[:2]),
        headless("dual", SIX, family="IPv6"),
        headless("myapp-headless", FIVE),
        headless("big", BIG),
    ]
    store.replace(NAMESPACES, {"default": namespace("default")})
    store.replace(SERVICES, {service.key: service for service, _ in pairs})
    store.replace(ENDPOINTSLICES, {endpoints.key: endpoints for _, endpoints in pairs})
    store.replace(PODS, {})
    return built


def answer_of(response: bytes, rdtype: int) -> list[str]:
    """The records of that type in the answer section, in wire order."""
    return [
        rdata.to_text()
        for rrset in parse(response).answer
        if rrset.rdtype == rdtype
        for rdata in rrset
    ]


def firsts(built: Handler, name: str, qtype: int, rdtype: int, udp: bool = True) -> Counter[str]:
    seen: Counter[str] = Counter()
    for i in range(ANSWERS):
        seen[answer_of(ask(built, make_query(name, qtype, qid=i), udp), rdtype)[0]] += 1
    return seen


@pytest.mark.parametrize("udp", [True, False])
def test_each_of_three_endpoints_comes_first_a_third_of_the_time(udp: bool) -> None:
    built = handler()
    seen = firsts(built, f"three.default.svc.{ZONE}", QTYPE.A, dns.rdatatype.A, udp)
    assert set(seen) == set(THREE)
    for ip in THREE:
        assert 0.30 <= seen[ip] / ANSWERS <= 0.37, seen
    assert built.cache.hits == ANSWERS - 1  # all but the first from the answer cache


def test_rotation_only_reorders() -> None:
    built = handler()
    name = f"three.default.svc.{ZONE}"
    orders = {tuple(answer_of(ask(built, make_query(name)), dns.rdatatype.A)) for _ in range(9)}
    assert len(orders) == 3
    assert {frozenset(order) for order in orders} == {frozenset(THREE)}


def test_loadbalance_off_keeps_one_order() -> None:
    built = handler("off")
    seen = firsts(built, f"three.default.svc.{ZONE}", QTYPE.A, dns.rdatatype.A)
    assert len(seen) == 1


def test_a_and_aaaa_asked_in_turn_both_rotate() -> None:
    # glibc asks A and AAAA together: each entry counts its own turns, so alternating questions
    # do not pin either RRset to one order.
    built = handler()
    name = f"dual.default.svc.{ZONE}"
    v4: Counter[str] = Counter()
    v6: Counter[str] = Counter()
    for i in range(200):
        v4[answer_of(ask(built, make_query(name, QTYPE.A, qid=i)), dns.rdatatype.A)[0]] += 1
        v6[answer_of(ask(built, make_query(name, QTYPE.AAAA, qid=i)), dns.rdatatype.AAAA)[0]] += 1
    assert v4 == Counter(dict.fromkeys(THREE[:2], 100))
    assert v6 == Counter(dict.fromkeys(SIX, 100))


def test_srv_rotates_and_its_glue_stays() -> None:
    built = handler()
    name = f"_http._tcp.myapp-headless.default.svc.{ZONE}"
    seen: Counter[str] = Counter()
    for i in range(50):
        response = ask(built, make_query(name, QTYPE.SRV, qid=i, edns=1232), udp=True)
        srvs = answer_of(response, dns.rdatatype.SRV)
        assert len(srvs) == 5
        seen[srvs[0]] += 1
        glue = {rdata.to_text() for rrset in parse(response).additional for rdata in rrset}
        assert glue == set(FIVE)
    assert len(seen) == 5
    assert set(seen.values()) == {10}


@pytest.mark.parametrize("udp", [True, False])
def test_a_large_rrset_rotates_whole_and_truncated(udp: bool) -> None:
    # 500 records: re-joined per answer (not kept encoded per rotation); over UDP each answer
    # is a different window of whole records.
    built = handler()
    name = f"big.default.svc.{ZONE}"
    seen: Counter[str] = Counter()
    for i in range(20):
        response = ask(built, make_query(name, qid=i), udp)
        records = answer_of(response, dns.rdatatype.A)
        assert set(records) <= set(BIG)
        assert len(records) == len(set(records)) == (29 if udp else 500)
        assert bool(parse(response).flags & dns.flags.TC) == udp
        seen[records[0]] += 1
    assert len(seen) == 20


def test_a_small_headless_srv_answer_fits_without_its_glue() -> None:
    # Issue 10: asked without EDNS, the five SRV records (424 octets with the question) fit in
    # 512; only their glue does not. The answer keeps them and sets no TC (RFC 2181 §9).
    built = handler()
    name = f"_http._tcp.myapp-headless.default.svc.{ZONE}"
    for qid in (1, 2):  # the slow path, then the cache
        response = ask(built, make_query(name, QTYPE.SRV, qid=qid), udp=True)
        message = parse(response)
        assert len(response) <= 512
        assert not message.flags & dns.flags.TC
        assert len(answer_of(response, dns.rdatatype.SRV)) == 5
        assert message.additional == []

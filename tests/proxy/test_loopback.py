"""Loopback VIP allocation and the relay table (pure): determinism, ranges, collisions, stability."""

from __future__ import annotations

import hashlib
import ipaddress
import random

import pytest
from dnslib import QTYPE, RCODE

from kdns.config import Config
from kdns.dns.resolver import Resolver
from kdns.proxy.loopback import (
    VIP_NETWORK,
    LoopbackVips,
    allocate,
    eligible,
    probe,
    relay_routes,
    relay_table,
    render_relay_table,
)
from kdns.store import Change, Store
from tests.builders import model_endpoint, model_service
from tests.dns.cluster import load, rrset, zone
from tests.proxy.builders import NODE

TINY = ipaddress.IPv4Network("127.250.0.0/26")  # 64 addresses: collisions are the rule


def keys(n: int, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"ns{rng.randrange(50)}", f"svc-{i}-{rng.randrange(10**6)}") for i in range(n)]


def attempts(allocation: dict[tuple[str, str], str], network: ipaddress.IPv4Network) -> dict:
    """The probe sequence each key walked to reach its VIP (slots before its own)."""
    slots = network.num_addresses
    base = int(network.network_address)
    walked = {}
    for key, vip in allocation.items():
        slot = int(ipaddress.IPv4Address(vip)) - base
        seq, attempt = [], 0
        while (s := probe(key, attempt, slots)) != slot:
            seq.append(s)
            attempt += 1
        walked[key] = seq
    return walked


def test_first_probe_is_sha256_of_namespace_slash_name() -> None:
    # The spec of the hash, so any two kdns builds agree: sha256("ns/name"), first 8 bytes,
    # big-endian, modulo the usable slots (254 per /24 of 127.64.0.0/10), skipping .0 and .255.
    key = ("default", "redis")
    h = int.from_bytes(hashlib.sha256(b"default/redis").digest()[:8], "big")
    slot = h % (2**22 // 256 * 254)
    expected = ipaddress.IPv4Address(
        int(VIP_NETWORK.network_address) + slot // 254 * 256 + 1 + slot % 254
    )
    assert allocate([key]) == {key: str(expected)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_allocation_depends_on_the_set_only(seed: int) -> None:
    some = keys(300, seed)
    shuffled = some[:]
    random.Random(seed).shuffle(shuffled)
    assert allocate(some) == allocate(shuffled) == allocate(reversed(some)) == allocate(some + some)
    # In a tiny network, where most keys collide, too.
    small = some[:50]
    assert allocate(small, TINY) == allocate(list(reversed(small)), TINY)


def test_ten_thousand_services_get_distinct_vips_in_the_range() -> None:
    allocation = allocate(keys(10_000))
    assert len(allocation) == 10_000
    assert len(set(allocation.values())) == 10_000
    for vip in allocation.values():
        address = ipaddress.IPv4Address(vip)
        assert address in VIP_NETWORK
        assert address not in ipaddress.IPv4Network("127.0.0.0/16")  # 127.0.0.1, .0.53, .1.1
        assert vip.rsplit(".", 1)[1] not in ("0", "255")


@pytest.mark.parametrize(
    ("count", "placed"),
    [(10, 10), (64, 64), (65, 64), (100, 64)],
)
def test_a_full_network_places_the_first_keys_in_sorted_order(count: int, placed: int) -> None:
    some = keys(count, seed=count)
    allocation = allocate(some, TINY)
    assert len(allocation) == placed
    assert len(set(allocation.values())) == placed
    assert set(allocation) == set(sorted(some)[:placed])


def test_collisions_go_to_the_key_that_sorts_first() -> None:
    some = keys(40, seed=7)
    allocation = allocate(some, TINY)
    walked = attempts(allocation, TINY)
    assert any(walked.values()), "the tiny network should force collisions"
    slot_owner = {vip: key for key, vip in allocation.items()}
    base = int(TINY.network_address)
    for key, seq in walked.items():
        for slot in seq:
            # Every slot a key passed over belongs to a key that sorts before it.
            owner = slot_owner[str(ipaddress.IPv4Address(base + slot))]
            assert owner < key


@pytest.mark.parametrize("seed", range(6))
def test_a_newcomer_on_a_free_address_moves_nobody(seed: int) -> None:
    some = keys(40, seed)
    before = allocate(some, TINY)
    taken = set(before.values())
    base = int(TINY.network_address)
    for newcomer in keys(30, seed + 100):
        after = allocate([*some, newcomer], TINY)
        first = str(ipaddress.IPv4Address(base + probe(newcomer, 0, TINY.num_addresses)))
        if first not in taken:
            assert after == {**before, newcomer: first}
        else:
            # It displaced a later key or walked on: every earlier key kept its VIP.
            assert all(after[k] == before[k] for k in before if k < newcomer)


@pytest.mark.parametrize("seed", range(6))
def test_removing_a_service_moves_only_those_that_had_probed_its_address(seed: int) -> None:
    some = keys(40, seed)
    before = allocate(some, TINY)
    walked = attempts(before, TINY)
    base = int(TINY.network_address)
    for leaving in some[:20]:
        after = allocate([k for k in some if k != leaving], TINY)
        freed = int(ipaddress.IPv4Address(before[leaving])) - base
        moved = {k for k in after if after[k] != before[k]}
        if not any(freed in seq for k, seq in walked.items() if k != leaving):
            assert moved == set()
        # A key at its first probe never moves when another leaves.
        assert not {k for k in moved if not walked[k]}


def test_at_scale_few_newcomers_collide() -> None:
    # 10,000 Services: a newcomer's first probe is taken with probability 10,000/4,161,536.
    some = keys(10_000, seed=5)
    before = allocate(some)
    moved_any = 0
    for newcomer in keys(50, seed=6):
        after = allocate([*some, newcomer])
        moved_any += any(after[k] != before[k] for k in before)
    assert moved_any <= 2


def test_the_store_follower_recomputes_only_when_the_key_set_changes() -> None:
    web, db = (
        model_service("default/web", ip="10.96.0.10"),
        model_service("default/db", ip="10.96.0.11"),
    )
    headless = model_service("default/hl", ip=(), headless=True)
    external = model_service("default/ext", ip=(), type="ExternalName", external_name="example.org")
    vips = LoopbackVips()
    services = {s.key: s for s in (web, db, headless, external)}
    assert vips.update(services) == {web.key, db.key}
    assert vips.by_service == allocate([web.key, db.key])
    assert vips.addresses(headless) == ()
    assert vips.addresses(web) == (vips.by_service[web.key],)
    assert vips.by_address[vips.by_service[db.key]] == db.key
    # An endpoint or port change keeps the set of keys: nothing moves, nothing is recomputed.
    services[web.key] = model_service(
        "default/web", ip="10.96.0.10", ports=(("p81", "TCP", 81, None),)
    )
    assert vips.update(services, {web.key}) == set()
    # db turns headless: its VIP goes.
    services[db.key] = model_service("default/db", ip=(), headless=True)
    assert vips.update(services, {db.key}) == {db.key}
    assert vips.address(db.key) is None
    assert not eligible(services[db.key])
    # web is deleted.
    del services[web.key]
    assert vips.update(services, {web.key}) == {web.key}
    assert vips.by_service == {}


P6379 = (("", "TCP", 6379, None),)
E6379 = (("", "TCP", 6379),)


def test_relay_table_and_its_rendering() -> None:
    redis = model_service("default/redis", ip="10.96.0.7", ports=P6379)
    dns = model_service(
        "kube-system/dns",
        ip="10.96.0.10",
        ports=(("dns", "UDP", 53, None), ("dns-tcp", "TCP", 53, None)),
        session_affinity="ClientIP",
        affinity_timeout=30,
    )
    empty = model_service("default/empty", ip="10.96.0.8", ports=P6379)
    services = {s.key: s for s in (redis, dns, empty)}
    endpoints = {
        redis.key: (
            model_endpoint("10.244.2.7", ports=E6379),
            model_endpoint("10.244.1.5", ports=E6379),
        ),
        dns.key: (
            model_endpoint("10.244.0.3", ports=(("dns", "UDP", 53), ("dns-tcp", "TCP", 53))),
        ),
    }
    vips = allocate(services)
    lines = render_relay_table(relay_table(services, endpoints, NODE, vips))
    assert lines == [
        f"default/empty {vips[empty.key]} tcp/6379 -> (no endpoints: reset)",
        f"default/redis {vips[redis.key]} tcp/6379 -> 10.244.1.5:6379, 10.244.2.7:6379",
        f"kube-system/dns:dns {vips[dns.key]} udp/53 -> 10.244.0.3:53 [ClientIP affinity 30s]",
        f"kube-system/dns:dns-tcp {vips[dns.key]} tcp/53 -> 10.244.0.3:53 [ClientIP affinity 30s]",
    ]


def test_relay_routes_take_the_primary_family_and_local_policy() -> None:
    v6_first = model_service("default/v6", ip=("fd00::7", "10.96.0.7"), ports=P6379)
    eps = (model_endpoint("10.244.1.5", ports=E6379), model_endpoint("fd00:244::5", ports=E6379))
    (entry,) = relay_routes(v6_first, eps, NODE, "127.64.0.1")
    assert entry.route.family == 6
    assert [e.address for e in entry.endpoints] == ["[fd00:244::5]:6379"]
    assert entry.listener == ("127.64.0.1", 6379, "TCP")
    local = model_service(
        "default/local", ip="10.96.0.9", ports=P6379, internal_traffic_policy="Local"
    )
    eps = (
        model_endpoint("10.244.1.5", ports=E6379, node=NODE),
        model_endpoint("10.244.2.6", ports=E6379),
    )
    (entry,) = relay_routes(local, eps, NODE, "127.64.0.2")
    assert [e.address for e in entry.endpoints] == ["10.244.1.5:6379"]
    assert relay_routes(local, eps, NODE, None) == ()


# --- the DNS side: answers give the VIP ---------------------------------------------------------


def vip_resolver() -> tuple[Resolver, LoopbackVips]:
    """The examples cluster of tests/dns with the userspace proxy's hook, wired as app.py does."""
    store = Store()
    vips = LoopbackVips()
    resolver = Resolver(store, Config(), service_addresses=vips.addresses)

    def follow(change: Change) -> None:
        moved = vips.update(store.services, change.services)
        resolver.apply(Change(services=change.services | moved))

    store.subscribe(follow)
    load(store)
    return resolver, vips


def answer_text(resolver: Resolver, qname: str, qtype: str) -> tuple[int, set[str]]:
    answer = resolver.resolve(qname, getattr(QTYPE, qtype))
    assert answer is not None
    return answer.rcode, rrset(answer.answer)


def test_cluster_ip_services_answer_their_vip_and_nothing_else_changes() -> None:
    resolver, vips = vip_resolver()
    redis = vips.address(("default", "redis"))
    api = vips.address(("prod", "api"))
    assert redis is not None and api is not None
    Z = "cluster.local"
    table = [
        (f"redis.default.svc.{Z}", "A", f"redis.default.svc.{Z}. 5 IN A {redis}"),
        (f"redis.default.svc.{Z}", "AAAA", ""),
        # Dual-stack: the ClusterIPv6 is unreachable through the relay, so no AAAA at all.
        (f"api.prod.svc.{Z}", "A", f"api.prod.svc.{Z}. 5 IN A {api}"),
        (f"api.prod.svc.{Z}", "AAAA", ""),
        (
            dns_reverse(redis),
            "PTR",
            f"{dns_reverse(redis)}. 5 IN PTR redis.default.svc.{Z}.",
        ),
        # Unchanged: SRV (the VIP listens on the Service's port), headless, ExternalName.
        (
            f"_redis._tcp.redis.default.svc.{Z}",
            "SRV",
            f"_redis._tcp.redis.default.svc.{Z}. 5 IN SRV 0 100 6379 redis.default.svc.{Z}.",
        ),
        (
            f"hl.default.svc.{Z}",
            "A",
            f"hl.default.svc.{Z}. 5 IN A 10.244.1.5\nhl.default.svc.{Z}. 5 IN A 10.244.1.6",
        ),
        (f"ext.default.svc.{Z}", "CNAME", f"ext.default.svc.{Z}. 5 IN CNAME www.example.com."),
    ]
    for qname, qtype, records in table:
        rcode, got = answer_text(resolver, qname, qtype)
        assert (rcode, got) == (RCODE.NOERROR, zone(records)), (qname, qtype)
    # The ClusterIP no longer has a PTR: no answer leads a client to it.
    assert answer_text(resolver, dns_reverse("10.97.97.97"), "PTR")[0] == RCODE.NXDOMAIN


def dns_reverse(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer

"""Forwarded misses sent upstream by the receive thread (kdns/dns/miss_relay.py), over real UDP.

kdns (tests/dns/test_forward.py's stack) with its forwarder running, so the relay runs, against
a scripted responder on 127.0.0.1; the same stack without the forwarder's task answers through
trio only, which gives the bytes the fast path must reproduce.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
import trio
from prometheus_client import REGISTRY

from kdns.config import CacheSection, Config
from kdns.dns.forward import Forwarder
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.dns.server import DnsServer
from kdns.dns.stats import LABELS
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.store import Store
from tests.dns.cluster import load
from tests.dns.test_forward import EXAMPLE, HOST, WAIT, ask, kdns, texts
from tests.dns.upstreams import (
    Responder,
    Zone,
    delayed,
    hostile,
    silent,
    soa,
    truncating,
)


async def raw_exchange(port: int, data: bytes) -> bytes:
    with trio.fail_after(WAIT), trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect((HOST, port))
        await sock.send(data)
        while True:
            reply = await sock.recv(65535)
            if reply[:2] == data[:2]:
                return reply


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (the relay hands its counts to trio in batches, within milliseconds)."""
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.005)


def wire_query(name: str, rdtype: str = "A", cd: bool = False, **kwargs: object) -> bytes:
    message = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    message.id = 0x4B44
    if cd:
        message.flags |= dns.flags.CD
    return message.to_wire()


NO_SOA = Zone(["www.example. 10 IN A 192.0.2.1"])  # negative answers without SOA: not cached
# 40 A records: over 512 bytes, cut for a client without EDNS (whole records, TC set).
MANY = Zone([f"many.example. 10 IN A 192.0.2.{i}" for i in range(1, 41)], soa=soa("example"))

# (zone the upstream answers from, the client's query): every shape a plain query comes in.
SHAPES = {
    "A": (EXAMPLE, wire_query("www.example")),
    "the client's letter case": (EXAMPLE, wire_query("wWw.EXAMPLE")),
    "three records": (EXAMPLE, wire_query("big.example")),
    "EDNS": (EXAMPLE, wire_query("www.example", use_edns=0)),
    "EDNS with DO": (EXAMPLE, wire_query("www.example", want_dnssec=True)),
    "CD": (EXAMPLE, wire_query("www.example", cd=True)),
    "TTL capped at max_ttl": (EXAMPLE, wire_query("long.example")),
    "TTL 0: not cached": (EXAMPLE, wire_query("zero.example")),
    "NODATA with SOA": (EXAMPLE, wire_query("nodata.example")),
    "NXDOMAIN with SOA": (EXAMPLE, wire_query("nowhere.example")),
    "NXDOMAIN without SOA: not cached": (NO_SOA, wire_query("nowhere.example")),
    "NXDOMAIN with EDNS": (EXAMPLE, wire_query("nowhere.example", use_edns=0)),
    "not cached, with CD and EDNS": (EXAMPLE, wire_query("zero.example", cd=True, use_edns=0)),
    "cut for a client without EDNS": (MANY, wire_query("many.example")),
    "whole for a client with EDNS": (MANY, wire_query("many.example", use_edns=0)),
    "cut for EDNS with a 512-byte payload": (MANY, wire_query("many.example", payload=512)),
    "RD clear": (EXAMPLE, (lambda d: d[:2] + b"\x00" + d[3:])(wire_query("www.example"))),
}


async def both_paths(zone: Zone, data: bytes, **config: Any) -> dict[bool, bytes]:
    """The answer to `data` from a fresh kdns with the relay (True) and without (False)."""
    answers = {}
    for fast in (True, False):
        with Responder(zone) as upstream:
            forward_config = ForwardConfig(upstreams=(upstream.upstream,), **config)
            async with kdns(forward_config, health_checks=fast) as stack:
                answers[fast] = await raw_exchange(stack.port, data)
                forwarder = stack.forwarder
                if fast:  # counted by trio once the relay hands its answers over
                    await wait_until(lambda f=forwarder: f.fast_answered == 1)
                answered_fast = forwarder.fast_answered
        assert answered_fast == (1 if fast else 0)
        assert upstream.count() == 1
    return answers


@pytest.mark.parametrize(("zone", "data"), SHAPES.values(), ids=SHAPES.keys())
async def test_a_miss_answered_by_the_relay_has_the_bytes_trio_sends(
    zone: Zone, data: bytes
) -> None:
    answers = await both_paths(zone, data)
    assert answers[True] == answers[False]


@pytest.mark.parametrize("disabled", ["disable_success", "disable_denial"])
@pytest.mark.parametrize("name", ["long.example", "nowhere.example"])
async def test_cache_disable_zones_give_the_same_bytes_on_both_paths(
    disabled: str, name: str
) -> None:
    # CoreDNS's cache `disable success|denial ZONES`: passed on, not cached (TTLs as sent).
    cache = CacheSection(**{disabled: ("example",)})
    answers = await both_paths(EXAMPLE, wire_query(name), cache=cache)
    assert answers[True] == answers[False]


def forward_sample(name: str, upstream: Upstream, rcode: str | None = None) -> float:
    labels = {"to": str(upstream)} if rcode is None else {"to": str(upstream), "rcode": rcode}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_miss_is_answered_by_the_relay_counted_and_cached() -> None:
    with Responder(EXAMPLE) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            requests = forward_sample("kdns_forward_requests_total", upstream.upstream)
            noerror = forward_sample("kdns_forward_responses_total", upstream.upstream, "NOERROR")
            first = await ask(stack.port, "www.example")
            forwarder = stack.forwarder
            await wait_until(lambda: forwarder.cache.stats().success == 1)
            again = await ask(stack.port, "www.example")  # from the cache
            stats = forwarder.cache.stats()
            assert forwarder.fast_answered == 1
            # The miss counted in the answer cache (cluster names) too, as on trio's path; the
            # repeat is a forwarded hit the receive thread answers (its shape was registered).
            assert stack.handler.cache.stats().misses == 1
            assert forward_sample("kdns_forward_requests_total", upstream.upstream) == requests + 1
            assert (
                forward_sample("kdns_forward_responses_total", upstream.upstream, "NOERROR")
                == noerror + 1
            )
    assert texts(first) == texts(again) == {"192.0.2.1"}
    assert upstream.count() == 1
    assert (stats.misses, stats.hits_success) == (1, 1)


async def wait_expired(forwarder: Forwarder) -> None:
    """Until every upstream-cache entry has expired (their TTL is 1 s; trio's clock)."""
    table = forwarder.cache.success.readable
    await wait_until(lambda: all(e.expires <= trio.current_time() for e in table.values()))


SHORT = Zone(["short.example. 1 IN A 192.0.2.7"], soa=soa("example"))


async def test_an_expired_answer_is_refreshed_by_the_relay() -> None:
    # Trio would ask the upstream again too (an expired entry is no answer); the relay asks.
    with Responder(SHORT) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            forwarder = stack.forwarder
            first = await ask(stack.port, "short.example")
            await wait_until(lambda: forwarder.fast_answered == 1)
            await wait_expired(forwarder)
            again = await ask(stack.port, "short.example")
            await wait_until(lambda: forwarder.fast_answered == 2)
            handed_back = forwarder.fast_handed_back
    assert texts(first) == texts(again) == {"192.0.2.7"}
    assert (upstream.count(), handed_back) == (2, 0)


@pytest.mark.parametrize("failure", ["servfail", "silent"])
async def test_a_failed_refresh_by_the_relay_serves_the_stale_answer(failure: str) -> None:
    # RFC 8767 §5: once expired, an upstream failure (SERVFAIL, or no answer) gets the stale
    # answer, and the upstream is asked once for it (the relay's attempt; trio does not
    # ask again).
    zone = Zone(list(SHORT.records), soa=SHORT.soa)
    answered: list[bool] = []

    def behave(request: Any) -> list[Any]:
        if answered:  # after the first answer, the upstream fails
            if failure == "silent":
                return []
            zone.rcode = dns.rcode.SERVFAIL
        answered.append(True)
        return zone(request)

    with Responder(behave) as upstream:
        config = ForwardConfig(
            upstreams=(upstream.upstream,), timeout=0.3, cache=CacheSection(serve_stale=3600.0)
        )
        async with kdns(config, health_checks=True) as stack:
            forwarder = stack.forwarder
            await ask(stack.port, "short.example")
            await wait_until(lambda: forwarder.fast_answered == 1)
            await wait_expired(forwarder)
            stale = await ask(stack.port, "short.example")
            handed_back = forwarder.fast_handed_back
    assert (stale.rcode(), texts(stale)) == (dns.rcode.NOERROR, {"192.0.2.7"})
    assert (upstream.count(), handed_back) == (2, 1)


async def test_a_cluster_name_never_takes_the_relay() -> None:
    with Responder(EXAMPLE) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            nowhere = await ask(stack.port, "nowhere.default.svc.cluster.local")
            fast = stack.forwarder.fast_answered
    assert nowhere.rcode() == dns.rcode.NXDOMAIN
    assert (fast, upstream.count()) == (0, 0)


async def test_identical_misses_in_flight_go_upstream_once() -> None:
    # TTL 0: nothing is cached, so only coalescing keeps the upstream to one query.
    slow = delayed(Zone(["same.example. 0 IN A 192.0.2.5"]), 0.3)
    count = 50
    with Responder(slow) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            replies: list[dns.message.Message] = []

            async def one() -> None:
                replies.append(await ask(stack.port, "same.example"))

            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
            forwarder = stack.forwarder
            (relay,) = forwarder.relays  # the one receive thread's
            await wait_until(lambda: forwarder.fast_answered == count)
            joined, answered = relay.joined, forwarder.fast_answered
    assert len(replies) == count
    assert all(texts(r) == {"192.0.2.5"} for r in replies)
    assert upstream.count() == 1
    assert (joined, answered) == (count - 1, count)


async def test_forged_replies_are_ignored_and_the_genuine_one_answers() -> None:
    with Responder(hostile(EXAMPLE)) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            reply = await ask(stack.port, "www.example")
            health = stack.forwarder.health[upstream.upstream]
            await wait_until(lambda: health.mismatched == 3)  # wrong ID, question, QR clear
            forwarder = stack.forwarder
            await wait_until(lambda: forwarder.fast_answered == 1)
            answered = forwarder.fast_answered
    assert texts(reply) == {"192.0.2.1"}
    assert (answered, upstream.count(), health.errors) == (1, 1, 0)


async def test_an_upstream_that_drops_the_miss_leaves_it_to_trio_and_the_next_upstream() -> None:
    with Responder(silent) as hole, Responder(EXAMPLE) as good:
        config = ForwardConfig(
            upstreams=(hole.upstream, good.upstream), policy="sequential", timeout=0.3
        )
        async with kdns(config, health_checks=True) as stack:
            reply = await ask(stack.port, "www.example")
            forwarder = stack.forwarder
            handed_back, fails = forwarder.fast_handed_back, forwarder.health[hole.upstream].errors
    assert texts(reply) == {"192.0.2.1"}
    # The relay's attempt timed out (one failure, as trio's own would count); trio went on
    # with the next upstream, not the hole again.
    assert handed_back == 1
    assert fails == 1
    assert (hole.count(), good.count()) == (1, 1)


async def test_a_lone_upstream_that_drops_the_miss_gives_servfail() -> None:
    with Responder(silent) as hole:
        config = ForwardConfig(upstreams=(hole.upstream,), timeout=0.3)
        async with kdns(config, health_checks=True) as stack:
            reply = await ask(stack.port, "www.example")
            handed_back = stack.forwarder.fast_handed_back
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert handed_back == 1
    # One attempt, as without the relay: trio does not ask the upstream that timed out again.
    assert hole.count() == 1


async def test_a_truncated_reply_is_asked_again_over_tcp_by_trio() -> None:
    with Responder(truncating(EXAMPLE)) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            reply = await ask(stack.port, "big.example")
            handed_back = stack.forwarder.fast_handed_back
    assert not reply.flags & dns.flags.TC
    assert texts(reply) == {"192.0.2.11", "192.0.2.12", "192.0.2.13"}
    assert handed_back == 1
    # The relay's UDP attempt got TC; trio asked the same upstream over TCP at once: the
    # upstream sees what trio alone sends (one UDP question, then TCP; RFC 7766 §5).
    assert [r.tcp for r in upstream.requests] == [False, True]


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED])
async def test_an_upstream_failure_rcode_is_the_answer_asked_once(rcode: dns.rcode.Rcode) -> None:
    # As on trio's path, the upstream's SERVFAIL or REFUSED is the answer (CoreDNS's forward
    # passes it on): the relay answers it and the upstream is asked once, not once per path.
    failing = Zone([], soa=soa("example"), rcode=rcode)
    answers = await both_paths(failing, wire_query("www.example"))
    assert answers[True] == answers[False]
    assert answers[True][3] & 0xF == rcode


async def test_stop_hands_back_what_is_in_flight_and_closes_every_socket() -> None:
    with (
        Responder(delayed(EXAMPLE, 5.0)) as upstream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            forwarder = stack.forwarder
            for i in range(5):
                client.sendto(wire_query(f"n{i}.example"), (HOST, stack.port))
            await wait_until(lambda: forwarder.in_flight() == 5)  # five exchanges in flight
            (relay,) = forwarder.relays
            assert relay.open_sockets() == 5
    assert relay.closed.is_set()  # its receive thread closed it, after handing them back
    assert relay.open_sockets() == 0 and len(relay) == 0
    assert forwarder.relays == []


async def test_the_query_log_gets_the_answer_the_relay_sent() -> None:
    logged: list[tuple[object, ...]] = []
    with Responder(EXAMPLE) as upstream:
        store = Store()
        resolver = Resolver(store, Config())
        forwarder = Forwarder(ForwardConfig(upstreams=(upstream.upstream,)))
        handler = Handler(resolver, forwarder=forwarder)
        load(store)
        server = DnsServer(handler, HOST, 0, query_log=lambda *line: logged.append(line))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await nursery.start(forwarder.run)
            data = wire_query("www.example")
            answer = await raw_exchange(server.port, data)
            await wait_until(lambda: len(logged) == 1)
            nursery.cancel_scope.cancel()
    (addr, proto, request, response, label, seconds) = logged[0]
    assert addr[0] == HOST
    assert forwarder.fast_answered == 1
    assert (proto, request, response) == ("udp", data, answer)
    assert LABELS.labels[label].zone == "." and LABELS.labels[label].plugin == "forward"
    assert 0 < seconds < WAIT


@pytest.mark.parametrize(
    "options",
    [{"force_tcp": True}, {"policy": "round_robin"}],
    ids=["force_tcp: every exchange over TCP", "round_robin: trio keeps the turn"],
)
async def test_configs_the_relay_does_not_serve_leave_misses_to_trio(
    options: dict[str, Any],
) -> None:
    with Responder(EXAMPLE) as upstream:
        config = ForwardConfig(upstreams=(upstream.upstream,), **options)
        async with kdns(config, health_checks=True) as stack:
            reply = await ask(stack.port, "www.example")
            answered = stack.forwarder.fast_answered
    assert texts(reply) == {"192.0.2.1"}
    assert answered == 0
    assert upstream.count() == 1


async def test_a_forwarder_stopped_while_the_listener_serves_closes_its_relay_at_once() -> None:
    # A reload stops the old forwarder while the listener keeps serving: the receive thread
    # (poked, not waiting for a timeout) hands back what the relay has in flight, which trio
    # then answers itself, and closes every socket of that relay.
    with (
        Responder(delayed(EXAMPLE, 1.0)) as upstream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        store = Store()
        resolver = Resolver(store, Config())
        forwarder = Forwarder(ForwardConfig(upstreams=(upstream.upstream,), timeout=30.0))
        handler = Handler(resolver, forwarder=forwarder)
        load(store)
        server = DnsServer(handler, HOST, 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with trio.open_nursery() as forwarding:
                await forwarding.start(forwarder.run)
                client.sendto(wire_query("www.example"), (HOST, server.port))
                await wait_until(lambda: forwarder.in_flight() == 1)
                (relay,) = forwarder.relays
                forwarding.cancel_scope.cancel()
            await wait_until(relay.closed.is_set)  # well before the 30 s timeout
            sockets, in_flight = relay.open_sockets(), len(relay)
            client.settimeout(WAIT)
            reply = dns.message.from_wire(await trio.to_thread.run_sync(client.recv, 65535))
            nursery.cancel_scope.cancel()
    assert (sockets, in_flight) == (0, 0)
    assert forwarder.fast_handed_back == 1 and forwarder.fast_answered == 0
    assert texts(reply) == {"192.0.2.1"}  # trio's own exchange (the upstream asked again)
    assert upstream.count() == 2


async def test_cluster_names_are_answered_while_a_miss_waits_for_its_upstream() -> None:
    # While an exchange is in flight the receive thread waits on its clients and the replies
    # at once: a cluster name is answered at once, not after the slow upstream's reply.
    # The upstream answers after 1 s, well within the 10 s timeout.
    with (
        Responder(delayed(EXAMPLE, 1.0)) as upstream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        config = ForwardConfig(upstreams=(upstream.upstream,), timeout=10.0)
        async with kdns(config, health_checks=True) as stack:
            forwarder = stack.forwarder
            await ask(stack.port, "redis.default.svc.cluster.local")  # now an answer-cache hit
            client.sendto(wire_query("www.example"), (HOST, stack.port))
            await wait_until(lambda: forwarder.in_flight() == 1)
            answers = [await ask(stack.port, "redis.default.svc.cluster.local") for _ in range(3)]
            still_waiting = forwarder.in_flight()
            client.settimeout(WAIT)
            late = dns.message.from_wire(await trio.to_thread.run_sync(client.recv, 65535))
    assert all(texts(a) == {"10.97.97.97"} for a in answers)
    assert still_waiting == 1  # answered while the miss was still upstream
    assert texts(late) == {"192.0.2.1"}

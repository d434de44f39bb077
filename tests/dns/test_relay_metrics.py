"""The relay's own metrics (kdns/metrics.py `kdns_forward_relay_*`), driven over real UDP.

Each outcome of an exchange the receive thread makes itself (kdns/dns/miss_relay.py) is caused
for real by a scripted upstream on 127.0.0.1 (tests/dns/upstreams.py) — one that answers, never
answers, sets TC, sends a reply that does not parse, a port where nothing listens, a SERVFAIL
while a stale answer waits — or by stopping the forwarder while an exchange is in flight; the
counts are read from the default registry, as /metrics shows them. Trio folds the relay's
records in batches, so each test waits for the count it expects, then checks the rest exactly.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

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
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.dns.upstream_misses import MAX_WAITERS
from kdns.metrics import RELAY_OUTCOMES
from kdns.store import Store
from tests.dns.cluster import load
from tests.dns.test_fast_misses import SHORT, wait_expired, wait_until, wire_query
from tests.dns.test_forward import EXAMPLE, HOST, WAIT, ask, closed_port, kdns, texts
from tests.dns.upstreams import (
    Reply,
    Request,
    Responder,
    Zone,
    delayed,
    response,
    silent,
    soa,
    truncating,
)

EXCHANGES = "kdns_forward_relay_exchanges_total"
HANDED_BACK = "kdns_forward_relay_handed_back_total"
COALESCED = "kdns_forward_relay_coalesced_total"
IN_FLIGHT = "kdns_forward_relay_in_flight"
DECLINED = "kdns_forward_relay_declined_total"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counts:
    """The relay's counters for one upstream, as differences from when it was made."""

    def __init__(self, upstream: Upstream) -> None:
        self.to = str(upstream)
        self.start = self.read()

    def read(self) -> dict[str, float]:
        out = {"coalesced": sample(COALESCED, to=self.to)}
        for outcome in RELAY_OUTCOMES:
            out[outcome] = sample(EXCHANGES, to=self.to, outcome=outcome)
            out[f"handed back: {outcome}"] = sample(HANDED_BACK, to=self.to, outcome=outcome)
        return out

    def changed(self) -> dict[str, float]:
        """Only the counters that moved, and by how much."""
        now = self.read()
        return {k: v - self.start[k] for k, v in now.items() if v != self.start[k]}

    async def wait_for(self, outcome: str, count: int = 1) -> dict[str, float]:
        """Once `outcome` reached `count` exchanges, what changed (one batch carries it all)."""
        await wait_until(lambda: self.changed().get(outcome, 0) >= count)
        return self.changed()


def garbage(request: Request) -> list[Reply]:
    """A reply that matches the question (ID, QR, question: RFC 5452 §9.1) but claims three
    answers and carries none: it does not parse."""
    data = bytearray(response(request))
    data[6:8] = (3).to_bytes(2, "big")  # ANCOUNT
    return [Reply(bytes(data))]


SERVFAIL = Zone([], soa=soa("example"), rcode=dns.rcode.SERVFAIL)

# scenario: (upstream behaviour, or None for a port where nothing listens; the counters that
# move for one plain miss of www.example). Every exchange ends in exactly one outcome; every
# outcome but answered hands its client back to trio.
ONE_MISS = {
    "answered": (EXAMPLE, {"answered": 1}),
    "an upstream SERVFAIL is an answer": (SERVFAIL, {"answered": 1}),
    "no answer: timeout": (silent, {"timeout": 1, "handed back: timeout": 1}),
    "TC: trio asks over TCP": (truncating(EXAMPLE), {"truncated": 1, "handed back: truncated": 1}),
    "a reply that does not parse": (garbage, {"malformed": 1, "handed back: malformed": 1}),
    "port unreachable: network": (None, {"network": 1, "handed back: network": 1}),
}


@pytest.mark.parametrize(("behaviour", "expected"), ONE_MISS.values(), ids=ONE_MISS.keys())
async def test_each_relayed_exchange_ends_in_one_outcome(
    behaviour: Any, expected: dict[str, float]
) -> None:
    outcome = next(k for k in expected if not k.startswith("handed back"))
    with contextlib.ExitStack() as stack_of:
        if behaviour is None:
            upstream = closed_port()
        else:
            upstream = stack_of.enter_context(Responder(behaviour)).upstream
        counts = Counts(upstream)
        config = ForwardConfig(upstreams=(upstream,), timeout=0.3)
        async with kdns(config, health_checks=True) as stack:
            await ask(stack.port, "www.example")
            changed = await counts.wait_for(outcome)
            answered, handed_back = stack.forwarder.fast_answered, stack.forwarder.fast_handed_back
    assert changed == expected
    # The counters agree with the relay's own tallies (tests, the curious).
    assert (answered, handed_back) == (
        expected.get("answered", 0),
        sum(v for k, v in expected.items() if k.startswith("handed back")),
    )


async def test_clients_that_join_an_exchange_in_flight_are_counted_coalesced() -> None:
    slow = delayed(Zone(["same.example. 0 IN A 192.0.2.5"]), 0.3)  # TTL 0: never cached
    count = 20
    with Responder(slow) as upstream:
        counts = Counts(upstream.upstream)
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,)), health_checks=True) as stack:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(ask, stack.port, "same.example")
            changed = await counts.wait_for("answered")
    assert upstream.count() == 1
    assert changed == {"answered": 1, "coalesced": count - 1}


async def test_a_servfail_while_a_stale_answer_waits_is_counted_stale() -> None:
    # RFC 8767 §5: the relay hands the SERVFAIL back and trio serves the stale answer.
    zone = Zone(list(SHORT.records), soa=SHORT.soa)
    asked: list[bool] = []

    def behave(request: Request) -> list[Reply]:
        if asked:
            zone.rcode = dns.rcode.SERVFAIL  # after the first answer, the upstream fails
        asked.append(True)
        return zone(request)

    with Responder(behave) as upstream:
        counts = Counts(upstream.upstream)
        config = ForwardConfig(
            upstreams=(upstream.upstream,), cache=CacheSection(serve_stale=3600.0)
        )
        async with kdns(config, health_checks=True) as stack:
            await ask(stack.port, "short.example")
            await counts.wait_for("answered")
            await wait_expired(stack.forwarder)
            stale = await ask(stack.port, "short.example")
            changed = await counts.wait_for("stale")
    assert texts(stale) == {"192.0.2.7"}
    assert changed == {"answered": 1, "stale": 1, "handed back: stale": 1}


async def test_exchanges_in_flight_are_a_gauge_read_at_scrape_time() -> None:
    with (
        Responder(delayed(EXAMPLE, 1.0)) as upstream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        counts = Counts(upstream.upstream)
        config = ForwardConfig(upstreams=(upstream.upstream,), timeout=10.0)
        async with kdns(config, health_checks=True) as stack:
            for name in ("www.example", "big.example", "long.example"):
                client.sendto(wire_query(name), (HOST, stack.port))
            await wait_until(lambda: sample(IN_FLIGHT) == 3)
            changed = await counts.wait_for("answered", 3)
            await wait_until(lambda: sample(IN_FLIGHT) == 0)
    assert changed == {"answered": 3}


async def test_a_forwarder_stopped_mid_exchange_counts_it_stopped() -> None:
    # A reload stops the old forwarder while the listener serves: what its relay has in flight
    # is handed back (trio answers it), counted as stopped, not as a failure.
    with (
        Responder(delayed(EXAMPLE, 1.0)) as upstream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        counts = Counts(upstream.upstream)
        store = Store()
        forwarder = Forwarder(ForwardConfig(upstreams=(upstream.upstream,), timeout=30.0))
        handler = Handler(Resolver(store, Config()), forwarder=forwarder)
        load(store)
        server = DnsServer(handler, HOST, 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with trio.open_nursery() as forwarding:
                await forwarding.start(forwarder.run)
                client.sendto(wire_query("www.example"), (HOST, server.port))
                await wait_until(lambda: sample(IN_FLIGHT) == 1)
                forwarding.cancel_scope.cancel()
            changed = await counts.wait_for("stopped")
            in_flight = sample(IN_FLIGHT)
            client.settimeout(WAIT)
            reply = dns.message.from_wire(await trio.to_thread.run_sync(client.recv, 65535))
            nursery.cancel_scope.cancel()
    assert changed == {"stopped": 1, "handed back: stopped": 1}
    assert in_flight == 0
    assert texts(reply) == {"192.0.2.1"}  # trio's own exchange


async def test_a_listener_closed_mid_exchange_counts_it_stopped() -> None:
    # The receive thread exits (the listener stops: shutdown, a new listen address) with an
    # exchange in flight: its relays hand it back and close, counted as stopped.
    with (
        Responder(delayed(EXAMPLE, 1.0)) as upstream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        counts = Counts(upstream.upstream)
        store = Store()
        forwarder = Forwarder(ForwardConfig(upstreams=(upstream.upstream,), timeout=30.0))
        handler = Handler(Resolver(store, Config()), forwarder=forwarder)
        load(store)
        server = DnsServer(handler, HOST, 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(forwarder.run)
            async with trio.open_nursery() as listening:
                await listening.start(server.run)
                client.sendto(wire_query("www.example"), (HOST, server.port))
                await wait_until(lambda: sample(IN_FLIGHT) == 1)
                (relay,) = forwarder.relays
                listening.cancel_scope.cancel()
            changed = await counts.wait_for("stopped")
            closed = relay.closed.is_set()
            nursery.cancel_scope.cancel()
    assert changed == {"stopped": 1, "handed back: stopped": 1}
    assert closed


async def test_misses_the_relay_declines_at_its_limit_are_counted() -> None:
    # MAX_WAITERS clients wait on one exchange at a silent upstream; the next client asking the
    # same question is declined (left to trio, which then coalesces the rest in its own
    # exchange). Sent a hundred at a time, each hundred waited on until the relay has them, so
    # no datagram is lost to a full socket buffer.
    with (
        Responder(silent) as upstream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        counts = Counts(upstream.upstream)
        declined_before = sample(DECLINED)
        config = ForwardConfig(upstreams=(upstream.upstream,), timeout=2.0)
        async with kdns(config, health_checks=True) as stack:
            query = bytearray(wire_query("www.example"))
            client.sendto(bytes(query), (HOST, stack.port))
            await wait_until(lambda: len(stack.forwarder.relays) == 1)
            (relay,) = stack.forwarder.relays
            await wait_until(lambda: relay.sent == 1)
            sent = 1
            while sent < MAX_WAITERS + 10:
                for _ in range(min(100, MAX_WAITERS + 10 - sent)):
                    query[0:2] = sent.to_bytes(2, "big")  # a client query of its own
                    client.sendto(bytes(query), (HOST, stack.port))
                    sent += 1
                joined = min(sent, MAX_WAITERS) - 1  # the first sent the exchange
                await wait_until(lambda n=joined: relay.joined == n and relay.sent == 1)
            await wait_until(lambda: relay.declined >= 1)
            changed = await counts.wait_for("timeout")  # the exchange's end: folded by now
            declined = sample(DECLINED) - declined_before
    assert relay.declined >= 1
    assert declined == relay.declined  # each decline counted once, in the exchange's batch
    assert changed == {
        "timeout": 1,
        "handed back: timeout": MAX_WAITERS,
        "coalesced": MAX_WAITERS - 1,
    }

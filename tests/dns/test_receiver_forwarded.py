"""Forwarded answers over real UDP: cache hits from the receive thread, misses from the pool.

kdns (tests/dns/test_forward.py's stack: the listener, its receive thread, the handler and a
forwarder) forwards to a real dnsmasq or to a scripted responder on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import dns.message
import dns.rcode
import trio

from kdns.config import Config, HostsSection
from kdns.dns.forward import Forwarder
from kdns.dns.handler import Handler
from kdns.dns.plugins import Plugins
from kdns.dns.resolver import Resolver
from kdns.dns.server import DnsServer
from kdns.dns.udp_pool import USES
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.store import Store
from tests.dns import upstreams
from tests.dns.test_forward import HOST, WAIT, ask, kdns, texts, ttls, wall_clock_limit
from tests.dns.upstreams import WWW_V4, Reply, Request, Responder, fast_a


def blocking_exchange(port: int, data: bytes, answers: list[bytes]) -> None:
    """A client in a plain thread, so it runs while the trio thread is busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.sendto(data, (HOST, port))
        with contextlib.suppress(TimeoutError):
            answers.append(sock.recv(65535))


async def test_a_forwarded_hit_is_answered_while_the_trio_thread_is_busy(tmp_path: Path) -> None:
    with wall_clock_limit(WAIT), upstreams.dnsmasq(tmp_path / "dnsmasq", ttl=600) as upstream:
        config = ForwardConfig(upstreams=(Upstream(HOST, upstream.port),))
        async with kdns(config) as stack:
            first = await ask(stack.port, "www.test")  # a miss: asked upstream
            await ask(stack.port, "www.test")  # a hit in trio: from now on the thread's
            query = dns.message.make_query("WWW.test", "A")
            query.id = 7
            answers: list[bytes] = []
            client = threading.Thread(
                target=blocking_exchange, args=(stack.port, query.to_wire(), answers)
            )
            client.start()
            # Busy in Python, never yielding to trio, until the answer came (or the bound ran
            # out): only the receive thread can answer meanwhile.
            deadline = time.monotonic() + WAIT
            while not answers and time.monotonic() < deadline:
                sum(range(1000))
            client.join()
            stats = stack.forwarder.cache.stats()
        asked_upstream = upstream.count("www.test")
    assert texts(first) == {WWW_V4}
    assert answers, "no answer while the trio thread was busy"
    answer = dns.message.from_wire(answers[0])
    assert answer.id == 7 and answer.question[0].name.to_text() == "WWW.test."
    assert texts(answer) == {WWW_V4} and 0 < ttls(answer)[0] <= 30  # max_ttl's cap
    assert asked_upstream == 1
    assert stats.hits_success == 2  # trio's hit and the thread's


def without_ttls(message: dns.message.Message) -> tuple[object, ...]:
    sections = tuple(
        tuple((r.name, r.rdtype, tuple(sorted(map(str, r)))) for r in section)
        for section in (message.answer, message.authority, message.additional)
    )
    return (
        message.flags,
        message.rcode(),
        message.edns,
        message.payload,
        message.ednsflags,
        sections,
    )


async def test_the_thread_answers_with_edns_as_the_trio_path_does(tmp_path: Path) -> None:
    with wall_clock_limit(WAIT), upstreams.dnsmasq(tmp_path / "dnsmasq") as upstream:
        config = ForwardConfig(upstreams=(Upstream(HOST, upstream.port),))
        async with kdns(config) as stack:
            answers = [await ask(stack.port, "mail.test", edns=True) for _ in range(4)]
            thread_hits = stack.forwarder.cache.fast.hits()
    # The trio path's answers (miss, first hit) and the thread's are the same message, but for
    # the TTLs, which count down.
    assert len({without_ttls(a) for a in answers}) == 1
    assert all(a.edns == 0 and a.rcode() == dns.rcode.NOERROR for a in answers)
    assert thread_hits == (2, 0)


def test_rewrite_template_or_hosts_keep_the_thread_out_of_forwarded_answers() -> None:
    # Those plugins come before the upstreams (CoreDNS's plugin order) and a hosts file may
    # change under them: with any of them, forwarded hits stay on the trio path, behind them.
    config = Config(hosts=HostsSection(entries=("192.0.2.9 www.test",)))
    plugins = Plugins.from_config(config)
    assert plugins is not None
    resolver = Resolver(Store(), config)
    forwarder = Forwarder(ForwardConfig(upstreams=(Upstream(HOST, 53),)))
    assert Handler(resolver, forwarder=forwarder, plugins=plugins).forwarded is None
    assert Handler(resolver, forwarder=forwarder).forwarded is forwarder.cache.fast


async def test_pool_sockets_change_port_and_every_question_gets_a_fresh_id() -> None:
    # RFC 5452 §9.2: the ID and the source port of each question unpredictable. A pooled socket
    # serves at most USES questions, each with its own random ID; then a new port takes over.
    total = 300
    with wall_clock_limit(WAIT * 3), Responder(fast_a()) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            for i in range(total):
                assert texts(await ask(stack.port, f"n{i}.example")) == {"192.0.2.1"}
            opened = stack.forwarder.pool.opened
    requests = upstream.requests
    assert len(requests) == total
    # Each socket served at most USES questions, and sockets were reused.
    assert -(-total // USES) <= opened < total
    # Their ports changed: one per socket but for the odd port the kernel handed out again
    # after its socket was closed (an ephemeral range of ~28,000 ports).
    per_port = Counter(r.port for r in requests)
    assert len(per_port) >= 0.8 * opened
    for port in per_port:
        ids = [r.qid for r in requests if r.port == port]
        assert len(set(ids)) == len(ids), f"port {port} reused an ID: {ids}"


def delays(seconds: dict[str, float]) -> upstreams.Behaviour:
    """Answers every A question, each name after its delay (0 if not given)."""
    answer = fast_a()

    def behave(request: Request) -> list[Reply]:
        delay = seconds.get(request.qname, 0.0)
        return [Reply(r.data, delay) for r in answer(request)]

    return behave


async def test_a_late_reply_never_reaches_a_later_question() -> None:
    # The socket of a question that timed out is closed, not reused: its late reply (at 1.3 s)
    # finds no socket, though the next question (asked at 1 s, answered at 1.6 s) is waiting.
    behaviour = delays({"slow.example": 1.3, "next.example": 0.6})
    with wall_clock_limit(WAIT), Responder(behaviour) as upstream:
        config = ForwardConfig(upstreams=(upstream.upstream,), timeout=1.0, budget=1.0)
        async with kdns(config) as stack:
            slow = await ask(stack.port, "slow.example")
            after = await ask(stack.port, "next.example")
            mismatched = stack.forwarder.health[upstream.upstream].mismatched
    assert slow.rcode() == dns.rcode.SERVFAIL
    assert texts(after) == {"192.0.2.1"}
    assert mismatched == 0


async def test_the_threads_hits_are_counted_and_logged_as_the_trio_paths(tmp_path: Path) -> None:
    # CoreDNS's metrics for a forwarded cache hit: a response of zone "." by plugin "cache", and
    # a hit of the upstream cache; the query log (CoreDNS's `log`) gets its line from the thread.
    logged: list[tuple[str, bytes]] = []
    with wall_clock_limit(WAIT), upstreams.dnsmasq(tmp_path / "dnsmasq") as upstream:
        forwarder = Forwarder(ForwardConfig(upstreams=(Upstream(HOST, upstream.port),)))
        store = Store()
        handler = Handler(Resolver(store, Config()), forwarder=forwarder)
        server = DnsServer(
            handler,
            HOST,
            0,
            query_log=lambda addr, proto, q, r, label, s: logged.append((proto, r)),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            for _ in range(5):
                assert texts(await ask(server.port, "www.test")) == {WWW_V4}
            thread_hits = forwarder.cache.fast.hits()
            server.stats.fold()
            responses = dict(server.stats.responses)
            stats = forwarder.cache.stats()
            nursery.cancel_scope.cancel()
    assert thread_hits == (3, 0)  # the miss and trio's first hit went through trio
    assert responses[(".", "NOERROR", "cache")] == 4 and responses[(".", "NOERROR", "forward")] == 1
    assert (stats.hits_success, stats.misses) == (4, 1)
    assert len(logged) == 5 and all(proto == "udp" and r[3] & 0xF == 0 for proto, r in logged)

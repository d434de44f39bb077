"""Forwarding, in-process, over real loopback sockets: kdns (store → resolver → handler → UDP/TCP
listener) in front of real upstreams — dnsmasq, and a scriptable responder for the behaviour no
honest server shows (forged replies, TC, silence, delays).

Every upstream is on 127.0.0.1: no test ever lets kdns reach the machine's own resolver. Every
wait is bounded, by trio's clock (`WAIT`) or, under `MockClock` (whose time stands still while
real sockets wait), by the wall clock (`wall_clock_limit`).
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.asyncbackend
import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trio
import trio.testing
from dnslib import RCODE

from kdns import app
from kdns.config import CacheSection, Config, ConfigError, load_kube_dns_configmap
from kdns.dns import forward
from kdns.dns.forward import Forwarder
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.dns.server import DnsServer
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.model import service_from_dict
from kdns.store import SERVICES, Store
from tests.builders import api_service
from tests.dns import upstreams
from tests.dns.cluster import load
from tests.dns.upstreams import (
    MAIL_V4,
    TXT_TEXT,
    WWW_V4,
    WWW_V6,
    Reply,
    Request,
    Responder,
    Zone,
    delayed,
    fast_a,
    hostile,
    silent,
    soa,
    truncating,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
HOST = "127.0.0.1"
WAIT = 10.0  # the bound on any single wait; a passing test never comes close

EXAMPLE = Zone(
    [
        "www.example. 10 IN A 192.0.2.1",
        "big.example. 10 IN A 192.0.2.11",
        "big.example. 10 IN A 192.0.2.12",
        "big.example. 10 IN A 192.0.2.13",
        "long.example. 3600 IN A 192.0.2.2",
        "zero.example. 0 IN A 192.0.2.3",
        'nodata.example. 10 IN TXT "only text here"',
    ],
    soa=soa("example", ttl=20, minimum=10),
)


# --- kdns in-process ----------------------------------------------------------------------------


@dataclass
class Stack:
    port: int
    store: Store
    handler: Handler
    forwarder: Forwarder


@asynccontextmanager
async def kdns(config: ForwardConfig, *, health_checks: bool = False) -> AsyncIterator[Stack]:
    """kdns over tests/dns/cluster.py's services, forwarding with `config`, on 127.0.0.1:0."""
    store = Store()
    resolver = Resolver(store, Config(), reverse_fallthrough=bool(config.upstreams))
    forwarder = Forwarder(config)
    handler = Handler(resolver, forwarder=forwarder)
    store.subscribe(lambda change: handler.cache.drop(resolver.apply(change)))
    load(store)
    server = DnsServer(handler, HOST, 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        if health_checks:
            await nursery.start(forwarder.run)
        yield Stack(server.port, store, handler, forwarder)
        nursery.cancel_scope.cancel()


@dataclass
class RunningApp:
    app: app.App
    port: int

    @property
    def forwarder(self) -> Forwarder:
        assert self.app.forwarder is not None
        return self.app.forwarder


@asynccontextmanager
async def kdns_app(config: Config) -> AsyncIterator[RunningApp]:
    """The whole app as `kdns serve` builds it (config/examples), every port on 127.0.0.1:0."""
    config = config.with_overrides(
        manifests=(str(EXAMPLES),),
        dns_addr=f"{HOST}:0",
        health_addr=f"{HOST}:0",
        ready_addr=f"{HOST}:0",
        metrics_addr=f"{HOST}:0",
    )
    built = app.build(config)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(app.serve, built)
        yield RunningApp(built, ports["dns"])
        nursery.cancel_scope.cancel()


async def ask(
    port: int, name: str, rdtype: str = "A", *, tcp: bool = False, edns: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    return await exchange(port, query, tcp=tcp)


async def exchange(
    port: int, query: dns.message.Message, *, tcp: bool = False
) -> dns.message.Message:
    if tcp:
        backend = dns.asyncbackend.get_backend("trio")
        return await dns.asyncquery.tcp(query, HOST, port=port, timeout=WAIT, backend=backend)
    with trio.fail_after(WAIT), trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect((HOST, port))
        await sock.send(query.to_wire())
        while True:
            reply = dns.message.from_wire(await sock.recv(65535))
            if reply.id == query.id:
                return reply


def texts(message: dns.message.Message, rdtype: str | None = None) -> set[str]:
    wanted = dns.rdatatype.from_text(rdtype) if rdtype else None
    return {
        rdata.to_text()
        for rrset in message.answer
        if wanted is None or rrset.rdtype == wanted
        for rdata in rrset
    }


def ttls(message: dns.message.Message) -> list[int]:
    return [rrset.ttl for rrset in (*message.answer, *message.authority)]


@contextlib.contextmanager
def wall_clock_limit(seconds: float) -> Iterator[None]:
    """`trio.fail_after` by the wall clock, for MockClock tests: their trio time stands still
    (`autojump_threshold=inf`) while kdns waits on real sockets, so only this can bound them."""
    scope = trio.CancelScope()
    token = trio.lowlevel.current_trio_token()
    done = threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with scope:
            yield
    finally:
        done.set()
        watcher.join()
    if scope.cancelled_caught:
        pytest.fail(f"did not finish within {seconds} s of real time")


class InOrder:
    """Stands in for `random` in kdns.dns.forward: upstreams are tried in the order given."""

    @staticmethod
    def shuffle(items: list[object]) -> None:
        pass


@pytest.fixture
def in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "random", InOrder)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[upstreams.Dnsmasq]:
    with upstreams.dnsmasq(tmp_path / "dnsmasq") as server:
        yield server


def closed_port() -> Upstream:
    """An address where nothing listens: UDP to it gets ICMP port unreachable."""
    return Upstream(HOST, upstreams.free_port())


# --- answers through a real upstream ------------------------------------------------------------


async def test_forwarded_types_through_dnsmasq(dnsmasq: upstreams.Dnsmasq) -> None:
    async with kdns(ForwardConfig(upstreams=(dnsmasq.upstream,))) as stack:
        a = await ask(stack.port, "www.test", "A")
        aaaa = await ask(stack.port, "www.test", "AAAA")
        mx = await ask(stack.port, "test", "MX")
        txt = await ask(stack.port, "txt.test", "TXT")
        mail = await ask(stack.port, "MAIL.Test", "A", tcp=True)
        # 192.0.2.10 is no Service's address: kdns's reverse zone falls through to the upstream
        # (CoreDNS `fallthrough in-addr.arpa ip6.arpa`).
        ptr = await ask(stack.port, "10.2.0.192.in-addr.arpa", "PTR")
        nx = await ask(stack.port, "nope.test", "A", edns=True)
        # A ClusterIP's PTR is kdns's own answer: it never goes upstream.
        cluster_ptr = await ask(stack.port, "20.0.96.10.in-addr.arpa", "PTR")
    assert (a.rcode(), texts(a)) == (dns.rcode.NOERROR, {WWW_V4})
    assert texts(aaaa) == {WWW_V6}
    assert texts(mx) == {"10 mail.test."}
    assert texts(txt) == {f'"{TXT_TEXT}"'}
    assert texts(mail) == {MAIL_V4}
    assert mail.question[0].name.to_text() == "MAIL.Test."  # the client's spelling comes back
    assert texts(ptr) == {"www.test."}
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert [r.rdtype for r in nx.authority] == [dns.rdatatype.SOA]
    assert nx.edns == 0  # our OPT, for a client that sent one
    assert texts(cluster_ptr) == {"web.default.svc.cluster.local."}
    assert dnsmasq.queries() == [
        ("A", "www.test"),
        ("AAAA", "www.test"),
        ("MX", "test"),
        ("TXT", "txt.test"),
        ("A", "mail.test"),
        ("PTR", "10.2.0.192.in-addr.arpa"),
        ("A", "nope.test"),
    ]


async def test_cluster_names_are_never_forwarded(dnsmasq: upstreams.Dnsmasq) -> None:
    async with kdns(ForwardConfig(upstreams=(dnsmasq.upstream,))) as stack:
        known = await ask(stack.port, "web.default.svc.cluster.local")
        unknown = await ask(stack.port, "nope.default.svc.cluster.local")
    assert texts(known) == {"10.96.0.20"}
    assert unknown.rcode() == dns.rcode.NXDOMAIN
    assert known.flags & dns.flags.RA  # a server that forwards offers recursion
    assert dnsmasq.count() == 0


async def test_stub_domain_questions_reach_only_the_stub_servers(tmp_path: Path) -> None:
    with (
        upstreams.dnsmasq(tmp_path / "default") as default,
        upstreams.dnsmasq(tmp_path / "stub") as stub,
    ):
        config = Config().with_overrides(
            upstreams=(default.address,),
            stub_domains=(("Acme.Local.", (stub.address,)),),
        )
        async with kdns_app(config) as running:
            port = running.port
            acme = await ask(port, "www.acme.local")
            other = await ask(port, "www.test")
            apex = await ask(port, "acme.local", "SOA")
        assert texts(acme) == {upstreams.ACME_V4}
        assert texts(other) == {WWW_V4}
        assert apex.rcode() == dns.rcode.NOERROR
        assert stub.queries() == [("A", "www.acme.local"), ("SOA", "acme.local")]
        assert default.queries() == [("A", "www.test")]


def test_stub_domains_longest_suffix_wins_on_label_boundaries() -> None:
    a, b, c = Upstream(HOST, 1001), Upstream(HOST, 1002), Upstream(HOST, 1003)
    forwarder = Forwarder(
        ForwardConfig(upstreams=(c,), stub_domains=(("local", (a,)), ("acme.local", (b,))))
    )
    assert forwarder.upstreams_for("www.acme.local") == (b,)
    assert forwarder.upstreams_for("acme.local") == (b,)
    assert forwarder.upstreams_for("notacme.local") == (a,)
    assert forwarder.upstreams_for("x.local") == (a,)
    assert forwarder.upstreams_for("example.com") == (c,)


# --- failing upstreams --------------------------------------------------------------------------


async def test_failover_from_a_closed_port_is_immediate(
    dnsmasq: upstreams.Dnsmasq, in_order: None
) -> None:
    dead = closed_port()
    # ICMP port unreachable ends the attempt at once: with a 60 s timeout, an answer within
    # `ask`'s bound (WAIT) shows the attempt did not wait for it.
    config = ForwardConfig(upstreams=(dead, dnsmasq.upstream), timeout=60.0, budget=120.0)
    async with kdns(config) as stack:
        reply = await ask(stack.port, "www.test")
        health = stack.forwarder.health
    assert texts(reply) == {WWW_V4}
    assert (health[dead].exchanges, health[dead].errors) == (1, 1)
    assert health[dnsmasq.upstream].errors == 0


async def test_failover_from_a_black_hole_after_the_timeout(
    dnsmasq: upstreams.Dnsmasq, in_order: None
) -> None:
    timeout = 0.4
    with Responder(silent) as hole:
        config = ForwardConfig(upstreams=(hole.upstream, dnsmasq.upstream), timeout=timeout)
        async with kdns(config) as stack:
            elapsed = []
            for name in ("www.test", "mail.test", "txt.test"):
                start = trio.current_time()
                reply = await ask(stack.port, name, "TXT" if name == "txt.test" else "A")
                elapsed.append(trio.current_time() - start)
                assert reply.rcode() == dns.rcode.NOERROR and reply.answer
            health = stack.forwarder.health[hole.upstream]
        # The first two questions wait out the timeout, then the black hole has failed
        # max_fails (2) times in a row and is tried last: the third goes straight to dnsmasq
        # (the hole is asked twice, not three times).
        assert [timeout <= e for e in elapsed[:2]] == [True, True]
        assert (hole.count(), health.errors, health.fails) == (2, 2, 2)
        assert not stack.forwarder.healthy(hole.upstream)


async def test_max_fails_0_never_marks_an_upstream_down(in_order: None) -> None:
    with Responder(EXAMPLE) as backup:
        dead = closed_port()
        config = ForwardConfig(upstreams=(dead, backup.upstream), max_fails=0)
        async with kdns(config) as stack:
            for name in ("www.example", "big.example", "long.example"):
                assert (await ask(stack.port, name)).rcode() == dns.rcode.NOERROR
            health = stack.forwarder.health[dead]
            # CoreDNS: "max_fails 0" means the upstream is never down, so never tried last:
            # each question goes to it first, and fails over.
            assert (health.errors, health.fails) == (3, 3)
            assert stack.forwarder.healthy(dead)
        assert backup.count() == 3


class Reversed:
    """Stands in for `random` in kdns.dns.forward: a "shuffle" that reverses the list."""

    @staticmethod
    def shuffle(items: list[object]) -> None:
        items.reverse()


async def test_every_upstream_down_picks_one_at_random(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "random", Reversed)
    first, second = closed_port(), closed_port()
    config = ForwardConfig(upstreams=(first, second), max_fails=1, policy="sequential")
    async with kdns(config) as stack:
        assert (await ask(stack.port, "www.example")).rcode() == dns.rcode.SERVFAIL
        assert not stack.forwarder.healthy(first) and not stack.forwarder.healthy(second)
        # Both down: CoreDNS takes the health checks to be broken and picks an upstream at
        # random (here: the "shuffle" reverses), instead of the policy's order.
        with Responder(EXAMPLE, port=second.port) as revived:
            reply = await ask(stack.port, "big.example")
        assert reply.rcode() == dns.rcode.NOERROR
        assert stack.forwarder.health[first].errors == 1  # not asked the second time
        assert revived.count("big.example") == 1


async def test_every_upstream_down_is_servfail_after_timeout_times_upstreams() -> None:
    timeout = 0.3
    with Responder(silent) as one, Responder(silent) as two:
        config = ForwardConfig(upstreams=(one.upstream, two.upstream), timeout=timeout)
        async with kdns(config) as stack:
            start = trio.current_time()
            reply = await ask(stack.port, "www.example")
            elapsed = trio.current_time() - start
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert 2 * timeout <= elapsed  # each waited out in turn
        assert (one.count(), two.count()) == (1, 1)


async def test_the_budget_bounds_the_whole_question() -> None:
    with Responder(silent) as one, Responder(silent) as two, Responder(silent) as three:
        config = ForwardConfig(
            upstreams=(one.upstream, two.upstream, three.upstream), timeout=0.4, budget=0.6
        )
        async with kdns(config) as stack:
            start = trio.current_time()
            reply = await ask(stack.port, "www.example")
            elapsed = trio.current_time() - start
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert elapsed >= 0.6
        # The budget, not 3 × 0.4: the third upstream is never asked.
        assert one.count() + two.count() + three.count() == 2


async def test_closed_ports_everywhere_is_servfail_at_once() -> None:
    # With a 60 s timeout, a SERVFAIL within `ask`'s bound (WAIT) shows neither attempt
    # waited for it.
    config = ForwardConfig(upstreams=(closed_port(), closed_port()), timeout=60.0, budget=120.0)
    async with kdns(config) as stack:
        reply = await ask(stack.port, "www.example")
    assert reply.rcode() == dns.rcode.SERVFAIL


async def test_health_probe_brings_an_upstream_back(in_order: None) -> None:
    with Responder(EXAMPLE) as backup:
        dead = closed_port()
        config = ForwardConfig(upstreams=(dead, backup.upstream), health_check=0.05)
        async with kdns(config, health_checks=True) as stack:
            for name in ("www.example", "big.example"):
                assert (await ask(stack.port, name)).rcode() == dns.rcode.NOERROR
            assert not stack.forwarder.healthy(dead)
            # Something answers on the dead port now: the `. IN NS` probe notices.
            with Responder(EXAMPLE, port=dead.port) as revived:
                with trio.fail_after(WAIT):
                    while not stack.forwarder.healthy(dead):
                        await trio.sleep(0.02)
                probes = [(r.qname, r.qtype) for r in revived.requests]
                reply = await ask(stack.port, "long.example")
            assert texts(reply) == {"192.0.2.2"}
        assert probes and set(probes) == {("", 2)}  # `. IN NS`
        assert revived.count("long.example") == 1  # healthy again: tried first


# --- replies that must not be believed ----------------------------------------------------------


async def test_forged_replies_are_ignored_and_the_genuine_one_wins() -> None:
    with Responder(hostile(EXAMPLE)) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            reply = await ask(stack.port, "www.example")
            health = stack.forwarder.health[upstream.upstream]
    assert texts(reply) == {"192.0.2.1"}
    assert reply.question[0].name.to_text() == "www.example."
    assert health.mismatched == 3  # wrong ID, wrong question, QR clear
    assert (upstream.count(), health.errors) == (1, 0)


async def test_a_reply_from_another_port_never_reaches_the_exchange() -> None:
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind((HOST, 0))

    def spoof_then_answer(request: Request) -> list[Reply]:
        # A perfect forgery (right ID, right question) from the wrong source port, first.
        forged = upstreams.response(request, [f"{request.qname}. 3600 IN A 198.51.100.66"])
        spoofer.sendto(forged, (HOST, request.port))
        return [Reply(EXAMPLE.reply(request), 0.05)]

    with spoofer, Responder(spoof_then_answer) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            reply = await ask(stack.port, "www.example")
            health = stack.forwarder.health[upstream.upstream]
    assert texts(reply) == {"192.0.2.1"}
    assert health.mismatched == 0  # the connected socket's kernel filter dropped it


async def test_truncated_udp_answer_is_asked_again_over_tcp() -> None:
    with Responder(truncating(EXAMPLE)) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            reply = await ask(stack.port, "big.example")
    assert not reply.flags & dns.flags.TC
    assert texts(reply) == {"192.0.2.11", "192.0.2.12", "192.0.2.13"}
    udp, tcp = upstream.requests
    assert (udp.tcp, tcp.tcp) == (False, True)
    assert udp.qid != tcp.qid  # a fresh ID for the new attempt


async def test_do_and_cd_reach_the_upstream_and_keep_their_own_cache_entry() -> None:
    with Responder(EXAMPLE) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            plain = await ask(stack.port, "www.example")
            dnssec = dns.message.make_query("www.example", "A", want_dnssec=True)
            dnssec.flags |= dns.flags.CD
            checking_disabled = await exchange(stack.port, dnssec)
            again = await ask(stack.port, "www.example")  # the plain entry, from the cache
    assert plain.edns == -1  # the upstream's OPT is not passed on to a client without EDNS
    assert checking_disabled.ednsflags & dns.flags.DO
    assert checking_disabled.flags & dns.flags.CD
    assert texts(again) == {"192.0.2.1"}
    first, second = (r.record for r in upstream.requests)
    # kdns always speaks EDNS upstream; DO and CD are the client's.
    assert [(rr.ttl & 0x8000) for rr in first.ar if rr.rtype == 41] == [0]
    assert [(rr.ttl & 0x8000) for rr in second.ar if rr.rtype == 41] == [0x8000]
    assert (first.header.cd, second.header.cd) == (0, 1)


# --- many questions ----------------------------------------------------------------------------


async def test_500_identical_questions_go_upstream_once() -> None:
    # TTL 0: nothing is cached, so only coalescing can keep the upstream to one query.
    slow = delayed(Zone(["same.example. 0 IN A 192.0.2.5"]), 0.3)
    count = 500
    with Responder(slow) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            client.bind((HOST, 0))
            with trio.socket.from_stdlib_socket(client) as sock:
                await sock.connect((HOST, stack.port))
                for qid in range(count):
                    query = dns.message.make_query("same.example", "A")
                    query.id = qid
                    client.send(query.to_wire())  # back to back, without yielding to kdns
                replies: dict[int, dns.message.Message] = {}
                with trio.fail_after(WAIT):
                    while len(replies) < count:
                        reply = dns.message.from_wire(await sock.recv(65535))
                        replies[reply.id] = reply
            coalesced = stack.forwarder.coalesced
    assert sorted(replies) == list(range(count))
    assert all(texts(r) == {"192.0.2.5"} for r in replies.values())
    assert upstream.count() == 1
    assert coalesced == count - 1


def chi_square(observed: list[int]) -> float:
    expected = sum(observed) / len(observed)
    return sum((o - expected) ** 2 / expected for o in observed)


CHI2_15_DF_ALPHA_0001 = 37.697  # the chi-square critical value for 15 degrees of freedom


def raw_query(qid: int, name: str) -> bytes:
    """A query as bytes: dnspython costs more per message than kdns does, at 10k messages."""
    labels = b"".join(bytes((len(x),)) + x.encode() for x in name.split("."))
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


async def test_10k_forwarded_questions_use_random_ids_and_ports() -> None:
    total, workers = 10_000, 100
    answered = Counter[str]()
    expected_rdata = socket.inet_aton("192.0.2.1")
    with Responder(fast_a("192.0.2.1")) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:

            async def worker(first: int) -> None:
                with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    await sock.connect((HOST, stack.port))
                    for i in range(first, total, workers):
                        qid = i & 0xFFFF
                        await sock.send(raw_query(qid, f"n{i}.example"))
                        while True:
                            reply = await sock.recv(65535)
                            if reply[:2] == qid.to_bytes(2):
                                break
                        rcode = dns.rcode.to_text(reply[3] & 0xF)
                        answered[rcode if reply.endswith(expected_rdata) else "wrong"] += 1

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for first in range(workers):
                        nursery.start_soon(worker, first)
    assert answered == {"NOERROR": total}
    requests = upstream.requests
    assert len(requests) == total  # distinct names: no coalescing, no cache
    ids = [r.qid for r in requests]
    buckets = Counter(qid >> 12 for qid in ids)
    observed = [buckets[b] for b in range(16)]
    assert chi_square(observed) < CHI2_15_DF_ALPHA_0001, observed
    # 10k IDs over 65536 values: a value drawn 7 times has odds of about 2e-5.
    assert max(Counter(ids).values()) <= 6
    ports = {r.port for r in requests}
    assert len(ports) > 1000, f"only {len(ports)} distinct source ports"


# --- the upstream cache (trio's MockClock: time moves only when the test jumps it) ---------------


async def test_cache_hit_countdown_and_expiry(mock_clock: trio.testing.MockClock) -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            first = await ask(stack.port, "www.example")
            again = await ask(stack.port, "WWW.example")  # same question, other spelling
            mock_clock.jump(4)
            later = await ask(stack.port, "www.example")
            mock_clock.jump(6)  # 10 s: the record's TTL is over
            expired = await ask(stack.port, "www.example")
            hits = stack.forwarder.cache.stats().hits_success  # trio's and the thread's
    assert [texts(m) for m in (first, again, later, expired)] == [{"192.0.2.1"}] * 4
    assert again.question[0].name.to_text() == "WWW.example."
    assert [ttls(m) for m in (first, again, later, expired)] == [[10], [10], [6], [10]]
    assert upstream.count() == 2
    assert hits >= 2


async def test_ttl_is_capped_at_30_seconds(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    with (
        wall_clock_limit(WAIT),
        upstreams.dnsmasq(tmp_path / "dnsmasq", ttl=3600) as upstream,
    ):
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            first = await ask(stack.port, "www.test")
            nx = await ask(stack.port, "nope.test")
            mock_clock.jump(29)
            cached = await ask(stack.port, "www.test")
            cached_nx = await ask(stack.port, "nope.test")
            mock_clock.jump(1)
            expired = await ask(stack.port, "www.test")
            expired_nx = await ask(stack.port, "nope.test")
        # dnsmasq says 3600 for the records and for the SOA's TTL and MINIMUM.
        assert set(ttls(first)) == {30} and set(ttls(nx)) == {30}
        assert set(ttls(cached)) == {1} and set(ttls(cached_nx)) == {1}
        assert set(ttls(expired)) == {30} and expired_nx.rcode() == dns.rcode.NXDOMAIN
        assert upstream.count("www.test") == 2
        assert upstream.count("nope.test") == 2


async def test_negative_answers_are_cached_for_the_soa_minimum(
    mock_clock: trio.testing.MockClock,
) -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            nx = await ask(stack.port, "missing.example")
            nodata = await ask(stack.port, "nodata.example", "A")
            mock_clock.jump(9)
            nx_cached = await ask(stack.port, "missing.example")
            nodata_cached = await ask(stack.port, "nodata.example", "A")
            assert upstream.count() == 2
            mock_clock.jump(1)  # min(SOA TTL 20, MINIMUM 10) = 10 s (RFC 2308 §5)
            nx_again = await ask(stack.port, "missing.example")
    assert [m.rcode() for m in (nx, nx_cached, nx_again)] == [dns.rcode.NXDOMAIN] * 3
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])
    assert (nodata_cached.rcode(), nodata_cached.answer) == (dns.rcode.NOERROR, [])
    assert ttls(nx) == [10] and ttls(nx_cached) == [1] and ttls(nodata_cached) == [1]
    assert upstream.count("missing.example") == 2
    assert upstream.count("nodata.example") == 1


async def test_negative_answer_without_soa_is_not_cached(
    mock_clock: trio.testing.MockClock,
) -> None:
    with wall_clock_limit(WAIT), Responder(Zone([])) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            replies = [await ask(stack.port, "missing.example") for _ in range(2)]
    assert [r.rcode() for r in replies] == [dns.rcode.NXDOMAIN] * 2
    assert upstream.count() == 2  # RFC 2308 §5: no SOA, no negative caching


async def test_servfail_is_cached_briefly(mock_clock: trio.testing.MockClock) -> None:
    with wall_clock_limit(WAIT), Responder(Zone([], rcode=RCODE.SERVFAIL)) as upstream:
        config = ForwardConfig(upstreams=(upstream.upstream,), servfail_ttl=5)
        async with kdns(config) as stack:
            first = await ask(stack.port, "broken.example")
            mock_clock.jump(4)
            cached = await ask(stack.port, "broken.example")
            assert upstream.count() == 1
            mock_clock.jump(1)
            await ask(stack.port, "broken.example")
    assert first.rcode() == cached.rcode() == dns.rcode.SERVFAIL
    assert upstream.count() == 2


async def test_zero_ttl_answers_are_not_cached(mock_clock: trio.testing.MockClock) -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            for _ in range(3):
                assert texts(await ask(stack.port, "zero.example")) == {"192.0.2.3"}
    assert upstream.count() == 3


@pytest.mark.parametrize(
    ("serve_stale", "after", "expected"),
    [
        pytest.param(3600.0, 11, "stale", id="stale-allowed"),
        pytest.param(0.0, 11, "servfail", id="stale-off"),
        pytest.param(60.0, 71, "servfail", id="past-the-stale-window"),
    ],
)
async def test_serve_stale_when_the_upstream_is_gone(
    mock_clock: trio.testing.MockClock, serve_stale: float, after: float, expected: str
) -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:
        config = ForwardConfig(
            upstreams=(upstream.upstream,), cache=CacheSection(serve_stale=serve_stale)
        )
        async with kdns(config) as stack:
            fresh = await ask(stack.port, "www.example")
            mock_clock.jump(after)  # past the TTL (10 s)
            upstream.stop()  # nothing listens any more: port unreachable
            reply = await ask(stack.port, "www.example")
    assert ttls(fresh) == [10]
    if expected == "stale":
        # RFC 8767 §4: a stale answer carries a TTL of 30 s.
        assert (reply.rcode(), texts(reply), ttls(reply)) == (
            dns.rcode.NOERROR,
            {"192.0.2.1"},
            [30],
        )
    else:
        assert (reply.rcode(), reply.answer) == (dns.rcode.SERVFAIL, [])


async def test_a_cluster_name_is_never_answered_from_the_upstream_cache() -> None:
    # Everything the upstream is asked, it denies, with an SOA: cacheable for 30 s.
    denier = Zone([], soa=soa("arpa", ttl=300, minimum=300))
    with Responder(denier) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            ptr_name = "77.77.96.10.in-addr.arpa"
            before = await ask(stack.port, ptr_name, "PTR")  # no Service: goes upstream
            cached = await ask(stack.port, ptr_name, "PTR")  # the upstream's NXDOMAIN, cached
            a_before = await ask(stack.port, "late.default.svc.cluster.local")
            stack.store.upsert(
                SERVICES,
                service_from_dict(
                    api_service("default", "late", clusterIP="10.96.77.77", ports=[{"port": 80}])
                ),
            )
            after = await ask(stack.port, ptr_name, "PTR")
            a_after = await ask(stack.port, "late.default.svc.cluster.local")
    assert before.rcode() == cached.rcode() == dns.rcode.NXDOMAIN
    assert a_before.rcode() == dns.rcode.NXDOMAIN
    assert texts(after) == {"late.default.svc.cluster.local."}
    assert texts(a_after) == {"10.96.77.77"}
    assert upstream.count(ptr_name) == 1  # asked once: the second came from the cache
    assert upstream.count("late.default.svc.cluster.local") == 0


# --- max_concurrent -----------------------------------------------------------------------------


async def test_beyond_max_concurrent_questions_are_refused_at_once() -> None:
    delay = 3.0
    with Responder(delayed(EXAMPLE, delay)) as upstream:
        config = Config().with_overrides(
            upstreams=(upstream.address,), max_concurrent=5, forward_timeout=10.0
        )
        async with kdns_app(config) as running:
            port = running.port
            results: dict[int, tuple[int, float]] = {}
            start = trio.current_time()

            async def one(i: int) -> None:
                reply = await ask(port, f"q{i}.example")
                results[i] = (reply.rcode(), trio.current_time() - start)

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
                    await trio.sleep(0.005)  # the first five are surely in flight first
            refused_count = running.forwarder.refused
    refused = [t for rcode, t in results.values() if rcode == dns.rcode.REFUSED]
    answered = [t for rcode, t in results.values() if rcode == dns.rcode.NXDOMAIN]
    assert (len(refused), len(answered), refused_count) == (15, 5, 15)
    # At once, not after waiting for a slot: every refusal comes before the first answer.
    assert max(refused) < min(answered)
    assert min(answered) >= delay
    assert upstream.count() == 5


# --- kube-dns's ConfigMap ----------------------------------------------------------------------

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-dns
  namespace: kube-system
data:
  stubDomains: |
    {"acme.local": ["{stub}"]}
  upstreamNameservers: |
    ["{upstream}"]
"""


def write_configmap(path: Path, stub: str, upstream: str) -> Path:
    path.write_text(CONFIGMAP.replace("{stub}", stub).replace("{upstream}", upstream))
    return path


def test_kube_dns_configmap_is_read(tmp_path: Path) -> None:
    path = write_configmap(tmp_path / "kube-dns.yaml", "127.0.0.1:5301", "127.0.0.1:5302")
    stubs, upstream_list = load_kube_dns_configmap(str(path))
    assert stubs == (("acme.local", ("127.0.0.1:5301",)),)
    assert upstream_list == ("127.0.0.1:5302",)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ('  stubDomains: \'{"acme.local": ["1.2.3.4"],}\'\n', "data.stubDomains"),
        ("  stubDomains: '[\"1.2.3.4\"]'\n", "data.stubDomains"),
        ("  upstreamNameservers: '[\"1.2.3.4\"'\n", "data.upstreamNameservers"),
        ("  upstreamNameservers: '{\"a\": 1}'\n", "data.upstreamNameservers"),
    ],
    ids=["stub-bad-json", "stub-not-a-map", "upstream-bad-json", "upstream-not-a-list"],
)
def test_bad_kube_dns_configmap_names_the_field(tmp_path: Path, data: str, field: str) -> None:
    path = tmp_path / "kube-dns.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\ndata:\n" + data)
    with pytest.raises(ConfigError) as error:
        load_kube_dns_configmap(str(path))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: ")
    with pytest.raises(app.StartupError) as startup:
        app.build(
            Config().with_overrides(
                manifests=(str(EXAMPLES),), dns_addr=f"{HOST}:0", kube_dns_configmap=str(path)
            )
        )
    assert startup.value.lines == [message]


async def test_kube_dns_configmap_routes_stub_and_upstream(tmp_path: Path) -> None:
    with (
        upstreams.dnsmasq(tmp_path / "default") as default,
        upstreams.dnsmasq(tmp_path / "stub") as stub,
    ):
        path = write_configmap(tmp_path / "kube-dns.yaml", stub.address, default.address)
        async with kdns_app(Config().with_overrides(kube_dns_configmap=str(path))) as running:
            port = running.port
            acme = await ask(port, "www.acme.local")
            other = await ask(port, "www.test")
        assert (texts(acme), texts(other)) == ({upstreams.ACME_V4}, {WWW_V4})
        assert stub.queries() == [("A", "www.acme.local")]
        assert default.queries() == [("A", "www.test")]


# --- loops --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "dns_addr", "words"),
    [
        pytest.param(Upstream("127.0.0.53"), "0.0.0.0:53", "systemd-resolved", id="resolved"),
        pytest.param(
            Upstream("127.0.0.54"), "127.0.0.1:5353", "systemd-resolved", id="resolved-54"
        ),
        pytest.param(Upstream(HOST, 5353), "127.0.0.1:5353", "kdns itself", id="same-address"),
        pytest.param(Upstream(HOST, 5353), "0.0.0.0:5353", "kdns itself", id="v4-wildcard"),
        pytest.param(
            Upstream("127.0.0.2", 5353), "0.0.0.0:5353", "kdns itself", id="v4-wildcard-lo2"
        ),
        pytest.param(Upstream("::1", 5353), "[::]:5353", "kdns itself", id="v6-wildcard"),
        pytest.param(Upstream("::1", 5353), "[::1]:5353", "kdns itself", id="v6-same"),
        # Other spellings of kdns's own address are still kdns's own address.
        pytest.param(
            Upstream("0:0:0:0:0:0:0:1", 5353), "[::1]:5353", "kdns itself", id="v6-long-form"
        ),
        # `[::]` is bound dual-stack (IPV6_V6ONLY off): ::ffff:127.0.0.1 reaches kdns too.
        pytest.param(
            Upstream("::ffff:127.0.0.1", 5353), "[::]:5353", "kdns itself", id="v4-mapped"
        ),
    ],
)
def test_loop_problem_names_the_loop(upstream: Upstream, dns_addr: str, words: str) -> None:
    problem = app.loop_problem(upstream, dns_addr)
    assert problem is not None and words in problem and "\n" not in problem
    assert str(upstream) in problem


@pytest.mark.parametrize(
    ("upstream", "dns_addr"),
    [
        (Upstream("127.0.0.1", 5354), "127.0.0.1:5353"),  # another port
        (Upstream("127.0.0.2", 5353), "127.0.0.1:5353"),  # another loopback address
        (Upstream("192.0.2.1", 53), "0.0.0.0:53"),  # a real upstream elsewhere
    ],
)
def test_loop_problem_leaves_other_upstreams_alone(upstream: Upstream, dns_addr: str) -> None:
    assert app.loop_problem(upstream, dns_addr) is None


def test_build_refuses_an_upstream_that_is_kdns_itself() -> None:
    port = upstreams.free_port()
    with pytest.raises(app.StartupError) as error:
        app.build(
            Config().with_overrides(
                manifests=(str(EXAMPLES),),
                dns_addr=f"{HOST}:{port}",
                upstreams=(f"{HOST}:{port}", "127.0.0.53"),
            )
        )
    assert len(error.value.lines) == 2
    assert any("kdns itself" in line for line in error.value.lines)
    assert any("systemd-resolved" in line for line in error.value.lines)


def test_no_upstreams_means_no_forwarder() -> None:
    built = app.build(
        Config().with_overrides(manifests=(str(EXAMPLES),), dns_addr=f"{HOST}:0", upstreams=())
    )
    assert built.forwarder is None
    assert not built.handler.recursion_available


def test_chi_square_helper_flags_a_skewed_spread() -> None:
    assert chi_square([625] * 16) == 0
    assert chi_square([1000] + [600] * 15) > CHI2_15_DF_ALPHA_0001
    assert math.isclose(chi_square([10, 30]), 10.0)


async def test_serve_stale_beats_an_upstream_servfail(mock_clock: trio.testing.MockClock) -> None:
    # RFC 8767 §5: an upstream that answers SERVFAIL has failed as surely as one that is gone.
    zone = Zone(list(EXAMPLE.records))
    with wall_clock_limit(WAIT), Responder(zone) as upstream:
        config = ForwardConfig(
            upstreams=(upstream.upstream,), cache=CacheSection(serve_stale=3600.0)
        )
        async with kdns(config) as stack:
            fresh = await ask(stack.port, "www.example")
            mock_clock.jump(11)  # past the TTL (10 s)
            zone.rcode = RCODE.SERVFAIL
            reply = await ask(stack.port, "www.example")
    assert texts(fresh) == {"192.0.2.1"}
    assert (reply.rcode(), texts(reply), ttls(reply)) == (dns.rcode.NOERROR, {"192.0.2.1"}, [30])


@pytest.mark.parametrize("failure", ["gone", "servfail"])
async def test_serve_stale_outlasts_the_cached_failure(
    mock_clock: trio.testing.MockClock, failure: str
) -> None:
    # The first failed exchange stores a SERVFAIL for `servfail_ttl`; the queries after it must
    # still get the stale answer the README promises, not that SERVFAIL (RFC 8767 §5).
    zone = Zone(list(EXAMPLE.records))
    with wall_clock_limit(WAIT), Responder(zone) as upstream:
        config = ForwardConfig(
            upstreams=(upstream.upstream,), cache=CacheSection(serve_stale=3600.0)
        )
        async with kdns(config) as stack:
            await ask(stack.port, "www.example")
            mock_clock.jump(11)  # past the TTL (10 s)
            if failure == "gone":
                upstream.stop()
            else:
                zone.rcode = RCODE.SERVFAIL
            replies = []
            for _ in range(3):
                replies.append(await ask(stack.port, "www.example"))
                mock_clock.jump(1)  # inside the SERVFAIL's 5 s
    for reply in replies:
        assert (reply.rcode(), texts(reply), ttls(reply)) == (
            dns.rcode.NOERROR,
            {"192.0.2.1"},
            [30],
        )


async def test_forwarded_answers_say_recursion_is_available() -> None:
    # An authoritative upstream (a stub domain's server) clears RA; kdns recursed for the
    # client all the same, so its answer sets RA.
    def no_ra(request: upstreams.Request) -> list[upstreams.Reply]:
        (reply,) = EXAMPLE(request)
        data = bytearray(reply.data)
        data[3] &= 0x7F
        return [upstreams.Reply(bytes(data))]

    with wall_clock_limit(WAIT), Responder(no_ra) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,))) as stack:
            first = await ask(stack.port, "www.example")
            cached = await ask(stack.port, "www.example")
    assert upstream.count("www.example") == 1
    for reply in (first, cached):
        assert reply.flags & dns.flags.RA
        assert texts(reply) == {"192.0.2.1"}


@pytest.mark.parametrize(
    ("upstream", "dns_addr"),
    [
        (Upstream("::1", 5353), "0.0.0.0:5353"),  # IPv4-only wildcard: ::1 is someone else
        (Upstream("127.0.0.1", 5353), "[::1]:5353"),
    ],
)
def test_loop_problem_knows_the_address_families(upstream: Upstream, dns_addr: str) -> None:
    assert app.loop_problem(upstream, dns_addr) is None


@pytest.mark.parametrize(
    "disable, upstream_asked",
    [
        # (CoreDNS's `disable success|denial ZONES`, how often each name reached the upstream)
        ({}, {"www.example": 1, "missing.example": 1}),
        ({"disable_success": ("example",)}, {"www.example": 2, "missing.example": 1}),
        ({"disable_denial": ("example",)}, {"www.example": 1, "missing.example": 2}),
        (
            {"disable_success": (".",), "disable_denial": ("other",)},
            {"www.example": 2, "missing.example": 1},
        ),
        ({"disable_denial": ("missing.example",)}, {"www.example": 1, "missing.example": 2}),
        ({"disable_denial": ("sing.example",)}, {"www.example": 1, "missing.example": 1}),
    ],
)
async def test_cache_disable_passes_those_answers_on_uncached(
    disable: dict[str, tuple[str, ...]], upstream_asked: dict[str, int]
) -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:
        config = ForwardConfig(upstreams=(upstream.upstream,), cache=CacheSection(**disable))
        async with kdns(config) as stack:
            answers = [await ask(stack.port, name) for name in ("www.example", "missing.example")]
            answers += [await ask(stack.port, name) for name in ("www.example", "missing.example")]
    assert [texts(m) for m in answers[::2]] == [{"192.0.2.1"}] * 2
    assert [m.rcode() for m in answers[1::2]] == [dns.rcode.NXDOMAIN] * 2
    assert {name: upstream.count(name) for name in upstream_asked} == upstream_asked


# --- CoreDNS's forward options: policy, force_tcp, except --------------------------------------


@pytest.mark.parametrize(
    "policy, asked",
    [("sequential", (6, 0, 0)), ("round_robin", (2, 2, 2))],
)
async def test_policy_orders_the_upstreams(policy: str, asked: tuple[int, ...]) -> None:
    with (
        wall_clock_limit(WAIT),
        Responder(EXAMPLE) as a,
        Responder(EXAMPLE) as b,
        Responder(EXAMPLE) as c,
    ):
        upstreams_ = (a.upstream, b.upstream, c.upstream)
        async with kdns(ForwardConfig(upstreams=upstreams_, policy=policy)) as stack:
            for i in range(6):  # distinct names: none is answered from the cache
                await ask(stack.port, f"n{i}.example")
    assert (a.count(), b.count(), c.count()) == asked


async def test_policy_random_spreads_the_questions() -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as a, Responder(EXAMPLE) as b:
        async with kdns(ForwardConfig(upstreams=(a.upstream, b.upstream))) as stack:
            for i in range(40):
                await ask(stack.port, f"n{i}.example")
    # Each upstream first with odds 1/2: both are asked, but for 2 in 2^40 runs.
    assert a.count() + b.count() == 40 and a.count() > 0 and b.count() > 0


async def test_force_tcp_asks_every_question_over_tcp() -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:
        async with kdns(ForwardConfig(upstreams=(upstream.upstream,), force_tcp=True)) as stack:
            www = await ask(stack.port, "www.example")
            nx = await ask(stack.port, "missing.example")
    assert texts(www) == {"192.0.2.1"} and nx.rcode() == dns.rcode.NXDOMAIN
    assert (upstream.count(tcp=True), upstream.count(tcp=False)) == (2, 0)


async def test_except_names_are_not_forwarded() -> None:
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream, Responder(EXAMPLE) as stub:
        config = ForwardConfig(
            upstreams=(upstream.upstream,),
            stub_domains=(("lab.corp.example", (stub.upstream,)),),
            except_zones=("corp.example",),
        )
        async with kdns(config) as stack:
            www = await ask(stack.port, "www.example")
            held = await ask(stack.port, "www.corp.example")
            apex = await ask(stack.port, "CORP.example")
            lab = await ask(stack.port, "x.lab.corp.example")  # a stub domain takes it first
    assert texts(www) == {"192.0.2.1"}
    assert held.rcode() == apex.rcode() == dns.rcode.SERVFAIL
    assert lab.rcode() == dns.rcode.NXDOMAIN
    assert (upstream.count(), stub.count()) == (1, 1)

"""Forwarded cache hits as the receive thread answers them (kdns/dns/upstream_hits.py), pure.

An upstream answer `www.example. 60 IN A 192.0.2.1` arrives at t = 100 and is stored in an
upstream cache; the trio thread registers the query's shape; the tests then ask as the receive
thread does (`ForwardedHits.lookup`) at later times, on a clock they set. Answers are compared
as zone-file text (RFC 1035 §5), TTLs counted down in whole seconds (RFC 1035 §7.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rrset
import pytest

from kdns.config import CacheSection
from kdns.dns import wire
from kdns.dns.upstream_cache import CacheEntry, UpstreamCache, cache_key, from_cache
from kdns.dns.upstream_config import ForwardConfig
from kdns.dns.upstream_hits import SHAPES_PER_ENTRY, Shape, shape_size
from kdns.dns.upstream_response import parse_response

ARRIVED = 100.0
LABEL = 7


def upstream_answer(name: str = "www.example.", ttl: int = 60, records: int = 1) -> bytes:
    query = dns.message.make_query(name, "A")
    message = dns.message.make_response(query)
    message.flags |= dns.flags.RA
    addresses = [f"192.0.2.{i + 1}" for i in range(records)]
    message.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", *addresses))
    return message.to_wire()


@dataclass
class Thread:
    """An upstream cache, its shapes, and a clock and a trio hand-over the test controls."""

    cache: UpstreamCache
    now: float = ARRIVED
    handed: list[tuple[Shape, int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        hits = self.cache.fast
        hits.now = lambda: self.now
        hits.schedule = lambda function, *args: self.handed.append(args)
        hits.due = lambda shape, taps, data: None

    def store(self, name: str = "www.example.", ttl: int = 60, records: int = 1) -> CacheEntry:
        response = upstream_answer(name, ttl, records)
        query = wire.parse_query(dns.message.make_query(name, "A").to_wire())
        assert isinstance(query, wire.Query)
        self.cache.put(cache_key(query), response, parse_response(response), ARRIVED)
        entry = self.cache.get(cache_key(query), ARRIVED, count=False)
        assert entry is not None
        return entry

    def register(self, data: bytes) -> None:
        """What the trio thread does after it answered `data` from the cache itself."""
        query = wire.parse_query(data)
        assert isinstance(query, wire.Query)
        key = cache_key(query)
        entry = self.cache.get(key, self.now, count=False)
        assert entry is not None
        response = bytearray(from_cache(entry, query, self.now))
        response[3] |= 0x80  # RA, as the handler sets it
        denial = not int.from_bytes(response[6:8])
        shape = Shape(entry, key, LABEL, denial, bytes(response), 12 + len(query.question))
        self.cache.add_shape(data, shape)

    def ask(self, data: bytes, at: float) -> dns.message.Message | None:
        self.now = at
        found = self.cache.fast.lookup(data)
        if found is None:
            return None
        response, label = found
        assert label == LABEL
        return dns.message.from_wire(response)


def thread(**cache: object) -> Thread:
    cache.setdefault("max_ttl", 3600)  # the default cap (30 s) would hide the countdown
    return Thread(UpstreamCache(ForwardConfig(cache=CacheSection(**cache))))  # type: ignore[arg-type]


def query(name: str = "www.example.", qid: int = 1, **kwargs: object) -> bytes:
    message = dns.message.make_query(name, "A", **kwargs)  # type: ignore[arg-type]
    message.id = qid
    return message.to_wire()


def answer_text(message: dns.message.Message | None) -> str | None:
    return None if message is None else "\n".join(r.to_text() for r in message.answer)


COUNTDOWN = [
    # (case, seconds after the answer arrived, what the receive thread answers; None: trio)
    ("as it arrived", 0, "www.example. 60 IN A 192.0.2.1"),
    ("7 s later", 7, "www.example. 53 IN A 192.0.2.1"),
    ("7.9 s: whole seconds only", 7.9, "www.example. 53 IN A 192.0.2.1"),
    ("the last second", 59.5, "www.example. 1 IN A 192.0.2.1"),
    ("expired: trio's path (it may serve stale after asking upstream)", 60, None),
    ("long expired", 600, None),
]


@pytest.mark.parametrize(("case", "after", "expected"), COUNTDOWN, ids=[c[0] for c in COUNTDOWN])
def test_ttls_count_down_per_second(case: str, after: float, expected: str | None) -> None:
    t = thread()
    t.store()
    t.register(query())
    assert answer_text(t.ask(query(), ARRIVED + after)) == expected


def test_expired_with_serve_stale_goes_to_trio_which_serves_stale() -> None:
    # RFC 8767 §4: stale data is used only after the upstreams were tried; the thread never
    # tries them, so an expired entry inside the stale window is not the thread's to answer.
    t = thread(serve_stale=3600)
    t.store()
    t.register(query())
    assert t.ask(query(), ARRIVED + 61) is None
    assert t.cache.stale(cache_key(wire.parse_query(query())), ARRIVED + 61) is not None  # type: ignore[arg-type]


def test_the_clients_id_and_spelling_of_the_question_are_copied_in() -> None:
    t = thread()
    t.store()
    t.register(query("www.example.", qid=1))
    message = t.ask(query("WwW.ExAmple.", qid=4242), ARRIVED + 7)
    assert message is not None
    assert message.id == 4242
    assert message.question[0].to_text() == "WwW.ExAmple. IN A"
    # The owner name is a compression pointer to the question, as the upstream wrote it: it reads
    # as the client spelled it, as on the trio path (from_cache) and from the upstream itself.
    assert answer_text(message) == "WwW.ExAmple. 53 IN A 192.0.2.1"
    assert message.flags & dns.flags.RA and message.flags & dns.flags.RD


SHAPES = [
    # (case, the query registered, the query asked, answered by the thread)
    ("the same shape", {}, {}, True),
    ("plain registered, EDNS asked: another shape", {}, {"use_edns": 0}, False),
    ("EDNS registered and asked", {"use_edns": 0}, {"use_edns": 0}, True),
    ("EDNS registered, DO asked: another shape", {"use_edns": 0}, {"want_dnssec": True}, False),
    ("RD registered, RD clear asked", {}, {"flags": 0}, False),
]


@pytest.mark.parametrize(("case", "registered", "asked", "hit"), SHAPES, ids=[c[0] for c in SHAPES])
def test_a_shape_answers_only_queries_of_that_shape(
    case: str, registered: dict[str, object], asked: dict[str, object], hit: bool
) -> None:
    t = thread()
    t.store()
    t.register(query(**registered))
    message = t.ask(query(**asked), ARRIVED + 1)
    assert (message is not None) == hit
    if message is not None and asked.get("use_edns") == 0:
        assert message.edns == 0 and message.payload == wire.MAX_UDP_PAYLOAD


def test_an_answer_larger_than_the_clients_udp_size_goes_to_trio_which_truncates() -> None:
    t = thread()
    t.store(records=40)  # 40 A records: over 512 octets
    t.register(query(use_edns=0, payload=4096))
    assert t.ask(query(use_edns=0, payload=4096), ARRIVED + 1) is not None
    assert t.ask(query(use_edns=0, payload=512), ARRIVED + 1) is None


def test_shapes_are_counted_in_the_byte_budget_and_go_with_their_entry() -> None:
    t = thread()
    entry = t.store()
    before = t.cache.bytes
    t.register(query())
    shape = t.cache.fast.shapes[next(iter(t.cache.fast.shapes))]
    assert t.cache.bytes == before + shape_size(shape.response)
    assert entry.size == before + shape_size(shape.response)
    # The upstream answers again (a refresh): the entry is replaced, its shape no longer answers.
    t.store()
    assert len(t.cache.fast) == 0 and entry.gone
    assert t.ask(query(), ARRIVED + 1) is None


def test_a_budget_full_of_shapes_evicts_the_least_recent_entries() -> None:
    t = thread(max_bytes=20_000)
    names = [f"n{i}.example." for i in range(40)]
    for name in names:
        t.store(name)
        t.register(query(name))
        assert t.cache.bytes <= t.cache.max_bytes
    stats = t.cache.stats()
    assert stats.evictions_success > 0
    assert len(t.cache.fast) == len(t.cache) < len(names)
    assert t.ask(query(names[0]), ARRIVED + 1) is None  # evicted with its entry
    assert t.ask(query(names[-1]), ARRIVED + 1) is not None


def test_at_most_a_few_shapes_per_entry() -> None:
    t = thread()
    t.store()
    rd, ad = dns.flags.RD, dns.flags.AD  # header bits outside the upstream cache's key
    shapes = [{}, {"use_edns": 0}, {"flags": 0}, {"flags": 0, "use_edns": 0}, {"flags": rd | ad}]
    for kwargs in shapes:
        t.register(query(**kwargs))
    assert len(t.cache.fast) == SHAPES_PER_ENTRY


def test_the_threads_hits_are_counted_in_the_upstream_cache_stats() -> None:
    t = thread()
    t.store()
    t.register(query())
    for second in range(3):
        assert t.ask(query(), ARRIVED + second) is not None
    assert t.ask(query(), ARRIVED + 61) is None
    stats = t.cache.stats()
    assert (stats.hits_success, stats.hits_denial) == (3, 0)


def test_a_hit_due_a_prefetch_is_answered_and_handed_to_trio_once() -> None:
    # CoreDNS's prefetch 1 60s 10%: a hit with 6 s or less left is due a refresh; the thread
    # answers it and hands the entry to trio, with its own count of hits.
    t = thread(prefetch=1, prefetch_duration=60.0, prefetch_percentage=10)
    entry = t.store()
    t.register(query())
    assert t.ask(query(), ARRIVED + 10) is not None
    assert t.handed == []
    assert answer_text(t.ask(query(), ARRIVED + 55)) == "www.example. 5 IN A 192.0.2.1"
    assert answer_text(t.ask(query(), ARRIVED + 56)) == "www.example. 4 IN A 192.0.2.1"
    assert [(shape.entry, taps) for shape, taps, _ in t.handed] == [(entry, 2)]
    assert entry.asked  # until trio has taken it

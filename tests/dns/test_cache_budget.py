"""Byte budgets of the answer cache and the upstream cache (issue 11 item 4): a flood of
distinct names keeps each cache within its `max_bytes`, the oldest entries going first, each
eviction counted by type; and what a cache holds, measured with tracemalloc, is what its
estimate says (within a margin), so the budget bounds real memory.

Pure: the caches are filled directly, as the handler and the forwarder fill them.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import dns.message
import dns.rcode
import dns.rrset

from kdns.config import CacheSection
from kdns.dns import wire
from kdns.dns.handler import Handler
from kdns.dns.stats import CacheStats
from kdns.dns.upstream_cache import CacheEntry, CacheTable, UpstreamCache
from kdns.dns.upstream_config import ForwardConfig
from kdns.dns.upstream_response import parse_response
from tests.dns.test_rotation import handler as cluster_handler
from tests.dns.test_wire import ask, make_query, parse

BUDGET = 256 << 10
SMALL = 64 << 10  # for the tracemalloc measurements (slow under tracing)
FLOOD = 4000  # distinct names: each cache would hold several times its budget without a bound


def random_names(count: int, zone: str) -> list[str]:
    # Distinct, as a random-subdomain flood's; a fixed pattern keeps the test reproducible.
    return [f"x{i:06d}q{(i * 7919) % 100_000:05d}.{zone}" for i in range(count)]


# Random names under an existing Service: NXDOMAIN from the slow path, which stores them. (A
# random name directly under a namespace is answered without the cache at all, `denial`.)
FLOODED = "three.default.svc.cluster.local"


def held(fill: Callable[[], int], clear: Callable[[], None]) -> tuple[int, int]:
    """The cache's estimate after `fill` (which returns it), and the bytes `clear` then frees:
    what the cache itself held (traced from before the fill, so every entry is seen)."""
    gc.collect()
    tracemalloc.start()
    try:
        estimate = fill()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        clear()
        gc.collect()
        return estimate, before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


# --- the answer cache ------------------------------------------------------------------------


def flooded_handler(budget: int) -> Handler:
    handler = cluster_handler()
    handler.cache.max_bytes = budget
    return handler


def test_answer_cache_flood_of_nxdomain_names_stays_within_its_budget() -> None:
    handler = flooded_handler(BUDGET)
    cache = handler.cache
    for name in random_names(FLOOD, FLOODED):
        assert parse(ask(handler, make_query(name))).rcode() == dns.rcode.NXDOMAIN
        assert cache.bytes <= BUDGET
    assert 0 < len(cache) < FLOOD
    stats = cache.stats()
    # Every name was stored once; those not there any more were evicted, as denial.
    assert stats.evictions_denial == FLOOD - len(cache)
    assert stats.evictions_success == 0
    # Tags of evicted entries go with them: the index stays as small as the cache.
    assert sum(len(keys) for keys in cache.by_tag.values()) <= 4 * len(cache)


def test_answer_cache_evicts_oldest_first_and_keeps_answering() -> None:
    handler = flooded_handler(BUDGET)
    cache = handler.cache
    names = random_names(FLOOD, FLOODED)
    for name in names:
        ask(handler, make_query(name))
    # The newest names are still cached (a hit answers without the slow path); the first are
    # gone and come back from the slow path, the same answer.
    assert cache.answer(make_query(names[-1]), True) is not None
    assert cache.answer(make_query(names[0]), True) is None
    assert parse(ask(handler, make_query(names[0]))).rcode() == dns.rcode.NXDOMAIN
    assert cache.answer(make_query(names[0]), True) is not None


def test_answer_cache_estimate_matches_what_it_holds() -> None:
    handler = flooded_handler(SMALL)
    cache = handler.cache
    names = random_names(FLOOD // 4, FLOODED)

    def fill() -> int:
        for name in names:
            ask(handler, make_query(name))
        return cache.bytes

    estimate, freed = held(fill, cache.clear)
    # The estimate errs on the safe side, by no more than half.
    assert estimate * 0.6 <= freed <= estimate, (estimate, freed)


def test_answer_cache_entry_larger_than_the_budget_is_not_kept() -> None:
    handler = flooded_handler(4096)  # the 500-endpoint answer is far larger
    query = make_query("big.default.svc.cluster.local")
    ask(handler, query, udp=False)
    assert handler.cache.answer(query, False) is None
    assert handler.cache.bytes == 0


# --- the upstream cache ----------------------------------------------------------------------


def upstream_answer(name: str, rcode: int) -> bytes:
    message = dns.message.make_response(dns.message.make_query(name, "A"))
    message.set_rcode(rcode)
    if rcode == dns.rcode.NOERROR:
        message.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
    else:
        message.authority.append(
            dns.rrset.from_text("example.", 300, "IN", "SOA", "ns. host. 1 2 3 4 300")
        )
    return message.to_wire()


def upstream_cache(budget: int) -> UpstreamCache:
    return UpstreamCache(ForwardConfig(cache=CacheSection(max_bytes=budget)))


def fill_upstream(cache: UpstreamCache, names: list[str], rcode: int) -> None:
    for i, name in enumerate(names):
        response = upstream_answer(name, rcode)
        cache.put(name.encode(), response, parse_response(response), float(i))
        assert cache.bytes <= cache.max_bytes


def test_upstream_cache_flood_stays_within_its_budget_evicting_least_recent() -> None:
    cache = upstream_cache(BUDGET)
    names = random_names(FLOOD, "example.")
    fill_upstream(cache, names[: FLOOD // 2], dns.rcode.NOERROR)
    fill_upstream(cache, names[FLOOD // 2 :], dns.rcode.NXDOMAIN)
    stats = cache.stats()
    assert 0 < len(cache) < FLOOD
    assert stats.evictions_success + stats.evictions_denial == FLOOD - len(cache)
    assert stats.evictions_success > 0 and stats.evictions_denial > 0
    # Least recently used first: the newest denial answers are there, the oldest success not.
    assert cache.get(names[-1].encode(), 0.0) is not None
    assert cache.get(names[0].encode(), 0.0) is None


def test_upstream_cache_entry_count_bound_still_applies_and_counts() -> None:
    cache = UpstreamCache(ForwardConfig(cache=CacheSection(success=10)))
    fill_upstream(cache, random_names(25, "example."), dns.rcode.NOERROR)
    assert cache.stats() == CacheStats(
        success=10, denial=0, misses=0, hits_success=0, evictions_success=15
    )


def test_upstream_cache_estimate_matches_what_it_holds() -> None:
    cache = upstream_cache(SMALL)
    names = random_names(FLOOD // 4, "example.")

    def clear() -> None:
        cache.success.clear()
        cache.denial.clear()

    def fill() -> int:
        fill_upstream(cache, names, dns.rcode.NOERROR)
        return cache.bytes

    estimate, freed = held(fill, clear)
    assert cache.bytes == 0
    assert estimate * 0.6 <= freed <= estimate, (estimate, freed)


def test_keys_are_in_the_shipped_defaults() -> None:
    assert CacheSection().max_bytes == 16 << 20
    assert CacheSection().answer_max_bytes == 32 << 20
    assert wire.AnswerCache().max_bytes == CacheSection().answer_max_bytes


def test_upstream_cache_table_is_least_recently_used_and_tells_what_leaves() -> None:
    # One table on its own: an entry read is the most recent; a full table evicts the least
    # recent; every entry that leaves (evicted, replaced, deleted, cleared) is told to
    # `dropped`, and `readable` (the receive threads' view) holds exactly what the table holds.
    left: list[str] = []
    table = CacheTable(2, lambda entry: left.append(entry.response.decode()))

    def entry(name: str) -> CacheEntry:
        return CacheEntry(name.encode(), [], [], 0.0, 1.0, 1.0, size=100)

    table[b"a"], table[b"b"] = entry("a"), entry("b")
    assert table.get(b"a") is not None  # a is now the most recent
    table[b"c"] = entry("c")  # full: b, the least recent, goes
    assert (list(table), left, table.evictions, table.bytes) == ([b"a", b"c"], ["b"], 1, 200)
    table[b"a"] = entry("a2")  # replaced: the old a leaves, the new one is the most recent
    del table[b"c"]
    assert (list(table), left, table.bytes) == ([b"a"], ["b", "a", "c"], 100)
    assert dict(table.readable) == {b"a": table[b"a"]}
    table.clear()
    assert (len(table), left[-1], table.bytes, dict(table.readable)) == (0, "a2", 0, {})

"""CoreDNS's cache `prefetch AMOUNT [DURATION] [PERCENTAGE%]` in the upstream cache: an entry
asked AMOUNT times within DURATION is refreshed from upstream in the background once it is
served with less than PERCENTAGE of its original TTL left (at least 1 s), so a popular name
never expires in front of clients.

The counting is pure (table tests on `count_hit`, as the forwarder's hit path drives it); the
refresh runs through a real upstream on loopback under trio's MockClock.
"""

from __future__ import annotations

from collections.abc import Callable

import dns.message
import dns.rrset
import pytest
import trio
import trio.testing

from kdns.config import CacheSection
from kdns.dns.upstream_cache import CacheEntry, UpstreamCache, count_hit, prefetch_threshold
from kdns.dns.upstream_config import ForwardConfig
from kdns.dns.upstream_response import parse_response
from tests.dns.test_forward import (
    EXAMPLE,
    WAIT,
    Stack,
    ask,
    kdns,
    texts,
    ttls,
    wall_clock_limit,
)
from tests.dns.upstreams import Responder


def stored(ttl: int, cache: CacheSection) -> CacheEntry:
    """`www.example. TTL IN A 192.0.2.1`, put in an upstream cache at time 0."""
    message = dns.message.make_response(dns.message.make_query("www.example", "A"))
    message.answer.append(dns.rrset.from_text("www.example.", ttl, "IN", "A", "192.0.2.1"))
    response = message.to_wire()
    upstream_cache = UpstreamCache(ForwardConfig(cache=cache))
    upstream_cache.put(b"key", response, parse_response(response), 0.0)
    return upstream_cache.success[b"key"]


def due_at_last_hit(entry: CacheEntry, hits: list[float], cache: CacheSection) -> bool:
    """Hits at these times, as Forwarder's hit path counts them: whether the last one starts a
    refresh."""
    due = False
    for now in hits:
        entry.hits += 1
        due = now >= entry.check_at and count_hit(entry, now, cache)
    return due


PREFETCH = [
    # (case, TTL, cache prefetch AMOUNT DURATION PERCENTAGE, hit times, refreshed at the last)
    ("3 hits, the last with 1 s (10 % of 10 s) left", 10, (3, 60.0, 10), [0, 1, 9], True),
    ("3 hits, the last with 1.5 s left", 10, (3, 60.0, 10), [0, 1, 8.5], False),
    ("2 hits of the 3 needed", 10, (3, 60.0, 10), [1, 9], False),
    ("4 hits: due on the third, and on every one after", 10, (3, 60.0, 10), [1, 2, 9, 9.5], True),
    ("10 % of 30 s: 3 s left", 30, (3, 60.0, 10), [1, 2, 27], True),
    ("10 % of 30 s: 3.5 s left", 30, (3, 60.0, 10), [1, 2, 26.5], False),
    ("10 % of 5 s rounds up to 1 s", 5, (1, 60.0, 10), [4], True),
    ("50 % of 10 s", 10, (3, 60.0, 50), [0, 1, 5], True),
    ("prefetch 1: the first hit near expiry", 10, (1, 60.0, 10), [9], True),
    ("the window (5 s) ended: the count starts again", 10, (3, 5.0, 10), [0, 1, 9], False),
    ("a new window from the first hit after its end", 10, (3, 5.0, 10), [0, 6, 8, 9], True),
    ("0 %: never due while fresh", 10, (1, 60.0, 0), [0, 5, 9.9], False),
    ("prefetch 0: off", 10, (0, 60.0, 10), [0, 1, 2, 9.5], False),
]


@pytest.mark.parametrize(
    ("ttl", "settings", "hits", "due"),
    [pytest.param(*row[1:], id=row[0]) for row in PREFETCH],
)
def test_when_an_entry_is_refreshed(
    ttl: int, settings: tuple[int, float, int], hits: list[float], due: bool
) -> None:
    amount, duration, percentage = settings
    cache = CacheSection(
        max_ttl=3600,
        prefetch=amount,
        prefetch_duration=duration,
        prefetch_percentage=percentage,
    )
    assert due_at_last_hit(stored(ttl, cache), hits, cache) is due


def test_the_threshold_is_a_whole_number_of_seconds_rounded_up() -> None:
    cache = CacheSection(prefetch=1, prefetch_percentage=10)
    assert [prefetch_threshold(ttl, cache) for ttl in (1, 5, 10, 11, 30, 300)] == [
        1,
        1,
        1,
        2,
        3,
        30,
    ]


async def until(condition: Callable[[], bool]) -> None:
    """Let trio run (its MockClock stands still; real sockets still make progress) until
    `condition()` holds; the test's wall_clock_limit bounds the wait."""
    while not condition():
        await trio.sleep(0)


async def test_a_popular_name_is_refreshed_before_it_expires(
    mock_clock: trio.testing.MockClock,
) -> None:
    cache = CacheSection(prefetch=3, prefetch_duration=60.0, prefetch_percentage=10)
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:  # www.example: TTL 10
        config = ForwardConfig(upstreams=(upstream.upstream,), cache=cache)
        async with kdns(config, health_checks=True) as stack:
            first = await ask(stack.port, "www.example")
            mock_clock.jump(1)
            await ask(stack.port, "www.example")  # hit 1
            mock_clock.jump(4)
            await ask(stack.port, "www.example")  # hit 2
            mock_clock.jump(4.5)  # 9.5 s: 0.5 s left, under 10 % of 10 s
            served = await ask(stack.port, "www.example")  # hit 3: refreshed in the background
            await until(lambda: stack.forwarder.cache.success[_key(stack)].stored == 9.5)
            mock_clock.jump(1)  # 10.5 s: the first answer would have expired
            refreshed = await ask(stack.port, "www.example")
            assert upstream.count("www.example") == 2
            # The refreshed entry keeps its popularity (3 hits, 4 with the one at 10.5 s): near
            # its own expiry, one more hit refreshes it again.
            mock_clock.jump(8.5)  # 19 s: 0.5 s left of the refreshed answer's 10 s
            await ask(stack.port, "www.example")
            await until(lambda: upstream.count("www.example") == 3)
            prefetches = stack.forwarder.cache.prefetches
    assert [texts(m) for m in (first, served, refreshed)] == [{"192.0.2.1"}] * 3
    assert [ttls(m) for m in (first, served, refreshed)] == [[10], [1], [9]]
    assert prefetches == 2


async def test_a_name_asked_too_rarely_is_not_refreshed(
    mock_clock: trio.testing.MockClock,
) -> None:
    cache = CacheSection(prefetch=3, prefetch_duration=60.0, prefetch_percentage=10)
    with wall_clock_limit(WAIT), Responder(EXAMPLE) as upstream:
        config = ForwardConfig(upstreams=(upstream.upstream,), cache=cache)
        async with kdns(config, health_checks=True) as stack:
            await ask(stack.port, "www.example")
            mock_clock.jump(1)
            await ask(stack.port, "www.example")  # hit 1
            mock_clock.jump(8.5)
            await ask(stack.port, "www.example")  # hit 2 of 3: not popular enough
            await trio.testing.wait_all_tasks_blocked()
            assert stack.forwarder.cache.prefetches == 0
            mock_clock.jump(1)  # expired: asked upstream again, in front of the client
            reply = await ask(stack.port, "www.example")
    assert ttls(reply) == [10]
    assert upstream.count("www.example") == 2


def _key(stack: Stack) -> bytes:
    # The cache key of `www.example. IN A`, without DO or CD: the only entry in the cache.
    (key,) = stack.forwarder.cache.success.keys()
    return key

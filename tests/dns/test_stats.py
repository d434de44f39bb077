"""kdns/dns/stats.py without a server: the per-query counters, their folding into CoreDNS's
series at scrape time, and the answer caches' statistics."""

from __future__ import annotations

import itertools

from dnslib import RR
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kdns.dns.stats import LABELS, CacheStats, QueryStats, ThreadCounts
from kdns.dns.wire import AnswerCache, encode, parse_query
from tests.dns.test_wire import make_query

_servers = itertools.count()


def server_label() -> str:
    return f"dns://test-{next(_servers)}:53"


def samples(server: str, text: str | None = None) -> dict[tuple[str, frozenset], float]:
    text = text if text is not None else generate_latest(REGISTRY).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("server") == server:
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(table: dict, name: str, **labels: str) -> float:
    return table.get((name, frozenset(labels.items())), 0.0)


def test_counts_fold_into_requests_responses_and_histograms() -> None:
    server = server_label()
    stats = QueryStats(server)
    a = LABELS.id("cluster.local.", 1, 0, "kubernetes", False)
    nx_do = LABELS.id("cluster.local.", 28, 3, "kubernetes", True, "denial")
    fwd = LABELS.id(".", 99, 2, "forward", False)
    for _ in range(5):
        stats.record("udp", "1", a, 40, 90, 0.0001)
    stats.record("tcp", "2", nx_do, 50, 600, 0.003)
    stats.record("udp", "1", fwd, 30, 30, 20.0)
    t = samples(server)
    z = {"server": server, "zone": "cluster.local.", "view": ""}
    assert get(t, "kdns_dns_requests_total", **z, proto="udp", family="1", type="A") == 5
    assert get(t, "kdns_dns_requests_total", **z, proto="tcp", family="2", type="AAAA") == 1
    root = {"server": server, "zone": ".", "view": ""}
    assert get(t, "kdns_dns_requests_total", **root, proto="udp", family="1", type="other") == 1
    assert get(t, "kdns_dns_responses_total", **z, rcode="NOERROR", plugin="kubernetes") == 5
    assert get(t, "kdns_dns_responses_total", **z, rcode="NXDOMAIN", plugin="kubernetes") == 1
    assert get(t, "kdns_dns_responses_total", **root, rcode="SERVFAIL", plugin="forward") == 1
    assert get(t, "kdns_dns_do_requests_total", server=server, view="", zone="cluster.local.") == 1
    # Durations: 0.1 ms is in the first bucket (0.25 ms), 3 ms in le=0.004, 20 s only in +Inf.
    d = {**z, "type": "A"}
    assert get(t, "kdns_dns_request_duration_seconds_bucket", **d, le="0.00025") == 5
    assert abs(get(t, "kdns_dns_request_duration_seconds_sum", **d) - 0.0005) < 1e-12
    d6 = {**z, "type": "AAAA"}
    assert get(t, "kdns_dns_request_duration_seconds_bucket", **d6, le="0.002") == 0
    assert get(t, "kdns_dns_request_duration_seconds_bucket", **d6, le="0.004") == 1
    d0 = {**root, "type": "other"}
    assert get(t, "kdns_dns_request_duration_seconds_bucket", **d0, le="8.192") == 0
    assert get(t, "kdns_dns_request_duration_seconds_bucket", **d0, le="+Inf") == 1
    # Sizes: exact sums; 600 octets falls in le=1023.
    assert get(t, "kdns_dns_response_size_bytes_sum", **z, proto="udp") == 5 * 90
    assert get(t, "kdns_dns_response_size_bytes_bucket", **z, proto="tcp", le="511.0") == 0
    assert get(t, "kdns_dns_response_size_bytes_bucket", **z, proto="tcp", le="1023.0") == 1
    assert get(t, "kdns_dns_request_size_bytes_count", **z, proto="udp") == 5
    # Counters only grow: a second scrape after more traffic adds to the first.
    stats.record("udp", "1", a, 40, 90, 0.0001)
    assert (
        get(samples(server), "kdns_dns_requests_total", **z, proto="udp", family="1", type="A") == 6
    )


def test_a_large_dict_is_folded_on_the_way_and_nothing_is_lost() -> None:
    server = server_label()
    stats = QueryStats(server)
    stats.FOLD_AT = 10
    a = LABELS.id("cluster.local.", 1, 0, "kubernetes", False)
    for size in range(100):  # 100 distinct keys
        stats.record("udp", "1", a, 20 + size, 50, 0.0)
    assert len(stats.counts[("udp", "1")]) <= 10
    t = samples(server)
    z = {"server": server, "zone": "cluster.local.", "view": ""}
    assert get(t, "kdns_dns_requests_total", **z, proto="udp", family="1", type="A") == 100
    assert get(t, "kdns_dns_request_size_bytes_sum", **z, proto="udp") == sum(range(20, 120))


def test_caches_and_listeners_sharing_a_server_label() -> None:
    server = server_label()
    old, new = QueryStats(server), QueryStats(server)
    hit = LABELS.id("cluster.local.", 1, 0, "kubernetes", False, "success")
    denial = LABELS.id("cluster.local.", 1, 3, "kubernetes", False, "denial")
    old.record("udp", "1", hit, 40, 90, 0.0)
    new.record("udp", "1", hit, 40, 90, 0.0)
    new.record("udp", "1", denial, 40, 90, 0.0)
    old.caches.append(lambda: ("z.", CacheStats(success=9, denial=9, misses=9)))
    new.caches.append(lambda: ("z.", CacheStats(success=3, denial=1, misses=2)))
    new.caches.append(
        lambda: (
            ".",
            CacheStats(
                success=4,
                denial=5,
                misses=6,
                hits_success=7,
                hits_denial=8,
                served_stale=1,
                prefetches=2,
            ),
        )
    )
    t = samples(server)
    z = {"server": server, "zone": "cluster.local.", "view": ""}
    # One series for both listeners, summed.
    assert get(t, "kdns_dns_requests_total", **z, proto="udp", family="1", type="A") == 3
    c = {"server": server, "zones": "z.", "view": ""}
    assert get(t, "kdns_cache_entries", **c, type="success") == 3  # the newer listener's cache
    assert get(t, "kdns_cache_hits_total", **c, type="success") == 2  # counted as queries
    assert get(t, "kdns_cache_hits_total", **c, type="denial") == 1
    assert get(t, "kdns_cache_misses_total", **c) == 2
    assert get(t, "kdns_cache_requests_total", **c) == 2 + 3
    u = {"server": server, "zones": ".", "view": ""}
    assert get(t, "kdns_cache_hits_total", **u, type="denial") == 8
    assert get(t, "kdns_cache_requests_total", **u) == 6 + 7 + 8
    assert get(t, "kdns_cache_served_stale_total", **u) == 1
    assert get(t, "kdns_cache_prefetch_total", **u) == 2


def test_answer_cache_counts_nxdomain_and_nodata_as_denial() -> None:
    """CoreDNS's cache types: NXDOMAIN and NODATA (NOERROR without answers) are denial."""
    cache = AnswerCache()
    cases = {
        # name: (rcode, answer records)
        "web.default.svc.cluster.local": (0, [RR.fromZone("web 5 IN A 10.96.0.10")[0]]),
        "nx.default.svc.cluster.local": (3, []),
        "nodata.default.svc.cluster.local": (0, []),
        "broken.default.svc.cluster.local": (2, []),
    }
    for name, (rcode, answer) in cases.items():
        data = make_query(name)
        query = parse_query(data)
        assert not isinstance(query, bytes | None)
        cache.store(data, query, encode(query, rcode, answer), [("t",)])
    assert cache.answer(make_query("other.default.svc.cluster.local"), True) is None
    assert cache.stats() == CacheStats(success=2, denial=2, misses=1)


# --- a receive thread's counts (ThreadCounts) -------------------------------------------------


def test_thread_counts_are_folded_with_the_listeners_own() -> None:
    server = server_label()
    stats = QueryStats(server)
    thread = ThreadCounts()
    stats.threads.append(thread)
    a = LABELS.id("cluster.local.", 1, 0, "kubernetes", False, "success")
    thread.counts["1"][(a, 40, 56, 0)] = [3, 0.0003]
    thread.counts["2"][(a, 40, 56, 0)] = [1, 0.0001]
    stats.record("udp", "1", a, 40, 56, 0.00005)  # trio's own count of the same key
    stats.fold()
    assert stats.requests[("cluster.local.", "udp", "1", "A")] == 4
    assert stats.requests[("cluster.local.", "udp", "2", "A")] == 1
    assert stats.cache_hits["success"] == 5
    # Taken once: a second fold adds nothing, and the thread writes into fresh dicts.
    stats.fold()
    assert stats.requests[("cluster.local.", "udp", "1", "A")] == 4
    assert thread.counts == {"1": {}, "2": {}}


def test_answers_a_receive_thread_gave_past_an_answer_cache_miss_count_as_its_misses() -> None:
    # Trio's path counts a miss in the answer cache itself before it forwards or builds; the
    # receive thread answers a forwarded hit or a cluster NXDOMAIN it built past the same miss,
    # so those count as misses too (the listeners' sum, beside the cache's own).
    server = server_label()
    stats = QueryStats(server)
    thread = ThreadCounts()
    stats.threads.append(thread)
    hit = LABELS.id("cluster.local.", 1, 0, "kubernetes", False, "success")
    forwarded = LABELS.id(".", 1, 0, "cache", False)
    built = LABELS.id("cluster.local.", 1, 3, "kubernetes", False)
    thread.counts["1"][(hit, 40, 56, 0)] = [5, 0.0]
    thread.counts["1"][(forwarded, 40, 60, 0)] = [3, 0.0]
    thread.counts["2"][(built, 40, 90, 0)] = [2, 0.0]
    stats.caches.append(lambda: ("z.", CacheStats(success=1, denial=1, misses=4)))
    t = samples(server)
    c = {"server": server, "zones": "z.", "view": ""}
    assert get(t, "kdns_cache_hits_total", **c, type="success") == 5
    assert get(t, "kdns_cache_misses_total", **c) == 4 + 3 + 2
    assert get(t, "kdns_cache_requests_total", **c) == 5 + 4 + 3 + 2


def test_thread_counts_taken_while_the_writer_is_busy_wait_for_the_next_take() -> None:
    thread = ThreadCounts()
    first = thread.counts
    first["1"][(0, 1, 2, 0)] = [1, 0.0]
    thread.busy = True  # the writer is between reading `counts` and finishing its update
    assert thread.take() == []  # swapped, but the old dicts may still be written
    second = thread.counts
    assert second is not first
    second["1"][(0, 1, 2, 0)] = [2, 0.0]
    assert thread.take() == []  # still busy: cannot tell which dicts it holds, nothing swaps
    assert thread.counts is second
    thread.busy = False
    assert thread.take() == [first, second]  # both free now, in the order they were written
    assert thread.take() == [{"1": {}, "2": {}}]


def test_thread_counts_full_is_cleared_by_a_take() -> None:
    thread = ThreadCounts()
    thread.full = True
    thread.take()
    assert thread.full is False

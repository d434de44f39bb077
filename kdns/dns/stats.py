"""The DNS listeners' own statistics: per-query counters for the hot path, folded into CoreDNS's
request, response and cache series when /metrics is scraped.

Contract:
- A response is counted under a `QueryLabel` (zone, type, rcode, plugin, DO bit, cache hit
  type), interned by `LABELS` as a small int, so the hot path keys its counters by an int.
- `QueryStats` is one listener's counters: `counts[(proto, family)]` maps (label id, request
  size, response size, duration bucket) to [queries, seconds]. A listener counts inline — a dict
  get and two additions — and calls `add` for a key not seen yet; `record` does the same in one
  call off the hot path. `fold` moves the counts into cumulative series (memory bounded by label
  sets, not by the sizes seen); the collector folds at each scrape, `add` when a dict grows large.
- `QueryStats.caches` are the listener's answer caches, read at scrape time: each gives its
  `zones` label and its `CacheStats`, or None (no forwarding: no upstream cache).
- The collector (registered in the default registry on import) builds the families declared in
  kdns/metrics.py (`DNS_FAMILIES`) from every live `QueryStats`; listeners sharing a `server`
  label (one replaced by another on reload, still draining) are summed into one series.
- `QueryStats` is not thread-safe: the listeners and /metrics run on the same (trio) thread.
  The one exception is `ThreadCounts`: the counts of a UDP receive thread
  (kdns/dns/receiver.py), written by that thread alone and taken by the trio thread when it
  folds (`QueryStats.threads`), with no lock: the writer brackets each update with `busy`, and a
  dict taken while it was busy is folded at the next fold instead. Nothing here does I/O.

Why not prometheus-client children: at ~50k queries/s a `.labels(...).inc()` per query would cost
more than the rest of a cache hit.
"""

from __future__ import annotations

import collections
import itertools
import math
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kdns.metrics import (
    DNS_FAMILIES,
    DURATION_BUCKETS,
    SIZE_BUCKETS,
    dns_family,
    rcode_name,
    type_label,
)

VIEW = ""  # CoreDNS's `view` label: kdns has a single view


@dataclass(frozen=True, slots=True)
class QueryLabel:
    """What a response is counted under: zone as CoreDNS writes it ("cluster.local.", "." for
    forwarded names, "dropped" for queries refused before any lookup), the type label, the rcode
    name, the plugin that wrote it (kubernetes, forward, cache, autopath; "" for the server
    itself), the query's DO bit, and `cache` ("success"/"denial") for answer-cache hits."""

    zone: str
    type: str
    rcode: str
    plugin: str
    do: bool
    cache: str = ""


class QueryLabels:
    """Interns QueryLabels as small ints, so the hot path keys its counters by an int."""

    def __init__(self) -> None:
        self._ids: dict[QueryLabel, int] = {}
        self.labels: list[QueryLabel] = []

    def id(self, zone: str, qtype: int, rcode: int, plugin: str, do: bool, cache: str = "") -> int:
        label = QueryLabel(zone, type_label(qtype), rcode_name(rcode), plugin, do, cache)
        found = self._ids.get(label)
        if found is None:
            # Bounded: zones and stub domains (config) × 19 types × 16 rcodes × 5 plugins × 2 × 3.
            found = self._ids[label] = len(self.labels)
            self.labels.append(label)
        return found


LABELS = QueryLabels()


class Histogram:
    """Bucket counts (not cumulative; the last is +Inf) and the sum of one series."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, value: float, n: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))
        return out


@dataclass(frozen=True, slots=True)
class CacheStats:
    """One answer cache at scrape time. `hits_success` None: its hits are the listener's own
    count of answers it served from that cache (the hot path counts them once, as queries)."""

    success: int  # entries
    denial: int
    misses: int
    hits_success: int | None = None
    hits_denial: int = 0
    served_stale: int = 0
    prefetches: int = 0  # the upstream cache's background refreshes (CoreDNS's prefetch)
    evictions_success: int = 0  # entries dropped to stay within the cache's bounds, by type
    evictions_denial: int = 0


Counts = dict[tuple[int, int, int, int], list[Any]]


class ThreadCounts:
    """UDP counts by address family ("1", "2"), written by one receive thread, taken by trio.

    The writer sets `busy` before it reads `counts` and clears it after its update; `take`
    swaps `counts` for fresh dicts and gives back the old ones, unless the writer was busy (it
    may hold the old dict): those wait in `_pending` until a take finds it idle. `full` is the
    writer's request for an early fold (its dict reached `FOLD_AT` keys)."""

    FOLD_AT = 10_000

    def __init__(self) -> None:
        self.counts: dict[str, Counts] = {"1": {}, "2": {}}
        self.busy = False
        self.full = False
        self._pending: dict[str, Counts] | None = None

    def take(self) -> list[dict[str, Counts]]:
        """The trio thread's side: the counts no writer can touch any more."""
        out: list[dict[str, Counts]] = []
        if self._pending is not None:
            if self.busy:
                return out  # on the pending dicts or the current ones: cannot tell, next time
            out.append(self._pending)
            self._pending = None
        old = self.counts
        self.counts = {"1": {}, "2": {}}
        self.full = False
        if self.busy:
            self._pending = old  # the writer may be inside its update of `old` right now
        else:
            out.append(old)  # any update from now on reads the new dicts
        return out


# A listener's cache: its CoreDNS `zones` label (comma-separated) and its statistics.
CacheSource = Callable[[], tuple[str, CacheStats] | None]


class QueryStats:
    """The per-query counters of one DNS listener, for the hot path (module docstring)."""

    FOLD_AT = 10_000

    def __init__(self, server: str) -> None:
        self.server = server  # CoreDNS's `server` label, e.g. "dns://:53"
        self.counts: dict[tuple[str, str], Counts] = {
            (proto, family): {} for proto in ("udp", "tcp") for family in ("1", "2")
        }
        self.requests: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self.do_requests: collections.Counter[str] = collections.Counter()
        self.responses: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.cache_hits: collections.Counter[str] = collections.Counter()
        # Answers the receive threads gave past an answer-cache miss (a forwarded hit, a
        # cluster NXDOMAIN they built): trio's path counts that miss in the cache itself.
        self.thread_misses = 0
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.request_sizes: dict[tuple[str, str], Histogram] = {}
        self.response_sizes: dict[tuple[str, str], Histogram] = {}
        self.caches: list[CacheSource] = []
        self.threads: list[ThreadCounts] = []  # receive threads' UDP counts, merged at fold
        _LISTENERS[next(_CREATED)] = self

    def record(
        self,
        proto: str,
        family: str,
        label: int,
        request_size: int,
        response_size: int,
        seconds: float,
    ) -> None:
        counts = self.counts[(proto, family)]
        key = (label, request_size, response_size, bisect_left(DURATION_BUCKETS, seconds))
        entry = counts.get(key)
        if entry is None:
            self.add(counts, key, seconds)
        else:
            entry[0] += 1
            entry[1] += seconds

    def add(self, counts: Counts, key: tuple[int, int, int, int], seconds: float) -> None:
        if len(counts) >= self.FOLD_AT:
            self.fold()
        counts[key] = [1, seconds]

    def fold(self) -> None:
        labels = LABELS.labels
        for thread in self.threads:
            for taken in thread.take():
                for family, counts in taken.items():
                    self.thread_misses += sum(
                        n for (label_id, *_), (n, _) in counts.items() if not labels[label_id].cache
                    )
                    self._merge(self.counts[("udp", family)], counts)
        for (proto, family), counts in self.counts.items():
            for (label_id, request_size, response_size, bucket), (n, seconds) in counts.items():
                label = labels[label_id]
                zone = label.zone
                self.requests[(zone, proto, family, label.type)] += n
                if label.do:
                    self.do_requests[zone] += n
                self.responses[(zone, label.rcode, label.plugin)] += n
                if label.cache:
                    self.cache_hits[label.cache] += n
                duration = _series(self.durations, (zone, label.type), DURATION_BUCKETS)
                duration.counts[bucket] += n
                duration.sum += seconds
                _series(self.request_sizes, (zone, proto), SIZE_BUCKETS).add(request_size, n)
                _series(self.response_sizes, (zone, proto), SIZE_BUCKETS).add(response_size, n)
            counts.clear()

    @staticmethod
    def _merge(into: Counts, counts: Counts) -> None:
        for key, (n, seconds) in counts.items():
            entry = into.get(key)
            if entry is None:
                into[key] = [n, seconds]
            else:
                entry[0] += n
                entry[1] += seconds


def _series(table: dict[Any, Histogram], key: Any, bounds: tuple[float, ...]) -> Histogram:
    found = table.get(key)
    if found is None:
        found = table[key] = Histogram(bounds)
    return found


# Every live listener's counters, by creation order (a later one's caches win a shared label).
_LISTENERS: weakref.WeakValueDictionary[int, QueryStats] = weakref.WeakValueDictionary()
_CREATED = itertools.count()

Series = dict[tuple[str, ...], float]


def _add(table: Series, key: tuple[str, ...], n: float) -> None:
    table[key] = table.get(key, 0) + n


class _Scrape:
    """One scrape's sums over every live listener, by family and label values."""

    def __init__(self) -> None:
        self.counts: dict[str, Series] = {
            name: {} for name, kind, *_ in DNS_FAMILIES if kind != "histogram"
        }
        self.hists: dict[str, dict[tuple[str, ...], Histogram]] = {
            name: {} for name, kind, *_ in DNS_FAMILIES if kind == "histogram"
        }
        # (server, zones) → the newest listener's cache, and the hits and the receive threads'
        # misses summed so far.
        self.caches: dict[tuple[str, str], tuple[CacheStats, tuple[int, int], int]] = {}

    def add_queries(self, stats: QueryStats) -> None:
        server, counts = stats.server, self.counts
        for (zone, proto, family, qtype), n in stats.requests.items():
            _add(counts["kdns_dns_requests_total"], (server, zone, VIEW, proto, family, qtype), n)
        for zone, n in stats.do_requests.items():
            _add(counts["kdns_dns_do_requests_total"], (server, VIEW, zone), n)
        for (zone, rcode, plugin), n in stats.responses.items():
            _add(counts["kdns_dns_responses_total"], (server, zone, VIEW, rcode, plugin), n)
        for name, table in (
            ("kdns_dns_request_duration_seconds", stats.durations),
            ("kdns_dns_request_size_bytes", stats.request_sizes),
            ("kdns_dns_response_size_bytes", stats.response_sizes),
        ):
            for (zone, other), hist in table.items():
                _series(self.hists[name], (server, zone, VIEW, other), hist.bounds).merge(hist)

    def add_caches(self, stats: QueryStats) -> None:
        for source in stats.caches:
            found = source()
            if found is None:
                continue
            zones, cache = found
            key = (stats.server, zones)
            misses = 0
            if cache.hits_success is None:
                # Hits counted as queries by the listeners: summed, as the requests; so are
                # the misses their receive threads answered past (the answer cache's own
                # count has trio's).
                before = self.caches[key][1:] if key in self.caches else ((0, 0), 0)
                hits = (
                    before[0][0] + stats.cache_hits["success"],
                    before[0][1] + stats.cache_hits["denial"],
                )
                misses = before[1] + stats.thread_misses
            else:
                hits = (cache.hits_success, cache.hits_denial)
            # The sizes and misses of the newest listener's cache.
            self.caches[key] = (cache, hits, misses)

    def cache_series(self) -> None:
        counts = self.counts
        for (server, zones), (cache, hits, thread_misses) in self.caches.items():
            for kind, entries, hit in (
                ("success", cache.success, hits[0]),
                ("denial", cache.denial, hits[1]),
            ):
                counts["kdns_cache_entries"][(server, kind, zones, VIEW)] = entries
                counts["kdns_cache_hits_total"][(server, kind, zones, VIEW)] = hit
            misses = cache.misses + thread_misses
            counts["kdns_cache_misses_total"][(server, zones, VIEW)] = misses
            counts["kdns_cache_requests_total"][(server, zones, VIEW)] = misses + sum(hits)
            counts["kdns_cache_served_stale_total"][(server, zones, VIEW)] = cache.served_stale
            counts["kdns_cache_prefetch_total"][(server, zones, VIEW)] = cache.prefetches

    def families(self) -> list[Metric]:
        out = []
        for name, *_ in DNS_FAMILIES:
            metric = dns_family(name)
            if name in self.hists:
                for labels, hist in self.hists[name].items():
                    metric.add_metric(list(labels), hist.cumulative(), hist.sum)
            else:
                for labels, value in self.counts[name].items():
                    metric.add_metric(list(labels), value)
            out.append(metric)
        return out


class DnsCollector(Collector):
    """The per-query and cache families, built from every live `QueryStats` at scrape time."""

    def describe(self) -> Iterable[Metric]:
        return [dns_family(name) for name, *_ in DNS_FAMILIES]

    def collect(self) -> Iterable[Metric]:
        scrape = _Scrape()
        for _, stats in sorted(_LISTENERS.items()):
            stats.fold()
            scrape.add_queries(stats)
            scrape.add_caches(stats)
        scrape.cache_series()
        return scrape.families()


REGISTRY.register(DnsCollector())

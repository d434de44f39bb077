"""Every Prometheus metric kdns exports, declared in one place.

Contract:
- Metrics live in the process-wide default registry (prometheus-client), which also carries the
  process collector (resident memory, CPU seconds, open fds) operators already graph.
- Names carry the `kdns_` prefix; label sets and buckets follow CoreDNS's where one exists
  (`coredns_dns_requests_total{server,zone,view,proto,family,type}`, …). `WithCorednsNames`
  also exports those under their `coredns_` names (config `metrics_coredns_names`), copied from
  the collected families at scrape time; `catalogue()` lists every name with its labels (the
  golden file tests/golden/metrics.txt and the Grafana dashboard are checked against it).
- Updating a prometheus-client metric is thread-safe (it locks), so Reflector threads may count.
  The per-query DNS series are the exception: plain counters of the listener (`QueryStats`),
  turned into families by a collector when /metrics is scraped, on the same thread.
- No `_created` series (CoreDNS has none).
"""

from __future__ import annotations

import collections
import itertools
import math
import platform
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kdns import __version__

# No `<counter>_created` series: CoreDNS (the Go client) exports none, and they would double the
# series count of every counter and histogram.
disable_created_metrics()

# --- the Kubernetes API source (sources/kube.py) -------------------------------------------------

KUBE_SYNCS = Counter(
    "kdns_kube_syncs_total", "Completed full lists of a kind (first sync and relists).", ["kind"]
)
KUBE_RELISTS = Counter(
    "kdns_kube_relists_total",
    "Lists after the first, by why the Reflector relisted.",
    ["kind", "reason"],
)
KUBE_WATCH_RESTARTS = Counter(
    "kdns_kube_watch_restarts_total",
    "Watches opened again after the previous one ended, by how it ended.",
    ["kind", "reason"],
)
KUBE_WATCH_ERRORS = Counter(
    "kdns_kube_errors_total",
    "Failed list or watch attempts (each is followed by a backoff), by reason.",
    ["kind", "reason"],
)
KUBE_EVENTS = Counter(
    "kdns_kube_events_total", "Watch events applied to the store, by event type.", ["kind", "type"]
)
KUBE_EVENTS_SKIPPED = Counter(
    "kdns_kube_events_skipped_total",
    "Watch lines or objects skipped without being applied, by reason.",
    ["kind", "reason"],
)
KUBE_LAST_EVENT = Gauge(
    "kdns_kube_last_event_timestamp_seconds",
    "Unix time of the last watch event or bookmark received for a kind.",
    ["kind"],
)
KUBE_LAST_EVENT_AGE = Gauge(
    "kdns_kube_last_event_age_seconds",
    "Seconds since the last watch event or bookmark received for a kind.",
    ["kind"],
)
KUBE_SYNCED = Gauge("kdns_kube_synced", "1 once the kind has completed its first list.", ["kind"])

# Time from the change at the API server (the EndpointSlice controller's
# last-change-trigger-time annotation, else the watch event's arrival) to the moment kdns serves
# the new answer. Buckets as CoreDNS's `dns_programming_duration_seconds`.
DNS_PROGRAMMING_DURATION = Histogram(
    "kdns_kubernetes_dns_programming_duration_seconds",
    "Time from a Service or EndpointSlice change to the new DNS answer being served.",
    ["service_kind"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 60, 120, 300),
)

# --- DNS: listeners, answer caches and forwarding (dns/*.py) --------------------------------------
#
# CoreDNS's metric names and label sets (plugin/metrics, plugin/cache and plugin/forward READMEs)
# under the kdns_ prefix. The per-query series are not prometheus-client children: at ~50k
# queries/s a `.labels(...).inc()` per query would cost more than the rest of a cache hit. Each
# listener counts into plain dicts (`QueryStats`) and `_DnsCollector` turns them into metric
# families when /metrics is scraped. Forwarding waits on the network anyway: its metrics are
# ordinary prometheus-client children.

VIEW = ""  # CoreDNS's `view` label: kdns has a single view

# CoreDNS's plugin.TimeBuckets, ExponentialBuckets(0.00025, 2, 16): 0.25 ms … 8.192 s.
DURATION_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**i for i in range(16))
# CoreDNS's request and response size buckets (plugin/metrics/vars).
SIZE_BUCKETS: tuple[float, ...] = (
    0,
    100,
    200,
    300,
    400,
    511,
    1023,
    2047,
    4095,
    8291,
    16e3,
    32e3,
    48e3,
    64e3,
)

# The query types CoreDNS counts by name (plugin/metrics/vars monitorType); the rest are "other".
MONITORED_TYPES: dict[int, str] = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    65: "HTTPS",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
}
# miekg/dns RcodeToString; an unnamed code is "RCODE<n>" as CoreDNS's rcode.ToString.
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    16: "BADVERS",
}


def type_label(qtype: int) -> str:
    return MONITORED_TYPES.get(qtype, "other")


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, f"RCODE{rcode}")


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


class _Histogram:
    """Bucket counts (not cumulative; the last is +Inf) and the sum of one series."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, value: float, n: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

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

    zones: str  # CoreDNS's `zones` label: the zones the cache serves, comma-separated
    success: int  # entries
    denial: int
    misses: int
    hits_success: int | None = None
    hits_denial: int = 0
    served_stale: int = 0


Counts = dict[tuple[int, int, int, int], list[Any]]


class QueryStats:
    """The per-query counters of one DNS listener, for the hot path.

    Contract:
    - `counts[(proto, family)]` maps (label id, request size, response size, duration bucket) to
      [queries, seconds]. A listener counts inline — a dict get and two additions — and calls
      `add` for a key not seen yet; `record` does the same in one call off the hot path.
    - `fold` moves the counts into cumulative series (so memory is bounded by label sets, not by
      the sizes seen); the collector folds at each scrape, `add` when a dict grows large.
    - Not thread-safe: the listener and /metrics run on the same (trio) thread.
    """

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
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.request_sizes: dict[tuple[str, str], _Histogram] = {}
        self.response_sizes: dict[tuple[str, str], _Histogram] = {}
        self.caches: list[Callable[[], CacheStats | None]] = []
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


def _series(table: dict[Any, _Histogram], key: Any, bounds: tuple[float, ...]) -> _Histogram:
    found = table.get(key)
    if found is None:
        found = table[key] = _Histogram(bounds)
    return found


# Every live listener's counters, by creation order (a later one's caches win a shared label).
_LISTENERS: weakref.WeakValueDictionary[int, QueryStats] = weakref.WeakValueDictionary()
_CREATED = itertools.count()

# (name, type, label names, help) of the families `_DnsCollector` builds at scrape time.
_DNS_FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (
        "kdns_dns_requests_total",
        "counter",
        ("server", "zone", "view", "proto", "family", "type"),
        "Queries received, by zone, transport, address family (1 IPv4, 2 IPv6) and type.",
    ),
    (
        "kdns_dns_do_requests_total",
        "counter",
        ("server", "view", "zone"),
        "Queries with the DNSSEC OK (DO) bit set.",
    ),
    (
        "kdns_dns_responses_total",
        "counter",
        ("server", "zone", "view", "rcode", "plugin"),
        "Responses sent, by zone, rcode and the part of kdns that wrote them.",
    ),
    (
        "kdns_dns_request_duration_seconds",
        "histogram",
        ("server", "zone", "view", "type"),
        "Time from receiving a query to sending its response.",
    ),
    (
        "kdns_dns_request_size_bytes",
        "histogram",
        ("server", "zone", "view", "proto"),
        "Size of the queries received, in bytes.",
    ),
    (
        "kdns_dns_response_size_bytes",
        "histogram",
        ("server", "zone", "view", "proto"),
        "Size of the responses sent, in bytes.",
    ),
    (
        "kdns_cache_entries",
        "gauge",
        ("server", "type", "zones", "view"),
        "Answers in a cache, by type (success, denial).",
    ),
    (
        "kdns_cache_hits_total",
        "counter",
        ("server", "type", "zones", "view"),
        "Queries answered from a cache, by type (success, denial).",
    ),
    (
        "kdns_cache_misses_total",
        "counter",
        ("server", "zones", "view"),
        "Cache lookups that found no fresh answer.",
    ),
    (
        "kdns_cache_requests_total",
        "counter",
        ("server", "zones", "view"),
        "Cache lookups (hits and misses).",
    ),
    (
        "kdns_cache_served_stale_total",
        "counter",
        ("server", "zones", "view"),
        "Expired answers served because every upstream failed (RFC 8767).",
    ),
)


def _family(name: str) -> Any:
    kind, labels, doc = next((k, lab, d) for n, k, lab, d in _DNS_FAMILIES if n == name)
    cls = {
        "counter": CounterMetricFamily,
        "gauge": GaugeMetricFamily,
        "histogram": HistogramMetricFamily,
    }[kind]
    return cls(name, doc, labels=labels)


class _DnsCollector(Collector):
    """The per-query and cache families, built from every live `QueryStats` at scrape time."""

    def describe(self) -> Iterable[Metric]:
        return [_family(name) for name, *_ in _DNS_FAMILIES]

    def collect(self) -> Iterable[Metric]:
        # Listeners that share a `server` label (one replaced by another on reload, still
        # alive) are summed into one series each: a label set appears once per family.
        counts: dict[str, dict[tuple[str, ...], float]] = {
            name: {} for name, kind, *_ in _DNS_FAMILIES if kind != "histogram"
        }
        hists: dict[str, dict[tuple[str, ...], _Histogram]] = {
            name: {} for name, kind, *_ in _DNS_FAMILIES if kind == "histogram"
        }
        caches: dict[tuple[str, str], tuple[CacheStats, tuple[int, int]]] = {}
        for _, stats in sorted(_LISTENERS.items()):
            stats.fold()
            server = stats.server
            for (zone, proto, family, qtype), n in stats.requests.items():
                _add(
                    counts["kdns_dns_requests_total"], (server, zone, VIEW, proto, family, qtype), n
                )
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
                    merged = _series(hists[name], (server, zone, VIEW, other), hist.bounds)
                    merged.counts = [a + b for a, b in zip(merged.counts, hist.counts, strict=True)]
                    merged.sum += hist.sum
            for snapshot in stats.caches:
                cache = snapshot()
                if cache is None:
                    continue  # e.g. no forwarding: no upstream cache
                key = (server, cache.zones)
                if cache.hits_success is None:
                    # Hits counted as queries by the listeners: summed, as the requests.
                    before = caches[key][1] if key in caches else (0, 0)
                    hits = (
                        before[0] + stats.cache_hits["success"],
                        before[1] + stats.cache_hits["denial"],
                    )
                else:
                    hits = (cache.hits_success, cache.hits_denial)
                caches[key] = (cache, hits)  # the sizes and misses of the newest listener's
        for (server, zones), (cache, hits) in caches.items():
            for kind, entries, hit in (
                ("success", cache.success, hits[0]),
                ("denial", cache.denial, hits[1]),
            ):
                counts["kdns_cache_entries"][(server, kind, zones, VIEW)] = entries
                counts["kdns_cache_hits_total"][(server, kind, zones, VIEW)] = hit
            counts["kdns_cache_misses_total"][(server, zones, VIEW)] = cache.misses
            counts["kdns_cache_requests_total"][(server, zones, VIEW)] = cache.misses + sum(hits)
            counts["kdns_cache_served_stale_total"][(server, zones, VIEW)] = cache.served_stale
        out = []
        for name, *_ in _DNS_FAMILIES:
            metric = _family(name)
            if name in hists:
                for labels, hist in hists[name].items():
                    metric.add_metric(list(labels), hist.cumulative(), hist.sum)
            else:
                for labels, value in counts[name].items():
                    metric.add_metric(list(labels), value)
            out.append(metric)
        return out


def _add(table: dict[tuple[str, ...], float], key: tuple[str, ...], n: float) -> None:
    table[key] = table.get(key, 0) + n


REGISTRY.register(_DnsCollector())

BUILD_INFO = Gauge(
    "kdns_build_info", "kdns's version and the Python running it (always 1).", ["version", "python"]
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# CoreDNS counts recovered panics; kdns's request boundary (dns/handler.py) is the same place.
PANICS = Counter(
    "kdns_panics_total", "Queries whose handling raised unexpectedly (answered SERVFAIL)."
)

# A CNAME chain kdns would not follow to its end (a loop, or more than 8 links): SERVFAIL.
CNAME_CHASE_FAILURES = Counter(
    "kdns_dns_cname_chase_failures_total",
    "Answers given SERVFAIL because a CNAME chain looped or had more than 8 links.",
    ["reason"],
)

FORWARD_REQUESTS = Counter(
    "kdns_forward_requests_total", "Queries sent to an upstream (each attempt).", ["to"]
)
FORWARD_RESPONSES = Counter(
    "kdns_forward_responses_total",
    "Responses received from an upstream, by rcode.",
    ["to", "rcode"],
)
FORWARD_DURATION = Histogram(
    "kdns_forward_request_duration_seconds",
    "Time from sending a query to an upstream to its response, by rcode.",
    ["to", "rcode"],
    buckets=DURATION_BUCKETS,
)
FORWARD_ERRORS = Counter(
    "kdns_forward_errors_total",
    "Upstream attempts without a usable response, by reason (timeout, network, malformed).",
    ["to", "reason"],
)
FORWARD_HEALTHCHECK_FAILURES = Counter(
    "kdns_forward_healthcheck_failures_total",
    "Health probes (. IN NS) an unhealthy upstream did not answer.",
    ["to"],
)
FORWARD_HEALTHCHECK_BROKEN = Counter(
    "kdns_forward_healthcheck_broken_total",
    "Questions forwarded while every upstream for them was unhealthy.",
)
FORWARD_MAX_CONCURRENT_REJECTS = Counter(
    "kdns_forward_max_concurrent_rejects_total",
    "Questions refused because max_concurrent upstream exchanges were in flight.",
)


# --- CoreDNS's names (config `metrics_coredns_names`) ---------------------------------------------

# Every kdns metric with a CoreDNS counterpart; with the switch on, /metrics also carries it as
# coredns_<the rest>, so dashboards and alerts written for CoreDNS work unchanged. The copies are
# made from the collected families at scrape time: nothing is counted twice.
_COREDNS_COUNTERPARTS = (
    "kdns_build_info",
    "kdns_panics_total",
    "kdns_dns_requests_total",
    "kdns_dns_do_requests_total",
    "kdns_dns_responses_total",
    "kdns_dns_request_duration_seconds",
    "kdns_dns_request_size_bytes",
    "kdns_dns_response_size_bytes",
    "kdns_cache_entries",
    "kdns_cache_hits_total",
    "kdns_cache_misses_total",
    "kdns_cache_requests_total",
    "kdns_cache_served_stale_total",
    "kdns_forward_requests_total",
    "kdns_forward_responses_total",
    "kdns_forward_request_duration_seconds",
    "kdns_forward_healthcheck_failures_total",
    "kdns_forward_healthcheck_broken_total",
    "kdns_forward_max_concurrent_rejects_total",
    "kdns_kubernetes_dns_programming_duration_seconds",
)
# CoreDNS 1.11 moved forward's per-upstream metrics to plugin/pkg/proxy, labelled proxy_name:
# dashboards of either generation find theirs.
_COREDNS_PROXY_NAMES = {
    "kdns_forward_request_duration_seconds": "coredns_proxy_request_duration_seconds",
    "kdns_forward_healthcheck_failures_total": "coredns_proxy_healthcheck_failures_total",
}


def coredns_aliases(name: str) -> list[tuple[str, dict[str, str]]]:
    """The CoreDNS names (with any label to add) a kdns metric is also exported under."""
    if name not in _COREDNS_COUNTERPARTS:
        return []
    out = [("coredns_" + name.removeprefix("kdns_"), {})]
    if name in _COREDNS_PROXY_NAMES:
        out.append((_COREDNS_PROXY_NAMES[name], {"proxy_name": "forward"}))
    return out


def _exposed(family: Metric) -> str:
    # prometheus-client names a counter family without its `_total`; its samples carry it.
    return family.name + "_total" if family.type == "counter" else family.name


def _renamed(family: Metric, name: str, labels: dict[str, str]) -> Metric:
    base = name.removesuffix("_total") if family.type == "counter" else name
    copy = Metric(base, family.documentation, family.type, family.unit)
    copy.samples = [
        sample._replace(
            name=base + sample.name[len(family.name) :], labels={**labels, **sample.labels}
        )
        for sample in family.samples
    ]
    return copy


class WithCorednsNames:
    """A registry view for `generate_latest`: every family once, each followed by its copies
    under CoreDNS's names. One collection, so both names show the same values."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            yield family
            for name, labels in coredns_aliases(_exposed(family)):
                yield _renamed(family, name, labels)


def catalogue(coredns_names: bool = False) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric this module declares: exposed name → (type, label names), sorted by name.

    For the golden file and the dashboard test. Histograms' `le` is not listed."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in list(globals().values()):
        if isinstance(value, MetricWrapperBase):
            family = value.describe()[0]
            # prometheus-client has no public accessor for a metric's label names.
            out[_exposed(family)] = (family.type, tuple(value._labelnames))
    for name, kind, labels, _ in _DNS_FAMILIES:
        out[name] = (kind, labels)
    if coredns_names:
        for name, (kind, labels) in list(out.items()):
            for alias, extra in coredns_aliases(name):
                out[alias] = (kind, (*extra, *labels))
    return dict(sorted(out.items()))


# --- the proxy (proxy/sync.py); kube-proxy's kubeproxy_sync_proxy_rules_* under kdns_ names ----

_SYNC_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

PROXY_SYNC_DURATION = Histogram(
    "kdns_proxy_sync_duration_seconds",
    "Time to render and apply one sync of the data path, by mode and kind (full or partial).",
    ["mode", "kind"],
    buckets=_SYNC_BUCKETS,
)
PROXY_SYNCS = Counter(
    "kdns_proxy_syncs_total",
    "Syncs of the data path, by mode, kind and result.",
    ["mode", "kind", "result"],
)
PROXY_SYNC_FAILURES = Counter(
    "kdns_proxy_sync_failures_total",
    "Failed applies (each is retried as a full sync), by mode and kind.",
    ["mode", "kind"],
)
PROXY_RULES_WRITTEN = Counter(
    "kdns_proxy_rules_written_total",
    "Rules, map elements or ipvsadm commands written to the kernel, by mode.",
    ["mode"],
)
PROXY_LAST_SYNC_RULES = Gauge(
    "kdns_proxy_last_sync_rules", "Rules written by the last successful sync, by mode.", ["mode"]
)
PROXY_LAST_SYNC = Gauge(
    "kdns_proxy_last_sync_timestamp_seconds", "Unix time of the last successful sync.", ["mode"]
)
PROXY_SERVICES = Gauge(
    "kdns_proxy_service_ports", "Service ports (per IP family) the data path programs.", ["mode"]
)
PROXY_REPAIRS = Counter(
    "kdns_proxy_tamper_repairs_total",
    "Times the canary found kdns's rules removed by someone else and a full sync restored them.",
    ["mode"],
)
PROXY_CONNTRACK_DELETES = Counter(
    "kdns_proxy_conntrack_deletes_total",
    "conntrack deletions for UDP endpoints that went away, by result.",
    ["result"],
)
PROXY_PROGRAMMING_DURATION = Histogram(
    "kdns_proxy_network_programming_duration_seconds",
    "Time from a Service or EndpointSlice change to the data path carrying it.",
    buckets=_SYNC_BUCKETS,
)

# --- the userspace relay (proxy/userspace.py) ----------------------------------------------------

RELAY_CONNECTIONS = Counter(
    "kdns_userspace_connections_total",
    "Client connections (TCP) and sessions (UDP) the userspace relay handled, by result: "
    "relayed, no_endpoints (reset at once), backend_failed (every endpoint tried failed), "
    "evicted (a UDP session closed to make room).",
    ["protocol", "result"],
)
RELAY_DIAL_FAILURES = Counter(
    "kdns_userspace_endpoint_dial_failures_total",
    "Connections to an endpoint that failed or timed out (the next endpoint is tried).",
    ["protocol"],
)
RELAY_BYTES = Counter(
    "kdns_userspace_bytes_total",
    "Bytes relayed, by protocol and direction (to_endpoint, to_client).",
    ["protocol", "direction"],
)
RELAY_UDP_SESSIONS = Gauge(
    "kdns_userspace_udp_sessions", "UDP sessions (client address → endpoint) open now."
)
RELAY_LISTENERS = Gauge(
    "kdns_userspace_listeners", "VIP:port sockets the relay listens on, by protocol.", ["protocol"]
)
RELAY_UNBINDABLE = Gauge(
    "kdns_userspace_unbindable_ports",
    "Service ports the relay cannot listen on, by reason: privileged (below "
    "net.ipv4.ip_unprivileged_port_start), in_use, other.",
    ["reason"],
)

# --- reload --------------------------------------------------------------------------------------

# A config reload (SIGHUP, SIGUSR1 or a changed file), by result: "error" when the new config was
# refused and the old one kept serving (CoreDNS counts these as coredns_reload_failed_total).
RELOADS = Counter("kdns_reload_total", "Config reloads, by result (ok or error).", ["result"])

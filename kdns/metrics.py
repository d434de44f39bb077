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
  The per-query DNS series are the exception: they are declared here (`DNS_FAMILIES`, with
  their buckets and label vocabulary), and counted by the listeners themselves in plain counters
  that kdns/dns/stats.py turns into these families when /metrics is scraped.
- No `_created` series (CoreDNS has none).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
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
KUBE_LIST_RESTARTS = Counter(
    "kdns_kube_list_restarts_total",
    "Paginated lists started over because the continue token expired (410) mid-list.",
    ["kind"],
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
# listener counts into plain dicts and kdns/dns/stats.py turns them into the families declared
# here (`DNS_FAMILIES`) when /metrics is scraped. Forwarding waits on the network anyway: its
# metrics are ordinary prometheus-client children.

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


# (name, type, label names, help) of the families kdns/dns/stats.py builds at scrape time.
DNS_FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
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
        "kdns_cache_evictions_total",
        "counter",
        ("server", "type", "zones", "view"),
        "Answers dropped from a cache to stay within its entry and byte bounds, by type "
        "(success, denial).",
    ),
    (
        "kdns_cache_served_stale_total",
        "counter",
        ("server", "zones", "view"),
        "Expired answers served because every upstream failed (RFC 8767).",
    ),
    (
        "kdns_cache_prefetch_total",
        "counter",
        ("server", "zones", "view"),
        "Popular upstream answers refreshed in the background before they expire (prefetch).",
    ),
)


def dns_family(name: str) -> Any:
    """An empty family of `DNS_FAMILIES` to fill at scrape time."""
    kind, labels, doc = next((k, lab, d) for n, k, lab, d in DNS_FAMILIES if n == name)
    cls = {
        "counter": CounterMetricFamily,
        "gauge": GaugeMetricFamily,
        "histogram": HistogramMetricFamily,
    }[kind]
    return cls(name, doc, labels=labels)


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

# RFC 7766 §6.2.2: a server under pressure closes idle connections to admit new clients.
DNS_TCP_EVICTIONS = Counter(
    "kdns_dns_tcp_evictions_total",
    "Idle TCP connections closed to admit a new one, by reason: server_limit (the listener's "
    "connection limit), client_limit (one client address's limit), fd_limit (no file "
    "descriptor left).",
    ["server", "reason"],
)

# kdns/dns/receiver.py: the receive thread's backlog of misses for trio is bounded.
DNS_UDP_DROPPED = Counter(
    "kdns_dns_udp_dropped_total",
    "UDP queries dropped unanswered because the receive thread's backlog of queries waiting "
    "for the trio loop was full (as a full socket buffer would drop them).",
    ["server"],
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

# The receive threads' relay of forwarded misses (dns/miss_relay.py, dns/relayed.py): kdns's own,
# no CoreDNS counterpart. Its exchanges are also counted in the kdns_forward_* series above, as
# trio's are; these say which misses took the relay and what became of them. The receive thread
# never touches these objects: it notes each exchange's end in a record, which trio folds in
# `RelayedMisses.batch` (one increment per label set and batch).
RELAY_OUTCOMES = ("answered", "truncated", "stale", "timeout", "network", "malformed", "stopped")
FORWARD_RELAY_EXCHANGES = Counter(
    "kdns_forward_relay_exchanges_total",
    "Upstream exchanges the UDP receive threads made themselves for forwarded misses, by how "
    "each ended: answered (any rcode, the clients answered by the receive thread), truncated "
    "(TC: trio asks over TCP), stale (SERVFAIL while a stale answer waits: trio serves it), "
    "timeout, network (a socket error), malformed (a reply that did not parse), stopped (the "
    "forwarder stopped, e.g. a reload, or the listener closed while in flight). Every outcome "
    "but answered hands the exchange's clients back to trio.",
    ["to", "outcome"],
)
FORWARD_RELAY_COALESCED = Counter(
    "kdns_forward_relay_coalesced_total",
    "Client queries that joined a relayed exchange already in flight for the same question "
    "instead of sending their own.",
    ["to"],
)
FORWARD_RELAY_HANDED_BACK = Counter(
    "kdns_forward_relay_handed_back_total",
    "Client queries of relayed exchanges handed back to trio, which answers them itself "
    "(retry, next upstream, TCP, serve-stale), by the outcome of their exchange.",
    ["to", "outcome"],
)
# A relay's declines are one int its receive thread counts (MissRelay.declined); trio adds what
# each relay declined since the last batch (a decline always waits on an exchange in flight,
# whose end brings a batch).
FORWARD_RELAY_DECLINED = Counter(
    "kdns_forward_relay_declined_total",
    "Forwarded misses a receive thread's relay declined at its limit (max_concurrent exchanges "
    "in flight, or 1,024 clients already waiting on the exchange for the same question) and "
    "left to trio, which answers them itself.",
)
FORWARD_RELAY_IN_FLIGHT = Gauge(
    "kdns_forward_relay_in_flight",
    "Upstream exchanges the UDP receive threads' relays have in flight now (read at scrape time).",
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
    "kdns_cache_prefetch_total",
    "kdns_cache_evictions_total",
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
            labels = tuple(value._labelnames)  # noqa: SLF001 (prometheus-client's own)
            out[_exposed(family)] = (family.type, labels)
    for name, kind, labels, _ in DNS_FAMILIES:
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
# The node DNS's autopath (`kdns proxy --dns --dns-autopath`) holds this node's pods only;
# `kdns serve` exports no count of its pods, so there is no existing name to reuse.
NODE_DNS_PODS = Gauge(
    "kdns_node_dns_pods",
    "Pods the node DNS holds for autopath: those scheduled on this node.",
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

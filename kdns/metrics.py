"""Every Prometheus metric kdns exports, declared in one place.

Contract:
- Metrics live in the process-wide default registry (prometheus-client), which also carries the
  process collector (resident memory, CPU seconds, open fds) operators already graph.
- Names carry the `kdns_` prefix; label sets follow CoreDNS's where one exists
  (`coredns_kubernetes_dns_programming_duration_seconds{service_kind}`).
- Updating a metric is thread-safe (prometheus-client locks), so Reflector threads may count.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

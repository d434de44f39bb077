"""kdns/metrics.py without a server: CoreDNS's label vocabulary and names. (tests/dns/test_stats.py
checks the listeners' counters; tests/e2e/test_metrics.py the same against the real process.)"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kdns import metrics


def test_type_and_rcode_labels_are_coredns_s() -> None:
    assert [metrics.type_label(t) for t in (1, 28, 33, 65, 255, 99, 65280)] == [
        "A",
        "AAAA",
        "SRV",
        "HTTPS",
        "ANY",
        "other",
        "other",
    ]
    assert len(metrics.MONITORED_TYPES) == 18
    assert [metrics.rcode_name(r) for r in (0, 2, 3, 5, 16, 11)] == [
        "NOERROR",
        "SERVFAIL",
        "NXDOMAIN",
        "REFUSED",
        "BADVERS",
        "RCODE11",
    ]


def test_coredns_names_are_copies_made_at_scrape_time() -> None:
    registry = CollectorRegistry()
    requests = Counter("kdns_forward_requests_total", "d", ["to"], registry=registry)
    other = Counter("kdns_kube_syncs_total", "d", ["kind"], registry=registry)
    requests.labels("10.0.0.2:53").inc(3)
    other.labels("Service").inc()
    text = generate_latest(metrics.WithCorednsNames(registry)).decode()  # type: ignore[arg-type]
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert values[("coredns_forward_requests_total", (("to", "10.0.0.2:53"),))] == 3
    assert values[("kdns_forward_requests_total", (("to", "10.0.0.2:53"),))] == 3
    # No CoreDNS counterpart, no copy.
    assert not any(name.startswith("coredns_kube") for name, _ in values)
    assert metrics.coredns_aliases("kdns_forward_request_duration_seconds") == [
        ("coredns_forward_request_duration_seconds", {}),
        ("coredns_proxy_request_duration_seconds", {"proxy_name": "forward"}),
    ]


def test_the_relay_series_are_kdns_s_own() -> None:
    # The receive threads' relay has no CoreDNS counterpart: no coredns_ copy of its series.
    relay = [name for name in metrics.catalogue() if name.startswith("kdns_forward_relay_")]
    assert relay == [
        "kdns_forward_relay_coalesced_total",
        "kdns_forward_relay_declined_total",
        "kdns_forward_relay_exchanges_total",
        "kdns_forward_relay_handed_back_total",
        "kdns_forward_relay_in_flight",
    ]
    assert all(metrics.coredns_aliases(name) == [] for name in relay)
    assert metrics.catalogue()["kdns_forward_relay_exchanges_total"] == (
        "counter",
        ("to", "outcome"),
    )
    # Each outcome is explained where operators read it (the metric's HELP).
    help_text = metrics.FORWARD_RELAY_EXCHANGES.describe()[0].documentation
    assert all(outcome in help_text for outcome in metrics.RELAY_OUTCOMES)

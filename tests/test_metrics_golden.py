"""The golden list of every metric kdns exports, with its type and label names.

A rename, a new label or a new metric changes /metrics for every dashboard and alert that reads
it, so it must be a conscious change: this test fails until tests/golden/metrics.txt says the
same (regenerate it with `python -m tests.test_metrics_golden > tests/golden/metrics.txt` and
review the diff). The list holds kdns's own metrics, their CoreDNS names, and the process and
Python collectors of prometheus-client that the default registry carries.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from kdns import metrics

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    out = metrics.catalogue(coredns_names=True)
    for family in REGISTRY.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        if name.startswith(("kdns_", "coredns_")) or name in out:
            continue
        labels: dict[str, None] = {}
        for sample in family.samples:
            labels.update(dict.fromkeys(k for k in sample.labels if k != "le"))
        out[name] = (family.type, tuple(labels))
    return dict(sorted(out.items()))


def render(table: dict[str, tuple[str, tuple[str, ...]]]) -> str:
    lines = ["# metric type labels (regenerate: python -m tests.test_metrics_golden)"]
    lines += [f"{name} {kind} {','.join(labels) or '-'}" for name, (kind, labels) in table.items()]
    return "\n".join(lines) + "\n"


def golden() -> dict[str, tuple[str, tuple[str, ...]]]:
    out = {}
    for line in GOLDEN.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        out[name] = (kind, () if labels == "-" else tuple(labels.split(",")))
    return out


def test_the_exported_metrics_match_the_golden_file() -> None:
    assert render(exported()) == GOLDEN.read_text(), (
        "the exported metrics changed: if on purpose, regenerate tests/golden/metrics.txt "
        "(python -m tests.test_metrics_golden > tests/golden/metrics.txt) and review the diff"
    )


def test_label_sets_follow_coredns() -> None:
    # CoreDNS's label sets (plugin/metrics, plugin/cache, plugin/forward READMEs), in its order.
    table = golden()
    assert table["coredns_dns_requests_total"] == (
        "counter",
        ("server", "zone", "view", "proto", "family", "type"),
    )
    assert table["coredns_dns_responses_total"][1] == ("server", "zone", "view", "rcode", "plugin")
    assert table["coredns_dns_request_duration_seconds"] == (
        "histogram",
        ("server", "zone", "view", "type"),
    )
    for name in ("coredns_dns_request_size_bytes", "coredns_dns_response_size_bytes"):
        assert table[name] == ("histogram", ("server", "zone", "view", "proto"))
    assert table["coredns_dns_do_requests_total"][1] == ("server", "view", "zone")
    assert table["coredns_cache_entries"] == ("gauge", ("server", "type", "zones", "view"))
    assert table["coredns_cache_hits_total"][1] == ("server", "type", "zones", "view")
    assert table["coredns_cache_misses_total"][1] == ("server", "zones", "view")
    assert table["coredns_forward_requests_total"][1] == ("to",)
    assert table["coredns_forward_responses_total"][1] == ("to", "rcode")
    assert table["coredns_forward_request_duration_seconds"][1] == ("to", "rcode")
    assert table["coredns_proxy_request_duration_seconds"][1] == ("proxy_name", "to", "rcode")
    assert table["coredns_forward_healthcheck_failures_total"][1] == ("to",)
    # Every coredns_ name is a kdns_ one renamed (plus proxy_name for the 1.11 proxy names).
    for name, (kind, labels) in table.items():
        if name.startswith("coredns_proxy_"):
            twin = "kdns_forward_" + name.removeprefix("coredns_proxy_")
            assert table[twin] == (kind, labels[1:]), name
        elif name.startswith("coredns_"):
            assert table["kdns_" + name.removeprefix("coredns_")] == (kind, labels), name


def test_buckets_are_coredns_buckets() -> None:
    assert metrics.DURATION_BUCKETS[0] == 0.00025
    assert metrics.DURATION_BUCKETS[-1] == 8.192
    assert len(metrics.DURATION_BUCKETS) == 16
    assert metrics.SIZE_BUCKETS == (
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


if __name__ == "__main__":
    print(render(exported()), end="")

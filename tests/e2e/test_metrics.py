"""/metrics of a real `python -m kdns serve` after known traffic: exact counts and label sets.

Every figure is a difference between two scrapes around the traffic the test sends (the start-up
probe of kdns_factory asks its own questions), over a raw socket so the exact request and
response sizes are known. dnsmasq on loopback is the upstream for forwarded names.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kdns import metrics
from tests.dns import upstreams
from tests.e2e.conftest import EXAMPLES, HOST, Kdns, KdnsFactory

SERVICE = "myapp.default.svc.cluster.local"
MISSING = "nothere.default.svc.cluster.local"
ZONE = "cluster.local."
CACHE_ZONES = "cluster.local.,in-addr.arpa.,ip6.arpa."

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(server: Kdns) -> int:
    found = re.search(r"serving /metrics on \S+ port (\d+)", server.stderr())
    assert found, server.stderr()
    return int(found.group(1))


def scrape(server: Kdns) -> tuple[str, Samples]:
    url = f"http://{HOST}:{metrics_port(server)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for n, labels in samples if n == name]


def udp(port: int, query: dns.message.Message) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(query.to_wire(), (HOST, port))
        while True:
            data = sock.recv(65535)
            if data[:2] == query.to_wire()[:2]:
                return data


def tcp(port: int, query: dns.message.Message) -> bytes:
    wire = query.to_wire()
    with socket.create_connection((HOST, port), timeout=3) as sock:
        sock.sendall(len(wire).to_bytes(2) + wire)
        data = b""
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2]):
            chunk = sock.recv(65535)
            assert chunk, "kdns closed the TCP connection"
            data += chunk
    return data[2:]


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[upstreams.Dnsmasq]:
    with upstreams.dnsmasq(tmp_path / "dnsmasq", authoritative=False) as server:
        yield server


def traffic(port: int) -> dict[str, list[int]]:
    """The known traffic; returns the request and response sizes sent and received, by kind."""
    sizes: dict[str, list[int]] = {"a": [], "nx": [], "aaaa": [], "fwd": [], "do": []}
    for _ in range(7):
        q = dns.message.make_query(SERVICE, "A")
        sizes["a"] += [len(q.to_wire()), len(udp(port, q))]
    for _ in range(3):
        q = dns.message.make_query(MISSING, "A")
        response = udp(port, q)
        assert response[3] & 0xF == 3  # NXDOMAIN
        sizes["nx"] += [len(q.to_wire()), len(response)]
    for _ in range(2):
        q = dns.message.make_query(SERVICE, "AAAA")
        sizes["aaaa"] += [len(q.to_wire()), len(tcp(port, q))]
    for _ in range(2):
        q = dns.message.make_query(f"www.{upstreams.ZONE}", "A")
        response = udp(port, q)
        assert response[3] & 0xF == 0 and int.from_bytes(response[6:8]) == 1
        sizes["fwd"] += [len(q.to_wire()), len(response)]
    q = dns.message.make_query(SERVICE, "A", want_dnssec=True)
    sizes["do"] += [len(q.to_wire()), len(udp(port, q))]
    return sizes


def delta(after: Samples, before: Samples) -> Samples:
    return {key: v - before.get(key, 0.0) for key, v in after.items() if v != before.get(key)}


def test_known_traffic_gives_exact_counts_and_label_sets(
    kdns_factory: KdnsFactory, dnsmasq: upstreams.Dnsmasq
) -> None:
    server = kdns_factory(EXAMPLES, "--upstreams", dnsmasq.address)
    _, before = scrape(server)
    sizes = traffic(server.port)
    text, after = scrape(server)
    d = delta(after, before)
    s = f"dns://{HOST}:{server.port}"
    to = dnsmasq.address

    def req(zone: str, proto: str, qtype: str) -> float:
        return value(
            d,
            "kdns_dns_requests_total",
            server=s,
            zone=zone,
            view="",
            proto=proto,
            family="1",
            type=qtype,
        )

    assert req(ZONE, "udp", "A") == 7 + 3 + 1
    assert req(ZONE, "tcp", "AAAA") == 2
    assert req(".", "udp", "A") == 2
    # Nothing else was counted: every changed request series is one of these three.
    changed = {labels for name, labels in d if name == "kdns_dns_requests_total"}
    assert len(changed) == 3

    def resp(zone: str, rcode: str, plugin: str) -> float:
        return value(
            d,
            "kdns_dns_responses_total",
            server=s,
            zone=zone,
            view="",
            rcode=rcode,
            plugin=plugin,
        )

    assert resp(ZONE, "NOERROR", "kubernetes") == 7 + 2 + 1
    assert resp(ZONE, "NXDOMAIN", "kubernetes") == 3
    assert resp(".", "NOERROR", "forward") == 1  # the first www.test went upstream
    assert resp(".", "NOERROR", "cache") == 1  # the second came from the upstream cache
    assert value(d, "kdns_dns_do_requests_total", server=s, view="", zone=ZONE) == 1

    # Histograms: one observation per query, sizes summed exactly.
    for qtype, n in (("A", 11), ("AAAA", 2)):
        labels = {"server": s, "zone": ZONE, "view": "", "type": qtype}
        assert value(d, "kdns_dns_request_duration_seconds_count", **labels) == n
        inf = value(d, "kdns_dns_request_duration_seconds_bucket", le="+Inf", **labels)
        assert inf == n
    udp_zone = {"server": s, "zone": ZONE, "view": "", "proto": "udp"}
    udp_requests = sizes["a"][0::2] + sizes["nx"][0::2] + sizes["do"][0::2]
    udp_responses = sizes["a"][1::2] + sizes["nx"][1::2] + sizes["do"][1::2]
    assert value(d, "kdns_dns_request_size_bytes_count", **udp_zone) == 11
    assert value(d, "kdns_dns_request_size_bytes_sum", **udp_zone) == sum(udp_requests)
    assert value(d, "kdns_dns_response_size_bytes_sum", **udp_zone) == sum(udp_responses)
    tcp_zone = {**udp_zone, "proto": "tcp"}
    assert value(d, "kdns_dns_request_size_bytes_sum", **tcp_zone) == sum(sizes["aaaa"][0::2])
    assert value(d, "kdns_dns_response_size_bytes_sum", **tcp_zone) == sum(sizes["aaaa"][1::2])
    # Every query here is under 100 octets, and so in the bucket le="100".
    assert value(d, "kdns_dns_request_size_bytes_bucket", le="100.0", **udp_zone) == 11
    assert value(d, "kdns_dns_request_size_bytes_bucket", le="0.0", **udp_zone) == 0

    # The answer cache: the first of each question is a miss, the repeats hits. The DO query
    # has its own key (EDNS): one more miss. AAAA for a Service without IPv6 is NODATA: denial.
    cache = {"server": s, "zones": CACHE_ZONES, "view": ""}
    assert value(d, "kdns_cache_hits_total", type="success", **cache) == 6
    assert value(d, "kdns_cache_hits_total", type="denial", **cache) == 2 + 1
    # Misses: A, NXDOMAIN, AAAA, the DO query, and the two forwarded names (not ours).
    assert value(d, "kdns_cache_misses_total", **cache) == 6
    assert value(d, "kdns_cache_requests_total", **cache) == 6 + 3 + 6
    assert value(after, "kdns_cache_entries", type="success", **cache) >= 2  # A, A+DO
    assert value(after, "kdns_cache_entries", type="denial", **cache) >= 2  # NXDOMAIN, NODATA
    upstream = {"server": s, "zones": ".", "view": ""}
    assert value(d, "kdns_cache_hits_total", type="success", **upstream) == 1
    assert value(d, "kdns_cache_misses_total", **upstream) == 1
    assert value(after, "kdns_cache_entries", type="success", **upstream) == 1

    # Forwarding, per upstream.
    assert value(d, "kdns_forward_requests_total", to=to) == 1
    assert value(d, "kdns_forward_responses_total", to=to, rcode="NOERROR") == 1
    assert value(d, "kdns_forward_request_duration_seconds_count", to=to, rcode="NOERROR") == 1
    assert dnsmasq.count(f"www.{upstreams.ZONE}", "A") == 1
    # That exchange was the receive thread's own (the relay), answered; nothing handed back or
    # coalesced. Folded before the second www.test was answered: either the receive thread
    # answered it from the shape trio registered while folding, or trio folded before it read
    # the upstream cache.
    relay = {(n, labels) for n, labels in d if n.startswith("kdns_forward_relay_")}
    assert relay == {
        ("kdns_forward_relay_exchanges_total", frozenset({("to", to), ("outcome", "answered")}))
    }
    assert value(d, "kdns_forward_relay_exchanges_total", to=to, outcome="answered") == 1
    assert value(after, "kdns_forward_relay_in_flight") == 0

    # Build info, and no CoreDNS names unless asked.
    assert series(after, "kdns_build_info")[0]["version"]
    assert "coredns_" not in text


def test_coredns_names_carry_the_same_values(
    kdns_factory: KdnsFactory, dnsmasq: upstreams.Dnsmasq
) -> None:
    server = kdns_factory(EXAMPLES, "--upstreams", dnsmasq.address, "--metrics-coredns-names")
    traffic(server.port)
    text, samples = scrape(server)
    aliased = set()
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("kdns_"):
            continue
        exposed = family.name + ("_total" if family.type == "counter" else "")
        for alias, extra in metrics.coredns_aliases(exposed):
            alias_base = alias.removesuffix("_total") if family.type == "counter" else alias
            for sample in family.samples:
                renamed = alias_base + sample.name[len(family.name) :]
                key = (renamed, frozenset({**sample.labels, **extra}.items()))
                assert samples.get(key) == sample.value, (sample, renamed)
            aliased.add(alias)
    # Every CoreDNS name kdns promises is there (with or without series yet).
    assert aliased == {a for n in metrics.catalogue() for a, _ in metrics.coredns_aliases(n)}
    s = f"dns://{HOST}:{server.port}"
    labels = {"server": s, "zone": ZONE, "view": "", "proto": "udp", "family": "1", "type": "A"}
    assert value(samples, "coredns_dns_requests_total", **labels) >= 11
    to = dnsmasq.address
    assert value(samples, "coredns_forward_requests_total", to=to) == 1
    duration = {"to": to, "rcode": "NOERROR"}
    assert value(samples, "coredns_forward_request_duration_seconds_count", **duration) == 1
    proxy = {"proxy_name": "forward", **duration}
    assert value(samples, "coredns_proxy_request_duration_seconds_count", **proxy) == 1


def test_every_scraped_metric_is_in_the_golden_file(
    kdns_factory: KdnsFactory, dnsmasq: upstreams.Dnsmasq
) -> None:
    from tests.test_metrics_golden import golden

    server = kdns_factory(EXAMPLES, "--upstreams", dnsmasq.address, "--metrics-coredns-names")
    traffic(server.port)
    text, _ = scrape(server)
    expected = golden()
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in expected, f"{name} is exported but not in tests/golden/metrics.txt"
        kind, labels = expected[name]
        assert family.type == kind, name
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            names = set(sample.labels) - {"le"}
            assert names == set(labels), (sample.name, sorted(names), labels)

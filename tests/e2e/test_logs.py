"""Logs of a real `python -m kdns serve`: the query log (CoreDNS's line and JSON) parsed field by
field, JSON log lines, and a thousand upstream timeouts consolidated into two lines."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest

from tests.e2e.conftest import EXAMPLES, HOST, Kdns, KdnsFactory, write_atomically
from tests.e2e.test_metrics import scrape, value

WAIT = 10.0  # seconds: the bound on waiting for a log line
SERVICE = "myapp.default.svc.cluster.local."

# CoreDNS's common log format (plugin/log README), one capture group per field.
LINE = re.compile(
    r'^\[INFO\] (?P<remote>\S+):(?P<port>\d+) - (?P<id>\d+) "(?P<type>\S+) (?P<class>\S+) '
    r'(?P<name>\S+) (?P<proto>udp|tcp) (?P<size>\d+) (?P<do>true|false) (?P<bufsize>\d+)" '
    r"(?P<rcode>[A-Z]+) (?P<rflags>[a-z,]+) (?P<rsize>\d+) (?P<duration>[0-9.]+)s$"
)


def wait_for(server: Kdns, predicate, what: str) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while True:
        lines = server.stderr().splitlines()
        if predicate(lines):
            return lines
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not logged within {WAIT} s:\n" + "\n".join(lines[-40:]))
        time.sleep(0.05)


def ask_from(port: int, query: dns.message.Message, tcp: bool = False) -> tuple[int, bytes]:
    """(our source port, the raw response)."""
    wire = query.to_wire()
    if tcp:
        with socket.create_connection((HOST, port), timeout=3) as sock:
            sock.sendall(len(wire).to_bytes(2) + wire)
            data = b""
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2]):
                data += sock.recv(65535)
            return sock.getsockname()[1], data[2:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.bind((HOST, 0))
        sock.sendto(wire, (HOST, port))
        return sock.getsockname()[1], sock.recv(65535)


def known_queries(port: int) -> list[dict[str, object]]:
    """Three queries and what the log must say about each."""
    expected = []
    cases = [
        (dns.message.make_query(SERVICE, "A"), False, "A", "NOERROR", "qr,aa,rd", False, 512),
        (
            dns.message.make_query(
                "nope.default.svc.cluster.local.", "AAAA", want_dnssec=True, payload=4096
            ),
            False,
            "AAAA",
            "NXDOMAIN",
            "qr,aa,rd",
            True,
            4096,
        ),
        (dns.message.make_query(SERVICE, "SRV"), True, "SRV", "NOERROR", "qr,aa,rd", False, 65535),
    ]
    for query, tcp, qtype, rcode, rflags, do, bufsize in cases:
        source, reply = ask_from(port, query, tcp)
        expected.append(
            {
                "remote": HOST,
                "port": source,
                "id": query.id,
                "type": qtype,
                "class": "IN",
                "name": str(query.question[0].name),
                "proto": "tcp" if tcp else "udp",
                "size": len(query.to_wire()),
                "do": do,
                "bufsize": bufsize,
                "rcode": rcode,
                "rflags": rflags,
                "rsize": len(reply),
            }
        )
    return expected


def test_query_log_in_coredns_format(kdns_factory: KdnsFactory) -> None:
    server = kdns_factory(EXAMPLES, "--query-log")
    expected = known_queries(server.port)
    ids = {str(e["id"]) for e in expected}

    def parsed(lines: list[str]) -> list[dict[str, str]]:
        found = [m.groupdict() for line in lines if (m := LINE.match(line))]
        return [f for f in found if f["id"] in ids]

    lines = wait_for(server, lambda lines: len(parsed(lines)) == 3, "three query lines")
    got = sorted(parsed(lines), key=lambda f: int(f["port"]))
    for fields, want in zip(got, sorted(expected, key=lambda e: int(e["port"])), strict=True):
        assert 0 < float(fields.pop("duration")) < 1
        assert fields == {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in want.items()
        }


def test_query_log_as_json(kdns_factory: KdnsFactory) -> None:
    server = kdns_factory(EXAMPLES, "--query-log", "json", "--log-format", "json")
    expected = known_queries(server.port)
    ids = {e["id"] for e in expected}

    def parsed(lines: list[str]) -> list[dict[str, object]]:
        records = [json.loads(line) for line in lines]
        return [r for r in records if r.get("id") in ids]

    lines = wait_for(server, lambda lines: len(parsed(lines)) == 3, "three JSON query lines")
    for record, want in zip(
        sorted(parsed(lines), key=lambda r: r["port"]),
        sorted(expected, key=lambda e: e["port"]),
        strict=True,
    ):
        assert record.pop("time").endswith("Z")
        assert record.pop("level") == "info"
        assert 0 < record.pop("duration") < 1
        assert record == want


def test_json_log_lines(kdns_factory: KdnsFactory) -> None:
    server = kdns_factory(EXAMPLES, "--log-format", "json")
    lines = server.stderr().splitlines()
    assert lines, "kdns logged nothing at start-up"
    for line in lines:
        record = json.loads(line)
        assert set(record) >= {"time", "level", "logger", "msg"}, record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    messages = [json.loads(line)["msg"] for line in lines]
    assert any(m.startswith("serving DNS on 127.0.0.1") for m in messages)


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    """A UDP socket on loopback that never answers (and never reads): every query times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


def test_a_thousand_timeouts_are_consolidated(
    kdns_factory: KdnsFactory, silent_upstream: int, tmp_path: Path
) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text("forward_timeout: 0.05\nlog_consolidate: 3\n")
    upstream = f"{HOST}:{silent_upstream}"
    server = kdns_factory(EXAMPLES, "--config", str(config), "--upstreams", upstream)
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i in range(1000):
            client.sendto(
                dns.message.make_query(f"n{i}.example.org.", "A").to_wire(), (HOST, server.port)
            )
            if i % 100 == 99:
                time.sleep(0.05)  # paced, so no queue on the way drops any
    assert time.monotonic() - start < 1.0, "the 1,000 queries took more than a second to send"
    pattern = f"forward to {upstream}: timeout"
    summary = re.compile(
        rf"ERROR kdns\.dns\.forward: (\d+) similar errors in the last 3s: {re.escape(pattern)}$"
    )

    def summed(lines: list[str]) -> int:
        return sum(int(m.group(1)) for line in lines if (m := summary.search(line)))

    lines = wait_for(server, lambda lines: summed(lines) >= 1000, "a count of 1000 timeouts")
    # The first timeout, as CoreDNS's errors plugin writes it; every other one only counted.
    first = re.compile(
        rf"ERROR kdns\.dns\.forward: n\d+\.example\.org\. A: forward to {re.escape(upstream)}: "
        r"no answer within 0\.05 s$"
    )
    assert sum(1 for line in lines if first.search(line)) == 1
    counts = [int(m.group(1)) for line in lines if (m := summary.search(line))]
    # All came within one interval of the first: one count line (two if the last ones were late).
    assert sum(counts) == 1000 and len(counts) <= 2, counts
    forwarded = [line for line in lines if "kdns.dns.forward" in line]
    unhealthy = [line for line in forwarded if "is unhealthy" in line]
    assert len(forwarded) == 1 + len(counts) + len(unhealthy) and len(unhealthy) == 1, forwarded
    _, samples = scrape(server)
    assert value(samples, "kdns_forward_errors_total", to=upstream, reason="timeout") == 1000


def test_malformed_queries_are_answered_counted_and_logged_once_per_interval(
    kdns_factory: KdnsFactory, tmp_path: Path
) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text("log_consolidate: 1\n")
    server = kdns_factory(EXAMPLES, "--config", str(config))
    # A header with no question (qdcount 0): FORMERR, with the client's ID (dnslib alone would
    # parse it; kdns must not).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(3)
        for i in range(200):
            client.sendto(i.to_bytes(2) + bytes(10), (HOST, server.port))
            reply = client.recv(512)
            assert reply[:2] == i.to_bytes(2) and reply[3] & 0xF == 1  # FORMERR
    summary = re.compile(
        r"WARNING kdns\.dns\.handler: (\d+) similar errors in the last 1s: "
        r"malformed queries answered FORMERR$"
    )
    lines = wait_for(
        server,
        lambda lines: sum(int(m.group(1)) for ln in lines if (m := summary.search(ln))) >= 200,
        "a count of 200 malformed queries",
    )
    shown = [ln for ln in lines if "malformed query from 127.0.0.1: answered FORMERR" in ln]
    counts = [int(m.group(1)) for ln in lines if (m := summary.search(ln))]
    # One shown per interval in which they started again, and every one counted once.
    assert len(shown) >= 1 and sum(counts) == 200, (shown, counts)
    assert len(shown) <= len(counts) <= 3, (shown, counts)
    _, samples = scrape(server)
    labels = {"server": f"dns://{HOST}:{server.port}", "zone": "dropped", "view": ""}
    assert value(samples, "kdns_dns_responses_total", **labels, rcode="FORMERR", plugin="") == 200


def test_a_reload_turns_json_logs_the_query_log_and_the_coredns_names_on(
    kdns_factory: KdnsFactory, tmp_path: Path
) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text("query_log: false\n")
    server = kdns_factory(EXAMPLES, "--config", str(config), "--reload-interval", "0.2")
    text, _ = scrape(server)
    assert "coredns_dns_requests_total" not in text
    write_atomically(config, "query_log: json\nmetrics_coredns_names: true\nlog_format: json\n")

    def reloaded(lines: list[str]) -> bool:
        # Logged after the switch: already a JSON line.
        return any(
            ln.startswith("{") and "config reloaded" in json.loads(ln)["msg"] for ln in lines
        )

    wait_for(server, reloaded, "the reload, logged as JSON")
    query = dns.message.make_query(SERVICE, "A")
    ask_from(server.port, query)

    def logged(lines: list[str]) -> bool:
        return any(ln.startswith("{") and json.loads(ln).get("id") == query.id for ln in lines)

    wait_for(server, logged, "the JSON query line")
    text, _ = scrape(server)
    assert "coredns_dns_requests_total{" in text

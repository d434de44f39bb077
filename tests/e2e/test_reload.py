"""Reloading the config of a running kdns: a changed file, SIGHUP, SIGUSR1.

Real processes and real clients: `python -m kdns serve --config FILE`, dnspython queries, a
steady UDP query stream that must lose nothing across reloads, /metrics scraped over HTTP, and
Debian's dnsmasq (tests/dns/upstreams.py) as the real server of a stub domain on loopback.
"""

from __future__ import annotations

import math
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.dns.upstreams import ACME_V4, dnsmasq
from tests.e2e.conftest import EXAMPLES, HOST, ask, free_port, write_atomically
from tests.e2e.running import (
    QueryStream,
    Served,
    free_tcp_port,
    http_get,
    metric_value,
    start_on_free_ports,
    udp_answers,
)

REDIS = "redis.default.svc.cluster.local"
ACME = "www.acme.local"
POD = "10-244-1-5.default.pod.cluster.local"
WAIT = 15.0  # seconds any reload may take to show; a passing test never comes close


class Setup:
    """The config file of one kdns, with its ports."""

    def __init__(self, tmp_path: Path, **keys: object) -> None:
        self.path = tmp_path / "kdns.yaml"
        self.log = tmp_path / "kdns.log"
        self.dns = free_port()
        self.metrics = free_tcp_port()
        self.keys: dict[str, object] = {
            "manifests": [str(EXAMPLES)],
            "dns_addr": f"{HOST}:{self.dns}",
            "health_addr": f"{HOST}:0",
            "ready_addr": f"{HOST}:0",
            "metrics_addr": f"{HOST}:{self.metrics}",
            "upstreams": [],
            "lameduck": 0,  # the teardown's SIGTERM stops it at once
            **keys,
        }

    def use_ports(self, dns_port: int, metrics_port: int) -> None:
        self.dns, self.metrics = dns_port, metrics_port
        self.keys["dns_addr"] = f"{HOST}:{self.dns}"
        self.keys["metrics_addr"] = f"{HOST}:{self.metrics}"

    def text(self, **changes: object) -> str:
        keys = {**self.keys, **changes}
        return "# kdns under test\n" + "".join(f"{k}: {_yaml(v)}\n" for k, v in keys.items())

    def write(self, text: str) -> None:
        write_atomically(self.path, text)

    def reloads(self, result: str) -> float:
        return metric_value(self.metrics, "kdns_reload_total", {"result": result})


def _yaml(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"'{v}'" for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"'{k}': {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.fixture
def started() -> Iterator[list[Served]]:
    servers: list[Served] = []
    yield servers
    for server in servers:
        server.stop()


def start(setup: Setup, started: list[Served]) -> Served:
    """Start kdns from the setup's file, on new ports if it lost one to another process."""

    def write(dns_port: int, metrics_port: int) -> Path:
        setup.use_ports(dns_port, metrics_port)
        setup.path.write_text(setup.text())
        return setup.path

    server, _, _ = start_on_free_ports(write, setup.log)
    started.append(server)
    return server


def wait_for(condition: object, what: str, server: Served, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout} s:\n{server.stderr()}")


def ttl_of(port: int, name: str = REDIS) -> int:
    response = ask(port, name)
    assert response.rcode() == dns.rcode.NOERROR, response
    return response.answer[0].ttl


def refused_lines(server: Served) -> list[str]:
    return [line for line in server.stderr().splitlines() if "config reload refused" in line]


def test_broken_files_keep_the_old_config_then_a_good_one_adds_a_stub_domain(
    tmp_path: Path, started: list[Served]
) -> None:
    with dnsmasq(tmp_path / "dnsmasq") as acme:
        setup = Setup(tmp_path, reload_interval=0.2)
        server = start(setup, started)
        port = setup.dns
        assert ask(port, ACME).rcode() == dns.rcode.REFUSED  # no upstream, no stub domain yet
        assert ask(port, POD).rcode() == dns.rcode.NOERROR  # pods: insecure (the default)
        assert ttl_of(port) == 5
        with QueryStream(port, REDIS, rate=500) as stream:
            wait_for(lambda: len(stream.answers) >= 50, "the stream's first answers", server)
            started_reloading = time.monotonic()
            # 1. Not YAML: refused, one line naming the file and the line.
            setup.write(setup.text() + "zones: [cluster.local\n")
            wait_for(lambda: setup.reloads("error") == 1, "the first refused reload", server)
            (line,) = refused_lines(server)
            assert re.search(rf"{re.escape(str(setup.path))}:\d+: YAML syntax error: ", line), line
            # 2. Valid YAML, a value out of range: refused, naming file, line and key.
            setup.write(setup.text(ttl=99999))
            wait_for(lambda: setup.reloads("error") == 2, "the second refused reload", server)
            ttl_line = setup.text(ttl=99999).splitlines().index("ttl: 99999") + 1
            assert refused_lines(server)[1].endswith(
                f"{setup.path}:{ttl_line}: ttl: must be a whole number of seconds in 0-3600 "
                "(got 99999)"
            ), refused_lines(server)
            # The old config keeps serving all along.
            assert ttl_of(port) == 5
            assert ask(port, ACME).rcode() == dns.rcode.REFUSED
            assert setup.reloads("ok") == 0
            # 3. A good file: a new stub domain, another TTL, pod records off.
            setup.write(
                setup.text(ttl=30, pods="disabled", stub_domains={"acme.local": [acme.address]})
            )
            wait_for(lambda: setup.reloads("ok") == 1, "the good reload", server)
            response = ask(port, ACME)
            assert response.rcode() == dns.rcode.NOERROR, response
            assert {r.to_text() for rrset in response.answer for r in rrset} == {ACME_V4}
            assert ttl_of(port) == 30
            assert ask(port, POD).rcode() == dns.rcode.NXDOMAIN
            reloaded = time.monotonic()
            # The stream goes on until the new config answers it too.
            wait_for(lambda: stream.sent_between(reloaded, math.inf), "queries after", server)
            stream.stop()
            sent = sorted(stream.sent)
            missing = stream.wait_answered(sent, timeout=WAIT)
            assert not missing, f"{len(missing)} of {len(sent)} queries lost across the reloads"
            # The stream ran through all three reloads.
            assert stream.sent_between(0.0, started_reloading)
            assert stream.sent_between(started_reloading, reloaded)
            ttls = set()
            for n in sent:
                response = dns.message.from_wire(stream.answers[n])
                assert response.rcode() == dns.rcode.NOERROR
                ttls.add(response.answer[0].ttl)
            assert ttls == {5, 30}  # answered by the old config, then by the new one
        assert acme.count(ACME) >= 1
        assert setup.reloads("error") == 2  # a file that stayed broken was reported once
        assert len(refused_lines(server)) == 2


def test_sighup_and_sigusr1_reload_at_once(tmp_path: Path, started: list[Served]) -> None:
    setup = Setup(tmp_path, reload_interval=3600)  # the poll would not see it for an hour
    server = start(setup, started)
    setup.write(setup.text(ttl=30))
    assert ttl_of(setup.dns) == 5  # the file alone changes nothing before the signal
    server.proc.send_signal(signal.SIGHUP)
    # Within WAIT, not the hour the poll would take: the signal reloaded it.
    wait_for(lambda: ttl_of(setup.dns) == 30, "the SIGHUP reload", server)
    setup.write(setup.text(ttl=40))
    server.proc.send_signal(signal.SIGUSR1)  # CoreDNS's reload signal
    wait_for(lambda: ttl_of(setup.dns) == 40, "the SIGUSR1 reload", server)
    assert setup.reloads("ok") == 2
    assert "config reloaded (SIGHUP)" in server.stderr()
    assert "config reloaded (SIGUSR1)" in server.stderr()


def test_a_new_dns_addr_is_bound_before_the_old_one_closes(
    tmp_path: Path, started: list[Served]
) -> None:
    setup = Setup(tmp_path, reload_interval=0)
    server = start(setup, started)
    old_dns, old_metrics = setup.dns, setup.metrics
    new_dns, new_metrics = free_port(), free_tcp_port()
    setup.keys["dns_addr"], setup.keys["metrics_addr"] = (
        f"{HOST}:{new_dns}",
        f"{HOST}:{new_metrics}",
    )
    with QueryStream(old_dns, REDIS, rate=200) as stream:
        wait_for(lambda: len(stream.answers) >= 10, "the stream's first answers", server)
        setup.write(setup.text())
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: udp_answers(new_dns, REDIS) is not None, "the new DNS address", server)
        # Once the new socket answers, the old one drains and closes.
        wait_for(lambda: udp_answers(old_dns, REDIS) is None, "the old address closing", server)
        stream.stop()
        # Every query sent to the old address before it closed was answered; some sent after
        # are lost (nothing listens there any more), none before.
        answered = stream.answered()
        closed_at = max(stream.sent[n] for n in answered) if answered else 0.0
        before = stream.sent_between(0.0, closed_at)
        assert before and not stream.wait_answered(before, timeout=WAIT)
    assert ask(new_dns, REDIS, tcp=True).rcode() == dns.rcode.NOERROR
    with pytest.raises(OSError):
        socket.create_connection((HOST, old_dns), timeout=1).close()
    # The metrics endpoint moved the same way, and counts the reload.
    setup.metrics = new_metrics
    assert setup.reloads("ok") == 1
    with pytest.raises(OSError):
        http_get(old_metrics, "/metrics")
    assert f"DNS moved from {HOST}:{old_dns} to {HOST}:{new_dns}" in server.stderr()


def test_a_listen_address_that_cannot_be_bound_keeps_the_old_one(
    tmp_path: Path, started: list[Served]
) -> None:
    setup = Setup(tmp_path, reload_interval=0)
    server = start(setup, started)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        busy = taken.getsockname()[1]
        text = setup.text(dns_addr=f"{HOST}:{busy}", ttl=30)
        setup.write(text)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: setup.reloads("error") == 1, "the refused reload", server)
    line = text.splitlines().index(f"dns_addr: '{HOST}:{busy}'") + 1
    (refused,) = refused_lines(server)
    assert refused.endswith(
        f"{setup.path}:{line}: dns_addr: cannot listen on {HOST}:{busy}: Address already in use"
    ), refused
    # Nothing of the new config was applied: same address, same TTL.
    assert ttl_of(setup.dns) == 5
    assert setup.reloads("ok") == 0


def test_changing_the_source_is_refused_with_a_line(tmp_path: Path, started: list[Served]) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n")
    setup = Setup(tmp_path, reload_interval=0)
    server = start(setup, started)
    text = setup.text(manifests=[str(other)], ttl=30)
    setup.write(text)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: setup.reloads("error") == 1, "the refused reload", server)
    (refused,) = refused_lines(server)
    line = text.splitlines().index(f"manifests: ['{other}']") + 1
    assert (
        f"{setup.path}:{line}: manifests: changes the source of cluster state, which needs a restart"
        in refused
    )
    assert ttl_of(setup.dns) == 5  # nothing applied


def test_reloads_in_a_row_under_a_query_stream_lose_nothing(
    tmp_path: Path, started: list[Served]
) -> None:
    # Twenty reloads, each a new handler with empty caches, while 1,000 queries a second arrive:
    # every query is answered, and each answer is wholly the old config's or the new one's.
    setup = Setup(tmp_path, reload_interval=0)
    server = start(setup, started)
    with QueryStream(setup.dns, REDIS, rate=1000) as stream:
        for i in range(20):
            setup.write(setup.text(ttl=30 if i % 2 == 0 else 5))
            server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda i=i: setup.reloads("ok") == i + 1, f"reload {i + 1}", server)
        stream.stop()
        sent = sorted(stream.sent)
        assert not stream.wait_answered(sent, timeout=WAIT), server.stderr()
    ttls = set()
    for n in sent:
        response = dns.message.from_wire(stream.answers[n])
        assert response.rcode() == dns.rcode.NOERROR
        assert {r.to_text() for rrset in response.answer for r in rrset} == {"10.97.97.97"}
        ttls.add(response.answer[0].ttl)
    assert ttls == {5, 30}
    assert setup.reloads("error") == 0

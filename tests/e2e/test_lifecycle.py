"""Stopping kdns as the kubelet does: SIGTERM → /ready 503 at once, DNS answering through the
lameduck period, answers in flight written, exit 0; a second signal stops at once.

Real processes and real clients: `python -m kdns serve`, a UDP query stream at 2,000 queries a
second, urllib polling /ready, a raw TCP connection with pipelined queries, and a real upstream
(tests/dns/upstreams.py's Responder) that answers slowly so forwarded queries are in flight when
the listeners close.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.dns.upstreams import Responder, delayed, fast_a
from tests.e2e.conftest import EXAMPLES, HOST, KdnsFactory, ask
from tests.e2e.running import QueryStream, http_get, start_on_free_ports

REDIS = "redis.default.svc.cluster.local"
EXIT_SLACK = 10.0  # seconds after lameduck by which kdns must have exited (it takes at most 3)
WAIT = 15.0  # the bound on a wait for something that happens at once; never reached when passing


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        time.sleep(0.02)


def http_port(stderr: str, path: str) -> int:
    found = re.search(rf"serving {path} on \S+ port (\d+)", stderr)
    assert found, stderr
    return int(found.group(1))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kdns.yaml"
    path.write_text(text)
    return path


def test_sigterm_under_load_loses_no_query_during_lameduck(
    kdns_factory: KdnsFactory, tmp_path: Path
) -> None:
    lameduck = 5.0
    server = kdns_factory(EXAMPLES, "--lameduck", str(lameduck))
    ready = http_port(server.stderr(), "/ready")
    health = http_port(server.stderr(), "/health")
    assert http_get(ready, "/ready") == (200, "OK\n")
    rate = 2000
    with QueryStream(server.port, REDIS, rate) as stream:
        # The load is on before the signal.
        wait_for(lambda: len(stream.answers) >= 100, "the stream's first answers")
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # /ready turns 503 at the start of lameduck, while DNS still answers: the kubelet takes
        # the pod out of the EndpointSlice before its DNS stops.
        answered = len(stream.answers)
        wait_for(lambda: http_get(ready, "/ready")[0] == 503, "/ready turning 503", lameduck)
        assert http_get(ready, "/ready") == (503, "shutting down\n")
        assert "lameduck over" not in server.stderr()
        wait_for(lambda: len(stream.answers) > answered + 100, "answers after /ready 503")
        # The liveness probe stays 200 during lameduck (CoreDNS's health plugin does the same).
        assert http_get(health, "/health") == (200, "OK\n")
        # Keep the load on until shortly before lameduck ends, then stop sending.
        time.sleep(max(0.0, signalled + lameduck - 0.3 - time.monotonic()))
        stream.stop()
        during = stream.sent_between(signalled, signalled + lameduck)
        before = stream.sent_between(0.0, signalled)
        missing = stream.wait_answered(before + during, timeout=WAIT)
        assert not missing, f"{len(missing)} of {len(before) + len(during)} queries unanswered"
        # The load lasted through lameduck: queries sent in its last second were answered too.
        assert stream.sent_between(signalled + lameduck - 1.0, signalled + lameduck)
        for n in (*before[:5], *during[-5:]):
            response = dns.message.from_wire(stream.answers[n])
            assert response.rcode() == dns.rcode.NOERROR
            assert {r.to_text() for rrset in response.answer for r in rrset} == {"10.97.97.97"}
    code = server.proc.wait(timeout=lameduck + EXIT_SLACK)
    stopped = time.monotonic() - signalled
    assert code == 0, server.stderr()
    assert lameduck <= stopped < lameduck + EXIT_SLACK, stopped
    assert "SIGTERM: lameduck for 5 s" in server.stderr()


def test_lameduck_from_the_config_file_dns_answers_through_it_then_stops(tmp_path: Path) -> None:
    # Long enough that queries asked well into it never race its end on a busy machine.
    lameduck = 6.0
    server, port, ready = start_on_free_ports(
        lambda port, ready: write_config(
            tmp_path,
            f"lameduck: {lameduck}\nmanifests: ['{EXAMPLES}']\ndns_addr: '{HOST}:{port}'\n"
            f"ready_addr: '{HOST}:{ready}'\nhealth_addr: '{HOST}:0'\nmetrics_addr: '{HOST}:0'\n",
        ),
        tmp_path / "kdns.log",
    )
    try:
        server.proc.send_signal(signal.SIGINT)  # SIGINT (Ctrl-C) is handled like SIGTERM
        signalled = time.monotonic()
        server.wait_log("SIGINT: lameduck for 6 s", timeout=WAIT)
        asked = 0
        # DNS (UDP and TCP) answers through half the lameduck, /ready says 503 all along.
        while time.monotonic() - signalled < lameduck / 2:
            assert ask(port, REDIS).rcode() == dns.rcode.NOERROR
            assert ask(port, REDIS, tcp=True).rcode() == dns.rcode.NOERROR
            assert http_get(ready, "/ready")[0] == 503
            asked += 1
        assert asked >= 1
        assert server.proc.wait(timeout=lameduck + EXIT_SLACK) == 0, server.stderr()
        assert time.monotonic() - signalled >= lameduck
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=1).close()
    finally:
        server.stop()


def test_second_signal_during_lameduck_stops_at_once(
    kdns_factory: KdnsFactory, tmp_path: Path
) -> None:
    lameduck = 30
    server = kdns_factory(EXAMPLES, "--lameduck", str(lameduck))
    server.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT: lameduck for 30 s" in server.stderr(), "the lameduck")
    assert server.alive()
    assert server.ask(REDIS).rcode() == dns.rcode.NOERROR  # in lameduck, still answering
    server.proc.send_signal(signal.SIGINT)
    # Well before the 30 s lameduck would end: the second signal stopped it.
    code = server.proc.wait(timeout=lameduck / 2)
    # 128 + SIGINT, the shell's status for a process stopped by SIGINT: not 0 (the lameduck was
    # cut short) and not 2 (a bad config).
    assert code == 128 + signal.SIGINT, server.stderr()
    assert "SIGINT during lameduck: stopping now" in server.stderr()


def test_second_sigterm_also_stops_at_once(kdns_factory: KdnsFactory, tmp_path: Path) -> None:
    server = kdns_factory(EXAMPLES, "--lameduck", "30")
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: lameduck for 30 s" in server.stderr(), "the lameduck")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 128 + signal.SIGTERM, server.stderr()


def _tcp_query(name: str, qid: int) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = qid
    wire = query.to_wire()
    return struct.pack("!H", len(wire)) + wire


def _read_tcp_messages(sock: socket.socket, deadline: float) -> tuple[list[bytes], bool]:
    """Every message until the server closes the connection (True) or `deadline` (False)."""
    buffer, messages = b"", []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65535)
        except TimeoutError:
            break
        if not chunk:
            return messages, True
        buffer += chunk
        while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack_from("!H", buffer)[0]:
            size = struct.unpack_from("!H", buffer)[0]
            messages.append(buffer[2 : 2 + size])
            buffer = buffer[2 + size :]
    return messages, False


def test_pipelined_tcp_queries_in_flight_are_answered_before_the_connection_closes(
    kdns_factory: KdnsFactory, tmp_path: Path
) -> None:
    # The upstream answers after 2 s, so forwarded questions sent just before SIGTERM are
    # still in flight when lameduck (0.5 s) ends and the listeners close.
    upstream_delay, lameduck = 2.0, 0.5
    with Responder(delayed(fast_a("192.0.2.77"), upstream_delay)) as upstream:
        config = write_config(
            tmp_path,
            f"forward_timeout: 4\nupstreams: ['{upstream.address}']\n",
        )
        server = kdns_factory(EXAMPLES, "--config", str(config), "--lameduck", str(lameduck))
        with socket.create_connection((HOST, server.port), timeout=2) as conn:
            names = [f"q{i}.example.org" for i in range(10)] + [REDIS, REDIS]
            conn.sendall(b"".join(_tcp_query(name, 100 + i) for i, name in enumerate(names)))
            # Every query is read and dispatched: the forwarded ones reached the upstream.
            wait_for(lambda: upstream.count() == 10, "the forwarded queries")
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            messages, closed = _read_tcp_messages(conn, signalled + lameduck + WAIT)
        # They were in flight when the listeners closed (the test's premise, not kdns's speed).
        answered_at = min(r.at for r in upstream.requests) + upstream_delay
        assert signalled + lameduck < answered_at, "the upstream answered before lameduck ended"
        answers = {m.id: m for m in map(dns.message.from_wire, messages)}
        assert sorted(answers) == list(range(100, 112)), sorted(answers)
        for i, name in enumerate(names):
            expected = "10.97.97.97" if name == REDIS else "192.0.2.77"
            rdata = {r.to_text() for rrset in answers[100 + i].answer for r in rrset}
            assert rdata == {expected}, (name, answers[100 + i])
        # Answered, then closed by kdns (answers in flight get up to DRAIN_GRACE, 3 s).
        assert closed, "kdns did not close the connection after its answers"
        assert server.proc.wait(timeout=EXIT_SLACK) == 0, server.stderr()
        assert upstream.count() == 10

"""TCP under pressure (RFC 7766 §6.2.2): one client holding thousands of idle connections, and
reopening each one kdns closes, does not lock out other clients.

A real `kdns serve` on 127.0.0.1; the flood comes from 127.0.0.2 (the rest of 127.0.0.0/8 is
local on Linux), 5,000 connections that never send a byte, each reopened when kdns closes it,
bounded by `REOPENS` and `FLOOD_SECONDS`. Meanwhile another address (127.0.0.1) sends 200 TCP
queries, each on a connection of its own, and 200 UDP queries, each sent once: every one must
be answered. The flood holds 5,000 sockets in this process (and kdns, which inherits the limit,
up to its own), so the soft RLIMIT_NOFILE is raised first. A second test gives kdns too few
descriptors for its connections: accept failing (EMFILE) closes an idle connection too.
"""

from __future__ import annotations

import concurrent.futures
import resource
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
import trio

from tests.conftest import need
from tests.e2e.conftest import (
    EXAMPLES,
    HOST,
    LOCAL_HTTP,
    ROOT,
    Kdns,
    KdnsFactory,
    free_port,
    kdns_command,
    wait_answering,
)
from tests.e2e.running import metric_value
from tests.e2e.test_metrics import metrics_port

FLOOD_FROM = "127.0.0.2"
FLOOD = 5_000  # idle connections held at once
REOPENS = 30_000  # connections opened again after kdns closed them, at most
FLOOD_SECONDS = 120.0  # the flood's bound in time, whatever happens
QUERIES = 200  # per transport, from HOST
QUERY_TIMEOUT = 20.0  # generous: a SYN dropped by a full accept queue is retried after 1 s, 3 s …
NAME = "myapp.default.svc.cluster.local"
FDS = FLOOD + 1_000  # the flood, the queries' sockets, and everything else of this process


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need(
        hard == resource.RLIM_INFINITY or hard >= FDS,
        f"the hard file descriptor limit ({hard}) is below the {FDS} this test holds",
    )
    if soft != resource.RLIM_INFINITY and soft < FDS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FDS, hard))


def second_loopback_address() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((FLOOD_FROM, 0))
    except OSError:
        return False
    return True


class Flood:
    """`size` idle connections from FLOOD_FROM, each reopened when closed, until stopped."""

    def __init__(self, port: int, size: int = FLOOD) -> None:
        self.port = port
        self.size = size
        self.open = 0
        self.opened = 0
        self.closed_by_kdns = 0
        self.stop = trio.Event()

    async def run(self) -> None:
        with trio.move_on_after(FLOOD_SECONDS):
            async with trio.open_nursery() as nursery:
                for _ in range(self.size):
                    nursery.start_soon(self._hold)
                await self.stop.wait()
                nursery.cancel_scope.cancel()

    async def _hold(self) -> None:
        while not self.stop.is_set() and self.opened < self.size + REOPENS:
            self.opened += 1
            with trio.move_on_after(QUERY_TIMEOUT):
                try:
                    stream = await trio.open_tcp_stream(HOST, self.port, local_address=FLOOD_FROM)
                except OSError:
                    await trio.sleep(0.1)  # refused or out of ports: try again shortly
                    continue
                self.open += 1
                try:
                    async with stream:
                        # Idle: never a byte sent. kdns closing it is the end of the receive.
                        while await stream.receive_some(4096):
                            pass
                        self.closed_by_kdns += 1
                except trio.BrokenResourceError:
                    self.closed_by_kdns += 1
                finally:
                    self.open -= 1


def tcp_query(port: int) -> dns.message.Message:
    q = dns.message.make_query(NAME, "A")
    return dns.query.tcp(q, HOST, timeout=QUERY_TIMEOUT, port=port)


def udp_query(port: int, timeout: float = QUERY_TIMEOUT) -> dns.message.Message | None:
    q = dns.message.make_query(NAME, "A")
    try:
        return dns.query.udp(q, HOST, timeout=timeout, port=port)
    except dns.exception.Timeout:
        return None  # lost: sent once, never retried


def answered(response: dns.message.Message | BaseException | None) -> bool:
    if not isinstance(response, dns.message.Message):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


async def wait_for(condition: object, what: str, timeout: float) -> None:
    deadline = trio.current_time() + timeout
    while not await trio.to_thread.run_sync(condition):  # type: ignore[arg-type]
        if trio.current_time() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        await trio.sleep(0.2)


def scraped(port: int, name: str, labels: dict[str, str]) -> float:
    """The metric's value, or -1 while the scrape itself fails: out of descriptors, kdns may
    have none left to accept the scrape's connection either (it shares the limit)."""
    try:
        return metric_value(port, name, labels)
    except OSError:
        return -1.0


def run_all(call: object, port: int, n: int) -> list[object]:
    """`n` calls of `call(port)` over 8 threads; each result, or the exception it raised."""

    def one(_: int) -> object:
        try:
            return call(port)  # type: ignore[operator]
        except Exception as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


async def test_idle_connections_from_one_client_do_not_lock_out_the_rest(
    kdns_factory: KdnsFactory,
) -> None:
    need(second_loopback_address(), f"{FLOOD_FROM} is not a local address")
    raise_fd_limit()
    server = kdns_factory(EXAMPLES)
    port, metrics = server.port, metrics_port(server)
    evictions = {"server": f"dns://{HOST}:{port}", "reason": "client_limit"}
    flood = Flood(port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood.run)
        # Pressure first: the flood holds its share of kdns's connections and kdns has started
        # closing the ones idle the longest to admit the rest.
        await wait_for(
            lambda: metric_value(metrics, "kdns_dns_tcp_evictions_total", evictions) >= 1,
            "kdns closed none of the flood's idle connections",
            60.0,
        )
        started = time.monotonic()
        tcp, udp = await trio.to_thread.run_sync(
            lambda: (run_all(tcp_query, port, QUERIES), run_all(udp_query, port, QUERIES))
        )
        elapsed = time.monotonic() - started
        still_flooding = not flood.stop.is_set() and flood.opened < FLOOD + REOPENS
        flood.stop.set()
    failed_tcp = [r for r in tcp if not answered(r)]
    lost_udp = [r for r in udp if not answered(r)]
    assert not failed_tcp, f"{len(failed_tcp)} of {QUERIES} TCP queries failed: {failed_tcp[:3]}"
    assert not lost_udp, f"{len(lost_udp)} of {QUERIES} UDP queries were not answered"
    # The queries ran under pressure: the flood was still reopening when they were done.
    assert still_flooding, (
        f"the flood ended before the queries did ({elapsed:.1f} s); raise REOPENS"
    )
    assert flood.closed_by_kdns >= 1
    assert metric_value(metrics, "kdns_dns_tcp_evictions_total", evictions) >= 1
    assert server.alive(), server.stderr()


def start_with_fd_limit(tmp_path: Path, limit: int) -> Kdns:
    """kdns whose hard RLIMIT_NOFILE is `limit`, so it cannot raise it."""
    port = free_port()
    log = tmp_path / "kdns.log"

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    command = kdns_command("serve", "--dns-addr", f"{HOST}:{port}", "--manifests", str(EXAMPLES))
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*command, *LOCAL_HTTP],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            preexec_fn=limited,
        )
    server = Kdns(proc, port, log, (EXAMPLES,))
    wait_answering(lambda: udp_query(port, 0.2) is not None, proc, server.stderr)
    return server


async def test_out_of_descriptors_kdns_closes_an_idle_connection_for_a_new_one(
    tmp_path: Path,
) -> None:
    # 300 idle connections from one client against a kdns with 200 descriptors: accept runs out
    # of them before the client reaches its limit of 250 connections.
    need(second_loopback_address(), f"{FLOOD_FROM} is not a local address")
    server = start_with_fd_limit(tmp_path, 200)
    try:
        port, metrics = server.port, metrics_port(server)
        evictions = {"server": f"dns://{HOST}:{port}", "reason": "fd_limit"}
        flood = Flood(port, size=300)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood.run)
            await wait_for(
                lambda: scraped(metrics, "kdns_dns_tcp_evictions_total", evictions) >= 1,
                "kdns ran out of descriptors and closed no idle connection",
                60.0,
            )
            tcp = await trio.to_thread.run_sync(lambda: run_all(tcp_query, port, 20))
            flood.stop.set()
        failed = [r for r in tcp if not answered(r)]
        assert not failed, f"{len(failed)} of 20 TCP queries failed: {failed[:3]}"
        assert server.alive(), server.stderr()
    finally:
        server.stop()

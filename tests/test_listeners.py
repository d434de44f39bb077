"""`app.Listeners` in-process, on real loopback sockets: a reload's new addresses are bound
before anything changes, a bind that fails gives back every socket the attempt took, and a move
serves the new address before the old one drains and closes."""

from __future__ import annotations

import socket

import pytest
import trio

from kdns.app import BindError, Listeners
from kdns.config import Config, parse_hostport
from kdns.dns.server import DnsServer
from kdns.http import HttpEndpoint, health
from tests.dns.test_wire import build_cluster, make_query
from tests.e2e.conftest import free_port

HOST = "127.0.0.1"
WAIT = 10.0
QUERY = make_query("web.default.svc.cluster.local")


def config(dns_port: int, metrics: str = f"{HOST}:0") -> Config:
    return Config().with_overrides(
        dns_addr=f"{HOST}:{dns_port}",
        health_addr=f"{HOST}:0",
        ready_addr=f"{HOST}:0",
        metrics_addr=metrics,
    )


def listeners() -> Listeners:
    handler = build_cluster(sized=True).handler
    return Listeners(
        lambda c: DnsServer(handler, *parse_hostport(c.dns.addr)),
        lambda name, c: HttpEndpoint(
            *parse_hostport(c.get(f"dns.{name}_addr")), {f"/{name}": health}
        ),
    )


def free_for_both(port: int) -> bool:
    """Nothing holds `port` (UDP and TCP) on HOST."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
    ):
        try:
            udp.bind((HOST, port))
            tcp.bind((HOST, port))
        except OSError:
            return False
    return True


async def answers(port: int) -> bool:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect((HOST, port))
        await sock.send(QUERY)
        with trio.move_on_after(1.0):
            try:
                return (await sock.recv(65535))[:2] == QUERY[:2]
            except ConnectionRefusedError:
                return False
    return False


async def test_a_failed_bind_gives_back_every_socket_the_attempt_took(
    nursery: trio.Nursery,
) -> None:
    old_port, new_port = free_port(), free_port()
    running = listeners()
    await running.serve(await running.bind(config(old_port)), nursery)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        busy = f"{HOST}:{taken.getsockname()[1]}"
        # The DNS address binds, then the metrics address fails: the DNS socket is closed again.
        with pytest.raises(BindError) as refused:
            await running.bind(config(new_port, metrics=busy), config(old_port))
    assert refused.value.key == "dns.metrics_addr"
    assert "cannot listen on" in refused.value.strerror
    assert free_for_both(new_port)
    assert await answers(old_port)  # the running listener never noticed


async def test_a_move_serves_the_new_address_then_closes_the_old(nursery: trio.Nursery) -> None:
    old_port, new_port = free_port(), free_port()
    running = listeners()
    await running.serve(await running.bind(config(old_port)), nursery)
    metrics_before = running.http["metrics"]
    bound = await running.bind(config(new_port), config(old_port))
    assert bound.dns is not None and bound.http == {}  # only what changed is bound
    await running.serve(bound, nursery)
    assert await answers(new_port)
    assert running.ports()["dns"] == new_port
    assert running.http["metrics"] is metrics_before
    with trio.fail_after(WAIT):  # the old listener drains (nothing in flight) and closes
        while not free_for_both(old_port):
            await trio.sleep(0.05)

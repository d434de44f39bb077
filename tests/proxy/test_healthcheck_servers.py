"""The health-check node port servers of `kdns proxy` (kdns/proxyapp.py HealthCheckServers):
real HTTP listeners that open and close as Services come and go, answering as kube-proxy's."""

from __future__ import annotations

import json
import random
import socket
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
import trio

from kdns.http import HttpEndpoint, Route
from kdns.proxyapp import SHARED, HealthCheckServers
from tests.builders import model_endpoint, model_service

from .builders import NODE, routes


def node_port(attempts: int = 50) -> int:
    """A port free for TCP on every address, from the Service node-port range (30000-32767,
    where health check node ports are allocated). The range lies below Linux's ephemeral ports
    (32768-60999 by default), so no outgoing connection of another test takes the port between
    this pick and the listen; a port picked by binding to port 0 comes from that range, and
    once lost such a race (EADDRINUSE on 0.0.0.0)."""
    for _ in range(attempts):
        port = random.randint(30000, 32767)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no node port free after {attempts} attempts")


def get(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_ports_open_answer_and_close() -> None:
    port = node_port()
    lb = dict(type="LoadBalancer", external_traffic_policy="Local", health_check_node_port=port)
    ports = (("p80", "TCP", 80, 30080),)
    s = model_service("ns/lb", ports=ports, **lb)
    healthy = [True]
    servers = HealthCheckServers(lambda: healthy[0])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(servers.run)
            servers.update(
                routes((s, [model_endpoint("10.244.1.5", node=NODE), model_endpoint("10.244.2.5")]))
            )
            await until(lambda: answering(port))
            status, body = await trio.to_thread.run_sync(get, port)
            assert status == 200
            assert body == {
                "service": {"namespace": "ns", "name": "lb"},
                "localEndpoints": 1,
                "serviceProxyHealthy": True,
            }
            # No local endpoint left: 503, so the load balancer skips this node.
            servers.update(routes((s, [model_endpoint("10.244.2.5")])))
            status, body = await trio.to_thread.run_sync(get, port)
            assert (status, body["localEndpoints"]) == (503, 0)
            # An unhealthy proxy is unhealthy for every Service.
            servers.update(routes((s, [model_endpoint("10.244.1.5", node=NODE)])))
            healthy[0] = False
            status, body = await trio.to_thread.run_sync(get, port)
            assert (status, body["serviceProxyHealthy"]) == (503, False)
            # The Service goes: the port closes.
            servers.update(())
            await trio.sleep(0.2)
            try:
                await trio.to_thread.run_sync(get, port)
            except urllib.error.URLError as e:
                assert isinstance(e.reason, ConnectionRefusedError)
            else:
                raise AssertionError("the port is still open")
            nursery.cancel_scope.cancel()

    trio.run(main)


# --- ports shared with the next proxy (a surge rollout) --------------------------------------


def text(body: bytes) -> Route:
    return lambda: (200, "text/plain", body)


def answers(port: int, count: int = 20) -> set[bytes]:
    """What `count` fresh connections to /x are answered with."""
    seen = set()
    for _ in range(count):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=2) as r:
            seen.add(r.read())
    return seen


def answering(port: int) -> bool:
    try:
        get(port)
    except OSError:
        return False
    return True


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(condition):
            await trio.sleep(0.02)


def test_a_shared_port_goes_to_the_successor_only_once_it_listens() -> None:
    port = node_port()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            old = HttpEndpoint("127.0.0.1", port, {"/x": text(b"old")}, sharing=SHARED)
            await nursery.start(old.run)
            assert not old.successor
            new = HttpEndpoint("127.0.0.1", port, {"/x": text(b"new")}, sharing=SHARED)
            await new.bind()  # beside the running one: no error
            assert new.successor
            # Bound, not listening: not one connection reaches it.
            assert await trio.to_thread.run_sync(answers, port) == {b"old"}
            await nursery.start(new.run)
            # Listening: every new connection is steered to the newest socket.
            assert await trio.to_thread.run_sync(answers, port) == {b"new"}
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("sharing", [SHARED, None], ids=["shared", "not-shared"])
def test_a_port_another_program_holds_is_still_an_error(sharing: object) -> None:
    with socket.socket() as other:  # a program that does not share its port
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]

        async def main() -> None:
            endpoint = HttpEndpoint("127.0.0.1", port, {"/x": text(b"x")}, sharing=sharing)  # type: ignore[arg-type]
            with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
                await endpoint.bind()

        trio.run(main)


def test_a_health_check_node_port_is_shared_with_the_next_proxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The old proxy's health check node port keeps answering while the new one starts; once
    the new one has its routes, it answers (here: with a different count, to tell them apart),
    and after the old one closes the port, the new one still does."""
    port = node_port()
    lb = dict(type="LoadBalancer", external_traffic_policy="Local", health_check_node_port=port)
    s = model_service("ns/lb", ports=(("p80", "TCP", 80, 30080),), **lb)
    one = [model_endpoint("10.244.1.5", node=NODE)]
    two = [*one, model_endpoint("10.244.1.6", node=NODE)]
    old, new = HealthCheckServers(lambda: True), HealthCheckServers(lambda: True)

    def counted(expected: int) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return all(get(port)[1]["localEndpoints"] == expected for _ in range(10))
            except OSError:
                return False

        return check

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(old.run)
            old.update(routes((s, one)))
            await until(counted(1))
            await nursery.start(new.run)
            new.update(routes((s, two)))
            await until(counted(2))
            caplog.set_level("INFO", logger="kdns.proxyapp")
            old.update(())  # the old proxy stops serving the port
            closed = f"health check node port {port} closed"
            await until(lambda: closed in caplog.text)
            assert await trio.to_thread.run_sync(counted(2))
            nursery.cancel_scope.cancel()

    trio.run(main)

"""A full TCP listener in-process (RFC 7766 §6.2.2): it closes the connection idle the longest
to admit a new one, and counts it. (tests/dns/test_admission.py tables the rules, busy
connections included; tests/e2e/test_tcp_pressure.py checks them at scale on the real process.)"""

from __future__ import annotations

import trio
from prometheus_client import REGISTRY

from kdns.dns.server import DnsServer
from tests.dns.test_wire import build_cluster, make_query

WAIT = 5.0
QUERY = make_query("web.default.svc.cluster.local")


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.move_on_after(WAIT):
        try:
            return await stream.receive_some(4096) == b""
        except trio.BrokenResourceError:
            return True
    return False


async def answered(stream: trio.SocketStream) -> bool:
    await stream.send_all(len(QUERY).to_bytes(2) + QUERY)
    data = b""
    with trio.move_on_after(WAIT):
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2]):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return len(data) >= 14 and data[2:4] == QUERY[:2]


def evictions(server: DnsServer, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "kdns_dns_tcp_evictions_total", {"server": server.stats.server, "reason": reason}
    )
    return value or 0.0


async def wait_connections(server: DnsServer, n: int) -> None:
    with trio.fail_after(WAIT):
        while server.tcp_connections != n:
            await trio.sleep(0.01)


async def test_a_full_listener_closes_the_idle_longest_and_admits_the_new(
    nursery: trio.Nursery,
) -> None:
    server = DnsServer(build_cluster(sized=True).handler, "127.0.0.1", 0, max_tcp=3)
    _, port = await nursery.start(server.run)
    first = await connect(port)
    await wait_connections(server, 1)
    others = [await connect(port) for _ in range(2)]
    await wait_connections(server, 3)
    newcomer = await connect(port)
    assert await answered(newcomer)
    assert await closed_by_server(first)  # idle the longest
    assert all([await answered(s) for s in others])  # the rest keep being served
    assert evictions(server, "server_limit") == 1
    assert server.tcp_connections == 3


async def test_one_client_at_its_limit_makes_room_among_its_own(nursery: trio.Nursery) -> None:
    server = DnsServer(
        build_cluster(sized=True).handler, "127.0.0.1", 0, max_tcp=10, max_tcp_per_client=2
    )
    _, port = await nursery.start(server.run)
    first = await connect(port)
    await wait_connections(server, 1)
    second = await connect(port)
    await wait_connections(server, 2)
    third = await connect(port)
    assert await answered(third)
    assert await closed_by_server(first)
    assert await answered(second)
    assert evictions(server, "client_limit") == 1
    assert evictions(server, "server_limit") == 0

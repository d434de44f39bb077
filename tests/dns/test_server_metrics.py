"""The listener's own counting, in-process: the `server` and `family` labels of CoreDNS, on a
dual-stack socket ("::", IPv4 clients seen as ::ffff:a.b.c.d) and on an IPv6 address."""

from __future__ import annotations

import socket

import trio

from kdns.dns.server import DnsServer
from tests.conftest import need
from tests.dns.test_wire import build_cluster, make_query

WAIT = 5.0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def exchange(family: int, address: tuple[str, int], data: bytes, tcp: bool = False) -> None:
    if tcp:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(len(data).to_bytes(2) + data)
            with trio.fail_after(WAIT):
                assert await stream.receive_some(65535)
        return
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.sendto(data, address)
        with trio.fail_after(WAIT):
            await sock.recvfrom(65535)


async def test_family_and_server_labels(nursery: trio.Nursery) -> None:
    need(ipv6_loopback(), "no IPv6 on loopback (::1)")
    handler = build_cluster(sized=True).handler
    query = make_query("web.default.svc.cluster.local")
    dual = DnsServer(handler, "::", 0)
    _, port = await nursery.start(dual.run)
    assert dual.stats.server == f"dns://:{port}"  # every address, as CoreDNS's "dns://:53"
    for _ in range(3):
        await exchange(socket.AF_INET, ("127.0.0.1", port), query)
    for _ in range(2):
        await exchange(socket.AF_INET6, ("::1", port), query)
    await exchange(socket.AF_INET, ("127.0.0.1", port), query, tcp=True)
    dual.stats.fold()
    zone = "cluster.local."
    assert dual.stats.requests[(zone, "udp", "1", "A")] == 3
    assert dual.stats.requests[(zone, "udp", "2", "A")] == 2
    assert dual.stats.requests[(zone, "tcp", "1", "A")] == 1

    v6 = DnsServer(handler, "::1", 0)
    _, port6 = await nursery.start(v6.run)
    assert v6.stats.server == f"dns://[::1]:{port6}"
    await exchange(socket.AF_INET6, ("::1", port6), query)
    v6.stats.fold()
    assert dict(v6.stats.requests) == {(zone, "udp", "2", "A"): 1}

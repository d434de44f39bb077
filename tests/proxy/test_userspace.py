"""The userspace relay in-process, with real sockets: echo endpoints on their own loopback
addresses (127.1.0.1, .2, .3; each replies with its name and the source address it saw),
clients on others (127.2.0.x), the relay on the Services' loopback VIPs.

Spread is checked with a chi-square test at α = 0.001 over at least 2,000 connections, as the
other proxy modes are (issue 5, "How it is checked").
"""

from __future__ import annotations

import errno
import math
import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
import trio
from prometheus_client import REGISTRY

from kdns.model import EndpointSlice, Node, Service
from kdns.proxy.loopback import allocate
from kdns.proxy.userspace import Relay
from kdns.store import ENDPOINTSLICES, NAMESPACES, NODES, PODS, SERVICES, Store
from tests.builders import model_endpoint, model_service
from tests.proxy.builders import NODE

BACKENDS = ("127.1.0.1", "127.1.0.2", "127.1.0.3")
NAMES = {ip: f"pod-{ip.rsplit('.', 1)[1]}" for ip in (*BACKENDS, "127.1.0.4")}
ALPHA = 0.001
CONNECTIONS = "kdns_userspace_connections_total"
DIAL_FAILURES = "kdns_userspace_endpoint_dial_failures_total"
UNBINDABLE = "kdns_userspace_unbindable_ports"


def chi_square_critical_2df(alpha: float) -> float:
    # With 2 degrees of freedom (3 endpoints) the chi-square distribution is the exponential
    # distribution with mean 2: P(X > x) = exp(-x/2), so the critical value is -2 ln(alpha)
    # (13.816 at alpha = 0.001, as in the NIST/SEMATECH e-Handbook's table 1.3.6.7.4).
    return -2 * math.log(alpha)


def chi_square(counts: Iterable[int]) -> float:
    counts = list(counts)
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def free_port_on(ips: Iterable[str], kind: int) -> int:
    """A port free on every address in `ips` for `kind` (checked by binding, then released)."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, kind)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        socks = []
        try:
            for ip in ips:
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((ip, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no common free port")


# --- echo endpoints ------------------------------------------------------------------------------


async def tcp_echo(sock: trio.socket.SocketType, name: str) -> None:
    """Per line received: `NAME SOURCE-IP LINE`; at EOF: `NAME SOURCE-IP eof BYTES`, then close."""

    async def one(conn: trio.socket.SocketType, peer: str) -> None:
        with conn:
            buffer, total = b"", 0
            try:
                while data := await conn.recv(65536):
                    total += len(data)
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        await conn.send(f"{name} {peer} ".encode() + line + b"\n")
                await conn.send(f"{name} {peer} eof {total}\n".encode())
            except OSError:
                pass

    async with trio.open_nursery() as nursery:
        while True:
            conn, address = await sock.accept()
            nursery.start_soon(one, conn, address[0])


async def udp_echo(sock: trio.socket.SocketType, name: str) -> None:
    while True:
        data, address = await sock.recvfrom(65535)
        await sock.sendto(f"{name} {address[0]} ".encode() + data, address)


@dataclass
class Cluster:
    """A store with the Services under test, echo endpoints, and the relay."""

    nursery: trio.Nursery
    store: Store = field(default_factory=Store)
    services: dict = field(default_factory=dict)
    slices: dict = field(default_factory=dict)
    relay: Relay | None = None
    tcp_port: int = 0
    udp_port: int = 0
    backends: dict = field(default_factory=dict)

    async def start_backends(self, ips: Iterable[str] = BACKENDS) -> None:
        ips = tuple(ips)
        self.tcp_port = free_port_on(ips, socket.SOCK_STREAM)
        self.udp_port = free_port_on(ips, socket.SOCK_DGRAM)
        for ip in ips:
            await self.start_backend(ip)

    async def start_backend(self, ip: str) -> None:
        tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await tcp.bind((ip, self.tcp_port))
        tcp.listen(512)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind((ip, self.udp_port))
        scope = trio.CancelScope()
        self.backends[ip] = (scope, tcp, udp)

        async def serve() -> None:
            with scope, tcp, udp:
                async with trio.open_nursery() as n:
                    n.start_soon(tcp_echo, tcp, NAMES[ip])
                    n.start_soon(udp_echo, udp, NAMES[ip])

        self.nursery.start_soon(serve)

    async def stop_backend(self, ip: str) -> None:
        scope, _, _ = self.backends.pop(ip)
        scope.cancel()  # its sockets close as the task leaves them
        await trio.sleep(0.05)

    def service(self, name: str, ips: Iterable[str], **kw: object) -> Service:
        """A Service `default/NAME` with a TCP and a UDP port (on free ports) and `ips` as its
        ready endpoints."""
        port = free_port_on(["127.0.0.1"], socket.SOCK_STREAM)
        service = model_service(
            f"default/{name}",
            ip=f"10.96.0.{len(self.services) + 10}",
            ports=(("tcp", "TCP", port, None), ("udp", "UDP", port, None)),
            **kw,
        )
        self.services[service.key] = service
        self.set_endpoints(service, ips)
        return service

    def set_endpoints(self, service: Service, ips: Iterable[str], **conditions: bool) -> None:
        ports = (("tcp", "TCP", self.tcp_port), ("udp", "UDP", self.udp_port))
        endpoints = tuple(model_endpoint(ip, ports=ports, **conditions) for ip in ips)
        key = (service.namespace, f"{service.name}-1")
        self.slices[key] = EndpointSlice(service.namespace, key[1], service.name, "IPv4", endpoints)

    def publish(self) -> None:
        self.store.replace(NAMESPACES, {})
        self.store.replace(SERVICES, dict(self.services))
        self.store.replace(ENDPOINTSLICES, dict(self.slices))
        self.store.replace(PODS, {})

    async def start_relay(self, **options: object) -> Relay:
        self.publish()
        self.relay = Relay(self.store, NODE, **options)  # type: ignore[arg-type]
        await self.nursery.start(self.relay.run)
        return self.relay

    def vip(self, service: Service) -> tuple[str, int]:
        assert self.relay is not None
        vip = self.relay.vips.address(service.key)
        assert vip is not None
        return vip, service.ports[0].port


async def ask_tcp(
    address: tuple[str, int], source: str = "127.2.0.1", line: bytes = b"hi"
) -> tuple[str, str]:
    """One connection: send a line, read the reply; returns (endpoint name, source it saw)."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        await sock.bind((source, 0))
        with trio.fail_after(5):
            await sock.connect(address)
            await sock.send(line + b"\n")
            reply = await read_line(sock)
    name, seen, _ = reply.split(" ", 2)
    return name, seen


async def read_line(sock: trio.socket.SocketType) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await sock.recv(4096)
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    return data.decode().strip()


async def ask_udp(
    sock: trio.socket.SocketType, address: tuple[str, int], payload: bytes = b"hi"
) -> str:
    with trio.fail_after(5):
        await sock.sendto(payload, address)
        reply, _ = await sock.recvfrom(65535)
    return reply.decode().split(" ", 1)[0]


async def udp_client(source: str = "127.2.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((source, 0))
    return sock


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- spread --------------------------------------------------------------------------------------


async def test_tcp_connections_spread_evenly_and_the_endpoint_sees_the_relay() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        web = cluster.service("web", BACKENDS)
        await cluster.start_relay()
        address = cluster.vip(web)
        counts: Counter[str] = Counter()
        seen: set[str] = set()

        async def client(i: int) -> None:
            for _ in range(105):
                name, source = await ask_tcp(address, source=f"127.2.0.{i + 1}")
                counts[name] += 1
                seen.add(source)

        # 20 clients at once, 2,100 connections in all.
        async with trio.open_nursery() as clients:
            for i in range(20):
                clients.start_soon(client, i)
        nursery.cancel_scope.cancel()
    assert sum(counts.values()) == 2100
    assert set(counts) == {NAMES[ip] for ip in BACKENDS}
    assert chi_square(counts.values()) < chi_square_critical_2df(ALPHA), counts
    # Connection-level relay: the endpoint sees the relay's address, never the client's.
    assert not seen & {f"127.2.0.{i + 1}" for i in range(20)}, seen


async def test_udp_sessions_spread_evenly_and_are_bounded() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        dns = cluster.service("dns", BACKENDS)
        relay = await cluster.start_relay(max_udp_sessions=64)
        vip, port = cluster.vip(dns)
        evicted = counter(CONNECTIONS, protocol="udp", result="evicted")
        counts: Counter[str] = Counter()
        # Each client socket is a new session (a new source port): 2,001 sessions.
        for i in range(2001):
            with await udp_client(f"127.2.0.{i % 200 + 1}") as sock:
                counts[await ask_udp(sock, (vip, port))] += 1
        listener = relay.listeners[(vip, port, "UDP")]
        assert len(listener.sessions) <= 64
        nursery.cancel_scope.cancel()
    assert set(counts) == {NAMES[ip] for ip in BACKENDS}
    assert chi_square(counts.values()) < chi_square_critical_2df(ALPHA), counts
    assert counter(CONNECTIONS, protocol="udp", result="evicted") - evicted >= 2001 - 64


async def test_a_udp_session_keeps_its_endpoint_and_ends_when_idle() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        dns = cluster.service("dns", BACKENDS)
        relay = await cluster.start_relay(udp_idle_timeout=0.5)
        vip, port = cluster.vip(dns)
        listener = relay.listeners[(vip, port, "UDP")]
        with await udp_client() as sock:
            names = {await ask_udp(sock, (vip, port), b"%d" % i) for i in range(20)}
            assert len(names) == 1  # one session, one endpoint
            assert len(listener.sessions) == 1
            await trio.sleep(1.5)
            assert len(listener.sessions) == 0  # idle for longer than the timeout: gone
            nursery.cancel_scope.cancel()


# --- affinity ------------------------------------------------------------------------------------


async def test_client_ip_affinity_sticks_while_used_and_expires_after_the_timeout() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        web = cluster.service("sticky", BACKENDS, session_affinity="ClientIP", affinity_timeout=2)
        await cluster.start_relay()
        address = cluster.vip(web)
        first, _ = await ask_tcp(address, source="127.2.0.1")
        # Used every 0.35 s for 3.5 s, longer than the 2 s timeout: each use renews it.
        for _ in range(10):
            await trio.sleep(0.35)
            assert (await ask_tcp(address, source="127.2.0.1"))[0] == first
        # Other clients are spread and leave the first one's entry alone: even right after
        # round robin handed out `first`, whose successor a fresh pick would get, it sticks.
        others = set()
        for i in range(2, 12):
            others.add(name := (await ask_tcp(address, source=f"127.2.0.{i}"))[0])
            if name == first and len(others) == 3:
                break
        assert others == {NAMES[ip] for ip in BACKENDS}
        assert (await ask_tcp(address, source="127.2.0.1"))[0] == first
        # Idle for longer than timeoutSeconds: the entry expired, so the same construction now
        # gives the first client round robin's next endpoint.
        await trio.sleep(2.5)
        for i in range(20, 24):
            if (await ask_tcp(address, source=f"127.2.0.{i}"))[0] == first:
                break
        else:
            pytest.fail("round robin never handed out the first endpoint")
        assert (await ask_tcp(address, source="127.2.0.1"))[0] != first
        nursery.cancel_scope.cancel()


async def test_udp_sessions_of_one_client_ip_share_an_endpoint_under_affinity() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        dns = cluster.service("dns", BACKENDS, session_affinity="ClientIP", affinity_timeout=5)
        await cluster.start_relay()
        vip, port = cluster.vip(dns)
        names = set()
        for _ in range(12):  # 12 source ports of one client IP: 12 sessions
            with await udp_client("127.2.0.1") as sock:
                names.add(await ask_udp(sock, (vip, port)))
        assert len(names) == 1
        nursery.cancel_scope.cancel()


# --- endpoint changes ----------------------------------------------------------------------------


async def test_endpoint_changes_apply_to_new_connections_at_once_and_spare_old_ones() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends([*BACKENDS, "127.1.0.4"])
        web = cluster.service("web", BACKENDS, session_affinity="ClientIP", affinity_timeout=60)
        await cluster.start_relay()
        address = cluster.vip(web)
        # A long-lived connection, and an affinity entry, to whichever endpoint comes first.
        held = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await held.bind(("127.2.0.1", 0))
        await held.connect(address)
        await held.send(b"one\n")
        held_name = (await read_line(held)).split(" ")[0]
        held_ip = next(ip for ip, n in NAMES.items() if n == held_name)
        # The held endpoint leaves, a new one (127.1.0.4) arrives.
        remaining = [ip for ip in BACKENDS if ip != held_ip]
        cluster.set_endpoints(web, [*remaining, "127.1.0.4"])
        cluster.publish()
        # New connections at once: never the removed endpoint; the sticky client moves.
        names = Counter(
            [(await ask_tcp(address, source=f"127.2.0.{i % 30 + 1}"))[0] for i in range(60)]
        )
        assert held_name not in names
        assert set(names) == {NAMES[ip] for ip in [*remaining, "127.1.0.4"]}
        # The connection made before the change still works, to the same endpoint.
        await held.send(b"two\n")
        assert (await read_line(held)).startswith(f"{held_name} ")
        held.close()
        # Every endpoint removed: new connections are reset, the listener stays.
        cluster.set_endpoints(web, [])
        cluster.publish()
        with pytest.raises((ConnectionResetError, EOFError)):
            await ask_tcp(address)
        nursery.cancel_scope.cancel()


# --- topology --------------------------------------------------------------------------------


async def test_topology_hints_follow_the_nodes_zone_as_in_the_kernel_modes() -> None:
    """The relay reads hints exactly as the kernel modes (kube-proxy `CategorizeEndpoints`):
    zone hints for this node's zone, from its Node object, re-read when the label changes;
    a zone no endpoint is hinted for falls back to every endpoint; node hints
    (trafficDistribution PreferSameNode) win over zone hints."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        web = cluster.service("web", ())
        ports = (("tcp", "TCP", cluster.tcp_port), ("udp", "UDP", cluster.udp_port))
        a, b, c = BACKENDS  # zone-a, zone-b, zone-b
        hints = {a: ("zone-a",), b: ("zone-b",), c: ("zone-b",)}
        endpoints = tuple(
            model_endpoint(ip, ports=ports, zone_hints=zones) for ip, zones in hints.items()
        )
        key = ("default", "web-1")
        cluster.slices[key] = EndpointSlice("default", "web-1", "web", "IPv4", endpoints)
        cluster.store.replace(NODES, {NODE: Node(NODE, "zone-a")})
        relay = await cluster.start_relay()
        address = cluster.vip(web)

        async def reached(count: int = 30) -> set[str]:
            return {(await ask_tcp(address))[0] for _ in range(count)}

        async def becomes(names: set[str]) -> None:
            with trio.fail_after(10):
                while await reached() != names:
                    await trio.sleep(0.02)

        assert relay.zone == "zone-a"
        assert await reached() == {NAMES[a]}
        cluster.store.upsert(NODES, Node(NODE, "zone-b"))  # the label changed
        await becomes({NAMES[b], NAMES[c]})
        assert await reached() == {NAMES[b], NAMES[c]}
        # No endpoint is hinted for zone-c: hints are ignored, every endpoint is used.
        cluster.store.upsert(NODES, Node(NODE, "zone-c"))
        await becomes({NAMES[a], NAMES[b], NAMES[c]})
        # Node hints for this node on every endpoint (what PreferSameNode makes): they win.
        node_hinted = tuple(
            model_endpoint(ip, ports=ports, zone_hints=hints[ip], node_hints=(node,))
            for ip, node in ((a, "other-node"), (b, "other-node"), (c, NODE))
        )
        cluster.slices[key] = EndpointSlice("default", "web-1", "web", "IPv4", node_hinted)
        cluster.store.replace(ENDPOINTSLICES, dict(cluster.slices))
        await becomes({NAMES[c]})
        # The Node gone: no zone, and the node hints still name this node.
        cluster.store.delete(NODES, NODE)
        with trio.fail_after(10):
            while relay.zone:
                await trio.sleep(0.02)
        assert await reached() == {NAMES[c]}
        nursery.cancel_scope.cancel()


async def test_a_udp_session_to_a_removed_endpoint_moves_to_a_live_one() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        dns = cluster.service("dns", BACKENDS)
        await cluster.start_relay()
        vip, port = cluster.vip(dns)
        with await udp_client() as sock:
            before = await ask_udp(sock, (vip, port))
            gone = next(ip for ip, n in NAMES.items() if n == before)
            cluster.set_endpoints(dns, [ip for ip in BACKENDS if ip != gone])
            cluster.publish()
            after = {await ask_udp(sock, (vip, port)) for _ in range(5)}
        assert before not in after
        assert len(after) == 1  # a new session, kept
        nursery.cancel_scope.cancel()


async def test_terminating_endpoints_serve_only_when_no_ready_one_is_left() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        web = cluster.service("web", [])
        terminating = dict(ready=False, serving=True, terminating=True)
        ports = (("tcp", "TCP", cluster.tcp_port), ("udp", "UDP", cluster.udp_port))
        endpoints = (
            model_endpoint(BACKENDS[0], ports=ports),
            model_endpoint(BACKENDS[1], ports=ports, **terminating),
        )
        key = ("default", "web-1")
        cluster.slices[key] = EndpointSlice("default", "web-1", "web", "IPv4", endpoints)
        await cluster.start_relay()
        address = cluster.vip(web)
        assert {(await ask_tcp(address))[0] for _ in range(6)} == {NAMES[BACKENDS[0]]}
        cluster.slices[key] = EndpointSlice("default", "web-1", "web", "IPv4", endpoints[1:])
        cluster.publish()
        assert {(await ask_tcp(address))[0] for _ in range(6)} == {NAMES[BACKENDS[1]]}
        nursery.cancel_scope.cancel()


# --- failures ------------------------------------------------------------------------------------


async def test_no_endpoint_resets_at_once() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        empty = cluster.service("empty", [])
        before = counter(CONNECTIONS, protocol="tcp", result="no_endpoints")
        await cluster.start_relay()
        address = cluster.vip(empty)
        for _ in range(5):
            with trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                start = time.perf_counter()
                with trio.fail_after(2):
                    await sock.connect(address)  # the listener is there
                    with pytest.raises(ConnectionResetError):
                        await sock.recv(10)
                assert time.perf_counter() - start < 0.1
        assert counter(CONNECTIONS, protocol="tcp", result="no_endpoints") - before == 5
        nursery.cancel_scope.cancel()


async def test_a_refusing_endpoint_is_skipped_for_the_next() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        # 127.1.0.4 has nothing listening: connecting there is refused.
        web = cluster.service("web", [*BACKENDS[:2], "127.1.0.4"])
        failures = counter(DIAL_FAILURES, protocol="tcp")
        await cluster.start_relay()
        address = cluster.vip(web)
        names = Counter([(await ask_tcp(address))[0] for _ in range(30)])
        assert set(names) == {NAMES[BACKENDS[0]], NAMES[BACKENDS[1]]}
        assert sum(names.values()) == 30  # every client got through
        # Round robin reaches the dead endpoint about every other connection (the one after
        # it takes its turn too, as in kube-proxy's userspace mode): each costs one failed dial.
        assert 10 <= counter(DIAL_FAILURES, protocol="tcp") - failures <= 16
        # Every endpoint down: the client is reset, after trying each once.
        await cluster.stop_backend(BACKENDS[0])
        await cluster.stop_backend(BACKENDS[1])
        with pytest.raises((ConnectionResetError, EOFError)):
            await ask_tcp(address)
        nursery.cancel_scope.cancel()


async def test_half_close_reaches_the_endpoint_and_the_reply_comes_back() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        web = cluster.service("web", BACKENDS)
        await cluster.start_relay()
        address = cluster.vip(web)
        payload = bytes(range(256)) * 4096  # 1 MiB, no newline-free guarantee needed
        payload = payload.replace(b"\n", b"x")
        with trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            await sock.connect(address)
            view = memoryview(payload)
            while view:
                view = view[await sock.send(view) :]
            sock.shutdown(socket.SHUT_WR)  # EOF to the endpoint, the way back stays open
            with trio.fail_after(5):
                reply = await read_line(sock)
                rest = await sock.recv(10)
        assert reply.split(" ")[2:] == ["eof", str(len(payload))]
        assert rest == b""  # the endpoint's close comes through as EOF
        nursery.cancel_scope.cancel()


# --- listeners follow Services -------------------------------------------------------------------


async def test_listeners_come_and_go_with_services() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        web = cluster.service("web", BACKENDS)
        relay = await cluster.start_relay()
        late = cluster.service("late", BACKENDS[:1])
        cluster.publish()
        assert (await ask_tcp(cluster.vip(late)))[0] == NAMES[BACKENDS[0]]
        address = cluster.vip(web)
        del cluster.services[web.key]
        cluster.publish()
        assert relay.vips.address(web.key) is None
        with pytest.raises(OSError) as refused:
            await ask_tcp(address)
        assert refused.value.errno == errno.ECONNREFUSED  # no listener any more
        assert (await ask_tcp(cluster.vip(late)))[0] == NAMES[BACKENDS[0]]
        nursery.cancel_scope.cancel()


async def test_an_ipv6_only_service_is_relayed_from_its_ipv4_vip() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        backend = trio.socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        await backend.bind(("::1", 0))
        backend.listen(16)
        port = backend.getsockname()[1]
        nursery.start_soon(tcp_echo, backend, "pod-v6")
        service = model_service(
            "default/v6", ip="fd00:10:96::60", ports=(("tcp", "TCP", port, None),)
        )
        cluster.services[service.key] = service
        endpoints = (model_endpoint("::1", ports=(("tcp", "TCP", port),)),)
        cluster.slices[("default", "v6-1")] = EndpointSlice(
            "default", "v6-1", "v6", "IPv6", endpoints
        )
        await cluster.start_relay()
        vip, _ = cluster.vip(service)
        assert (await ask_tcp((vip, port), source="127.0.0.1")) == ("pod-v6", "::1")
        nursery.cancel_scope.cancel()


async def test_a_refusing_udp_endpoint_costs_a_client_one_retry_at_most() -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        # Nothing listens on 127.1.0.4: its ICMP port unreachable ends the session.
        dns = cluster.service("dns", [*BACKENDS[:2], "127.1.0.4"])
        failures = counter(DIAL_FAILURES, protocol="udp")
        await cluster.start_relay()
        vip, port = cluster.vip(dns)
        tries = []
        names = set()
        for i in range(9):
            with await udp_client(f"127.2.0.{i + 1}") as sock:
                for attempt in range(1, 4):  # a stub resolver's retries
                    await sock.sendto(b"hi", (vip, port))
                    with trio.move_on_after(0.5):
                        reply, _ = await sock.recvfrom(65535)
                        names.add(reply.decode().split(" ")[0])
                        tries.append(attempt)
                        break
        assert names == {NAMES[BACKENDS[0]], NAMES[BACKENDS[1]]}
        assert len(tries) == 9 and max(tries) == 2  # the dead endpoint's clients retried once
        assert counter(DIAL_FAILURES, protocol="udp") - failures == tries.count(2)
        nursery.cancel_scope.cancel()


async def test_a_port_in_use_is_warned_about_once_and_bound_when_freed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        await cluster.start_backends()
        web = cluster.service("taken", BACKENDS)
        vip = allocate([web.key])[web.key]  # the VIP is a function of the Services alone
        port = web.ports[0].port
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        blocker.bind((vip, port))
        blocker.listen(1)
        relay = await cluster.start_relay(sweep_interval=0.2)
        assert relay.unbindable == {(vip, port, "TCP"): "in_use"}
        assert REGISTRY.get_sample_value(UNBINDABLE, {"reason": "in_use"}) == 1
        # The UDP port of the same Service is bound and relays.
        with await udp_client() as sock:
            assert await ask_udp(sock, (vip, port)) in {NAMES[ip] for ip in BACKENDS}
        await trio.sleep(0.5)  # retried twice meanwhile
        blocker.close()
        with trio.fail_after(2):
            while (vip, port, "TCP") in relay.unbindable:
                await trio.sleep(0.05)
        assert (await ask_tcp((vip, port)))[0] in {NAMES[ip] for ip in BACKENDS}
        assert REGISTRY.get_sample_value(UNBINDABLE, {"reason": "in_use"}) == 0
        warnings = [r for r in caplog.records if "cannot listen on" in r.getMessage()]
        assert len(warnings) == 1
        assert f"{vip} tcp/{port} for default/taken:tcp" in warnings[0].getMessage()
        nursery.cancel_scope.cancel()

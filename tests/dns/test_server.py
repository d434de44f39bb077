"""`DnsServer` over real loopback sockets, in-process: UDP bursts, TCP framing and timeouts.

Clients are trio sockets, plain sockets, and dnspython's trio backend. Every wait is bounded
(`trio.fail_after`); the server's timeouts are a fraction of a second so the file runs quickly.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import dns.asyncbackend
import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
import trio
from dnslib import QTYPE

from kdns.dns import wire
from kdns.dns.handler import Handler
from kdns.dns.server import DnsServer
from tests.dns.test_wire import (
    ZONE,
    Cluster,
    a_records,
    build_cluster,
    default_services,
    endpoint_ips,
    endpoint_slice,
    header,
    headless_service,
    make_query,
    svc,
)

WEB = svc("web.default")
WEB_IP = "10.96.0.10"
WAIT = 5.0  # the bound on any single wait: generous, a test that passes never waits this long


@dataclass
class Running:
    server: DnsServer
    handler: Handler
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


async def start(
    nursery: trio.Nursery,
    cluster: Cluster | None = None,
    idle_timeout: float = 2.0,
    read_timeout: float = 0.3,
    write_timeout: float = 0.3,
    crashes: list[Exception] | None = None,
) -> Running:
    """Run a server in `nursery`; with `crashes`, an exception that ends `run` is recorded
    there instead of tearing the test down, so the test can assert on it by name."""
    handler = (cluster or build_cluster(sized=True)).handler
    server = DnsServer(
        handler,
        "127.0.0.1",
        0,
        idle_timeout=idle_timeout,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
    )

    async def run(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        try:
            await server.run(task_status=task_status)
        except Exception as e:
            if crashes is None:
                raise
            crashes.append(e)

    host, port = await nursery.start(run)
    assert port != 0
    return Running(server, handler, host, port)


def answer_ip(response: bytes) -> list[str]:
    return a_records(dns.message.from_wire(response))


def response_id(response: bytes) -> int:
    return int(struct.unpack_from("!H", response)[0])


# --- UDP -----------------------------------------------------------------------------------------


def udp_socket() -> trio.socket.SocketType:
    return trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


async def udp_exchange(running: Running, data: bytes) -> bytes:
    with udp_socket() as sock:
        await sock.sendto(data, running.address)
        with trio.fail_after(WAIT):
            response, peer = await sock.recvfrom(65535)
    assert peer == running.address
    return bytes(response)


async def test_udp_answer(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    response = await udp_exchange(running, make_query(WEB, qid=0x0A0A))
    assert response_id(response) == 0x0A0A
    message = dns.message.from_wire(response)
    assert message.rcode() == dns.rcode.NOERROR
    assert a_records(message) == [WEB_IP]


async def test_udp_and_tcp_with_dnspython(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    backend = dns.asyncbackend.get_backend("trio")
    query = dns.message.make_query(WEB, "A", use_edns=0, payload=1232)
    udp = await dns.asyncquery.udp(
        query, "127.0.0.1", port=running.port, timeout=WAIT, backend=backend
    )
    tcp = await dns.asyncquery.tcp(
        query, "127.0.0.1", port=running.port, timeout=WAIT, backend=backend
    )
    for message in (udp, tcp):
        assert message.id == query.id
        assert a_records(message) == [WEB_IP]
        assert message.payload == wire.MAX_UDP_PAYLOAD


async def test_udp_truncates_and_tcp_carries_the_whole_answer(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    backend = dns.asyncbackend.get_backend("trio")
    query = dns.message.make_query(svc("big.default"), "A")
    udp = await dns.asyncquery.udp(
        query, "127.0.0.1", port=running.port, timeout=WAIT, backend=backend, ignore_trailing=False
    )
    assert udp.flags & dns.flags.TC
    # As many whole records as fit 512 octets: a client that keeps them has addresses.
    assert len(a_records(udp)) == 29
    assert set(a_records(udp)) < set(endpoint_ips(500))
    tcp = await dns.asyncquery.tcp(
        query, "127.0.0.1", port=running.port, timeout=WAIT, backend=backend
    )
    assert not tcp.flags & dns.flags.TC
    assert a_records(tcp) == sorted(endpoint_ips(500))


async def test_udp_burst_of_1000_queries_all_answered(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    count = 1000
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    raw.bind(("127.0.0.1", 0))
    # Back to back, without yielding to trio: the server sees all of them at its next wake-up
    # and must drain its socket in bursts.
    names = [WEB, svc("redis.default"), svc("nope.default"), f"10-0-0-1.default.pod.{ZONE}"]
    for qid in range(count):
        raw.sendto(make_query(names[qid % len(names)], qid=qid), running.address)
    seen: set[int] = set()
    with trio.socket.from_stdlib_socket(raw) as sock, trio.fail_after(10):
        while len(seen) < count:
            response = await sock.recv(65535)
            assert response[2] & 0x80
            seen.add(response_id(response))
    assert seen == set(range(count))
    assert running.server.udp_send_errors == 0
    assert running.handler.cache.hits >= count - len(names)


async def test_malformed_udp_gets_formerr_and_the_server_keeps_answering(
    nursery: trio.Nursery,
) -> None:
    running = await start(nursery)
    malformed = header(qid=0x0BAD, qd=2) + b"\xc0\x0c\x00\x01\x00\x01"
    response = await udp_exchange(running, malformed)
    assert response_id(response) == 0x0BAD
    assert response[3] & 0xF == wire.FORMERR
    assert response[2] & 0x80
    assert answer_ip(await udp_exchange(running, make_query(WEB, qid=7))) == [WEB_IP]


@pytest.mark.parametrize(
    "dropped",
    [
        pytest.param(b"\x12", id="one byte"),
        pytest.param(header()[:11], id="eleven bytes"),
        pytest.param(make_query(WEB, flags=wire.QR), id="a response"),
    ],
)
async def test_dropped_udp_packet_gets_no_answer(nursery: trio.Nursery, dropped: bytes) -> None:
    running = await start(nursery)
    with udp_socket() as sock:
        await sock.sendto(dropped, running.address)
        await sock.sendto(make_query(WEB, qid=0x7777), running.address)
        with trio.fail_after(WAIT):
            first = await sock.recv(65535)
        # Datagrams from one socket over loopback arrive in order: had the first packet been
        # answered, that answer would have come first.
        assert response_id(first) == 0x7777
        assert answer_ip(first) == [WEB_IP]
        with trio.move_on_after(0.2):
            extra = await sock.recv(65535)
            pytest.fail(f"an answer to a dropped packet: {extra.hex()}")
    assert running.handler.errors == 0


# --- TCP -----------------------------------------------------------------------------------------


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


class Frames:
    """Length-prefixed messages read off a TCP stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def next(self) -> bytes | None:
        """The next message, or None when the server closed the connection."""
        while True:
            if len(self.buffer) >= 2:
                size = int.from_bytes(self.buffer[:2])
                if len(self.buffer) >= 2 + size:
                    message = bytes(self.buffer[2 : 2 + size])
                    del self.buffer[: 2 + size]
                    return message
            try:
                chunk = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None  # reset by the server: closed all the same
            if not chunk:
                return None
            self.buffer += chunk


async def connect(running: Running) -> trio.SocketStream:
    with trio.fail_after(WAIT):
        return await trio.open_tcp_stream(*running.address)


async def test_tcp_two_queries_in_one_write(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    async with await connect(running) as stream:
        await stream.send_all(
            frame(make_query(WEB, qid=1)) + frame(make_query(svc("redis.default"), qid=2))
        )
        frames = Frames(stream)
        answers: dict[int, list[str]] = {}
        with trio.fail_after(WAIT):
            for _ in range(2):
                message = await frames.next()
                assert message is not None
                answers[response_id(message)] = answer_ip(message)
    assert answers == {1: [WEB_IP], 2: ["10.96.0.20"]}


async def test_tcp_many_pipelined_queries(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    count = 200  # more than the server's in-flight bound per connection
    async with await connect(running) as stream:
        await stream.send_all(b"".join(frame(make_query(WEB, qid=i)) for i in range(count)))
        frames = Frames(stream)
        seen = set()
        with trio.fail_after(WAIT):
            while len(seen) < count:
                message = await frames.next()
                assert message is not None
                assert answer_ip(message) == [WEB_IP]
                seen.add(response_id(message))
    assert seen == set(range(count))


async def test_tcp_message_split_across_writes(nursery: trio.Nursery) -> None:
    # read_timeout WAIT: the pieces' spacing is the stimulus, never a race with the timeout.
    running = await start(nursery, read_timeout=WAIT)
    data = frame(make_query(WEB, qid=0x5151))
    # The length prefix itself split, then the message in three pieces: 0.15 s in all.
    pieces = [data[:1], data[1:2], data[2:9], data[9:20], data[20:]]
    async with await connect(running) as stream:
        for piece in pieces:
            await stream.send_all(piece)
            await trio.sleep(0.03)
        with trio.fail_after(WAIT):
            message = await Frames(stream).next()
    assert message is not None
    assert response_id(message) == 0x5151
    assert answer_ip(message) == [WEB_IP]


async def test_tcp_big_answer_is_whole(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    async with await connect(running) as stream:
        await stream.send_all(frame(make_query(svc("big.default"), qid=3)))
        with trio.fail_after(WAIT):
            message = await Frames(stream).next()
    assert message is not None
    assert not message[2] & (wire.TC >> 8)
    assert answer_ip(message) == sorted(endpoint_ips(500))


async def test_tcp_formerr_and_dropped_messages(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    async with await connect(running) as stream:
        await stream.send_all(
            frame(header(qid=0x0E0E, qd=0))  # FORMERR
            + frame(make_query(WEB, qid=0x0D0D, flags=wire.QR))  # a response: no answer
            + frame(b"\x01\x02\x03")  # not even a header: no answer
            + frame(make_query(WEB, qid=0x0A0A))
        )
        frames = Frames(stream)
        got: dict[int, bytes] = {}
        with trio.fail_after(WAIT):
            for _ in range(2):
                message = await frames.next()
                assert message is not None
                got[response_id(message)] = message
        assert set(got) == {0x0E0E, 0x0A0A}
        assert got[0x0E0E][3] & 0xF == wire.FORMERR
        assert answer_ip(got[0x0A0A]) == [WEB_IP]
        # The connection is still open and serves the next query.
        await stream.send_all(frame(make_query(WEB, qid=0x0B0B)))
        with trio.fail_after(WAIT):
            message = await frames.next()
        assert message is not None
        assert response_id(message) == 0x0B0B


async def test_tcp_zero_length_message_closes_the_connection(nursery: trio.Nursery) -> None:
    # A zero-length message can hold no query: the connection is closed at once, after the
    # answers to what came before it — not when the idle timeout (60 s here) runs out.
    running = await start(nursery, idle_timeout=60.0)
    async with await connect(running) as stream:
        await stream.send_all(frame(make_query(WEB, qid=0x2A2A)) + b"\x00\x00")
        frames = Frames(stream)
        with trio.fail_after(WAIT):
            message = await frames.next()
            assert message is not None
            assert response_id(message) == 0x2A2A
            assert await frames.next() is None
    with trio.fail_after(WAIT):
        while running.server.tcp_connections:  # the server's side is gone too
            await trio.sleep(0.01)


async def test_tcp_idle_connection_is_closed(nursery: trio.Nursery) -> None:
    idle = 0.3
    running = await start(nursery, idle_timeout=idle, read_timeout=0.1)
    async with await connect(running) as stream:
        started = trio.current_time()
        with trio.fail_after(WAIT):
            assert await Frames(stream).next() is None
        elapsed = trio.current_time() - started
    assert elapsed >= idle * 0.9, "closed before the idle timeout"
    with trio.fail_after(WAIT):
        while running.server.tcp_connections:  # the server's side is gone too
            await trio.sleep(0.01)


async def test_tcp_connection_idle_after_an_answer_is_closed(nursery: trio.Nursery) -> None:
    # A pause of a tenth of the idle timeout keeps the connection; a loaded machine would
    # need to stall the client for 2.7 s to turn that pause into an idle timeout.
    idle = 3.0
    running = await start(nursery, idle_timeout=idle)
    async with await connect(running) as stream:
        frames = Frames(stream)
        for qid in (1, 2):
            if qid == 2:
                await trio.sleep(idle / 10)  # shorter than the idle timeout: still open
            await stream.send_all(frame(make_query(WEB, qid=qid)))
            with trio.fail_after(WAIT):
                message = await frames.next()
            assert message is not None
            assert response_id(message) == qid
        started = trio.current_time()
        with trio.fail_after(idle + WAIT):
            assert await frames.next() is None
        assert trio.current_time() - started >= idle / 2, "closed long before the idle timeout"


async def test_tcp_partial_frame_is_closed_after_read_timeout(nursery: trio.Nursery) -> None:
    # The idle timeout (60 s) is far past the wait (WAIT): a close within the wait is the read
    # timeout's, whatever the machine's load.
    idle, read = 60.0, 0.2
    running = await start(nursery, idle_timeout=idle, read_timeout=read)
    async with await connect(running) as stream:
        await stream.send_all(struct.pack("!H", 100) + bytes(10))  # promises 100, sends 10
        started = trio.current_time()
        with trio.fail_after(WAIT):
            assert await Frames(stream).next() is None
        elapsed = trio.current_time() - started
    assert elapsed >= read * 0.9, "closed before the read timeout"


async def test_tcp_message_trickled_past_read_timeout_is_closed(nursery: trio.Nursery) -> None:
    # The contract (server.py): a connection is closed "when a started message does not
    # complete within read_timeout". Each piece here arrives within read_timeout of the last,
    # but the message takes three times read_timeout to complete.
    idle, read = 60.0, 0.3
    running = await start(nursery, idle_timeout=idle, read_timeout=read)
    data = frame(make_query(WEB, qid=0x1D1D))
    pieces = [data[i : i + 8] for i in range(0, len(data), 8)]
    assert len(pieces) >= 6
    async with await connect(running) as stream:
        answered: bytes | None = None
        try:
            for piece in pieces:
                await stream.send_all(piece)
                await trio.sleep(read / 2)
            with trio.fail_after(WAIT):
                answered = await Frames(stream).next()
        except trio.BrokenResourceError:
            pass  # the server closed (and reset) the connection while we were still sending
    assert answered is None, "a message trickled in over 3 × read_timeout was answered"


async def test_client_that_never_reads_is_dropped_and_the_server_lives_on(
    nursery: trio.Nursery,
) -> None:
    # Answers of ~48 kB each; the client's receive window is tiny and it never reads, so the
    # server's send blocks and write_timeout must drop the connection — only that connection.
    huge = 3000
    cluster = build_cluster(
        services=[*default_services(), headless_service("huge", "default")],
        slices=[endpoint_slice("huge", "default", endpoint_ips(huge))],
    )
    crashes: list[Exception] = []
    running = await start(nursery, cluster, idle_timeout=WAIT, write_timeout=0.3, crashes=crashes)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        await sock.connect(running.address)
        queries = b"".join(frame(make_query(svc("huge.default"), qid=i)) for i in range(100))
        await sock.send(queries)  # ~5 MB of answers: more than any socket buffer holds
        with trio.fail_after(WAIT):
            while not running.server.tcp_connections:  # accepted ...
                await trio.sleep(0.01)
            while running.server.tcp_connections:  # ... and dropped
                await trio.sleep(0.01)
        await trio.sleep(0.1)  # time for a crash, if any, to reach `run`
        assert crashes == [], "dropping one TCP client took the whole server down"
        # The listener survived: UDP and new TCP connections are answered.
        assert answer_ip(await udp_exchange(running, make_query(WEB, qid=1))) == [WEB_IP]
        async with await connect(running) as stream:
            await stream.send_all(frame(make_query(WEB, qid=2)))
            with trio.fail_after(WAIT):
                message = await Frames(stream).next()
            assert message is not None
            assert answer_ip(message) == [WEB_IP]


async def test_tcp_and_udp_share_one_port(nursery: trio.Nursery) -> None:
    running = await start(nursery)
    assert running.server.port == running.port
    # Something answers TCP on the UDP port: the same server.
    async with await connect(running) as stream:
        await stream.send_all(frame(make_query(WEB, QTYPE.A, qid=9)))
        with trio.fail_after(WAIT):
            message = await Frames(stream).next()
    assert message is not None
    assert response_id(message) == 9

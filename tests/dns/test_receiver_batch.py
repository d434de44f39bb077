"""The receive thread's batch loop (kdns/dns/receiver.py, kdns/dns/mmsg.py) over real sockets:
a burst already queued is read in one recvmmsg and answered without giving the GIL away, every
answer goes to the client (address and port) that asked, on IPv4, IPv6 and dual-stack sockets;
misses reach trio with the address in Python's tuple form; `stop()` wakes the waiting thread."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from kdns.dns import mmsg
from kdns.dns.receiver import UdpReceiver
from tests.conftest import need

WAIT = 10.0
LABEL = 7  # the metrics label id the fake hits report


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def query(client: int, seq: int, hit: bool) -> bytes:
    """A datagram naming its client and sequence; the fake serving answers it iff `hit`."""
    return struct.pack("!HH?", client, seq, hit)


def answer_of(data: bytes) -> bytes:
    return b"answer:" + data


def echo_serving(
    seen: list[Any] | None = None, logged: list[Any] | None = None, slow_first: bool = False
) -> Any:
    """A serving whose cache answers the queries marked as hits with `answer_of` (and notes
    what the spinner had counted when it did), and has nothing for the rest. `slow_first`: the
    first lookup lets the GIL go for a moment, as a thread made to wait for it would."""

    def lookup(data: bytes, udp: bool) -> tuple[bytes, int] | None:
        if slow_first and not seen:
            time.sleep(0.005)  # another thread takes the GIL: this answer waits for it back
        if seen is not None:
            seen.append(SPIN[0])
        return (answer_of(data), LABEL) if data[4:5] == b"\x01" else None

    def query_log(addr: Any, proto: str, data: bytes, response: bytes, *rest: Any) -> None:
        assert logged is not None
        logged.append((addr, proto, data, response))

    handler = SimpleNamespace(
        cache=SimpleNamespace(lookup=lookup),
        forwarded=None,
        denial=lambda data: None,
        forward_miss=lambda miss, receiver: False,  # no forwarder: trio's
    )
    return SimpleNamespace(handler=handler, query_log=query_log if logged is not None else None)


SPIN = [0]


@contextmanager
def receiving(
    sock: socket.socket, serving: Any, family: str = "1", dual_stack: bool = False, **kw: Any
) -> Iterator[tuple[UdpReceiver, threading.Thread]]:
    receiver = UdpReceiver(sock, lambda: serving, lambda: None, family, dual_stack, **kw)
    thread = threading.Thread(target=receiver.run)
    try:
        yield receiver, thread
    finally:
        receiver.stop()
        if thread.ident is not None:
            thread.join(timeout=WAIT)
    assert not thread.is_alive()


def clients(family: socket.AddressFamily, host: str, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        client = socket.socket(family, socket.SOCK_DGRAM)
        client.bind((host, 0))
        client.settimeout(WAIT)
        out.append(client)
    return out


def wait_for(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


CASES = [
    # server family, server bind, client family, client host, dual-stack, family label
    pytest.param(socket.AF_INET, "127.0.0.1", socket.AF_INET, "127.0.0.1", False, "1", id="ipv4"),
    pytest.param(socket.AF_INET6, "::1", socket.AF_INET6, "::1", False, "2", id="ipv6"),
    pytest.param(socket.AF_INET6, "::", socket.AF_INET, "127.0.0.1", True, "1", id="dual-v4"),
    pytest.param(socket.AF_INET6, "::", socket.AF_INET6, "::1", True, "2", id="dual-v6"),
]


def test_recvmmsg_is_there() -> None:
    need(mmsg.available(), "recvmmsg/sendmmsg in libc (Linux)")


@pytest.mark.parametrize(("family", "bind", "client_family", "host", "dual", "label"), CASES)
def test_a_queued_burst_is_read_at_once_and_answered_to_each_client(
    family: socket.AddressFamily,
    bind: str,
    client_family: socket.AddressFamily,
    host: str,
    dual: bool,
    label: str,
) -> None:
    need(mmsg.available(), "recvmmsg/sendmmsg in libc (Linux)")
    if socket.AF_INET6 in (family, client_family):
        need(has_ipv6_loopback(), "an IPv6 loopback address")
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if dual:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((bind, 0))
        port = sock.getsockname()[1]
        askers = clients(client_family, host, 4)
        # 4 clients × 10 queries, all queued before the thread reads anything.
        for seq in range(10):
            for n, client in enumerate(askers):
                client.sendto(query(n, seq, True), (host, port))
        batch = mmsg.Batch(64)
        assert batch.receive(sock.fileno(), wait=True) == 40  # one read takes the burst
        for i in range(40):
            batch.reply(i, answer_of(batch.datagram(i)))
        assert batch.send(sock.fileno()) == []
        for n, client in enumerate(askers):  # in order, each to the client that asked
            got = [client.recvfrom(100) for _ in range(10)]
            assert [data for data, _ in got] == [answer_of(query(n, s, True)) for s in range(10)]
            assert {addr[1] for _, addr in got} == {port}
        # The same through the receiver: counted under the client's family, in one key.
        for seq in range(10):
            for n, client in enumerate(askers):
                client.sendto(query(n, seq, True), (host, port))
        with receiving(
            sock,
            echo_serving(),
            family="1" if family == socket.AF_INET else "2",
            dual_stack=dual,
            loop="batch",
        ) as (receiver, thread):
            assert receiver.loop == "batch"
            thread.start()
            for n, client in enumerate(askers):
                got = [client.recv(100) for _ in range(10)]
                assert got == [answer_of(query(n, s, True)) for s in range(10)]
            counts = receiver.counts.counts
            assert {fam: sum(e[0] for e in c.values()) for fam, c in counts.items() if c} == {
                label: 40
            }
        for client in askers:
            client.close()


@pytest.mark.parametrize("loop", ["batch", "auto"])
def test_a_queued_burst_is_answered_without_giving_the_gil_away(loop: str) -> None:
    """Another thread runs Python all along (a relist, say); with a long switch interval, a
    thread that let go of the GIL per packet would see it run between its packets. `auto`
    answers the first packet alone: it waits for the GIL, which sends the thread to batches."""
    need(mmsg.available(), "recvmmsg/sendmmsg in libc (Linux)")
    seen: list[int] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            SPIN[0] += 1

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        (client,) = clients(socket.AF_INET, "127.0.0.1", 1)
        for seq in range(40):
            client.sendto(query(0, seq, True), sock.getsockname())
        spinner = threading.Thread(target=spin)
        interval = sys.getswitchinterval()
        with receiving(sock, echo_serving(seen, slow_first=loop == "auto"), loop=loop) as (
            receiver,
            thread,
        ):
            sys.setswitchinterval(0.2)
            try:
                spinner.start()
                thread.start()
                got = [client.recv(100) for _ in range(40)]
            finally:
                stop.set()
                sys.setswitchinterval(interval)
                spinner.join(timeout=WAIT)
            burst_seen = list(seen)
            # Then queries one at a time, each answered: the reads find one datagram each, so
            # `auto` goes back to one per call (CALM_READS), losing none on the way.
            answered_one_by_one = []
            for seq in range(40, 140):
                client.sendto(query(0, seq, True), sock.getsockname())
                answered_one_by_one.append(client.recv(100))
        client.close()
    assert got == [answer_of(query(0, s, True)) for s in range(40)]
    assert len(burst_seen) == 40
    if loop == "batch":
        assert len(set(burst_seen)) == 1, "the spinner ran between two packets"
    else:
        # The first packet per packet, it waited for the GIL: the other 39 in one batch.
        assert receiver.batch_spells == 1
        assert len(set(burst_seen[1:])) == 1, "the spinner ran between two packets"
    assert answered_one_by_one == [answer_of(query(0, s, True)) for s in range(40, 140)]


@pytest.mark.parametrize("loop", ["auto", "batch", "packet"])
@pytest.mark.parametrize(("family", "bind", "client_family", "host", "dual", "label"), CASES)
def test_misses_and_the_query_log_get_the_address_in_tuple_form(
    loop: str,
    family: socket.AddressFamily,
    bind: str,
    client_family: socket.AddressFamily,
    host: str,
    dual: bool,
    label: str,
) -> None:
    if socket.AF_INET6 in (family, client_family):
        need(has_ipv6_loopback(), "an IPv6 loopback address")
    logged: list[Any] = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if dual:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((bind, 0))
        port = sock.getsockname()[1]
        (client,) = clients(client_family, host, 1)
        # What Python's own recvfrom says of this client: the form trio answers misses with.
        client.sendto(b"probe", (host, port))
        expected = sock.recvfrom(100)[1]
        with receiving(sock, echo_serving(logged=logged), loop=loop) as (receiver, thread):
            thread.start()
            client.sendto(query(0, 0, False), (host, port))  # a miss
            client.sendto(query(0, 1, True), (host, port))  # a hit, logged
            assert client.recv(100) == answer_of(query(0, 1, True))
            wait_for(lambda: receiver.misses and logged)
            misses = receiver.take_misses()
        client.close()
    assert [(data, addr) for data, addr, _, _ in misses] == [(query(0, 0, False), expected)]
    assert logged == [(expected, "udp", query(0, 1, True), answer_of(query(0, 1, True)))]
    if dual and client_family == socket.AF_INET:
        assert expected[0] == "::ffff:127.0.0.1"


@pytest.mark.parametrize("loop", ["auto", "batch", "packet"])
def test_stop_wakes_the_waiting_thread(loop: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        (client,) = clients(socket.AF_INET, "127.0.0.1", 1)
        with receiving(sock, echo_serving(), loop=loop) as (receiver, thread):
            thread.start()
            # Once it has answered, the thread goes back to waiting for the next datagram.
            client.sendto(query(0, 0, True), sock.getsockname())
            assert client.recv(100) == answer_of(query(0, 0, True))
            receiver.stop()
            thread.join(timeout=WAIT)
            assert not thread.is_alive()
        client.close()

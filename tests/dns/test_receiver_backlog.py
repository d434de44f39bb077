"""The receive thread's backlog of misses for trio is bounded (kdns/dns/receiver.py): when trio
is that far behind, further misses are dropped and counted, so a flood costs bounded memory."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import dns.message
import pytest

from kdns.dns.receiver import UdpReceiver

HOST = "127.0.0.1"
WAIT = 10.0


def missing_everything() -> SimpleNamespace:
    """A serving whose every query is a miss (no cache hit, no forwarded hit, no denial)."""
    handler = SimpleNamespace(
        cache=SimpleNamespace(lookup=lambda data, udp: None),
        forwarded=None,
        denial=lambda data: None,
        forward_miss=lambda miss, receiver: False,  # no forwarder: trio's
    )
    return SimpleNamespace(handler=handler, query_log=None)


@pytest.mark.parametrize("loop", ["auto", "batch", "packet"])
def test_misses_beyond_the_backlog_are_dropped_and_counted(loop: str) -> None:
    serving = missing_everything()
    wakes: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        receiver = UdpReceiver(
            sock, lambda: serving, lambda: wakes.append(1), "1", False, max_backlog=10, loop=loop
        )  # type: ignore[arg-type]
        thread = threading.Thread(target=receiver.run)
        thread.start()
        try:
            query = dns.message.make_query("x.default.svc.cluster.local", "A").to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                for _ in range(30):  # trio never takes them: a loop that fell far behind
                    client.sendto(query, sock.getsockname())
            deadline = time.monotonic() + WAIT
            while receiver.dropped < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (len(receiver.misses), receiver.dropped) == (10, 20)
            assert wakes == [1]  # one wake until trio takes them
            # Once trio has taken them, misses are queued (and wake trio) again.
            assert len(receiver.take_misses()) == 10
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(query, sock.getsockname())
            while not receiver.misses and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (len(receiver.misses), receiver.dropped, wakes) == (1, 20, [1, 1])
        finally:
            receiver.stop()
            thread.join(timeout=WAIT)
    assert not thread.is_alive()

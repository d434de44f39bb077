"""Reused UDP sockets for forwarded exchanges: per upstream, connected sockets on random ports.

Why: a fresh trio socket per attempt (socket, connect, the trio wrapper, close) was a large part
of a forwarded miss's cost. A socket that got its answer is kept and reused, a few times, for a
later question with a new ID.

Contract:
- `UdpPool.exchange(address, family, message, accept)` sends `message` from a socket of the
  pool connected to `address` and returns the first datagram `accept` takes; `accept` sees
  every datagram (the caller checks the ID and the question, RFC 5452 §9.1, and counts what it
  refuses); the wait goes on after a refused one. Raises OSError (an ICMP error, a send that
  fails) and is cancelled by the caller's timeout.
- RFC 5452 §9.2 (unpredictable port and ID): the caller gives each exchange a fresh random ID;
  the socket is picked at random among the idle ones of that upstream, each bound by the kernel
  to a random ephemeral port when it was connected, and it serves at most `USES` exchanges
  before it is closed, so the ports in use keep changing. Connected: the kernel delivers only
  datagrams from the upstream's address and port.
- One exchange at a time per socket, so no reply is ever read by another question's wait. A
  socket goes back idle only after an exchange that got its answer; one that was cancelled
  (timeout) or failed is closed, so a late reply never meets a later question.
- At most `IDLE_KEPT` idle sockets per upstream; `close()` closes them all (the forwarder's
  end). trio's thread only.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable

import trio

USES = 4  # exchanges per socket, then a fresh one (a new random port)
IDLE_KEPT = 64  # idle sockets kept per upstream
MAX_DATAGRAM = 65535

Address = tuple[str, int]


class UdpPool:
    def __init__(self) -> None:
        self._idle: dict[Address, list[tuple[socket.socket, int]]] = {}  # (socket, uses left)
        self.opened = 0  # sockets made so far (tests, and the curious)
        self.closed = False  # after `close()`, an exchange still in flight closes its socket

    async def exchange(
        self, address: Address, family: int, message: bytes, accept: Callable[[bytes], bool]
    ) -> bytes:
        sock, left = self._take(address, family)
        answered = False
        try:
            sock.send(message)  # a fresh socket's buffer is empty: a datagram never blocks here
            while True:
                await trio.lowlevel.wait_readable(sock)
                while True:
                    try:
                        reply = sock.recv(MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    if accept(reply):
                        answered = True
                        return reply
        finally:
            self._give_back(address, sock, left - 1, answered)

    def _take(self, address: Address, family: int) -> tuple[socket.socket, int]:
        idle = self._idle.get(address)
        if idle:
            # At random, not the last one back: which port the next question leaves from is
            # not predictable from the previous ones.
            i = secrets.randbelow(len(idle))
            idle[i], idle[-1] = idle[-1], idle[i]
            return idle.pop()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)  # binds a random ephemeral port (the kernel's choice)
        except OSError:
            sock.close()
            raise
        self.opened += 1
        return sock, USES

    def _give_back(self, address: Address, sock: socket.socket, left: int, answered: bool) -> None:
        idle = self._idle.setdefault(address, [])
        if answered and left > 0 and len(idle) < IDLE_KEPT and not self.closed:
            idle.append((sock, left))
        else:
            sock.close()

    def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for sock, _ in idle:
                sock.close()
        self._idle.clear()

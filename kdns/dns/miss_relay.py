"""Forwarded cache misses exchanged with plain UDP upstreams by the receive thread itself.

Why (docs/architecture.md §7): a miss handed to trio paid a hop, a parse, a task and trio's
`wait_readable` (an epoll register and unregister per wait), about thirty times what a C server
pays. A reader thread of its own then still cost each miss two hand-overs of a lock and the GIL
between the receive thread and the reader (a futex wake and a context switch each). So the
receive thread does it all: it sends the question (`submit`), and while exchanges are in
flight it waits on one epoll for both its clients and the replies (kdns/dns/receiver.py),
reading each reply when the epoll says so (`read`). One thread, no lock, no hand-over.

Contract:
- A `MissRelay` belongs to one receive thread, its owner: every method but `stop`, `__len__`
  and the counters is called from that thread only. Its sockets are registered in the owner's
  epoll (`poller`), which it never waits on itself.
- `submit(key, qname, upstream, question, cd, do, waiter)`: joins the exchange in flight for
  `key` (coalescing, among this owner's clients), or sends a fresh one from a pool socket;
  False when it cannot (stopped, `limit` exchanges in flight or `MAX_WAITERS` on this one —
  counted in `declined` —, a send that fails): the caller hands the query to trio as before.
  Never blocks.
- RFC 5452 §9.2: a fresh unpredictable ID per exchange (`IdSource`); the socket is picked at
  random among the idle ones connected to that upstream, each bound by the kernel to a random
  ephemeral port when connected and used for at most `USES` exchanges, then closed (the ports
  keep changing). Connected: the kernel drops datagrams from any other address. One exchange
  at a time per socket; a socket whose exchange expired or failed is closed, so a late reply
  never meets a later question.
- `read(fd)` (the owner's epoll reported `fd`; False when `fd` is none of this relay's): reads
  the reply, ignores one that does not match (RFC 5452 §9.1: ID, QR, question;
  `on_mismatch(pending)`, the wait goes on) and calls `on_reply(pending, waiters, reply)` once
  per exchange for the first that matches, `on_failed(pending, waiters, error)` when the socket
  reports an error (an ICMP port unreachable). `expire(now)` calls `on_expired(pending,
  waiters, True)` for each exchange with no answer by its deadline (`next_deadline()`; `timeout`
  after it was sent). The callbacks run in the owner's thread; they answer or hand back the
  waiters. The owner calls `on_idle(False)` before each wait (True: records wait to be handed
  on; the wait is then at most `idle_every`), and `on_idle(True)` when it goes back to waiting
  on its clients alone (hand them on now).
- `stop()` (any thread, idempotent): `submit` refuses from then on and `poke` wakes the owner,
  which then calls `close()`: every exchange in flight goes to `on_expired(pending, waiters,
  False)` (handed back, not a failure), every socket is closed, `closed` is set.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kdns.dns.upstream_misses import IdSource, Pending, PendingTable, matches, upstream_message

USES = 4  # exchanges per socket, then a fresh one (a new random port), as kdns/dns/udp_pool.py
IDLE_KEPT = 64  # idle sockets kept per upstream
MAX_DATAGRAM = 65535
IDLE_WAIT = 0.5  # seconds: `idle_every` unless the caller says (the owner's longest wait)

Address = tuple[str, int]
MSG_DONTWAIT = 0x40

# libc's send and recv through ctypes.PyDLL: the call keeps the GIL (kdns/dns/mmsg.py
# explains why). Every one here is non-blocking, so holding the GIL costs nothing, while a
# Python socket method gives the GIL away per call: with trio busy too, each such call could
# become a hand-over of the GIL between the threads.
_LIBC = ctypes.PyDLL(None, use_errno=True)
_send = _LIBC.send
_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_send.restype = ctypes.c_ssize_t
_recv = _LIBC.recv
_recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_recv.restype = ctypes.c_ssize_t


def available() -> bool:
    """Whether the relay can run here (Linux: epoll); elsewhere trio forwards every miss."""
    return hasattr(select, "epoll")


class MissRelay:
    def __init__(
        self,
        poller: select.epoll,
        timeout: float,
        limit: int,
        on_reply: Callable[[Pending, list[Any], bytes], None],
        on_failed: Callable[[Pending, list[Any], Exception], None],
        on_expired: Callable[[Pending, list[Any], bool], None],
        on_mismatch: Callable[[Pending], None],
        on_idle: Callable[[bool], bool] = lambda leaving: False,
        idle_every: float = IDLE_WAIT,
        poke: Callable[[], None] = lambda: None,
    ) -> None:
        self.poller = poller  # the owner's epoll: the pool's sockets are registered there
        self.timeout = timeout
        self.on_reply = on_reply
        self.on_failed = on_failed
        self.on_expired = on_expired
        self.on_mismatch = on_mismatch
        self.on_idle = on_idle
        self.idle_every = idle_every
        self.poke = poke  # wakes the owner (from any thread): `stop`
        self.table = PendingTable(limit)
        self.sent = 0  # exchanges sent (tests, and the curious)
        self.joined = 0  # queries that waited on an exchange already in flight
        self.opened = 0  # sockets made
        self.declined = 0  # queries left to trio: `limit` in flight, or too many on one
        self._ids = IdSource()
        self._idle: dict[Address, list[socket.socket]] = {}
        self._sockets: dict[int, socket.socket] = {}  # every pool socket, by descriptor
        self._left: dict[int, int] = {}  # exchanges each socket may still serve
        self.stopping = False  # `stop()` was called: the owner closes it at its next turn
        self.closed = threading.Event()  # set once `close` has closed everything
        self._buffer = ctypes.create_string_buffer(MAX_DATAGRAM)  # the reply's receive buffer

    def __len__(self) -> int:
        """Exchanges in flight (any thread may read it: one dict length)."""
        return len(self.table.by_key)

    def open_sockets(self) -> int:
        return len(self._sockets)

    def stop(self) -> None:
        """Refuse new exchanges and have the owner close everything (any thread)."""
        if not self.stopping:
            self.stopping = True
            self.poke()

    # --- the owner's side ----------------------------------------------------------------------

    def submit(
        self,
        key: bytes,
        qname: str,
        upstream: Any,
        question: bytes,
        cd: bool,
        do: bool,
        waiter: Any,
    ) -> bool:
        if self.stopping:
            return False
        table = self.table
        joined = table.join(key, waiter)
        if joined:
            self.joined += 1
            return True
        if joined is None or table.full():
            self.declined += 1
            return False  # crowded, or `limit` in flight: trio's
        try:
            sock = self._take((upstream.host, upstream.port), upstream.family)
        except OSError:
            return False
        qid = self._ids.take()
        fd = sock.fileno()
        message = upstream_message(qid, question, cd, do)
        if _send(fd, message, len(message), MSG_DONTWAIT) != len(message):
            self._close(fd)
            return False
        now = time.perf_counter()
        deadline = now + self.timeout
        table.add(Pending(key, qname, qid, question, upstream, sock, fd, now, deadline, [waiter]))
        self.sent += 1
        return True

    def _take(self, address: Address, family: int) -> socket.socket:
        idle = self._idle.get(address)
        if idle:
            # At random, not the last one back: the next question's port is not predictable
            # from the previous ones. From the IDs' batch of OS randomness (`secrets` would
            # read the OS's source once per call); at most IDLE_KEPT idle sockets, so the
            # remainder's bias is under 0.1 %.
            i = self._ids.take() % len(idle)
            idle[i], idle[-1] = idle[-1], idle[i]
            return idle.pop()
        # Non-blocking from its creation (one syscall fewer than `setblocking`; a socket made
        # with SOCK_NONBLOCK has Python's timeout 0 too).
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(address)  # binds a random ephemeral port (the kernel's choice)
            self.poller.register(sock.fileno(), select.EPOLLIN)
        except OSError:
            sock.close()
            raise
        self.opened += 1
        self._sockets[sock.fileno()] = sock
        self._left[sock.fileno()] = USES
        return sock

    def _close(self, fd: int) -> None:
        # Closing it takes it out of the epoll too (epoll(7): the last descriptor of the file
        # closed; a pool socket is never duplicated), before its number can be reused.
        sock = self._sockets.pop(fd, None)
        self._left.pop(fd, None)
        if sock is not None:
            sock.close()

    def _give_back(self, pending: Pending) -> None:
        # After an exchange that got its answer: idle again, or closed after USES.
        fd = pending.fd
        left = self._left.get(fd, 0) - 1
        idle = self._idle.setdefault((pending.upstream.host, pending.upstream.port), [])
        if left > 0 and len(idle) < IDLE_KEPT and not self.stopping:
            self._left[fd] = left
            idle.append(pending.sock)
        else:
            self._close(fd)

    def next_deadline(self) -> float | None:
        """When the oldest exchange in flight expires (perf_counter), None when none is."""
        return self.table.next_deadline()

    def read(self, fd: int) -> bool:
        """The owner's epoll reported `fd` readable: False when it is not this relay's."""
        if fd not in self._sockets:
            return False
        pending = self.table.by_fd.get(fd)
        got = _recv(fd, self._buffer, MAX_DATAGRAM, MSG_DONTWAIT)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return True
            # An ICMP error (port unreachable) for this socket's last send.
            self._close(fd)
            if pending is not None and not pending.done:
                waiters = self.table.finish(pending)
                self.on_failed(pending, waiters, OSError(err, os.strerror(err)))
            return True
        if pending is None or pending.done:
            return True  # late or stray, on an idle socket: nobody asked
        reply = ctypes.string_at(self._buffer, got)
        if not matches(reply, pending.qid, pending.question):
            self.on_mismatch(pending)  # forged or stray: keep waiting (RFC 5452 §9.1)
            return True
        waiters = self.table.finish(pending)
        self._give_back(pending)
        self.on_reply(pending, waiters, reply)
        return True

    def expire(self, now: float) -> None:
        """Hand each exchange past its deadline to `on_expired`, closing its socket."""
        for pending in self.table.expired(now):
            self._close(pending.fd)
            self.on_expired(pending, pending.waiters, True)

    def close(self) -> None:
        """Hand back every exchange in flight, close every socket (the owner, after `stop`
        or when it stops itself)."""
        self.stopping = True
        left = self.table.drain()
        for fd in list(self._sockets):
            self._close(fd)
        self._idle.clear()
        self.closed.set()
        for pending in left:
            self.on_expired(pending, pending.waiters, False)

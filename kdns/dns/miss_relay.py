"""Forwarded cache misses exchanged with plain UDP upstreams outside trio: sockets and a thread.

Why (docs/architecture.md §7): a miss handed to trio paid a hop, a parse, a task and trio's
`wait_readable` (an epoll register and unregister per wait), about thirty times what a C server
pays. Here the UDP receive thread sends the question itself (`submit`) and one reader thread
per forwarder waits for every reply at once (`run`, an epoll over the pool's sockets, the GIL
released while it waits).

Contract:
- `submit(key, qname, upstream, question, cd, do, waiter)` (any receive thread): joins the
  exchange in flight for `key` (coalescing), or sends a fresh one from a pool socket; False
  when it cannot (stopped, `limit` exchanges in flight or `MAX_WAITERS` on this one — counted
  in `declined` —, a send that fails): the caller hands the query to trio as before. Never
  blocks but on its lock, held for a dict update and one non-blocking send.
- RFC 5452 §9.2: a fresh unpredictable ID per exchange (`IdSource`); the socket is picked at
  random among the idle ones connected to that upstream, each bound by the kernel to a random
  ephemeral port when connected and used for at most `USES` exchanges, then closed (the ports
  keep changing). Connected: the kernel drops datagrams from any other address. One exchange
  at a time per socket; a socket whose exchange expired or failed is closed, so a late reply
  never meets a later question.
- The reader thread (`run`, until `stop()`) reads each reply, ignores one that does not match
  (RFC 5452 §9.1: ID, QR, question; `on_mismatch(pending)`, the wait goes on) and calls
  `on_reply(pending, waiters, reply)` once per exchange for the first that matches,
  `on_failed(pending, waiters, error)` when the socket reports an error (an ICMP port
  unreachable), `on_expired(pending, waiters)` when no answer came within `timeout`. The
  callbacks run in the reader thread; they answer or hand back the waiters. `on_idle()` is
  called before each wait; when it returns True (work it batches is waiting) the wait is at
  most `idle_every`. After `stop()`
  the thread hands every exchange still in flight to `on_expired`, closes every socket and
  returns; `submit` refuses from then on.
- Thread safety: the pending table and the idle sockets are touched only under `_lock` (the
  receive threads add, the reader finishes); an exchange's waiters are final once the reader
  has finished it under the lock, so no waiter is added after its answer went out.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from kdns.dns.upstream_misses import IdSource, Pending, PendingTable, matches, upstream_message

log = logging.getLogger(__name__)

USES = 4  # exchanges per socket, then a fresh one (a new random port), as kdns/dns/udp_pool.py
IDLE_KEPT = 64  # idle sockets kept per upstream
MAX_DATAGRAM = 65535
IDLE_WAIT = 0.5  # seconds the reader waits when nothing is in flight (stop() wakes it anyway)

Address = tuple[str, int]
MSG_DONTWAIT = 0x40

# libc's send, recv and sendto through ctypes.PyDLL: the call keeps the GIL (kdns/dns/mmsg.py
# explains why). Every one here is non-blocking, so holding the GIL costs nothing, while a
# Python socket method gives the GIL away per call: with three threads busy (the receive
# thread, this reader, trio), each such call became a hand-over of the GIL between threads.
_LIBC = ctypes.PyDLL(None, use_errno=True)
_send = _LIBC.send
_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_send.restype = ctypes.c_ssize_t
_recv = _LIBC.recv
_recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_recv.restype = ctypes.c_ssize_t
_sendto = _LIBC.sendto
_sendto.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint32,
]
_sendto.restype = ctypes.c_ssize_t
_FAMILY = struct.Struct("=H")
_V6_TAIL = struct.Struct("!I16s")


def available() -> bool:
    """Whether the relay can run here (Linux: epoll); elsewhere trio forwards every miss."""
    return hasattr(select, "epoll")


def sockaddr(address: tuple[Any, ...]) -> bytes:
    """Python's address tuple (as recvfrom gives it) → the raw sockaddr_in / sockaddr_in6."""
    host, port = address[0], address[1]
    if len(address) == 2:
        return (
            _FAMILY.pack(socket.AF_INET)
            + port.to_bytes(2, "big")
            + socket.inet_aton(host)
            + bytes(8)
        )
    host = host.split("%", 1)[0]
    return (
        _FAMILY.pack(socket.AF_INET6)
        + port.to_bytes(2, "big")
        + _V6_TAIL.pack(address[2], socket.inet_pton(socket.AF_INET6, host))
        + struct.pack("=I", address[3])
    )


_SOCKADDRS: dict[tuple[Any, ...], bytes] = {}  # the last clients' sockaddrs (any thread)
SOCKADDRS_KEPT = 1024


def send_to(fd: int, data: bytes, address: tuple[Any, ...]) -> bool:
    """Send a datagram without blocking and keeping the GIL; False when it was lost."""
    name = _SOCKADDRS.get(address)
    if name is None:
        if len(_SOCKADDRS) >= SOCKADDRS_KEPT:
            _SOCKADDRS.clear()  # one dict operation: safe from any thread under the GIL
        name = _SOCKADDRS[address] = sockaddr(address)
    return _sendto(fd, data, len(data), MSG_DONTWAIT, name, len(name)) == len(data)


class MissRelay:
    def __init__(
        self,
        timeout: float,
        limit: int,
        on_reply: Callable[[Pending, list[Any], bytes], None],
        on_failed: Callable[[Pending, list[Any], Exception], None],
        on_expired: Callable[[Pending, list[Any]], None],
        on_mismatch: Callable[[Pending], None],
        on_idle: Callable[[], bool] = lambda: False,
        idle_every: float = IDLE_WAIT,
    ) -> None:
        self.timeout = timeout
        self.on_reply = on_reply
        self.on_failed = on_failed
        self.on_expired = on_expired
        self.on_mismatch = on_mismatch
        self.on_idle = on_idle
        self.idle_every = idle_every
        self.table = PendingTable(limit)
        self.sent = 0  # exchanges sent (tests, and the curious)
        self.joined = 0  # queries that waited on an exchange already in flight
        self.opened = 0  # sockets made
        self.declined = 0  # queries left to trio: `limit` in flight, or too many on one
        self._ids = IdSource()
        self._lock = threading.Lock()
        self._idle: dict[Address, list[tuple[socket.socket, int]]] = {}
        self._sockets: dict[int, socket.socket] = {}  # every pool socket, by descriptor
        self._left: dict[int, int] = {}  # exchanges each socket may still serve
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self.stopping = False
        self.stopped = threading.Event()  # set once `run` has closed everything
        self._buffer = ctypes.create_string_buffer(MAX_DATAGRAM)  # the reader's receive buffer

    def __len__(self) -> int:
        return len(self.table)

    def open_sockets(self) -> int:
        return len(self._sockets)

    # --- the receive threads' side ---------------------------------------------------------

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
        with self._lock:
            if self.stopping:
                return False
            joined = self.table.join(key, waiter)
            if joined:
                self.joined += 1
                return True
            if joined is None or self.table.full():
                self.declined += 1
                return False  # crowded, or `limit` in flight: trio's
            address = (upstream.host, upstream.port)
            try:
                sock = self._take(address, upstream.family)
            except OSError:
                return False
            qid = self._ids.take()
            fd = sock.fileno()
            message = upstream_message(qid, question, cd, do)
            if _send(fd, message, len(message), MSG_DONTWAIT) != len(message):
                self._close(fd)
                return False
            now = time.perf_counter()
            pending = Pending(
                key, qname, qid, question, upstream, sock, fd, now, now + self.timeout, [waiter]
            )
            self.table.add(pending)
            self.sent += 1
        return True

    def _take(self, address: Address, family: int) -> socket.socket:
        idle = self._idle.get(address)
        if idle:
            # At random, not the last one back: the next question's port is not predictable
            # from the previous ones.
            i = secrets.randbelow(len(idle))
            idle[i], idle[-1] = idle[-1], idle[i]
            return idle.pop()[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)  # binds a random ephemeral port (the kernel's choice)
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        except OSError:
            sock.close()
            raise
        self.opened += 1
        self._sockets[sock.fileno()] = sock
        self._left[sock.fileno()] = USES
        return sock

    def _close(self, fd: int) -> None:
        # Under the lock. Unregistered before it is closed: the number may be reused at once.
        sock = self._sockets.pop(fd, None)
        self._left.pop(fd, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            sock.close()

    def _give_back(self, pending: Pending) -> None:
        # Under the lock, after an exchange that got its answer.
        fd = pending.fd
        left = self._left.get(fd, 0) - 1
        idle = self._idle.setdefault((pending.upstream.host, pending.upstream.port), [])
        if left > 0 and len(idle) < IDLE_KEPT and not self.stopping:
            self._left[fd] = left
            idle.append((pending.sock, left))
        else:
            self._close(fd)

    # --- the reader thread -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the reader (idempotent, from any thread); `run` returns soon after."""
        with self._lock:
            self.stopping = True
            if not self.stopped.is_set():  # the pipe is still open (closed under the lock)
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")

    def run(self) -> None:
        """The reader thread's body: until `stop()`, then hand back and close everything."""
        try:
            while not self.stopping:
                with self._lock:
                    deadline = self.table.next_deadline()
                now = time.perf_counter()
                wait = IDLE_WAIT if deadline is None else min(IDLE_WAIT, max(0.0, deadline - now))
                if self.on_idle():
                    wait = min(wait, self.idle_every)
                for fd, _ in self._epoll.poll(wait):
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 64)
                        continue
                    self._read(fd)
                if deadline is not None and time.perf_counter() >= deadline:
                    self._expire(time.perf_counter())
        finally:
            self._close_all()

    def _read(self, fd: int) -> None:
        # Under the lock: only this thread reads, but a receive thread may close a socket
        # whose send failed, and its number be reused at once.
        with self._lock:
            if fd not in self._sockets:
                return
            pending = self.table.by_fd.get(fd)
            got = _recv(fd, self._buffer, MAX_DATAGRAM, MSG_DONTWAIT)
            if got < 0:
                err = ctypes.get_errno()
                if err in (errno.EAGAIN, errno.EINTR):
                    return
                # An ICMP error (port unreachable) for this socket's last send.
                self._close(fd)
                if pending is None or pending.done:
                    return
                waiters = self.table.finish(pending)
            elif pending is None or pending.done:
                return  # late or stray, on an idle socket: nobody asked
            else:
                reply = ctypes.string_at(self._buffer, got)
                if not matches(reply, pending.qid, pending.question):
                    waiters = None  # forged or stray: keep waiting (RFC 5452 §9.1)
                else:
                    waiters = self.table.finish(pending)
                    self._give_back(pending)
        if got < 0:
            self.on_failed(pending, waiters, OSError(err, os.strerror(err)))
        elif waiters is None:
            self.on_mismatch(pending)
        else:
            self.on_reply(pending, waiters, reply)

    def _expire(self, now: float) -> None:
        with self._lock:
            expired = self.table.expired(now)
            for pending in expired:
                self._close(pending.fd)
        for pending in expired:
            self.on_expired(pending, pending.waiters)

    def _close_all(self) -> None:
        with self._lock:
            self.stopping = True
            left = self.table.drain()
            for fd in list(self._sockets):
                self._close(fd)
            self._idle.clear()
            self._epoll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.stopped.set()
        for pending in left:
            self.on_expired(pending, pending.waiters)

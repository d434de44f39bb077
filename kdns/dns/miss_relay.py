"""Forwarded cache misses exchanged with plain UDP upstreams outside trio: sockets and a thread.

Why (docs/architecture.md §7): a miss handed to trio paid a hop, a parse, a task and trio's
`wait_readable` (an epoll register and unregister per wait), about thirty times what a C server
pays. Here the UDP receive thread sends the question itself (`submit`) and one reader thread
per forwarder waits for every reply at once (`run`, an epoll over the pool's sockets, the GIL
released while it waits).

Contract:
- `submit(key, qname, upstream, question, cd, do, waiter)` (any receive thread): joins the
  exchange in flight for `key` (coalescing), or sends a fresh one from a pool socket; False
  when it cannot (stopped, `limit` exchanges in flight, a send that fails): the caller hands
  the query to trio as before. Never blocks but on its lock, held for a dict update and one
  non-blocking send.
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
  callbacks run in the reader thread; they answer or hand back the waiters. After `stop()`
  the thread hands every exchange still in flight to `on_expired`, closes every socket and
  returns; `submit` refuses from then on.
- Thread safety: the pending table and the idle sockets are touched only under `_lock` (the
  receive threads add, the reader finishes); an exchange's waiters are final once the reader
  has finished it under the lock, so no waiter is added after its answer went out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import socket
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


class MissRelay:
    def __init__(
        self,
        timeout: float,
        limit: int,
        on_reply: Callable[[Pending, list[Any], bytes], None],
        on_failed: Callable[[Pending, list[Any], OSError], None],
        on_expired: Callable[[Pending, list[Any]], None],
        on_mismatch: Callable[[Pending], None],
    ) -> None:
        self.timeout = timeout
        self.on_reply = on_reply
        self.on_failed = on_failed
        self.on_expired = on_expired
        self.on_mismatch = on_mismatch
        self.table = PendingTable(limit)
        self.sent = 0  # exchanges sent (tests, and the curious)
        self.joined = 0  # queries that waited on an exchange already in flight
        self.opened = 0  # sockets made
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
            if self.table.join(key, waiter):
                self.joined += 1
                return True
            if self.table.full():
                return False
            address = (upstream.host, upstream.port)
            try:
                sock = self._take(address, upstream.family)
            except OSError:
                return False
            qid = self._ids.take()
            fd = sock.fileno()
            try:
                sock.send(upstream_message(qid, question, cd, do))
            except OSError:
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
        with self._lock:
            pending = self.table.by_fd.get(fd)
            sock = self._sockets.get(fd)
        if sock is None:
            return
        try:
            reply = sock.recv(MAX_DATAGRAM)
        except BlockingIOError:
            return
        except OSError as e:
            # An ICMP error (port unreachable) for this socket's last send.
            with self._lock:
                if pending is None or pending.done:
                    self._close(fd)
                    return
                waiters = self.table.finish(pending)
                self._close(fd)
            self.on_failed(pending, waiters, e)
            return
        if pending is None or pending.done:
            return  # late or stray, on an idle socket: nobody asked
        if not matches(reply, pending.qid, pending.question):
            self.on_mismatch(pending)  # forged or stray: keep waiting (RFC 5452 §9.1)
            return
        with self._lock:
            if pending.done:
                return  # expired meanwhile: trio has it
            waiters = self.table.finish(pending)
            self._give_back(pending)
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

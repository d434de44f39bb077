"""The DNS listeners: UDP and TCP on one address, feeding a `Handler`.

Contract:
- UDP is received by a thread of its own (kdns/dns/receiver.py, docs/architecture.md §7): it
  answers answer-cache hits itself and hands everything else to the trio task `_serve_udp`,
  which answers it here as every query was answered before (the slow path, forwarding in a task
  of its own), then reads up to `TRIO_DRAIN` queued packets itself (a miss-heavy load would
  otherwise pass the GIL between the two threads per packet). Paying trio's scheduling per
  wake-up cost more than the lookup at paced rates.
  The store, the resolver and the caches stay the trio thread's: the receive thread only reads
  the answer cache. The UDP socket is blocking (for the thread); trio sends with MSG_DONTWAIT.
- TCP (RFC 7766): length-prefixed messages, several per connection, answered as each completes
  (pipelined queries may be answered out of order, §6.2.1.1); a connection is closed after
  `idle_timeout` without a query, when a started message does not complete within `read_timeout`,
  or when the client does not read its answers within `write_timeout`.
- A send that fails (client gone, buffer full) loses that one answer, never the listener.
- `run` calls `task_status.started((host, port))` once both sockets are bound.
- What answers is read from `serving` (a config reload swaps it as one reference): UDP reads it
  at each burst, TCP at each message; a query is answered entirely by the handler that took it,
  and logged by that config's `query_log` (CoreDNS's `log` plugin), if any.
- Under pressure (RFC 7766 §6.2.2) a full TCP listener makes room instead of refusing: at
  `max_tcp` connections, or `max_tcp_per_client` from one client address, or when accept runs
  out of file descriptors, the connection idle the longest is closed (kdns/dns/admission.py) and
  counted in `kdns_dns_tcp_evictions_total`; a newcomer is refused only when every connection it
  could displace has a query in flight. The process needs `max_tcp` + ~100 descriptors.
- A fixed port is bound with SO_REUSEPORT and steered to the newest socket
  (kdns/dns/reuseport.py): a restarted kdns binds beside this one and takes every new query.
- `stop_listening()` (shutdown after lameduck, or a new listen address) stops taking queries: the
  sockets stop receiving and TCP connections stop reading, while answers in flight (forwarded
  UDP questions, pipelined TCP ones) are still written; `run` returns once they are, and every
  socket is then closed.
- Every answered query is counted in `self.stats` (CoreDNS's request/response metrics, see
  kdns/dns/stats.py): by the receive thread in its own `ThreadCounts` (folded at scrape time)
  for its hits, before their send, and through `QueryStats.record` elsewhere. Its duration runs
  from reading the query to the end of the send (CoreDNS's from ServeDNS to WriteMsg), the
  send itself excepted for the thread's hits and for misses the forwarder's relay answered
  (counted by trio afterwards, through the receiver's `answered`, with the duration the relay
  measured up to its send). The answer caches' sizes and misses are their
  `stats()`, read from the current handler at scrape time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import trio

from kdns import metrics
from kdns.dns import reuseport
from kdns.dns.admission import FD_LIMIT, TcpAdmission
from kdns.dns.handler import Deferred, Handler
from kdns.dns.receiver import UdpReceiver
from kdns.dns.stats import CacheStats, QueryStats

# (client address, proto, query bytes, response bytes, metrics label id, seconds)
QueryLog = Callable[[tuple[str, int], str, bytes, bytes, int, float], None]

log = logging.getLogger(__name__)

TRIO_DRAIN = 64  # packets trio reads itself after answering a batch of misses (see below)
UDP_RECV_BUFFER = 4 << 20  # absorbs bursts while the process is busy elsewhere
MAX_TCP_CONNECTIONS = 1000
# One client address may hold a quarter of them: the rest stay for everyone else (RFC 7766
# §6.2.2 lets a server limit the connections of one client).
MAX_TCP_PER_CLIENT = 250
MAX_TCP_IN_FLIGHT = 64  # per connection (RFC 7766 §6.2.1.1 lets servers bound this)
# accept() errors that mean "out of descriptors": closing an idle connection frees one.
_FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Serving(Protocol):
    """What answers queries: one config's handler and query log, replaced whole, never edited."""

    @property
    def handler(self) -> Handler: ...

    @property
    def query_log(self) -> QueryLog | None: ...


@dataclass(frozen=True, slots=True)
class Fixed:
    """A `Serving` that never changes (a listener without reloads)."""

    handler: Handler
    query_log: QueryLog | None = None


@dataclass(eq=False, slots=True)
class _Connection:
    """One TCP client connection, as the listener and its admission see it."""

    stream: trio.SocketStream
    peer: tuple[str, int] | None
    reading: trio.CancelScope | None = None  # set while waiting for bytes
    waiting: bool = False  # waiting for a new message (nothing buffered)
    in_flight: int = 0  # queries taken, answers not yet written
    evicted: bool = False  # closed to make room: stop reading at once
    closed: trio.Event = field(default_factory=trio.Event)  # its socket is closed


class DnsServer:
    def __init__(
        self,
        serving: Handler | Callable[[], Serving],
        host: str,
        port: int,
        idle_timeout: float = 10.0,
        read_timeout: float = 2.0,
        write_timeout: float = 5.0,
        query_log: QueryLog | None = None,
        max_tcp: int = MAX_TCP_CONNECTIONS,
        max_tcp_per_client: int = MAX_TCP_PER_CLIENT,
    ) -> None:
        """`serving`: a handler (with `query_log`), or where to read the current `Serving`."""
        if isinstance(serving, Handler):
            fixed = Fixed(serving, query_log)
            self.serving: Callable[[], Serving] = lambda: fixed
        else:
            self.serving = serving
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self._udp_send_errors = 0  # trio's; the receive thread counts its own
        self._receiver: UdpReceiver | None = None
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self.draining = False
        self._loops: list[trio.CancelScope] = []  # the receive loops; stop_listening ends them
        self._connections: dict[_Connection, None] = {}  # open TCP connections
        self._admission: TcpAdmission[_Connection] = TcpAdmission(max_tcp, max_tcp_per_client)
        # CoreDNS's address family label: 1 IPv4, 2 IPv6; a dual-stack socket decides per client.
        self.family = "2" if ":" in host else "1"
        self.dual_stack = host == "::"
        self.stats = QueryStats(self._server_label())
        self.stats.caches += [self._answer_cache_stats, self._upstream_cache_stats]

    @property
    def udp_send_errors(self) -> int:
        """UDP answers lost to a failed send (full buffer, unreachable client)."""
        thread = self._receiver.send_errors if self._receiver is not None else 0
        return self._udp_send_errors + thread

    @property
    def tcp_connections(self) -> int:
        return len(self._connections)

    def _server_label(self) -> str:
        # CoreDNS's `server` label: "dns://:53" for every address, else "dns://HOST:PORT".
        host = "" if self.host in ("0.0.0.0", "::") else self.host
        return f"dns://[{host}]:{self.port}" if ":" in host else f"dns://{host}:{self.port}"

    def _answer_cache_stats(self) -> tuple[str, CacheStats]:
        resolver = self.serving().handler.resolver  # the current one: a reload may replace it
        zones = ",".join(z + "." for z in (*resolver.forward_zones, *resolver.reverse_zones))
        return zones, self.serving().handler.cache.stats()

    def _upstream_cache_stats(self) -> tuple[str, CacheStats] | None:
        forwarder = self.serving().handler.forwarder
        return None if forwarder is None else (".", forwarder.cache.stats())

    def _family_of(self, client: str | None) -> str:
        if self.dual_stack and client is not None:
            return "1" if client.startswith("::ffff:") else "2"
        return self.family

    def bind(self) -> None:
        """Bind both sockets now (raises OSError), so a taken port fails before anything runs."""
        if self._sockets is None:
            try:
                # Port 0: UDP picks a port and TCP takes the same number, which a TCP socket
                # elsewhere may already hold; then pick again.
                for attempt in range(10 if self.port == 0 else 1):
                    try:
                        self._sockets = self._bind()
                        break
                    except OSError as e:
                        if e.errno != errno.EADDRINUSE or attempt == 9 or self.port != 0:
                            raise
            except OSError as e:
                raise OSError(
                    e.errno, f"cannot listen on {self.host}:{self.port}: {e.strerror}"
                ) from None

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                if family == socket.AF_INET6 and self.host == "::":
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.port != 0:
                # A restart binds beside this process and takes its queries over
                # (kdns/dns/reuseport.py). Not for port 0: an ephemeral port could be shared
                # with an unrelated listener of the same user.
                for sock in (udp, tcp):
                    reuseport.share(sock)
            # The kernel caps the buffer at net.core.rmem_max; the default still works.
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECV_BUFFER)
            udp.bind((self.host, self.port))
            # Port 0 (tests): TCP takes the port the kernel gave UDP, so both share one address.
            port = udp.getsockname()[1]
            tcp.bind((self.host, port))
            tcp.listen(1024)
            if self.port != 0:
                for sock in (udp, tcp):
                    reuseport.steer(sock)
            tcp.setblocking(False)  # the UDP socket blocks: the receive thread waits in its read
        except OSError:
            udp.close()
            tcp.close()
            raise
        self.port = port
        self.stats.server = self._server_label()
        return udp, tcp

    def close(self) -> None:
        """Close sockets bound but never run (a reload that gave up)."""
        if self._sockets is not None:
            for sock in self._sockets:
                sock.close()
            self._sockets = None

    def stop_listening(self) -> None:
        self.draining = True
        for loop in self._loops:
            loop.cancel()
        for connection in self._connections:
            if connection.reading is not None:
                connection.reading.cancel()

    def _receiving(self) -> trio.CancelScope:
        scope = trio.CancelScope()
        if self.draining:
            scope.cancel()
        self._loops.append(scope)
        return scope

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.bind()
        assert self._sockets is not None
        udp, tcp = self._sockets
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp))
        log.info("serving DNS on %s port %d (UDP and TCP)", self.host, self.port)
        try:
            # `answers` holds the receive loops and what is in flight (forwarded UDP questions,
            # TCP connections); stop_listening ends the loops and lets the rest finish.
            async with trio.open_nursery() as answers:
                answers.start_soon(self._serve_udp, udp, answers)
                answers.start_soon(self._serve_tcp, listener, answers)
                task_status.started((self.host, self.port))
        finally:
            udp.close()
            self._sockets = None

    # --- UDP -----------------------------------------------------------------------------------

    async def _serve_udp(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        """Run the receive thread (kdns/dns/receiver.py) and answer what it hands over."""
        token = trio.lowlevel.current_trio_token()
        ready = [trio.Event()]  # set (in the trio thread) when the receiver has misses

        def wake() -> None:  # the receive thread's side: one call per batch of misses
            with contextlib.suppress(trio.RunFinishedError):  # the run is over: nobody answers
                token.run_sync_soon(lambda: ready[0].set())

        # The benchmarks compare the receive loops in one sitting (tests/bench/relist_flood.py):
        # `packet` or `batch` only instead of `auto`. Not a setting: `auto` is the better one.
        loop = os.environ.get("KDNS_BENCH_UDP_RECEIVE", "auto")
        receiver = UdpReceiver(
            sock,
            self.serving,
            wake,
            self.family,
            self.dual_stack,
            loop=loop if loop in ("auto", "batch", "packet") else "auto",
        )
        receiver.answered = self._count  # misses its relays answered (counted by trio)
        self._receiver = receiver
        self.stats.threads.append(receiver.counts)
        with self._receiving():
            async with trio.open_nursery() as thread:
                thread.start_soon(
                    partial(
                        trio.to_thread.run_sync,
                        receiver.run,
                        abandon_on_cancel=False,  # waits for the thread: stop() ends it
                        limiter=trio.CapacityLimiter(1),
                    )
                )
                try:
                    while True:
                        await ready[0].wait()
                        ready[0] = trio.Event()
                        self._answer_misses(receiver, nursery)
                finally:
                    # stop_listening (or shutdown) cancelled us: the thread stops receiving,
                    # and the nursery waits until it has returned.
                    receiver.stop()
        # What it received before it stopped is still answered.
        self._answer_misses(receiver, nursery)

    def _answer_misses(self, receiver: UdpReceiver, nursery: trio.Nursery) -> None:
        """Answer in trio what the receive thread could not: as before the thread, a miss may
        still hit (an answer stored since), else the handler's slow path; forwarding waits on
        the network in a task of its own, so everything else goes on meanwhile."""
        sock = receiver.sock
        for data, addr, start, serving in receiver.take_misses():
            self._answer_udp(sock, serving, data, addr, start, nursery)
        # Only the threads write these; one read each.
        dropped = receiver.dropped + receiver.dropped_back
        if dropped > receiver.dropped_counted:
            metrics.DNS_UDP_DROPPED.labels(self.stats.server).inc(
                dropped - receiver.dropped_counted
            )
            receiver.dropped_counted = dropped
        # Under a miss-heavy load (forwarding, never-asked names) trio is awake anyway: it reads
        # what is queued itself, up to TRIO_DRAIN packets, rather than pass the GIL back and
        # forth with the receive thread for each one (a UDP datagram goes to one reader only).
        serving = self.serving()
        for _ in range(TRIO_DRAIN if not self.draining else 0):
            try:
                data, addr = sock.recvfrom(65535, socket.MSG_DONTWAIT)
            except OSError:
                break  # nothing queued (or an error the receive thread will see and log)
            if not data:
                break  # the receive side is shut down (stop_listening)
            self._answer_udp(sock, serving, data, addr, time.perf_counter(), nursery)
        if receiver.counts.full:
            self.stats.fold()  # the thread's counts reached their bound before a scrape did

    def _answer_udp(
        self,
        sock: socket.socket,
        serving: Serving,
        data: bytes,
        addr: tuple[str, int],
        start: float,
        nursery: trio.Nursery,
    ) -> None:
        reply = serving.handler.handle(data, True, addr[0])
        if reply is None:
            return
        if isinstance(reply, Deferred):
            nursery.start_soon(self._udp_deferred, sock, serving, reply, addr, data, start)
            return
        response, label = reply
        self._udp_send(sock, response, addr)
        self._count(serving, addr, "udp", data, response, label, start)

    def _udp_send(self, sock: socket.socket, response: bytes, addr: tuple[str, int]) -> None:
        # The socket blocks (for the receive thread): trio's sends must not.
        try:
            sock.sendto(response, socket.MSG_DONTWAIT, addr)
        except OSError as e:
            # Full send buffer or an unreachable client: this answer is lost (UDP).
            self._udp_send_errors += 1
            if e.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH):
                log.debug("UDP send error to %s: %s", addr, e)

    async def _udp_deferred(
        self,
        sock: socket.socket,
        serving: Serving,
        deferred: Deferred,
        addr: tuple[str, int],
        data: bytes,
        start: float,
    ) -> None:
        response, label = await serving.handler.complete(deferred)
        self._udp_send(sock, response, addr)
        self._count(serving, addr, "udp", data, response, label, start)

    def _count(
        self,
        serving: Serving,
        addr: tuple[str, int],
        proto: str,
        data: bytes,
        response: bytes,
        label: int,
        start: float,
        elapsed: float | None = None,
    ) -> None:
        if elapsed is None:
            elapsed = time.perf_counter() - start
        family = self._family_of(addr[0])
        self.stats.record(proto, family, label, len(data), len(response), elapsed)
        if serving.query_log is not None:
            serving.query_log(addr, proto, data, response, label, elapsed)

    # --- TCP -----------------------------------------------------------------------------------

    async def _serve_tcp(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        # Connections run in `nursery` (run's), so closing the listener leaves them to finish.
        with self._receiving():
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as e:
                        evicted = self._evict_for_descriptor() if e.errno in _FD_ERRORS else None
                        if evicted is not None:
                            # Its descriptor is free once it has closed: wait for that (bounded),
                            # or the next accept fails too and closes another.
                            with trio.move_on_after(1.0):
                                await evicted.closed.wait()
                            continue
                        # Nothing idle to close: back off briefly instead of spinning.
                        log.warning("TCP accept failed: %s", e)
                        await trio.sleep(0.1)
                        continue
                    try:
                        peer: tuple[str, int] | None = stream.socket.getpeername()[:2]
                    except OSError:
                        peer = None  # already gone
                    connection = _Connection(stream, peer)
                    admitted = self._admission.admit(connection, peer[0] if peer else "")
                    for other, reason in admitted.close:
                        self._evict(other, reason)
                    if not admitted.ok:
                        await stream.aclose()  # every connection it could displace is busy
                        continue
                    self._connections[connection] = None
                    nursery.start_soon(self._tcp_connection, connection)

    def _evict(self, connection: _Connection, reason: str) -> None:
        """Close an idle connection to make room (RFC 7766 §6.2.2): its read ends, and with
        nothing in flight the connection closes at once."""
        metrics.DNS_TCP_EVICTIONS.labels(self.stats.server, reason).inc()
        connection.evicted = True  # in case its task has not started reading yet
        if connection.reading is not None:
            connection.reading.cancel()

    def _evict_for_descriptor(self) -> _Connection | None:
        oldest = self._admission.make_room()
        if oldest is not None:
            self._evict(oldest, FD_LIMIT)
        return oldest

    async def _tcp_connection(self, connection: _Connection) -> None:
        """Read one TCP connection's messages until its client closes it, it idles out or a
        started message does not complete in time, or it is evicted or drained; the answers
        in flight are sent before it closes."""
        stream = connection.stream
        send_lock = trio.Lock()
        in_flight = trio.Semaphore(MAX_TCP_IN_FLIGHT)
        try:
            async with stream, trio.open_nursery() as nursery:
                buffer = bytearray()
                # A started message must complete by a fixed deadline: restarting the timer on
                # every piece would let a client trickle bytes and hold the connection forever.
                message_deadline = 0.0
                while True:
                    deadline = (
                        message_deadline if buffer else trio.current_time() + self.idle_timeout
                    )
                    with trio.move_on_at(deadline) as reading:
                        # stop_listening and an eviction cancel the read: no new queries,
                        # in-flight ones finish.
                        connection.reading = reading
                        if self.draining or connection.evicted:
                            reading.cancel()
                        chunk = await self._receive(connection, idle=not buffer)
                        if not chunk:
                            break  # the client closed its side: finish what is in flight
                        if not buffer:
                            message_deadline = trio.current_time() + self.read_timeout
                        buffer += chunk
                        # Inside the read's scope: a drain or an eviction also ends a wait
                        # for an answer slot.
                        taken = await self._start_answers(
                            connection, buffer, nursery, send_lock, in_flight
                        )
                        if taken is None:
                            break
                        if taken:
                            message_deadline = trio.current_time() + self.read_timeout
                        continue
                    break  # a timeout or an eviction: idle, or a message that never completed
        finally:
            connection.reading = None
            connection.closed.set()
            self._connections.pop(connection, None)
            self._admission.leave(connection)

    async def _receive(self, connection: _Connection, idle: bool) -> bytes:
        """The next piece of `connection`'s stream, b"" once it is over; admission counts the
        connection as idle meanwhile when `idle` (no part of a message read, `_waiting`)."""
        self._waiting(connection, idle)
        try:
            return await connection.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # Reset by the client, or closed by an answer whose client stopped reading:
            # either way this connection is over.
            return b""
        finally:
            self._waiting(connection, False)

    async def _start_answers(
        self,
        connection: _Connection,
        buffer: bytearray,
        nursery: trio.Nursery,
        send_lock: trio.Lock,
        in_flight: trio.Semaphore,
    ) -> int | None:
        """Take each complete message off the front of `buffer` (RFC 1035 §4.2.2: a two-octet
        length, then the message) and start its answer in `nursery`, at most
        MAX_TCP_IN_FLIGHT at once (RFC 7766 §6.2.1.1: pipelined queries are answered
        concurrently); how many were taken, or None at a zero-length message, after which the
        connection closes."""
        taken = 0
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2])
            if size == 0:
                # A zero-length message holds no query and never will: the client is broken
                # or probing; close at once rather than wait out the idle timeout (answers in
                # flight are still sent).
                return None
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            await in_flight.acquire()
            connection.in_flight += 1
            nursery.start_soon(self._tcp_answer, connection, send_lock, in_flight, message)
            taken += 1
        return taken

    def _waiting(self, connection: _Connection, waiting: bool) -> None:
        """Tell admission whether `connection` is idle: waiting for a new message with no
        answer in flight (RFC 7766 §6.2.2's idle connection)."""
        connection.waiting = waiting
        if waiting and connection.in_flight == 0:
            self._admission.idle(connection)
        else:
            self._admission.busy(connection)

    async def _tcp_answer(
        self,
        connection: _Connection,
        send_lock: trio.Lock,
        in_flight: trio.Semaphore,
        message: bytes,
    ) -> None:
        start = time.perf_counter()
        stream, peer = connection.stream, connection.peer
        serving = self.serving()  # the one that took the query answers it (a reload may swap)
        handler = serving.handler
        try:
            reply = handler.handle(message, False, peer[0] if peer else None)
            if isinstance(reply, Deferred):
                reply = await handler.complete(reply)
            if reply is None:
                return
            response, label = reply
            async with send_lock:
                with trio.move_on_after(self.write_timeout) as scope:
                    try:
                        await stream.send_all(len(response).to_bytes(2) + response)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if scope.cancelled_caught:
                    await stream.aclose()  # the client does not read: give up on it
                    return
            self._count(serving, peer or ("", 0), "tcp", message, response, label, start)
        finally:
            in_flight.release()
            connection.in_flight -= 1
            if connection.waiting and connection.in_flight == 0:
                self._admission.idle(connection)

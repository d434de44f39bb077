"""The DNS listeners: UDP and TCP on one address, under trio, feeding a `Handler`.

Contract:
- UDP drains bursts (docs/architecture.md §7): wait until the socket is readable once, then receive
  without blocking until it is empty or `burst` packets were served, answering each inline. Awaiting
  once per packet costs about 2.5× the throughput in trio.
- TCP (RFC 7766): length-prefixed messages, several per connection, answered as each completes
  (pipelined queries may be answered out of order, §6.2.1.1); a connection is closed after
  `idle_timeout` without a query, when a started message does not complete within `read_timeout`,
  or when the client does not read its answers within `write_timeout`.
- A send that fails (client gone, buffer full) loses that one answer, never the listener.
- `run` calls `task_status.started((host, port))` once both sockets are bound.
- `handler` may be replaced while running (a config reload): UDP picks it up at the next burst,
  TCP at the next message; a query is answered entirely by the handler that took it.
- `stop_listening()` (shutdown after lameduck, or a new listen address) stops taking queries: the
  sockets stop receiving and TCP connections stop reading, while answers in flight (forwarded
  UDP questions, pipelined TCP ones) are still written; `run` returns once they are, and every
  socket is then closed.
- Every answered query is counted in `self.stats` (CoreDNS's request/response metrics, see
  kdns/metrics.py): inline in the UDP loop — one clock read and one dict update per packet —
  and through `QueryStats.record` elsewhere. Its duration runs from reading the query to the
  end of the send (CoreDNS's from ServeDNS to WriteMsg, plus the receive). The answer caches'
  sizes and hits are read from the (current) handler's caches at scrape time.
- `query_log`, when given, is called for each answered query (CoreDNS's `log` plugin).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from bisect import bisect_left
from collections.abc import Callable

import trio

from kdns import metrics
from kdns.dns.handler import Deferred, Handler

# (client address, proto, query bytes, response bytes, metrics label id, seconds)
QueryLog = Callable[[tuple[str, int], str, bytes, bytes, int, float], None]

log = logging.getLogger(__name__)

UDP_BURST = 256  # packets served per wake-up before other tasks get a turn
UDP_RECV_BUFFER = 4 << 20  # absorbs bursts while the process is busy elsewhere
MAX_TCP_CONNECTIONS = 1000
MAX_TCP_IN_FLIGHT = 64  # per connection (RFC 7766 §6.2.1.1 lets servers bound this)


class DnsServer:
    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        idle_timeout: float = 10.0,
        read_timeout: float = 2.0,
        write_timeout: float = 5.0,
        query_log: QueryLog | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.query_log = query_log
        self.tcp_connections = 0
        self.udp_send_errors = 0
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self.draining = False
        self._loops: list[trio.CancelScope] = []  # the receive loops; stop_listening ends them
        self._readers: dict[trio.SocketStream, trio.CancelScope] = {}  # each connection's read
        # CoreDNS's address family label: 1 IPv4, 2 IPv6; a dual-stack socket decides per client.
        self.family = "2" if ":" in host else "1"
        self.dual_stack = host == "::"
        self.stats = metrics.QueryStats(self._server_label())
        self.stats.caches += [self._answer_cache_stats, self._upstream_cache_stats]

    def _server_label(self) -> str:
        # CoreDNS's `server` label: "dns://:53" for every address, else "dns://HOST:PORT".
        host = "" if self.host in ("0.0.0.0", "::") else self.host
        return f"dns://[{host}]:{self.port}" if ":" in host else f"dns://{host}:{self.port}"

    def _answer_cache_stats(self) -> metrics.CacheStats:
        handler = self.handler  # the current one: a reload may have replaced it
        cache, resolver = handler.cache, handler.resolver
        labels = metrics.LABELS.labels
        denial = sum(1 for entry in cache.entries.values() if labels[entry[5]].cache == "denial")
        return metrics.CacheStats(
            zones=",".join(z + "." for z in (*resolver.forward_zones, *resolver.reverse_zones)),
            success=len(cache.entries) - denial,
            denial=denial,
            misses=cache.misses,
        )

    def _upstream_cache_stats(self) -> metrics.CacheStats | None:
        if self.handler.forwarder is None:
            return None
        cache = self.handler.forwarder.cache
        return metrics.CacheStats(
            zones=".",
            success=len(cache.success),
            denial=len(cache.denial),
            misses=cache.misses,
            hits_success=cache.hits - cache.hits_denial,
            hits_denial=cache.hits_denial,
            served_stale=cache.served_stale,
        )

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
            # The kernel caps the buffer at net.core.rmem_max; the default still works.
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECV_BUFFER)
            udp.bind((self.host, self.port))
            # Port 0 (tests): TCP takes the port the kernel gave UDP, so both share one address.
            port = udp.getsockname()[1]
            tcp.bind((self.host, port))
            tcp.listen(1024)
            udp.setblocking(False)
            tcp.setblocking(False)
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
        for reading in self._readers.values():
            reading.cancel()

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
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        clock = time.perf_counter
        stats = self.stats
        counts = stats.counts[("udp", self.family)]
        counts_v4, counts_v6 = stats.counts[("udp", "1")], stats.counts[("udp", "2")]
        dual_stack = self.dual_stack
        first_bucket = metrics.DURATION_BUCKETS[0]
        buckets = metrics.DURATION_BUCKETS
        # `run` closes the socket, once the answers in flight are sent.
        with self._receiving():
            while True:
                await trio.lowlevel.wait_readable(sock)
                # Bound once per burst: attribute lookups per packet are a measurable share of
                # the hot path. A reload swaps the handler between bursts, never inside one.
                handler = self.handler
                cache = handler.cache
                answer, handle_miss = cache.answer, handler.handle_miss
                # One clock read per packet: a query's time runs from the end of the previous
                # one (or the wake-up) to the end of its send, so it includes its own receive.
                last = clock()
                for _ in range(UDP_BURST):
                    try:
                        data, addr = recvfrom(65535)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        # ICMP errors surface on later receives on some kernels; not ours to fix.
                        log.debug("UDP receive error: %s", e)
                        last = clock()
                        continue
                    response = answer(data, True)
                    if response is None:
                        response = handle_miss(data, True, addr[0])
                        if response is None:
                            last = clock()
                            continue
                        if isinstance(response, Deferred):
                            # Forwarding waits on the network: in a task of its own, so the
                            # loop goes on answering everything else meanwhile.
                            nursery.start_soon(
                                self._udp_deferred, sock, handler, response, addr, data, last
                            )
                            last = clock()
                            continue
                        label = handler.label
                    else:
                        label = cache.label
                    try:
                        sendto(response, addr)
                    except OSError as e:
                        # Full send buffer or an unreachable client: this answer is lost (UDP).
                        self.udp_send_errors += 1
                        if e.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH):
                            log.debug("UDP send error to %s: %s", addr, e)
                    # Counted inline (see QueryStats): a method call per query costs more.
                    now = clock()
                    elapsed = now - last
                    last = now
                    if dual_stack:
                        counts = counts_v4 if addr[0].startswith("::ffff:") else counts_v6
                    key = (
                        label,
                        len(data),
                        len(response),
                        0 if elapsed <= first_bucket else bisect_left(buckets, elapsed),
                    )
                    entry = counts.get(key)
                    if entry is None:
                        stats.add(counts, key, elapsed)
                    else:
                        entry[0] += 1
                        entry[1] += elapsed
                    if self.query_log is not None:
                        self.query_log(addr, "udp", data, response, label, elapsed)
                        last = clock()  # the log line is not the next query's time

    async def _udp_deferred(
        self,
        sock: socket.socket,
        handler: Handler,
        deferred: Deferred,
        addr: tuple[str, int],
        data: bytes,
        start: float,
    ) -> None:
        response = await handler.complete(deferred)
        if response is None:
            return
        try:
            sock.sendto(response, addr)
        except OSError:
            self.udp_send_errors += 1
        self._count(addr, "udp", data, response, deferred.label, start)

    def _count(
        self,
        addr: tuple[str, int],
        proto: str,
        data: bytes,
        response: bytes,
        label: int,
        start: float,
    ) -> None:
        elapsed = time.perf_counter() - start
        family = self._family_of(addr[0])
        self.stats.record(proto, family, label, len(data), len(response), elapsed)
        if self.query_log is not None:
            self.query_log(addr, proto, data, response, label, elapsed)

    # --- TCP -----------------------------------------------------------------------------------

    async def _serve_tcp(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        # Connections run in `nursery` (run's), so closing the listener leaves them to finish.
        with self._receiving():
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as e:
                        # EMFILE and friends: back off briefly instead of spinning.
                        log.warning("TCP accept failed: %s", e)
                        await trio.sleep(0.1)
                        continue
                    if self.tcp_connections >= MAX_TCP_CONNECTIONS:
                        await stream.aclose()
                        continue
                    nursery.start_soon(self._tcp_connection, stream)

    async def _tcp_connection(self, stream: trio.SocketStream) -> None:
        self.tcp_connections += 1
        send_lock = trio.Lock()
        in_flight = trio.Semaphore(MAX_TCP_IN_FLIGHT)
        try:
            peer: tuple[str, int] | None = stream.socket.getpeername()[:2]
        except OSError:
            peer = None  # already gone
        try:
            async with stream, trio.open_nursery() as nursery:
                buffer = bytearray()
                # A started message must complete by a fixed deadline: restarting the timer on
                # every piece would let a client trickle bytes and hold the connection forever.
                message_deadline = 0.0
                while True:
                    if buffer:
                        deadline = message_deadline
                    else:
                        deadline = trio.current_time() + self.idle_timeout
                    with trio.move_on_at(deadline) as reading:
                        # stop_listening cancels the read: no new queries, in-flight ones finish.
                        self._readers[stream] = reading
                        if self.draining:
                            reading.cancel()
                        try:
                            chunk = await stream.receive_some(65536)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            # Reset by the client, or closed by an answer whose client stopped
                            # reading: either way this connection is over.
                            chunk = b""
                        if not chunk:
                            break  # the client closed its side: finish what is in flight
                        if not buffer:
                            message_deadline = trio.current_time() + self.read_timeout
                        buffer += chunk
                        while len(buffer) >= 2:
                            size = int.from_bytes(buffer[:2])
                            if len(buffer) < 2 + size:
                                break
                            message = bytes(buffer[2 : 2 + size])
                            del buffer[: 2 + size]
                            await in_flight.acquire()
                            nursery.start_soon(
                                self._tcp_answer, stream, send_lock, in_flight, message, peer
                            )
                            message_deadline = trio.current_time() + self.read_timeout
                        continue
                    break  # a timeout: idle, or a message that never completed
        finally:
            self._readers.pop(stream, None)
            self.tcp_connections -= 1

    async def _tcp_answer(
        self,
        stream: trio.SocketStream,
        send_lock: trio.Lock,
        in_flight: trio.Semaphore,
        message: bytes,
        peer: tuple[str, int] | None,
    ) -> None:
        start = time.perf_counter()
        handler = self.handler  # the one that took the query answers it (a reload may swap)
        try:
            response = handler.handle(message, False, peer[0] if peer else None)
            label = handler.label
            if isinstance(response, Deferred):
                deferred = response
                response = await handler.complete(deferred)
                label = deferred.label
            if response is None:
                return
            async with send_lock:
                with trio.move_on_after(self.write_timeout) as scope:
                    try:
                        await stream.send_all(len(response).to_bytes(2) + response)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if scope.cancelled_caught:
                    await stream.aclose()  # the client does not read: give up on it
                    return
            self._count(peer or ("", 0), "tcp", message, response, label, start)
        finally:
            in_flight.release()

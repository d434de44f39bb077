"""The UDP receive thread: answer-cache hits served without trio, misses handed to trio.

Why a thread (docs/architecture.md §7): at a paced rate trio wakes for one or two packets at a
time and its scheduling per wake-up costs more than the lookup. A plain blocking `recvfrom` in a
thread of its own costs one syscall per packet, and CPython releases the GIL while it waits, so
the trio thread runs whenever the receive thread has nothing to do.

Contract:
- `UdpReceiver(sock, serving, wake, family, dual_stack)` serves one blocking UDP socket;
  `run()` is the thread's body and returns once `stop()` was called (from any thread).
- Two loops. Per packet: a blocking `recvfrom` and a `sendto` per packet, each giving the
  GIL away; the cheapest while no other thread holds the GIL for long, and the only loop where
  libc has no recvmmsg or with `loop="packet"`. Batches (kdns/dns/mmsg.py): a recvmmsg that
  releases the GIL (it waits only while nothing is queued, and takes what is), then up to
  BATCH_SLOTS datagrams answered and sent with one sendmmsg to each client's raw sockaddr
  (decoded only for a miss and the query log) without releasing the GIL per packet; after a
  full batch the rest of the queue is read holding it (MSG_DONTWAIT), unless misses wait for
  trio, which must get to run. `loop="batch"` uses batches only. With `loop="auto"` (the
  default) the thread answers per packet
  until a packet took GIL_WAITED from read to send (it waited for the GIL), then in batches
  until CALM_READS reads in a row found under CALM_AVERAGE each (`batch_spells` counts the
  switches): a foreign call costs more than a socket method, about 3 µs a packet when
  packets come one at a time (docs/benchmarks.md).
  `stop()` shuts the socket's receive side down, which wakes a blocked receive at once; a
  receive timeout (`WAKE_EVERY`) is the backstop. Sends still work after `stop()`: forwarded
  answers in flight are written by trio on the same socket, with MSG_DONTWAIT.
- A hit (`AnswerCache.lookup`, which reads and never writes the cache's own state, or, for a
  forwarded name, `ForwardedHits.lookup` of kdns/dns/upstream_hits.py, whose few writes are
  single reference swaps and atomic counters, see there) is answered in the thread, and so is
  the NXDOMAIN of a cluster name that certainly does not exist (`Handler.denial`, which reads
  only what the trio thread publishes atomically, and keeps what it built for the next same
  question with one dict set into a dict the trio thread swaps out after each change:
  `AnswerCache.keep_denial`; the next one is a `lookup` hit).
  A miss of a name only the upstreams answer may be sent upstream from here instead
  (`Handler.forward_miss`, kdns/dns/miss_relay.py), through a relay this thread owns (one per
  forwarder, attached on its first miss to `relaying`, kdns/dns/relaying.py). While any of its
  relays has exchanges in flight, the thread waits on one epoll for its clients, the replies
  and a poke (`Relaying.serve`, the GIL released while it waits), answers the clients in
  batches as below (`_drain`) and each reply as it comes (kdns/dns/relayed.py: the answers are
  counted by trio through `answered`, set by the server); what a relay cannot answer comes back
  through `hand_back` (an append and a wake-up each time). Nothing in flight: the loops below,
  which never poll the relays. A relay stopped by its forwarder (a reload) is closed at the
  thread's next turn: a poke while relaying, else the next miss or receive timeout; all of
  them when `run` returns.
  Everything else — a miss, a malformed packet — is appended to `misses` (a deque: append and
  popleft are atomic) with the serving that read it and the time it was read, and `wake` is
  called at most once until trio calls `take_misses()`; trio answers them as it always did
  (kdns/dns/server.py), and then reads what is queued itself for a while, so a miss-heavy load
  does not pass the GIL between the threads per packet.
- Bounded: at most `max_backlog` misses wait for trio (MAX_BACKLOG, 4,096: at ~100 µs each,
  under half a second of trio's work). Beyond that a query is dropped unanswered and counted
  in `dropped` (`kdns_dns_udp_dropped_total`), as a full socket buffer would drop it: a
  random-name flood that trio cannot keep up with costs memory up to the bound, never more.
- The trio thread owns the store, the resolver and the caches; this thread only reads them
  (and makes the upstream cache's few thread-safe writes that ForwardedHits documents).
- Counts: hits are counted in `counts` (`ThreadCounts`, kdns/dns/stats.py), written only by
  this thread and folded by the trio thread at scrape time, so the hot path takes no lock; the
  loops update it inline (a method call per packet cost more than the update). The
  misses it hands over are counted by trio, when it answers them, with the rest of its counts.
- The query log, when configured, is written from this thread for the answers it gives (the
  logging module is thread-safe).
- GIL contention: while the trio thread runs Python for long (a relist applying thousands of
  objects, a large answer being built), this thread gets the GIL only when CPython makes the
  holder let go (the switch interval: 1 ms in `kdns serve`, kdns/interpreter.py; CPython's
  default is 5 ms). Every Python socket call gives it back, so the packet loop answered about
  one packet per switch: at 20k qps the socket buffer overflowed
  during a relist (tests/bench/relist_flood.py). Batches take everything that queued while the
  thread waited in one read and answer it without letting go, so what queues during one switch
  interval is answered in the next (a shorter switch interval, or `sleep(0)` in the relist, did
  not help the packet loop). A send that would block is counted in `send_errors`, as before.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from bisect import bisect_left
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from kdns import metrics
from kdns.dns import mmsg
from kdns.dns.relaying import Relaying
from kdns.dns.stats import Counts, ThreadCounts

if TYPE_CHECKING:
    from kdns.dns.handler import Handler
    from kdns.dns.server import Serving

log = logging.getLogger(__name__)

WAKE_EVERY = 0.5  # seconds: the receive timeout that lets `run` see `stop()` if nothing else did
MAX_BACKLOG = 4096  # misses waiting for trio; more are dropped (the module docstring)
MAX_DATAGRAM = 65535
BATCH_SLOTS = 128  # datagrams per recvmmsg/sendmmsg: over 6 ms of a 20k qps flood
# While relaying: batches read from the clients per epoll wake-up before the replies get a turn.
DRAIN_BATCHES = 4
FIRST_BUCKET = metrics.DURATION_BUCKETS[0]
# A packet that took this long from its read to its answer sent waited for the GIL (a switch
# interval: 1 ms in `kdns serve`, 5 ms by default; the work itself takes microseconds): batches.
GIL_WAITED = 0.001
# Back to one packet per call after CALM_READS reads that found under CALM_AVERAGE datagrams
# each on average: at a paced 20k qps a read finds one or two (clients send in bursts); behind
# a relist it finds tens.
CALM_READS = 64
CALM_AVERAGE = 4

# (query bytes, client address as recvfrom gives it (IPv6: a 4-tuple), when it was read
# (perf_counter), the serving that read it)
Miss = tuple[bytes, tuple[str, int], float, "Serving"]
# What an answer is counted under: (label id, request size, response size, duration bucket).
CountKey = tuple[int, int, int, int]


class UdpReceiver:
    def __init__(
        self,
        sock: socket.socket,
        serving: Callable[[], Serving],
        wake: Callable[[], None],
        family: str,
        dual_stack: bool,
        max_backlog: int = MAX_BACKLOG,
        loop: str = "auto",
    ) -> None:
        self.sock = sock
        self.serving = serving
        self.wake = wake  # called (from this thread) when `misses` went from empty to not
        self.family = family
        self.dual_stack = dual_stack
        self.counts = ThreadCounts()
        self.misses: collections.deque[Miss] = collections.deque()
        self.send_errors = 0
        self.max_backlog = max_backlog
        self.dropped = 0  # misses dropped because `max_backlog` were waiting (only this thread)
        self.dropped_counted = 0  # how many of them trio has put in the metric (only trio)
        self.dropped_back = 0  # hand-backs dropped (only this thread writes it)
        # Counts an answer another thread sent for this listener (set by kdns/dns/server.py;
        # the forwarder calls it from trio).
        self.answered: Callable[..., None] = lambda *args: None
        self.stopping = False
        # recvmmsg/sendmmsg where libc has them (Linux); `loop="packet"` keeps the loop of one
        # recvfrom per packet (the fallback, and the benchmarks' comparison).
        self.loop = loop if mmsg.available() else "packet"  # "auto", "batch" or "packet"
        self.batch_spells = 0  # how often it went over to batches (this thread writes it)
        self._woken = False  # a wake is pending: trio has not taken the misses yet
        # The relays of forwarded misses this thread sends upstream itself (one per forwarder,
        # kdns/dns/miss_relay.py) and the epoll it waits on while they have exchanges in
        # flight (kdns/dns/relaying.py).
        self.relaying = Relaying(sock, self._send_failed)
        # SO_RCVTIMEO, not settimeout: a Python timeout polls before every receive (one more
        # syscall per packet); the kernel's timeout costs nothing until it fires.
        sock.setblocking(True)
        seconds = int(WAKE_EVERY)
        sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("ll", seconds, int((WAKE_EVERY - seconds) * 1e6)),
        )

    def stop(self) -> None:
        """Stop receiving (idempotent, from any thread); sends keep working."""
        self.stopping = True
        # Wakes a thread blocked in recvfrom (it returns empty). Linux does it even for an
        # unconnected UDP socket, though it reports ENOTCONN.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def take_misses(self) -> list[Miss]:
        """The misses handed over so far (trio's side); the next one wakes trio again."""
        self._woken = False  # before draining: a miss appended from now on wakes again
        out = []
        popleft = self.misses.popleft
        while True:
            try:
                out.append(popleft())
            except IndexError:
                return out

    def hand_back(self, miss: Miss) -> None:
        """A miss a relay gives back (kdns/dns/relayed.py: a timeout, TC, a malformed reply, a
        SERVFAIL while a stale answer waits, the relay's stop): trio answers it as any other.
        It wakes trio each time (`_woken` is the receive loops' own)."""
        if len(self.misses) >= self.max_backlog:
            self.dropped_back += 1
            return
        self.misses.append(miss)
        self.wake()

    def _hand_over(self, miss: Miss) -> bool:
        """Trio's, or the upstreams' (True: sent upstream by a relay of this thread's)."""
        # A forwarded name the upstreams alone answer goes upstream from here, not via trio.
        if miss[3].handler.forward_miss(miss, self):
            return True
        if len(self.misses) >= self.max_backlog:
            self.dropped += 1  # trio is that far behind: the client will ask again
            return False
        self.misses.append(miss)
        if not self._woken:
            self._woken = True
            self.wake()
        return False

    def run(self) -> None:
        """The thread's body: serve until `stop()`."""
        batch = mmsg.Batch(BATCH_SLOTS) if mmsg.available() else None
        relaying = self.relaying
        try:
            while not self.stopping:
                if batch is not None and relaying.busy():
                    # Exchanges in flight upstream: wait on the clients and the replies at once.
                    relaying.serve(partial(self._drain, batch), lambda: self.stopping)
                elif self.loop == "packet" or batch is None:
                    self._run_packets(watch_gil=False)
                elif self.loop == "batch":
                    self._run_batch(batch, calm_reads=None)
                # Uncontended, one recvfrom and one sendto per packet cost the least; once a
                # packet shows that another thread holds the GIL for long, batches until the
                # queue is short.
                elif self._run_packets(watch_gil=True) and not self.stopping:
                    self.batch_spells += 1
                    self._run_batch(batch, CALM_READS)
        finally:
            relaying.close()

    @staticmethod
    def _answer_miss(data: bytes, handler: Handler) -> tuple[bytes, int] | None:
        """After an answer-cache miss, the answer the thread gives itself (a forwarded hit or
        a certain NXDOMAIN), else None. (The loops look the answer cache up themselves: a
        call per packet costs about what the lookup does.)"""
        found = None
        if handler.forwarded is not None:
            found = handler.forwarded.lookup(data)  # a forwarded name's cached answer
        if found is None:
            # A cluster name that certainly does not exist (a random-subdomain flood, the
            # search expansions of outside names) is answered here too, from state the trio
            # thread publishes; the next same question is an answer-cache hit (Handler.denial).
            found = handler.denial(data)
        return found

    def _count_new(self, counts: Counts, key: CountKey, elapsed: float) -> None:
        """The first answer under `key` since the last fold (the loops count the others
        inline: see `_run_packets`); asks trio for an early fold once the dict is large."""
        counts[key] = [1, elapsed]
        shared = self.counts
        if shared.full is False and len(counts) >= ThreadCounts.FOLD_AT:
            shared.full = True
            self._hand_over_full()

    def _send_failed(self, err: int, addr: object) -> None:
        # Full send buffer or an unreachable client: this answer is lost (UDP).
        self.send_errors += 1
        if err not in (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH):
            log.debug("UDP send error to %s: %s", addr, os.strerror(err))

    def _run_batch(self, batch: mmsg.Batch, calm_reads: int | None) -> None:
        """Read and answer what is queued a batch at a time, without giving the GIL away per
        packet; return once `calm_reads` reads in a row found fewer than CALM_AVERAGE
        datagrams each on average (None: only at `stop()`), or once a miss went upstream
        (`Relaying.serve` waits for its reply)."""
        fd = self.sock.fileno()
        reads = datagrams = 0
        slots = batch.slots
        wait = True
        while not self.stopping:
            # A read that releases the GIL takes everything queued when it runs (MSG_WAITFORONE:
            # it waits only if nothing is), so while another thread holds the GIL for long,
            # whatever queued meanwhile is answered in one batch once the GIL is back. Only
            # after a full batch may more be queued than was read: that read keeps the GIL
            # (unless misses wait for trio, which must get to run). A read holding the GIL
            # after every batch would cost an idle server one more syscall per packet.
            try:
                received = batch.receive(fd, wait or self._woken)
            except OSError as e:
                # ICMP errors surface on later receives on some kernels; not ours to fix.
                if not self.stopping:
                    log.debug("UDP receive error: %s", e)
                wait = True
                continue
            wait = received < slots
            if not received:
                self.relaying.tend()  # SO_RCVTIMEO: nothing came for a while
                continue
            relayed = self._answer_batch(batch, received)
            reads += 1
            datagrams += received
            if relayed:
                return
            if reads == calm_reads:  # after the batch is answered: leave nothing unanswered
                if datagrams < CALM_AVERAGE * reads:
                    return  # the queue stays short: per packet is cheaper again
                reads = datagrams = 0

    def _answer_batch(self, batch: mmsg.Batch, received: int) -> bool:
        """Answer slots 0..received-1 of `batch` and send the answers (one sendmmsg); True
        when one of them went upstream through a relay."""
        serving_now, clock, answer_miss = self.serving, time.perf_counter, self._answer_miss
        family, dual_stack, shared = self.family, self.dual_stack, self.counts
        buckets = metrics.DURATION_BUCKETS
        relayed = False
        for i in range(received):
            data = batch.datagram(i)
            if not data and self.stopping:
                break  # `stop()` shut the receive side down
            start = clock()
            serving = serving_now()  # a reload swaps it; each query is answered by one
            handler = serving.handler
            found = handler.cache.lookup(data, True)
            if found is None:
                found = answer_miss(data, handler)
                if found is None:
                    if self._hand_over((data, batch.address(i), start, serving)):
                        relayed = True
                    continue
            response, label = found
            elapsed = clock() - start
            if dual_stack:
                family = "1" if mmsg.is_v4_mapped(batch.name(i)) else "2"
            key = (  # counted inline, as in `_run_packets`
                label,
                len(data),
                len(response),
                0 if elapsed <= FIRST_BUCKET else bisect_left(buckets, elapsed),
            )
            shared.busy = True
            counts = shared.counts[family]
            entry = counts.get(key)
            if entry is None:
                self._count_new(counts, key, elapsed)
            else:
                entry[0] += 1
                entry[1] += elapsed
            shared.busy = False
            batch.reply(i, response)  # to the raw address it came from: nothing decoded
            query_log = serving.query_log
            if query_log is not None:
                query_log(batch.address(i), "udp", data, response, label, elapsed)
        for err in batch.send(self.sock.fileno()):
            self._send_failed(err, "a client")
        return relayed

    def _drain(self, batch: mmsg.Batch) -> None:
        """Read and answer what the clients queued (while relaying), up to DRAIN_BATCHES
        batches: the replies the epoll reported with them get their turn after."""
        fd = self.sock.fileno()
        for _ in range(DRAIN_BATCHES):
            try:
                received = batch.receive(fd, False)
            except OSError as e:
                if not self.stopping:
                    log.debug("UDP receive error: %s", e)
                return
            if received:
                self._answer_batch(batch, received)
            if received < batch.slots:
                return

    def _run_packets(self, watch_gil: bool) -> bool:
        """One `recvfrom` and one `sendto` per packet, each giving the GIL away. With
        `watch_gil`, return True once a packet took GIL_WAITED or longer from its read to its
        answer sent: that takes microseconds, so the thread waited for the GIL (at the send's
        syscall, or made to let go by another thread), and the queue grew meanwhile. Return
        False once a miss went upstream through a relay (`Relaying.serve` waits for its reply),
        or at `stop()`.

        One loop on purpose, its per-packet steps inline (lookup, count, send): it is the hit
        path, where a hit costs ~1.5 µs over the plainest recvfrom/sendto loop, and inlining
        the count and the lookup took up to 0.2 µs off that (docs/benchmarks.md)."""
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        serving_now, clock, answer_miss = self.serving, time.perf_counter, self._answer_miss
        family, dual_stack, shared = self.family, self.dual_stack, self.counts
        buckets = metrics.DURATION_BUCKETS
        while not self.stopping:
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, TimeoutError):
                self.relaying.tend()  # SO_RCVTIMEO: look at `stopping` and the relays again
                continue
            except OSError as e:
                if not self.stopping:
                    log.debug("UDP receive error: %s", e)
                continue
            if not data and self.stopping:
                break  # `stop()` shut the receive side down
            start = clock()
            serving = serving_now()
            handler = serving.handler
            found = handler.cache.lookup(data, True)
            if found is None:
                found = answer_miss(data, handler)
                if found is None:
                    if self._hand_over((data, addr, start, serving)):
                        return False
                    continue
            response, label = found
            elapsed = clock() - start
            if dual_stack:
                family = "1" if addr[0].startswith("::ffff:") else "2"
            # Counted before the send (a client that has its answer finds it counted), inline:
            # a call per packet costs more than the update. `busy` brackets the update, so the
            # trio thread never folds a dict mid-update (ThreadCounts.take).
            key = (
                label,
                len(data),
                len(response),
                0 if elapsed <= FIRST_BUCKET else bisect_left(buckets, elapsed),
            )
            shared.busy = True
            counts = shared.counts[family]
            entry = counts.get(key)
            if entry is None:
                self._count_new(counts, key, elapsed)
            else:
                entry[0] += 1
                entry[1] += elapsed
            shared.busy = False
            try:
                sendto(response, addr)
            except OSError as e:
                self._send_failed(e.errno or 0, addr)
            contended = clock() - start >= GIL_WAITED
            query_log = serving.query_log
            if query_log is not None:
                query_log(addr, "udp", data, response, label, elapsed)
            if contended and watch_gil:
                return True
        return False

    def _hand_over_full(self) -> None:
        # Many distinct keys since the last scrape: ask trio to fold them now (through the same
        # wake as misses; trio folds when it takes misses and sees `full`).
        if not self._woken:
            self._woken = True
            self.wake()

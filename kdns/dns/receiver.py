"""The UDP receive thread: answer-cache hits served without trio, misses handed to trio.

Why a thread (docs/architecture.md §7): at a paced rate trio wakes for one or two packets at a
time and its scheduling per wake-up costs more than the lookup. A plain blocking `recvfrom` in a
thread of its own costs one syscall per packet, and CPython releases the GIL while it waits, so
the trio thread runs whenever the receive thread has nothing to do.

Contract:
- `UdpReceiver(sock, serving, wake, family, dual_stack)` serves one blocking UDP socket;
  `run()` is the thread's body and returns once `stop()` was called (from any thread).
  `stop()` shuts the socket's receive side down, which wakes a blocked `recvfrom` at once; a
  receive timeout (`WAKE_EVERY`) is the backstop. Sends still work after `stop()`: forwarded
  answers in flight are written by trio on the same socket, with MSG_DONTWAIT.
- A hit (`AnswerCache.lookup`, which reads and never writes the cache's own state, or, for a
  forwarded name, `ForwardedHits.lookup` of kdns/dns/upstream_hits.py, whose few writes are
  single reference swaps and atomic counters, see there) is answered in the thread, and so is
  the NXDOMAIN of a cluster name that certainly does not exist (`Handler.denial`, which reads
  only what the trio thread publishes atomically).
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
  this thread and folded by the trio thread at scrape time, so the hot path takes no lock. The
  misses it hands over are counted by trio, when it answers them, with the rest of its counts.
- The query log, when configured, is written from this thread for the answers it gives (the
  logging module is thread-safe).
- GIL contention: while the trio thread runs Python for long (a relist applying thousands of
  objects, a large answer being built), this thread gets the GIL only when CPython makes the
  holder let go (the switch interval, 5 ms) and gives it back at its next syscall, so hits wait
  about as long as the burst, as they did when trio itself received
  (tests/bench/receive_thread.py; a shorter switch interval did not change that reliably, so
  the interpreter's default is kept). Short trio work (misses, forwarding) costs hits little.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import socket
import struct
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING

from kdns import metrics
from kdns.dns.stats import ThreadCounts

if TYPE_CHECKING:
    from kdns.dns.server import Serving

log = logging.getLogger(__name__)

MAX_BACKLOG = 4096  # misses waiting for trio; more are dropped (the module docstring)
WAKE_EVERY = 0.5  # seconds: the receive timeout that lets `run` see `stop()` if nothing else did
MAX_DATAGRAM = 65535

# (query bytes, client address, when it was read (perf_counter), the serving that read it)
Miss = tuple[bytes, tuple[str, int], float, "Serving"]


class UdpReceiver:
    def __init__(
        self,
        sock: socket.socket,
        serving: Callable[[], Serving],
        wake: Callable[[], None],
        family: str,
        dual_stack: bool,
        max_backlog: int = MAX_BACKLOG,
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
        self.stopping = False
        self._woken = False  # a wake is pending: trio has not taken the misses yet
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

    def _hand_over(self, miss: Miss) -> None:
        if len(self.misses) >= self.max_backlog:
            self.dropped += 1  # trio is that far behind: the client will ask again
            return
        self.misses.append(miss)
        if not self._woken:
            self._woken = True
            self.wake()

    def run(self) -> None:
        """The thread's body: serve until `stop()`."""
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        serving_now = self.serving
        clock = time.perf_counter
        shared = self.counts
        family, dual_stack = self.family, self.dual_stack
        first_bucket = metrics.DURATION_BUCKETS[0]
        buckets = metrics.DURATION_BUCKETS
        while not self.stopping:
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, TimeoutError):
                continue  # SO_RCVTIMEO: look at `stopping` again
            except OSError as e:
                # ICMP errors surface on later receives on some kernels; not ours to fix.
                if not self.stopping:
                    log.debug("UDP receive error: %s", e)
                continue
            if not data and self.stopping:
                break  # `stop()` shut the receive side down
            start = clock()
            serving = serving_now()  # a reload swaps it; each query is answered by one
            handler = serving.handler
            found = handler.cache.lookup(data, True)
            if found is None and handler.forwarded is not None:
                found = handler.forwarded.lookup(data)  # a forwarded name's cached answer
            if found is None:
                # A cluster name that certainly does not exist (a random-subdomain flood) is
                # answered here too, from state the trio thread publishes (Handler.denial).
                found = handler.denial(data)
                if found is None:
                    self._hand_over((data, addr, start, serving))
                    continue
            response, label = found
            # Counted before the send, so a client that has its answer finds it counted; the
            # duration is from the read to the answer ready (the send's syscall is not in it).
            elapsed = clock() - start
            if dual_stack:
                family = "1" if addr[0].startswith("::ffff:") else "2"
            key = (
                label,
                len(data),
                len(response),
                0 if elapsed <= first_bucket else bisect_left(buckets, elapsed),
            )
            # `busy` brackets the update, so the trio thread never folds a dict mid-update
            # (ThreadCounts.take).
            shared.busy = True
            counts = shared.counts[family]
            entry = counts.get(key)
            if entry is None:
                counts[key] = [1, elapsed]
            else:
                entry[0] += 1
                entry[1] += elapsed
            shared.busy = False
            try:
                sendto(response, addr)
            except OSError as e:
                # Full send buffer or an unreachable client: this answer is lost (UDP).
                self.send_errors += 1
                if e.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH):
                    log.debug("UDP send error to %s: %s", addr, e)
            if shared.full is False and len(counts) >= ThreadCounts.FOLD_AT:
                shared.full = True
                self._hand_over_full()
            query_log = serving.query_log
            if query_log is not None:
                query_log(addr, "udp", data, response, label, elapsed)

    def _hand_over_full(self) -> None:
        # Many distinct keys since the last scrape: ask trio to fold them now (through the same
        # wake as misses; trio folds when it takes misses and sees `full`).
        if not self._woken:
            self._woken = True
            self.wake()

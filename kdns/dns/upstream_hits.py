"""Forwarded cache hits answered by the UDP receive thread, from pre-encoded upstream answers.

Why (docs/architecture.md §7): a forwarded name's cache hit used to hop into trio, parse the
query and rebuild the answer per query; most of a pod's traffic is outside names, so a hit must
cost what a cluster-name hit costs: one dict lookup and one bytes join in the receive thread.

Contract:
- `ForwardedHits` is one upstream cache's index of *shapes* (kdns/dns/upstream_cache.py's
  `UpstreamCache.fast`): the answer-cache key of a query (`wire.cache_key`: header flags and
  counts, the name lower-cased, type, class, EDNS DO) → a `Shape`: the upstream cache entry it
  reads, the metrics label, and the whole response for that shape as the trio thread finished
  it (RA set, RD/CD as asked, our OPT when the client sent one). Everything in a response but
  the ID, the question's spelling and the TTLs is a function of that key.
- `lookup(data)` (the receive thread) answers only a fresh entry (before its `expires`) whose
  response fits the client's UDP size; anything else — expired (serve-stale, RFC 8767, needs
  the upstreams tried first), gone, too large (truncation), an unknown shape — is None and takes
  the trio path, which answers as before. TTLs are counted down per whole second since the
  answer arrived (RFC 1035 §7.1): each shape keeps the encoding of the last second it served
  (`Shape.memo`, one tuple swapped in whole), so a hit re-encodes at most once a second.
- Only the trio thread adds shapes (`register`, when its own slow path answered a hit of a name
  that nothing but the upstreams answer — the handler decides that) and removes them
  (`forget`, when the cache drops the entry). The receive thread writes only: a shape's memo
  (one reference swap of an immutable tuple; two threads at worst encode the same second
  twice), an entry's `taps` (`next` on an itertools.count is atomic), an entry's `asked` flag
  (one assignment), and its own hit tally (a list only that thread writes, found by its thread
  id; trio sums them at scrape time). Reads of a float or a flag are atomic under the GIL.
- Prefetch (CoreDNS's cache `prefetch`): a hit at or after the entry's `check_at` is answered
  at once, and the entry is handed to trio with the thread's hit count (`schedule`, a trio
  token's `run_sync_soon`), where the forwarder counts it and starts the refresh if it is due.
  `asked` keeps one such hand-over in flight per entry.
- Memory: a shape holds its response and a memo of the same size; `register` reports that size
  so the upstream cache counts it in its byte budget (`cache.max_bytes`), and an entry keeps at
  most `SHAPES_PER_ENTRY` shapes. Pure: no sockets, no trio (the clock and the hand-over are
  given by the caller).
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kdns.dns.wire import CLASSIC_UDP_PAYLOAD, cache_key

if TYPE_CHECKING:
    from kdns.dns.upstream_cache import CacheEntry
    from kdns.dns.wire import Reply

SHAPES_PER_ENTRY = 4  # plain, EDNS, DO, CD: more than a client population normally sends
SHAPE_OVERHEAD = 400  # the Shape, its memo tuple, two dict slots (tracemalloc, CPython 3.11)

_TTL = struct.Struct("!I")


class Shape:
    """One query shape of one cached upstream answer (see the module's contract)."""

    __slots__ = ("denial", "entry", "key", "label", "memo", "qend", "response")

    def __init__(
        self, entry: CacheEntry, key: bytes, label: int, denial: bool, response: bytes, qend: int
    ) -> None:
        self.entry = entry
        self.key = key  # the upstream cache's key of `entry`
        self.label = label
        self.denial = denial  # counted as a hit of CoreDNS's denial cache
        self.response = response  # finished for this shape; TTLs as when it was registered
        self.qend = qend
        # (whole seconds since the answer arrived, header octets 2-12, what follows the
        # question) for the last second served; -1: nothing encoded yet.
        self.memo: tuple[int, bytes, bytes] = (-1, b"", b"")

    def encode(self, second: int) -> tuple[int, bytes, bytes]:
        """The response with every TTL counted down by `second` (never below 0)."""
        entry = self.entry
        out = bytearray(self.response)
        for offset, ttl in zip(entry.ttl_offsets, entry.ttls, strict=True):
            _TTL.pack_into(out, offset, ttl - second if ttl > second else 0)
        return (second, bytes(out[2:12]), bytes(out[self.qend :]))


def shape_size(response: bytes) -> int:
    """The bytes one shape holds: its response, a memo of the same size, the objects."""
    return SHAPE_OVERHEAD + 2 * len(response)


class ForwardedHits:
    """The shapes of one upstream cache; `lookup` is the receive thread's, the rest trio's."""

    def __init__(self) -> None:
        self.shapes: dict[bytes, Shape] = {}
        self.tallies: dict[int, list[int]] = {}  # thread id → [success hits, denial hits]
        # Set by the first `register` (the trio thread): its clock and its hand-over.
        self.now: Callable[[], float] | None = None
        self.schedule: Callable[..., Any] | None = None
        self.due: Callable[[Shape, int, bytes], None] | None = None

    def __len__(self) -> int:
        return len(self.shapes)

    def lookup(self, data: bytes) -> Reply | None:
        """The answer to `data` with its label, or None (take the trio path)."""
        z = data.find(0, 12)
        qend = z + 5
        if z >= 12 and len(data) == qend:
            # The common shape (no EDNS), keyed inline as `AnswerCache.lookup` does: only keys
            # from `cache_key` are stored, so a query of any other shape simply misses.
            key, limit = data[2:z].lower() + data[z:qend], CLASSIC_UDP_PAYLOAD
        else:
            found = cache_key(data) if z >= 12 else None
            if found is None:
                return None
            key, qend, limit = found
        shape = self.shapes.get(key)
        if shape is None or len(shape.response) > limit:
            return None
        entry = shape.entry
        now = self.now()  # type: ignore[misc]  # set before any shape exists
        if entry.gone or now >= entry.expires:
            return None
        taps = next(entry.taps) + 1
        if now >= entry.check_at and not entry.asked:
            entry.asked = True
            # trio.RunFinishedError: shutting down, no refresh is wanted any more.
            with contextlib.suppress(RuntimeError):
                self.schedule(self.due, shape, taps, data)  # type: ignore[misc]
        second = int(now - entry.stored)
        memo = shape.memo
        if memo[0] != second:
            memo = shape.memo = shape.encode(second)
        tally = self.tallies.get(threading.get_ident())
        if tally is None:
            tally = self.tallies.setdefault(threading.get_ident(), [0, 0])
        tally[shape.denial] += 1
        return data[:2] + memo[1] + data[12:qend] + memo[2], shape.label

    def hits(self) -> tuple[int, int]:
        """(success, denial) hits the receive threads answered (the trio thread's side)."""
        success = denial = 0
        for tally in tuple(self.tallies.values()):
            success += tally[0]
            denial += tally[1]
        return success, denial

    def register(self, data: bytes, shape: Shape) -> int:
        """Serve queries shaped like `data` from `shape` from now on (trio's side); the bytes
        it adds to the entry's size, 0 when it was not added."""
        found = cache_key(data)
        entry = shape.entry
        if found is None or found[1] != shape.qend or entry.gone:
            return 0
        key = found[0]
        old = self.shapes.get(key)
        if old is not None and old.entry is entry:
            return 0
        if len(entry.shapes) >= SHAPES_PER_ENTRY:
            return 0
        self.shapes[key] = shape  # complete before it is published
        entry.shapes.append(key)
        return shape_size(shape.response)

    def forget(self, entry: CacheEntry) -> None:
        """`entry` left the cache (evicted, replaced, expired): none of its shapes answers."""
        entry.gone = True
        for key in entry.shapes:
            shape = self.shapes.get(key)
            if shape is not None and shape.entry is entry:
                del self.shapes[key]

    def clear(self) -> None:
        for shape in self.shapes.values():
            shape.entry.gone = True
        self.shapes.clear()

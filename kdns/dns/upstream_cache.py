"""The upstream cache: forwarded answers kept for their TTL, within entry and byte bounds.

Pure (no sockets, no threads, no clock of its own: every call takes `now`), owned by the trio
thread; CoreDNS's `cache` plugin for the names the upstreams answer (kdns/dns/forward.py asks
the upstreams, this keeps what they said):

- `cache_key(query)`: the question (name lower-cased), type, class and the DO and CD bits.
- `UpstreamCache.entry_for` makes the entry a response gets, without storing it (a receive
  thread calls it for a relayed miss: it reads only the config); `put`/`store` keep it.
  Answers live for their TTL capped at `max_ttl`; negative answers per RFC 2308 §5
  (min(SOA TTL, SOA MINIMUM), not cached without an SOA) capped at `max_denial_ttl`; SERVFAIL
  for `servfail_ttl` (RFC 2308 §7.1); `uncached` is CoreDNS's `disable success|denial ZONES`.
- Success and denial answers sit in two LRU tables (`CacheTable`), bounded by entry counts and
  together by `max_bytes` (each entry's estimated size, `entry_size`, oldest first, evictions
  counted in `stats()`); an entry larger than the whole budget is not kept.
- `get` gives a fresh entry (an expired one past its serve-stale window is dropped), `stale`
  one inside that window (RFC 8767); `answers_now` whether a fresh entry (a SERVFAIL too) is
  kept under a key and `stale_kept` whether `stale` would serve one, both plain dict reads of
  each table's `readable` view (its own dict; `get` leaves the LRU order alone), safe from the
  receive and relay threads.
- `from_cache(entry, query, now)`: the client's answer, TTLs counted down (RFC 1035 §7.1).
- Prefetch (CoreDNS's cache `prefetch`): `count_hit` on the slow path of a hit
  (`now >= entry.check_at`) says whether a popular entry is due its refresh
  (`prefetch_threshold`), `keep_popularity` carries its hits over to the refreshed entry.
- The receive thread's hits: `fast` (kdns/dns/upstream_hits.py) answers shapes registered by
  `add_shape`; every entry that leaves a table is `forget`-ed there, and its shapes' bytes
  count in the budget. Its tap counters on each `CacheEntry` are the receive thread's; trio
  folds them into `hits`.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field

from kdns.config import CacheSection
from kdns.dns import wire
from kdns.dns.stats import CacheStats
from kdns.dns.upstream_config import ForwardConfig
from kdns.dns.upstream_hits import ForwardedHits, Shape, shape_size
from kdns.dns.upstream_response import Parsed
from kdns.dns.wire import Query


@dataclass(slots=True)
class CacheEntry:
    response: bytes  # without OPT, the ID as the upstream sent it
    ttl_offsets: list[int]
    ttls: list[int]  # each record's TTL, already capped at the entry's TTL
    stored: float
    expires: float
    stale_until: float
    size: int = 0  # estimated bytes held, with its key (`entry_size`)
    # CoreDNS's cache `prefetch`: hits since `window` opened, when the entry is due a refresh
    # (inf: prefetch off, or a refresh under way), and when a hit must look at the two again
    # (the earlier of the window's end and `prefetch_at`), so other hits cost one compare.
    hits: int = 0
    window: float = 0.0
    prefetch_at: float = math.inf
    check_at: float = math.inf
    # The receive thread's side (kdns/dns/upstream_hits.py): its hits (`taps`, counted by
    # `next`), how many of them trio has added to `hits`, whether a hand-over to trio is in
    # flight, the shapes that answer from this entry, and whether it left the cache.
    taps: Iterator[int] = field(default_factory=itertools.count)
    taps_folded: int = 0
    asked: bool = False
    shapes: list[bytes] = field(default_factory=list)
    gone: bool = False


# What an entry costs beyond its response and key: the dataclass, its two lists, the LRU's
# bookkeeping, the receive thread's counter and shape list (tracemalloc on CPython 3.11;
# tests/dns/test_cache_budget.py checks it).
ENTRY_OVERHEAD = 690


def entry_size(key: bytes, response: bytes, records: int) -> int:
    return ENTRY_OVERHEAD + len(key) + len(response) + 2 * 40 * records


class CacheTable:
    """One LRU table of the upstream cache: its entries' sizes summed in `bytes`, and the entries
    it evicted (to stay within `maxsize` entries, or `UpstreamCache`'s byte bound) in `evictions`.

    An `OrderedDict` in recency order, least recent first: a store is one insert and, when full,
    one `popitem(last=False)`, both in C (cachetools' LRUCache costs several Python calls per
    store and per eviction, which a forwarded miss pays for every new name once the cache is
    full). Trio's thread writes it; `readable` is that same dict, which the receive threads may
    read (`UpstreamCache.answers_now`, `stale_kept`: one `dict.get`, which leaves the order
    alone; every write, `move_to_end` too, is one C call under the GIL)."""

    def __init__(self, maxsize: int, dropped: Callable[[CacheEntry], None]) -> None:
        self.maxsize = maxsize
        self.bytes = 0
        self.evictions = 0
        self.dropped = dropped  # told of every entry that leaves, so no shape serves it
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()
        self.readable: Mapping[bytes, CacheEntry] = self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._entries)

    def keys(self) -> KeysView[bytes]:
        return self._entries.keys()

    def values(self) -> ValuesView[CacheEntry]:
        return self._entries.values()

    def get(self, key: bytes) -> CacheEntry | None:
        """The entry under `key`, now the most recently used; None when there is none."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def __getitem__(self, key: bytes) -> CacheEntry:
        entry = self._entries[key]
        self._entries.move_to_end(key)
        return entry

    def __setitem__(self, key: bytes, value: CacheEntry) -> None:
        entries = self._entries
        if self.maxsize <= 0:
            return  # keeps nothing (`entry_for` makes no entry for such a table)
        if key in entries:
            del self[key]  # replaced: its size goes before the new one's comes
        while entries and len(entries) >= self.maxsize:
            self.popitem()  # the least recently used make room
        entries[key] = value
        self.bytes += value.size

    def __delitem__(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        self.dropped(entry)

    def popitem(self) -> tuple[bytes, CacheEntry]:
        """Evict the least recently used entry (KeyError when empty)."""
        key, entry = self._entries.popitem(last=False)
        self.evictions += 1
        self.bytes -= entry.size
        self.dropped(entry)
        return key, entry

    def clear(self) -> None:
        for entry in self._entries.values():
            self.dropped(entry)
        self._entries.clear()
        self.bytes = 0

    def grow(self, entry: CacheEntry, extra: int) -> None:
        """`entry` (in this table) holds `extra` more bytes."""
        entry.size += extra
        self.bytes += extra


def cache_key(query: Query) -> bytes:
    # The question (name lower-cased), and the bits that change an upstream answer: DO and CD.
    flags = (1 if query.do else 0) | (2 if query.flags & wire.CD else 0)
    return (
        bytes((flags,))
        + b".".join(query.labels).lower()  # the dots are not letters: lower-cased alike
        + (struct.pack("!HH", query.qtype, query.qclass))
    )


class UpstreamCache:
    """Success and denial answers in two bounded LRU caches, expiring by TTL."""

    def __init__(self, config: ForwardConfig) -> None:
        self.config = config
        self.fast = ForwardedHits()  # shapes the receive thread answers (upstream_hits.py)
        self.success = CacheTable(config.cache.success, self.fast.forget)
        self.denial = CacheTable(config.cache.denial, self.fast.forget)
        self.max_bytes = config.cache.max_bytes
        self.hits = 0
        self.hits_denial = 0  # of `hits`, those from the denial table (metrics)
        self.misses = 0
        self.served_stale = 0
        self.prefetches = 0  # refreshes of popular entries started (CoreDNS's cache prefetch)

    def __len__(self) -> int:
        return len(self.success) + len(self.denial)

    def get(self, key: bytes, now: float, count: bool = True) -> CacheEntry | None:
        """A fresh entry; `count` says whether this lookup counts as a hit or a miss."""
        for table in (self.success, self.denial):
            entry = table.get(key)
            if entry is None:
                continue
            if now < entry.expires:
                self.hits += count
                if table is self.denial:
                    self.hits_denial += count
                return entry
            if now >= entry.stale_until:
                del table[key]
        self.misses += count
        return None

    def stats(self) -> CacheStats:
        fast_success, fast_denial = self.fast.hits()
        return CacheStats(
            success=len(self.success),
            denial=len(self.denial),
            misses=self.misses,
            hits_success=self.hits - self.hits_denial + fast_success,
            hits_denial=self.hits_denial + fast_denial,
            served_stale=self.served_stale,
            prefetches=self.prefetches,
            evictions_success=self.success.evictions,
            evictions_denial=self.denial.evictions,
        )

    @property
    def bytes(self) -> int:
        """The estimated memory of every entry (`entry_size`), kept within `max_bytes`."""
        return self.success.bytes + self.denial.bytes

    def keep_popularity(self, key: bytes, old: CacheEntry) -> None:
        """The entry that replaced `old` keeps its hits, in a window from its refresh (CoreDNS's
        prefetch copies the frequency into the new item), so a name that stays popular is
        refreshed again before it expires."""
        for table in (self.success, self.denial):
            entry = table.get(key)
            if entry is not None and entry is not old:
                # The receive thread's hits not yet added (`taps`; `next` counts one more).
                unfolded = max(0, next(old.taps) - old.taps_folded)
                entry.hits, entry.window = old.hits + unfolded, entry.stored

    def stale(self, key: bytes, now: float) -> CacheEntry | None:
        """An expired success answer still inside the serve-stale window (RFC 8767)."""
        entry = self.success.get(key)
        if entry is not None and entry.expires <= now < entry.stale_until:
            return entry
        return None

    def put(self, key: bytes, response: bytes, parsed: Parsed, now: float) -> None:
        made = self.entry_for(key, response, parsed, now)
        if made is not None:
            self.store(key, *made)

    def entry_for(
        self, key: bytes, response: bytes, parsed: Parsed, now: float
    ) -> tuple[CacheEntry, CacheTable] | None:
        """The entry `put` would store for this response, and its table; None when it is not
        cached. Pure: reads only the config (a receive thread calls it for a relayed miss)."""
        config = self.config
        rcode = parsed.rcode
        if rcode == wire.NOERROR and parsed.answer_ttls:
            ttl, table = min(min(parsed.answer_ttls), config.cache.max_ttl), self.success
        elif rcode in (wire.NXDOMAIN, wire.NOERROR):
            # RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM); without an SOA
            # it must not be cached at all (§5, "SHOULD NOT be cached").
            if parsed.soa_negative_ttl is None:
                return None
            ttl, table = min(parsed.soa_negative_ttl, config.cache.max_denial_ttl), self.denial
        elif rcode == wire.SERVFAIL:
            # RFC 2308 §7.1: SERVFAIL may be cached, for at most five minutes; we keep it briefly.
            ttl, table = config.servfail_ttl, self.denial
        else:
            return None
        if ttl <= 0 or table.maxsize == 0:
            return None
        size = entry_size(key, response, len(parsed.ttls))
        if size > self.max_bytes:
            return None  # larger than the whole budget: asked upstream each time
        ttls = parsed.ttls
        if ttls and max(ttls) > ttl:
            ttls = [min(t, ttl) for t in ttls]  # capped at the entry's TTL
        entry = CacheEntry(
            response,
            parsed.ttl_offsets,
            ttls,  # as parsed when none is above the entry's: nothing changes them after
            now,
            now + ttl,
            now + ttl + config.cache.serve_stale,
            size,
        )
        if config.cache.prefetch:
            entry.window = now
            entry.prefetch_at = entry.expires - prefetch_threshold(ttl, config.cache)
            entry.check_at = min(now + config.cache.prefetch_duration, entry.prefetch_at)
        return entry, table

    def store(self, key: bytes, entry: CacheEntry, table: CacheTable) -> None:
        """Keep `entry` (made by `entry_for`) under `key`, within the byte budget (trio's)."""
        table[key] = entry
        self._within_budget(table)

    def answers_now(self, key: bytes, now: float) -> bool:
        """Whether trio would answer `key` from this cache without asking an upstream: an
        entry, a SERVFAIL one too, not yet expired. An expired one inside the serve-stale
        window is not such an answer: trio asks the upstreams first and serves it only when
        they fail (RFC 8767 §4). Plain dict reads: the receive thread asks."""
        for table in (self.success, self.denial):
            entry = table.readable.get(key)
            if entry is not None and now < entry.expires:
                return True
        return False

    def stale_kept(self, key: bytes, now: float) -> bool:
        """Whether `stale` would serve an answer for `key` now (any thread: dict reads)."""
        entry = self.success.readable.get(key)
        return entry is not None and entry.expires <= now < entry.stale_until

    def add_shape(self, data: bytes, shape: Shape) -> None:
        """Let the receive thread answer queries shaped like `data` from `shape`, its bytes
        counted in the budget (the entry is its table's most recent: it was just read)."""
        for table in (self.success, self.denial):
            if table.get(shape.key) is shape.entry:
                break
        else:
            return  # replaced or dropped meanwhile
        if shape.entry.size + shape_size(shape.response) > self.max_bytes:
            return
        extra = self.fast.register(data, shape)
        if extra:
            table.grow(shape.entry, extra)
            self._within_budget(table)

    def uncached(self, qname: str, parsed: Parsed) -> bool:
        """CoreDNS's cache `disable success|denial ZONES`: a positive answer (NOERROR with
        records) for a name in a `disable success` zone, or any other (NXDOMAIN, NODATA,
        SERVFAIL) in a `disable denial` zone, is passed on but not cached."""
        cache = self.config.cache
        if not cache.disable_success and not cache.disable_denial:
            return False  # the usual config: no name lookups per answer
        positive = parsed.rcode == wire.NOERROR and bool(parsed.answer_ttls)
        zones = cache.disable_success if positive else cache.disable_denial
        name = qname.rstrip(".").lower()
        return any(z == "." or name == z or name.endswith("." + z) for z in zones)

    def _within_budget(self, table: CacheTable) -> None:
        # Within the byte bound: the least recently used go, from this table first (the one
        # growing), then from the other; the entry just stored is the most recent of its table.
        other = self.denial if table is self.success else self.success
        while self.bytes > self.max_bytes:
            (table if len(table) > 1 else other).popitem()


def prefetch_threshold(ttl: int, cache: CacheSection) -> int:
    """Seconds of TTL left below which a popular entry is refreshed: CoreDNS's
    ceil(PERCENTAGE % of the original TTL), so at least 1 s before it expires."""
    return math.ceil(cache.prefetch_percentage * ttl / 100)


def count_hit(entry: CacheEntry, now: float, cache: CacheSection) -> bool:
    """Count one hit on a fresh entry, on the slow path (`now >= entry.check_at`); whether it
    is now due a prefetch: asked at least `prefetch` times in the window, with at most
    `prefetch_threshold` seconds left. A hit after the window's end opens a new window that
    counts from it (CoreDNS's pkg/freq); the counter itself went up on the hot path."""
    if now > entry.window + cache.prefetch_duration:
        entry.window, entry.hits = now, 1
    entry.check_at = min(entry.window + cache.prefetch_duration, entry.prefetch_at)
    return now >= entry.prefetch_at and entry.hits >= cache.prefetch


def from_cache(entry: CacheEntry, query: Query, now: float, stale_ttl: int | None = None) -> bytes:
    """The cached response for `query`: its ID and question, TTLs counted down (RFC 1035 §7.1
    "the TTL ... decremented"), our OPT when the client sent one."""
    out = bytearray(entry.response)
    out[0:2] = query.id.to_bytes(2)
    # RD and CD as the client asked.
    flags = int.from_bytes(out[2:4]) & ~(wire.RD | wire.CD) | (query.flags & (wire.RD | wire.CD))
    out[2:4] = flags.to_bytes(2)
    if not query.compressed:
        out[12 : 12 + len(query.question)] = query.question
    elapsed = int(now - entry.stored)
    for offset, ttl in zip(entry.ttl_offsets, entry.ttls, strict=True):
        left = stale_ttl if stale_ttl is not None else max(0, ttl - elapsed)
        struct.pack_into("!I", out, offset, left)
    if query.edns:
        arcount = int.from_bytes(out[10:12]) + 1
        out[10:12] = arcount.to_bytes(2)
        out += wire.opt_record(query, flags & 0xF)
    return bytes(out)

"""Forwarding: names outside the cluster zones go to upstream resolvers, through a cache.

What CoreDNS's `forward` + `cache` plugins and kube-dns's stubDomains / upstreamNameservers do:

- Upstreams are `upstreams` (up to 15) or, by default, the host's /etc/resolv.conf nameservers;
  `stub_domains` send a domain (longest suffix wins) to its own servers.
- Every attempt uses a fresh random transaction ID (`secrets`) from a socket picked at random
  from a pool of sockets on random ephemeral ports, each used for a few questions at most
  (kdns/dns/udp_pool.py, RFC 5452 §9.2); a reply whose ID, QR bit or question does not match is
  ignored and the wait goes on — one forged packet never ends the exchange (RFC 5452 §9.1).
- TC → the same question again over TCP (RFC 7766 §5). Each upstream gets `timeout` (2 s),
  then the next; an upstream that failed `max_fails` times in a row is tried last until a
  health probe (`. IN NS` every `health_check` s) sees it answer again.
- Identical questions in flight go upstream once (coalesced). Beyond `max_concurrent` upstream
  exchanges, new questions get REFUSED at once, as CoreDNS's `max_concurrent` does.
- Every upstream failing → SERVFAIL, or a stale answer (RFC 8767) when `serve_stale` allows —
  also while that SERVFAIL is cached: a stale answer beats a cached failure.

`AnswerCache` here is the upstream cache (cachetools), sized and capped by the config's `cache`
section: answers for their TTL capped at `max_ttl`, negative answers per RFC 2308 (the SOA's
min(TTL, MINIMUM)) capped at `max_denial_ttl`, SERVFAIL for `servfail_ttl`; bounded by entry
counts and by `max_bytes` (success and denial together, oldest first; evictions counted in
`stats()`); TTLs counted down in what clients see. CoreDNS's `prefetch`: an entry asked
`prefetch` times within `prefetch_duration` is refreshed in the background once it is served
with less than `prefetch_percentage` % of its TTL left; the hit path pays one counter and one
compare for it (`CacheEntry.check_at`). Cluster answers never come here: they are
answered from the store. The UDP receive thread answers repeats of names only the upstreams
answer straight from this cache's entries (`remember`, kdns/dns/upstream_hits.py); what only
trio can do — serve-stale, truncation, a cached SERVFAIL, starting a prefetch — stays here.
While `run` runs, plain UDP misses of such names are sent upstream by the receive thread
itself (`forward_miss`, kdns/dns/miss_relay.py) and answered by the relay's reader thread with
the bytes `resolve` would give (`_fast_reply`); trio gets each answer afterwards, in batches,
to store and count it (`_fast_batch`), and takes back whatever the relay cannot answer
(timeout, TC, a malformed reply) as an ordinary miss; a failed relay attempt counts as the
question's first (`_fast_spent`), and after a TC trio asks that upstream over TCP at once
(`_fast_truncated`), so no upstream is asked more often than trio alone would ask it. Any
rcode the upstream answers (SERVFAIL, REFUSED too) is the answer, as on trio's path.

Every attempt is counted per upstream (`kdns_forward_*`, CoreDNS's forward/proxy metrics); a
failed one is logged at ERROR as CoreDNS's errors plugin does, with a `consolidate` key naming
the upstream and the reason, so an upstream timing out a thousand times a second costs one line
per interval (kdns/logs.py).

Time is trio's clock, so tests drive expiry with `trio.testing.MockClock`.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import random
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from cachetools import LRUCache
from dnslib import QTYPE

from kdns import metrics
from kdns.config import CacheSection
from kdns.dns import miss_relay, wire
from kdns.dns.dot import ConnectionClosed, TlsConnections, client_context
from kdns.dns.miss_relay import MissRelay, send_to
from kdns.dns.stats import LABELS, CacheStats
from kdns.dns.udp_pool import UdpPool
from kdns.dns.upstream_hits import ForwardedHits, Shape, shape_size
from kdns.dns.upstream_misses import Pending, matches, miss_key, upstream_message
from kdns.dns.wire import Query

log = logging.getLogger(__name__)

OPT = 41
SOA = 6
RRHeader = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
_TO_QUESTION = b"\xc0\x0c"  # a compression pointer to offset 12: the first question's name
# The fast miss path hands its answers to trio (to cache and count) in batches: at FLUSH_AT
# records, or FLUSH_EVERY seconds after the first.
FLUSH_AT = 256
FLUSH_EVERY = 0.02
FAST_SPENT_KEPT = 1024  # failed relay attempts remembered until trio asks again


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53
    tls: bool = False  # DNS over TLS (RFC 7858), CoreDNS's `tls://IP`

    def __str__(self) -> str:
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"tls://{address}" if self.tls else address

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    upstreams: tuple[Upstream, ...] = ()
    stub_domains: tuple[tuple[str, tuple[Upstream, ...]], ...] = ()
    timeout: float = 2.0  # per upstream attempt
    budget: float = 5.0  # for the whole question, every upstream included
    max_concurrent: int = 1000
    max_fails: int = 2
    health_check: float = 0.5
    cache: CacheSection = field(default_factory=CacheSection)  # sizes, TTL caps, serve_stale
    servfail_ttl: int = 5
    stale_ttl: int = 30  # the TTL of a stale answer (RFC 8767 §4 suggests 30 s)
    # CoreDNS's forward options: the order upstreams are tried in (random, round_robin,
    # sequential); TCP for every exchange; names under `except_zones` are not forwarded.
    policy: str = "random"
    force_tcp: bool = False
    except_zones: tuple[str, ...] = ()
    # `tls://` upstreams: the name their certificate must hold (CoreDNS's `tls_servername`;
    # "" = their address), `tls CERT KEY CA`, and how long an idle connection is reused.
    tls_servername: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    expire: float = 10.0


# --- reading responses ---------------------------------------------------------------------------


@dataclass(slots=True)
class Parsed:
    """Where the TTLs are in a response, and what they say."""

    rcode: int
    ancount: int
    ttl_offsets: list[int] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)
    answer_ttls: list[int] = field(default_factory=list)
    soa_negative_ttl: int | None = None  # min(SOA TTL, SOA MINIMUM) from the authority section
    opt_span: tuple[int, int] | None = None  # the OPT record's bytes, to strip


def parse_response(data: bytes) -> Parsed:
    """Walk a response's records (raises wire.WireError when it is malformed)."""
    if len(data) < 12:
        raise wire.WireError("short response")
    _, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!6H", data)
    pos = 12
    for _ in range(qdcount):
        _, pos = wire.read_name(data, pos)
        pos += 4
    parsed = Parsed(rcode=flags & 0xF, ancount=ancount)
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            start = pos
            if qdcount and data[pos : pos + 2] == _TO_QUESTION:
                pos += 2  # the question's name, which read_name has already walked
            else:
                _, pos = wire.read_name(data, pos)
            if pos + 10 > len(data):
                raise wire.WireError("record header runs past the end")
            rtype, _rclass, ttl, rdlength = RRHeader.unpack_from(data, pos)
            ttl_offset = pos + 4
            pos += 10 + rdlength
            if pos > len(data):
                raise wire.WireError("rdata runs past the end")
            if rtype == OPT:
                parsed.opt_span = (start, pos)
                continue
            parsed.ttl_offsets.append(ttl_offset)
            parsed.ttls.append(ttl)
            if section == 0:
                parsed.answer_ttls.append(ttl)
            elif section == 1 and rtype == SOA and rdlength >= 20:
                minimum = struct.unpack_from("!I", data, pos - 4)[0]
                parsed.soa_negative_ttl = min(ttl, minimum)
    return parsed


def strip_opt(data: bytes, parsed: Parsed) -> bytes:
    """The response without its OPT record: ours is added per client (RFC 6891 §7)."""
    if parsed.opt_span is None:
        return data
    start, end = parsed.opt_span
    arcount = struct.unpack_from("!H", data, 10)[0]
    out = data[:10] + struct.pack("!H", arcount - 1) + data[12:start] + data[end:]
    shift = end - start
    parsed.ttl_offsets = [o if o < start else o - shift for o in parsed.ttl_offsets]
    parsed.opt_span = None
    return out


# --- the upstream cache --------------------------------------------------------------------------


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
ENTRY_OVERHEAD = 820


def entry_size(key: bytes, response: bytes, records: int) -> int:
    return ENTRY_OVERHEAD + len(key) + len(response) + 2 * 40 * records


class _Table(LRUCache[bytes, CacheEntry]):
    """One LRU table of the upstream cache: its entries' sizes summed in `bytes`, and the entries
    it evicted (to stay within its count, or `UpstreamCache`'s byte bound) in `evictions`."""

    def __init__(self, maxsize: int, dropped: Callable[[CacheEntry], None]) -> None:
        super().__init__(maxsize=maxsize)
        self.bytes = 0
        self.evictions = 0
        self.dropped = dropped  # told of every entry that leaves, so no shape serves it

    def __setitem__(self, key: bytes, value: CacheEntry) -> None:
        if key in self:
            del self[key]  # replaced: its size goes before the new one's comes
        super().__setitem__(key, value)  # may evict (popitem) to stay within maxsize
        self.bytes += value.size

    def __delitem__(self, key: bytes) -> None:
        entry = super().__getitem__(key)
        super().__delitem__(key)
        self.bytes -= entry.size
        self.dropped(entry)

    def popitem(self) -> tuple[bytes, CacheEntry]:
        self.evictions += 1
        return super().popitem()

    def clear(self) -> None:
        for entry in self.values():
            self.dropped(entry)
        super().clear()  # cachetools clears its dict directly, not through __delitem__
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
        self.success = _Table(config.cache.success, self.fast.forget)
        self.denial = _Table(config.cache.denial, self.fast.forget)
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
    ) -> tuple[CacheEntry, _Table] | None:
        """The entry `put` would store for this response, and its table; None when it is not
        cached. Pure: reads only the config (the fast miss path's reader thread calls it)."""
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
        entry = CacheEntry(
            response,
            parsed.ttl_offsets,
            [min(t, ttl) for t in parsed.ttls],
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

    def store(self, key: bytes, entry: CacheEntry, table: _Table) -> None:
        """Keep `entry` (made by `entry_for`) under `key`, within the byte budget (trio's)."""
        table[key] = entry
        self._within_budget(table)

    def holds(self, key: bytes) -> bool:
        """Whether any entry (fresh, stale or a SERVFAIL) is kept under `key`. A plain dict
        read (cachetools' `in` does not touch the LRU order): the receive thread may ask."""
        return key in self.success or key in self.denial

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

    def _within_budget(self, table: _Table) -> None:
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


class _ClientShaped:
    """One upstream response made into each waiting client's answer, byte for byte what trio
    sends (`from_cache` of the entry just stored, 0 s elapsed, or `_relabel` when it is not
    cached; then `Handler.complete`: RA, the client's question, our OPT), without parsing the
    query: the fast miss path's reader thread. A plain query's question has the response's
    length (`matches` compared them), so the records start at the same offset."""

    __slots__ = ("arcount", "base", "cached", "flags", "rcode")

    def __init__(self, response: bytes, entry: CacheEntry | None) -> None:
        if entry is not None:
            base = bytearray(response)
            for offset, ttl in zip(entry.ttl_offsets, entry.ttls, strict=True):
                _TTL.pack_into(base, offset, ttl)  # the entry's TTLs, stored just now
            response = bytes(base)
        self.base = response
        self.cached = entry is not None
        self.flags = int.from_bytes(response[2:4])
        self.rcode = response[3] & 0xF
        self.arcount = int.from_bytes(response[10:12])

    def answer(self, data: bytes, qend: int) -> bytes | None:
        """The answer for the plain query `data` (question ending at `qend`); None when it
        must be cut for the client's UDP size (the generic path cuts)."""
        flags = self.flags
        if self.cached:  # `from_cache`: RD and CD as the client asked
            flags = flags & ~(wire.RD | wire.CD) | (int.from_bytes(data[2:4]) & (wire.RD | wire.CD))
        base = self.base
        edns = len(data) > qend
        out = (
            data[:2]
            + (flags | wire.RA).to_bytes(2)
            + base[4:10]
            + (self.arcount + edns).to_bytes(2)
            + data[12:qend]
            + base[qend:]
        )
        limit = wire.CLASSIC_UDP_PAYLOAD
        if edns:
            out += wire.opt_bytes(bool(data[qend + 7] & 0x80), self.rcode)
            payload = int.from_bytes(data[qend + 3 : qend + 5])
            limit = max(limit, min(payload, wire.MAX_UDP_PAYLOAD))
        return out if len(out) <= limit else None


# --- talking to upstreams ------------------------------------------------------------------------


class ExchangeError(Exception):
    """One upstream did not give a usable answer."""


def upstream_query(query: Query, qid: int) -> bytes:
    """Our query to an upstream (the same bytes the fast miss path sends)."""
    return upstream_message(qid, query.question, bool(query.flags & wire.CD), query.do)


@dataclass(slots=True)
class UpstreamHealth:
    fails: int = 0
    exchanges: int = 0
    errors: int = 0
    mismatched: int = 0


@dataclass(slots=True)
class _InFlight:
    done: trio.Event = field(default_factory=trio.Event)
    response: bytes | None = None  # the upstream's answer, None if every upstream failed


class Forwarder:
    def __init__(self, config: ForwardConfig) -> None:
        self.config = config
        self.cache = UpstreamCache(config)
        self.health: dict[Upstream, UpstreamHealth] = {}
        for upstream in self.all_upstreams():
            self.health[upstream] = UpstreamHealth()
        self._names = {u: str(u) for u in self.health}  # the `to` label of each upstream
        self._in_flight: dict[bytes, _InFlight] = {}
        self.refused = 0
        self.coalesced = 0
        # Stub domains, longest first, each as ".suffix" for a cheap endswith.
        self._stubs = sorted(config.stub_domains, key=lambda s: len(s[0]), reverse=True)
        self._turn = 0  # policy round_robin: where the next question starts
        # No stub domain and no `except` zone: every name goes to `upstreams` (`destinations`).
        self._everything_upstream = not config.stub_domains and not config.except_zones
        self.tls: TlsConnections | None = None
        self.pool = UdpPool()  # UDP sockets for the exchanges, reused a few times each
        # prometheus-client children by label values: `.labels()` per exchange costs more than
        # the dict lookup (upstreams × rcodes: bounded).
        self._series: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._background: trio.Nursery | None = None  # where prefetches run, while `run` does
        # Misses the receive thread sends upstream itself (kdns/dns/miss_relay.py), while `run`
        # runs: one reference, set and cleared by trio, read by the receive threads.
        self._relay: MissRelay | None = None
        self._now: Callable[[], float] = trio.current_time  # trio's clock, for any thread
        self._token: trio.lowlevel.TrioToken | None = None
        # What the reader thread hands trio (only that thread appends; trio pops), and whether
        # a wake-up is on its way (only the reader sets it, only trio clears it).
        self._fast_done: collections.deque[tuple[Any, ...]] = collections.deque()
        self._fast_woken = False
        self._fast_first = 0.0  # when the oldest record not yet handed over was appended
        # Keys whose relay attempt failed, with the upstream and the seconds it took: trio's
        # own exchange for the handed-back miss skips that upstream and that time (trio only).
        self._fast_spent: dict[bytes, tuple[Upstream, float]] = {}
        # Keys whose relay attempt came back truncated: trio asks that upstream over TCP first
        # (RFC 7766 §5), not over UDP once more.
        self._fast_truncated: dict[bytes, Upstream] = {}
        # Keys the relay answered and trio has not stored yet (the reader adds, trio removes):
        # a repeat meanwhile goes to trio, which stores them first (`_fast_batch`).
        self._fast_unstored: dict[bytes, None] = {}
        self._fast_labels: dict[tuple[str, int, int, bool], tuple[int, int]] = {}  # trio's
        self.fast_answered = 0  # misses answered by the relay (tests, the curious)
        self.fast_handed_back = 0  # misses it gave back to trio (timeout, TC, SERVFAIL, …)
        if any(u.tls for u in self.all_upstreams()):
            context = client_context(config.tls_ca, config.tls_cert, config.tls_key)
            self.tls = TlsConnections(context, config.tls_servername, config.expire)

    def all_upstreams(self) -> list[Upstream]:
        seen = dict.fromkeys(self.config.upstreams)
        for _, servers in self.config.stub_domains:
            seen.update(dict.fromkeys(servers))
        return list(seen)

    def upstreams_for(self, qname: str) -> tuple[Upstream, ...]:
        for domain, servers in self._stubs:
            if qname == domain or qname.endswith("." + domain):
                return servers
        return self.config.upstreams

    def destinations(self, qname: str) -> tuple[Upstream, ...]:
        """The upstreams `qname` is sent to: those of `upstreams_for`, but none for a name
        under CoreDNS's `except` zones that no stub domain takes (the question then fails,
        SERVFAIL, as CoreDNS's forward hands it to no next plugin)."""
        stub = any(qname == d or qname.endswith("." + d) for d, _ in self._stubs)
        if not stub and any(
            qname == z or qname.endswith("." + z) for z in self.config.except_zones
        ):
            return ()
        return self.upstreams_for(qname)

    def zone_for(self, qname: str) -> str:
        """The metrics zone of a forwarded name: its stub domain, else "." (as CoreDNS's server
        block zone for a stub domain's `forward`)."""
        for domain, _ in self._stubs:
            if qname == domain or qname.endswith("." + domain):
                return domain + "."
        return "."

    def healthy(self, upstream: Upstream) -> bool:
        """Up unless it failed `max_fails` exchanges in a row (CoreDNS: 0 = never down)."""
        max_fails = self.config.max_fails
        return max_fails == 0 or self.health[upstream].fails < max_fails

    # --- answering ---------------------------------------------------------------------------

    def cached(self, query: Query) -> bytes | None:
        """The answer from a fresh cache entry, or None: the synchronous fast path."""
        if self._fast_done:
            self._fast_batch()  # what the relay answered is in the cache before it is read
        return self._from_cache(cache_key(query), query, trio.current_time(), count=True)

    def _from_cache(self, key: bytes, query: Query, now: float, count: bool) -> bytes | None:
        entry = self.cache.get(key, now, count=count)
        if entry is None:
            return None
        entry.hits += 1
        if now >= entry.check_at and count_hit(entry, now, self.config.cache):
            self._prefetch_soon(entry, key, query)
        if entry.response[3] & 0xF == wire.SERVFAIL:
            # A cached SERVFAIL records that the upstreams failed; while it lasts, an answer in
            # the stale window still beats it (RFC 8767 §5), as it did for the first query.
            stale = self._stale(key, now, query)
            if stale is not None:
                return stale
        return from_cache(entry, query, now)

    def remember(self, data: bytes, query: Query, response: bytes, label: int) -> None:
        """Let the receive thread answer UDP queries shaped like `data` from the entry that
        `response` (finished for the client, not cut) came from (kdns/dns/upstream_hits.py).
        The handler calls this only for names that nothing but the upstreams answers. A cached
        SERVFAIL is never served there: a stale answer may beat it (RFC 8767 §5)."""
        key = cache_key(query)
        now = trio.current_time()
        entry = self.cache.get(key, now, count=False)
        if entry is None or entry.response[3] & 0xF == wire.SERVFAIL or query.compressed:
            return
        self._add_shape(data, key, entry, response, label, 12 + len(query.question), query.edns)

    def _add_shape(
        self,
        data: bytes,
        key: bytes,
        entry: CacheEntry,
        response: bytes,
        label: int,
        qend: int,
        edns: bool,
    ) -> None:
        """`remember`, once the entry is known (the fast miss path knows it, having just
        stored it): `response` must be `entry`'s whole answer, our OPT added for EDNS."""
        opt = len(wire.opt_bytes(False)) if edns else 0
        if len(response) != len(entry.response) + opt:
            return  # cut for the client's UDP size: the trio path cuts
        hits = self.cache.fast
        if hits.now is None:
            hits.now = trio.lowlevel.current_clock().current_time
            hits.schedule = trio.lowlevel.current_trio_token().run_sync_soon
            hits.due = self._due
        rcode = entry.response[3] & 0xF
        denial = rcode != wire.NOERROR or not int.from_bytes(entry.response[6:8])
        shape = Shape(entry, key, label, denial, response, qend)
        self.cache.add_shape(data, shape)

    def _due(self, shape: Shape, taps: int, data: bytes) -> None:
        """The receive thread served `shape` at or after its entry's `check_at` (trio's side):
        count its hits and start the refresh when one is due (CoreDNS's prefetch)."""
        entry = shape.entry
        entry.asked = False
        if taps > entry.taps_folded:
            entry.hits += taps - entry.taps_folded
            entry.taps_folded = taps
        now = trio.current_time()
        if entry.gone or now >= entry.expires or now < entry.check_at:
            return
        if count_hit(entry, now, self.config.cache):
            query = wire.parse_query(data)
            if isinstance(query, Query):
                self._prefetch_soon(entry, shape.key, query)

    # --- misses sent upstream by the receive thread (kdns/dns/miss_relay.py) -----------------

    def _start_relay(self, nursery: trio.Nursery) -> MissRelay | None:
        if self.config.force_tcp or not any(not u.tls for u in self.all_upstreams()):
            return None  # every exchange is TCP or TLS: trio's
        if not miss_relay.available():
            return None
        relay = MissRelay(
            self.config.timeout,
            max(1, self.config.max_concurrent),
            self._fast_reply,
            self._fast_failed,
            self._fast_expired,
            self._fast_mismatch,
            self._fast_idle,
            FLUSH_EVERY,
        )
        self._now = trio.lowlevel.current_clock().current_time
        self._token = trio.lowlevel.current_trio_token()
        nursery.start_soon(
            partial(
                trio.to_thread.run_sync,
                relay.run,
                abandon_on_cancel=False,  # `run`'s finally stops it; no thread outlives us
                limiter=trio.CapacityLimiter(1),
            )
        )
        self._relay = relay
        return relay

    def forward_miss(self, miss: Any, receiver: Any, zone_of: Callable[[str], object]) -> bool:
        """The receive thread's side: send a plain UDP query for a name only the upstreams
        answer (`zone_of` finds it in no zone; the handler checked the rest) and nothing in the
        cache, to one healthy plain-UDP upstream chosen as `_exchange` would choose first;
        answered by the relay's reader thread. False: hand it to trio, as before."""
        relay = self._relay
        if relay is None:
            return False
        data = miss[0]
        found = miss_key(data)
        if found is None:
            return False
        key, qname, qend = found
        if zone_of(qname) is not None or self.cache.holds(key) or key in self._fast_unstored:
            return False  # a cluster name, an answer trio has (stale, SERVFAIL) or will have
        upstream = self._fast_upstream(qname)
        if upstream is None or self.in_flight() >= self.config.max_concurrent:
            return False  # trio refuses past max_concurrent, as CoreDNS
        cd, do = bool(data[3] & wire.CD), bool(key[0] & 1)
        waiter = (miss, receiver, qend)
        return relay.submit(key, qname, upstream, data[12:qend], cd, do, waiter)

    @property
    def relay(self) -> MissRelay | None:
        """The relay of misses the receive threads send upstream, while `run` runs."""
        return self._relay

    def in_flight(self) -> int:
        """Upstream exchanges in flight: trio's and the relay's (CoreDNS's max_concurrent)."""
        relay = self._relay
        return len(self._in_flight) + (len(relay) if relay is not None else 0)

    def _fast_upstream(self, qname: str) -> Upstream | None:
        """The upstream `_exchange` would try first, when that choice needs no state of trio's
        (round_robin's turn) and all are healthy enough (else trio orders them)."""
        policy = self.config.policy
        if policy == "round_robin":
            return None
        servers = self.config.upstreams if self._everything_upstream else self.destinations(qname)
        healthy = [u for u in servers if self.healthy(u)]
        if not healthy:
            return None  # no destination, or healthcheck_broken: trio decides
        upstream = healthy[0] if policy == "sequential" else random.choice(healthy)
        return None if upstream.tls else upstream

    def _fast_reply(self, pending: Pending, waiters: list[Any], reply: bytes) -> None:
        """The reader thread: the upstream answered `pending`. Each waiter gets the bytes trio
        would send (`resolve` then `Handler.complete`); trio then stores the entry and counts."""
        try:
            parsed = parse_response(reply)
        except wire.WireError as e:
            self._fast_failed(pending, waiters, e)
            return
        rcode = parsed.rcode
        duration = time.perf_counter() - pending.sent
        if reply[2] & (wire.TC >> 8):
            # Trio asks this upstream again over TCP (RFC 7766 §5; `_fast_truncated`). Noted
            # before the hand-back: trio reads the note before it asks. Any other rcode is the
            # answer, as `_exchange` takes it (SERVFAIL cached briefly, REFUSED passed on); no
            # stale answer can beat it, since the relay takes only keys the cache holds nothing
            # under (RFC 8767 §5 is trio's).
            self._fast_note(("truncated", pending, rcode, duration))
            self._fast_back(waiters)
            return
        response = strip_opt(reply, parsed)
        now = self._now()
        made = None
        if not self._uncached(pending.qname, parsed):
            made = self.cache.entry_for(pending.key, response, parsed, now)
        answered = []
        shaped = _ClientShaped(response, made[0] if made is not None else None)
        for waiter in waiters:
            (data, addr, start, _serving), receiver, qend = waiter
            out = shaped.answer(data, qend)
            if out is None:  # cut for the client's UDP size: the generic path cuts
                out = self._fast_generic(data, response, made, now)
            if out is None:
                receiver.hand_back(waiter[0])  # cannot be (a plain query), but never lose one
                continue
            # Lost when the client is gone or the buffer is full, as any UDP answer may be.
            send_to(receiver.sock.fileno(), out, addr)
            answered.append((waiter, out, time.perf_counter() - start))
        if made is not None:
            self._fast_unstored[pending.key] = None
        self._fast_note(("answered", pending, made, rcode, duration, answered))

    def _fast_generic(
        self, data: bytes, response: bytes, made: tuple[CacheEntry, _Table] | None, now: float
    ) -> bytes | None:
        """What trio sends, by trio's own functions: `resolve` (from the entry just stored,
        0 s elapsed, or relabelled when not cacheable), then `Handler.complete` (RA, the
        client's question, the UDP cut)."""
        query = wire.parse_query(data)
        if not isinstance(query, Query):
            return None
        body = from_cache(made[0], query, now) if made is not None else _relabel(response, query)
        return wire.finish(body[:3] + bytes((body[3] | 0x80,)) + body[4:], query, True)

    def _fast_failed(self, pending: Pending, waiters: list[Any], error: Exception) -> None:
        # Noted before the hand-back: trio reads it (`_fast_spent`) before it asks again.
        self._fast_note(("failed", pending, waiters, error))
        self._fast_back(waiters)

    def _fast_expired(self, pending: Pending, waiters: list[Any]) -> None:
        relay = self._relay
        if relay is not None and not relay.stopping:  # not the stop's hand-back
            self._fast_note(("failed", pending, waiters, trio.TooSlowError()))
        self._fast_back(waiters)

    def _fast_mismatch(self, pending: Pending) -> None:
        self._fast_note(("mismatch", pending))

    def _fast_back(self, waiters: list[Any]) -> None:
        """Trio answers these as any other miss (its own exchange, retries, TCP, stale)."""
        self.fast_handed_back += len(waiters)
        for miss, receiver, _ in waiters:
            receiver.hand_back(miss)

    def _fast_note(self, record: tuple[Any, ...]) -> None:
        """Hand `record` to trio (the reader thread). Trio is woken once FLUSH_AT records wait,
        or FLUSH_EVERY after the first (`_fast_idle`): one wake-up per batch, not per miss;
        the clients have their answers already, only the cache and the counts wait."""
        done = self._fast_done
        if not done:
            self._fast_first = time.perf_counter()
        done.append(record)
        if len(done) >= FLUSH_AT:
            self._fast_wake()

    def _fast_idle(self) -> bool:
        """The reader thread, before it waits: wake trio if the oldest record waited
        FLUSH_EVERY; whether records still wait (the reader then waits at most FLUSH_EVERY)."""
        if not self._fast_done or self._fast_woken:
            return False
        if time.perf_counter() - self._fast_first >= FLUSH_EVERY:
            self._fast_wake()
            return False
        return True

    def _fast_wake(self) -> None:
        # Only the reader sets `_fast_woken`, only trio clears it, before it drains: nothing
        # appended is left unseen.
        if not self._fast_woken and self._token is not None:
            self._fast_woken = True
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._fast_batch)

    def _fast_batch(self) -> None:
        """Trio's side: store what the relay answered, count it as `resolve` would have."""
        self._fast_woken = False
        done = self._fast_done
        requests: dict[str, int] = {}  # counted once per batch: a lock per increment costs
        while done:
            record = done.popleft()
            kind, pending = record[0], record[1]
            upstream = pending.upstream
            health = self.health[upstream]
            if kind == "mismatch":
                health.mismatched += 1
                continue
            health.exchanges += 1
            to = self._names[upstream]
            requests[to] = requests.get(to, 0) + 1
            if kind == "answered":
                _, _, made, rcode, duration, answered = record
                health.fails = 0
                self._count_response(to, rcode, duration)
                if made is not None:
                    self.cache.store(pending.key, *made)
                    self._fast_unstored.pop(pending.key, None)
                self._fast_answered(pending, made, answered)
            elif kind == "truncated":
                self._count_response(to, record[2], record[3])
                if len(self._fast_truncated) >= FAST_SPENT_KEPT:
                    self._fast_truncated.clear()  # misses dropped before trio saw them
                self._fast_truncated[pending.key] = upstream
            else:
                query = wire.parse_query(record[2][0][0][0]) if record[2] else None
                if isinstance(query, Query):
                    self._failed(upstream, query, record[3])
                # The relay's attempt was this question's first: trio's goes on from there.
                if len(self._fast_spent) >= FAST_SPENT_KEPT:
                    self._fast_spent.clear()  # misses dropped before trio saw them
                self._fast_spent[pending.key] = (upstream, time.perf_counter() - pending.sent)
        for to, count in requests.items():
            self._count_request(to, count)

    def _fast_answered(
        self, pending: Pending, made: tuple[CacheEntry, _Table] | None, answered: list[Any]
    ) -> None:
        """Count the answered clients in their listener's statistics and the query log, as
        misses of the upstream cache (coalesced ones too), and let the receive thread answer
        the next queries of the first one's shape (`remember`)."""
        self.cache.misses += len(answered)
        self.coalesced += max(0, len(answered) - 1)
        self.fast_answered += len(answered)
        if not answered:
            return
        ((data, _, _, _), _, qend), first_out, _ = answered[0]
        # One key: the same type and DO for every waiter; the rcode is the upstream's.
        qtype = int.from_bytes(data[qend - 4 : qend - 2])
        do, rcode = bool(pending.key[0] & 1), first_out[3] & 0xF
        zone = self.zone_for(pending.qname)
        # Memo of label ids: zones (config) × types × rcodes × DO, bounded as LABELS is.
        labels = self._fast_labels.get((zone, qtype, rcode, do))
        if labels is None:
            labels = self._fast_labels[(zone, qtype, rcode, do)] = (
                LABELS.id(zone, qtype, rcode, "forward", do),
                LABELS.id(zone, qtype, rcode, "cache", do),
            )
        for ((data_, addr, start, serving), receiver, _), out, elapsed in answered:
            # The answer cache's miss, which `Handler.handle` counts on trio's path (its
            # `stats()` reads the public counter; trio's thread is its only writer).
            serving.handler.cache.misses += 1
            receiver.answered(serving, addr, "udp", data_, out, labels[0], start, elapsed)
        if made is not None and rcode != wire.SERVFAIL:
            # Stored just now: the receive thread answers its next hits (never a cached
            # SERVFAIL, as `remember`: a stale answer may beat it, RFC 8767 §5).
            edns = len(data) > qend
            self._add_shape(data, pending.key, made[0], first_out, labels[1], qend, edns)

    def _stale(self, key: bytes, now: float, query: Query) -> bytes | None:
        """The expired answer inside the serve-stale window, counted and logged, else None."""
        if not self.config.cache.serve_stale:
            return None
        stale = self.cache.stale(key, now)
        if stale is None:
            return None
        self.cache.served_stale += 1
        log.info(
            "upstreams failed: serving a stale answer (RFC 8767)",
            extra={"consolidate": "serving stale answers"},
        )
        return from_cache(stale, query, now, stale_ttl=self.config.stale_ttl)

    async def resolve(self, query: Query, looked_up: bool = False) -> bytes:
        """The response to send the client (not yet truncated for UDP). `looked_up`: the
        caller's `cached` already counted this question's cache miss."""
        if self._fast_done:
            self._fast_batch()  # what the relay answered is in the cache before it is read
        key = cache_key(query)
        now = trio.current_time()
        found = self._from_cache(key, query, now, count=not looked_up)
        if found is not None:
            return found
        flight = self._in_flight.get(key)
        if flight is not None:
            self.coalesced += 1
            await flight.done.wait()
        else:
            if self.in_flight() >= self.config.max_concurrent:
                self.refused += 1
                metrics.FORWARD_MAX_CONCURRENT_REJECTS.inc()
                return wire.error_response(query.id, query.flags, wire.REFUSED, query)
            flight = await self._fly(key, query)
        now = trio.current_time()
        if flight.response is None or flight.response[3] & 0xF == wire.SERVFAIL:
            # RFC 8767 §5: when the upstreams fail (no answer, or SERVFAIL), an expired answer
            # within the stale window beats a failure.
            stale = self._stale(key, now, query)
            if stale is not None:
                return stale
        entry = self.cache.get(key, now, count=False)
        if entry is not None:
            return from_cache(entry, query, now)
        if flight.response is not None:
            # Answered but not cacheable (REFUSED, a negative answer without SOA, TTL 0).
            return _relabel(flight.response, query)
        return wire.error_response(query.id, query.flags, wire.SERVFAIL, query)

    def _prefetch_soon(self, entry: CacheEntry, key: bytes, query: Query) -> None:
        """Refresh a popular entry in the background (CoreDNS's cache prefetch); the client is
        answered from the entry meanwhile. One refresh per entry, unless it fails; none while
        the same question is in flight or `max_concurrent` exchanges are."""
        if self._background is None or key in self._in_flight:
            return
        if self.in_flight() >= self.config.max_concurrent:
            return
        due, entry.prefetch_at = entry.prefetch_at, math.inf
        entry.check_at = entry.window + self.config.cache.prefetch_duration
        self.cache.prefetches += 1
        self._background.start_soon(self._prefetch, entry, due, key, query)

    async def _fly(self, key: bytes, query: Query) -> _InFlight:
        """One exchange, registered as in flight while it runs so that the same question asked
        meanwhile waits for it instead of going upstream again (coalescing)."""
        flight = self._in_flight[key] = _InFlight()
        try:
            flight.response = await self._exchange(query, key)
        finally:
            del self._in_flight[key]
            flight.done.set()
        return flight

    async def _prefetch(self, entry: CacheEntry, due: float, key: bytes, query: Query) -> None:
        flight = await self._fly(key, query)
        if flight.response is None:
            # Every upstream failed: the entry (still served) is due again on its next hit.
            entry.prefetch_at = entry.check_at = due
            return
        self.cache.keep_popularity(key, entry)

    async def _exchange(self, query: Query, key: bytes) -> bytes | None:
        """Ask the upstreams in turn; cache and return the first usable answer (OPT stripped)."""
        servers = self._ordered(self.destinations(query.qname.rstrip(".").lower()))
        servers.sort(key=lambda u: not self.healthy(u))  # healthy ones first, stable otherwise
        if servers and not self.healthy(servers[0]):
            # CoreDNS's healthcheck_broken: every upstream is down, so the health checks are
            # assumed broken and one is picked at random (then the rest, as time allows).
            metrics.FORWARD_HEALTHCHECK_BROKEN.inc()
            random.shuffle(servers)
        budget = self.config.budget
        spent = self._fast_spent.pop(key, None)
        if spent is not None:
            # The relay already tried this upstream for this question and it failed (timeout,
            # error): as if this loop had, the next upstream is asked, within what is left.
            servers = [u for u in servers if u != spent[0]]
            budget = max(0.0, budget - spent[1])
        tcp_first = self._fast_truncated.pop(key, None)
        if tcp_first in servers:
            servers.remove(tcp_first)  # the relay's UDP attempt was truncated: TCP, first
            servers.insert(0, tcp_first)
        with trio.move_on_after(budget):
            for upstream in servers:
                try:
                    reply = await self._ask(upstream, query, tcp=upstream == tcp_first)
                except (ExchangeError, OSError, trio.TooSlowError) as e:
                    self._failed(upstream, query, e)
                    continue
                try:
                    parsed = parse_response(reply)
                except wire.WireError as e:
                    self._failed(upstream, query, e)
                    continue
                self.health[upstream].fails = 0
                response = strip_opt(reply, parsed)
                if not self._uncached(query.qname, parsed):
                    self.cache.put(key, response, parsed, trio.current_time())
                return response
        return None

    def _ordered(self, servers: tuple[Upstream, ...]) -> list[Upstream]:
        """The upstreams in the order CoreDNS's `policy` tries them: shuffled (random, its
        default), as listed (sequential), or as listed from a start that moves on by one per
        question (round_robin)."""
        order = list(servers)
        if self.config.policy == "random":
            random.shuffle(order)
        elif self.config.policy == "round_robin" and order:
            start = self._turn % len(order)
            self._turn += 1
            order = order[start:] + order[:start]
        return order

    def _uncached(self, qname: str, parsed: Parsed) -> bool:
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

    def _failed(self, upstream: Upstream, query: Query, error: BaseException) -> None:
        health = self.health[upstream]
        health.errors += 1
        health.fails += 1
        if isinstance(error, trio.TooSlowError):
            reason, detail = "timeout", f"no answer within {self.config.timeout:g} s"
        elif isinstance(error, wire.WireError):
            reason, detail = "malformed", f"malformed response: {error}"
        else:
            reason, detail = "network", str(error) or type(error).__name__
        metrics.FORWARD_ERRORS.labels(str(upstream), reason).inc()
        # CoreDNS's errors plugin: "2 example.org. A: read udp …: i/o timeout".
        log.error(
            "%s %s: forward to %s: %s",
            query.qname + ".",
            QTYPE.get(query.qtype, f"TYPE{query.qtype}"),
            upstream,
            detail,
            extra={"consolidate": f"forward to {upstream}: {reason}"},
        )
        if health.fails == self.config.max_fails:
            log.warning("upstream %s is unhealthy (%s)", upstream, detail)

    async def _ask(
        self, upstream: Upstream, query: Query, probe: bool = False, tcp: bool = False
    ) -> bytes:
        """One exchange with `upstream`; counted in the forward metrics unless a health `probe`.
        `tcp`: over TCP from the start (a UDP answer to the same question was truncated)."""
        qid = secrets.randbelow(65536)
        message = upstream_query(query, qid)
        to = str(upstream)
        self.health[upstream].exchanges += 1
        if not probe:
            self._count_request(to)
        start = trio.current_time()
        with trio.fail_after(self.config.timeout):
            if upstream.tls:
                reply = await self._tls(upstream, message, qid, query.question)
            elif self.config.force_tcp or tcp:
                reply = await self._tcp(upstream, message, qid, query.question)
            else:
                reply = await self._udp(upstream, message, qid, query.question)
            plain_udp = not (self.config.force_tcp or upstream.tls)
            if plain_udp and struct.unpack_from("!H", reply, 2)[0] & wire.TC:
                qid = secrets.randbelow(65536)
                message = upstream_query(query, qid)
                reply = await self._tcp(upstream, message, qid, query.question)
        if not probe:
            self._count_response(to, reply[3] & 0xF, trio.current_time() - start)
        return reply

    def _count_request(self, to: str, count: int = 1) -> None:
        series = self._series.get((to, ""))
        if series is None:
            series = self._series[(to, "")] = (metrics.FORWARD_REQUESTS.labels(to), None)
        series[0].inc(count)

    def _count_response(self, to: str, rcode: int, seconds: float) -> None:
        name = metrics.rcode_name(rcode)
        series = self._series.get((to, name))
        if series is None:
            series = self._series[(to, name)] = (
                metrics.FORWARD_RESPONSES.labels(to, name),
                metrics.FORWARD_DURATION.labels(to, name),
            )
        series[0].inc()
        series[1].observe(seconds)

    async def _udp(self, upstream: Upstream, message: bytes, qid: int, question: bytes) -> bytes:
        # From a pooled socket (kdns/dns/udp_pool.py): a random ephemeral port, used for a few
        # questions at most, each with a fresh random ID (RFC 5452 §9.2). Connected, so the
        # kernel drops datagrams from any other address and an ICMP "port unreachable" fails
        # this attempt at once.
        health = self.health[upstream]

        def accept(reply: bytes) -> bool:
            if matches(reply, qid, question):
                return True
            # A stray or forged reply: ignore it and keep waiting (RFC 5452 §9.1).
            health.mismatched += 1
            return False

        address = (upstream.host, upstream.port)
        return await self.pool.exchange(address, upstream.family, message, accept)

    async def _tcp(self, upstream: Upstream, message: bytes, qid: int, question: bytes) -> bytes:
        stream = await trio.open_tcp_stream(upstream.host, upstream.port)
        async with stream:
            await stream.send_all(len(message).to_bytes(2) + message)
            buffer = bytearray()
            while True:
                while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2]):
                    size = int.from_bytes(buffer[:2])
                    reply = bytes(buffer[2 : 2 + size])
                    del buffer[: 2 + size]
                    if matches(reply, qid, question):
                        return reply
                    self.health[upstream].mismatched += 1
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ExchangeError("the upstream closed the TCP connection")
                buffer += chunk

    async def _tls(self, upstream: Upstream, message: bytes, qid: int, question: bytes) -> bytes:
        assert self.tls is not None  # made in __init__ whenever an upstream is tls://
        try:
            reply = await self.tls.exchange(upstream, message)
        except (ConnectionClosed, trio.BrokenResourceError) as e:
            # A certificate that does not verify arrives as BrokenResourceError from SSLError.
            raise ExchangeError(str(e.__cause__ or e) or type(e).__name__) from None
        if not matches(reply, qid, question):
            # One exchange at a time per connection: anything else is the upstream's error.
            self.health[upstream].mismatched += 1
            raise ExchangeError("the TLS upstream answered another question")
        return reply

    # --- health checks -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe unhealthy upstreams with `. IN NS` until they answer (CoreDNS's health check);
        run the cache's prefetches."""
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                relay = self._start_relay(nursery)
                task_status.started()
                try:
                    await self._probe_forever()
                finally:
                    # The receive threads stop sending; the reader hands back what is in
                    # flight, closes its sockets and returns (the nursery waits for it).
                    self._relay = None
                    if relay is not None:
                        relay.stop()
        finally:
            self._background = None
            self.pool.close()
            # A reload stops this task: the idle TLS connections of this forwarder go with it.
            if self.tls is not None:
                await self.tls.aclose()

    async def _probe_forever(self) -> None:
        probe = Query(0, wire.RD, (), 2, 1, b"\x00\x00\x02\x00\x01", False)
        while True:
            await trio.sleep(self.config.health_check)
            for upstream, health in self.health.items():
                if self.healthy(upstream):
                    continue
                try:
                    await self._ask(upstream, probe, probe=True)
                except (ExchangeError, OSError, trio.TooSlowError):
                    metrics.FORWARD_HEALTHCHECK_FAILURES.labels(str(upstream)).inc()
                    continue
                log.info("upstream %s answers again", upstream)
                health.fails = 0


def _relabel(response: bytes, query: Query) -> bytes:
    out = bytearray(response)
    out[0:2] = query.id.to_bytes(2)
    if not query.compressed:
        out[12 : 12 + len(query.question)] = query.question
    if query.edns:
        out[10:12] = (int.from_bytes(out[10:12]) + 1).to_bytes(2)
        out += wire.opt_record(query, out[3] & 0xF)
    return bytes(out)


def parse_upstreams(values: Iterable[str], where: str) -> tuple[Upstream, ...]:
    """`IP`, `IP:PORT` or `[V6]:PORT` strings → Upstreams; ValueError names the bad one. A
    `tls://` prefix is DNS over TLS, on port 853 unless given (RFC 7858 §3.1)."""
    from kdns.config import parse_hostport

    out = []
    for value in values:
        text = str(value)
        tls = text.lower().startswith("tls://")
        text = text[len("tls://") :] if tls else text.removeprefix("dns://")
        try:
            host, port = parse_hostport(text, 853 if tls else 53)
        except ValueError as e:
            raise ValueError(f"{where}: {value!r}: {e}") from None
        out.append(Upstream(host, port or (853 if tls else 53), tls))
    return tuple(out)


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> tuple[Upstream, ...]:
    """The `nameserver` lines of a resolv.conf (CoreDNS: `forward . /etc/resolv.conf`)."""
    servers = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1].split("%", 1)[0])
    except OSError:
        return ()
    return parse_upstreams(servers[:15], path)


def resolv_conf_search(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The `search` domains of a resolv.conf: autopath tries them after the cluster's own."""
    domains: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("search", "domain"):
                    domains = [d.rstrip(".").lower() for d in parts[1:]]
    except OSError:
        return ()
    return tuple(domains)

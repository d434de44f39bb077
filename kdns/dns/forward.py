"""Forwarding: names outside the cluster zones go to upstream resolvers, through a cache.

What CoreDNS's `forward` + `cache` plugins and kube-dns's stubDomains / upstreamNameservers do:

- Upstreams are `upstreams` (up to 15) or, by default, the host's /etc/resolv.conf nameservers;
  `stub_domains` send a domain (longest suffix wins) to its own servers.
- Each upstream gets `timeout` (2 s) for one exchange (kdns/dns/upstream_exchange.py: a fresh
  random ID from a pooled socket, RFC 5452; TC → TCP, RFC 7766 §5; `tls://`), then the next,
  in CoreDNS's `policy` order within `budget`; an upstream that failed `max_fails` times in a
  row is tried last until a health probe (`. IN NS` every `health_check` s) sees it answer.
- Identical questions in flight go upstream once (coalesced). Beyond `max_concurrent` upstream
  exchanges, new questions get REFUSED at once, as CoreDNS's `max_concurrent` does.
- Every upstream failing → SERVFAIL, or a stale answer (RFC 8767) when `serve_stale` allows —
  also while that SERVFAIL is cached: a stale answer beats a cached failure.

Answers are kept in the upstream cache (kdns/dns/upstream_cache.py: TTL caps, RFC 2308
negatives, entry and byte bounds); this module decides when to ask, serves stale answers and
starts CoreDNS's `prefetch`: an entry asked `prefetch` times within `prefetch_duration` is
refreshed in the background once it is served with less than `prefetch_percentage` % of its
TTL left; the hit path pays one counter and one compare for it (`CacheEntry.check_at`).
Cluster answers never come here: they are answered from the store. The UDP receive thread
answers repeats of names only the upstreams answer straight from the cache's entries
(`remember`, kdns/dns/upstream_hits.py); what only trio can do — serve-stale, truncation, a
cached SERVFAIL, starting a prefetch — stays here.
While `run` runs, plain UDP misses of such names are sent upstream by the receive thread
itself (`forward_miss`: the upstream `_exchange` would try first, when that choice needs
nothing of trio's; kdns/dns/miss_relay.py), answered by that thread when it reads the reply,
through a relay of its own, and then stored and counted by trio (kdns/dns/relayed.py); what
the relay cannot answer comes back to trio as an ordinary miss, whose exchange goes on from
the relay's attempt (`take_spent`, `take_truncated`), so no upstream is asked more often than
trio alone would ask it.

Every attempt is counted per upstream and a failed one logged, as CoreDNS's forward and
errors plugins do (kdns/dns/upstream_exchange.py).

Time is trio's clock, so tests drive expiry with `trio.testing.MockClock`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from kdns import metrics
from kdns.dns import wire
from kdns.dns.miss_relay import MissRelay
from kdns.dns.relayed import RelayedMisses
from kdns.dns.upstream_cache import (
    CacheEntry,
    UpstreamCache,
    cache_key,
    count_hit,
    from_cache,
)
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.dns.upstream_exchange import ExchangeError, UpstreamExchanges
from kdns.dns.upstream_hits import Shape
from kdns.dns.upstream_misses import miss_key
from kdns.dns.upstream_response import parse_response, relabel, strip_opt
from kdns.dns.wire import Query

log = logging.getLogger(__name__)

_OPT_LENGTH = len(wire.opt_bytes(False))  # our OPT record, which `add_shape`'s answers carry


@dataclass(slots=True)
class _InFlight:
    done: trio.Event = field(default_factory=trio.Event)
    response: bytes | None = None  # the upstream's answer, None if every upstream failed


class Forwarder:
    """One config's forwarding (see the module's contract): `cached` and `resolve` answer, `run`
    runs the health probes, the prefetches and the relay while this config serves."""

    def __init__(self, config: ForwardConfig) -> None:
        self.config = config
        self.cache = UpstreamCache(config)
        # Asking one upstream, counting it, its health (kdns/dns/upstream_exchange.py). Its
        # `health` and `healthy` are held here too: the receive thread's `forward_miss` reads
        # them per packet, at no more cost than when they were this class's own.
        self.exchanges = UpstreamExchanges(config, self.all_upstreams())
        self.health = self.exchanges.health
        self.healthy = self.exchanges.healthy
        self.pool, self.tls = self.exchanges.pool, self.exchanges.tls  # for the curious
        self._in_flight: dict[bytes, _InFlight] = {}
        self.refused = 0
        self.coalesced = 0
        # Stub domains, longest first, each as ".suffix" for a cheap endswith.
        self._stubs = sorted(config.stub_domains, key=lambda s: len(s[0]), reverse=True)
        self._turn = 0  # policy round_robin: where the next question starts
        # No stub domain and no `except` zone: every name goes to `upstreams` (`destinations`).
        self._everything_upstream = not config.stub_domains and not config.except_zones
        self._background: trio.Nursery | None = None  # where prefetches run, while `run` does
        # Trio's clock: `run` makes it callable from any thread (the receive threads read it in
        # `forward_miss` and, relaying, through RelayedMisses).
        self.clock: Callable[[], float] = trio.current_time
        # What trio does with the relay's answers (kdns/dns/relayed.py). Its `done` deque and
        # `unstored` dict are never replaced: held here too, so that testing them costs the
        # hit and miss paths no more than when they were this class's own.
        self._relayed = RelayedMisses(self)
        self._relayed_done = self._relayed.done
        self._unstored = self._relayed.unstored

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

    # --- answering ---------------------------------------------------------------------------

    def cached(self, query: Query) -> bytes | None:
        """The answer from a fresh cache entry, or None: the synchronous fast path."""
        if self._relayed_done:
            self._relayed.batch()  # what the relay answered is in the cache before it is read
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
        self.add_shape(data, key, entry, response, label, 12 + len(query.question), query.edns)

    def add_shape(
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
        if len(response) != len(entry.response) + (_OPT_LENGTH if edns else 0):
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

    def forward_miss(self, miss: Any, receiver: Any, zone_of: Callable[[str], object]) -> bool:
        """The receive thread's side: send a plain UDP query for a name only the upstreams
        answer (`zone_of` finds it in no zone; the handler checked the rest) and nothing in the
        cache, to one healthy plain-UDP upstream chosen as `_exchange` would choose first;
        answered when that thread reads the reply. False: hand it to trio, as before."""
        if not self._relayed.running:
            return False
        data = miss[0]
        found = miss_key(data)
        if found is None:
            return False
        key, qname, qend = found
        if (
            zone_of(qname) is not None
            or self.cache.answers_now(key, self.clock())
            or key in self._unstored
            or key in self._in_flight
        ):
            # A cluster name; an answer trio has (a SERVFAIL too) or will have; trio's own
            # exchange for it in flight (coalesced there). An expired entry is refreshed here:
            # trio would ask the upstreams first too, and a failed relay attempt hands the
            # query back, where the stale answer is served (RFC 8767).
            return False
        upstream = self._fast_upstream(qname)
        if upstream is None or self.in_flight() >= self.config.max_concurrent:
            return False  # trio refuses past max_concurrent, as CoreDNS
        relay = self._relayed.relay_for(receiver)  # this receive thread's own
        if relay is None:
            return False
        cd, do = bool(data[3] & wire.CD), bool(key[0] & 1)
        waiter = (miss, receiver, qend)
        return relay.submit(key, qname, upstream, data[12:qend], cd, do, waiter)

    @property
    def relays(self) -> list[MissRelay]:
        """The relays of misses the receive threads send upstream (one per thread that sent
        one), while `run` runs."""
        return self._relayed.relays()

    @property
    def fast_answered(self) -> int:
        """Misses the relay answered (tests, the curious)."""
        return self._relayed.answered

    @property
    def fast_handed_back(self) -> int:
        """Misses the relay gave back to trio (timeout, TC, a socket error, …)."""
        return self._relayed.handed_back

    def in_flight(self) -> int:
        """Upstream exchanges in flight: trio's and the relay's (CoreDNS's max_concurrent)."""
        return len(self._in_flight) + self._relayed.in_flight()

    def _fast_upstream(self, qname: str) -> Upstream | None:
        """The upstream `_exchange` would try first, when that choice needs no state of trio's
        (round_robin's turn) and all are healthy enough (else trio orders them)."""
        policy = self.config.policy
        if policy == "round_robin":
            return None
        servers = self.config.upstreams if self._everything_upstream else self.destinations(qname)
        if len(servers) == 1:  # the usual config: no list to make, nothing to choose
            upstream = servers[0]
            return upstream if self.healthy(upstream) and not upstream.tls else None
        healthy = [u for u in servers if self.healthy(u)]
        if not healthy:
            return None  # no destination, or healthcheck_broken: trio decides
        upstream = healthy[0] if policy == "sequential" else random.choice(healthy)
        return None if upstream.tls else upstream

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
        if self._relayed_done:
            self._relayed.batch()  # what the relay answered is in the cache before it is read
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
            return relabel(flight.response, query)
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
        spent = self._relayed.take_spent(key)
        if spent is not None:
            # The relay already tried this upstream for this question and it failed (timeout,
            # error): as if this loop had, the next upstream is asked, within what is left.
            servers = [u for u in servers if u != spent[0]]
            budget = max(0.0, budget - spent[1])
        tcp_first = self._relayed.take_truncated(key)
        if tcp_first in servers:
            servers.remove(tcp_first)  # the relay's UDP attempt was truncated: TCP, first
            servers.insert(0, tcp_first)
        with trio.move_on_after(budget):
            for upstream in servers:
                try:
                    reply = await self.exchanges.ask(upstream, query, tcp=upstream == tcp_first)
                except (ExchangeError, OSError, trio.TooSlowError) as e:
                    self.exchanges.failed(upstream, query, e)
                    continue
                try:
                    parsed = parse_response(reply)
                except wire.WireError as e:
                    self.exchanges.failed(upstream, query, e)
                    continue
                self.health[upstream].fails = 0
                response = strip_opt(reply, parsed)
                if not self.cache.uncached(query.qname, parsed):
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

    # --- health checks -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe unhealthy upstreams with `. IN NS` until they answer (CoreDNS's health check);
        run the cache's prefetches."""
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                self.clock = trio.lowlevel.current_clock().current_time
                self._relayed.start()
                task_status.started()
                try:
                    await self.exchanges.probe_forever()
                finally:
                    # The receive threads stop sending; each hands back what its relay has in
                    # flight and closes its sockets at its next turn.
                    self._relayed.stop()
        finally:
            self._background = None
            # A reload stops this task: the sockets and idle TLS connections go with it.
            await self.exchanges.aclose()

"""The trio side of forwarded misses the receive threads send upstream themselves.

While `Forwarder.run` runs, a plain UDP miss of a name only the upstreams answer is sent
upstream by the receive thread (`Forwarder.forward_miss` → kdns/dns/miss_relay.py), through a
relay that thread owns (`relay_for`: one per receive thread and forwarder, made on its first
miss), and the same thread reads the reply. `RelayedMisses` is what that reply then does, in
two halves (docs/architecture.md §6, §7 step 5):

- On the receive thread (`on_reply`, `on_failure`, `on_expiry`, `on_mismatch`, `on_idle`: the
  relay's callbacks): each waiting client is sent the bytes trio would send
  (kdns/dns/relay_answers.py), from the entry the upstream cache would store
  (`UpstreamCache.entry_for`, pure); what it cannot answer — a timeout, TC, a malformed reply,
  a socket error — goes back to the receiver as an ordinary miss (`hand_back`). Any rcode the
  upstream answers (SERVFAIL, REFUSED too) is the answer, as on trio's path, but for a
  SERVFAIL of a name whose expired answer is inside the serve-stale window: trio serves that
  (RFC 8767 §5). The relay also refreshes expired entries (`Forwarder.forward_miss` declines
  only a key with a fresh entry), as trio would ask the upstreams first too. It writes nothing
  trio owns: every outcome is one record appended to `done`.
- On trio's thread (`batch`): the records are drained in order — entries stored, the forward
  metrics, the upstreams' health, the listener's statistics and the query log counted as
  `resolve` would have, and the first client's shape registered for the receive thread's hits
  (`Forwarder.add_shape`). A failed relay attempt counts as the question's first
  (`take_spent`: trio's exchange skips that upstream and that time), and after a TC trio asks
  that upstream over TCP at once (`take_truncated`, RFC 7766 §5), so no upstream is asked more
  often than trio alone would ask it. Each exchange ends in exactly one record, and so in one
  outcome of `kdns_forward_relay_exchanges_total` (answered, truncated, stale, timeout,
  network, malformed, stopped), with its clients counted as coalesced (all but the first) and
  handed back (all of them, but for answered); trio adds them to the counters once per batch
  (kdns/metrics.py). The misses a relay declines at its limit (`MissRelay.declined`, an int its
owner counts) are added to `kdns_forward_relay_declined_total` by the same batch. The in-flight
gauge reads `in_flight` of every live instance at scrape time.

Hand-over: one `run_sync_soon` per batch, at FLUSH_AT records, FLUSH_EVERY seconds after the
first, or when the receive thread has nothing left in flight (the clients have their answers
already; only the cache and the counts wait), and the forwarder drains `done` itself before it
reads the upstream cache, so a repeat never misses an answer a relay gave. `unstored` holds the
keys answered and not yet stored: the receive thread sends a repeat of one to trio, which
stores first.

Start and stop (trio, `Forwarder.run`): `start` lets the receive threads make relays, `stop`
stops each (its owner hands back what is in flight, not as failures but as `stopped`, and
closes its sockets).

Threads (safe under the GIL by construction): `done` is appended only by receive threads and
popped only by trio; `_woken` is set only by them and cleared only by trio before it drains, so
no record is left unseen (two threads waking trio at once cost one empty `batch`); `unstored`
gets single-key `dict` writes from receive threads and single-key removals from trio, and the
receive threads test `in`; `_relays` gets one single-key write per receive thread (its own)
and is replaced whole by `stop`; `answered`, `_spent`, `_truncated`, `_labels` and
`_declined_seen` are trio's alone (`handed_back`, for tests, is the receive threads'), and so
are the relay metrics: the receive threads only append records and count their relay's
`declined` (an int only its owner writes; trio reads it, one attribute read), trio adds them
up. The in-flight gauge (any thread that
scrapes) copies `_LIVE`, a WeakSet, and each instance's `_relays` in one step each and reads
only lengths. The interface to the Forwarder is its public members: `config`, `cache`, `clock`,
`coalesced`, `all_upstreams`, `zone_for`, `add_shape`, and its `exchanges`
(kdns/dns/upstream_exchange.py: `health`, `names`, `count_request`, `count_response`,
`count_responses`, `failed`); to a receiver, `relaying` (kdns/dns/relaying.py), `hand_back`,
`answered`.
"""

from __future__ import annotations

import collections
import contextlib
import time
import weakref
from typing import TYPE_CHECKING, Any

import trio

from kdns import metrics
from kdns.dns import miss_relay, wire
from kdns.dns.miss_relay import MissRelay
from kdns.dns.relay_answers import ClientShaped, generic_answer
from kdns.dns.stats import LABELS
from kdns.dns.upstream_cache import CacheEntry, CacheTable
from kdns.dns.upstream_config import Upstream
from kdns.dns.upstream_misses import Pending
from kdns.dns.upstream_response import parse_response, strip_opt
from kdns.dns.wire import Query

if TYPE_CHECKING:
    from kdns.dns.forward import Forwarder

# The receive threads hand their answers to trio (to cache and count) in batches: at FLUSH_AT
# records, FLUSH_EVERY seconds after the first, or when nothing is left in flight.
FLUSH_AT = 256
FLUSH_EVERY = 0.02
FAST_SPENT_KEPT = 1024  # failed relay attempts remembered until trio asks again

# Every forwarder's relayed misses, for the in-flight gauge read at scrape time (a forwarder
# replaced on reload leaves with its last reference).
_LIVE: weakref.WeakSet[RelayedMisses] = weakref.WeakSet()


def _in_flight_everywhere() -> int:
    return sum(relayed.in_flight() for relayed in list(_LIVE))


metrics.FORWARD_RELAY_IN_FLIGHT.set_function(_in_flight_everywhere)


def failure_outcome(error: BaseException) -> str:
    """The outcome label of a failed relay attempt: the reasons of kdns_forward_errors_total
    (kdns/dns/upstream_exchange.py's `failed`), so the two series line up."""
    if isinstance(error, trio.TooSlowError):
        return "timeout"
    if isinstance(error, wire.WireError):
        return "malformed"
    return "network"


class RelayedMisses:
    """One forwarder's relayed misses (see the module's contract)."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self._exchanges = forwarder.exchanges  # its counts and upstreams' health
        self.cache = forwarder.cache  # never replaced: the forwarder's upstream cache
        # One relay per receive thread that sent a miss upstream (kdns/dns/miss_relay.py: the
        # thread owns it and drives it), by receiver, while the forwarder runs (`running`).
        self._relays: dict[Any, MissRelay] = {}
        self.running = False
        self._token: trio.lowlevel.TrioToken | None = None
        # What the receive threads hand trio (only they append; trio pops), and whether
        # a wake-up is on its way (only they set it, only trio clears it). Never
        # replaced: the forwarder keeps a reference to test it cheaply.
        self.done: collections.deque[tuple[Any, ...]] = collections.deque()
        self._woken = False
        self._first = 0.0  # when the oldest record not yet handed over was appended
        # Keys whose relay attempt failed, with the upstream and the seconds it took: trio's
        # own exchange for the handed-back miss skips that upstream and that time (trio only).
        self._spent: dict[bytes, tuple[Upstream, float]] = {}
        # Keys whose relay attempt came back truncated: trio asks that upstream over TCP first
        # (RFC 7766 §5), not over UDP once more.
        self._truncated: dict[bytes, Upstream] = {}
        # Keys the relay answered and trio has not stored yet (receive threads add, trio removes):
        # a repeat meanwhile goes to trio, which stores them first (`batch`). Never replaced.
        self.unstored: dict[bytes, None] = {}
        self._labels: dict[tuple[str, int, int, bool], tuple[int, int]] = {}  # trio's
        # Each relay's `declined` as trio last added it to the counter (trio's), kept for a
        # stopped relay until it has closed (its count then moves no more).
        self._declined_seen: dict[MissRelay, int] = {}
        self.answered = 0  # misses answered by the relay (tests, the curious)
        self.handed_back = 0  # misses it gave back to trio (timeout, TC, a socket error, …)
        _LIVE.add(self)

    def start(self) -> None:
        """Let the receive threads relay (trio, when the forwarder starts), unless this config
        leaves every miss to trio (only TCP or TLS exchanges) or the platform cannot relay."""
        forwarder = self._forwarder
        if forwarder.config.force_tcp or not any(not u.tls for u in forwarder.all_upstreams()):
            return  # every exchange is TCP or TLS: trio's
        if miss_relay.available():
            self._token = trio.lowlevel.current_trio_token()
            self.running = True

    def stop(self) -> None:
        """Every relay refuses new misses; its owner hands back what is in flight (not counted
        as failures) and closes its sockets at its next turn (trio, when the forwarder stops)."""
        self.running = False
        relays, self._relays = list(self._relays.values()), {}
        for relay in relays:
            self._declined_seen.setdefault(relay, 0)  # folded until it has closed
            relay.stop()

    def relay_for(self, receiver: Any) -> MissRelay | None:
        """The relay `receiver`'s thread owns for this forwarder, made on its first miss (from
        that thread); None while the forwarder does not run, or where it cannot relay."""
        relay = self._relays.get(receiver)
        if relay is not None and not relay.stopping:
            return relay
        if not self.running:
            return None
        relaying = receiver.relaying  # kdns/dns/relaying.py: the thread's
        poller = relaying.poller()
        if poller is None:
            return None
        config = self._forwarder.config
        relay = MissRelay(
            poller,
            config.timeout,
            max(1, config.max_concurrent),
            self.on_reply,
            self.on_failure,
            self.on_expiry,
            self.on_mismatch,
            self.on_idle,
            FLUSH_EVERY,
            relaying.poke,
        )
        self._relays[receiver] = relay
        relaying.attach(relay)
        if not self.running:
            # `stop` ran meanwhile and may not have seen it (it sets `running` first, then
            # takes the relays): stopped here instead.
            relay.stop()
        return relay

    def relays(self) -> list[MissRelay]:
        """The relays running now (tests, the curious)."""
        return list(self._relays.values())

    def in_flight(self) -> int:
        """Exchanges the relays have in flight (any thread: a length per relay)."""
        return sum(map(len, list(self._relays.values())))

    def take_spent(self, key: bytes) -> tuple[Upstream, float] | None:
        """The upstream the relay's failed attempt at `key` asked, and the seconds it took."""
        return self._spent.pop(key, None)

    def take_truncated(self, key: bytes) -> Upstream | None:
        """The upstream whose UDP answer to `key` was truncated: ask it over TCP first."""
        return self._truncated.pop(key, None)

    # --- the receive thread (the relay's owner) ----------------------------------------------

    def on_reply(self, pending: Pending, waiters: list[Any], reply: bytes) -> None:
        """The receive thread: the upstream answered `pending`. Each waiter gets the bytes trio
        would send (`resolve` then `Handler.complete`); trio then stores the entry and counts."""
        try:
            # The question is ours (`matches` compared it): the records start after it.
            parsed = parse_response(reply, 12 + len(pending.question))
        except wire.WireError as e:
            self.on_failure(pending, waiters, e)
            return
        rcode = parsed.rcode
        duration = time.perf_counter() - pending.sent
        if reply[2] & (wire.TC >> 8):
            # Trio asks this upstream again over TCP (RFC 7766 §5; `take_truncated`). Noted
            # before the hand-back: trio reads the note before it asks. Any other rcode is the
            # answer, as `_exchange` takes it (SERVFAIL cached briefly, REFUSED passed on)...
            self._note(("truncated", pending, rcode, duration, len(waiters)))
            self._back(waiters)
            return
        if rcode == wire.SERVFAIL and self.cache.stale_kept(pending.key, self._forwarder.clock()):
            # ... but a SERVFAIL for a name whose expired answer is inside the serve-stale
            # window: the upstream failed, and the stale answer beats the failure (RFC 8767
            # §5). Trio serves it; the note keeps it from asking this upstream again.
            self._note(("servfail", pending, rcode, duration, len(waiters)))
            self._back(waiters)
            return
        response = strip_opt(reply, parsed)
        now = self._forwarder.clock()
        made = None
        if not self.cache.uncached(pending.qname, parsed):
            made = self.cache.entry_for(pending.key, response, parsed, now)
        entry = made[0] if made is not None else None
        answered = []
        shaped = ClientShaped(response, entry, parsed.ttls)
        for waiter in waiters:
            (data, addr, start, _serving), receiver, qend = waiter
            out = shaped.answer(data, qend)
            if out is None:  # cut for the client's UDP size: the generic path cuts
                out = generic_answer(data, response, entry, now)
            if out is None:
                receiver.hand_back(waiter[0])  # cannot be (a plain query), but never lose one
                continue
            # Sent with the others of this turn (one sendmmsg); lost when the client is gone or
            # the buffer is full, as any UDP answer may be.
            receiver.relaying.send_soon(out, addr)
            answered.append((waiter, out, time.perf_counter() - start))
        if made is not None:
            self.unstored[pending.key] = None
        self._note(("answered", pending, made, rcode, duration, answered, len(waiters)))

    def on_failure(self, pending: Pending, waiters: list[Any], error: Exception) -> None:
        """The receive thread: the exchange failed (a socket error, a malformed reply)."""
        # Noted before the hand-back: trio reads it (`take_spent`) before it asks again.
        self._note(("failed", pending, waiters, error))
        self._back(waiters)

    def on_expiry(self, pending: Pending, waiters: list[Any], timed_out: bool) -> None:
        """The receive thread: no answer within `timeout` (a failure), or the relay stops."""
        if timed_out:
            self._note(("failed", pending, waiters, trio.TooSlowError()))
            self._back(waiters)
            return
        # Stopped (the forwarder's `run` ended: a reload; or the owner thread exits: the
        # listener stops): no failure, only counted. The relay is closed for good, so no
        # `on_idle` follows to hand this record on, and a listener that stops may never bring
        # trio to the upstream cache again: woken here.
        self._note(("stopped", pending, len(waiters)))
        self._back(waiters)
        self._wake()

    def on_mismatch(self, pending: Pending) -> None:
        """The receive thread: a reply that did not match (RFC 5452 §9.1), ignored."""
        self._note(("mismatch", pending))

    def _back(self, waiters: list[Any]) -> None:
        """Trio answers these as any other miss (its own exchange, retries, TCP, stale)."""
        self.handed_back += len(waiters)
        for miss, receiver, _ in waiters:
            receiver.hand_back(miss)

    def _note(self, record: tuple[Any, ...]) -> None:
        """Hand `record` to trio (the receive thread). Trio is woken once FLUSH_AT records wait,
        or FLUSH_EVERY after the first (`on_idle`): one wake-up per batch, not per miss;
        the clients have their answers already, only the cache and the counts wait."""
        done = self.done
        if not done:
            self._first = time.perf_counter()
        done.append(record)
        if len(done) >= FLUSH_AT:
            self._wake()

    def on_idle(self, leaving: bool) -> bool:
        """The receive thread, before it waits: wake trio if the oldest record waited
        FLUSH_EVERY, or now when it goes back to its clients alone (`leaving`: it polls no
        more); whether records still wait (it then waits at most FLUSH_EVERY)."""
        if not self.done or self._woken:
            return False
        if leaving or time.perf_counter() - self._first >= FLUSH_EVERY:
            self._wake()
            return False
        return True

    def _wake(self) -> None:
        # Only receive threads set `_woken`, only trio clears it, before it drains: nothing
        # appended is left unseen.
        if not self._woken and self._token is not None:
            self._woken = True
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self.batch)

    # --- trio's side -------------------------------------------------------------------------

    def batch(self) -> None:
        """Trio's side: store what the relay answered, count it as `resolve` would have."""
        self._woken = False
        done, exchanges = self.done, self._exchanges
        # Counted once per batch (a lock per increment costs): requests, and answers by rcode
        # (each answer's duration is still observed on its own, the histogram needs it).
        requests: dict[str, int] = {}
        responses: dict[tuple[str, int], int] = {}
        tally = _RelayTally()
        while done:
            record = done.popleft()
            kind, pending = record[0], record[1]
            upstream = pending.upstream
            to = exchanges.names[upstream]
            if kind == "stopped":  # not an attempt: trio's own exchange is the question's first
                tally.exchange(to, "stopped", record[2], record[2])
                continue
            health = exchanges.health[upstream]
            if kind == "mismatch":
                health.mismatched += 1
                continue
            health.exchanges += 1
            requests[to] = requests.get(to, 0) + 1
            if kind == "answered":
                _, _, made, rcode, duration, answered, clients = record
                health.fails = 0
                exchanges.count_response(to, rcode, duration, count=False)
                responses[(to, rcode)] = responses.get((to, rcode), 0) + 1
                if made is not None:
                    self.cache.store(pending.key, *made)
                    self.unstored.pop(pending.key, None)
                self._count_answered(pending, made, answered)
                tally.exchange(to, "answered", clients, clients - len(answered))
            elif kind == "servfail":  # an answer (the upstream is up), and a spent attempt
                health.fails = 0
                exchanges.count_response(to, record[2], record[3], count=False)
                responses[(to, record[2])] = responses.get((to, record[2]), 0) + 1
                self._spend(pending)
                tally.exchange(to, "stale", record[4], record[4])
            elif kind == "truncated":
                exchanges.count_response(to, record[2], record[3], count=False)
                responses[(to, record[2])] = responses.get((to, record[2]), 0) + 1
                if len(self._truncated) >= FAST_SPENT_KEPT:
                    self._truncated.clear()  # misses dropped before trio saw them
                self._truncated[pending.key] = upstream
                tally.exchange(to, "truncated", record[4], record[4])
            else:
                waiters, error = record[2], record[3]
                query = wire.parse_query(waiters[0][0][0]) if waiters else None
                if isinstance(query, Query):
                    exchanges.failed(upstream, query, error)
                self._spend(pending)
                tally.exchange(to, failure_outcome(error), len(waiters), len(waiters))
        for to, count in requests.items():
            exchanges.count_request(to, count)
        for (to, rcode), count in responses.items():
            exchanges.count_responses(to, rcode, count)
        tally.publish()
        self._fold_declined()

    def _fold_declined(self) -> None:
        """Add what each relay declined since the last batch to the counter (trio). A decline
        always waits on an exchange in flight (the one it would have joined, or the `limit`
        its relay has), whose end is a record its owner appends after the count: the batch
        that drains that record sees the count."""
        seen = self._declined_seen
        live = list(self._relays.values())  # one step: receive threads add their own
        for relay in live:
            seen.setdefault(relay, 0)
        added = 0
        for relay, folded in list(seen.items()):
            closed = relay.closed.is_set()  # read first: once closed, `declined` is final
            declined = relay.declined
            added += declined - folded
            if closed and not any(relay is other for other in live):
                del seen[relay]
            else:
                seen[relay] = declined
        if added:
            metrics.FORWARD_RELAY_DECLINED.inc(added)

    def _spend(self, pending: Pending) -> None:
        """The relay's attempt was this question's first: trio's goes on from there."""
        if len(self._spent) >= FAST_SPENT_KEPT:
            self._spent.clear()  # misses dropped before trio saw them
        self._spent[pending.key] = (pending.upstream, time.perf_counter() - pending.sent)

    def _count_answered(
        self, pending: Pending, made: tuple[CacheEntry, CacheTable] | None, answered: list[Any]
    ) -> None:
        """Count the answered clients in their listener's statistics and the query log, as
        misses of the upstream cache (coalesced ones too), and let the receive thread answer
        the next queries of the first one's shape (`remember`)."""
        forwarder = self._forwarder
        self.cache.misses += len(answered)
        forwarder.coalesced += max(0, len(answered) - 1)
        self.answered += len(answered)
        if not answered:
            return
        ((data, _, _, _), _, qend), first_out, _ = answered[0]
        # One key: the same type and DO for every waiter; the rcode is the upstream's.
        qtype = int.from_bytes(data[qend - 4 : qend - 2])
        do, rcode = bool(pending.key[0] & 1), first_out[3] & 0xF
        zone = forwarder.zone_for(pending.qname)
        # Memo of label ids: zones (config) × types × rcodes × DO, bounded as LABELS is.
        labels = self._labels.get((zone, qtype, rcode, do))
        if labels is None:
            labels = self._labels[(zone, qtype, rcode, do)] = (
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
            forwarder.add_shape(data, pending.key, made[0], first_out, labels[1], qend, edns)


class _RelayTally:
    """One batch's relay metrics (trio only), added to the prometheus-client counters once per
    label set: a lock per increment would cost more than the batch's own work."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}
        self.handed_back: dict[tuple[str, str], int] = {}
        self.coalesced: dict[str, int] = {}

    def exchange(self, to: str, outcome: str, clients: int, handed_back: int) -> None:
        """One exchange with `to` ended in `outcome`; `clients` waited on it (the first sent
        it, the rest joined it in flight), `handed_back` of them went back to trio."""
        key = (to, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if handed_back:
            self.handed_back[key] = self.handed_back.get(key, 0) + handed_back
        if clients > 1:
            self.coalesced[to] = self.coalesced.get(to, 0) + clients - 1

    def publish(self) -> None:
        for (to, outcome), count in self.outcomes.items():
            metrics.FORWARD_RELAY_EXCHANGES.labels(to, outcome).inc(count)
        for (to, outcome), count in self.handed_back.items():
            metrics.FORWARD_RELAY_HANDED_BACK.labels(to, outcome).inc(count)
        for to, count in self.coalesced.items():
            metrics.FORWARD_RELAY_COALESCED.labels(to).inc(count)

"""Forwarded cache misses sent upstream from the UDP receive thread: the pure parts.

Why (docs/architecture.md §7): a forwarded miss used to be handed to trio, parsed, given a task
and an exchange with trio's `wait_readable`; that cost about thirty times what a C server pays
to answer the same name. kdns/dns/miss_relay.py sends the query upstream from the receive
thread, which reads and answers the reply too; this module holds what it decides, without
sockets or threads, so it is table-tested.

Contract:
- `miss_key(data)`: for a plain UDP query (`wire.plain_question`: one uncompressed question,
  QUERY, class IN, at most an EDNS 0 OPT) whose name holds no label with a dot or a backslash,
  (the upstream cache's key, exactly `upstream_cache.cache_key` of the parsed query; the name as
  `Query.qname` spells it); else None (the trio path decides).
- `matches(reply, qid, question)`: RFC 5452 §9.1, the reply answers our question (ID, QR,
  QUERY, one question, the same question, any letter case).
- `IdSource`: unpredictable 16-bit IDs (RFC 5452 §9.2) from the OS's CSPRNG, drawn
  `BATCH` at a time, not one syscall per ID.
- `PendingTable`: the exchanges in flight, by upstream cache key (coalescing: a second client
  asking the same key while one is in flight joins it, `join`) and by socket descriptor (the
  reader finds the exchange a datagram is for), with their deadlines in send order (the same
  timeout for each, so the oldest expires first). Bounded: `full()` says when `limit` are in
  flight, `join` when `waiters_limit` clients wait on one; the caller then leaves the question
  to trio. Not thread-safe by itself: the relay
  calls it under its lock.
"""

from __future__ import annotations

import collections
import os
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any

from kdns.dns import wire

_HEAD = struct.Struct("!3H")
# Clients waiting on one exchange; more asking the same go to trio (which coalesces them too):
# a flood of one name at a silent upstream holds at most this many here per exchange.
MAX_WAITERS = 1024
_REFUSED = (b"\x00\xfb", b"\x00\xfc")  # IXFR, AXFR (kdns/dns/handler.py refuses them)
_OPT = struct.Struct("!BHHIH")


def miss_key(data: bytes) -> tuple[bytes, str, int] | None:
    """(upstream cache key, qname, question end) of a plain query, else None."""
    plain = wire.plain_question(data)
    if plain is None:
        return None
    labels, qend, _edns, do = plain
    if data[qend - 2 : qend] != b"\x00\x01" or data[qend - 4 : qend - 2] in _REFUSED:
        return None  # not class IN, or a zone transfer: refused by the trio path
    joined = b".".join(labels)
    if joined.count(b".") != len(labels) - 1 or b"\\" in joined:
        return None  # `Query.qname` escapes such a label: the trio path spells it
    # upstream_cache.cache_key: DO and CD, the name lower-cased, type and class.
    flags = (1 if do else 0) | (2 if data[3] & wire.CD else 0)
    key = bytes((flags,)) + joined.lower() + data[qend - 4 : qend]
    return key, joined.decode("latin-1").lower(), qend


def upstream_message(qid: int, question: bytes, cd: bool, do: bool) -> bytes:
    """Our query to an upstream: a fresh ID, RD set, the client's CD and question, and our own
    OPT (the client's options, cookies included, are between the client and us)."""
    flags = wire.RD | (wire.CD if cd else 0)
    opt = _OPT.pack(0, wire.OPT, wire.MAX_UDP_PAYLOAD, 0x8000 if do else 0, 0)
    return struct.pack("!6H", qid, flags, 1, 0, 0, 1) + question + opt


def matches(reply: bytes, qid: int, question: bytes) -> bool:
    """Is `reply` the answer to our question? (RFC 5452 §9.1: ID, and the question.)"""
    if len(reply) < 12 + len(question):
        return False
    rid, flags, qdcount = _HEAD.unpack_from(reply)
    if rid != qid or not flags & wire.QR or (flags >> 11) & 0xF or qdcount != 1:
        return False
    return reply[12 : 12 + len(question)].lower() == question.lower()


class IdSource:
    """Unpredictable query IDs, `BATCH` per read of the OS's random source."""

    BATCH = 1024

    def __init__(self) -> None:
        self._ids = array("H")
        self._next = 0

    def take(self) -> int:
        i = self._next
        if i >= len(self._ids):
            self._ids = array("H", os.urandom(2 * self.BATCH))
            i = 0
        self._next = i + 1
        return self._ids[i]


@dataclass(eq=False, slots=True)
class Pending:
    """One exchange in flight: our question and who waits for its answer."""

    key: bytes  # the upstream cache key
    qname: str
    qid: int
    question: bytes  # as we sent it (lower-cased name, type, class)
    upstream: Any  # upstream_config.Upstream
    sock: Any  # the pool socket it left from (socket.socket)
    fd: int
    sent: float  # time.perf_counter() when sent
    deadline: float  # perf_counter time after which trio takes over
    waiters: list[Any] = field(default_factory=list)  # the relay's waiters
    done: bool = False


class PendingTable:
    """Exchanges in flight, by key and by socket, oldest first (see the module's contract)."""

    def __init__(self, limit: int, waiters_limit: int = MAX_WAITERS) -> None:
        self.limit = limit
        self.waiters_limit = waiters_limit
        self.by_key: dict[bytes, Pending] = {}
        self.by_fd: dict[int, Pending] = {}
        self._order: collections.deque[Pending] = collections.deque()

    def __len__(self) -> int:
        return len(self.by_key)

    def full(self) -> bool:
        return len(self.by_key) >= self.limit

    def join(self, key: bytes, waiter: Any) -> bool | None:
        """Wait on the exchange already in flight for `key`, if there is one (True); False
        when there is none; None when `waiters_limit` already wait on it (crowded)."""
        pending = self.by_key.get(key)
        if pending is None:
            return False
        if len(pending.waiters) >= self.waiters_limit:
            return None
        pending.waiters.append(waiter)
        return True

    def add(self, pending: Pending) -> None:
        self.by_key[pending.key] = pending
        self.by_fd[pending.fd] = pending
        self._order.append(pending)

    def finish(self, pending: Pending) -> list[Any]:
        """`pending` is over (answered, failed, expired): its waiters; nobody joins it now."""
        pending.done = True
        if self.by_key.get(pending.key) is pending:
            del self.by_key[pending.key]
        if self.by_fd.get(pending.fd) is pending:
            del self.by_fd[pending.fd]
        return pending.waiters

    def expired(self, now: float) -> list[Pending]:
        """The exchanges whose deadline passed, finished (oldest first)."""
        out = []
        order = self._order
        while order and (order[0].done or order[0].deadline <= now):
            pending = order.popleft()
            if not pending.done:
                self.finish(pending)
                out.append(pending)
        return out

    def next_deadline(self) -> float | None:
        order = self._order
        while order and order[0].done:
            order.popleft()
        return order[0].deadline if order else None

    def drain(self) -> list[Pending]:
        """Every exchange still in flight, finished (the relay's stop)."""
        out = [p for p in self._order if not p.done]
        for pending in out:
            self.finish(pending)
        self._order.clear()
        return out

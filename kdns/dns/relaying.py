"""One UDP receive thread's relays of forwarded misses, and what it waits on while they work.

Why (docs/architecture.md §7): the receive thread that sends a forwarded miss upstream reads
the reply itself (kdns/dns/miss_relay.py), so a miss costs no lock and no hand-over of the GIL
between threads. While any of its misses are in flight it cannot block on its clients' socket
alone: it waits on one epoll for the clients, every relay's pool sockets and a poke. This module
is that part of the thread; the receive loops themselves are kdns/dns/receiver.py's.

Contract:
- A `Relaying(sock, send_failed)` belongs to one receive thread, its owner, serving `sock`:
  every method but `poke` is called from that thread.
- `poller()`: the owner's epoll (the clients' socket and a poke pipe registered; each relay
  registers its pool sockets there), made on first use; None where relaying cannot be (no
  recvmmsg: the clients are read in batches while relaying) or once `close` ran.
- `attach(relay)`: a relay made for the owner (`RelayedMisses.relay_for`, in that thread);
  relays stopped since are closed first (`tend`).
- `busy()`: whether any relay has an exchange in flight.
- `serve(on_clients, stopping)`: while something is in flight, wait on the epoll (the GIL
  released) no longer than the next deadline, the relays' hand-over bound (`idle_every`) or
  LONGEST_WAIT; on the clients' readiness call `on_clients()`, on a reply the relay that owns the
  socket reads it, on a poke close the relays that were stopped; expire what is overdue; send
  what `send_soon` queued during the turn with one sendmmsg. Returns once nothing is in
  flight, the relays' records handed on (`on_idle(True)`), or once `stopping()`.
- `send_soon(data, addr)`: an answer to a relayed miss, sent at the end of the turn with the
  others (a send per answer woke the client per answer); a send that fails is
  `send_failed(errno, where)`'s.
- `tend()`: close the relays that were stopped (their forwarder stopped: a reload). The owner
  calls it on a poke, on `attach`, and when its receive times out.
- `poke()` (any thread): wakes the owner if it waits on the epoll.
- `close()` (the owner, at exit): what is queued is sent, each relay hands its records on,
  hands back what is in flight and closes; then the epoll and the pipe.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kdns.dns import mmsg

if TYPE_CHECKING:
    from kdns.dns.miss_relay import MissRelay

LONGEST_WAIT = 0.5  # seconds on the epoll, as the receive loops' own receive timeout
OUTBOX_SLOTS = 256  # answers to relayed misses sent with one sendmmsg (more: sent as it fills)
NAMES_KEPT = 1024  # raw sockaddrs of the last clients answered that way


class Relaying:
    """One receive thread's relays (see the module's contract)."""

    def __init__(self, sock: socket.socket, send_failed: Callable[[int, object], None]) -> None:
        self.sock = sock
        self.send_failed = send_failed
        self.relays: list[MissRelay] = []
        self._poller: select.epoll | None = None
        self._closed = False
        self._poke_r = self._poke_w = -1
        self._poke_lock = threading.Lock()  # `poke` (any thread) against `close`
        self._outbox: mmsg.Batch | None = None
        self._names: dict[tuple[Any, ...], bytes] = {}

    def poller(self) -> select.epoll | None:
        if self._poller is None:
            if not mmsg.available() or self._closed:
                return None
            poller = select.epoll()
            poller.register(self.sock.fileno(), select.EPOLLIN)
            self._poke_r, self._poke_w = os.pipe()
            os.set_blocking(self._poke_r, False)
            os.set_blocking(self._poke_w, False)
            poller.register(self._poke_r, select.EPOLLIN)
            self._outbox = mmsg.Batch(OUTBOX_SLOTS)
            self._poller = poller
        return self._poller

    def attach(self, relay: MissRelay) -> None:
        self.tend()
        self.relays.append(relay)

    def busy(self) -> bool:
        return any(len(relay) for relay in self.relays)

    def poke(self) -> None:
        with self._poke_lock, contextlib.suppress(OSError):
            if self._poke_w >= 0:
                os.write(self._poke_w, b"x")

    def tend(self) -> None:
        if any(relay.stopping for relay in self.relays):
            for relay in self.relays:
                if relay.stopping:
                    relay.close()
            self.relays = [relay for relay in self.relays if not relay.closed.is_set()]

    def send_soon(self, data: bytes, addr: tuple[Any, ...]) -> None:
        outbox = self._outbox
        assert outbox is not None  # made with the epoll, before any relay
        name = self._names.get(addr)
        if name is None:
            if len(self._names) >= NAMES_KEPT:
                self._names.clear()
            name = self._names[addr] = mmsg.encode_sockaddr(addr)
        if outbox.queued() >= outbox.slots:
            self._flush()
        outbox.reply_to(name, data)

    def serve(self, on_clients: Callable[[], None], stopping: Callable[[], bool]) -> None:
        poller = self._poller
        assert poller is not None  # a relay exists, so `poller()` made it
        fd, poke_r, clock = self.sock.fileno(), self._poke_r, time.perf_counter
        while not stopping():
            relays = self.relays  # `attach` and `tend` replace or extend it
            now = clock()
            wait, busy = LONGEST_WAIT, False
            for relay in relays:
                deadline = relay.next_deadline()
                if deadline is not None and deadline <= now:  # most turns: nothing overdue
                    relay.expire(now)
                    deadline = relay.next_deadline()
                if deadline is not None:
                    busy = True
                    wait = min(wait, deadline - now)
                if relay.on_idle(False):  # records to hand on: wait no longer than their bound
                    wait = min(wait, relay.idle_every)
            if not busy:
                for relay in relays:
                    relay.on_idle(True)
                return
            for ready, _ in poller.poll(max(wait, 0.0)):
                if ready == fd:
                    on_clients()
                elif ready == poke_r:
                    with contextlib.suppress(OSError):
                        os.read(poke_r, 512)
                    self.tend()
                else:
                    for relay in relays:
                        if relay.read(ready):
                            break
            self._flush()

    def _flush(self) -> None:
        outbox = self._outbox
        if outbox is not None and outbox.queued():
            for err in outbox.send(self.sock.fileno()):
                self.send_failed(err, "a client")

    def close(self) -> None:
        self._closed = True
        self._flush()
        for relay in self.relays:
            relay.on_idle(True)  # what they answered is stored and counted
            relay.close()
        self.relays = []
        if self._poller is not None:
            self._poller.close()
            with self._poke_lock:
                os.close(self._poke_r)
                os.close(self._poke_w)
                self._poke_r = self._poke_w = -1

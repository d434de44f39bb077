"""Which TCP connections a DNS listener keeps when it is full (RFC 7766 §6.2.2).

RFC 7766 §6.2.2: a server under pressure (too many connections, too few descriptors) should close
idle connections rather than refuse new ones, and may limit the connections one client holds.
So a listener that is full makes room instead of resetting the newcomer: one client holding
thousands of idle connections cannot lock out the rest.

Contract:
- `TcpAdmission(limit, per_client)` tracks the open connections (any hashable), each with its
  client address, and in what order they became idle (waiting for a query with no answer in
  flight; a connection just accepted is idle).
- `admit(conn, client)` returns the connections to close, each with why, and whether `conn` is
  admitted:
  - a client already holding `per_client` connections makes room among its own: its connection
    idle the longest is closed (reason `client_limit`), else the newcomer is refused;
  - a listener holding `limit` connections closes the connection idle the longest, whoever's
    (`server_limit`), else the newcomer is refused (every connection has work in flight).
- `make_room()` picks the connection idle the longest to close when the process runs out of
  file descriptors (`fd_limit`), or None.
- A connection returned to close no longer counts: the caller closes it; `leave` on it, or on a
  connection never admitted, does nothing.
- Pure: no I/O, no clock; the order of calls is the order of time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Conn = TypeVar("Conn", bound=Hashable)

SERVER_LIMIT = "server_limit"
CLIENT_LIMIT = "client_limit"
FD_LIMIT = "fd_limit"


@dataclass(slots=True)
class Admitted(Generic[Conn]):
    ok: bool
    close: list[tuple[Conn, str]] = field(default_factory=list)  # (connection, reason)


class TcpAdmission(Generic[Conn]):
    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self._client: dict[Conn, str] = {}
        self._held: Counter[str] = Counter()
        # Insertion order is the order connections became idle: the first is idle the longest.
        self._idle: dict[Conn, None] = {}
        self._idle_of: dict[str, dict[Conn, None]] = {}

    def __len__(self) -> int:
        return len(self._client)

    def held(self, client: str) -> int:
        return self._held[client]

    def admit(self, conn: Conn, client: str) -> Admitted[Conn]:
        out: Admitted[Conn] = Admitted(ok=True)
        if self._held[client] >= self.per_client:
            own = next(iter(self._idle_of.get(client, ())), None)
            if own is None:
                return Admitted(ok=False)
            self.leave(own)
            out.close.append((own, CLIENT_LIMIT))
        if len(self._client) >= self.limit:
            oldest = self.make_room()
            if oldest is None:
                return Admitted(ok=False, close=out.close)
            out.close.append((oldest, SERVER_LIMIT))
        self._client[conn] = client
        self._held[client] += 1
        self.idle(conn)
        return out

    def make_room(self) -> Conn | None:
        """The connection idle the longest, no longer counted (its caller closes it)."""
        oldest = next(iter(self._idle), None)
        if oldest is not None:
            self.leave(oldest)
        return oldest

    def idle(self, conn: Conn) -> None:
        """`conn` waits for a query with nothing in flight, from now on (the newest idle)."""
        client = self._client.get(conn)
        if client is None:
            return
        self.busy(conn)
        self._idle[conn] = None
        self._idle_of.setdefault(client, {})[conn] = None

    def busy(self, conn: Conn) -> None:
        """`conn` is reading a query or answering one: not to be closed for room."""
        if conn not in self._idle:
            return
        del self._idle[conn]
        client = self._client[conn]
        own = self._idle_of[client]
        del own[conn]
        if not own:
            del self._idle_of[client]

    def leave(self, conn: Conn) -> None:
        client = self._client.pop(conn, None)
        if client is None:
            return
        self._idle.pop(conn, None)
        own = self._idle_of.get(client)
        if own is not None:
            own.pop(conn, None)
            if not own:
                del self._idle_of[client]
        self._held[client] -= 1
        if not self._held[client]:
            del self._held[client]

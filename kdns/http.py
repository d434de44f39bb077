"""/health, /ready and /metrics over HTTP, on the ports CoreDNS's manifests use.

Contract:
- `/health` answers 200 while the process runs (the liveness probe); `/ready` answers 200 once
  every watched kind has synced and 503 naming the kinds that have not (the readiness probe),
  and 503 again from the moment shutdown starts (lameduck: CoreDNS's ready plugin does the same);
  `/metrics` is the Prometheus text format of the default registry (with every metric that has
  a CoreDNS counterpart also under its coredns_ name when asked: `metrics_route(True)`).
- Each listener serves its own path (CoreDNS: health :8080, ready :8181, prometheus :9153); any
  other path is 404, any method but GET/HEAD 405.
- A slow or silent client is cut off after `timeout` seconds; a request larger than 8 KiB is
  refused. Nothing a client sends can stop the listener.
- With `sharing` (a fixed port) the port is bound with SO_REUSEPORT, so the next process of
  the same user (the kernel's rule) binds it while this one still answers: a surge rollout of
  the node DaemonSet. `successor` tells whether a process held the port at `bind`; such an
  endpoint is bound but not listening (not in the kernel's group: every connection still goes
  to the old process) until `run`, which the owner starts once it would answer as well as the
  old one. From `listen` on, new connections are steered to the newest socket. A port held by
  another user or by a socket without SO_REUSEPORT is still an OSError at `bind`.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kdns.metrics import WithCorednsNames

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
BACKLOG = 128

Route = Callable[[], tuple[int, str, bytes]]


def health() -> tuple[int, str, bytes]:
    return 200, "text/plain; charset=utf-8", b"OK\n"


def readiness(
    unsynced: Callable[[], list[str]], stopping: Callable[[], bool] = lambda: False
) -> Route:
    def ready() -> tuple[int, str, bytes]:
        if stopping():
            return 503, "text/plain; charset=utf-8", b"shutting down\n"
        missing = unsynced()
        if missing:
            return 503, "text/plain; charset=utf-8", f"not synced: {', '.join(missing)}\n".encode()
        return 200, "text/plain; charset=utf-8", b"OK\n"

    return ready


def prometheus() -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest()


def prometheus_coredns_names() -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest(WithCorednsNames())  # type: ignore[arg-type]


def metrics_route(coredns_names: bool = False) -> Route:
    return prometheus_coredns_names if coredns_names else prometheus


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class PortSharing:
    """How a listener shares its port with the next process: `share` before bind
    (SO_REUSEPORT), `steer` after listen (new connections to the newest socket of the group).
    The composition root passes kdns/dns/reuseport.py's two functions (http imports no dns)."""

    share: Callable[[socket.socket], None]
    steer: Callable[[socket.socket], None]


class HttpEndpoint:
    """One listener serving a fixed set of paths."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[str, Route],
        timeout: float = 5.0,
        sharing: PortSharing | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self.timeout = timeout
        self.sharing = sharing if port else None  # an ephemeral port is never shared
        self.successor = False  # another process held the port at bind (module docstring)
        self._listeners: list[trio.SocketListener] = []
        self._bound: list[trio.socket.SocketType] = []  # shared, bound, not listening yet

    async def bind(self) -> None:
        """Bind now (raises OSError), so a taken port fails before anything runs."""
        if self._listeners or self._bound:
            return
        try:
            if self.sharing is None:
                self._listeners = await trio.open_tcp_listeners(self.port, host=self.host)
                self.port = self._listeners[0].socket.getsockname()[1]
            else:
                addresses = await trio.socket.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                self.successor = any(_held(a[4], a[0]) for a in addresses)
                for family, kind, proto, _, address in addresses:
                    self._bound.append(await self._bind_shared(family, kind, proto, address))
        except OSError as e:
            await self.aclose()
            raise OSError(
                e.errno, f"cannot listen on {self.host}:{self.port}: {e.strerror}"
            ) from None

    async def _bind_shared(
        self, family: int, kind: int, proto: int, address: tuple[str, int]
    ) -> trio.socket.SocketType:
        assert self.sharing is not None
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self.sharing.share(sock)  # type: ignore[arg-type]
            await sock.bind(address)
        except OSError:
            sock.close()
            raise
        return sock

    def listen(self) -> None:
        """Start listening on sockets bound shared; from now on the kernel steers every new
        connection to this process's socket (the newest of the group)."""
        for sock in self._bound:
            sock.listen(BACKLOG)
            if self.sharing is not None:
                # After listen: a socket joins its port's group when it listens, and a
                # program attached before that would make it a group of its own.
                self.sharing.steer(sock)  # type: ignore[arg-type]
            self._listeners.append(trio.SocketListener(sock))
        self._bound = []

    async def aclose(self) -> None:
        """Close listeners bound but never run (a reload that gave up)."""
        for listener in self._listeners:
            await listener.aclose()
        for sock in self._bound:
            sock.close()
        self._listeners = []
        self._bound = []

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await self.bind()
        self.listen()
        log.info("serving %s on %s port %d", ", ".join(self.routes), self.host, self.port)
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, self._listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(self.timeout):
                try:
                    request = await self._read_head(stream)
                    status, content_type, body, head_only = self._respond(request)
                    header = (
                        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                        f"Content-Type: {content_type}\r\n"
                        f"Content-Length: {len(body)}\r\n"
                        "Connection: close\r\n\r\n"
                    ).encode()
                    await stream.send_all(header + (b"" if head_only else body))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async def _read_head(self, stream: trio.SocketStream) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            if len(data) > MAX_REQUEST:
                return None
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        return data

    def _respond(self, request: bytes | None) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        if not request:
            return 400, text, b"bad request\n", False
        parts = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(parts) < 2:
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1].decode("latin-1")
        path = target.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            return 404, text, b"not found\n", False
        if method not in (b"GET", b"HEAD"):
            return 405, text, b"method not allowed\n", False
        status, content_type, body = route()
        return status, content_type, body, method == b"HEAD"


def _held(address: tuple[str, int], family: int) -> bool:
    """A socket already listens on `address` (another process, of any user): a bind without
    SO_REUSEPORT is refused. Numeric addresses only: the bind never blocks."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False

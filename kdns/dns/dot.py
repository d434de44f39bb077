"""DNS over TLS to an upstream (RFC 7858), with connection reuse: CoreDNS's `forward . tls://IP`.

Contract:
- `client_context(ca, cert, key)` is the TLS client context CoreDNS's `tls [CERT KEY CA]` makes:
  the server's certificate is verified against `ca` (a PEM file), else the system's CAs; `cert`
  and `key` present a client certificate. TLS 1.2 at least (RFC 8310 §9).
- `TlsConnections.exchange(upstream, message)` sends one DNS message, framed with its two-byte
  length as over TCP (RFC 7858 §3.3), and returns the first message that comes back. The
  certificate must name `servername` (CoreDNS's `tls_servername`), else the upstream's address.
- Connections are kept open and reused, one exchange at a time each (RFC 7858 §3.4: reuse
  connections rather than paying a handshake per query): an idle one is taken when there is
  one younger than `expire` seconds (CoreDNS's `expire`, 10 s), else a new one is opened, so
  concurrent questions open more. A reused connection the upstream has closed meanwhile is
  dropped and the message is sent once more on a new one. Any failure closes that connection.
- Errors: `OSError`, `trio.BrokenResourceError`, `ssl.SSLError` (a certificate that does not
  verify) and `ConnectionClosed` reach the caller, which counts the upstream as failed.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

IDLE_PER_UPSTREAM = 8  # idle connections kept per upstream; more are closed when they finish


class ConnectionClosed(Exception):
    """The upstream closed the connection before its answer."""


class Address(Protocol):
    host: str
    port: int


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


@dataclass
class _Idle:
    stream: trio.SSLStream[trio.SocketStream]
    since: float


@dataclass
class TlsConnections:
    context: ssl.SSLContext
    servername: str = ""  # the name the certificate must hold; "" = the upstream's address
    expire: float = 10.0
    opened: int = 0  # connections opened (handshakes), for tests and metrics
    _idle: dict[tuple[str, int], list[_Idle]] = field(default_factory=dict)

    async def exchange(self, upstream: Address, message: bytes) -> bytes:
        stream = self._take(upstream)
        if stream is not None:
            try:
                return await self._roundtrip(upstream, stream, message)
            except (ConnectionClosed, trio.BrokenResourceError, OSError):
                pass  # the upstream closed it while idle: once more, on a fresh connection
        stream = await self._open(upstream)
        return await self._roundtrip(upstream, stream, message)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await trio.aclose_forcefully(conn.stream)

    def _take(self, upstream: Address) -> trio.SSLStream[trio.SocketStream] | None:
        conns = self._idle.get((upstream.host, upstream.port), [])
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if now - conn.since < self.expire:
                return conn.stream
            # Expired: closed without waiting for the peer (nothing is owed to it).
            conn.stream.transport_stream.socket.close()
        return None

    async def _open(self, upstream: Address) -> trio.SSLStream[trio.SocketStream]:
        tcp = await trio.open_tcp_stream(upstream.host, upstream.port)
        stream = trio.SSLStream(tcp, self.context, server_hostname=self.servername or upstream.host)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self.opened += 1
        return stream

    async def _roundtrip(
        self, upstream: Address, stream: trio.SSLStream[trio.SocketStream], message: bytes
    ) -> bytes:
        try:
            await stream.send_all(len(message).to_bytes(2) + message)
            size = int.from_bytes(await _read_exactly(stream, 2))
            reply = await _read_exactly(stream, size)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        conns = self._idle.setdefault((upstream.host, upstream.port), [])
        if len(conns) < IDLE_PER_UPSTREAM:
            conns.append(_Idle(stream, time.monotonic()))
        else:
            await trio.aclose_forcefully(stream)
        return reply


async def _read_exactly(stream: trio.SSLStream[trio.SocketStream], size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise ConnectionClosed("the upstream closed the TLS connection")
        data += chunk
    return bytes(data)

"""A DNS-over-TLS upstream for tests (RFC 7858): a trio TLS server on loopback, with a trustme
certificate, that relays each framed question over UDP to a real resolver (dnsmasq) and frames
its answer back — what a TLS-terminating front (stunnel, a DoT proxy) does.

It counts connections and questions so tests can see connection reuse, and can close each
connection after `answers_per_connection` answers to test what kdns does with a connection
the upstream has closed while it sat idle.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
import trustme

from kdns.dns.upstream_config import Upstream

HOST = "127.0.0.1"
NAME = "dns.test"  # the name the upstream's certificate holds


@dataclass
class TlsUpstream:
    upstream: Upstream  # tls://127.0.0.1:PORT
    ca_file: str  # the trustme CA that signed its certificate, as a PEM file
    connections: int = 0
    questions: int = 0
    open_now: int = 0
    peak_open: int = 0
    handshakes_failed: int = 0


async def _read(stream: trio.SSLStream[trio.SocketStream], size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


async def _relay(message: bytes, target: Upstream) -> bytes:
    with trio.fail_after(5), trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect((target.host, target.port))
        await sock.send(message)
        return await sock.recv(65535)


@asynccontextmanager
async def tls_upstream(
    target: Upstream, folder: Path, *, answers_per_connection: int = 0
) -> AsyncIterator[TlsUpstream]:
    ca = trustme.CA()
    cert = ca.issue_cert(NAME)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            state.handshakes_failed += 1
            return
        state.connections += 1
        state.open_now += 1
        state.peak_open = max(state.peak_open, state.open_now)
        answered = 0
        try:
            while head := await _read(stream, 2):
                message = await _read(stream, int.from_bytes(head))
                if message is None:
                    return
                state.questions += 1
                reply = await _relay(message, target)
                await stream.send_all(len(reply).to_bytes(2) + reply)
                answered += 1
                if answers_per_connection and answered >= answers_per_connection:
                    return
        except trio.BrokenResourceError:
            return
        finally:
            state.open_now -= 1
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_ssl_over_tcp, serve, 0, context, host=HOST, https_compatible=True)
        )
        port = listeners[0].transport_listener.socket.getsockname()[1]
        state = TlsUpstream(Upstream(HOST, port, tls=True), str(ca_file))
        yield state
        nursery.cancel_scope.cancel()

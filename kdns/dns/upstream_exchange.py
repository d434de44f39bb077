"""Exchanges with upstreams: one question to one upstream, over UDP, TCP or TLS, counted.

What CoreDNS's `forward` does per attempt (kdns/dns/forward.py decides which upstreams, in
which order, within which budget):

- `ask(upstream, query)`: our query (`upstream_query`: a fresh random ID from `secrets`, RD,
  the client's CD and DO, our OPT) to one upstream within `timeout`. Plain UDP goes from a
  pooled socket on a random ephemeral port, each used for a few questions at most
  (kdns/dns/udp_pool.py, RFC 5452 §9.2); a reply whose ID, QR bit or question does not match is
  ignored and the wait goes on (RFC 5452 §9.1), counted in `mismatched`. TC → the same question
  again over TCP (RFC 7766 §5); `force_tcp` or `tcp` asks over TCP from the start; `tls://`
  upstreams go through kdns/dns/dot.py (RFC 7858). A failure raises `ExchangeError`, OSError
  or `trio.TooSlowError`.
- Counting: every attempt in the per-upstream metrics (`kdns_forward_requests_total`,
  `…_responses_total`, `…_request_duration_seconds`, CoreDNS's forward/proxy metrics) unless a
  health probe; `failed` counts a failed one (`kdns_forward_errors_total` by reason) and logs
  it at ERROR as CoreDNS's errors plugin does, with a `consolidate` key naming the upstream and
  the reason, so an upstream timing out a thousand times a second costs one line per interval
  (kdns/logs.py).
- Health: `health` per upstream (`fails` in a row, `exchanges`, `errors`, `mismatched`); one
  that failed `max_fails` times in a row is unhealthy (`healthy`) until `probe_forever`'s
  `. IN NS` probe, every `health_check` seconds, sees it answer again.

Owned by the trio thread; the receive threads (relaying misses too) only read the health
counters (ints). Time is trio's clock.
"""

from __future__ import annotations

import logging
import secrets
import struct
from dataclasses import dataclass
from typing import Any

import trio
from dnslib import QTYPE

from kdns import metrics
from kdns.dns import wire
from kdns.dns.dot import ConnectionClosed, TlsConnections, client_context
from kdns.dns.udp_pool import UdpPool
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.dns.upstream_misses import matches, upstream_message
from kdns.dns.wire import Query

# The forwarder's logger: the name operators filter its errors by (docs/observability.md).
log = logging.getLogger("kdns.dns.forward")


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


class UpstreamExchanges:
    """The exchanges of one forwarder with its upstreams (see the module's contract)."""

    def __init__(self, config: ForwardConfig, upstreams: list[Upstream]) -> None:
        self.config = config
        self.health = {upstream: UpstreamHealth() for upstream in upstreams}
        self.names = {u: str(u) for u in self.health}  # the `to` label of each upstream
        self.pool = UdpPool()  # UDP sockets for the exchanges, reused a few times each
        self.tls: TlsConnections | None = None
        if any(u.tls for u in upstreams):
            context = client_context(config.tls_ca, config.tls_cert, config.tls_key)
            self.tls = TlsConnections(context, config.tls_servername, config.expire)
        # prometheus-client children by label values: `.labels()` per exchange costs more than
        # the dict lookup (upstreams × rcodes: bounded).
        self._series: dict[tuple[str, str | int], tuple[Any, Any]] = {}  # by (to, "" or rcode)

    def healthy(self, upstream: Upstream) -> bool:
        """Up unless it failed `max_fails` exchanges in a row (CoreDNS: 0 = never down)."""
        max_fails = self.config.max_fails
        return max_fails == 0 or self.health[upstream].fails < max_fails

    def failed(self, upstream: Upstream, query: Query, error: BaseException) -> None:
        """Count and log one failed attempt at `query` (the relay's too, kdns/dns/relayed.py)."""
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

    async def ask(
        self, upstream: Upstream, query: Query, probe: bool = False, tcp: bool = False
    ) -> bytes:
        """One exchange with `upstream`; counted in the forward metrics unless a health `probe`.
        `tcp`: over TCP from the start (a UDP answer to the same question was truncated)."""
        qid = secrets.randbelow(65536)
        message = upstream_query(query, qid)
        to = str(upstream)
        self.health[upstream].exchanges += 1
        if not probe:
            self.count_request(to)
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
            self.count_response(to, reply[3] & 0xF, trio.current_time() - start)
        return reply

    def count_request(self, to: str, count: int = 1) -> None:
        """`count` exchanges sent to the upstream labelled `to` (`names`)."""
        series = self._series.get((to, ""))
        if series is None:
            series = self._series[(to, "")] = (metrics.FORWARD_REQUESTS.labels(to), None)
        series[0].inc(count)

    def count_response(self, to: str, rcode: int, seconds: float, count: bool = True) -> None:
        """One answer from the upstream labelled `to`, its rcode and how long it took; with
        `count` False only its duration (the caller adds the answers up, `count_responses`)."""
        series = self._response_series(to, rcode)
        if count:
            series[0].inc()
        series[1].observe(seconds)

    def count_responses(self, to: str, rcode: int, count: int) -> None:
        """`count` answers with `rcode` from the upstream labelled `to`, timed already
        (`count_response(..., count=False)`): one increment for a batch of them."""
        self._response_series(to, rcode)[0].inc(count)

    def _response_series(self, to: str, rcode: int) -> tuple[Any, Any]:
        series = self._series.get((to, rcode))
        if series is None:
            name = metrics.rcode_name(rcode)
            series = self._series[(to, rcode)] = (
                metrics.FORWARD_RESPONSES.labels(to, name),
                metrics.FORWARD_DURATION.labels(to, name),
            )
        return series

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

    async def probe_forever(self) -> None:
        """Probe unhealthy upstreams with `. IN NS` every `health_check` until they answer
        (CoreDNS's health check); runs until cancelled."""
        probe = Query(0, wire.RD, (), 2, 1, b"\x00\x00\x02\x00\x01", False)
        while True:
            await trio.sleep(self.config.health_check)
            for upstream, health in self.health.items():
                if self.healthy(upstream):
                    continue
                try:
                    await self.ask(upstream, probe, probe=True)
                except (ExchangeError, OSError, trio.TooSlowError):
                    metrics.FORWARD_HEALTHCHECK_FAILURES.labels(str(upstream)).inc()
                    continue
                log.info("upstream %s answers again", upstream)
                health.fails = 0

    async def aclose(self) -> None:
        """Close the pooled sockets and the idle TLS connections (a reload stops the forwarder:
        its connections go with it)."""
        self.pool.close()
        if self.tls is not None:
            await self.tls.aclose()

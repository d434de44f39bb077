"""DNS over TLS to the upstreams (RFC 7858; CoreDNS's `forward . tls://IP { tls_servername }`):
kdns asks a local TLS-terminating upstream (tests/dns/tls_upstream.py, a trustme certificate)
that relays to a real dnsmasq, and gets dnsmasq's answers, over connections it reuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
import trio

from kdns.corefile.load import load_corefile
from kdns.dns.upstream_config import ForwardConfig, parse_upstreams
from tests.dns import upstreams
from tests.dns.test_forward import ask, kdns, kdns_app, texts
from tests.dns.tls_upstream import NAME, tls_upstream
from tests.dns.upstreams import WWW_V4

WAIT = 10.0


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[upstreams.Dnsmasq]:
    with upstreams.dnsmasq(tmp_path / "dnsmasq") as server:
        yield server


def test_tls_upstreams_parse_with_port_853_by_default() -> None:
    parsed = parse_upstreams(["tls://10.0.0.1", "tls://[fd00::1]:8853", "10.0.0.2"], "upstreams")
    assert [str(u) for u in parsed] == ["tls://10.0.0.1:853", "tls://[fd00::1]:8853", "10.0.0.2:53"]


async def test_answers_come_over_one_reused_tls_connection(
    dnsmasq: upstreams.Dnsmasq, tmp_path: Path
) -> None:
    with trio.fail_after(WAIT):
        async with tls_upstream(dnsmasq.upstream, tmp_path) as relay:
            config = ForwardConfig(
                upstreams=(relay.upstream,), tls_servername=NAME, tls_ca=relay.ca_file
            )
            async with kdns(config) as stack:
                www = await ask(stack.port, "www.test")
                others = [await ask(stack.port, f"n{i}.test") for i in range(5)]
                assert stack.forwarder.tls is not None
                opened = stack.forwarder.tls.opened
    assert texts(www) == {WWW_V4}
    assert [m.rcode() for m in others] == [dns.rcode.NXDOMAIN] * 5
    assert dnsmasq.count("www.test") == 1
    # Six questions, one handshake (RFC 7858 §3.4).
    assert (relay.connections, relay.questions, opened) == (1, 6, 1)


@pytest.mark.parametrize(
    "servername, own_ca",
    [("other.test", True), (NAME, False)],
    ids=["a certificate for another name", "a CA the system does not trust"],
)
async def test_a_certificate_that_does_not_verify_fails_the_upstream(
    dnsmasq: upstreams.Dnsmasq, tmp_path: Path, servername: str, own_ca: bool
) -> None:
    with trio.fail_after(WAIT):
        async with tls_upstream(dnsmasq.upstream, tmp_path) as relay:
            config = ForwardConfig(
                upstreams=(relay.upstream,),
                tls_servername=servername,
                tls_ca=relay.ca_file if own_ca else "",
            )
            async with kdns(config) as stack:
                reply = await ask(stack.port, "www.test")
                errors = stack.forwarder.health[relay.upstream].errors
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert errors >= 1 and relay.handshakes_failed >= 1
    assert relay.questions == 0 and dnsmasq.count("www.test") == 0


async def test_a_connection_the_upstream_closed_is_replaced(
    dnsmasq: upstreams.Dnsmasq, tmp_path: Path
) -> None:
    with trio.fail_after(WAIT):
        async with tls_upstream(dnsmasq.upstream, tmp_path, answers_per_connection=1) as relay:
            config = ForwardConfig(
                upstreams=(relay.upstream,), tls_servername=NAME, tls_ca=relay.ca_file
            )
            async with kdns(config) as stack:
                replies = [await ask(stack.port, name) for name in ("www.test", "a.test", "b.test")]
                errors = stack.forwarder.health[relay.upstream].errors
    assert texts(replies[0]) == {WWW_V4}
    assert [m.rcode() for m in replies[1:]] == [dns.rcode.NXDOMAIN] * 2
    assert (relay.connections, relay.questions, errors) == (3, 3, 0)


async def test_concurrent_questions_open_connections_then_reuse_them(
    dnsmasq: upstreams.Dnsmasq, tmp_path: Path
) -> None:
    with trio.fail_after(WAIT):
        async with tls_upstream(dnsmasq.upstream, tmp_path) as relay:
            config = ForwardConfig(
                upstreams=(relay.upstream,), tls_servername=NAME, tls_ca=relay.ca_file
            )
            async with kdns(config) as stack:
                results: list[int] = []

                async def one(i: int) -> None:
                    results.append((await ask(stack.port, f"c{i}.test")).rcode())

                async with trio.open_nursery() as nursery:
                    for i in range(10):
                        nursery.start_soon(one, i)
                burst = relay.connections
                later = [await ask(stack.port, f"d{i}.test") for i in range(5)]
    assert results == [dns.rcode.NXDOMAIN] * 10 and 1 <= burst <= 10
    assert [m.rcode() for m in later] == [dns.rcode.NXDOMAIN] * 5
    assert relay.connections == burst  # the later questions found idle connections
    assert relay.questions == 15


async def test_a_corefile_forwarding_over_tls(dnsmasq: upstreams.Dnsmasq, tmp_path: Path) -> None:
    """`kdns serve --corefile` with CoreDNS's own spelling of a DoT upstream."""
    with trio.fail_after(WAIT):
        async with tls_upstream(dnsmasq.upstream, tmp_path) as relay:
            corefile = tmp_path / "Corefile"
            corefile.write_text(
                ".:53 {\n    kubernetes cluster.local\n"
                f"    forward . tls://{relay.upstream.host}:{relay.upstream.port} {{\n"
                f"       tls_servername {NAME}\n       tls {relay.ca_file}\n    }}\n}}\n"
            )
            config, translation = load_corefile(str(corefile), {})
            assert translation.refused == ()
            async with kdns_app(config) as running:
                www = await ask(running.port, "www.test")
                again = await ask(running.port, "n1.test")
    assert texts(www) == {WWW_V4} and again.rcode() == dns.rcode.NXDOMAIN
    assert (relay.connections, relay.questions) == (1, 2)


async def test_stopping_the_forwarder_closes_its_idle_connections(
    dnsmasq: upstreams.Dnsmasq, tmp_path: Path
) -> None:
    """A reload stops the old forwarder's task: its idle TLS connections close with it."""
    with trio.fail_after(WAIT):
        async with tls_upstream(dnsmasq.upstream, tmp_path) as relay:
            config = ForwardConfig(
                upstreams=(relay.upstream,), tls_servername=NAME, tls_ca=relay.ca_file
            )
            async with kdns(config, health_checks=True) as stack:
                assert texts(await ask(stack.port, "www.test")) == {WWW_V4}
                assert relay.open_now == 1  # kept for the next question
            while relay.open_now:  # the relay sees the close (bounded by fail_after)
                await trio.sleep(0.01)
    assert relay.connections == 1

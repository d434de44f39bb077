"""CNAMEs to names outside the cluster zones, resolved through the upstreams (issue 10).

An ExternalName Service whose target is outside the zones is answered as CoreDNS answers it:
the CNAME followed by the target's records for the asked type, found through the forwarder (its
cache and stub domains included); the rcode is the target's (NXDOMAIN keeps the CNAME, RFC 6604
§3). With forwarding off, the CNAME alone. Autopath answers chase the same way, and carry AA
when kdns answered them from its own zone (as CoreDNS's do).

kdns runs in-process over real loopback sockets in front of a real dnsmasq serving `test.` (and
`www.acme.local` for the stub domain); every wait is bounded by `WAIT`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trio

from kdns import metrics
from kdns.config import Config
from kdns.dns.forward import Forwarder
from kdns.dns.handler import Deferred, Handler
from kdns.dns.resolver import Resolver
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.model import service_from_dict
from kdns.store import SERVICES, Store
from tests.builders import api_service
from tests.dns import upstreams
from tests.dns.cluster import load
from tests.dns.test_forward import ask, kdns, texts
from tests.dns.upstreams import ACME_V4, WWW_V4, WWW_V6

Z = "cluster.local"
WAIT = 10.0

EXTERNAL = [
    api_service("default", "extout", type="ExternalName", externalName="www.test"),
    api_service("default", "gone", type="ExternalName", externalName="nope.test"),
    api_service("default", "acme", type="ExternalName", externalName="www.acme.local"),
    # A chain: an in-zone ExternalName to one that leaves the zones.
    api_service("prod", "hop", type="ExternalName", externalName=f"extout.default.svc.{Z}"),
]


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[upstreams.Dnsmasq]:
    with upstreams.dnsmasq(tmp_path / "dnsmasq") as server:
        yield server


def with_externals(store: Store) -> None:
    services = {s.key: s for s in store.services.values()}
    for raw in EXTERNAL:
        service = service_from_dict(raw)
        services[service.key] = service
    store.replace(SERVICES, services)


def cname(name: str, target: str) -> str:
    return f"{name}. 5 IN CNAME {target}."


def answer_lines(message: dns.message.Message) -> list[str]:
    return [
        f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
        for rrset in message.answer
        for rdata in rrset
    ]


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "lines"),
    [
        pytest.param(
            f"extout.default.svc.{Z}",
            "A",
            dns.rcode.NOERROR,
            [f"extout.default.svc.{Z}. CNAME www.test.", f"www.test. A {WWW_V4}"],
            id="A: the CNAME, then the target's A",
        ),
        pytest.param(
            f"extout.default.svc.{Z}",
            "AAAA",
            dns.rcode.NOERROR,
            [f"extout.default.svc.{Z}. CNAME www.test.", f"www.test. AAAA {WWW_V6}"],
            id="AAAA",
        ),
        pytest.param(
            f"gone.default.svc.{Z}",
            "A",
            dns.rcode.NXDOMAIN,
            [f"gone.default.svc.{Z}. CNAME nope.test."],
            id="target NXDOMAIN: the CNAME kept, NXDOMAIN (RFC 6604)",
        ),
        pytest.param(
            f"acme.default.svc.{Z}",
            "A",
            dns.rcode.NOERROR,
            [f"acme.default.svc.{Z}. CNAME www.acme.local.", f"www.acme.local. A {ACME_V4}"],
            id="through the stub domain",
        ),
        pytest.param(
            f"hop.prod.svc.{Z}",
            "A",
            dns.rcode.NOERROR,
            [
                f"hop.prod.svc.{Z}. CNAME extout.default.svc.{Z}.",
                f"extout.default.svc.{Z}. CNAME www.test.",
                f"www.test. A {WWW_V4}",
            ],
            id="an in-zone link, then out",
        ),
    ],
)
async def test_externalname_out_of_zone_is_resolved_upstream(
    dnsmasq: upstreams.Dnsmasq, name: str, rdtype: str, rcode: int, lines: list[str]
) -> None:
    config = ForwardConfig(
        upstreams=(dnsmasq.upstream,),
        stub_domains=(("acme.local", (dnsmasq.upstream,)),),
    )
    async with kdns(config) as stack:
        with_externals(stack.store)
        with trio.fail_after(WAIT):
            first = await ask(stack.port, name, rdtype)
            again = await ask(stack.port, name, rdtype, tcp=True)  # the upstream cache's copy
    for reply in (first, again):
        assert reply.rcode() == rcode
        assert answer_lines(reply) == lines
        # AA: the name asked is ours; RA: kdns recursed for the client.
        assert reply.flags & dns.flags.AA
        assert reply.flags & dns.flags.RA
    if rcode == dns.rcode.NXDOMAIN:
        # The target's SOA, so the client caches the denial (RFC 2308 §3).
        assert [rrset.rdtype for rrset in first.authority] == [dns.rdatatype.SOA]


async def test_without_an_upstream_the_cname_alone() -> None:
    store = Store()
    handler = Handler(Resolver(store, Config()))
    load(store, [*EXTERNAL, api_service("default", "x", clusterIP="10.96.9.9")])
    query = dns.message.make_query(f"extout.default.svc.{Z}", "A")
    handled = handler.handle(query.to_wire(), True)
    assert isinstance(handled, tuple)
    reply = dns.message.from_wire(handled[0])
    assert reply.rcode() == dns.rcode.NOERROR
    assert answer_lines(reply) == [f"extout.default.svc.{Z}. CNAME www.test."]


async def test_an_upstream_failure_is_servfail() -> None:
    # Nothing listens on the upstream's port: the target cannot be resolved.
    config = ForwardConfig(upstreams=(Upstream("127.0.0.1", upstreams.free_port()),), timeout=0.5)
    async with kdns(config) as stack:
        with_externals(stack.store)
        with trio.fail_after(WAIT):
            reply = await ask(stack.port, f"extout.default.svc.{Z}")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.answer == []


async def test_a_cname_loop_is_servfail_logged_and_counted(
    dnsmasq: upstreams.Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    loop = [
        api_service("default", "ping", type="ExternalName", externalName=f"pong.default.svc.{Z}"),
        api_service("default", "pong", type="ExternalName", externalName=f"ping.default.svc.{Z}"),
    ]
    before = loop_failures()
    async with kdns(ForwardConfig(upstreams=(dnsmasq.upstream,))) as stack:
        load(stack.store, loop)
        with trio.fail_after(WAIT):
            replies = [await ask(stack.port, f"ping.default.svc.{Z}") for _ in range(2)]
    assert [r.rcode() for r in replies] == [dns.rcode.SERVFAIL] * 2
    assert loop_failures() - before == 2
    assert "the CNAME chain loops: SERVFAIL" in caplog.text


def loop_failures() -> float:
    sample = metrics.REGISTRY.get_sample_value(
        "kdns_dns_cname_chase_failures_total", {"reason": "loop"}
    )
    return sample or 0.0


# --- autopath --------------------------------------------------------------------------------

POD_IP = "10.244.1.5"  # pod p1 in namespace default (tests/dns/cluster.py)


async def autopath_answer(handler: Handler, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    deferred = handler.handle(query.to_wire(), True, POD_IP)
    assert isinstance(deferred, Deferred), "autopath did not take the query"
    with trio.fail_after(WAIT):
        reply = await handler.complete(deferred)
    return dns.message.from_wire(reply[0])


async def test_autopath_answer_from_our_zone_is_authoritative() -> None:
    # `redis.default` searched from a pod in default: the first try
    # (redis.default.default.svc…) does not exist, the second does; kdns answers it behind a
    # CNAME, from its own zone: AA, as CoreDNS's autopath answer (its kubernetes plugin's).
    store = Store()
    handler = Handler(Resolver(store, Config().with_overrides(autopath=True)), autopath=True)
    load(store)
    reply = await autopath_answer(handler, f"redis.default.default.svc.{Z}")
    assert answer_lines(reply) == [
        f"redis.default.default.svc.{Z}. CNAME redis.default.svc.{Z}.",
        f"redis.default.svc.{Z}. A 10.97.97.97",
    ]
    assert reply.flags & dns.flags.AA


async def test_autopath_chases_an_external_target(dnsmasq: upstreams.Dnsmasq) -> None:
    store = Store()
    forwarder = Forwarder(ForwardConfig(upstreams=(dnsmasq.upstream,)))
    handler = Handler(
        Resolver(store, Config().with_overrides(autopath=True)), forwarder=forwarder, autopath=True
    )
    load(store, EXTERNAL)
    reply = await autopath_answer(handler, f"extout.default.default.svc.{Z}")
    assert answer_lines(reply) == [
        f"extout.default.default.svc.{Z}. CNAME extout.default.svc.{Z}.",
        f"extout.default.svc.{Z}. CNAME www.test.",
        f"www.test. A {WWW_V4}",
    ]
    assert texts(reply, "A") == {WWW_V4}
    assert reply.flags & dns.flags.AA

"""The switch interval while a large answer is built (kdns/interpreter.py `handing_over`): the
records of a Service of `LARGE_BUILD` endpoints or more, its change, an answer from an RRset
of as many records and a message of as many run with the short interval, so the UDP receive
thread answers meanwhile; it is set back afterwards, also when the build raises; a smaller
Service, a name the large Service does not have, and a relist leave it alone. The answers
themselves are checked byte for byte by test_big_answers.py."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dnslib import QTYPE, DNSRecord

from kdns import interpreter
from kdns.dns import pack
from kdns.dns import resolver as resolver_module
from kdns.model import endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, SERVICES, Store
from tests.builders import api_endpoint, api_endpointslice, api_service
from tests.dns.cluster import make_handler

SERVING = 0.001  # what `kdns serve` runs with (interpreter.SWITCH_INTERVAL)
SHORT = pytest.approx(interpreter.HANDOVER_INTERVAL)
PORTS = [{"name": "http", "port": 80, "protocol": "TCP"}]


@pytest.fixture(autouse=True)
def serving_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(SERVING)
    yield
    sys.setswitchinterval(before)


def headless(store: Store, endpoints: int, generation: int = 1) -> None:
    """A headless Service `big/hl` with `endpoints` ready endpoints, one named port."""
    store.upsert(SERVICES, service_from_dict(api_service("big", "hl", clusterIP="None")))
    addresses = [
        api_endpoint(f"10.{generation}.{i // 250}.{i % 250 + 1}") for i in range(endpoints)
    ]
    slice_ = api_endpointslice("big", "hl", "hl-a", addresses, PORTS)
    store.upsert(ENDPOINTSLICES, endpointslice_from_dict(slice_))


def spy(
    monkeypatch: pytest.MonkeyPatch, module: object, name: str, seen: list[float]
) -> Callable[..., Any]:
    """Replace `module.name` with a wrapper noting the switch interval at each call."""
    real = getattr(module, name)

    def noting(*args: Any, **kwargs: Any) -> Any:
        seen.append(sys.getswitchinterval())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, noting)
    return real


SRV_QUERY = bytes(DNSRecord.question("_http._tcp.hl.big.svc.cluster.local", "SRV").pack())


def test_a_large_services_answer_is_built_and_encoded_with_the_short_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _, handler = make_handler()
    headless(store, interpreter.LARGE_BUILD)
    records: list[float] = []
    encoded: list[float] = []
    spy(monkeypatch, resolver_module, "service_records", records)
    spy(monkeypatch, pack, "write_name", encoded)  # the question's name, first in a message
    reply = handler.handle(SRV_QUERY, udp=False)
    assert isinstance(reply, tuple)
    assert len(DNSRecord.parse(reply[0]).rr) == interpreter.LARGE_BUILD  # answered in full
    assert records == [SHORT]
    assert encoded and all(seen == SHORT for seen in encoded)
    assert sys.getswitchinterval() == pytest.approx(SERVING)  # set back


def test_a_smaller_service_leaves_the_interval_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under LARGE_BUILD endpoints, and under LARGE_BUILD records with the glue (one address
    # per SRV target): neither the build nor the encoding is scoped.
    store, _, handler = make_handler()
    endpoints = interpreter.LARGE_BUILD // 2 - 1
    headless(store, endpoints)
    records: list[float] = []
    encoded: list[float] = []
    spy(monkeypatch, resolver_module, "service_records", records)
    spy(monkeypatch, pack, "write_name", encoded)
    reply = handler.handle(SRV_QUERY, udp=False)
    assert isinstance(reply, tuple)
    assert len(DNSRecord.parse(reply[0]).rr) == endpoints
    assert records == [pytest.approx(SERVING)]
    assert encoded and all(seen == pytest.approx(SERVING) for seen in encoded)


def test_the_interval_is_set_back_when_the_build_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    store, resolver, _ = make_handler()
    headless(store, interpreter.LARGE_BUILD)
    seen: list[float] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        seen.append(sys.getswitchinterval())
        raise RuntimeError("a bug in the records")

    monkeypatch.setattr(resolver_module, "service_records", broken)
    with pytest.raises(RuntimeError):
        resolver.resolve("_http._tcp.hl.big.svc.cluster.local", QTYPE.SRV, packed=True)
    assert seen == [SHORT]
    assert sys.getswitchinterval() == pytest.approx(SERVING)


def test_a_large_services_change_is_applied_with_the_short_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _, _ = make_handler()
    headless(store, interpreter.LARGE_BUILD)
    seen: list[float] = []
    spy(monkeypatch, resolver_module, "ptr_addresses", seen)
    headless(store, interpreter.LARGE_BUILD, generation=2)  # a rollout: every endpoint new
    assert seen and all(interval == SHORT for interval in seen)
    assert sys.getswitchinterval() == pytest.approx(SERVING)


def test_a_relist_keeps_the_serving_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bulk change rebuilds the reverse index in one pass; a short interval there lost queries
    # in a relist flood (kdns/interpreter.py), so it is not scoped even with a large Service.
    store, _, _ = make_handler()
    headless(store, interpreter.LARGE_BUILD)
    seen: list[float] = []
    spy(monkeypatch, resolver_module, "ptr_addresses", seen)
    many = [
        service_from_dict(api_service("bulk", f"s{i}")) for i in range(resolver_module.BULK + 1)
    ]
    store.replace(SERVICES, {**store.services, **{s.key: s for s in many}})
    assert len(seen) > resolver_module.BULK  # the rebuild's pass, every Service
    assert all(interval == pytest.approx(SERVING) for interval in seen)


@pytest.mark.parametrize(
    ("count", "interval"),
    [
        (interpreter.LARGE_BUILD - 1, SERVING),
        (interpreter.LARGE_BUILD, interpreter.HANDOVER_INTERVAL),
    ],
)
def test_the_encoder_scopes_a_message_by_its_record_count(
    monkeypatch: pytest.MonkeyPatch, count: int, interval: float
) -> None:
    # Whatever built them: the encoder counts the records it writes.
    owner = (b"a", b"big", b"svc", b"cluster", b"local")
    address = b"\x0a\x00\x00\x01"  # A 10.0.0.1, TTL 30
    tail = b"\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04" + address
    seen: list[float] = []
    spy(monkeypatch, pack, "write_name", seen)
    records = [pack.Rec(owner, pack.A, tail)] * count
    out = pack.message(bytes(12), owner, b"\x00\x01\x00\x01", (records, [], []))
    assert out is not None and out.count(address) == count
    assert seen == [pytest.approx(interval)]
    assert sys.getswitchinterval() == pytest.approx(SERVING)


def test_a_name_a_large_service_does_not_have_is_answered_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A flood of random names under a large Service reaches the resolver (the Service exists,
    # so the receive thread cannot deny them): each must not pay a scope and its sleep.
    store, _, handler = make_handler()
    headless(store, interpreter.LARGE_BUILD)
    set_to: list[float] = []
    real = sys.setswitchinterval
    monkeypatch.setattr(sys, "setswitchinterval", lambda s: (set_to.append(s), real(s)))
    handler.handle(SRV_QUERY, udp=False)  # the records are built and kept: scoped
    assert set_to and set_to[0] == SHORT
    set_to.clear()
    query = bytes(DNSRecord.question("x1234.hl.big.svc.cluster.local", "A").pack())
    reply = handler.handle(query, udp=False)
    assert isinstance(reply, tuple)
    assert DNSRecord.parse(reply[0]).header.rcode == 3  # NXDOMAIN
    assert set_to == []

"""The kept denials (`AnswerCache.keep_denial`, kdns/dns/wire.py): a question the receive
thread's `Handler.denial` answered before is answered again by `AnswerCache.lookup` from its
pre-encoded bytes, the same bytes trio's path gives, until the next store change.

Pod traffic asks the search expansions of outside names (`www.example.com.<ns>.svc.<zone>`) as
often as the names themselves; tests/bench/podmix.py is the benchmark.
"""

from __future__ import annotations

import threading

import dns.message
import pytest
from dnslib import QTYPE

from kdns.dns import wire
from kdns.dns.handler import Handler
from kdns.model import service_from_dict
from kdns.store import SERVICES
from tests.builders import api_service
from tests.dns.cluster import make_handler
from tests.dns.test_coldpath import zone_text
from tests.dns.test_wire import make_query

RD, CD = 0x0100, 0x0010

# (question as the client spells it, type, flags, EDNS payload or None, DO): the shapes a
# client population sends; each is an NXDOMAIN with the zone's SOA.
SHAPES = [
    ("www.example.com.default.svc.cluster.local", QTYPE.A, RD, None, False),  # plain
    ("www.example.com.default.svc.cluster.local", QTYPE.AAAA, RD, None, False),
    ("www.example.com.default.svc.cluster.local", QTYPE.A, RD, 1232, False),  # EDNS
    ("www.example.com.default.svc.cluster.local", QTYPE.AAAA, RD, 4096, True),  # DO
    ("www.example.com.default.svc.cluster.local", QTYPE.A, RD | CD, None, False),  # CD
    ("WWW.Example.COM.default.SVC.cluster.local", QTYPE.A, RD, None, False),  # spelling
    ("_http._tcp.gone.default.svc.cluster.local", QTYPE.SRV, RD, None, False),
    ("gone.prod.svc.cluster.local", QTYPE.PTR, 0, 1232, False),  # no RD
    ("www.example.com.svc.cluster.local", QTYPE.A, RD, None, False),  # namespace `com`
    ("no-such-namespace.svc.cluster.local", QTYPE.AAAA, RD, None, False),
]


def kept_answer(handler: Handler, data: bytes) -> wire.Reply | None:
    """What the receive thread's first look, `AnswerCache.lookup`, answers (no entry holds
    these names: only kept denials can)."""
    found = wire.cache_key(data)
    assert found is None or found[0] not in handler.cache.entries  # not an entry's answer
    return handler.cache.lookup(data, True)


def primed(handler: Handler, qtype: int, edns: int | None, do: bool) -> None:
    """One NXDOMAIN of this type and DO bit through trio's path: it gives `denial` the metrics
    label of the shape (`denial` answers no shape trio has not answered once)."""
    data = make_query("primer.default.svc.cluster.local", qtype, edns=edns, do=do)
    assert handler.handle_miss(data, udp=True) is not None


@pytest.mark.parametrize(("qname", "qtype", "flags", "edns", "do"), SHAPES)
def test_a_kept_denial_is_the_trio_paths_answer_byte_for_byte(
    qname: str, qtype: int, flags: int, edns: int | None, do: bool
) -> None:
    _, _, handler = make_handler()
    primed(handler, qtype, edns, do)
    # Another client asked the same question first, lower-case, with another ID.
    first = make_query(qname.lower(), qtype, qid=0x0101, flags=flags, edns=edns, do=do)
    assert kept_answer(handler, first) is None  # nothing kept yet
    assert handler.denial(first) is not None  # built from the store's state, and kept
    data = make_query(qname, qtype, qid=0x7E57, flags=flags, edns=edns, do=do)
    kept = kept_answer(handler, data)
    assert kept is not None
    assert kept == handler.handle_miss(data, udp=True)  # the slow path, which keeps nothing
    assert handler.denial(data) == kept
    rcode, lines = zone_text(kept[0])
    assert rcode == "NXDOMAIN"
    assert [" ".join(x.split()[:4]) for x in lines] == ["cluster.local. 5 in soa"]
    message = dns.message.from_wire(kept[0])
    assert message.id == 0x7E57
    assert str(message.question[0].name) == qname + "."  # the client's spelling


def test_other_header_bits_are_other_questions() -> None:
    _, _, handler = make_handler()
    primed(handler, QTYPE.A, None, False)
    name = "www.example.com.default.svc.cluster.local"
    assert handler.denial(make_query(name, flags=RD)) is not None
    # Without RD, with CD: not the kept answer (its flags echo the query's).
    assert kept_answer(handler, make_query(name, flags=0)) is None
    assert kept_answer(handler, make_query(name, flags=RD | CD)) is None
    # Header octets that lower-casing would change (Z bit set: 0x41) are never kept.
    odd = make_query(name, flags=RD | 0x0041)
    assert handler.denial(odd) is not None
    assert kept_answer(handler, odd) is None


def test_a_change_makes_every_kept_denial_be_built_again() -> None:
    store, _, handler = make_handler()
    primed(handler, QTYPE.A, None, False)
    data = make_query("late.default.svc.cluster.local")
    other = make_query("www.example.com.prod.svc.cluster.local")
    assert handler.denial(data) is not None and handler.denial(other) is not None
    assert kept_answer(handler, data) is not None
    store.upsert(SERVICES, service_from_dict(api_service("default", "late", clusterIP="10.96.9.9")))
    # The Service exists now: nothing kept answers, and trio gives its address.
    assert kept_answer(handler, data) is None and handler.denial(data) is None
    reply = handler.handle(data, udp=True)
    assert isinstance(reply, tuple)
    assert zone_text(reply[0]) == ("NOERROR", ["late.default.svc.cluster.local. 5 in a 10.96.9.9"])
    # Still NXDOMAIN, but with the serial the change moved (RFC 2308 §3): built again.
    assert kept_answer(handler, other) is None
    again = handler.denial(other)
    assert again is not None and again == handler.handle_miss(other, udp=True)
    assert dns.message.from_wire(again[0]).authority[0][0].serial == store.last_change


def test_a_denial_built_while_a_change_is_applied_is_not_kept_past_it() -> None:
    # The receive thread may build a denial from the state before a change while trio applies
    # it: it keeps it in the dict it read before, which the change's `drop` has swapped out.
    store, resolver, handler = make_handler()
    primed(handler, QTYPE.A, None, False)
    data = make_query("racing.default.svc.cluster.local")
    real = resolver.certainly_absent

    def stale_then_change(qname: str) -> str | None:
        found = real(qname)  # NXDOMAIN: the Service is not there yet
        resolver.certainly_absent = real  # type: ignore[method-assign]
        service = api_service("default", "racing", clusterIP="10.96.9.7")
        store.upsert(SERVICES, service_from_dict(service))  # trio applies the change now
        return found

    resolver.certainly_absent = stale_then_change  # type: ignore[method-assign]
    assert handler.denial(data) is not None  # answered from the state it read
    assert kept_answer(handler, data) is None  # but not kept past the change
    assert handler.denial(data) is None  # the Service is found


def test_the_memo_is_bounded_in_bytes_and_keeps_the_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "DENIALS_MAX_BYTES", 64 * 1024)
    _, _, handler = make_handler()
    primed(handler, QTYPE.A, None, False)
    names = [f"flood-{i}.default.svc.cluster.local" for i in range(2000)]
    for name in names:
        assert handler.denial(make_query(name)) is not None
    assert 0 < handler.cache.denial_bytes <= 64 * 1024
    assert kept_answer(handler, make_query(names[-1])) is not None  # the newest are kept
    assert kept_answer(handler, make_query(names[0])) is None  # the oldest made room


def test_two_threads_building_and_reading_denials_agree_with_trio() -> None:
    # The receive threads of two listeners share a handler: both read and write the memo.
    _, _, handler = make_handler()
    primed(handler, QTYPE.A, None, False)
    queries = [make_query(f"n{i}.x.prod.svc.cluster.local", qid=i) for i in range(300)]
    expected = [handler.handle_miss(q, udp=True) for q in queries]
    handler.cache.clear()  # trio's path stored them as entries: only kept denials from here
    errors: list[str] = []

    def ask(rounds: int) -> None:
        for _ in range(rounds):
            for q, want in zip(queries, expected, strict=True):
                got = handler.denial(q)
                if got != want:
                    errors.append(f"{q!r}: {got!r}")

    threads = [threading.Thread(target=ask, args=(20,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert all(kept_answer(handler, q) == want for q, want in zip(queries, expected, strict=True))

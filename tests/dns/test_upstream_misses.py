"""The fast miss path's pure parts (kdns/dns/upstream_misses.py): keys, validation, IDs, the
table of exchanges in flight."""

from __future__ import annotations

import os
import struct

import dns.flags
import dns.message
import pytest

from kdns.dns import forward, upstream_misses, wire
from kdns.dns.upstream_misses import IdSource, Pending, PendingTable, matches, miss_key


def query(name: str, rdtype: str = "A", **kwargs: object) -> bytes:
    message = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    message.id = 4242
    return message.to_wire()


def with_cd(data: bytes) -> bytes:
    return data[:3] + bytes((data[3] | 0x10,)) + data[4:]


# Every query the fast path takes has exactly the upstream cache's key (forward.cache_key of
# the parsed query), so an answer it stores is the entry trio would look for.
TAKEN = {
    "plain A": query("www.example.org"),
    "letter case kept apart from the key": query("WwW.ExAmple.ORG"),
    "AAAA": query("www.example.org", "AAAA"),
    "EDNS without DO": query("www.example.org", use_edns=0),
    "EDNS with DO": query("www.example.org", want_dnssec=True),
    "CD": with_cd(query("www.example.org")),
    "ANY": query("example.org", "ANY"),
}


@pytest.mark.parametrize("data", TAKEN.values(), ids=TAKEN.keys())
def test_a_plain_query_is_keyed_as_the_upstream_cache_keys_it(data: bytes) -> None:
    parsed = wire.parse_query(data)
    assert isinstance(parsed, wire.Query)
    found = miss_key(data)
    assert found is not None
    key, qname, qend = found
    assert key == forward.cache_key(parsed)
    assert qname == parsed.qname
    assert data[12:qend] == parsed.question


def compressed_question() -> bytes:
    data = bytearray(query("example.org"))
    # The question name as a pointer (to offset 12 of itself: malformed too, never plain).
    return bytes(data[:12]) + b"\xc0\x0c" + bytes(data[-4:])


LEFT_TO_TRIO = {
    "class CH (refused by the handler)": query("version.bind", "TXT")[:-2] + b"\x00\x03",
    "AXFR (refused)": query("example.org", "AXFR"),
    "IXFR (refused)": query("example.org", "IXFR"),
    "a label holding a dot (escaped by Query.qname)": (
        query("x.example.org")[:12] + b"\x03a.b\x07example\x03org\x00\x00\x01\x00\x01"
    ),
    "a response": bytes((0x12, 0x34, 0x81, 0x00)) + query("example.org")[4:],
    "an opcode other than QUERY": query("example.org")[:2] + b"\x28\x00" + query("a.org")[4:],
    "a compressed question": compressed_question(),
    "EDNS version 1": (lambda d: d[:-5] + b"\x01" + d[-4:])(query("example.org", use_edns=0)),
    "shorter than a header": b"\x12\x34\x01",
}


@pytest.mark.parametrize("data", LEFT_TO_TRIO.values(), ids=LEFT_TO_TRIO.keys())
def test_anything_unusual_is_left_to_trio(data: bytes) -> None:
    assert miss_key(data) is None


def reply_to(data: bytes, qid: int | None = None, qr: bool = True, name: bytes = b"") -> bytes:
    flags = 0x8180 if qr else 0x0100
    end = data.index(b"\x00", 12) + 5
    question = name + data[end - 4 : end] if name else data[12:end]
    rid = struct.unpack_from("!H", data)[0] if qid is None else qid
    return struct.pack("!6H", rid, flags, 1, 0, 0, 0) + question


SENT = query("www.example.org")
QUESTION = SENT[12 : SENT.index(b"\x00", 12) + 5]
# RFC 5452 §9.1: the ID, the QR bit, the opcode and the question must all match.
REPLIES = [
    ("the genuine reply", reply_to(SENT), True),
    ("another letter case (0x20 randomisation)", reply_to(SENT).replace(b"www", b"WWW"), True),
    ("the wrong ID", reply_to(SENT, qid=4243), False),
    ("QR clear: a query, not a reply", reply_to(SENT, qr=False), False),
    ("another question", reply_to(SENT, name=b"\x04evil\x07example\x03org\x00"), False),
    ("cut inside the question", reply_to(SENT)[:20], False),
    ("two questions", (lambda r: r[:4] + b"\x00\x02" + r[6:])(reply_to(SENT)), False),
]


@pytest.mark.parametrize(
    ("reply", "accepted"), [(r, a) for _, r, a in REPLIES], ids=[n for n, _, _ in REPLIES]
)
def test_a_reply_is_believed_only_when_it_answers_our_question(
    reply: bytes, accepted: bool
) -> None:
    assert matches(reply, 4242, QUESTION) is accepted


@pytest.mark.parametrize(("cd", "do"), [(False, False), (True, False), (False, True)])
def test_the_upstream_query_carries_rd_our_opt_and_the_clients_cd_and_do(
    cd: bool, do: bool
) -> None:
    message = dns.message.from_wire(upstream_misses.upstream_message(777, QUESTION, cd, do))
    assert message.id == 777
    assert bool(message.flags & dns.flags.RD)
    assert bool(message.flags & dns.flags.CD) is cd
    assert message.edns == 0 and message.payload == wire.MAX_UDP_PAYLOAD
    assert bool(message.ednsflags & dns.flags.DO) is do
    assert message.question[0].to_text() == "www.example.org. IN A"


def test_ids_come_from_the_os_random_source_a_batch_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(upstream_misses.os, "urandom", urandom)
    source = IdSource()
    ids = [source.take() for _ in range(3 * IdSource.BATCH)]
    assert reads == [2 * IdSource.BATCH] * 3  # one read per batch, not one per ID
    assert all(0 <= i <= 0xFFFF for i in ids)
    assert len(set(ids)) > 2500  # 3,072 draws from 65,536: about 3,000 distinct


def pending(key: bytes, fd: int, deadline: float) -> Pending:
    return Pending(key, "n", 1, b"q", None, None, fd, 0.0, deadline, ["first"])


def test_the_table_coalesces_bounds_and_expires_oldest_first() -> None:
    table = PendingTable(limit=2)
    a, b = pending(b"a", 10, 1.0), pending(b"b", 11, 2.0)
    assert not table.join(b"a", "second")  # nothing in flight for it yet
    table.add(a)
    assert table.join(b"a", "second")  # the same key waits on the same exchange
    assert not table.full()
    table.add(b)
    assert table.full() and len(table) == 2
    assert table.by_fd[11] is b
    assert table.finish(b) == ["first"]  # answered
    assert not table.join(b"b", "late")  # a finished exchange takes nobody any more
    assert table.next_deadline() == 1.0
    assert table.expired(0.5) == []
    assert table.expired(1.0) == [a] and a.waiters == ["first", "second"]
    assert len(table) == 0 and table.next_deadline() is None


def test_drain_finishes_everything_in_flight() -> None:
    table = PendingTable(limit=10)
    a, b = pending(b"a", 10, 1.0), pending(b"b", 11, 2.0)
    table.add(a)
    table.add(b)
    table.finish(a)
    assert table.drain() == [b]
    assert len(table) == 0 and table.by_fd == {}


def test_one_exchange_holds_a_bounded_number_of_waiters() -> None:
    table = PendingTable(limit=10, waiters_limit=3)
    table.add(pending(b"a", 10, 1.0))  # its first waiter
    assert table.join(b"a", "second") is True
    assert table.join(b"a", "third") is True
    assert table.join(b"a", "fourth") is None  # crowded: the caller leaves it to trio
    assert table.by_key[b"a"].waiters == ["first", "second", "third"]

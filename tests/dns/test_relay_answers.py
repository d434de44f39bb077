"""The relay's answers (kdns/dns/relay_answers.py): an upstream reply made into each client's
answer without parsing the query is byte for byte what trio's own functions make of it, and
reads as the upstream's records with the client's ID, spelling, RD/CD, RA and OPT."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rrset
import pytest

from kdns.dns.relay_answers import ClientShaped, generic_answer
from kdns.dns.upstream_cache import CacheEntry, UpstreamCache
from kdns.dns.upstream_config import ForwardConfig
from kdns.dns.upstream_misses import miss_key
from kdns.dns.upstream_response import parse_response, strip_opt

NOW = 100.0
NAME = "www.example.org."


def query(name: str = NAME, **kwargs: object) -> bytes:
    message = dns.message.make_query(name, "A", **kwargs)  # type: ignore[arg-type]
    message.id = 4242
    return message.to_wire()


def with_cd(data: bytes) -> bytes:
    return data[:3] + bytes((data[3] | 0x10,)) + data[4:]


def upstream_reply(records: int, cd: bool = False, ttl: int = 300) -> bytes:
    """What an upstream answers `NAME A` with: `records` addresses for 300 s, RD RA, ID 7, EDNS,
    CD echoed from our query (which carries the client's)."""
    asked = dns.message.make_query(NAME, "A", use_edns=0)
    reply = dns.message.make_response(asked)
    reply.id = 7
    reply.flags |= dns.flags.RA | (dns.flags.CD if cd else 0)
    addresses = [f"192.0.2.{i % 250 + 1}" for i in range(records)]
    reply.answer.append(dns.rrset.from_text_list(NAME, ttl, "IN", "A", addresses))
    return reply.to_wire()


def made(data: bytes, reply: bytes, cached: bool) -> tuple[bytes, CacheEntry | None, list[int]]:
    """The reply with its OPT stripped, the entry the upstream cache would store for it, and
    the TTLs the reply carries."""
    parsed = parse_response(reply)
    response = strip_opt(reply, parsed)
    if not cached:
        return response, None, parsed.ttls
    found = miss_key(data)
    assert found is not None
    stored = UpstreamCache(ForwardConfig()).entry_for(found[0], response, parsed, NOW)
    assert stored is not None
    return response, stored[0], parsed.ttls


def answer(data: bytes, reply: bytes, cached: bool) -> bytes | None:
    """What the reader thread sends the client that asked `data`."""
    response, entry, ttls = made(data, reply, cached)
    found = miss_key(data)
    assert found is not None
    out = ClientShaped(response, entry, ttls).answer(data, found[2])
    # The contract: what trio's own functions give, byte for byte; the TTLs the reply carries
    # only spare rewriting those the entry keeps as they are.
    assert out == generic_answer(data, response, entry, NOW)
    assert out == ClientShaped(response, entry).answer(data, found[2])
    return out


QUERIES = {
    "plain": (query(), False, False),
    "the client's spelling": (query("WwW.ExAmple.ORG."), False, False),
    "EDNS": (query(use_edns=0), True, False),
    "EDNS with DO": (query(want_dnssec=True), True, True),
    "CD": (with_cd(query()), False, False),
}
# The records as the client reads them: its spelling of the name (the records point at the
# question), the TTL capped at the cache's `max_ttl` (30 s) when the answer is cached, as the
# upstream sent it (300 s) when it is not.
RECORDS = {
    True: "{name} 30 IN A 192.0.2.1\n{name} 30 IN A 192.0.2.2",
    False: "{name} 300 IN A 192.0.2.1\n{name} 300 IN A 192.0.2.2",
}


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "not cacheable"])
@pytest.mark.parametrize(("data", "edns", "do"), QUERIES.values(), ids=QUERIES.keys())
def test_the_answer_is_the_upstreams_records_as_the_client_asked(
    data: bytes, edns: bool, do: bool, cached: bool
) -> None:
    asked = dns.message.from_wire(data)
    cd = bool(asked.flags & dns.flags.CD)
    out = answer(data, upstream_reply(2, cd), cached)
    assert out is not None
    got = dns.message.from_wire(out)
    assert got.id == 4242
    assert got.question[0].name.to_text() == asked.question[0].name.to_text()  # spelling kept
    assert got.flags & dns.flags.RA and got.flags & dns.flags.QR
    assert bool(got.flags & dns.flags.CD) == cd
    (rrset,) = got.answer
    name = asked.question[0].name.to_text()
    assert "\n".join(sorted(rrset.to_text().splitlines())) == RECORDS[cached].format(name=name)
    assert (got.edns >= 0) == edns  # our OPT only for a client that sent one
    assert bool(got.ednsflags & dns.flags.DO) == do


def test_an_answer_larger_than_the_clients_udp_size_is_left_to_the_generic_cut() -> None:
    data = query()  # no EDNS: 512 octets at most (RFC 1035 §4.2.1)
    response, entry, _ = made(data, upstream_reply(40), cached=True)
    found = miss_key(data)
    assert found is not None
    assert ClientShaped(response, entry).answer(data, found[2]) is None
    cut = generic_answer(data, response, entry, NOW)
    assert cut is not None and len(cut) <= 512
    assert dns.message.from_wire(cut).flags & dns.flags.TC


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "not cacheable"])
def test_ttls_under_the_caches_cap_are_answered_as_the_upstream_sent_them(cached: bool) -> None:
    data = query()
    out = answer(data, upstream_reply(2, ttl=20), cached)
    assert out is not None
    (rrset,) = dns.message.from_wire(out).answer
    assert sorted(rrset.to_text().splitlines()) == [
        f"{NAME} 20 IN A 192.0.2.1",
        f"{NAME} 20 IN A 192.0.2.2",
    ]


@pytest.mark.parametrize("records", [0, 2, 40])
def test_a_reply_read_after_a_known_question_reads_as_one_read_whole(records: int) -> None:
    # The relay compared the question already (`matches`): the walk starts after it.
    reply = upstream_reply(records)
    found = miss_key(query())
    assert found is not None
    assert parse_response(reply, found[2]) == parse_response(reply)

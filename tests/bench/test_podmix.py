"""The pod-traffic benchmark's query file: glibc's search-list expansion, as a table.

Each row is one getaddrinfo(AF_UNSPEC) lookup from a pod in namespace `team-3` (kubelet's
resolv.conf: search team-3.svc.cluster.local svc.cluster.local cluster.local, ndots:5) and the
queries glibc's res_nsearch sends for it: A and AAAA for each candidate name until one of the
two answers holds a record (tests/bench/podmix.py builds its dnsperf file from this).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.bench.podmix import (
    MIX,
    glibc_queries,
    make_lookups,
    make_world,
    search_list,
)

EXISTING = {
    "redis.team-3.svc.cluster.local",
    "api.team-5.svc.cluster.local",
    "api.example.com",
}

# (name as written, queries in order)
TABLE = [
    (
        "api.example.com",
        """
        api.example.com.team-3.svc.cluster.local A
        api.example.com.team-3.svc.cluster.local AAAA
        api.example.com.svc.cluster.local A
        api.example.com.svc.cluster.local AAAA
        api.example.com.cluster.local A
        api.example.com.cluster.local AAAA
        api.example.com A
        api.example.com AAAA
        """,
    ),
    (
        "redis",
        """
        redis.team-3.svc.cluster.local A
        redis.team-3.svc.cluster.local AAAA
        """,
    ),
    (
        "api.team-5",
        """
        api.team-5.team-3.svc.cluster.local A
        api.team-5.team-3.svc.cluster.local AAAA
        api.team-5.svc.cluster.local A
        api.team-5.svc.cluster.local AAAA
        """,
    ),
    # Five dots or more (ndots:5): the name as written first, then the search list.
    (
        "a.b.c.d.e.f",
        """
        a.b.c.d.e.f A
        a.b.c.d.e.f AAAA
        a.b.c.d.e.f.team-3.svc.cluster.local A
        a.b.c.d.e.f.team-3.svc.cluster.local AAAA
        a.b.c.d.e.f.svc.cluster.local A
        a.b.c.d.e.f.svc.cluster.local AAAA
        a.b.c.d.e.f.cluster.local A
        a.b.c.d.e.f.cluster.local AAAA
        """,
    ),
    # A trailing dot: absolute, no search.
    ("api.example.com.", "api.example.com A\napi.example.com AAAA"),
]


@pytest.mark.parametrize(("name", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_glibc_expansion(name: str, expected: str) -> None:
    queries = glibc_queries(name, search_list("team-3"), EXISTING.__contains__)
    assert [f"{qname} {qtype}" for qname, qtype in queries] == [
        line.strip() for line in expected.strip().splitlines()
    ]


def test_lookup_mix_has_the_asked_proportions_and_names() -> None:
    world = make_world(namespaces=10, services=1000, outside=500)
    lookups = make_lookups(world, 1000, random.Random(1))
    assert Counter(x.kind for x in lookups) == {kind: pct * 10 for kind, pct in MIX}
    outside = {out.name for out in world.outside}
    for x in lookups:
        if x.kind == "outside":
            assert x.name in outside
        elif x.kind == "short":
            assert x.name in world.service_names
        else:
            svc, other = x.name.split(".")
            assert svc in world.service_names
            assert other in world.namespaces
            assert other != x.namespace
    # Zipf-like: the most popular outside name is asked far more often than the median one.
    asked = Counter(x.name for x in lookups if x.kind == "outside")
    assert asked[world.outside[0].name] > 10 * max(1, asked[world.outside[250].name])

"""The Kubernetes DNS schema, one table per section; expectations are zone-file text.

Sections follow the Kubernetes DNS-Based Service Discovery specification 1.1.0 and, where it is
silent, CoreDNS's kubernetes plugin (docs/kubernetes-dns.md, row numbers in comments).
"""

from __future__ import annotations

from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from kdns.config import Config
from kdns.dns.resolver import Answer
from kdns.model import Namespace, endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, NAMESPACES, SERVICES, Store
from tests.builders import api_endpoint, api_endpointslice, api_service
from tests.dns.cluster import load, make_handler, rrset, zone

NOERROR, NXDOMAIN, SERVFAIL = RCODE.NOERROR, RCODE.NXDOMAIN, RCODE.SERVFAIL
Z = "cluster.local"


def resolve(qname: str, qtype: str, config: Config | None = None) -> Answer:
    _, resolver, _ = make_handler(config)
    answer = resolver.resolve(qname, getattr(QTYPE, qtype))
    assert answer is not None, f"{qname} should be in our zones"
    return answer


def check(
    answer: Answer,
    rcode: int,
    records: str,
    additional: str = "",
    soa_zone: str | None = None,
) -> None:
    assert answer.rcode == rcode, RCODE.get(answer.rcode)
    assert rrset(answer.answer) == zone(records)
    assert rrset(answer.additional) == zone(additional)
    if rcode == NXDOMAIN or not records:
        # RFC 2308 §3: negative answers carry the zone's SOA in the authority section.
        assert [(str(rr.rname), rr.rtype) for rr in answer.authority] == [
            ((soa_zone or Z) + ".", QTYPE.SOA)
        ]
    else:
        assert answer.authority == []


# --- spec 2.3: ClusterIP services (rows 1-3) ----------------------------------------------------

CLUSTER_IP = [
    (
        "redis.default.svc.cluster.local",
        "A",
        NOERROR,
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97",
        "",
    ),
    ("redis.default.svc.cluster.local", "AAAA", NOERROR, "", ""),
    ("redis.default.svc.cluster.local", "TXT", NOERROR, "", ""),
    (
        "_redis._tcp.redis.default.svc.cluster.local",
        "SRV",
        NOERROR,
        "_redis._tcp.redis.default.svc.cluster.local. 5 IN SRV 0 100 6379 redis.default.svc.cluster.local.",
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97",
    ),
    # Several named ports: one SRV name per port; the protocol label must match.
    (
        "_dns._udp.web.default.svc.cluster.local",
        "SRV",
        NOERROR,
        "_dns._udp.web.default.svc.cluster.local. 5 IN SRV 0 100 53 web.default.svc.cluster.local.",
        "web.default.svc.cluster.local. 5 IN A 10.96.0.20",
    ),
    ("_dns._tcp.web.default.svc.cluster.local", "SRV", NXDOMAIN, "", ""),
    ("_nope._tcp.web.default.svc.cluster.local", "SRV", NXDOMAIN, "", ""),
    # `_tcp.web…` is an empty non-terminal above `_http._tcp.web…`: NODATA (RFC 8020).
    ("_tcp.web.default.svc.cluster.local", "A", NOERROR, "", ""),
    # Bare-name SRV lists every port, unnamed ones included (CoreDNS extension, row 3).
    (
        "web.default.svc.cluster.local",
        "SRV",
        NOERROR,
        """web.default.svc.cluster.local. 5 IN SRV 0 50 80 web.default.svc.cluster.local.
        web.default.svc.cluster.local. 5 IN SRV 0 50 53 web.default.svc.cluster.local.""",
        "web.default.svc.cluster.local. 5 IN A 10.96.0.20",
    ),
    (
        "bare.default.svc.cluster.local",
        "SRV",
        NOERROR,
        "bare.default.svc.cluster.local. 5 IN SRV 0 100 8080 bare.default.svc.cluster.local.",
        "bare.default.svc.cluster.local. 5 IN A 10.96.0.30",
    ),
    # Endpoint names resolve under ClusterIP services too (CoreDNS, row 6).
    (
        "10-244-3-3.redis.default.svc.cluster.local",
        "A",
        NOERROR,
        "10-244-3-3.redis.default.svc.cluster.local. 5 IN A 10.244.3.3",
        "",
    ),
    # Dual-stack (row 2): A gives the v4 ClusterIP, AAAA the v6 one; SRV glue carries both.
    (
        "api.prod.svc.cluster.local",
        "A",
        NOERROR,
        "api.prod.svc.cluster.local. 5 IN A 10.96.50.50",
        "",
    ),
    (
        "api.prod.svc.cluster.local",
        "AAAA",
        NOERROR,
        "api.prod.svc.cluster.local. 5 IN AAAA fd00:10:96::50",
        "",
    ),
    (
        "_https._tcp.api.prod.svc.cluster.local",
        "SRV",
        NOERROR,
        "_https._tcp.api.prod.svc.cluster.local. 5 IN SRV 0 100 443 api.prod.svc.cluster.local.",
        """api.prod.svc.cluster.local. 5 IN A 10.96.50.50
        api.prod.svc.cluster.local. 5 IN AAAA fd00:10:96::50""",
    ),
    ("nope.default.svc.cluster.local", "A", NXDOMAIN, "", ""),
]

# --- spec 2.4: headless services (rows 4-7) -----------------------------------------------------

HEADLESS = [
    # Only ready endpoints (10.244.1.7 is not ready).
    (
        "hl.default.svc.cluster.local",
        "A",
        NOERROR,
        """hl.default.svc.cluster.local. 5 IN A 10.244.1.5
        hl.default.svc.cluster.local. 5 IN A 10.244.1.6""",
        "",
    ),
    ("hl.default.svc.cluster.local", "AAAA", NOERROR, "", ""),
    (
        "web-0.hl.default.svc.cluster.local",
        "A",
        NOERROR,
        "web-0.hl.default.svc.cluster.local. 5 IN A 10.244.1.5",
        "",
    ),
    (
        "10-244-1-6.hl.default.svc.cluster.local",
        "A",
        NOERROR,
        "10-244-1-6.hl.default.svc.cluster.local. 5 IN A 10.244.1.6",
        "",
    ),
    # With a hostname set, the dashed-IP name does not exist (row 6); nor do unready endpoints.
    ("10-244-1-5.hl.default.svc.cluster.local", "A", NXDOMAIN, "", ""),
    ("10-244-1-7.hl.default.svc.cluster.local", "A", NXDOMAIN, "", ""),
    (
        "_http._tcp.hl.default.svc.cluster.local",
        "SRV",
        NOERROR,
        """_http._tcp.hl.default.svc.cluster.local. 5 IN SRV 0 50 8080 web-0.hl.default.svc.cluster.local.
        _http._tcp.hl.default.svc.cluster.local. 5 IN SRV 0 50 8080 10-244-1-6.hl.default.svc.cluster.local.""",
        """web-0.hl.default.svc.cluster.local. 5 IN A 10.244.1.5
        10-244-1-6.hl.default.svc.cluster.local. 5 IN A 10.244.1.6""",
    ),
    # No ready endpoint: the spec's NXDOMAIN (row 4), for the name and its SRV names.
    ("empty-hl.default.svc.cluster.local", "A", NXDOMAIN, "", ""),
    ("_http._tcp.empty-hl.default.svc.cluster.local", "SRV", NXDOMAIN, "", ""),
]

# --- spec 2.5: ExternalName (rows 8-9) ----------------------------------------------------------

EXTERNAL_NAME = [
    (
        "ext.default.svc.cluster.local",
        "A",
        NOERROR,
        "ext.default.svc.cluster.local. 5 IN CNAME www.example.com.",
        "",
    ),
    (
        "ext.default.svc.cluster.local",
        "CNAME",
        NOERROR,
        "ext.default.svc.cluster.local. 5 IN CNAME www.example.com.",
        "",
    ),
    # An IP-like externalName is no CNAME target: NXDOMAIN, as CoreDNS (row 9).
    ("ext-ip.default.svc.cluster.local", "A", NXDOMAIN, "", ""),
    # An in-zone target is chased (RFC 1034 §4.3.2).
    (
        "alias.prod.svc.cluster.local",
        "A",
        NOERROR,
        """alias.prod.svc.cluster.local. 5 IN CNAME redis.default.svc.cluster.local.
        redis.default.svc.cluster.local. 5 IN A 10.97.97.97""",
        "",
    ),
]

# --- spec 2.3.3 / 2.4.3: PTR (rows 10-11) -------------------------------------------------------

REVERSE = [
    (
        "97.97.97.10.in-addr.arpa",
        "PTR",
        NOERROR,
        "97.97.97.10.in-addr.arpa. 5 IN PTR redis.default.svc.cluster.local.",
        "",
    ),
    (
        "5.1.244.10.in-addr.arpa",
        "PTR",
        NOERROR,
        "5.1.244.10.in-addr.arpa. 5 IN PTR web-0.hl.default.svc.cluster.local.",
        "",
    ),
    (
        "6.1.244.10.in-addr.arpa",
        "PTR",
        NOERROR,
        "6.1.244.10.in-addr.arpa. 5 IN PTR 10-244-1-6.hl.default.svc.cluster.local.",
        "",
    ),
    (
        "3.3.244.10.in-addr.arpa",
        "PTR",
        NOERROR,
        "3.3.244.10.in-addr.arpa. 5 IN PTR 10-244-3-3.redis.default.svc.cluster.local.",
        "",
    ),
    (
        "0.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa",
        "PTR",
        NOERROR,
        "0.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR "
        "api.prod.svc.cluster.local.",
        "",
    ),
    ("97.97.97.10.in-addr.arpa", "A", NOERROR, "", ""),
    # Not ready: no PTR.
    ("7.1.244.10.in-addr.arpa", "PTR", NXDOMAIN, "", ""),
    ("1.1.1.1.in-addr.arpa", "PTR", NXDOMAIN, "", ""),
    # An ancestor of a known address is an empty non-terminal.
    ("97.97.10.in-addr.arpa", "PTR", NOERROR, "", ""),
]


@pytest.mark.parametrize(
    ("qname", "qtype", "rcode", "records", "additional"), CLUSTER_IP + HEADLESS + EXTERNAL_NAME
)
def test_service_records(qname: str, qtype: str, rcode: int, records: str, additional: str) -> None:
    check(resolve(qname, qtype), rcode, records, additional)


@pytest.mark.parametrize(("qname", "qtype", "rcode", "records", "additional"), REVERSE)
def test_reverse_records(qname: str, qtype: str, rcode: int, records: str, additional: str) -> None:
    soa = "ip6.arpa" if qname.endswith("ip6.arpa") else "in-addr.arpa"
    check(resolve(qname, qtype), rcode, records, additional, soa_zone=soa)


def test_chase_to_a_missing_name_keeps_the_cname_and_says_nxdomain() -> None:
    # RFC 6604 §3: the rcode describes the last name in the chain.
    answer = resolve("dangling.prod.svc.cluster.local", "A")
    assert answer.rcode == NXDOMAIN
    assert rrset(answer.answer) == zone(
        "dangling.prod.svc.cluster.local. 5 IN CNAME gone.default.svc.cluster.local."
    )


def test_out_of_zone_target_is_left_for_the_upstreams() -> None:
    # The resolver answers the CNAME and names the target the handler resolves upstream.
    answer = resolve("ext.default.svc.cluster.local", "A")
    assert answer.chase == "www.example.com"
    in_zone = resolve("alias.prod.svc.cluster.local", "A")
    assert in_zone.chase is None
    assert resolve("ext.default.svc.cluster.local", "CNAME").chase is None


def external(name: str, target: str) -> dict[str, object]:
    return api_service("chain", name, type="ExternalName", externalName=target)


def chain_resolve(services: list[dict[str, object]], qname: str) -> Answer:
    store, resolver, _ = make_handler()
    load(store, [*services, api_service("default", "redis", clusterIP="10.97.97.97")])
    store.replace(NAMESPACES, {"chain": Namespace("chain"), "default": Namespace("default")})
    answer = resolver.resolve(qname, QTYPE.A)
    assert answer is not None
    return answer


def link(i: int) -> str:
    return f"l{i}.chain.svc.{Z}"


@pytest.mark.parametrize(
    ("services", "rcode", "broken", "links"),
    [
        pytest.param(
            [external("a", f"b.chain.svc.{Z}"), external("b", f"a.chain.svc.{Z}")],
            SERVFAIL,
            "loop",
            0,
            id="two ExternalNames naming each other: SERVFAIL",
        ),
        pytest.param([external("a", f"a.chain.svc.{Z}")], SERVFAIL, "loop", 0, id="self: SERVFAIL"),
        pytest.param(
            [external("a", link(1))]
            + [external(f"l{i}", link(i + 1)) for i in range(1, 7)]
            + [external("l7", f"redis.default.svc.{Z}")],
            NOERROR,
            None,
            8,
            id="8 links: followed to the end",
        ),
        pytest.param(
            [external("a", link(1))]
            + [external(f"l{i}", link(i + 1)) for i in range(1, 8)]
            + [external("l8", f"redis.default.svc.{Z}")],
            SERVFAIL,
            "too long",
            0,
            id="9 links: SERVFAIL",
        ),
    ],
)
def test_cname_chains_are_bounded(
    services: list[dict[str, object]], rcode: int, broken: str | None, links: int
) -> None:
    answer = chain_resolve(services, f"a.chain.svc.{Z}")
    assert (answer.rcode, answer.broken) == (rcode, broken)
    assert sum(1 for rr in answer.answer if rr.rtype == QTYPE.CNAME) == links
    if rcode == NOERROR:
        assert [str(rr.rdata) for rr in answer.answer if rr.rtype == QTYPE.A] == ["10.97.97.97"]
    else:
        assert (answer.answer, answer.authority, answer.cacheable) == ([], [], False)


# --- RFC 8482: ANY gets one RRset ---------------------------------------------------------------

MINIMAL_ANY = [
    # A ClusterIP name has A and SRV: the A RRset only, and no SRV glue.
    ("redis.default.svc.cluster.local", "redis.default.svc.cluster.local. 5 IN A 10.97.97.97", ""),
    (
        "api.prod.svc.cluster.local",
        "api.prod.svc.cluster.local. 5 IN A 10.96.50.50",
        "",
    ),
    (
        "hl.default.svc.cluster.local",
        """hl.default.svc.cluster.local. 5 IN A 10.244.1.5
        hl.default.svc.cluster.local. 5 IN A 10.244.1.6""",
        "",
    ),
    # A name with only SRV records keeps them, and their glue.
    (
        "_redis._tcp.redis.default.svc.cluster.local",
        "_redis._tcp.redis.default.svc.cluster.local. 5 IN SRV 0 100 6379 "
        "redis.default.svc.cluster.local.",
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97",
    ),
    # The ExternalName's CNAME, not chased (ANY is not followed through a CNAME).
    (
        "alias.prod.svc.cluster.local",
        "alias.prod.svc.cluster.local. 5 IN CNAME redis.default.svc.cluster.local.",
        "",
    ),
    # The apex: SOA, not SOA and NS.
    (
        "cluster.local",
        "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 0 7200 1800 "
        "86400 5",
        "",
    ),
]


@pytest.mark.parametrize(("qname", "records", "additional"), MINIMAL_ANY)
def test_any_answers_one_rrset(qname: str, records: str, additional: str) -> None:
    answer = resolve(qname, "ANY")
    assert answer.rcode == NOERROR
    got = rrset(answer.answer)
    if qname == "cluster.local":  # the serial is the time of the last change
        got = {" ".join([*r.split()[:6], "0", *r.split()[7:]]) for r in got}
    assert got == zone(records)
    assert rrset(answer.additional) == zone(additional)


# --- pod records (row 12) -----------------------------------------------------------------------

PODS = [
    (
        "insecure",
        "10-244-1-5.default.pod.cluster.local",
        "A",
        NOERROR,
        "10-244-1-5.default.pod.cluster.local. 5 IN A 10.244.1.5",
    ),
    # insecure echoes any IP in an existing namespace, as CoreDNS `pods insecure`.
    (
        "insecure",
        "10-1-2-3.default.pod.cluster.local",
        "A",
        NOERROR,
        "10-1-2-3.default.pod.cluster.local. 5 IN A 10.1.2.3",
    ),
    ("insecure", "10-1-2-3.nope.pod.cluster.local", "A", NXDOMAIN, ""),
    ("insecure", "10-1-2-3.default.pod.cluster.local", "AAAA", NOERROR, ""),
    (
        "insecure",
        "fd00-10--1.default.pod.cluster.local",
        "AAAA",
        NOERROR,
        "fd00-10--1.default.pod.cluster.local. 5 IN AAAA fd00:10::1",
    ),
    ("insecure", "not-an-ip.default.pod.cluster.local", "A", NXDOMAIN, ""),
    ("insecure", "x.10-1-2-3.default.pod.cluster.local", "A", NXDOMAIN, ""),
    ("insecure", "default.pod.cluster.local", "A", NOERROR, ""),
    ("insecure", "pod.cluster.local", "A", NOERROR, ""),
    (
        "verified",
        "10-244-1-5.default.pod.cluster.local",
        "A",
        NOERROR,
        "10-244-1-5.default.pod.cluster.local. 5 IN A 10.244.1.5",
    ),
    ("verified", "10-1-2-3.default.pod.cluster.local", "A", NXDOMAIN, ""),
    ("verified", "10-244-1-5.prod.pod.cluster.local", "A", NXDOMAIN, ""),
    # A finished pod's IP may already belong to someone else: no record (row 12).
    ("verified", "10-244-9-9.default.pod.cluster.local", "A", NXDOMAIN, ""),
    ("disabled", "10-244-1-5.default.pod.cluster.local", "A", NXDOMAIN, ""),
    ("disabled", "default.pod.cluster.local", "A", NXDOMAIN, ""),
]


@pytest.mark.parametrize(("mode", "qname", "qtype", "rcode", "records"), PODS)
def test_pod_records(mode: str, qname: str, qtype: str, rcode: int, records: str) -> None:
    check(resolve(qname, qtype, Config().with_overrides(pods=mode)), rcode, records)


# --- the zone itself (rows 13-19) ---------------------------------------------------------------

ZONE_NAMES = [
    (
        "dns-version.cluster.local",
        "TXT",
        NOERROR,
        'dns-version.cluster.local. 28800 IN TXT "1.1.0"',
        "",
    ),
    # CoreDNS answers NXDOMAIN here (row 13); the name exists, so RFC 2308 says NODATA.
    ("dns-version.cluster.local", "A", NOERROR, "", ""),
    (
        "cluster.local",
        "NS",
        NOERROR,
        "cluster.local. 5 IN NS kube-dns.kube-system.svc.cluster.local.",
        "kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10",
    ),
    ("cluster.local", "A", NOERROR, "", ""),
    ("svc.cluster.local", "A", NOERROR, "", ""),
    ("default.svc.cluster.local", "A", NOERROR, "", ""),
    # A namespace with no services exists (NODATA); one that does not exist is NXDOMAIN.
    ("quiet.svc.cluster.local", "A", NOERROR, "", ""),
    ("nope.svc.cluster.local", "A", NXDOMAIN, "", ""),
    ("foo.cluster.local", "A", NXDOMAIN, "", ""),
    ("a.b.c.d.e.default.svc.cluster.local", "A", NXDOMAIN, "", ""),
    # No wildcards (removed in CoreDNS 1.9, row 14).
    ("*.default.svc.cluster.local", "A", NXDOMAIN, "", ""),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "records", "additional"), ZONE_NAMES)
def test_zone_names(qname: str, qtype: str, rcode: int, records: str, additional: str) -> None:
    check(resolve(qname, qtype), rcode, records, additional)


def test_apex_soa_is_coredns_shaped() -> None:
    answer = resolve("cluster.local", "SOA")
    assert answer.rcode == NOERROR
    (soa,) = answer.answer
    assert str(soa.rname) == "cluster.local."
    assert soa.ttl == 5
    assert str(soa.rdata.mname) == "ns.dns.cluster.local."
    assert str(soa.rdata.rname) == "hostmaster.cluster.local."
    assert soa.rdata.times[1:] == (7200, 1800, 86400, 5)


def test_negative_soa_minimum_and_ttl_follow_the_configured_ttl() -> None:
    answer = resolve("nope.default.svc.cluster.local", "A", Config().with_overrides(ttl=30))
    (soa,) = answer.authority
    assert soa.ttl == 30 and soa.rdata.times[4] == 30
    assert (
        resolve("redis.default.svc.cluster.local", "A", Config().with_overrides(ttl=30))
        .answer[0]
        .ttl
        == 30
    )


def test_soa_ttl_is_capped_at_300() -> None:
    (soa,) = resolve("cluster.local", "SOA", Config().with_overrides(ttl=3600)).answer
    assert soa.ttl == 300 and soa.rdata.times[4] == 3600


def test_serial_moves_forward_on_every_visible_change() -> None:
    store, resolver, _ = make_handler()
    before = resolver.resolve("cluster.local", QTYPE.SOA).answer[0].rdata.times[0]
    store.replace(SERVICES, {})
    after = resolver.resolve("cluster.local", QTYPE.SOA).answer[0].rdata.times[0]
    assert after > before


def test_names_outside_our_zones_are_not_ours() -> None:
    _, resolver, _ = make_handler()
    assert resolver.resolve("example.com", QTYPE.A) is None
    assert resolver.resolve("local", QTYPE.A) is None
    assert resolver.resolve("xcluster.local", QTYPE.A) is None


def test_ns_without_a_dns_service_names_ns_dns_and_its_address() -> None:
    store = Store()
    from kdns.dns.resolver import Resolver

    resolver = Resolver(store, Config(), ns_addresses=("10.0.0.53",))
    for kind in ("namespaces", "services", "endpointslices", "pods"):
        store.replace(kind, {})
    answer = resolver.resolve("cluster.local", QTYPE.NS)
    assert rrset(answer.answer) == zone("cluster.local. 5 IN NS ns.dns.cluster.local.")
    assert rrset(answer.additional) == zone("ns.dns.cluster.local. 5 IN A 10.0.0.53")
    assert rrset(resolver.resolve("ns.dns.cluster.local", QTYPE.A).answer) == zone(
        "ns.dns.cluster.local. 5 IN A 10.0.0.53"
    )


# --- several zones (row 28) ---------------------------------------------------------------------


def test_every_service_is_answered_in_every_zone_and_ptr_uses_the_primary() -> None:
    config = Config().with_overrides(zones=("cluster.local", "example.org", "in-addr.arpa"))
    check(
        resolve("_redis._tcp.redis.default.svc.example.org", "SRV", config),
        NOERROR,
        "_redis._tcp.redis.default.svc.example.org. 5 IN SRV 0 100 6379 redis.default.svc.example.org.",
        "redis.default.svc.example.org. 5 IN A 10.97.97.97",
    )
    check(
        resolve("nope.default.svc.example.org", "A", config), NXDOMAIN, "", soa_zone="example.org"
    )
    check(
        resolve("97.97.97.10.in-addr.arpa", "PTR", config),
        NOERROR,
        "97.97.97.10.in-addr.arpa. 5 IN PTR redis.default.svc.cluster.local.",
    )


def test_the_longest_zone_wins() -> None:
    config = Config().with_overrides(zones=("cluster.local", "svc.cluster.local"))
    answer = resolve("nope.default.svc.cluster.local", "A", config)
    assert str(answer.authority[0].rname) == "svc.cluster.local."


# --- sync gate (docs/architecture.md rule 4, row 32) ------------------------------------------------


def test_before_sync_negative_answers_are_servfail_and_nothing_is_cached() -> None:
    store, resolver, _ = make_handler(synced=False)
    store.replace(NAMESPACES, {"default": Namespace("default")})
    redis = service_from_dict(api_service("default", "redis", clusterIP="10.97.97.97"))
    store.replace(SERVICES, {redis.key: redis})
    # Endpoint slices and pods have not been listed yet.
    missing = resolver.resolve("nope.default.svc.cluster.local", QTYPE.A)
    assert missing is not None and missing.rcode == SERVFAIL and not missing.cacheable
    nodata = resolver.resolve("redis.default.svc.cluster.local", QTYPE.AAAA)
    assert nodata is not None and nodata.rcode == SERVFAIL
    # Positive data already known is served (as CoreDNS does), but not cached.
    known = resolver.resolve("redis.default.svc.cluster.local", QTYPE.A)
    assert known is not None and known.rcode == NOERROR and not known.cacheable
    load(store)
    after = resolver.resolve("nope.default.svc.cluster.local", QTYPE.A)
    assert after is not None and after.rcode == NXDOMAIN and after.cacheable


# --- following changes --------------------------------------------------------------------------


def test_index_follows_service_and_endpoint_changes_and_reports_tags() -> None:
    store, resolver, _ = make_handler()
    web = service_from_dict(
        api_service(
            "default", "redis", clusterIP="10.97.97.98", ports=[{"name": "redis", "port": 6379}]
        )
    )
    services = dict(store.services)
    services[web.key] = web
    store.replace(SERVICES, services)
    check(
        resolver.resolve("redis.default.svc.cluster.local", QTYPE.A),
        NOERROR,
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.98",
    )
    check(
        resolver.resolve("97.97.97.10.in-addr.arpa", QTYPE.PTR),
        NXDOMAIN,
        "",
        soa_zone="in-addr.arpa",
    )
    del services[web.key]
    store.replace(SERVICES, services)
    check(resolver.resolve("redis.default.svc.cluster.local", QTYPE.A), NXDOMAIN, "")
    # Every name of a deleted service is gone, empty non-terminals and PTRs included.
    check(resolver.resolve("_tcp.redis.default.svc.cluster.local", QTYPE.A), NXDOMAIN, "")
    assert resolver.reverse.owners.get("10.97.97.98") is None
    check(
        resolver.resolve("97.97.10.in-addr.arpa", QTYPE.PTR), NXDOMAIN, "", soa_zone="in-addr.arpa"
    )


def test_records_are_memoised_per_service_and_dropped_on_change() -> None:
    store, resolver, _ = make_handler()
    first = resolver.service_records(("default", "redis"))
    assert resolver.service_records(("default", "redis")) is first
    redis = service_from_dict(api_service("default", "redis", clusterIP="10.97.97.99"))
    store.replace(SERVICES, {**store.services, redis.key: redis})
    again = resolver.service_records(("default", "redis"))
    assert again is not first and again is not None
    assert [r.value for r in again.forward["redis.default.svc"]] == ["10.97.97.99"]


def test_non_canonical_reverse_names_are_not_answered() -> None:
    # "097" is not how any address is written in a reverse name: no PTR, and no crash.
    answer = resolve("097.97.97.10.in-addr.arpa", "PTR")
    assert answer.rcode == NXDOMAIN
    answer = resolve("x.97.97.10.in-addr.arpa", "PTR")
    assert answer.rcode == NXDOMAIN


def test_a_cached_ptr_answer_follows_its_owners_changes_and_only_theirs() -> None:
    """A change tags only the addresses a Service gained or lost; a PTR answer also carries its
    owners' Service tags, so a kept address whose name changed is answered anew, and an
    address the change did not touch stays cached."""
    store, _, handler = make_handler()
    store.upsert(SERVICES, service_from_dict(api_service("big", "hl", clusterIP="None")))
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}]

    def endpoints(*entries: dict[str, Any]) -> None:
        slice_ = api_endpointslice("big", "hl", "hl-a", list(entries), ports)
        store.upsert(ENDPOINTSLICES, endpointslice_from_dict(slice_))

    def ptr(ip: str) -> tuple[int, str]:
        name = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
        reply = handler.handle(DNSRecord.question(name, "PTR").pack(), udp=False)
        assert isinstance(reply, tuple)
        parsed = DNSRecord.parse(reply[0])
        return parsed.header.rcode, " ".join(str(rr.rdata) for rr in parsed.rr)

    endpoints(api_endpoint("10.8.0.1", hostname="web-0"), api_endpoint("10.8.0.2"))
    assert ptr("10.8.0.1") == (NOERROR, "web-0.hl.big.svc.cluster.local.")
    assert ptr("10.8.0.2") == (NOERROR, "10-8-0-2.hl.big.svc.cluster.local.")
    assert ptr("10.8.0.3") == (NXDOMAIN, "")
    assert ptr("10.97.97.97") == (NOERROR, "redis.default.svc.cluster.local.")
    unrelated = handler.cache.entries.copy()  # the four PTR answers so far
    # 10.8.0.1 kept, with a new name; 10.8.0.3 gained; 10.8.0.2 lost.
    endpoints(api_endpoint("10.8.0.1", hostname="web-1"), api_endpoint("10.8.0.3"))
    assert ptr("10.8.0.1") == (NOERROR, "web-1.hl.big.svc.cluster.local.")
    assert ptr("10.8.0.3") == (NOERROR, "10-8-0-3.hl.big.svc.cluster.local.")
    assert ptr("10.8.0.2") == (NXDOMAIN, "")
    # Another Service's address, untouched by the change: its answer is still the one cached.
    # The three 10.8.0.x answers were dropped and built anew; 10.97.97.97's was kept.
    kept = [key for key, entry in unrelated.items() if handler.cache.entries.get(key) is entry]
    assert len(unrelated) == 4 and len(kept) == 1 and b"\x0297\x0297\x0297\x0210" in kept[0]

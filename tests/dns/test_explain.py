"""`explain`: one case per kind of name, over the example cluster and the DNS test cluster.

Each case states the outcome, the exact sequence of reason codes, a piece of the reason text
and the origin of each answer record — and checks that the explained answer is exactly what a
separate resolver over the same store answers (the server's answer), record for record.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from dnslib import QTYPE

from kdns.config import Config
from kdns.dns.explain import FORWARDED, NODATA, REFUSED, Explanation, explain, render
from kdns.dns.resolver import Answer, Resolver
from kdns.sources.static import ManifestSource
from kdns.store import KINDS, SERVICES, Store
from tests.dns import cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


@cache
def store_of(source: str) -> Store:
    store = Store(KINDS)
    if source == "examples":
        manifests = ManifestSource([str(EXAMPLES)], store)
        assert manifests.load() == []
        manifests.apply()
    else:
        cluster.load(store)
    return store


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    type: str
    outcome: str
    codes: list[str]
    text: str = ""  # a piece of the reasons' text
    origins: list[str] = field(default_factory=list)  # answer section, in order
    additional: list[str] = field(default_factory=list)
    source: str = "examples"
    pods: str = "insecure"
    upstreams: tuple[str, ...] = ()


CASES = [
    Case(
        "clusterip-a",
        "redis.default.svc.cluster.local",
        "A",
        "NOERROR",
        ["service"],
        "Service default/redis (ClusterIP 10.97.97.97; ports redis 6379/TCP)",
        ["Service default/redis spec.clusterIP"],
    ),
    Case(
        "single-stack-aaaa-nodata",
        "redis.default.svc.cluster.local",
        "AAAA",
        NODATA,
        ["service", "no-such-type"],
        "exists with A, SRV but no AAAA: NODATA (the Service's IP families: IPv4",
    ),
    Case(
        "dual-stack-aaaa",
        "api.prod.svc.cluster.local",
        "AAAA",
        "NOERROR",
        ["service"],
        "ClusterIP 10.96.50.50, fd00:10:96::50",
        ["Service prod/api spec.clusterIPs[1]"],
    ),
    Case(
        "headless-ready-and-not-ready",
        "myapp-headless.default.svc.cluster.local",
        "A",
        "NOERROR",
        ["service", "ready-endpoints", "not-ready-skipped"],
        "EndpointSlice default/myapp-headless-ipv4 endpoint 10.244.3.23 (not ready, Pod "
        "myapp-7d9f8c6b5-pqrst)",
        [
            "EndpointSlice default/myapp-headless-ipv4 endpoint 10.244.1.20 (ready, hostname "
            "web-0, Pod myapp-7d9f8c6b5-abcde)",
            "EndpointSlice default/myapp-headless-ipv4 endpoint 10.244.2.21 (ready, Pod "
            "myapp-7d9f8c6b5-fghij)",
            "EndpointSlice default/myapp-headless-ipv4 endpoint 10.244.3.22 (ready, Pod "
            "myapp-7d9f8c6b5-klmno)",
        ],
    ),
    Case(
        "headless-no-ready",
        "empty-hl.default.svc.cluster.local",
        "A",
        "NXDOMAIN",
        ["service", "headless-no-ready", "not-ready-skipped"],
        "EndpointSlice default/empty-hl-a endpoint 10.244.2.9 (not ready)",
        source="cluster",
    ),
    Case(
        "endpoint-hostname-a",
        "web-0.myapp-headless.default.svc.cluster.local",
        "A",
        "NOERROR",
        ["service", "endpoint-name"],
        "'web-0' is the name of a ready endpoint of the Service, by its hostname",
        [
            "EndpointSlice default/myapp-headless-ipv4 endpoint 10.244.1.20 (ready, hostname "
            "web-0, Pod myapp-7d9f8c6b5-abcde)"
        ],
    ),
    Case(
        "endpoint-dashed-ip-a",
        "10-244-1-10.redis.default.svc.cluster.local",
        "A",
        "NOERROR",
        ["service", "endpoint-name"],
        "by its IP with dashes (it has no hostname)",
        ["EndpointSlice default/redis-ipv4 endpoint 10.244.1.10 (ready, Pod redis-0)"],
    ),
    Case(
        "endpoint-not-ready",
        "10-244-2-31.api.prod.svc.cluster.local",
        "A",
        "NXDOMAIN",
        ["service", "endpoint-not-ready"],
        "EndpointSlice prod/api-ipv4 endpoint 10.244.2.31 (not ready)",
    ),
    Case(
        "hostname-shadows-dashed-ip",
        "10-244-1-20.myapp-headless.default.svc.cluster.local",
        "A",
        "NXDOMAIN",
        ["service", "hostname-shadows-ip"],
        "has hostname 'web-0'",
    ),
    Case(
        "srv-named-port",
        "_redis._tcp.redis.default.svc.cluster.local",
        "SRV",
        "NOERROR",
        ["service"],
        "redis 6379/TCP",
        ["Service default/redis spec.ports[0] (redis 6379/TCP)"],
        ["glue for redis.default.svc.cluster.local: Service default/redis spec.clusterIP"],
    ),
    Case(
        "srv-headless",
        "_http._tcp.hl.default.svc.cluster.local",
        "SRV",
        "NOERROR",
        ["service"],
        "headless",
        [
            "EndpointSlice default/hl-a endpoint 10.244.1.5 (ready, hostname web-0) port 8080",
            "EndpointSlice default/hl-a endpoint 10.244.1.6 (ready) port 8080",
        ],
        [
            "glue for web-0.hl.default.svc.cluster.local: EndpointSlice default/hl-a endpoint "
            "10.244.1.5 (ready, hostname web-0)",
            "glue for 10-244-1-6.hl.default.svc.cluster.local: EndpointSlice default/hl-a "
            "endpoint 10.244.1.6 (ready)",
        ],
        source="cluster",
    ),
    Case(
        "srv-unnamed-port",
        "_http._tcp.bare.default.svc.cluster.local",
        "SRV",
        "NXDOMAIN",
        ["service", "unnamed-port"],
        "port 8080/TCP has no name",
        source="cluster",
    ),
    Case(
        "srv-no-such-port",
        "_grpc._tcp.web.default.svc.cluster.local",
        "SRV",
        "NXDOMAIN",
        ["service", "no-such-port"],
        "named ports: dns 53/UDP, http 80/TCP",
        source="cluster",
    ),
    Case(
        "srv-wrong-protocol",
        "_http._udp.myapp.default.svc.cluster.local",
        "SRV",
        "NXDOMAIN",
        ["service", "wrong-protocol"],
        "port 'http' is TCP, not UDP",
    ),
    Case(
        "ptr-clusterip",
        "97.97.97.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        ["ptr-owner"],
        "10.97.97.97 → redis.default.svc.cluster.local",
        ["Service default/redis spec.clusterIP"],
    ),
    Case(
        "ptr-endpoint-of-two-services",
        "20.1.244.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        ["ptr-owner", "ptr-owner"],
        "10.244.1.20 → web-0.myapp-headless.default.svc.cluster.local",
        [
            "EndpointSlice default/myapp-ipv4 endpoint 10.244.1.20 (ready, Pod "
            "myapp-7d9f8c6b5-abcde) of Service default/myapp",
            "EndpointSlice default/myapp-headless-ipv4 endpoint 10.244.1.20 (ready, hostname "
            "web-0, Pod myapp-7d9f8c6b5-abcde) of Service default/myapp-headless",
        ],
    ),
    Case(
        "ptr-not-ready-endpoint",
        "31.2.244.10.in-addr.arpa",
        "PTR",
        "NXDOMAIN",
        ["no-ptr-owner"],
        "a not-ready endpoint of Service prod/api (no PTR)",
    ),
    Case(
        "ptr-empty-non-terminal",
        "97.10.in-addr.arpa",
        "PTR",
        NODATA,
        ["empty-non-terminal"],
        "part of the reverse name of an address",
    ),
    Case(
        "ptr-unknown-forwarded",
        "9.9.9.192.in-addr.arpa",
        "PTR",
        FORWARDED,
        ["no-ptr-owner", "forwarded"],
        "forwarded to upstream 10.0.0.2:53",
        upstreams=("10.0.0.2:53",),
    ),
    Case(
        "externalname-out-of-zone",
        "search.default.svc.cluster.local",
        "A",
        "NOERROR",
        ["service", "externalname"],
        "CNAME to www.example.com; the client's resolver follows it",
        ["Service default/search spec.externalName"],
    ),
    Case(
        "externalname-chased-in-zone",
        "cache.prod.svc.cluster.local",
        "A",
        "NOERROR",
        ["service", "externalname", "service"],
        "kdns follows it",
        ["Service prod/cache spec.externalName", "Service default/redis spec.clusterIP"],
    ),
    Case(
        "externalname-ip",
        "ext-ip.default.svc.cluster.local",
        "A",
        "NXDOMAIN",
        ["service", "externalname-ip"],
        "'192.0.2.55' is an IP address",
        source="cluster",
    ),
    Case(
        "pod-insecure",
        "10-244-1-10.default.pod.cluster.local",
        "A",
        "NOERROR",
        ["pod-insecure"],
        "pods insecure: the address 10.244.1.10 is read from the name",
        ["the name itself (pods insecure, namespace default)"],
    ),
    Case(
        "pod-insecure-aaaa-nodata",
        "10-244-1-10.default.pod.cluster.local",
        "AAAA",
        NODATA,
        ["pod-insecure", "no-such-type"],
        "10.244.1.10 is an IPv4 address; the name has no AAAA",
    ),
    Case(
        "pod-verified-found",
        "10-244-1-10.default.pod.cluster.local",
        "A",
        "NOERROR",
        ["pod-verified"],
        "Pod default/redis-0 (Running) has the address 10.244.1.10",
        ["Pod default/redis-0 (Running) status.podIPs (pods verified)"],
        pods="verified",
    ),
    Case(
        "pod-verified-not-found",
        "10-9-9-9.default.pod.cluster.local",
        "A",
        "NXDOMAIN",
        ["pod-not-found"],
        "no running Pod in namespace default has the address 10.9.9.9",
        pods="verified",
    ),
    Case(
        "pod-verified-finished",
        "10-244-9-9.default.pod.cluster.local",
        "A",
        "NXDOMAIN",
        ["pod-not-found"],
        "Pod default/done has it but is Succeeded",
        source="cluster",
        pods="verified",
    ),
    Case(
        "pod-verified-other-namespace",
        "10-244-1-10.prod.pod.cluster.local",
        "A",
        "NXDOMAIN",
        ["pod-not-found"],
        "Pod default/redis-0 has it, in another namespace",
        pods="verified",
    ),
    Case(
        "pods-disabled",
        "10-244-1-10.default.pod.cluster.local",
        "A",
        "NXDOMAIN",
        ["pods-disabled"],
        "config `pods: disabled`",
        pods="disabled",
    ),
    Case(
        "pod-label-not-an-ip",
        "redis-0.default.pod.cluster.local",
        "A",
        "NXDOMAIN",
        ["pod-not-ip"],
        "'redis-0' is not an IP address with dashes",
    ),
    Case(
        "no-namespace",
        "redis.nope.svc.cluster.local",
        "A",
        "NXDOMAIN",
        ["no-namespace"],
        "no namespace 'nope'",
    ),
    Case(
        "no-namespace-close-match",
        "redis.prd.svc.cluster.local",
        "A",
        "NXDOMAIN",
        ["no-namespace"],
        "no namespace 'prd' (did you mean prod?)",
    ),
    Case(
        "no-service",
        "reddis.default.svc.cluster.local",
        "A",
        "NXDOMAIN",
        ["no-service"],
        "no Service 'reddis' in namespace default (did you mean redis?)",
    ),
    Case(
        "namespace-empty-non-terminal",
        "prod.svc.cluster.local",
        "A",
        NODATA,
        ["empty-non-terminal"],
        "namespace prod exists",
    ),
    Case(
        "srv-empty-non-terminal",
        "_tcp.redis.default.svc.cluster.local",
        "A",
        NODATA,
        ["service", "empty-non-terminal"],
        "names below it exist (_redis._tcp.redis.default.svc.cluster.local)",
    ),
    Case(
        "unknown-first-label",
        "foo.cluster.local",
        "A",
        "NXDOMAIN",
        ["unknown-name"],
        "foo.cluster.local is not a name kdns serves (under cluster.local: svc, pod",
    ),
    Case(
        "dns-version",
        "dns-version.cluster.local",
        "TXT",
        "NOERROR",
        ["dns-version"],
        "1.1.0",
        ["the Kubernetes DNS schema version (spec 2.1)"],
    ),
    Case(
        "apex-ns-kube-dns",
        "cluster.local",
        "NS",
        "NOERROR",
        ["apex"],
        "zone apex",
        ["the cluster DNS Service kube-system/kube-dns"],
        [
            "glue for the nameserver kube-dns.kube-system.svc.cluster.local: the cluster DNS "
            "Service kube-system/kube-dns"
        ],
        source="cluster",
    ),
    Case(
        "out-of-zone-forwarded",
        "example.com",
        "A",
        FORWARDED,
        ["out-of-zone", "forwarded"],
        "forwarded to upstream 10.0.0.2:53",
        upstreams=("10.0.0.2:53",),
    ),
    Case(
        "out-of-zone-refused",
        "example.com",
        "A",
        REFUSED,
        ["out-of-zone", "refused"],
        "in none of kdns's zones (cluster.local, in-addr.arpa, ip6.arpa)",
    ),
    Case(
        "zone-transfer-refused",
        "cluster.local",
        "AXFR",
        REFUSED,
        ["transfer-refused"],
        "zone transfers are not offered",
    ),
]


def resolver_for(store: Store, case: Case) -> Resolver:
    return Resolver(
        store, Config().with_overrides(pods=case.pods), reverse_fallthrough=bool(case.upstreams)
    )


def sections(answer: Answer | None) -> object:
    if answer is None:
        return None
    return (
        answer.rcode,
        [str(rr) for rr in answer.answer],
        [str(rr) for rr in answer.authority],
        [str(rr) for rr in answer.additional],
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_explain(case: Case) -> None:
    store = store_of(case.source)
    qtype = getattr(QTYPE, case.type)
    got = explain(resolver_for(store, case), case.name, qtype, case.upstreams)
    assert got.outcome == case.outcome, render(got)
    assert got.codes == case.codes, render(got)
    assert case.text in " | ".join(r.text for r in got.reasons), render(got)
    assert got.origins("answer") == case.origins, render(got)
    assert got.origins("additional") == case.additional, render(got)
    # The explained answer is the server's: a separate resolver over the same store agrees.
    served = resolver_for(store, case).resolve(case.name, qtype)
    if case.outcome in (FORWARDED, REFUSED):
        assert got.answer is None
        assert served is None or qtype == QTYPE.AXFR
        return
    assert sections(got.answer) == sections(served)
    assert got.rcode == served.rcode and got.authoritative
    assert [s.rr for s in got.records] == [*served.answer, *served.authority, *served.additional]
    assert "?" not in [s.origin for s in got.records], render(got)
    # NXDOMAIN and NODATA carry the zone's SOA, and it is explained too.
    if not served.answer:
        assert got.origins("authority") == [
            f"the SOA of zone {got.zone} (synthesised; serial = the time of the last change)"
        ]


def test_every_kind_of_outcome_is_covered() -> None:
    assert {c.outcome for c in CASES} == {"NOERROR", NODATA, "NXDOMAIN", FORWARDED, REFUSED}


def test_unsynced_store_servfail() -> None:
    store = Store(KINDS)
    cluster.load(store)
    half = Store(KINDS)
    half.replace(SERVICES, store.services)  # services listed, the other kinds not yet
    resolver = Resolver(half, Config())
    got = explain(resolver, "nope.default.svc.cluster.local", QTYPE.A)
    assert got.outcome == "SERVFAIL" and got.rcode == 2
    assert got.codes == ["no-service", "unsynced"]
    assert "waiting for: endpointslices, namespaces, pods" in got.reasons[-1].text
    assert sections(got.answer) == sections(resolver.resolve("nope.default.svc.cluster.local", 1))
    # A name that exists still answers from what is known.
    ok = explain(resolver, "redis.default.svc.cluster.local", QTYPE.A)
    assert ok.outcome == "NOERROR" and ok.codes == [
        "service",
        "clusterip-without-ready",
        "unsynced",
    ]


def test_render_is_dig_like() -> None:
    store = store_of("examples")
    got = explain(Resolver(store, Config()), "redis.default.svc.cluster.local", QTYPE.A)
    text = render(got)
    assert text.splitlines()[:5] == [
        ";; QUESTION: redis.default.svc.cluster.local. IN A",
        ";; zone cluster.local; status: NOERROR, flags: qr aa; answer: 1, authority: 0, "
        "additional: 0",
        "",
        ";; ANSWER SECTION:",
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97  ← Service default/redis "
        "spec.clusterIP",
    ]
    assert text.endswith(
        ";; WHY:\n- Service default/redis (ClusterIP 10.97.97.97; ports redis 6379/TCP)"
    )


def test_explanation_type() -> None:
    store = store_of("examples")
    got = explain(Resolver(store, Config()), "REDIS.Default.svc.cluster.local.", QTYPE.A)
    assert isinstance(got, Explanation)
    assert got.qname == "redis.default.svc.cluster.local"
    assert got.outcome == "NOERROR"


def every_name(store: Store, resolver: Resolver) -> list[str]:
    """Every name the store gives a record, its empty non-terminals, and near misses."""
    names = {"cluster.local", "svc.cluster.local", "pod.cluster.local", "in-addr.arpa"}
    names |= {"dns-version.cluster.local", "ns.dns.cluster.local", "foo.cluster.local"}
    for key in store.services:
        records = resolver.service_records(key)
        assert records is not None
        for name in (*records.forward, *records.ents):
            names.add(f"{name}.cluster.local")
            names.add(f"x.{name}.cluster.local")
        names |= set(records.reverse)
        names |= {".".join(n.split(".")[2:]) for n in records.reverse}  # reverse ENTs
        names.add(f"{key[0]}.svc.cluster.local")
    for pod in store.pods.values():
        for ip in pod.ips:
            label = ip.replace(".", "-").replace(":", "-")
            names.add(f"{label}.{pod.namespace}.pod.cluster.local")
            names.add(f"{label}.nope.pod.cluster.local")
            names.add(ipaddress.ip_address(ip).reverse_pointer)
    return sorted(names)


SWEEP_TYPES = ("A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "NS", "SOA", "MX", "ANY")


@pytest.mark.parametrize("source", ["examples", "cluster"])
@pytest.mark.parametrize("pods", ["insecure", "verified", "disabled"])
def test_every_name_and_type_is_explained(source: str, pods: str) -> None:
    """No name of the cluster, in any type, leaves a record without an origin or an answer
    other than the resolver's; and every negative answer has a reason that says why."""
    store = store_of(source)
    config = Config().with_overrides(pods=pods)
    names = every_name(store, Resolver(store, config))
    assert len(names) > 40
    for name in names:
        for rtype in SWEEP_TYPES:
            qtype = getattr(QTYPE, rtype)
            got = explain(Resolver(store, config), name, qtype)
            served = Resolver(store, config).resolve(name, qtype)
            assert sections(got.answer) == sections(served), (name, rtype)
            assert "?" not in [s.origin for s in got.records], (name, rtype, render(got))
            assert got.reasons, (name, rtype)
            if got.outcome in ("NXDOMAIN", NODATA):
                assert set(got.codes) - {"service", "unsynced"}, (name, rtype, render(got))


def test_explain_shows_the_chase_through_the_upstreams() -> None:
    # With an upstream for the target, the server answers the CNAME and then the target's
    # records from the upstream (issue 10); explain says so and where it asks.
    store = store_of("examples")
    resolver = Resolver(store, Config())
    got = explain(
        resolver,
        "search.default.svc.cluster.local",
        QTYPE.A,
        ("10.0.0.2:53",),
        lambda name: ("10.0.0.3:53",) if name == "www.example.com" else (),
    )
    assert got.outcome == "NOERROR"
    assert got.codes == ["service", "externalname", "chase-upstream"], render(got)
    assert "kdns resolves www.example.com A through upstream 10.0.0.3:53" in render(got)
    assert got.origins("answer") == ["Service default/search spec.externalName"]


def test_explain_names_a_cname_loop() -> None:
    store = Store(KINDS)
    cluster.load(
        store,
        [
            cluster.svc(
                "default",
                "ping",
                type="ExternalName",
                externalName="pong.default.svc.cluster.local",
            ),
            cluster.svc(
                "default",
                "pong",
                type="ExternalName",
                externalName="ping.default.svc.cluster.local",
            ),
        ],
    )
    got = explain(Resolver(store, Config()), "ping.default.svc.cluster.local", QTYPE.A)
    assert got.outcome == "SERVFAIL"
    assert got.codes[-1] == "cname-loop", render(got)
    assert got.records == []

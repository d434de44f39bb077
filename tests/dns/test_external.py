"""CoreDNS's k8s_external: Services' LoadBalancer ingress IPs and externalIPs under an outside
zone, SOA and NS at its apex, as plugin/k8s_external's README documents (answers as zone text)."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE

from kdns.config import Config
from kdns.dns.explain import explain, render
from kdns.dns.resolver import Resolver
from kdns.model import service_from_dict
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store
from tests.dns.cluster import rrset, svc, zone

NOERROR, NXDOMAIN = RCODE.NOERROR, RCODE.NXDOMAIN
SOA = "example.org. 5 SOA ns1.dns.example.org. hostmaster.example.org. 12345 14400 3600 604800 5"


def lb(ns: str, name: str, ingress: list[str], **spec: object) -> dict[str, object]:
    obj = svc(ns, name, type="LoadBalancer", **spec)
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    return obj


SERVICES_ = [
    lb(
        "shop",
        "web",
        ["192.0.2.10", "2001:db8::10"],
        clusterIP="10.96.0.5",
        ports=[{"name": "https", "port": 443, "nodePort": 30443}],
        externalIPs=["198.51.100.7"],
    ),
    svc("shop", "inner", clusterIP="10.96.0.6", ports=[{"name": "http", "port": 80}]),
    lb("kube-system", "kube-dns", ["192.0.2.53"], clusterIP="10.96.0.10", ports=[{"port": 53}]),
]


def resolver(**dns: object) -> Resolver:
    config = Config().with_overrides(
        **{"dns.external_zones": ("example.org",)}, **{f"dns.{k}": v for k, v in dns.items()}
    )
    store = Store()
    services = [service_from_dict(s) for s in SERVICES_]
    store.replace(SERVICES, {s.key: s for s in services})
    store.replace(NAMESPACES, {})
    store.replace(ENDPOINTSLICES, {})
    store.replace(PODS, {})
    return Resolver(store, config)


TABLE = [
    (
        "web.shop.example.org",
        "A",
        NOERROR,
        "web.shop.example.org. 5 A 192.0.2.10\nweb.shop.example.org. 5 A 198.51.100.7",
        "",
    ),
    ("web.shop.example.org", "AAAA", NOERROR, "web.shop.example.org. 5 AAAA 2001:db8::10", ""),
    (
        "_https._tcp.web.shop.example.org",
        "SRV",
        NOERROR,
        "_https._tcp.web.shop.example.org. 5 SRV 0 100 443 web.shop.example.org.",
        "web.shop.example.org. 5 A 192.0.2.10\nweb.shop.example.org. 5 A 198.51.100.7\n"
        "web.shop.example.org. 5 AAAA 2001:db8::10",
    ),
    # Only A, AAAA and SRV: another type at a name that exists is NODATA.
    ("web.shop.example.org", "TXT", NOERROR, "", ""),
    ("_tcp.web.shop.example.org", "SRV", NOERROR, "", ""),  # empty non-terminal
    # A Service with no outside address has no name here; nor has one that does not exist.
    ("inner.shop.example.org", "A", NXDOMAIN, "", ""),
    ("nope.shop.example.org", "A", NXDOMAIN, "", ""),
    ("web.shop.svc.example.org", "A", NXDOMAIN, "", ""),
    # The namespace holds names: an empty non-terminal. An unknown one does not.
    ("shop.example.org", "A", NOERROR, "", ""),
    ("other.example.org", "A", NXDOMAIN, "", ""),
    # The apex: SOA, NS ns1.dns.ZONE with the DNS Service's own outside address as glue.
    ("example.org", "SOA", NOERROR, SOA, ""),
    (
        "example.org",
        "NS",
        NOERROR,
        "example.org. 5 NS ns1.dns.example.org.",
        "ns1.dns.example.org. 5 A 192.0.2.53",
    ),
    ("example.org", "A", NOERROR, "", ""),
    ("ns1.dns.example.org", "A", NOERROR, "ns1.dns.example.org. 5 A 192.0.2.53", ""),
    ("ns1.dns.example.org", "AAAA", NOERROR, "", ""),
    ("dns.example.org", "A", NOERROR, "", ""),
    ("ns2.dns.example.org", "A", NXDOMAIN, "", ""),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "records", "additional"), TABLE)
def test_external_zone(qname: str, qtype: str, rcode: int, records: str, additional: str) -> None:
    answer = resolver().resolve(qname, getattr(QTYPE, qtype))
    assert answer is not None
    assert answer.rcode == rcode, RCODE.get(answer.rcode)
    assert rrset(answer.answer) == zone(records)
    assert rrset(answer.additional) == zone(additional)
    if not records:
        assert rrset(answer.authority) == zone(SOA)
    else:
        assert answer.authority == []


def test_apex_and_ttl_options() -> None:
    r = resolver(external_apex="ns", external_ttl=60)
    answer = r.resolve("example.org", QTYPE.NS)
    assert answer is not None
    assert rrset(answer.answer) == zone("example.org. 60 NS ns1.ns.example.org.")
    assert rrset(answer.additional) == zone("ns1.ns.example.org. 60 A 192.0.2.53")
    answer = r.resolve("web.shop.example.org", QTYPE.AAAA)
    assert answer is not None
    assert rrset(answer.answer) == zone("web.shop.example.org. 60 AAAA 2001:db8::10")


def test_cluster_zone_is_unchanged_beside_an_external_zone() -> None:
    answer = resolver().resolve("web.shop.svc.cluster.local", QTYPE.A)
    assert answer is not None
    assert rrset(answer.answer) == zone("web.shop.svc.cluster.local. 5 A 10.96.0.5")


def test_explain_names_the_service_field_behind_each_address() -> None:
    text = render(explain(resolver(), "web.shop.example.org", QTYPE.A))
    assert "192.0.2.10  ← Service shop/web status.loadBalancer.ingress" in text
    assert "198.51.100.7  ← Service shop/web spec.externalIPs" in text
    got = explain(resolver(), "inner.shop.example.org", QTYPE.A)
    assert got.outcome == "NXDOMAIN" and got.codes == ["no-outside-address"]

"""The distro Corefiles of data/, translated and served in-process: the same questions get the
answers CoreDNS documents for that Corefile (zone text). The cluster is tests/dns/cluster.py's;
no upstream is configured here, so only what the Corefile answers itself is asked (names that
would be forwarded are covered by test_plugins_serve.py with a real dnsmasq)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from kdns.corefile.load import corefile_config, load_corefile
from kdns.dns.handler import Handler
from kdns.dns.plugins import Plugins
from kdns.dns.resolver import Resolver
from kdns.sources.static import ManifestSource
from kdns.store import Store
from tests.corefile.test_translate import DATA, distro
from tests.dns.cluster import load, rrset, zone

NOERROR, NXDOMAIN = RCODE.NOERROR, RCODE.NXDOMAIN
NODE_HOSTS = (DATA / "k3s.NodeHosts").read_text()
# k3s with its coredns-custom folder; AKS without one (its default: the templates answer).
CLUSTERSET = Path(__file__).parents[1] / "dns" / "data" / "clusterset.yaml"
LB = DATA / "loadbalancer.yaml"
CUSTOM = {"k3s.Corefile": "k3s-custom"}


def handler(name: str) -> Handler:
    config = corefile_config(distro(name, CUSTOM.get(name)), str(DATA / name))
    store = Store()
    load(store)
    resolver = Resolver(store, config)
    plugins = Plugins.from_config(config, NODE_HOSTS if config.hosts.enabled else "")
    return Handler(resolver, plugins=plugins, fallthrough=config.dns.fallthrough)


def cluster_rows(ttl: int) -> list[tuple[str, str, int, str]]:
    """What every distro default answers from the cluster: `kubernetes cluster.local in-addr.arpa
    ip6.arpa { pods insecure }` with the Corefile's ttl (CoreDNS's default 5)."""
    return [
        (
            "redis.default.svc.cluster.local",
            "A",
            NOERROR,
            f"redis.default.svc.cluster.local. {ttl} A 10.97.97.97",
        ),
        (
            "_redis._tcp.redis.default.svc.cluster.local",
            "SRV",
            NOERROR,
            f"_redis._tcp.redis.default.svc.cluster.local. {ttl} SRV 0 100 6379 "
            "redis.default.svc.cluster.local.",
        ),
        (
            "hl.default.svc.cluster.local",
            "A",
            NOERROR,
            f"hl.default.svc.cluster.local. {ttl} A 10.244.1.5\n"
            f"hl.default.svc.cluster.local. {ttl} A 10.244.1.6",
        ),
        (
            "web-0.hl.default.svc.cluster.local",
            "A",
            NOERROR,
            f"web-0.hl.default.svc.cluster.local. {ttl} A 10.244.1.5",
        ),
        ("nope.default.svc.cluster.local", "A", NXDOMAIN, ""),
        # pods insecure: any address-shaped name in an existing namespace.
        (
            "10-1-2-3.default.pod.cluster.local",
            "A",
            NOERROR,
            f"10-1-2-3.default.pod.cluster.local. {ttl} A 10.1.2.3",
        ),
        (
            "97.97.97.10.in-addr.arpa",
            "PTR",
            NOERROR,
            f"97.97.97.10.in-addr.arpa. {ttl} PTR redis.default.svc.cluster.local.",
        ),
        (
            "dns-version.cluster.local",
            "TXT",
            NOERROR,
            'dns-version.cluster.local. 28800 TXT "1.1.0"',
        ),
    ]


TABLES = {
    "kubeadm.Corefile": cluster_rows(30),
    "eks.Corefile": cluster_rows(5),
    "rke2.Corefile": cluster_rows(30),
    "aks.Corefile": [
        *cluster_rows(30),
        # AKS's templates: search-path junk under internal.cloudapp.net (4+ labels) and all
        # of reddog.microsoft.com are NXDOMAIN at once, never forwarded.
        ("a.b.c.d.internal.cloudapp.net", "A", NXDOMAIN, ""),
        ("x.reddog.microsoft.com", "AAAA", NXDOMAIN, ""),
    ],
    "k3s.Corefile": [
        *cluster_rows(5),
        # k3s's NodeHosts through `hosts { ttl 60 }`, before the cluster zones.
        ("k3s-server", "A", NOERROR, "k3s-server. 60 A 172.18.0.2"),
        ("k3s-agent-1", "A", NOERROR, "k3s-agent-1. 60 A 172.18.0.3"),
        ("2.0.18.172.in-addr.arpa", "PTR", NOERROR, "2.0.18.172.in-addr.arpa. 60 PTR k3s-server."),
    ],
}

CASES = [
    pytest.param(name, qname, qtype, rcode, records, id=f"{name}:{qname}:{qtype}")
    for name, rows in TABLES.items()
    for qname, qtype, rcode, records in rows
]


@pytest.mark.parametrize(("corefile", "qname", "qtype", "rcode", "records"), CASES)
def test_distro_corefile_answers(
    corefile: str, qname: str, qtype: str, rcode: int, records: str
) -> None:
    reply = handler(corefile).handle(bytes(DNSRecord.question(qname, qtype).pack()), True)
    assert isinstance(reply, tuple)
    got = DNSRecord.parse(reply[0])
    assert got.header.rcode == rcode, RCODE.get(got.header.rcode)
    assert rrset(got.rr) == zone(records)


MULTICLUSTER = """\
.:53 {
    kubernetes cluster.local clusterset.local in-addr.arpa ip6.arpa {
       pods insecure
       multicluster clusterset.local
       fallthrough in-addr.arpa ip6.arpa
    }
    k8s_external example.org {
       ttl 60
    }
}
"""


def test_a_corefile_with_multicluster_and_k8s_external(tmp_path: Path) -> None:
    """`kdns serve --corefile` of a cluster in a clusterset that also publishes its
    LoadBalancers: clusterset names from the ServiceImports, outside names from the Services."""
    corefile = tmp_path / "Corefile"
    corefile.write_text(MULTICLUSTER)
    config, translation = load_corefile(str(corefile), {})
    assert translation.refused == ()
    store = Store()
    source = ManifestSource([str(CLUSTERSET), str(LB)], store)
    assert source.load() == []
    source.apply()
    h = Handler(Resolver(store, config), fallthrough=config.dns.fallthrough)

    def ask(qname: str, qtype: str) -> DNSRecord:
        reply = h.handle(bytes(DNSRecord.question(qname, qtype).pack()), True)
        assert isinstance(reply, tuple)
        return DNSRecord.parse(reply[0])

    assert rrset(ask("web.shop.svc.clusterset.local", "A").rr) == zone(
        "web.shop.svc.clusterset.local. 5 A 10.42.42.42"
    )
    assert rrset(ask("db-0.west.db.shop.svc.clusterset.local", "A").rr) == zone(
        "db-0.west.db.shop.svc.clusterset.local. 5 A 10.2.0.5"
    )
    assert rrset(ask("web.shop.svc.cluster.local", "A").rr) == zone(
        "web.shop.svc.cluster.local. 5 A 10.96.7.7"
    )
    assert rrset(ask("edge.shop.example.org", "A").rr) == zone(
        "edge.shop.example.org. 60 A 192.0.2.80"
    )
    assert ask("web.shop.example.org", "A").header.rcode == NXDOMAIN  # no outside address

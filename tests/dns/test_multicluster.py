"""Multicluster DNS (KEP-1645 specification, CoreDNS's kubernetes `multicluster` option).

The cluster comes from a manifest file (tests/dns/data/clusterset.yaml) read by the manifest
source, so the ServiceImport and imported-EndpointSlice reading is on the path too. Answers are
compared as zone-file text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE

from kdns.config import Config
from kdns.dns.explain import explain, render
from kdns.dns.resolver import Answer, Resolver
from kdns.model import ImportSlice, ServiceImport
from kdns.sources.static import ManifestSource
from kdns.store import IMPORTSLICES, SERVICEIMPORTS, Store
from tests.dns.cluster import rrset, zone

DATA = Path(__file__).parent / "data" / "clusterset.yaml"
NOERROR, NXDOMAIN = RCODE.NOERROR, RCODE.NXDOMAIN
CS = "clusterset.local"


def cluster(**dns: object) -> tuple[Store, Resolver]:
    config = Config().with_overrides(
        **{"dns.zones": ("cluster.local", CS), "dns.multicluster": (CS,)},
        **{f"dns.{k}": v for k, v in dns.items()},
    )
    store = Store()
    source = ManifestSource([str(DATA)], store)
    assert source.load() == []
    source.apply()
    return store, Resolver(store, config)


def ask(resolver: Resolver, qname: str, qtype: str) -> Answer:
    answer = resolver.resolve(qname, getattr(QTYPE, qtype))
    assert answer is not None
    return answer


TABLE = [
    # spec 2.3.1: the ClusterSetIPs.
    (
        "web.shop.svc.clusterset.local",
        "A",
        NOERROR,
        "web.shop.svc.clusterset.local. 5 A 10.42.42.42",
        "",
    ),
    (
        "web.shop.svc.clusterset.local",
        "AAAA",
        NOERROR,
        "web.shop.svc.clusterset.local. 5 AAAA fd00:42::42",
        "",
    ),
    # spec 2.3.2: SRV per named port, the import's own name as target, its address as glue.
    (
        "_http._tcp.web.shop.svc.clusterset.local",
        "SRV",
        NOERROR,
        "_http._tcp.web.shop.svc.clusterset.local. 5 SRV 0 100 80 web.shop.svc.clusterset.local.",
        "web.shop.svc.clusterset.local. 5 A 10.42.42.42\n"
        "web.shop.svc.clusterset.local. 5 AAAA fd00:42::42",
    ),
    (
        "_dns._udp.web.shop.svc.clusterset.local",
        "SRV",
        NOERROR,
        "_dns._udp.web.shop.svc.clusterset.local. 5 SRV 0 100 53 web.shop.svc.clusterset.local.",
        "web.shop.svc.clusterset.local. 5 A 10.42.42.42\n"
        "web.shop.svc.clusterset.local. 5 AAAA fd00:42::42",
    ),
    ("_tcp.web.shop.svc.clusterset.local", "SRV", NOERROR, "", ""),  # empty non-terminal
    ("_https._tcp.web.shop.svc.clusterset.local", "SRV", NXDOMAIN, "", ""),
    # spec 2.3.4: nothing singles out one cluster of a ClusterSetIP import.
    ("east.web.shop.svc.clusterset.local", "A", NXDOMAIN, "", ""),
    # spec 2.4.1: a headless import gives every ready endpoint of every cluster.
    (
        "db.shop.svc.clusterset.local",
        "A",
        NOERROR,
        "db.shop.svc.clusterset.local. 5 A 10.1.0.5\n"
        "db.shop.svc.clusterset.local. 5 A 10.1.0.6\n"
        "db.shop.svc.clusterset.local. 5 A 10.2.0.5",
        "",
    ),
    ("db.shop.svc.clusterset.local", "AAAA", NOERROR, "", ""),
    # ... and hostname.clusterid names: one hostname in two clusters is two names.
    (
        "db-0.east.db.shop.svc.clusterset.local",
        "A",
        NOERROR,
        "db-0.east.db.shop.svc.clusterset.local. 5 A 10.1.0.5",
        "",
    ),
    (
        "db-0.west.db.shop.svc.clusterset.local",
        "A",
        NOERROR,
        "db-0.west.db.shop.svc.clusterset.local. 5 A 10.2.0.5",
        "",
    ),
    (
        "10-1-0-6.east.db.shop.svc.clusterset.local",
        "A",
        NOERROR,
        "10-1-0-6.east.db.shop.svc.clusterset.local. 5 A 10.1.0.6",
        "",
    ),
    # Not ready: no name. Without the cluster id: no name (CoreDNS: NXDOMAIN).
    ("db-2.east.db.shop.svc.clusterset.local", "A", NXDOMAIN, "", ""),
    ("db-0.db.shop.svc.clusterset.local", "A", NXDOMAIN, "", ""),
    # spec 2.4.4: the cluster alone is no name.
    ("east.db.shop.svc.clusterset.local", "A", NXDOMAIN, "", ""),
    # spec 2.4.2: N ready endpoints x M named ports, targets carry the cluster id.
    (
        "_pg._tcp.db.shop.svc.clusterset.local",
        "SRV",
        NOERROR,
        "_pg._tcp.db.shop.svc.clusterset.local. 5 SRV 0 33 5432 db-0.east.db.shop.svc.clusterset.local.\n"
        "_pg._tcp.db.shop.svc.clusterset.local. 5 SRV 0 33 5432 10-1-0-6.east.db.shop.svc.clusterset.local.\n"
        "_pg._tcp.db.shop.svc.clusterset.local. 5 SRV 0 33 5432 db-0.west.db.shop.svc.clusterset.local.",
        "db-0.east.db.shop.svc.clusterset.local. 5 A 10.1.0.5\n"
        "10-1-0-6.east.db.shop.svc.clusterset.local. 5 A 10.1.0.6\n"
        "db-0.west.db.shop.svc.clusterset.local. 5 A 10.2.0.5",
    ),
    # spec 2.4.1: a headless import with no ready endpoint does not exist.
    ("idle.shop.svc.clusterset.local", "A", NXDOMAIN, "", ""),
    # An import that does not exist; a local Service never answers in the clusterset zone.
    ("nope.shop.svc.clusterset.local", "A", NXDOMAIN, "", ""),
    # ... and an import never answers in the cluster zone.
    ("web.shop.svc.cluster.local", "A", NOERROR, "web.shop.svc.cluster.local. 5 A 10.96.7.7", ""),
    ("db.shop.svc.cluster.local", "A", NXDOMAIN, "", ""),
    # dns-version: CoreDNS answers 1.1.0 in every zone of the plugin (the KEP says 1.0.0).
    (
        "dns-version.clusterset.local",
        "TXT",
        NOERROR,
        'dns-version.clusterset.local. 28800 TXT "1.1.0"',
        "",
    ),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "records", "additional"), TABLE)
def test_clusterset_names(
    qname: str, qtype: str, rcode: int, records: str, additional: str
) -> None:
    _, resolver = cluster()
    answer = ask(resolver, qname, qtype)
    assert answer.rcode == rcode, RCODE.get(answer.rcode)
    assert rrset(answer.answer) == zone(records)
    assert rrset(answer.additional) == zone(additional)
    if not records:
        soa_zone = CS if qname.endswith(CS) else "cluster.local"
        assert [(str(rr.rname), rr.rtype) for rr in answer.authority] == [
            (soa_zone + ".", QTYPE.SOA)
        ]


def test_without_the_option_clusterset_names_are_not_imports() -> None:
    config = Config().with_overrides(**{"dns.zones": ("cluster.local", CS)})
    store, _ = cluster()
    answer = Resolver(store, config).resolve("db.shop.svc.clusterset.local", QTYPE.A)
    assert answer is not None and answer.rcode == NXDOMAIN


def test_noendpoints_drops_imported_endpoints() -> None:
    _, resolver = cluster(noendpoints=True)
    assert ask(resolver, "db.shop.svc.clusterset.local", "A").rcode == NXDOMAIN
    assert ask(resolver, "web.shop.svc.clusterset.local", "A").answer


def test_import_changes_reach_the_answers_and_name_their_tags() -> None:
    store, resolver = cluster()
    assert ask(resolver, "web.shop.svc.clusterset.local", "A").answer  # memoised now
    tags: set[tuple[str, ...]] = set()
    store.subscribe(lambda change: tags.update(resolver.apply(change)))
    store.upsert(SERVICEIMPORTS, ServiceImport("shop", "web", ips=("10.42.0.1",)))
    assert ("import", "shop", "web") in tags
    answer = ask(resolver, "web.shop.svc.clusterset.local", "A")
    assert rrset(answer.answer) == zone("web.shop.svc.clusterset.local. 5 A 10.42.0.1")
    # A slice deleted: its cluster's endpoints go.
    tags.clear()
    store.delete(IMPORTSLICES, ("shop", "db-west"))
    assert ("import", "shop", "db") in tags
    answer = ask(resolver, "db-0.west.db.shop.svc.clusterset.local", "A")
    assert answer.rcode == NXDOMAIN
    assert isinstance(store.import_slices[("shop", "db")][0], ImportSlice)


def test_explain_names_the_serviceimport_and_cluster_behind_each_record() -> None:
    _, resolver = cluster()
    got = explain(resolver, "_pg._tcp.db.shop.svc.clusterset.local", QTYPE.SRV)
    assert got.outcome == "NOERROR" and got.codes == ["import"]
    assert "endpoints from clusters east, west" in got.reasons[0].text
    text = render(got)
    assert "← ServiceImport shop/db port 5432" in text
    assert "db-0.west.db.shop.svc.clusterset.local. 5 IN A 10.2.0.5  ← glue for" in text
    got = explain(resolver, "db-0.west.db.shop.svc.clusterset.local", QTYPE.A)
    assert "an endpoint imported from cluster west" in render(got)
    got = explain(resolver, "nope.shop.svc.clusterset.local", QTYPE.A)
    assert got.outcome == "NXDOMAIN" and got.codes == ["no-import"]


def test_a_multicluster_zone_is_served_even_when_zones_leave_it_out() -> None:
    config = Config().with_overrides(**{"dns.multicluster": (CS,)})
    store, _ = cluster()
    answer = Resolver(store, config).resolve("web.shop.svc.clusterset.local", QTYPE.A)
    assert answer is not None
    assert rrset(answer.answer) == zone("web.shop.svc.clusterset.local. 5 A 10.42.42.42")

"""records.py: endpoint names, reverse names, per-service records and the incremental index."""

from __future__ import annotations

import pytest

from kdns.dns.records import (
    PTR,
    SRV,
    Record,
    RecordIndex,
    dashed,
    reverse_name,
    service_records,
)
from kdns.model import Endpoint, EndpointPort, endpointslice_from_dict, service_from_dict
from tests.dns.cluster import ep, eps, svc


@pytest.mark.parametrize(
    ("ip", "label"),
    [
        ("10.1.2.3", "10-1-2-3"),
        ("2001:db8::1", "2001-db8--1"),
        # CoreDNS's endpointHostname: a trailing "-" gets a 0 so the label is a valid hostname.
        ("fd00:6666::", "fd00-6666--0"),
        ("::1", "0--1"),
    ],
)
def test_dashed(ip: str, label: str) -> None:
    assert dashed(ip) == label


@pytest.mark.parametrize(
    ("ip", "name"),
    [
        ("10.97.97.97", "97.97.97.10.in-addr.arpa"),
        ("fd00::1", "1.0.0.0." + "0.0.0.0." * 6 + "0.0.d.f.ip6.arpa"),
    ],
)
def test_reverse_name(ip: str, name: str) -> None:
    assert reverse_name(ip) == name


def _headless(endpoints: list[Endpoint]) -> tuple[Endpoint, ...]:
    return tuple(endpoints)


def test_srv_records_with_the_same_target_and_port_are_merged() -> None:
    # Two endpoints sharing one hostname give one SRV (CoreDNS, row 7), and the weight counts
    # the records that remain.
    service = service_from_dict(svc("ns", "db", clusterIP="None"))
    port = (EndpointPort("pg", "TCP", 5432),)
    records = service_records(
        service,
        (
            Endpoint("10.0.0.1", hostname="db-0", ports=port),
            Endpoint("10.0.0.2", hostname="db-0", ports=port),
            Endpoint("10.0.0.3", hostname="db-1", ports=port),
        ),
    )
    assert records.forward["_pg._tcp.db.ns.svc"] == (
        Record(SRV, "db-0.db.ns.svc", 5432, 0, 50, in_zone=True),
        Record(SRV, "db-1.db.ns.svc", 5432, 0, 50, in_zone=True),
    )
    assert {r.value for r in records.forward["db-0.db.ns.svc"]} == {"10.0.0.1", "10.0.0.2"}


def test_headless_endpoint_without_ports_has_addresses_but_no_srv() -> None:
    service = service_from_dict(svc("ns", "db", clusterIP="None"))
    records = service_records(service, (Endpoint("10.0.0.1"),))
    assert [r.value for r in records.forward["db.ns.svc"]] == ["10.0.0.1"]
    assert not any(name.startswith("_") for name in records.forward)


def test_ip_like_external_name_produces_nothing() -> None:
    service = service_from_dict(svc("ns", "x", type="ExternalName", externalName="192.0.2.55"))
    records = service_records(service, ())
    assert records.forward == {} and records.reverse == {}


def test_two_services_selecting_one_ip_give_two_ptrs() -> None:
    index = RecordIndex()
    slice_dict = eps("ns", "a", "a-1", [ep("10.0.0.9")], [])
    for name in ("a", "b"):
        service = service_from_dict(svc("ns", name, clusterIP="None"))
        slice_dict["metadata"]["labels"]["kubernetes.io/service-name"] = name
        endpoints = endpointslice_from_dict(slice_dict).endpoints
        index.update(service.key, service, endpoints)
    ptrs = index.lookup_reverse("9.0.0.10.in-addr.arpa")
    assert ptrs is not None
    assert sorted(r.value for r in ptrs if r.rtype == PTR) == [
        "10-0-0-9.a.ns.svc",
        "10-0-0-9.b.ns.svc",
    ]


def test_index_update_reports_changed_reverse_names_and_forgets_ents() -> None:
    index = RecordIndex()
    v1 = service_from_dict(svc("ns", "s", clusterIP="10.0.0.1", ports=[{"name": "h", "port": 1}]))
    v2 = service_from_dict(svc("ns", "s", clusterIP="10.0.0.2", ports=[{"name": "h", "port": 1}]))
    assert index.update(v1.key, v1, ()) == {"1.0.0.10.in-addr.arpa"}
    assert index.forward_ents["_tcp.s.ns.svc"] == 1
    assert index.reverse_ents["0.0.10.in-addr.arpa"] == 1
    # Same records again: nothing changed, nothing reported.
    assert index.update(v1.key, v1, ()) == set()
    assert index.update(v2.key, v2, ()) == {"1.0.0.10.in-addr.arpa", "2.0.0.10.in-addr.arpa"}
    assert index.update(v2.key, None, ()) == {"2.0.0.10.in-addr.arpa"}
    assert index.forward == {} and index.reverse == {}
    assert not index.forward_ents and not index.reverse_ents
    assert len(index) == 0

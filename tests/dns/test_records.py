"""records.py: endpoint names, reverse names, per-service records and the incremental index."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdns.dns.records import (
    PTR,
    SRV,
    Record,
    ReverseIndex,
    dashed,
    ptr_addresses,
    reverse_key,
    reverse_name,
    reverse_prefix,
    service_records,
)
from kdns.model import Endpoint, EndpointPort, endpointslice_from_dict, service_from_dict
from tests.builders import api_endpoint, api_endpointslice, api_service


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
    service = service_from_dict(api_service("ns", "db", clusterIP="None"))
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
    service = service_from_dict(api_service("ns", "db", clusterIP="None"))
    records = service_records(service, (Endpoint("10.0.0.1"),))
    assert [r.value for r in records.forward["db.ns.svc"]] == ["10.0.0.1"]
    assert not any(name.startswith("_") for name in records.forward)


def test_ip_like_external_name_produces_nothing() -> None:
    service = service_from_dict(
        api_service("ns", "x", type="ExternalName", externalName="192.0.2.55")
    )
    records = service_records(service, ())
    assert records.forward == {} and records.reverse == {}


def test_two_services_selecting_one_ip_both_own_it() -> None:
    index = ReverseIndex()
    slice_dict = api_endpointslice("ns", "a", "a-1", [api_endpoint("10.0.0.9")], [])
    for name in ("a", "b"):
        service = service_from_dict(api_service("ns", name, clusterIP="None"))
        slice_dict["metadata"]["labels"]["kubernetes.io/service-name"] = name
        endpoints = endpointslice_from_dict(slice_dict).endpoints
        records = service_records(service, endpoints)
        assert records.reverse["9.0.0.10.in-addr.arpa"] == (
            Record(PTR, f"10-0-0-9.{name}.ns.svc", in_zone=True),
        )
        index.update(service.key, ptr_addresses(service, endpoints))
    assert set(index.owners["10.0.0.9"]) == {("ns", "a"), ("ns", "b")}


def test_ptr_addresses_match_the_reverse_records() -> None:
    service = service_from_dict(api_service("ns", "s", clusterIPs=["10.0.0.1", "fd00::1"]))
    endpoints = (Endpoint("10.1.0.1"), Endpoint("10.1.0.2", ready=False))
    records = service_records(service, endpoints)
    addresses = ptr_addresses(service, endpoints)
    assert addresses == {"10.0.0.1", "fd00::1", "10.1.0.1"}
    assert {reverse_name(ip) for ip in addresses} == set(records.reverse)


def test_reverse_index_updates_and_prefixes() -> None:
    index = ReverseIndex()
    a, b = ("ns", "a"), ("ns", "b")
    assert index.update(a, frozenset({"10.0.0.1", "fd00::1"})) == frozenset()
    assert index.has_prefix(reverse_prefix("0.10.in-addr.arpa") or "")
    assert not index.has_prefix(reverse_prefix("1.10.in-addr.arpa") or "")
    assert index.has_prefix(reverse_prefix("d.f.ip6.arpa") or "")
    # "1.0.0.10" must not count as a prefix of "10.0.0.1" and the other way round.
    assert not index.has_prefix(reverse_prefix("0.1.in-addr.arpa") or "")
    index.update(b, frozenset({"10.0.0.1"}))
    assert index.update(a, frozenset()) == frozenset({"10.0.0.1", "fd00::1"})
    assert index.owners == {"10.0.0.1": (b,)}
    assert not index.has_prefix(reverse_prefix("d.f.ip6.arpa") or "")
    index.update(b, frozenset())
    assert len(index) == 0 and not index.has_prefix("")


def test_reverse_index_replace_equals_updates() -> None:
    one, two = ReverseIndex(), ReverseIndex()
    owned = {("ns", "a"): frozenset({"10.0.0.2", "10.0.0.1"}), ("ns", "b"): frozenset({"10.0.0.1"})}
    for key, ips in owned.items():
        one.update(key, ips)
    two.replace(owned)
    assert one.owners == two.owners and one.by_service == two.by_service
    for name in (
        "10.in-addr.arpa",
        "0.10.in-addr.arpa",
        "0.0.10.in-addr.arpa",
        "1.10.in-addr.arpa",
    ):
        prefix = reverse_prefix(name) or ""
        assert one.has_prefix(prefix) == two.has_prefix(prefix) == (name != "1.10.in-addr.arpa")


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("97.97.97.10.in-addr.arpa", "10.97.97.97."),
        ("97.10.in-addr.arpa", "10.97."),
        ("1.2.3.4.5.in-addr.arpa", None),
        ("a.b.ip6.arpa", "ba"),
        ("ab.ip6.arpa", None),
        ("example.com", None),
    ],
)
def test_reverse_prefix(name: str, prefix: str | None) -> None:
    assert reverse_prefix(name) == prefix


def test_empty_non_terminals_of_a_service() -> None:
    service = service_from_dict(
        api_service("ns", "s", clusterIP="10.0.0.1", ports=[{"name": "h", "port": 1}])
    )
    records = service_records(service, ())
    assert records.ents == {"_tcp.s.ns.svc"}


# Few distinct octets and nibbles, so that addresses share /24s, /64s and prefixes above them.
V4 = st.tuples(*[st.sampled_from(["1", "10", "100"])] * 4).map(".".join)
V6 = st.tuples(st.sampled_from(["fd00:0:0:1", "fd00:0:0:2", "fd00:10:0:1"]), st.integers(1, 40))
ADDRESSES = st.one_of(
    V4, V6.map(lambda parts: str(ipaddress.ip_address(f"{parts[0]}::{parts[1]:x}")))
)
KEYS = st.sampled_from([("ns", "a"), ("ns", "b"), ("ns", "c")])


def _every_prefix(ip: str) -> list[str]:
    """Every reverse name above `ip` and `ip`'s own, as `reverse_prefix` spells them."""
    name = reverse_name(ip)
    labels = name.split(".")
    return [reverse_prefix(".".join(labels[i:])) or "" for i in range(len(labels) - 2)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(KEYS, st.frozensets(ADDRESSES, max_size=6)), max_size=12),
    st.lists(ADDRESSES, max_size=4),
)
def test_reverse_prefixes_are_those_of_the_owned_addresses(
    updates: list[tuple[tuple[str, str], frozenset[str]]], others: list[str]
) -> None:
    # RFC 8020: a reverse name exists when some owned address's name lies at or below it. The
    # index answers from its groups what a scan of every owned address's key answers, after
    # any sequence of updates, and a bulk `replace` of the same state answers the same.
    index = ReverseIndex()
    for key, addresses in updates:
        index.update(key, addresses)
    rebuilt = ReverseIndex()
    rebuilt.replace(dict(index.by_service))
    keys = [reverse_key(ip) for ip in index.owners]
    asked = {p for _, addresses in updates for ip in addresses for p in _every_prefix(ip)}
    asked |= {p for ip in others for p in _every_prefix(ip)} | {""}
    for prefix in asked:
        want = any(key.startswith(prefix) for key in keys)
        assert index.has_prefix(prefix) == want, prefix
        assert rebuilt.has_prefix(prefix) == want, prefix

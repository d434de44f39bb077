"""Which UDP conntrack entries a change leaves stale (kdns/proxy/conntrack.py), table-driven."""

from __future__ import annotations

import pytest

from kdns.proxy.conntrack import Flow, argv, stale_flows
from kdns.proxy.routes import ServicePortRoute
from tests.builders import model_endpoint, model_service

from .builders import routes

UDP = (("dns", "UDP", 53, None),)
UDP_NP = (("dns", "UDP", 53, 30053),)
UDP_EP = (("dns", "UDP", 5353),)


def by_service(*pairs) -> dict[tuple[str, str], tuple[ServicePortRoute, ...]]:
    out: dict[tuple[str, str], tuple[ServicePortRoute, ...]] = {}
    for route in routes(*pairs):
        out.setdefault(route.service, ())
        out[route.service] += (route,)
    return out


S = model_service("ns/dns", ports=UDP, ip="10.96.0.10")
S_NP = model_service("ns/dns", ports=UDP_NP, ip="10.96.0.10", external_ips=("192.0.2.7",))
S_TCP = model_service("ns/web", ip="10.96.0.20")
A = model_endpoint("10.244.1.5", ports=UDP_EP)
B = model_endpoint("10.244.2.6", ports=UDP_EP)

CASES = [
    pytest.param(
        by_service((S, [A, B])),
        by_service((S, [B])),
        [Flow(4, "10.96.0.10", None, "10.244.1.5")],
        id="endpoint removed: its DNATed entries go",
    ),
    pytest.param(
        by_service((S_NP, [A])),
        by_service((S_NP, [B])),
        [
            Flow(4, None, 30053, "10.244.1.5"),
            Flow(4, "10.96.0.10", None, "10.244.1.5"),
            Flow(4, "192.0.2.7", None, "10.244.1.5"),
        ],
        id="endpoint replaced behind a NodePort and an externalIP",
    ),
    pytest.param(
        by_service((S, [])),
        by_service((S, [A])),
        [Flow(4, "10.96.0.10", 53, None, "10.96.0.10")],
        id="first endpoint: entries made while rejecting go",
    ),
    pytest.param(
        by_service((S, [A])),
        {},
        [Flow(4, "10.96.0.10", None, "10.244.1.5")],
        id="Service deleted",
    ),
    pytest.param(
        by_service((S, [A, B])),
        by_service((S, [A, B])),
        [],
        id="nothing changed: nothing deleted",
    ),
    pytest.param(
        by_service((S_NP, [])),
        by_service((S_NP, [A])),
        [
            Flow(4, None, 30053, None, None, 30053),
            Flow(4, "10.96.0.10", 53, None, "10.96.0.10"),
            Flow(4, "192.0.2.7", 53, None, "192.0.2.7"),
        ],
        id="first endpoint behind a NodePort and an externalIP",
    ),
    pytest.param(
        by_service((S, [A, model_endpoint("10.244.2.6", ports=UDP_EP, ready=False)])),
        by_service((S, [A])),
        [],
        id="an endpoint that was not in use goes: nothing to delete",
    ),
    pytest.param(
        by_service((S_TCP, [model_endpoint("10.244.1.5")])),
        by_service((S_TCP, [])),
        [],
        id="TCP: never",
    ),
    pytest.param(
        {},
        by_service((S, [A])),
        [Flow(4, "10.96.0.10", 53, None, "10.96.0.10")],
        id="new Service with endpoints: un-DNATed entries to its ClusterIP go",
    ),
]


@pytest.mark.parametrize(("before", "after", "expected"), CASES)
def test_stale_flows(before, after, expected) -> None:
    keys = set(before) | set(after)
    before_changed = {k: v for k, v in before.items() if k in keys}
    # The engine passes "before" only for Services it had routes for.
    result = stale_flows(before_changed, {k: after.get(k, ()) for k in keys})
    assert sorted(result, key=repr) == sorted(expected, key=repr)


def test_restart_has_no_before_and_deletes_nothing() -> None:
    assert stale_flows({}, {}) == []


@pytest.mark.parametrize(
    ("flow", "args"),
    [
        (
            Flow(4, "10.96.0.10", None, "10.244.1.5"),
            "-f ipv4 -p udp --orig-dst 10.96.0.10 --dst-nat 10.244.1.5",
        ),
        (Flow(6, None, 30053, "fd00::5"), "-f ipv6 -p udp --orig-port-dst 30053 --dst-nat fd00::5"),
        (
            Flow(4, "10.96.0.10", 53, None),
            "-f ipv4 -p udp --orig-dst 10.96.0.10 --orig-port-dst 53",
        ),
    ],
)
def test_argv(flow: Flow, args: str) -> None:
    assert argv(flow) == ["conntrack", "-D", *args.split()]


# --- reconciliation at start ------------------------------------------------------------------

LISTING = """\
udp      17 99 src=10.244.1.21 dst=10.96.0.10 sport=40001 dport=53 [UNREPLIED] src=10.96.0.10 \
dst=10.244.1.21 sport=53 dport=40001 mark=0 use=1
udp      17 98 src=10.244.1.20 dst=10.96.0.10 sport=40000 dport=53 src=10.244.1.5 \
dst=10.244.1.20 sport=5353 dport=40000 [ASSURED] mark=0 use=1
udp      17 97 src=10.244.1.22 dst=10.96.0.10 sport=40002 dport=53 src=10.244.9.9 \
dst=10.244.1.22 sport=5353 dport=40002 mark=0 use=1
udp      17 96 src=203.0.113.2 dst=192.0.2.10 sport=5000 dport=30053 src=10.244.9.9 \
dst=192.0.2.10 sport=5353 dport=5000 mark=0 use=1
ipv4     2 udp      17 95 src=10.244.1.23 dst=10.96.0.99 sport=1 dport=53 src=10.244.7.7 \
dst=10.244.1.23 sport=53 dport=1 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.244.1.20 dst=10.96.0.10 sport=4 dport=53 src=10.244.9.9 \
dst=10.244.1.20 sport=5353 dport=4 mark=0 use=1
"""


def test_parse_entries_reads_orig_destination_and_dnat_target() -> None:
    from kdns.proxy.conntrack import Entry, parse_entries

    assert parse_entries(LISTING, 4) == [
        Entry(4, "10.96.0.10", 53, "10.96.0.10"),
        Entry(4, "10.96.0.10", 53, "10.244.1.5"),
        Entry(4, "10.96.0.10", 53, "10.244.9.9"),
        Entry(4, "192.0.2.10", 30053, "10.244.9.9"),
        Entry(4, "10.96.0.99", 53, "10.244.7.7"),
    ]


def test_reconciliation_deletes_only_flows_to_endpoints_that_are_gone() -> None:
    from kdns.proxy.conntrack import parse_entries, unused_dnat_flows

    current = routes((S_NP, [A]))  # 10.244.1.5 is the only endpoint now
    flows = unused_dnat_flows(parse_entries(LISTING, 4), current)
    assert flows == sorted(
        [
            # A ClusterIP flow DNATed to 10.244.9.9, which left while the proxy was down.
            Flow(4, "10.96.0.10", 53, None, "10.244.9.9"),
            # The same endpoint behind the NodePort.
            Flow(4, None, 30053, None, "10.244.9.9"),
        ],
        key=repr,
    )
    # Nothing changed: nothing deleted (the un-DNATed entry and 10.96.0.99 are not ours).
    both = routes((S_NP, [A, model_endpoint("10.244.9.9", ports=UDP_EP)]))
    assert unused_dnat_flows(parse_entries(LISTING, 4), both) == []

"""CoreDNS's kubernetes options that change the schema, as tables of zone-file text:
`endpoint_pod_names`, `noendpoints` and `ignore empty_service` (plugin/kubernetes README)."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE

from kdns.config import Config
from kdns.dns.resolver import Resolver
from kdns.model import Namespace, endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store
from tests.dns.cluster import SERVICES_, SLICES, eps, rrset, svc, zone

NOERROR, NXDOMAIN = RCODE.NOERROR, RCODE.NXDOMAIN
LONG = "p" * 64  # a Pod name longer than a label: its endpoint keeps the dashed address


def pod_ep(ip: str, pod: str, hostname: str = "") -> dict:
    out = {
        "addresses": [ip],
        "conditions": {"ready": True},
        "targetRef": {"kind": "Pod", "name": pod},
    }
    if hostname:
        out["hostname"] = hostname
    return out


STS = [
    svc("default", "sts", clusterIP="None", ports=[{"name": "http", "port": 80}]),
]
STS_SLICES = [
    eps(
        "default",
        "sts",
        "sts-a",
        [
            pod_ep("10.244.5.1", "sts-7f9c"),
            pod_ep("10.244.5.2", "db-0", "db-0"),
            pod_ep("10.244.5.3", LONG),
        ],
        [{"name": "http", "port": 80}],
    )
]


def resolver(**keys: object) -> Resolver:
    config = Config().with_overrides(**{f"dns.{k}": v for k, v in keys.items()})
    store = Store()
    services = [service_from_dict(s) for s in (*SERVICES_, *STS)]
    slices = [endpointslice_from_dict(s) for s in (*SLICES, *STS_SLICES)]
    store.replace(SERVICES, {s.key: s for s in services})
    store.replace(ENDPOINTSLICES, {s.key: s for s in slices})
    store.replace(NAMESPACES, {"default": Namespace("default")})
    store.replace(PODS, {})  # every kind listed: synced, so negative answers are NXDOMAIN
    return Resolver(store, config)


CASES = [
    # (options, name, type, rcode, zone text)
    (
        {},
        "10-244-5-1.sts.default.svc.cluster.local",
        "A",
        NOERROR,
        "10-244-5-1.sts.default.svc.cluster.local. 5 IN A 10.244.5.1",
    ),
    (
        {"endpoint_pod_names": True},
        "sts-7f9c.sts.default.svc.cluster.local",
        "A",
        NOERROR,
        "sts-7f9c.sts.default.svc.cluster.local. 5 IN A 10.244.5.1",
    ),
    ({"endpoint_pod_names": True}, "10-244-5-1.sts.default.svc.cluster.local", "A", NXDOMAIN, ""),
    # A hostname still wins; a Pod name too long for a label leaves the dashed address.
    (
        {"endpoint_pod_names": True},
        "db-0.sts.default.svc.cluster.local",
        "A",
        NOERROR,
        "db-0.sts.default.svc.cluster.local. 5 IN A 10.244.5.2",
    ),
    (
        {"endpoint_pod_names": True},
        "10-244-5-3.sts.default.svc.cluster.local",
        "A",
        NOERROR,
        "10-244-5-3.sts.default.svc.cluster.local. 5 IN A 10.244.5.3",
    ),
    (
        {"endpoint_pod_names": True},
        "1.5.244.10.in-addr.arpa",
        "PTR",
        NOERROR,
        "1.5.244.10.in-addr.arpa. 5 IN PTR sts-7f9c.sts.default.svc.cluster.local.",
    ),
    # noendpoints: headless and endpoint names do not exist; ClusterIP names do.
    ({"noendpoints": True}, "hl.default.svc.cluster.local", "A", NXDOMAIN, ""),
    ({"noendpoints": True}, "web-0.hl.default.svc.cluster.local", "A", NXDOMAIN, ""),
    (
        {"noendpoints": True},
        "redis.default.svc.cluster.local",
        "A",
        NOERROR,
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97",
    ),
    # ignore empty_service: a ClusterIP Service with no ready endpoint is NXDOMAIN, SRV too;
    # one with a ready endpoint, headless ones and its ClusterIP's PTR are as before.
    ({"ignore_empty_service": True}, "web.default.svc.cluster.local", "A", NXDOMAIN, ""),
    ({"ignore_empty_service": True}, "web.default.svc.cluster.local", "SRV", NXDOMAIN, ""),
    (
        {"ignore_empty_service": True},
        "redis.default.svc.cluster.local",
        "A",
        NOERROR,
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97",
    ),
    (
        {"ignore_empty_service": True},
        "20.0.96.10.in-addr.arpa",
        "PTR",
        NOERROR,
        "20.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local.",
    ),
    (
        {},
        "web.default.svc.cluster.local",
        "A",
        NOERROR,
        "web.default.svc.cluster.local. 5 IN A 10.96.0.20",
    ),
]


@pytest.mark.parametrize(("options", "qname", "qtype", "rcode", "records"), CASES)
def test_schema_options(options: dict, qname: str, qtype: str, rcode: int, records: str) -> None:
    answer = resolver(**options).resolve(qname, getattr(QTYPE, qtype))
    assert answer is not None
    assert RCODE.get(answer.rcode) == RCODE.get(rcode)
    assert rrset(answer.answer) == zone(records)

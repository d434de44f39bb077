"""Multicluster DNS from the API server (KEP-1645): kdns with `multicluster clusterset.local`
against tests/kubeapi's server, with and without the MCS API's CRD.

Real `kubernetes` client over HTTPS, real UDP questions (dnspython); every wait is bounded.
"""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client import REGISTRY

from tests.sources.test_kube import NXDOMAIN, WAIT, ok, own_api, start

__all__ = ["own_api"]  # the fixture, re-exported for pytest

KEYS = {
    "dns.zones": ["cluster.local", "clusterset.local"],
    "dns.multicluster": ["clusterset.local"],
}


def skipped_slices() -> float:
    """Objects the local EndpointSlice watch rejected so far (process-wide counter)."""
    labels = {"kind": "endpointslices", "reason": "invalid_object"}
    return REGISTRY.get_sample_value("kdns_kube_events_skipped_total", labels) or 0.0


def service_import(name: str, kind: str, ips: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": kind, "ips": ips or [], "ports": [{"name": "http", "port": 80}]},
    }


def imported_slice(name: str, service: str, cluster: str, *ips: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "multicluster.kubernetes.io/service-name": service,
                "multicluster.kubernetes.io/source-cluster": cluster,
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


async def test_serviceimports_and_imported_slices_are_listed_and_watched(
    own_api: Any, nursery: trio.Nursery
) -> None:
    api, path = own_api(multicluster=True)
    skipped_before = skipped_slices()
    api.create("serviceimports", service_import("web", "ClusterSetIP", ["10.42.0.1"]))
    api.create("serviceimports", service_import("db", "Headless"))
    api.create("endpointslices", imported_slice("db-east", "db", "east", "10.1.0.5"))
    k = await start(nursery, api, path, keys=KEYS)
    assert await k.ask("web.default.svc.clusterset.local") == ok("10.42.0.1")
    assert await k.ask("db.default.svc.clusterset.local") == ok("10.1.0.5")
    assert await k.ask("10-1-0-5.east.db.default.svc.clusterset.local") == ok("10.1.0.5")
    # An imported slice is no local Service's: nothing in cluster.local, and no model error.
    assert await k.ask("db.default.svc.cluster.local") == NXDOMAIN
    assert skipped_slices() == skipped_before
    # Watched: a second cluster's slice arrives, an import goes away.
    api.create("endpointslices", imported_slice("db-west", "db", "west", "10.2.0.5"))
    await k.wait_for("db.default.svc.clusterset.local", ok("10.1.0.5", "10.2.0.5"), timeout=WAIT)
    assert await k.ask("10-2-0-5.west.db.default.svc.clusterset.local") == ok("10.2.0.5")
    api.delete("serviceimports", "default", "web")
    await k.wait_for("web.default.svc.clusterset.local", NXDOMAIN, timeout=WAIT)
    assert api.stats.count(kind="watch", resource="serviceimports") >= 1


async def test_without_the_crd_the_clusterset_zone_is_empty_and_nothing_is_asked(
    own_api: Any, nursery: trio.Nursery
) -> None:
    api, path = own_api()  # no multicluster.x-k8s.io group, as a cluster without the CRD
    api.create("endpointslices", imported_slice("db-east", "db", "east", "10.1.0.5"))
    k = await start(nursery, api, path, keys=KEYS)  # waits for /ready: synced all the same
    assert await k.ask("db.default.svc.clusterset.local") == NXDOMAIN
    assert api.stats.count(resource="serviceimports") == 0
    assert "importslices" not in k.app.source.reflectors  # type: ignore[attr-defined]

"""The proxy's ServiceCIDR watch (KEP-1880) against tests/kubeapi's server: listed and watched
when the API server serves `networking.k8s.io/v1` servicecidrs, never asked for otherwise, and
never a gate on the store's sync.

Real `kubernetes` client over HTTPS; every wait is bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from kdns.model import ServiceCIDR
from kdns.sources import kube
from kdns.sources.scope import Scope
from kdns.store import Store
from tests.kubeapi import objects
from tests.kubeapi.server import ApiServer

FAST = {
    "reflector": {"read_timeout": 1.0, "connect_timeout": 1.0, "watch_timeout": (5, 10)},
    "backoff": {"initial": 0.1, "maximum": 0.4, "rng": lambda: 0.0},
}


def service_cidr(name: str, *cidrs: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": name},
        "spec": {"cidrs": list(cidrs)},
    }


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def source_for(server: ApiServer, tmp_path: Path, store: Store) -> kube.KubeSource:
    api = kube.cluster_client(str(server.write_kubeconfig(tmp_path / "kubeconfig")), None)
    # A namespaces filter must not hide a cluster-scoped ServiceCIDR.
    scope = Scope(frozenset({"team-a"}))
    return kube.KubeSource(api, store, False, scope=scope, service_cidrs=True, **FAST)


def test_service_cidrs_are_listed_and_watched(tmp_path: Path) -> None:
    server = ApiServer(bookmark_interval=0.2, service_cidrs=True)
    server.create("namespaces", objects.namespace("default"))
    server.create("servicecidrs", service_cidr("kubernetes", "10.96.0.0/16", "fd00::/108"))
    store = Store(watched=kube.KubeSource.kinds(watch_pods=False))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(source_for(server, tmp_path, store).run)
            await wait_for(
                lambda: (
                    dict(store.service_cidrs)
                    == {"kubernetes": ServiceCIDR("kubernetes", ("10.96.0.0/16", "fd00::/108"))}
                )
            )
            server.create("servicecidrs", service_cidr("extra", "10.100.0.0/16"))
            await wait_for(lambda: set(store.service_cidrs) == {"kubernetes", "extra"})
            server.delete("servicecidrs", None, "kubernetes")
            await wait_for(lambda: set(store.service_cidrs) == {"extra"})
            nursery.cancel_scope.cancel()

    with server:
        trio.run(main)
        assert server.stats.count(kind="watch", resource="servicecidrs") >= 1


@pytest.mark.parametrize(
    "networking_v1",
    [
        pytest.param(False, id="no-networking-group"),
        # networking.k8s.io/v1 (Ingress, …) without servicecidrs: a cluster before 1.33.
        pytest.param(True, id="group-without-servicecidrs"),
    ],
)
def test_without_servicecidrs_nothing_is_asked_and_the_store_syncs(
    tmp_path: Path, networking_v1: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kdns.sources.kube")
    server = ApiServer(bookmark_interval=0.2, networking_v1=networking_v1)
    server.create("namespaces", objects.namespace("default"))
    store = Store(watched=kube.KubeSource.kinds(watch_pods=False))
    source = source_for(server, tmp_path, store)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run)
            await wait_for(lambda: store.synced)
            # Discovery answered: one log line, and no ServiceCIDR reflector.
            await wait_for(
                lambda: "does not serve networking.k8s.io/v1 servicecidrs" in caplog.text
            )
            nursery.cancel_scope.cancel()

    with server:
        trio.run(main)
        assert server.stats.count(resource="servicecidrs") == 0
        assert "servicecidrs" not in source.reflectors
        assert dict(store.service_cidrs) == {}

"""The node DNS's Pods watch (`kdns proxy --dns --dns-autopath`) against tests/kubeapi's server:
the pods of this node only, by a `spec.nodeName` field selector the API server applies (as
kube-apiserver does for pods), followed as pods come, go and get scheduled, and never a gate on
the store's sync.

Real `kubernetes` client over HTTPS; every wait is bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from kdns.sources import kube
from kdns.store import Store
from tests.kubeapi import objects
from tests.kubeapi.server import ApiServer

FAST = {
    "reflector": {"read_timeout": 1.0, "connect_timeout": 1.0, "watch_timeout": (5, 10)},
    "backoff": {"initial": 0.1, "maximum": 0.4, "rng": lambda: 0.0},
}
NODE = "node-a"


def test_the_pods_resource_adds_the_node_to_the_phase_selector() -> None:
    # CoreDNS's pod watch leaves finished pods out; the node DNS's also leaves other nodes out.
    assert kube.pods_resource().selectors() == [
        ("fieldSelector", "status.phase!=Succeeded,status.phase!=Failed")
    ]
    assert kube.pods_resource("node-a").selectors() == [
        ("fieldSelector", "status.phase!=Succeeded,status.phase!=Failed,spec.nodeName=node-a")
    ]


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def source_for(server: ApiServer, tmp_path: Path, store: Store) -> kube.KubeSource:
    api = kube.cluster_client(str(server.write_kubeconfig(tmp_path / "kubeconfig")), None)
    return kube.KubeSource(api, store, False, node_name=NODE, pods_node=NODE, **FAST)


def held(store: Store) -> set[str]:
    return {name for _, name in store.pods}


def test_only_this_nodes_pods_are_held_and_followed(tmp_path: Path) -> None:
    server = ApiServer(bookmark_interval=0.2)
    server.create("namespaces", objects.namespace("default"))
    server.create("pods", objects.pod("default", "local-1", node_name=NODE))
    server.create("pods", objects.pod("default", "local-2", node_name=NODE))
    server.create("pods", objects.pod("default", "remote", node_name="node-b"))
    server.create("pods", objects.pod("default", "done", node_name=NODE, phase="Succeeded"))
    store = Store(watched=kube.KubeSource.kinds(watch_pods=False))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(source_for(server, tmp_path, store).run)
            await wait_for(lambda: held(store) == {"local-1", "local-2"})
            # Through the watch now: a pod of another node never arrives, one of this node does.
            server.create("pods", objects.pod("default", "remote-2", node_name="node-b"))
            server.create("pods", objects.pod("default", "local-3", node_name=NODE))
            await wait_for(lambda: held(store) == {"local-1", "local-2", "local-3"})
            server.delete("pods", "default", "local-1")
            await wait_for(lambda: held(store) == {"local-2", "local-3"})
            # Created unscheduled (no spec.nodeName), then bound here by the scheduler: the
            # watch sends it when it starts to match the selector.
            unscheduled = objects.pod("default", "bound-late", node_name="")
            server.create("pods", unscheduled)
            server.update("pods", objects.pod("default", "bound-late", node_name=NODE))
            await wait_for(lambda: "bound-late" in held(store))
            assert held(store) == {"local-2", "local-3", "bound-late"}
            nursery.cancel_scope.cancel()

    with server:
        trio.run(main)
        assert server.stats.count(kind="watch", resource="pods") >= 1


def test_a_forbidden_pods_list_does_not_keep_the_store_unsynced(tmp_path: Path) -> None:
    # A DaemonSet given --dns-autopath without the pods RBAC still programs the node: the
    # Pods are not a kind the first sync waits for.
    server = ApiServer(bookmark_interval=0.2)
    server.create("namespaces", objects.namespace("default"))
    server.create("pods", objects.pod("default", "local-1", node_name=NODE))
    server.faults.error_next(403, n=None, resource="pods", kind="list")
    store = Store(watched=kube.KubeSource.kinds(watch_pods=False))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(source_for(server, tmp_path, store).run)
            await wait_for(lambda: store.synced)
            assert held(store) == set()
            await wait_for(lambda: server.stats.count(kind="list", resource="pods") >= 2)
            server.faults.clear()  # the RBAC fixed: the retry lists them
            await wait_for(lambda: held(store) == {"local-1"})
            nursery.cancel_scope.cancel()

    with server:
        trio.run(main)

"""Paginated lists and relists: the real `kubernetes` client against `tests/kubeapi`'s server.

A Reflector lists with `limit` and `continue` (client-go's paging), starts the list over when a
continue token expires (410, API concepts "Retrieving large results sets"), and a relist hands
the store back the very objects it holds when they did not change, so a relist of an unchanged
cluster never holds two copies of it (docs/architecture.md §6). Every test runs kdns in this
process (`app.build` + `app.serve`) and asks over real UDP; every wait is bounded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import trio

from tests.builders import service_fqdn
from tests.kubeapi import objects
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer
from tests.sources.test_kube import (
    NXDOMAIN,
    WAIT,
    Shape,
    delta,
    ok,
    own_api,
    start,
    wait_until,
)

__all__ = ["kube_api", "kubeconfig", "own_api"]  # fixtures, re-exported for pytest

PAGE = 3  # objects per list page in these tests: every list below spans several pages


def load(api: ApiServer, names: list[tuple[str, str]]) -> None:
    """A Service and one EndpointSlice (two ready endpoints) per (namespace, name)."""
    for ns in sorted({ns for ns, _ in names} - {"default"}):
        api.create("namespaces", objects.namespace(ns))
    for i, (ns, name) in enumerate(names):
        api.create("services", objects.service(ns, name, headless=i % 4 == 3))
        addresses = [f"10.1.{i}.1", f"10.1.{i}.2"]
        api.create("endpointslices", objects.endpointslice(ns, name, addresses=addresses))


def served(api: ApiServer, resource: str) -> set[tuple[str, str]]:
    """The keys of what the API server holds now."""
    return {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in api.list_objects(resource)}


def answer(name: str, ns: str, index: int) -> Shape:
    # Every fourth Service is headless: its name answers with the endpoints' addresses.
    if index % 4 == 3:
        return ok(f"10.1.{index}.1", f"10.1.{index}.2")
    return ok(objects.cluster_ip_for(ns, name))


async def test_a_list_over_many_pages_fills_the_store_as_one_page_does(
    own_api: Any, nursery: trio.Nursery
) -> None:
    api, path = own_api()
    names = [(f"ns-{i % 3}", f"svc-{i}") for i in range(20)]
    load(api, names)
    paged = await start(nursery, api, path, page_size=PAGE)
    # Services and EndpointSlices each took ceil(20 / 3) pages, namespaces ceil(4 / 3).
    assert api.stats.count(kind="list", resource="services") == math.ceil(20 / PAGE)
    assert api.stats.count(kind="list", resource="endpointslices") == math.ceil(20 / PAGE)
    whole = await start(nursery, api, path)  # 500 a page: one page each

    assert len(paged.app.store.services) == 20
    assert dict(paged.app.store.services) == dict(whole.app.store.services)
    assert dict(paged.app.store.slices) == dict(whole.app.store.slices)
    assert dict(paged.app.store.endpoints) == dict(whole.app.store.endpoints)
    assert dict(paged.app.store.namespaces) == dict(whole.app.store.namespaces)
    for i, (ns, name) in enumerate(names):
        assert await paged.ask(service_fqdn(name, ns)) == answer(name, ns, i)

    # The watch starts at the list's resourceVersion: a Service created afterwards is seen.
    made = api.create("services", objects.service("ns-0", "later"))
    await paged.wait_for(service_fqdn("later", "ns-0"), ok(made["spec"]["clusterIP"]))
    assert paged.reflector("services").lists == 1


async def test_an_expired_continue_token_starts_the_list_over(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    names = [("default", f"svc-{i}") for i in range(10)]
    load(kube_api, names)
    kube_api.faults.expire_next_continue(1, resource="services")
    k = await start(nursery, kube_api, kubeconfig, page_size=PAGE)
    after = await k.metrics()

    # Page one, page two refused (410), then the whole list again: four pages of 3, 3, 3, 1.
    assert kube_api.stats.count(kind="list", resource="services") == 2 + 4
    assert kube_api.stats.statuses[410] == 1
    assert delta({}, after, "kdns_kube_list_restarts_total", kind="services") >= 1
    assert set(k.app.store.services) == served(kube_api, "services")
    # A restarted list is still the first list: no relist, and the store is synced once.
    assert k.reflector("services").lists == 1
    for i, (ns, name) in enumerate(names):
        assert await k.ask(service_fqdn(name, ns)) == answer(name, ns, i)


async def test_a_relist_drops_the_deleted_and_keeps_the_unchanged_objects_it_had(
    own_api: Any, nursery: trio.Nursery
) -> None:
    api, path = own_api()
    names = [(f"ns-{i % 2}", f"svc-{i}") for i in range(12)]
    load(api, names)
    k = await start(nursery, api, path, page_size=PAGE)
    store = k.app.store
    services, slices, endpoints = dict(store.services), dict(store.slices), dict(store.endpoints)
    before = await k.metrics()

    bad: list[tuple[str, Shape]] = []
    asked = 0
    stop = trio.Event()
    stable = [(i, ns, name) for i, (ns, name) in enumerate(names) if i >= 4]

    async def keep_asking() -> None:
        # Names the relist does not change answer the same all along (never SERVFAIL).
        nonlocal asked
        while not stop.is_set():
            for i, ns, name in stable:
                got = await k.ask(service_fqdn(name, ns))
                asked += 1
                if got != answer(name, ns, i):
                    bad.append((name, got))
            await trio.sleep(0.005)

    nursery.start_soon(keep_asking)
    await wait_until(lambda: asked >= 10, "answers before the break")
    # Changes kdns cannot watch: the connection is down, and the history is compacted past its
    # resourceVersion, so it must relist — and one page of that relist expires on the way.
    api.faults.refuse_connections(True)
    api.delete("services", "ns-0", "svc-0")
    for s in api.list_objects("endpointslices", "ns-0"):
        if s["metadata"]["labels"]["kubernetes.io/service-name"] == "svc-0":
            api.delete("endpointslices", "ns-0", s["metadata"]["name"])
    changed = api.list_objects("endpointslices", "ns-1")[0]
    changed["endpoints"][0]["addresses"] = ["10.9.9.9"]
    api.update("endpointslices", changed)
    made = api.create("services", objects.service("ns-1", "new"))
    api.compact()
    api.faults.expire_next_continue(1, resource="services")
    api.faults.refuse_connections(False)

    await k.wait_for(service_fqdn("svc-0", "ns-0"), NXDOMAIN)
    await k.wait_for(service_fqdn("new", "ns-1"), ok(made["spec"]["clusterIP"]))
    after = await k.metrics_until(
        lambda m: all(
            delta(before, m, "kdns_kube_relists_total", kind=kind, reason="expired") >= 1
            for kind in ("services", "endpointslices")
        ),
        "a relist of Services and EndpointSlices",
        timeout=2 * WAIT,
    )
    relisted = asked
    await wait_until(lambda: asked >= relisted + 10, "answers after the relist")
    stop.set()
    assert bad == []
    assert delta(before, after, "kdns_kube_list_restarts_total", kind="services") == 1

    # The store is what the server holds: the deleted gone, the new there.
    assert set(store.services) == served(api, "services")
    assert set(store.slices) == served(api, "endpointslices")
    changed_key = (changed["metadata"]["namespace"], changed["metadata"]["name"])
    changed_service = store.slices[changed_key].service_key
    assert any(e.address == "10.9.9.9" for e in store.endpoints[changed_service])
    # What did not change is the very object the store held before: the relist did not hold a
    # second copy of it (docs/architecture.md §6, "A relist").
    for key, service in store.services.items():
        if key in services:
            assert service is services[key], key
    for key, eps in store.slices.items():
        if key != changed_key and key in slices:
            assert eps is slices[key], key
    for key, merged in store.endpoints.items():
        if key != changed_service and key in endpoints:
            assert merged is endpoints[key], key

"""kdns.store: replace / upsert / delete, `synced` and `when_synced`, EndpointSlice merging,
read-only views, and the Change that tells consumers exactly what became visible
(docs/architecture.md, rules 2 and 4)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

import kdns.store
from kdns.model import (
    EndpointSlice,
    Namespace,
    Node,
    Pod,
    Service,
    ServiceCIDR,
)
from kdns.store import (
    ENDPOINTSLICES,
    KINDS,
    NAMESPACES,
    NODES,
    PODS,
    SERVICECIDRS,
    SERVICES,
    Change,
    Store,
)
from tests.builders import model_endpoint, model_pod, model_service, model_slice

# --- helpers -----------------------------------------------------------------------------------


def by_key(*objects: Service | EndpointSlice | Pod) -> dict[object, object]:
    return {o.key: o for o in objects}


class Recorder:
    """A subscriber that keeps every Change it is given."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.changes.append(change)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def seen(store: Store) -> Recorder:
    recorder = Recorder()
    store.subscribe(recorder)
    return recorder


# --- replace -----------------------------------------------------------------------------------


def test_replace_services_reports_exactly_the_changed_keys(store: Store, seen: Recorder) -> None:
    change = store.replace(
        SERVICES, by_key(model_service("ns/a"), model_service("ns/b", ip="10.96.0.2"))
    )
    assert change.services == {("ns", "a"), ("ns", "b")}

    change = store.replace(
        SERVICES,
        by_key(
            model_service("ns/a"),
            model_service("ns/b", ip="10.96.0.22"),
            model_service("ns/c", ip="10.96.0.3"),
        ),
    )
    assert change.services == {("ns", "b"), ("ns", "c")}
    assert (change.namespaces, change.pod_ips) == (set(), set())

    change = store.replace(
        SERVICES,
        by_key(model_service("ns/b", ip="10.96.0.22"), model_service("ns/c", ip="10.96.0.3")),
    )
    assert change.services == {("ns", "a")}
    assert set(store.services) == {("ns", "b"), ("ns", "c")}
    assert [c.services for c in seen.changes] == [
        {("ns", "a"), ("ns", "b")},
        {("ns", "b"), ("ns", "c")},
        {("ns", "a")},
    ]


def test_replace_namespaces_reports_added_and_removed(store: Store) -> None:
    store.replace(NAMESPACES, {"a": Namespace("a"), "b": Namespace("b")})
    change = store.replace(NAMESPACES, {"b": Namespace("b"), "c": Namespace("c")})
    assert change.namespaces == {"a", "c"}
    assert change.services == set()
    assert store.namespace_exists("c")
    assert not store.namespace_exists("a")


def test_replace_pods_reports_old_and_new_ips(store: Store) -> None:
    store.replace(
        PODS,
        by_key(model_pod("a", "10.1.0.1"), model_pod("b", "10.1.0.2"), model_pod("c", "10.1.0.3")),
    )
    change = store.replace(
        PODS,
        by_key(
            model_pod("a", "10.1.0.1"),  # unchanged
            model_pod("b", "10.1.0.20", "fd00::20"),  # new IPs
            model_pod("d", "10.1.0.4"),  # added; c removed
        ),
    )
    assert change.pod_ips == {"10.1.0.2", "10.1.0.20", "fd00::20", "10.1.0.3", "10.1.0.4"}
    assert set(store.pods_by_ip) == {"10.1.0.1", "10.1.0.20", "fd00::20", "10.1.0.4"}
    assert store.pods_by_ip["fd00::20"] == (model_pod("b", "10.1.0.20", "fd00::20"),)


def test_replace_endpointslices_reports_services_whose_endpoints_changed(store: Store) -> None:
    store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("a-1", "a", "10.1.0.1"),
            model_slice("b-1", "b", "10.1.0.2"),
            model_slice("c-1", "c", "10.1.0.3"),
        ),
    )
    change = store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("a-1", "a", "10.1.0.1"),  # unchanged
            model_slice("b-1", "b", "10.1.0.22"),  # changed
            model_slice("d-1", "d", "10.1.0.4"),  # added; c removed
        ),
    )
    assert change.services == {("ns", "b"), ("ns", "c"), ("ns", "d")}
    assert set(store.endpoints) == {("ns", "a"), ("ns", "b"), ("ns", "d")}


@pytest.mark.parametrize(
    ("kind", "objects"),
    [
        pytest.param(NAMESPACES, {"a": Namespace("a")}, id="namespaces"),
        pytest.param(
            SERVICES,
            by_key(model_service("ns/a"), model_service("ns/b", ip="10.96.0.2")),
            id="services",
        ),
        pytest.param(
            ENDPOINTSLICES,
            by_key(model_slice("a-1", "a", "10.1.0.1"), model_slice("a-2", "a", "10.1.0.2")),
            id="endpointslices",
        ),
        pytest.param(PODS, by_key(model_pod("a", "10.1.0.1")), id="pods"),
    ],
)
def test_replace_with_equal_objects_notifies_nobody(
    store: Store, seen: Recorder, kind: str, objects: dict[object, object]
) -> None:
    store.replace(kind, objects)
    assert len(seen.changes) == 1
    before = store.last_change
    # Equal, not identical: rebuilt objects compare by value.
    again = {k: _rebuild(v) for k, v in objects.items()}
    change = store.replace(kind, again)
    assert not change
    assert len(seen.changes) == 1
    assert store.last_change == before


def _rebuild(obj: Any) -> Any:
    return replace(obj)


def test_view_is_the_kinds_read_only_view(store: Store) -> None:
    assert store.view(SERVICES) is store.services
    assert store.view(ENDPOINTSLICES) is store.slices
    assert store.view(PODS) is store.pods
    store.replace(SERVICES, by_key(model_service("ns/a")))
    assert dict(store.view(SERVICES)) == by_key(model_service("ns/a"))
    with pytest.raises(TypeError):
        store.view(SERVICES)[("ns", "b")] = model_service("ns/b")  # type: ignore[index]


def test_a_relist_of_the_same_objects_keeps_the_merged_endpoints_it_had(store: Store) -> None:
    # A relist hands back the store's own objects when nothing changed (sources/kube.py):
    # the merged endpoints are kept too, so no second copy of them is built.
    slices = by_key(model_slice("a-1", "a", "10.1.0.1"), model_slice("b-1", "b", "10.1.0.2"))
    store.replace(ENDPOINTSLICES, slices)
    merged = dict(store.endpoints)
    assert not store.replace(ENDPOINTSLICES, dict(store.slices))
    assert all(store.endpoints[k] is merged[k] for k in merged)
    # Equal but rebuilt slices keep them as well; a changed one gets its own.
    again = {k: _rebuild(v) for k, v in slices.items()}
    again[("ns", "b-1")] = model_slice("b-1", "b", "10.1.0.22")
    assert store.replace(ENDPOINTSLICES, again).services == {("ns", "b")}
    assert store.endpoints[("ns", "a")] is merged[("ns", "a")]
    assert store.endpoints[("ns", "b")] == (model_endpoint("10.1.0.22"),)


def test_replace_of_an_empty_kind_with_nothing_notifies_nobody(
    store: Store, seen: Recorder
) -> None:
    assert not store.replace(SERVICES, {})
    assert seen.changes == []


def test_subscriber_sees_the_whole_replaced_kind(store: Store) -> None:
    observed: list[set[object]] = []
    store.subscribe(lambda change: observed.append(set(store.services)))
    store.replace(SERVICES, by_key(model_service("ns/a"), model_service("ns/b", ip="10.96.0.2")))
    assert observed == [{("ns", "a"), ("ns", "b")}]


def test_replace_unknown_kind_is_an_error(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        store.replace("ingresses", {})


# --- synced ------------------------------------------------------------------------------------


def test_synced_after_every_watched_kind_is_replaced_once() -> None:
    store = Store()
    assert store.watched == frozenset(KINDS)
    assert not store.synced
    assert store.unsynced_kinds() == sorted(KINDS)
    store.replace(SERVICES, {})
    store.replace(ENDPOINTSLICES, {})
    assert not store.synced
    assert store.unsynced_kinds() == ["namespaces", "pods"]
    store.replace(NAMESPACES, {})
    # Upserts are not a full list: they do not count towards sync.
    store.upsert(PODS, model_pod("a", "10.1.0.1"))
    assert store.unsynced_kinds() == ["pods"]
    assert not store.synced
    store.replace(PODS, {})
    assert store.synced
    assert store.unsynced_kinds() == []


def test_synced_counts_only_watched_kinds() -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    assert store.unsynced_kinds() == ["endpointslices", "services"]
    store.replace(PODS, {})
    assert not store.synced
    store.replace(SERVICES, by_key(model_service("ns/a")))
    assert store.unsynced_kinds() == ["endpointslices"]
    store.replace(ENDPOINTSLICES, {})
    assert store.synced


def test_nodes_change_only_when_a_node_visibly_changes(store: Store, seen: Recorder) -> None:
    # The proxy's Node: its zone label is all the store keeps; kdns serve never watches it.
    assert NODES not in KINDS
    assert store.replace(NODES, {"n1": Node("n1", "zone-a")}).nodes == {"n1"}
    assert store.nodes["n1"].zone == "zone-a"
    assert not store.upsert(NODES, Node("n1", "zone-a"))  # same zone: nobody is told
    assert store.upsert(NODES, Node("n1", "zone-b")).nodes == {"n1"}
    assert store.delete(NODES, "n1").nodes == {"n1"}
    assert not store.delete(NODES, "n1")
    assert dict(store.nodes) == {}
    assert [c.nodes for c in seen.changes] == [{"n1"}, {"n1"}, {"n1"}]


def test_service_cidrs_change_only_when_their_cidrs_change(store: Store, seen: Recorder) -> None:
    # ServiceCIDRs are no sync gate (the proxy programs Services without them, as before).
    assert SERVICECIDRS not in KINDS
    default = ServiceCIDR("kubernetes", ("10.96.0.0/16",))
    assert store.replace(SERVICECIDRS, {"kubernetes": default}).service_cidrs == {"kubernetes"}
    assert not store.upsert(SERVICECIDRS, default)
    extra = ServiceCIDR("extra", ("10.97.0.0/16", "fd00::/108"))
    assert store.upsert(SERVICECIDRS, extra).service_cidrs == {"extra"}
    assert store.delete(SERVICECIDRS, "kubernetes").service_cidrs == {"kubernetes"}
    assert not store.delete(SERVICECIDRS, "kubernetes")
    assert dict(store.service_cidrs) == {"extra": extra}
    assert [c.service_cidrs for c in seen.changes] == [{"kubernetes"}, {"extra"}, {"kubernetes"}]
    with pytest.raises(TypeError):
        store.upsert(SERVICECIDRS, Node("n1"))  # type: ignore[arg-type]


def test_when_synced_calls_back_once_when_the_last_kind_is_listed() -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    calls: list[tuple[bool, set[object]]] = []
    store.when_synced(lambda: calls.append((store.synced, set(store.services))))
    store.replace(SERVICES, by_key(model_service("ns/a")))
    store.upsert(ENDPOINTSLICES, model_slice("a-1", "a", "10.1.0.1"))  # not a full list
    assert calls == []
    store.replace(ENDPOINTSLICES, {})  # an empty list: no visible change, but synced
    assert calls == [(True, {("ns", "a")})]
    store.replace(ENDPOINTSLICES, {})
    store.replace(SERVICES, {})
    assert len(calls) == 1
    # Once synced, a new callback is called at once.
    late: list[bool] = []
    store.when_synced(lambda: late.append(store.synced))
    assert late == [True]


def test_synced_stays_true_after_later_replaces(store: Store) -> None:
    for kind in KINDS:
        store.replace(kind, {})
    store.replace(SERVICES, {})
    store.delete(SERVICES, ("ns", "missing"))
    assert store.synced


# --- EndpointSlice merging ---------------------------------------------------------------------


def test_slices_of_one_service_are_merged_in_slice_name_order(store: Store) -> None:
    store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("web-b", "web", "10.1.0.3", "10.1.0.1"),
            model_slice(
                "web-a", "web", "10.1.0.2", "10.1.0.1"
            ),  # 10.1.0.1 listed twice: counted once
            model_slice("other-a", "other", "10.1.0.9"),
        ),
    )
    assert store.endpoints[("ns", "web")] == (
        model_endpoint("10.1.0.2"),
        model_endpoint("10.1.0.1"),
        model_endpoint("10.1.0.3"),
    )
    assert store.endpoints[("ns", "other")] == (model_endpoint("10.1.0.9"),)


def test_upserts_merge_in_slice_name_order_whatever_the_arrival_order(store: Store) -> None:
    store.upsert(ENDPOINTSLICES, model_slice("web-b", "web", "10.1.0.2"))
    store.upsert(ENDPOINTSLICES, model_slice("web-a", "web", "10.1.0.1"))
    assert store.endpoints[("ns", "web")] == (
        model_endpoint("10.1.0.1"),
        model_endpoint("10.1.0.2"),
    )


def test_same_address_with_different_conditions_is_two_endpoints(store: Store) -> None:
    # Only an identical endpoint is a duplicate; a changed condition is visible.
    store.upsert(
        ENDPOINTSLICES,
        EndpointSlice(
            "ns",
            "web-a",
            "web",
            "IPv4",
            (model_endpoint("10.1.0.1"), model_endpoint("10.1.0.1", ready=False)),
        ),
    )
    assert len(store.endpoints[("ns", "web")]) == 2


def test_slices_with_the_same_name_in_two_namespaces_stay_apart(store: Store) -> None:
    store.upsert(ENDPOINTSLICES, model_slice("web-a", "web", "10.1.0.1", namespace="one"))
    store.upsert(ENDPOINTSLICES, model_slice("web-a", "web", "10.1.0.2", namespace="two"))
    assert store.endpoints[("one", "web")] == (model_endpoint("10.1.0.1"),)
    assert store.endpoints[("two", "web")] == (model_endpoint("10.1.0.2"),)


def test_upsert_slice_notifies_only_its_service(store: Store, seen: Recorder) -> None:
    store.replace(
        ENDPOINTSLICES,
        by_key(model_slice("web-a", "web", "10.1.0.1"), model_slice("db-a", "db", "10.1.0.9")),
    )
    seen.changes.clear()
    change = store.upsert(ENDPOINTSLICES, model_slice("web-b", "web", "10.1.0.2"))
    assert change.services == {("ns", "web")}
    assert store.endpoints[("ns", "web")] == (
        model_endpoint("10.1.0.1"),
        model_endpoint("10.1.0.2"),
    )
    assert store.endpoints[("ns", "db")] == (model_endpoint("10.1.0.9"),)
    assert [c.services for c in seen.changes] == [{("ns", "web")}]


def test_upsert_identical_slice_notifies_nobody(store: Store, seen: Recorder) -> None:
    store.upsert(ENDPOINTSLICES, model_slice("web-a", "web", "10.1.0.1"))
    change = store.upsert(ENDPOINTSLICES, model_slice("web-a", "web", "10.1.0.1"))
    assert not change
    assert len(seen.changes) == 1


def test_upsert_slice_whose_endpoints_are_already_in_another_slice_notifies_nobody(
    store: Store, seen: Recorder
) -> None:
    # A rebalance: the controller copies an endpoint into a new slice before removing it.
    store.upsert(ENDPOINTSLICES, model_slice("web-a", "web", "10.1.0.1"))
    assert not store.upsert(ENDPOINTSLICES, model_slice("web-b", "web", "10.1.0.1"))
    assert not store.delete(ENDPOINTSLICES, ("ns", "web-a"))
    assert store.endpoints[("ns", "web")] == (model_endpoint("10.1.0.1"),)
    assert len(seen.changes) == 1


def test_delete_slice_remerges_and_notifies_its_service(store: Store, seen: Recorder) -> None:
    store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("web-a", "web", "10.1.0.1"),
            model_slice("web-b", "web", "10.1.0.2"),
            model_slice("db-a", "db", "10.1.0.9"),
        ),
    )
    change = store.delete(ENDPOINTSLICES, ("ns", "web-a"))
    assert change.services == {("ns", "web")}
    assert store.endpoints[("ns", "web")] == (model_endpoint("10.1.0.2"),)

    change = store.delete(ENDPOINTSLICES, ("ns", "web-b"))
    assert change.services == {("ns", "web")}
    assert ("ns", "web") not in store.endpoints
    assert ("ns", "web-b") not in store.slices
    assert store.endpoints[("ns", "db")] == (model_endpoint("10.1.0.9"),)
    assert [c.services for c in seen.changes][1:] == [{("ns", "web")}, {("ns", "web")}]


def test_delete_unknown_slice_notifies_nobody(store: Store, seen: Recorder) -> None:
    assert not store.delete(ENDPOINTSLICES, ("ns", "nope"))
    assert seen.changes == []


def test_slice_moving_to_another_service_notifies_both(store: Store, seen: Recorder) -> None:
    store.upsert(ENDPOINTSLICES, model_slice("s-1", "old", "10.1.0.1"))
    store.upsert(ENDPOINTSLICES, model_slice("s-2", "new", "10.1.0.2"))
    seen.changes.clear()
    change = store.upsert(ENDPOINTSLICES, model_slice("s-1", "new", "10.1.0.1"))
    assert change.services == {("ns", "old"), ("ns", "new")}
    assert ("ns", "old") not in store.endpoints
    assert store.endpoints[("ns", "new")] == (
        model_endpoint("10.1.0.1"),
        model_endpoint("10.1.0.2"),
    )
    assert [c.services for c in seen.changes] == [{("ns", "old"), ("ns", "new")}]
    # The old service no longer owns the slice: deleting it touches only the new one.
    change = store.delete(ENDPOINTSLICES, ("ns", "s-1"))
    assert change.services == {("ns", "new")}
    assert store.endpoints[("ns", "new")] == (model_endpoint("10.1.0.2"),)


def test_replace_after_upserts_forgets_slices_not_listed(store: Store) -> None:
    store.upsert(ENDPOINTSLICES, model_slice("web-a", "web", "10.1.0.1"))
    store.upsert(ENDPOINTSLICES, model_slice("web-b", "web", "10.1.0.2"))
    change = store.replace(ENDPOINTSLICES, by_key(model_slice("web-b", "web", "10.1.0.2")))
    assert change.services == {("ns", "web")}
    assert store.endpoints[("ns", "web")] == (model_endpoint("10.1.0.2"),)
    # Upserts after a replace still merge with what the replace left.
    store.upsert(ENDPOINTSLICES, model_slice("web-c", "web", "10.1.0.3"))
    assert store.endpoints[("ns", "web")] == (
        model_endpoint("10.1.0.2"),
        model_endpoint("10.1.0.3"),
    )


# --- Services and namespaces -------------------------------------------------------------------


def test_upsert_service(store: Store, seen: Recorder) -> None:
    assert store.upsert(SERVICES, model_service("ns/web")).services == {("ns", "web")}
    assert not store.upsert(SERVICES, model_service("ns/web"))  # identical
    assert len(seen.changes) == 1
    assert store.upsert(
        SERVICES, model_service("ns/web", ports=(("http", "TCP", 81, None),))
    ).services == {("ns", "web")}
    assert store.services[("ns", "web")] == model_service(
        "ns/web", ports=(("http", "TCP", 81, None),)
    )
    assert len(seen.changes) == 2


def test_delete_service(store: Store, seen: Recorder) -> None:
    store.upsert(SERVICES, model_service("ns/web"))
    assert store.delete(SERVICES, ("ns", "web")).services == {("ns", "web")}
    assert ("ns", "web") not in store.services
    assert not store.delete(SERVICES, ("ns", "web"))
    assert len(seen.changes) == 2


def test_namespaces_upsert_and_delete(store: Store, seen: Recorder) -> None:
    assert store.upsert(NAMESPACES, Namespace("team")).namespaces == {"team"}
    assert not store.upsert(NAMESPACES, Namespace("team"))
    assert store.namespace_exists("team")
    assert store.delete(NAMESPACES, "team").namespaces == {"team"}
    assert not store.namespace_exists("team")
    assert not store.delete(NAMESPACES, "team")
    assert [c.namespaces for c in seen.changes] == [{"team"}, {"team"}]


def test_upsert_of_wrong_type_is_an_error(store: Store) -> None:
    with pytest.raises(TypeError):
        store.upsert(SERVICES, "web")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        (SERVICES, Namespace("ns")),
        (NAMESPACES, model_service("ns/web")),
        (PODS, model_slice("web-1", "web", "10.1.0.1")),
        (ENDPOINTSLICES, model_pod("a", "10.1.0.1")),
    ],
)
def test_upsert_into_another_kind_is_an_error(store: Store, kind: str, obj: Any) -> None:
    # The kind names the table: a Service is never filed as a namespace, whatever its type.
    with pytest.raises(TypeError, match=f"into {kind}"):
        store.upsert(kind, obj)  # type: ignore[arg-type]
    assert not any(store.services) and not any(store.namespaces) and not any(store.pods)


# --- read-only views ---------------------------------------------------------------------------


def test_views_are_read_only_and_made_once(store: Store) -> None:
    views = [
        store.namespaces,
        store.services,
        store.slices,
        store.endpoints,
        store.pods,
        store.pods_by_ip,
    ]
    store.replace(SERVICES, by_key(model_service("ns/a")))
    store.replace(ENDPOINTSLICES, by_key(model_slice("a-1", "a", "10.1.0.1")))
    store.replace(PODS, by_key(model_pod("p", "10.1.0.1")))
    store.replace(NAMESPACES, {"ns": Namespace("ns")})
    store.upsert(SERVICES, model_service("ns/b", ip="10.96.0.2"))
    # The same objects, showing the current state: a consumer may keep a reference.
    now = (store.namespaces, store.services, store.slices, store.endpoints, store.pods)
    assert all(a is b for a, b in zip((*now, store.pods_by_ip), views, strict=True))
    assert set(views[1]) == {("ns", "a"), ("ns", "b")}
    assert views[3] == {("ns", "a"): (model_endpoint("10.1.0.1"),)}
    assert set(views[5]) == {"10.1.0.1"}
    for view in views:
        with pytest.raises(TypeError):
            view["x"] = None  # type: ignore[index]
        assert not hasattr(view, "pop") and not hasattr(view, "clear")


# --- Pods --------------------------------------------------------------------------------------


def test_pod_upsert_and_delete_keep_pods_by_ip(store: Store, seen: Recorder) -> None:
    a = model_pod("a", "10.1.0.1")
    assert store.upsert(PODS, a).pod_ips == {"10.1.0.1"}
    assert store.pods_by_ip == {"10.1.0.1": (a,)}

    moved = model_pod("a", "10.1.0.2", "fd00::2")
    assert store.upsert(PODS, moved).pod_ips == {"10.1.0.1", "10.1.0.2", "fd00::2"}
    assert store.pods_by_ip == {"10.1.0.2": (moved,), "fd00::2": (moved,)}

    not_ready = model_pod("a", "10.1.0.2", "fd00::2", ready=False)
    assert store.upsert(PODS, not_ready).pod_ips == {"10.1.0.2", "fd00::2"}
    assert store.pods_by_ip["10.1.0.2"] == (not_ready,)

    assert not store.upsert(PODS, model_pod("a", "10.1.0.2", "fd00::2", ready=False))

    assert store.delete(PODS, ("ns", "a")).pod_ips == {"10.1.0.2", "fd00::2"}
    assert store.pods_by_ip == {}
    assert store.pods == {}
    assert not store.delete(PODS, ("ns", "a"))
    assert len(seen.changes) == 4


def test_pods_sharing_an_ip(store: Store) -> None:
    # Host-network pods on one node share the node's IP.
    a, b = model_pod("a", "192.0.2.10"), model_pod("b", "192.0.2.10", namespace="kube-system")
    store.upsert(PODS, a)
    store.upsert(PODS, b)
    assert set(store.pods_by_ip["192.0.2.10"]) == {a, b}
    store.delete(PODS, ("ns", "a"))
    assert store.pods_by_ip["192.0.2.10"] == (b,)
    store.replace(PODS, by_key(a, b))
    assert set(store.pods_by_ip["192.0.2.10"]) == {a, b}


# --- trigger_time ------------------------------------------------------------------------------


def test_trigger_time_of_an_upsert_is_the_slice_trigger_time(store: Store) -> None:
    assert store.upsert(
        ENDPOINTSLICES, model_slice("a-1", "a", "10.1.0.1", trigger=100.0)
    ).trigger_time == (100.0)
    assert store.upsert(ENDPOINTSLICES, model_slice("a-1", "a", "10.1.0.2")).trigger_time is None


def test_trigger_time_of_a_replace_is_the_earliest_changed_slice(store: Store) -> None:
    change = store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("a-1", "a", "10.1.0.1", trigger=300.0),
            model_slice("b-1", "b", "10.1.0.2", trigger=200.0),
            model_slice("c-1", "c", "10.1.0.3"),
        ),
    )
    assert change.trigger_time == 200.0


def test_trigger_time_ignores_unchanged_services(store: Store) -> None:
    store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("a-1", "a", "10.1.0.1", trigger=100.0), model_slice("b-1", "b", "10.1.0.2")
        ),
    )
    change = store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("a-1", "a", "10.1.0.1", trigger=100.0),  # unchanged
            model_slice("b-1", "b", "10.1.0.22", trigger=500.0),
        ),
    )
    assert change.services == {("ns", "b")}
    assert change.trigger_time == 500.0


def test_trigger_time_ignores_unchanged_slices_of_a_changed_service(store: Store) -> None:
    # Change.trigger_time is "the earliest time a change in this batch was made": a slice that
    # this replace did not change says nothing about when this change happened.
    store.replace(ENDPOINTSLICES, by_key(model_slice("a-1", "a", "10.1.0.1", trigger=100.0)))
    change = store.replace(
        ENDPOINTSLICES,
        by_key(
            model_slice("a-1", "a", "10.1.0.1", trigger=100.0),  # unchanged
            model_slice("a-2", "a", "10.1.0.2", trigger=200.0),  # new
        ),
    )
    assert change.services == {("ns", "a")}
    assert change.trigger_time == 200.0


def test_trigger_time_of_a_move_is_the_slice_trigger_time(store: Store) -> None:
    store.upsert(ENDPOINTSLICES, model_slice("s-1", "old", "10.1.0.1", trigger=100.0))
    change = store.upsert(ENDPOINTSLICES, model_slice("s-1", "new", "10.1.0.1", trigger=250.0))
    assert change.trigger_time == 250.0


def test_change_merge_keeps_the_earliest_trigger_time() -> None:
    change = Change(services={("ns", "a")}, trigger_time=300.0)
    change.merge(Change(services={("ns", "b")}, trigger_time=200.0))
    change.merge(Change(pod_ips={"10.1.0.1"}, trigger_time=None))
    change.merge(Change(namespaces={"x"}, trigger_time=400.0))
    assert change == Change(
        services={("ns", "a"), ("ns", "b")},
        namespaces={"x"},
        pod_ips={"10.1.0.1"},
        trigger_time=200.0,
    )
    assert not Change(trigger_time=1.0)  # a time alone is not a visible change


# --- last_change (the SOA serial) --------------------------------------------------------------


def test_last_change_strictly_increases_on_each_visible_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(kdns.store.time, "time", lambda: clock[0])
    store = Store()
    assert store.last_change == 1000
    serials = []
    for op in (
        lambda: store.upsert(SERVICES, model_service("ns/a")),
        lambda: store.upsert(NAMESPACES, Namespace("ns")),
        lambda: store.upsert(PODS, model_pod("a", "10.1.0.1")),
        lambda: store.upsert(ENDPOINTSLICES, model_slice("a-1", "a", "10.1.0.1")),
        lambda: store.delete(SERVICES, ("ns", "a")),
    ):
        op()
        serials.append(store.last_change)
    # The clock did not move: each change still gets a larger serial.
    assert serials == [1001, 1002, 1003, 1004, 1005]

    store.upsert(NAMESPACES, Namespace("ns"))  # nothing visible
    store.replace(SERVICES, {})
    assert store.last_change == 1005

    clock[0] = 5000.7
    store.upsert(SERVICES, model_service("ns/b"))
    assert store.last_change == 5000
    clock[0] = 4000.0  # the clock stepped back: the serial still never goes down
    store.upsert(SERVICES, model_service("ns/c"))
    assert store.last_change == 5001

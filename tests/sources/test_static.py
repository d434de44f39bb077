"""kdns.sources.static: a reload hands the store what changed, and the store ends as the files say."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdns.sources import static
from kdns.sources.static import ManifestSource
from kdns.store import Change, Store


def service(name: str, ip: str) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: {ip}\n"
        "  ports:\n  - port: 80\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata:\n  name: {name}-a\n  labels:\n    kubernetes.io/service-name: {name}\n"
        f"endpoints:\n- addresses: [10.1.0.{ip.rsplit('.', 1)[1]}]\n"
    )


def write_services(folder: Path, ips: dict[str, str]) -> None:
    folder.mkdir(exist_ok=True)
    for name, ip in ips.items():
        (folder / f"{name}.yaml").write_text(service(name, ip))


def reload(source: ManifestSource) -> None:
    assert source.load() == []
    source.apply()


def assert_store_is(store: Store, ips: dict[str, str]) -> None:
    assert {name: svc.cluster_ips for (_, name), svc in store.services.items()} == {
        name: (ip,) for name, ip in ips.items()
    }
    assert {key for key in store.endpoints} == {("default", name) for name in ips}


def test_a_one_file_edit_reaches_the_store_as_that_file_s_changes(tmp_path: Path) -> None:
    ips = {f"s{i}": f"10.96.0.{i + 1}" for i in range(20)}
    write_services(tmp_path / "m", ips)
    store = Store()
    source = ManifestSource([str(tmp_path / "m")], store)
    reload(source)
    changes: list[Change] = []
    store.subscribe(changes.append)

    ips["s3"] = "10.96.1.3"
    write_services(tmp_path / "m", {"s3": ips["s3"]})
    reload(source)
    assert_store_is(store, ips)
    # Its Service and its EndpointSlice (a new address), and nothing about the 19 others.
    assert changes == [Change(services={("default", "s3")})] * 2

    changes.clear()
    (tmp_path / "m" / "s4.yaml").unlink()
    del ips["s4"]
    reload(source)
    assert_store_is(store, ips)
    assert {key for change in changes for key in change.services} == {("default", "s4")}


def test_a_big_change_replaces_each_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static, "MAX_UPDATES", 3)
    ips = {f"s{i}": f"10.96.0.{i + 1}" for i in range(10)}
    write_services(tmp_path / "m", ips)
    store = Store()
    source = ManifestSource([str(tmp_path / "m")], store)
    reload(source)
    replaced: list[str] = []
    monkeypatch.setattr(
        store,
        "replace",
        lambda kind, objs, f=store.replace: (replaced.append(kind), f(kind, objs))[1],
    )

    ips = {name: f"10.96.2.{i + 101}" for i, name in enumerate(ips)}
    write_services(tmp_path / "m", ips)
    reload(source)
    assert_store_is(store, ips)
    assert replaced == ["services", "endpointslices"]

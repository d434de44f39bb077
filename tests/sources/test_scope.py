"""kdns.sources.scope: CoreDNS's kubernetes `namespaces` and `labels`, applied by the manifests
reader and by the API source alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdns.config import Config, ConfigError
from kdns.labelselector import parse
from kdns.sources.kube import ENDPOINTSLICES_RESOURCE, PODS_RESOURCE, SERVICES_RESOURCE
from kdns.sources.manifests import ManifestReader
from kdns.sources.scope import Scope

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {dns: "on"}}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: quiet, namespace: default}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: team, labels: {dns: "on"}}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: other, labels: {dns: "on"}}
spec: {clusterIP: 10.96.0.13, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
"""

CASES = [
    # (namespaces, labels, Services served, namespaces known)
    ((), "", "default/quiet default/web other/web team/api", "default other team"),
    (("default", "team"), "", "default/quiet default/web team/api", "default team"),
    ((), "dns=on", "default/web other/web team/api", "default other team"),
    (("default",), "dns", "default/web", "default"),
    (("default",), "dns!=on", "default/quiet", "default"),
]


@pytest.mark.parametrize("namespaces, labels, services, known", CASES)
def test_manifests_serve_only_the_selected_objects(
    tmp_path: Path, namespaces: tuple[str, ...], labels: str, services: str, known: str
) -> None:
    (tmp_path / "all.yaml").write_text(MANIFESTS)
    scope = Scope(frozenset(namespaces), parse(labels))
    found, errors = ManifestReader(scope).load([str(tmp_path)])
    assert errors == []
    assert " ".join(sorted(f"{ns}/{n}" for ns, n in found.services)) == services
    assert " ".join(sorted(found.namespaces)) == known
    # A slice in a namespace left out is left out too.
    assert (("other", "web-1") in found.slices) is ("other" in known.split())


def test_the_api_server_gets_the_services_selector_and_nothing_else() -> None:
    scope = Scope(frozenset({"default"}), parse("dns in (on, yes)"))
    services = SERVICES_RESOURCE.scoped(scope, "Service")
    assert services.selectors() == [("labelSelector", "dns in (on,yes)")]
    assert ENDPOINTSLICES_RESOURCE.scoped(scope, "EndpointSlice").selectors() == []
    assert PODS_RESOURCE.scoped(scope, "Pod").selectors() == [
        ("fieldSelector", "status.phase!=Succeeded,status.phase!=Failed")
    ]
    # No scope: the resource as it is.
    assert SERVICES_RESOURCE.scoped(Scope(), "Service") is SERVICES_RESOURCE


def test_objects_out_of_scope_convert_to_nothing() -> None:
    scope = Scope(frozenset({"default"}), parse("dns=on"))
    convert = SERVICES_RESOURCE.scoped(scope, "Service").convert
    obj = {
        "metadata": {"name": "web", "namespace": "default", "labels": {"dns": "on"}},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
    }
    assert [key for key, _ in convert(obj)] == [("default", "web")]
    assert convert({**obj, "metadata": {**obj["metadata"], "namespace": "other"}}) == []
    assert convert({**obj, "metadata": {**obj["metadata"], "labels": {}}}) == []


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"kubernetes.labels": "app in (a"}, "kubernetes.labels: not a label selector: "),
        ({"kubernetes.namespaces": ["Default"]}, "kubernetes.namespaces: must be a list of"),
    ],
)
def test_bad_keys_are_named(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config().with_overrides("kdns.yaml:3", **keys)

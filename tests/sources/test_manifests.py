"""kdns.sources.manifests: files → documents with lines → the slim model, and one-line errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdns.model import EndpointSlice
from kdns.sources import documents
from kdns.sources.documents import Document
from kdns.sources.manifests import (
    ManifestReader,
    ManifestSet,
    load,
    manifest_files,
    parse_text,
    read_objects,
)
from tests.builders import api_pod, manifest_text
from tests.conftest import need

EXAMPLES = Path(__file__).parents[2] / "config" / "examples"


def test_pyyaml_has_libyaml() -> None:
    # Without it the reader falls back to the pure-Python parser, several times slower.
    need(yaml.__with_libyaml__, "PyYAML built without libyaml (Debian libyaml-dev, then pip)")
    assert issubclass(documents.Loader, yaml.CSafeLoader)


LOADERS = [pytest.param(yaml.SafeLoader, id="pyyaml")]
if hasattr(yaml, "CSafeLoader"):
    LOADERS.append(pytest.param(yaml.CSafeLoader, id="libyaml"))

REDIS = """\
apiVersion: v1
kind: Service
metadata:
  name: redis
spec:
  clusterIP: 10.97.97.97
  selector:
    app: redis
  ports:
  - name: redis
    port: 6379
    targetPort: redis
"""


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)


def load_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str | bytes]
) -> tuple[ManifestSet, list[str]]:
    """Write `files` under tmp_path and load them by relative name, so errors read "a.yaml:3"."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, files)
    found, errors = load(list(files))
    return found, [str(e) for e in errors]


def item(text: str) -> str:
    """`text` (one YAML mapping) as an item of a block sequence, the way kubectl indents it."""
    return "".join(
        ("- " if i == 0 else "  ") + line for i, line in enumerate(text.splitlines(True))
    )


def endpoints_of(found: ManifestSet, namespace: str, service: str) -> list[tuple[Any, ...]]:
    """(address, ready, hostname, port numbers) of every endpoint of a Service, by address."""
    return sorted(
        (e.address, e.ready, e.hostname, tuple(p.port for p in e.ports))
        for s in found.slices.values()
        if s.service_key == (namespace, service)
        for e in s.endpoints
    )


# --- reading files ------------------------------------------------------------------------------


def test_several_documents_per_file_and_empty_documents_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        "---\n---\n# only a comment\n---\n"
        + REDIS
        + "---\n"
        + manifest_text(api_pod("redis-0", "10.0.0.1"))
    )
    text += "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n---\n"
    found, errors = load_files(tmp_path, monkeypatch, {"all.yaml": text})
    assert errors == []
    assert list(found.services) == [("default", "redis")]
    assert list(found.pods) == [("default", "redis-0")]
    assert sorted(found.namespaces) == ["default", "prod"]


def test_lists_nested_and_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `kubectl get -o yaml` writes a List; a List may hold a List; the API's typed lists
    # (ServiceList) leave kind and apiVersion out of their items.
    inner = {"apiVersion": "v1", "kind": "List", "items": [api_pod("redis-0", "10.0.0.1")]}
    service_list = {
        "apiVersion": "v1",
        "kind": "ServiceList",
        "items": [{"metadata": {"name": "typed", "namespace": "prod"}, "spec": {}}],
    }
    outer = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(REDIS), inner]}
    found, errors = load_files(
        tmp_path, monkeypatch, {"l.yaml": manifest_text(outer, service_list)}
    )
    assert errors == []
    assert sorted(found.services) == [("default", "redis"), ("prod", "typed")]
    assert list(found.pods) == [("default", "redis-0")]


def test_json_file_with_tab_indentation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(REDIS)]}
    found, errors = load_files(
        tmp_path, monkeypatch, {"dump.json": json.dumps(listing, indent="\t")}
    )
    assert errors == []
    assert found.services[("default", "redis")].cluster_ips == ("10.97.97.97",)


def test_folder_recursion_sorted_and_filtered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def service(name: str) -> str:
        return REDIS.replace("name: redis\n", f"name: {name}\n", 1)

    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        {
            "m/z.yaml": service("z"),
            "m/b/deep/x.yml": service("x"),
            "m/a.json": json.dumps(yaml.safe_load(service("a"))),
            "m/notes.txt": "kind: Servise",
            # A ConfigMap volume holds each file again under ..data and a timestamped folder.
            "m/..data/z.yaml": service("z"),
            "m/.hidden.yaml": "kind: Servise",
        },
    )
    # As a ConfigMap volume does it: the visible name is a link into ..data.
    write(tmp_path, {"m/..data/c.yaml": service("c")})
    (tmp_path / "m" / "c.yaml").symlink_to(Path("..data") / "c.yaml")
    (tmp_path / "m" / "b" / "loop").symlink_to(Path(".."))  # must not walk forever
    assert manifest_files(["m"]) == ["m/a.json", "m/b/deep/x.yml", "m/c.yaml", "m/z.yaml"]
    found, errors = load(["m"])
    assert errors == []
    assert sorted(name for _, name in found.services) == ["a", "c", "x", "z"]


def test_a_file_given_twice_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"m/a.yaml": REDIS})
    assert manifest_files(["m/a.yaml", "m"]) == ["m/a.yaml"]


FIELDS = """\
apiVersion: v1
kind: Service
metadata:
  name: redis
  labels:
    kubernetes.io/service-name: x
spec:
  ports:
  - name: a
    port: 1
  - name: b
    port: 2
"""


@pytest.mark.parametrize(
    ("field", "line"),
    [
        ("kind", 2),
        ("spec.ports[1].port", 12),
        ("spec.ports[1]", 11),
        ("spec.ports[1].targetPort", 11),  # missing: its parent's line
        ("metadata.labels.kubernetes.io/service-name", 6),  # a key with dots
        ("metadata.name", 4),
        ("metadata.namespace", 3),  # missing: the metadata line
        ("status.podIP", 1),  # missing and no parent: the document's first line
    ],
)
def test_field_lines(field: str, line: int) -> None:
    docs, errors = parse_text(FIELDS, "a.yaml")
    assert errors == []
    assert [doc.line_of(field) for doc in docs] == [line]


def test_field_lines_in_json() -> None:
    text = json.dumps(yaml.safe_load(FIELDS), indent=1)
    docs, errors = parse_text(text, "a.json")
    assert errors == []
    lines = text.splitlines()
    assert lines[docs[0].line_of("spec.ports[1].port") - 1] == '    "port": 2'
    assert lines[docs[0].line_of("kind") - 1] == ' "kind": "Service",'


@pytest.mark.parametrize(
    ("obj", "counted_as"),
    [
        ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}}, "Deployment"),
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}},
            "ConfigMap",
        ),
        ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, "Secret"),
        (
            {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"}},
            "Ingress",
        ),
        (
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": "crontabs.stable.example.com"},
            },
            "CustomResourceDefinition",
        ),
        (
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "kdns"},
                "rules": [],
            },
            "ClusterRole",
        ),
        (
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "p"}},
            "PodDisruptionBudget",
        ),
        # Custom resources, even one named Service and one in a group ending in k8s.io; their
        # schema is unknown, so nothing of them is checked beyond kind and apiVersion.
        (
            {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "k"}},
            "Service.serving.knative.dev",
        ),
        (
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute"},
            "HTTPRoute.gateway.networking.k8s.io",
        ),
        (
            {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"}},
            "Certificate.cert-manager.io",
        ),
    ],
    ids=lambda v: f"{v['apiVersion']}/{v['kind']}" if isinstance(v, dict) else "",
)
def test_skipped_kinds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, obj: dict, counted_as: str
) -> None:
    found, errors = load_files(tmp_path, monkeypatch, {"x.yaml": manifest_text(obj)})
    assert errors == []
    assert (found.namespaces, found.services, found.slices, found.pods) == ({}, {}, {}, {})
    assert found.ignored == {counted_as: 1}


def test_ignored_kinds_are_counted_beside_served_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "c-"}}
    found, errors = load_files(
        tmp_path,
        monkeypatch,
        {
            "a.yaml": manifest_text(deployment)
            + "---\n"
            + manifest_text(cm)
            + "---\n"
            + manifest_text(cm),
            "db.yaml": DB,
        },
    )
    assert errors == []
    assert found.ignored == {"ConfigMap": 2, "Deployment": 1}
    assert ("prod", "db") in found.services


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 2\n",
            "x.yaml:1: Deployment: metadata.name: required field is missing",
        ),
        (
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  labels: {}\n",
            "x.yaml:3: DaemonSet: metadata.name: required field is missing",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: [a]\n",
            "x.yaml:3: ConfigMap: metadata: expected a mapping, got ['a']",
        ),
        (
            "apiVersion: apps/v1\nkind: Deploymnet\nmetadata:\n  name: w\n",
            "x.yaml:2: Deploymnet default/w: kind: unknown kind 'Deploymnet'",
        ),
    ],
)
def test_malformed_ignored_documents_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    found, errors = load_files(tmp_path, monkeypatch, {"x.yaml": text})
    assert [str(e) for e in errors] == [expected]
    assert found.ignored == {}


# --- endpoints ----------------------------------------------------------------------------------

DB = """\
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: prod
spec:
  clusterIP: 10.96.0.40
  ports:
  - name: pg
    port: 5432
---
apiVersion: v1
kind: Endpoints
metadata:
  name: db
  namespace: prod
subsets:
- addresses:
  - ip: 10.1.0.1
  - ip: fd00::1
  notReadyAddresses:
  - ip: 10.1.0.2
  ports:
  - name: pg
    port: 5432
"""


def test_endpoints_are_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found, errors = load_files(tmp_path, monkeypatch, {"db.yaml": DB})
    assert errors == []
    assert sorted(found.slices) == [("prod", "db-0-ipv4"), ("prod", "db-0-ipv6")]
    assert endpoints_of(found, "prod", "db") == [
        ("10.1.0.1", True, "", (5432,)),
        ("10.1.0.2", False, "", (5432,)),
        ("fd00::1", True, "", (5432,)),
    ]


def pg_slice(name: str, service: str) -> dict[str, object]:
    """An IPv4 EndpointSlice in prod for `service`: port pg 5432, one endpoint 10.1.0.9."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432}],
        "endpoints": [{"addresses": ["10.1.0.9"]}],
    }


def test_endpointslices_win_over_endpoints_of_the_same_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `kubectl get endpoints,endpointslices -o yaml` dump holds both for every Service.
    given = pg_slice("db-x7k2p", service="db")
    found, errors = load_files(
        tmp_path, monkeypatch, {"db.yaml": DB + "---\n" + manifest_text(given)}
    )
    assert errors == []
    assert list(found.slices) == [("prod", "db-x7k2p")]
    assert endpoints_of(found, "prod", "db") == [("10.1.0.9", True, "", (5432,))]


def test_a_converted_slice_may_not_take_the_name_of_a_given_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slice converted from db's Endpoints (line 12) would be named db-0-ipv4, a name a
    # given slice of another Service already has: that slice stays, the converted one is an
    # error (and its IPv6 sibling is kept).
    given = pg_slice("db-0-ipv4", service="other")
    found, errors = load_files(
        tmp_path,
        monkeypatch,
        {"db.yaml": DB, "given.yaml": manifest_text(given)},
    )
    assert errors == [
        "db.yaml:12: Endpoints prod/db: its EndpointSlice would be named 'db-0-ipv4', but the "
        "EndpointSlice at given.yaml:1 already has that name"
    ]
    assert sorted(found.slices) == [("prod", "db-0-ipv4"), ("prod", "db-0-ipv6")]
    assert endpoints_of(found, "prod", "other") == [("10.1.0.9", True, "", (5432,))]


@pytest.mark.parametrize(
    ("the_pod", "expected"),
    [
        (api_pod("p", "10.0.0.1"), [("10.0.0.1", True, "", (6379,))]),
        (api_pod("p", "10.0.0.1", ready=False), [("10.0.0.1", False, "", (6379,))]),
        (api_pod("p", "10.0.0.1", phase="Succeeded"), []),
        (api_pod("p", "10.0.0.1", phase="Failed"), []),
        (api_pod("p", None, phase="Pending", ready=False), []),
        (api_pod("p", "10.0.0.1", namespace="other"), []),
        (api_pod("p", "10.0.0.1", labels={"app": "web"}), []),
        (api_pod("p", "10.0.0.1", labels={}), []),
        # The endpoint hostname: spec.hostname only when spec.subdomain names this Service.
        (
            api_pod("p", "10.0.0.1", hostname="web-0", subdomain="redis"),
            [("10.0.0.1", True, "web-0", (6379,))],
        ),
        (
            api_pod("p", "10.0.0.1", hostname="web-0", subdomain="other"),
            [("10.0.0.1", True, "", (6379,))],
        ),
        # targetPort "redis" is resolved through the Pod's container port of that name.
        (api_pod("p", "10.0.0.1", port=7000), [("10.0.0.1", True, "", (7000,))]),
    ],
    ids=[
        "ready",
        "not-ready",
        "succeeded",
        "failed",
        "no-ip",
        "other-namespace",
        "other-labels",
        "no-labels",
        "hostname-subdomain-matches",
        "hostname-subdomain-differs",
        "named-target-port",
    ],
)
def test_slices_derived_from_pods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, the_pod: dict, expected: list
) -> None:
    found, errors = load_files(
        tmp_path, monkeypatch, {"r.yaml": REDIS + "---\n" + manifest_text(the_pod)}
    )
    assert errors == []
    assert endpoints_of(found, "default", "redis") == expected


def test_nothing_derived_when_endpoints_are_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "redis-abc", "labels": {"kubernetes.io/service-name": "redis"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.9.9.9"]}],
    }
    given_endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "redis"},
        "subsets": [],  # even an empty one: someone else manages this Service's endpoints
    }
    for given, expected in ((given_slice, [("10.9.9.9", True, "", ())]), (given_endpoints, [])):
        text = REDIS + "---\n" + manifest_text(api_pod("redis-0", "10.0.0.1"), given)
        found, errors = load_files(tmp_path, monkeypatch, {"r.yaml": text})
        assert errors == []
        assert endpoints_of(found, "default", "redis") == expected


def test_nodes_are_read_for_their_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `kubectl get nodes -o yaml`: the proxy's topology hints need its own Node's zone label.
    zoned = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-a1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
    }
    bare = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b1"}}
    bad = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-c1", "labels": ["x"]}}
    found, errors = load_files(tmp_path, monkeypatch, {"n.yaml": manifest_text(zoned, bare, zoned)})
    assert errors == ["n.yaml:13: Node node-a1: defined twice; first at n.yaml:1"]
    assert {n.name: n.zone for n in found.nodes.values()} == {"node-a1": "zone-a", "node-b1": ""}
    assert found.namespaces == {}  # a Node is cluster-scoped
    found, errors = load_files(tmp_path, monkeypatch, {"m.yaml": manifest_text(bad)})
    assert errors == ["m.yaml:5: Node node-c1: metadata.labels: expected a mapping, got ['x']"]


def test_service_cidrs_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `kubectl get servicecidrs -o yaml`: the proxy drops traffic to unallocated ClusterIPs.
    default = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": ["10.96.0.0/16", "fd00:10:96::/112"]},
    }
    bad = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": "extra"},
        "spec": {"cidrs": ["10.97.0.1/16"]},
    }
    beta = {**default, "apiVersion": "networking.k8s.io/v1beta1"}
    found, errors = load_files(tmp_path, monkeypatch, {"c.yaml": manifest_text(default)})
    assert errors == []
    assert {c.name: c.cidrs for c in found.service_cidrs.values()} == {
        "kubernetes": ("10.96.0.0/16", "fd00:10:96::/112")
    }
    assert found.namespaces == {}  # a ServiceCIDR is cluster-scoped
    found, errors = load_files(tmp_path, monkeypatch, {"d.yaml": manifest_text(bad, beta)})
    assert errors == [
        "d.yaml:7: ServiceCIDR extra: spec.cidrs[0]: '10.97.0.1/16' is not a CIDR without host "
        "bits",
        "d.yaml:9: ServiceCIDR kubernetes: apiVersion: ServiceCIDR is served as "
        "'networking.k8s.io/v1', not 'networking.k8s.io/v1beta1'",
    ]


def test_namespaces_are_declared_or_implied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "declared"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "svc"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},  # in default
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e", "namespace": "ep"}},
        api_pod("p", "10.0.0.1", namespace="pods"),
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "x",
                "namespace": "slices",
                "labels": {"kubernetes.io/service-name": "x"},
            },
        },
    ]
    found, errors = load_files(tmp_path, monkeypatch, {"n.yaml": manifest_text(*objs)})
    assert errors == []
    assert sorted(found.namespaces) == ["declared", "default", "ep", "pods", "slices", "svc"]
    assert found.namespaces["pods"].name == "pods"


# --- errors: one line naming the file, the line and the field ------------------------------------

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"bad.yaml": REDIS.replace("10.97.97.97", "10.97.97.x")},
            [
                "bad.yaml:6: Service default/redis: spec.clusterIP: "
                "'10.97.97.x' is not an IP address"
            ],
            id="cluster-ip-not-an-ip",
        ),
        pytest.param(
            {"bad.yaml": REDIS + "  - name: other\n    port: 70000\n"},
            [
                "bad.yaml:14: Service default/redis: spec.ports[1].port: "
                "port 70000 is out of range 1-65535"
            ],
            id="port-out-of-range",
        ),
        pytest.param(
            {"bad.yaml": REDIS.replace("kind: Service", "kind: Servise")},
            ["bad.yaml:2: Servise default/redis: kind: unknown kind 'Servise'"],
            id="unknown-kind",
        ),
        pytest.param(
            {"bad.yaml": "# the redis Service\napiVersion: v1\nmetadata:\n  name: redis\n"},
            ["bad.yaml:2: object default/redis: kind: required field is missing"],
            id="missing-kind",
        ),
        pytest.param(
            {"bad.yaml": REDIS.replace("  name: redis\n", "  namespace: prod\n")},
            ["bad.yaml:3: Service: metadata.name: required field is missing"],
            id="missing-name",
        ),
        pytest.param(
            {"bad.yaml": NAMESPACE + "---\napiVersion: v1\nkind: Service\nspec: {}\n"},
            ["bad.yaml:6: Service: metadata.name: required field is missing"],
            id="missing-metadata",
        ),
        pytest.param(
            {"bad.yaml": REDIS + "---\n" + REDIS},
            ["bad.yaml:14: Service default/redis: defined twice; first at bad.yaml:1"],
            id="duplicate-in-one-file",
        ),
        pytest.param(
            {"a.yaml": NAMESPACE + "---\n" + REDIS, "b.yaml": "\n" + REDIS},
            ["b.yaml:2: Service default/redis: defined twice; first at a.yaml:6"],
            id="duplicate-in-two-files",
        ),
        pytest.param(
            {"bad.yaml": "apiVersion: app/v1\nkind: Deployment\nmetadata:\n  name: web\n"},
            ["bad.yaml:1: Deployment default/web: apiVersion: unknown apiVersion 'app/v1'"],
            id="unknown-api-version",
        ),
        pytest.param(
            {
                "bad.yaml": "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\n"
                "metadata:\n  name: s\n"
            },
            [
                "bad.yaml:1: EndpointSlice default/s: apiVersion: EndpointSlice is served as "
                "'discovery.k8s.io/v1', not 'discovery.k8s.io/v1beta1'"
            ],
            id="wrong-api-version",
        ),
        pytest.param(
            {
                "bad.yaml": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                "metadata:\n  name: s\n  namespace: prod\naddressType: IPv4\n"
            },
            [
                "bad.yaml:3: EndpointSlice prod/s: metadata.labels.kubernetes.io/service-name: "
                "required field is missing"
            ],
            id="slice-without-service-label",
        ),
        pytest.param(
            {
                "bad.yaml": "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n"
                "metadata:\n  name: web\n  namespace: prod\nspec:\n  type: Headles\n"
            },
            [
                "bad.yaml:7: ServiceImport prod/web: spec.type: 'Headles' is not one of "
                "ClusterSetIP, Headless"
            ],
            id="serviceimport-bad-type",
        ),
        pytest.param(
            {
                "bad.yaml": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                "metadata:\n  name: s\n  namespace: prod\n  labels:\n"
                "    multicluster.kubernetes.io/service-name: web\naddressType: IPv4\n"
            },
            [
                "bad.yaml:6: EndpointSlice prod/s: "
                "metadata.labels.multicluster.kubernetes.io/source-cluster: "
                "required field is missing"
            ],
            id="imported-slice-without-cluster",
        ),
        pytest.param(
            {
                "bad.yaml": "apiVersion: v1\nkind: List\nitems:\n"
                + item(NAMESPACE)
                + item(REDIS.replace("10.97.97.97", "::x"))
            },
            ["bad.yaml:13: Service default/redis: spec.clusterIP: '::x' is not an IP address"],
            id="error-in-a-list-item",
        ),
        pytest.param(
            {"bad.yaml": "apiVersion: v1\nkind: List\nitems:\n  name: x\n"},
            ["bad.yaml:3: List: items: expected a list"],
            id="list-items-not-a-list",
        ),
        pytest.param(
            {"bad.yaml": DB.replace("ip: 10.1.0.2", "ip: 10.1.0.256")},
            [
                "bad.yaml:22: Endpoints prod/db: subsets[0].notReadyAddresses[0].ip: "
                "'10.1.0.256' is not an IP address"
            ],
            id="endpoints-bad-ip",
        ),
        pytest.param(
            {
                "bad.json": '{\n "apiVersion": "v1",\n "kind": "Service",\n'
                ' "metadata": {"name": "j",\n  "namespace": "prod"},\n'
                ' "spec": {"ports": [{"port": 0}]}\n}\n'
            },
            ["bad.json:6: Service prod/j: spec.ports[0].port: port 0 is out of range 1-65535"],
            id="json-object-error",
        ),
        pytest.param(
            {"bad.json": '{\n "apiVersion": "v1",\n "kind": "Service"\n "metadata": {}\n}\n'},
            ["bad.json:4: invalid JSON: Expecting ',' delimiter"],
            id="json-syntax-error",
        ),
        pytest.param(
            {"bad.yaml": "---\n- a\n- b\n"},
            ["bad.yaml:2: expected a Kubernetes object, got ['a', 'b']"],
            id="not-a-mapping",
        ),
        pytest.param(
            {
                "bad.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: caf\xe9\n".encode(
                    "latin-1"
                )
            },
            ["bad.yaml: cannot read: not UTF-8 text (invalid continuation byte)"],
            id="not-utf8",
        ),
    ],
)
def test_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict, expected: list[str]
) -> None:
    _, errors = load_files(tmp_path, monkeypatch, files)
    assert errors == expected


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"ok.yaml": REDIS})
    found, errors = load(["ok.yaml", "nope.yaml", "gone/"])
    assert [str(e) for e in errors] == [
        "gone/: no such file or folder",
        "nope.yaml: no such file or folder",
    ]
    assert errors[0].line is None
    assert list(found.services) == [("default", "redis")]  # the rest still loads


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        pytest.param(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: r\nspec:\n\tclusterIP: 1.2.3.4\n",
            r"bad\.yaml:6: a tab character is used for indentation; YAML allows only spaces",
            id="tab-under-spec",
        ),
        pytest.param(
            REDIS.replace("    port: 6379", "\t  port: 6379"),
            r"bad\.yaml:11: a tab character is used for indentation; YAML allows only spaces",
            id="tab-in-a-list-item",
        ),
        pytest.param(
            REDIS.replace("    app: redis\n", "    app: redis\n\trole: x\n"),
            r"bad\.yaml:9: a tab character is used for indentation; YAML allows only spaces",
            id="tab-in-labels",
        ),
        pytest.param(
            REDIS.replace("name: redis\n", "name: redis: x\n", 1),
            r"bad\.yaml:4: invalid YAML: mapping values are not allowed (here|in this context)",
            id="colon-in-plain-value",
        ),
        pytest.param(
            REDIS.replace("  selector:", " selector:"),
            r"bad\.yaml:7: invalid YAML: .*\(while parsing a block mapping started on line 1\)",
            id="bad-indentation",
        ),
        pytest.param(
            'apiVersion: v1\nkind: "Service\n',
            r"bad\.yaml:3: invalid YAML: found unexpected end of stream "
            r"\(while scanning a quoted scalar started on line 2\)",
            id="unterminated-quote",
        ),
        pytest.param(
            REDIS.replace("name: redis\n", "name: re\x01dis\n", 1),
            r"bad\.yaml:4: invalid YAML: unacceptable character #x0001: .*",
            id="control-character",
        ),
    ],
)
def test_yaml_syntax_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loader: type,
    text: str,
    pattern: str,
) -> None:
    # Both parsers (libyaml and pure-Python PyYAML) word their errors differently.
    monkeypatch.setattr(documents, "Loader", loader)
    found, errors = load_files(tmp_path, monkeypatch, {"bad.yaml": NAMESPACE + "---\n" + text})
    offset = NAMESPACE.count("\n") + 1  # the patterns count lines from the start of `text`
    assert len(errors) == 1
    assert re.fullmatch(_shift(pattern, offset), errors[0]), errors[0]
    # A file that does not parse contributes nothing, not even the objects before the error.
    assert found.namespaces == {}


def _shift(pattern: str, offset: int) -> str:
    """Move every line number in `pattern` down by `offset` lines."""
    return re.sub(
        r"(?<=\.yaml:)(\d+)|(?<=line )(\d+)",
        lambda m: str(int(m.group(0)) + offset),
        pattern,
    )


def test_errors_are_sorted_by_file_then_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_kind = "apiVersion: v1\nkind: Servise\nmetadata:\n  name: x\n"
    _, errors = load_files(
        tmp_path,
        monkeypatch,
        {
            "z.yaml": "kind: [\n",
            "a.yaml": REDIS.replace("10.97.97.97", "x") + "---\n" + bad_kind,
        },
    )
    assert [e.split(": ")[0] for e in errors] == ["a.yaml:6", "a.yaml:15", "z.yaml:2"]


# --- the example cluster ------------------------------------------------------------------------


def test_example_cluster() -> None:
    found, errors = load([str(EXAMPLES)])
    assert [str(e) for e in errors] == []
    assert sorted(found.namespaces) == ["default", "prod"]
    assert sorted(found.services) == [
        ("default", "myapp"),
        ("default", "myapp-headless"),
        ("default", "redis"),
        ("default", "search"),
        ("prod", "api"),
        ("prod", "cache"),
    ]
    assert len(found.pods) == 6
    assert sorted(found.slices) == [
        ("default", "myapp-headless-ipv4"),
        ("default", "myapp-ipv4"),
        ("default", "redis-ipv4"),
        ("prod", "api-ipv4"),
        ("prod", "api-ipv6"),
    ]

    redis = found.services[("default", "redis")]
    assert redis.cluster_ips == ("10.97.97.97",)
    assert endpoints_of(found, "default", "redis") == [
        ("10.244.1.10", True, "", (6379,)),
        ("10.244.2.11", True, "", (6379,)),
    ]

    myapp = found.services[("default", "myapp")]
    assert (myapp.type, myapp.cluster_ips, myapp.session_affinity) == (
        "NodePort",
        ("10.99.99.99",),
        "ClientIP",
    )
    assert [(p.name, p.port, p.node_port) for p in myapp.ports] == [("http", 80, 30080)]
    pods = [
        ("10.244.1.20", True, (80,)),
        ("10.244.2.21", True, (80,)),
        ("10.244.3.22", True, (80,)),
        ("10.244.3.23", False, (80,)),  # Running, not Ready
    ]
    assert endpoints_of(found, "default", "myapp") == [(a, r, "", p) for a, r, p in pods]
    assert found.services[("default", "myapp-headless")].headless
    # Only the Pod whose spec.subdomain is myapp-headless gets a hostname, and only there.
    assert endpoints_of(found, "default", "myapp-headless") == [
        (a, r, "web-0" if a == "10.244.1.20" else "", p) for a, r, p in pods
    ]

    assert found.services[("default", "search")].external_name == "www.example.com"
    assert found.services[("prod", "cache")].external_name == "redis.default.svc.cluster.local"
    api = found.services[("prod", "api")]
    assert api.cluster_ips == ("10.96.50.50", "fd00:10:96::50")
    assert endpoints_of(found, "prod", "api") == [
        ("10.244.1.30", True, "", (8443,)),
        ("10.244.2.31", False, "", (8443,)),
        ("fd00:10:244:1::30", True, "", (8443,)),
        ("fd00:10:244:2::31", False, "", (8443,)),
    ]
    assert all(isinstance(s, EndpointSlice) for s in found.slices.values())


# --- the lean reader: plain data, lines on demand, files parsed once -----------------------------


def service_text(name: str, ip: str, namespace: str = "default") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
    )


def test_a_reload_parses_only_the_files_that_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path, {f"m/{n}.yaml": service_text(n, f"10.96.0.{i + 1}") for i, n in enumerate("abc")}
    )
    reader = ManifestReader()

    def ips() -> dict[str, tuple[str, ...]]:
        found, errors = reader.load(["m"])
        assert errors == []
        return {name: svc.cluster_ips for (_, name), svc in sorted(found.services.items())}

    assert ips() == {"a": ("10.96.0.1",), "b": ("10.96.0.2",), "c": ("10.96.0.3",)}
    assert reader.parsed == 3
    assert ips()["b"] == ("10.96.0.2",)
    assert reader.parsed == 0  # nothing changed: not even opened
    os.utime("m/b.yaml", ns=(1, 1))  # touched, same bytes: read and hashed, not parsed
    assert ips()["b"] == ("10.96.0.2",)
    assert reader.parsed == 0
    write(tmp_path, {"m/b.yaml": service_text("b", "10.96.0.22")})
    assert ips() == {"a": ("10.96.0.1",), "b": ("10.96.0.22",), "c": ("10.96.0.3",)}
    assert reader.parsed == 1
    os.remove("m/c.yaml")
    write(tmp_path, {"m/d.yaml": service_text("d", "10.96.0.4")})
    assert ips() == {"a": ("10.96.0.1",), "b": ("10.96.0.22",), "d": ("10.96.0.4",)}
    assert reader.parsed == 1
    assert [path for path, *_ in reader.fingerprint] == ["m/a.yaml", "m/b.yaml", "m/d.yaml"]


def test_errors_of_an_unchanged_file_and_across_files_are_reported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"a.yaml": service_text("web", "10.96.0.x"), "b.yaml": REDIS})
    reader = ManifestReader()
    expected = ["a.yaml:7: Service default/web: spec.clusterIP: '10.96.0.x' is not an IP address"]
    assert [str(e) for e in reader.load(["a.yaml", "b.yaml"])[1]] == expected
    assert [str(e) for e in reader.load(["a.yaml", "b.yaml"])[1]] == expected
    assert reader.parsed == 0
    # Only b.yaml changes, to define what a.yaml (not parsed again) defines too.
    write(tmp_path, {"a.yaml": service_text("redis", "10.96.0.1"), "b.yaml": REDIS + "# x\n"})
    reader.load(["a.yaml"])
    write(tmp_path, {"b.yaml": REDIS})
    _, errors = reader.load(["a.yaml", "b.yaml"])
    assert reader.parsed == 1
    assert [str(e) for e in errors] == [
        "b.yaml:1: Service default/redis: defined twice; first at a.yaml:1"
    ]


YAML_FEATURES = {
    "scalars": "a: 1\nb: 0x1F\nc: 1_000\nd: 1.5\ne: yes\nf: off\ng: ~\nh: null\ni: 'yes'\n"
    'j: "80"\nk: 2001-12-14\nl: 2001-12-14t21:59:43.10-05:00\nm: ""\nn: .inf\no: True\n',
    "anchors-and-merge-keys": "base: &b {x: 1, y: [1, 2]}\nderived:\n  <<: *b\n  y: 3\n"
    "again: *b\nlist: &l [a, b]\nuse: [*l, *l]\n",
    "merge-a-list-of-maps": "a: &a {p: 1}\nb: &b {q: 2}\nc:\n  <<: [*a, *b]\n  p: 0\n",
    "tags": "s: !!set {a, b}\nb: !!binary aGVsbG8=\nstr: !!str 123\nint: !!int '7'\n"
    "pairs: !!pairs [a: 1, b: 2]\nomap: !!omap [x: 1]\n",
    "keys-of-every-kind": "1: one\ntrue: t\n~: n\n2001-01-01: d\n1.5: f\n",
    "flow-and-block": "a: {b: [c, {d: e}], f: 'g h'}\ni:\n- - j\n  - k\n- l: |\n    m\n    n\n",
    "several-documents": "a: 1\n---\n- 2\n---\n...\n---\nb: !!null ''\n",
    # Two dots make a string without the resolver's patterns; one dot may still be a number.
    "dotted-scalars": "ip: 10.96.0.1\nv: 1.2.3\ne: 1.2.3e+5\nf: 1.2e+3\ng: 1:2.5\nh: -.5\n"
    "t: 2001-12-14 21:59:43.10\nq: '1.5'\n",
    # Repeated plain scalars are resolved and constructed once: the same values every time.
    "repeated-scalars": "a: [80, 80, true, true, ~, 1.5, 1.5, 0x1F, 2001-12-14]\n"
    "b: [80, true, ~, 1.5, 0x1F, 2001-12-14, '80', !!str 80]\n---\nc: [80, true, 1.5]\n",
}


@pytest.mark.parametrize("text", list(YAML_FEATURES.values()), ids=list(YAML_FEATURES))
def test_lean_objects_are_what_pyyaml_loads(text: str) -> None:
    lean = [doc.obj for doc in _lean_documents(text)]
    expected = [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    assert lean == expected


def _lean_documents(text: str) -> list[Any]:
    return [d for d in documents.read_documents(text, "x.yaml") if isinstance(d, Document)]


def test_lean_aliases_are_shared_and_recursion_ends() -> None:
    (doc,) = _lean_documents("a: &x [1, 2]\nb: *x\nc: &self {me: *self}\n")
    assert doc.obj["a"] is doc.obj["b"]
    assert doc.obj["c"]["me"] is doc.obj["c"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("? [a, b]\n: c\n", "found unhashable key"),
        ("a: !!python/object:os.system x\n", "could not determine a constructor"),
        ("a: *nowhere\n", "found undefined alias"),
    ],
)
def test_lean_read_refuses_what_pyyaml_refuses(text: str, problem: str) -> None:
    with pytest.raises(yaml.YAMLError, match=problem):
        _lean_documents(text)
    entries, errors = read_objects(text, "x.yaml")
    assert entries == []
    assert len(errors) == 1
    assert problem in errors[0].message


def test_the_line_of_a_failing_object_deep_in_a_big_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = [yaml.safe_load(service_text(f"s{i}", f"10.96.1.{i}")) for i in range(40)]
    bad = yaml.safe_load(service_text("bad", "10.96.1.1"))
    bad["spec"]["ports"] = [{"port": 80}, {"port": 99999}]
    inner = {"apiVersion": "v1", "kind": "List", "items": [*good[20:], bad]}
    text = (
        manifest_text(*good[:10])
        + "---\n"
        + manifest_text({"apiVersion": "v1", "kind": "List", "items": [*good[10:20], inner]})
    )
    _, errors = load_files(tmp_path, monkeypatch, {"big.yaml": text})
    (error,) = errors
    line = int(error.split(":")[1])
    assert error.endswith(
        "Service default/bad: spec.ports[1].port: port 99999 is out of range 1-65535"
    )
    assert text.splitlines()[line - 1].strip() in ("port: 99999", "- port: 99999")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            # Found by fuzzing: two `items` keys (YAML keeps the last) crashed the reader.
            "apiVersion: v1\nkind: List\nitems:\n- "
            + REDIS.replace("\n", "\n  ").rstrip()
            + "\nitems: []\n",
            [],
            id="items-twice-the-last-wins",
        ),
        pytest.param(
            # Found by fuzzing: items given through a merge key (read where they are written).
            "apiVersion: v1\nkind: List\n<<: {items: [{apiVersion: v1, kind: Service, "
            "metadata: {name: m}, spec: {clusterIP: 10.96.0.x}}]}\n",
            ["bad.yaml:3: Service default/m: spec.clusterIP: '10.96.0.x' is not an IP address"],
            id="merged-items",
        ),
        pytest.param(
            # Found by fuzzing: libyaml marks the end of a file without a final line break one
            # line past it.
            "apiVersion: v1\nkind: Service\nmetadata",
            [
                "bad.yaml:3: invalid YAML: could not find expected ':' (while scanning a simple "
                "key started on line 3)"
            ],
            id="end-of-file-without-a-line-break",
        ),
    ],
)
def test_fuzz_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[str]
) -> None:
    _, errors = load_files(tmp_path, monkeypatch, {"bad.yaml": text})
    assert errors == expected


BOMB = "x-laughs:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            BOMB + REDIS.replace("10.97.97.97", "*a8"),
            "bad.yaml:1: invalid YAML: the document holds more than 1,000,000 values once its "
            "aliases are expanded (excessive aliasing)",
            id="billion-laughs",
        ),
        pytest.param(
            # Found by fuzzing: an object that fails to convert and holds an alias of a mapping
            # inside itself; finding its lines walked the cycle without end.
            REDIS.replace("10.97.97.97", "x") + "  labels: &l {app: a, again: *l}\n",
            "bad.yaml:6: Service default/redis: spec.clusterIP: 'x' is not an IP address",
            id="alias-inside-itself",
        ),
        pytest.param(
            # Found by fuzzing: the resolver takes it for a date, datetime refuses month 13.
            REDIS.replace("name: redis", "name: redis\n  annotations: {at: 2001-13-01}", 1),
            "bad.yaml:5: invalid YAML: '2001-13-01' is not a valid timestamp "
            "(month must be in 1..12)",
            id="impossible-date",
        ),
    ],
)
def test_hostile_yaml_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    _, errors = load_files(tmp_path, monkeypatch, {"bad.yaml": text})
    assert errors == [expected]


def test_deep_nesting_is_an_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "a: " + "[" * 990 + "]" * 990 + "\n"
    _, errors = load_files(tmp_path, monkeypatch, {"deep.yaml": text})
    assert len(errors) == 1
    assert errors[0].startswith("deep.yaml")
    assert "invalid YAML" in errors[0]


def test_only_the_first_load_leaves_its_objects_frozen(tmp_path: Path) -> None:
    # The start-up load moves what is alive out of the cycle collector's sight (else the first
    # collections walk the whole model again); a reload gives them back, so garbage cycles of
    # start-up objects wait at most until then. The collector's on/off state is kept.
    import gc

    (tmp_path / "a.yaml").write_text(REDIS)
    reader = ManifestReader()
    was_enabled = gc.isenabled()
    try:
        gc.unfreeze()
        reader.load([str(tmp_path)])
        assert gc.isenabled() == was_enabled
        assert gc.get_freeze_count() > 0
        (tmp_path / "a.yaml").write_text(REDIS.replace("6379", "6380"))
        reader.load([str(tmp_path)])
        assert gc.isenabled() == was_enabled
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("size", [0, 3, 10, 100], ids=["empty", "grew", "exact", "shrank"])
def test_a_file_is_read_whole_whatever_its_size_was(tmp_path: Path, size: int) -> None:
    # The size comes from the stat before the read; the file may have changed in between.
    from kdns.sources.manifests import read_file_bytes

    path = tmp_path / "a.yaml"
    path.write_bytes(b"kind: List" + b"\n" * (2 << 20))
    assert read_file_bytes(str(path), size) == path.read_bytes()

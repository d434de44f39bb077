"""Manifest files → the slim model: what `kubectl apply -f` reads and `kubectl get -o yaml` writes.

A cluster described by files (the embedded default, a test cluster, a sidecar's view) is read
here, once per load, into the same frozen objects the Kubernetes API source produces
(kdns/model.py). `sources/static.py` turns a `ManifestSet` into store replaces.

Contract:
- `load(paths)` never raises for bad input. Every file that cannot be read, every YAML syntax
  error and every object that cannot be converted becomes one `ManifestError` naming the file,
  the 1-based line, the object and the field (docs/architecture.md §10); everything that did convert
  is returned beside the errors, and the caller decides (start-up: exit 2; reload: keep the last
  good state). Errors are sorted by file, then line.
- A file with a YAML syntax error contributes no object: a half-read file would silently drop
  the objects after the error.
- The line of a conversion error is the line of the offending field, or, when the field is
  missing, of its deepest parent that is present (the document's first line at worst).
- Kinds read: Namespace, Service, EndpointSlice (discovery.k8s.io/v1), Endpoints (converted
  into slices), Pod and Node (its zone, for the proxy's topology hints). Other built-in kinds
  (Deployment, ConfigMap, ClusterRole, …) and custom resources are ignored and counted by
  kind (`ManifestSet.ignored`), so a folder of cluster manifests can be served as it is; an
  ignored built-in object still needs a `metadata.name`.
  An unknown kind in a built-in API group is an error, because it is almost always a typo.
- EndpointSlices = the given slices + the converted Endpoints of Services that have no given
  slice + for a Service with a selector and neither, the slices the EndpointSlice controller
  would derive from the given Pods (`model.slices_for_service`).
- Namespaces = the declared Namespace objects ∪ the namespace of every object read.
- Pure: the only I/O is reading the files named; no trio, socket or subprocess.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kdns import model
from kdns.model import EndpointSlice, ModelError, Namespace, Node, Pod, Service

# libyaml is several times faster than the pure-Python parser on large `kubectl get` dumps.
_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# The kinds kdns reads, with the one apiVersion each is served at.
READ_KINDS = {
    "Namespace": "v1",
    "Service": "v1",
    "Endpoints": "v1",
    "Pod": "v1",
    "Node": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
}

# The API groups Kubernetes itself serves ("" is the core group). Any other group is a custom
# resource (CRD groups must contain a dot; Gateway API, snapshot.storage.k8s.io and
# cluster.x-k8s.io are CRDs too, although they end in k8s.io).
BUILTIN_GROUPS = frozenset(
    {
        "",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
        "apiregistration.k8s.io",
        "apps",
        "authentication.k8s.io",
        "authorization.k8s.io",
        "autoscaling",
        "batch",
        "certificates.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "extensions",
        "flowcontrol.apiserver.k8s.io",
        "internal.apiserver.k8s.io",
        "networking.k8s.io",
        "node.k8s.io",
        "policy",
        "rbac.authorization.k8s.io",
        "resource.k8s.io",
        "scheduling.k8s.io",
        "storage.k8s.io",
        "storagemigration.k8s.io",
    }
)

# Built-in kinds that change nothing DNS or the proxy serve: a manifest folder that deploys an
# application holds them beside its Services, so they are skipped without a word.
SKIPPED_KINDS = frozenset(
    {
        "APIService",
        "Binding",
        "CertificateSigningRequest",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterTrustBundle",
        "ComponentStatus",
        "ConfigMap",
        "ControllerRevision",
        "CronJob",
        "CSIDriver",
        "CSINode",
        "CSIStorageCapacity",
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "DeviceClass",
        "Event",
        "FlowSchema",
        "HorizontalPodAutoscaler",
        "Ingress",
        "IngressClass",
        "IPAddress",
        "Job",
        "Lease",
        "LimitRange",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "MutatingWebhookConfiguration",
        "NetworkPolicy",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "PodTemplate",
        "PriorityClass",
        "PriorityLevelConfiguration",
        "ReplicaSet",
        "ReplicationController",
        "ResourceClaim",
        "ResourceClaimTemplate",
        "ResourceQuota",
        "ResourceSlice",
        "Role",
        "RoleBinding",
        "RuntimeClass",
        "Secret",
        "ServiceAccount",
        "ServiceCIDR",
        "StatefulSet",
        "StorageClass",
        "StorageVersion",
        "StorageVersionMigration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
        "VolumeAttachment",
        "VolumeAttributesClass",
    }
)

# Recording the line of every field costs one dict entry per field; a YAML alias bomb expands
# exponentially, so stop recording (lines fall back to the parent) past this many fields.
_MAX_RECORDED_FIELDS = 200_000

_TAB_MESSAGE = "a tab character is used for indentation; YAML allows only spaces"


@dataclass(frozen=True, slots=True)
class ManifestSet:
    """Every object read from a set of manifests, converted to the slim model."""

    namespaces: dict[str, Namespace]
    services: dict[tuple[str, str], Service]
    # Given + converted from Endpoints + derived from Pods (see the module contract).
    slices: dict[tuple[str, str], EndpointSlice]
    pods: dict[tuple[str, str], Pod]
    # Objects of kinds kdns does not serve, counted by kind ("Deployment", or "Kind.group" for a
    # custom resource), for `kdns check` to report.
    ignored: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ManifestError:
    """One bad file or object. Not an exception: `load` collects them."""

    file: str
    line: int | None
    obj: str  # "Service default/redis", or "" when the file itself is the problem
    field: str  # "spec.clusterIP", or ""
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.obj, self.field, self.message) if part)


@dataclass(frozen=True, slots=True)
class Document:
    """One Kubernetes object of a file (a `kind: List` gives one per item), with field lines."""

    obj: dict[str, Any]
    file: str
    line: int  # the object's first line
    lines: Mapping[str, int]  # field path, spelled as ModelError spells it → line

    def line_of(self, field: str) -> int:
        """The line of `field`, or of its deepest parent present in the file."""
        path = field
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            # Cut the last ".key" or "[i]"; a label key with dots (kubernetes.io/service-name)
            # is recorded whole, so it matches before any cut.
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                break
            path = path[:cut]
        return self.line


# --- files -------------------------------------------------------------------------------------


def manifest_files(paths: Sequence[str]) -> list[str]:
    """The files to read: each file as given; each folder's *.yaml, *.yml and *.json, recursively.

    Files of a folder come in sorted order so errors and duplicates are reported the same way
    on every run. Names starting with a dot are skipped: a ConfigMap mounted as a volume holds
    every file twice, once more under `..data/` and a timestamped `..2024_…` folder. A path
    that does not exist, or a subfolder that cannot be listed, is returned as it is so that
    `load` reports it.
    """
    files: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found: list[str] = []
        visited: set[str] = set()

        def unlistable(exc: OSError, found: list[str] = found) -> None:
            found.append(exc.filename)

        # Follow links (a folder of manifests may be linked in), but only once per real folder:
        # a link to a parent would otherwise make the walk endless.
        for folder, dirnames, filenames in os.walk(path, onerror=unlistable, followlinks=True):
            real = os.path.realpath(folder)
            if real in visited:
                dirnames.clear()
                continue
            visited.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found.extend(
                os.path.join(folder, name)
                for name in filenames
                if not name.startswith(".") and name.lower().endswith(MANIFEST_SUFFIXES)
            )
        files.extend(sorted(found))
    seen: set[str] = set()
    return [f for f in files if not (f in seen or seen.add(f))]


def _read(file: str) -> str | ManifestError:
    try:
        # utf-8-sig: editors on Windows start files with a byte-order mark.
        with open(file, encoding="utf-8-sig") as f:
            return f.read()
    except FileNotFoundError:
        return ManifestError(file, None, "", "", "no such file or folder")
    except IsADirectoryError:
        return ManifestError(file, None, "", "", "cannot read: it is a folder")
    except UnicodeDecodeError as exc:
        return ManifestError(file, None, "", "", f"cannot read: not UTF-8 text ({exc.reason})")
    except OSError as exc:
        return ManifestError(file, None, "", "", f"cannot read: {exc.strerror or exc}")


# --- YAML --------------------------------------------------------------------------------------


def parse_text(text: str, file: str) -> tuple[list[Document], list[ManifestError]]:
    """Split YAML or JSON text into objects, flattening `kind: List`, with each field's line.

    `file` only names the text in errors (and a name ending in .json allows tab indentation).
    Empty documents are skipped. On a syntax error the result is no document and one error.
    """
    if file.lower().endswith(".json"):
        # JSON allows tabs as whitespace and never inside strings (they are escaped as \t),
        # while YAML forbids them in indentation: spaces keep every line number.
        text = text.replace("\t", " ")
    composed: list[tuple[yaml.Node, Any]] = []
    try:
        # The pure-Python reader already rejects control characters while it is built.
        loader = _Loader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                composed.append((node, loader.construct_document(node)))
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return [], [_syntax_error(exc, text, file)]
    docs: list[Document] = []
    errors: list[ManifestError] = []
    for node, obj in composed:
        _flatten(node, obj, file, docs, errors, None)
    return docs, errors


def _syntax_error(exc: yaml.YAMLError, text: str, file: str) -> ManifestError:
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    if file.lower().endswith(".json"):
        # The YAML parser's message for broken JSON is about YAML; json's is about JSON.
        try:
            json.loads(text)
        except json.JSONDecodeError as jexc:
            return ManifestError(file, jexc.lineno, "", "", f"invalid JSON: {jexc.msg}")
    lines = text.splitlines()
    # The parsers report a tab in the indentation in several ways ("cannot start any token",
    # "violates indentation", a block mapping that ends early), at the tab's line or at the
    # start of the construct: a tab in either line's indentation is the cause.
    for mark in (problem_mark, context_mark):
        if mark is not None and 0 <= mark.line < len(lines):
            line = lines[mark.line]
            if "\t" in line[: len(line) - len(line.lstrip(" \t"))]:
                return ManifestError(file, mark.line + 1, "", "", _TAB_MESSAGE)
    if isinstance(exc, yaml.reader.ReaderError):
        # A control character. The reader reports its offset, in characters from PyYAML and in
        # UTF-8 bytes from libyaml; the first occurrence of the character is the one reported.
        at = text.find(chr(exc.character)) if isinstance(exc.character, int) else -1
        line = text.count("\n", 0, at) + 1 if at >= 0 else None
        return ManifestError(file, line, "", "", f"invalid YAML: {str(exc).splitlines()[0]}")
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}"
    if (
        context
        and context_mark is not None
        and (problem_mark is None or context_mark.line != problem_mark.line)
    ):
        message += f" ({context} started on line {context_mark.line + 1})"
    return ManifestError(file, problem_mark.line + 1 if problem_mark else None, "", "", message)


def _flatten(
    node: yaml.Node,
    obj: Any,
    file: str,
    docs: list[Document],
    errors: list[ManifestError],
    item_kind: tuple[str, Any] | None,
) -> None:
    """Add `obj` (or the items of a list object, recursively) to `docs`."""
    line = node.start_mark.line + 1
    if obj is None:
        return  # an empty document: `---` twice, or a file of comments
    if not isinstance(obj, dict):
        errors.append(
            ManifestError(file, line, "", "", f"expected a Kubernetes object, got {obj!r:.40}")
        )
        return
    if item_kind is not None and "kind" not in obj:
        # The API's typed lists (ServiceList from `kubectl get --raw`) leave kind and apiVersion
        # out of their items; `kubectl get -o yaml` fills them in.
        obj = {"kind": item_kind[0], "apiVersion": item_kind[1], **obj}
    kind = obj.get("kind")
    if not _is_list(kind, obj):
        docs.append(Document(obj, file, line, _field_lines(node)))
        return
    items = obj.get("items")
    if items is None:
        return
    items_node = next(
        (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "items"), None
    )
    if not isinstance(items, list) or not isinstance(items_node, yaml.SequenceNode):
        lines = _field_lines(node)
        errors.append(
            ManifestError(file, lines.get("items", line), kind, "items", "expected a list")
        )
        return
    inner = None if kind == "List" else (kind[: -len("List")], obj.get("apiVersion"))
    for item_node, item in zip(items_node.value, items, strict=True):
        _flatten(item_node, item, file, docs, errors, inner)


def _is_list(kind: Any, obj: Mapping[str, Any]) -> bool:
    return kind == "List" or (isinstance(kind, str) and kind.endswith("List") and "items" in obj)


def _field_lines(root: yaml.Node) -> dict[str, int]:
    """Field path → 1-based line, for every mapping value and sequence item under `root`.

    A mapping value gets the line of its key: for `spec:` followed by an indented block that
    is the line a reader looks for. Paths are spelled as model.ModelError spells them.
    """
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack and len(lines) < _MAX_RECORDED_FIELDS:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                child = f"{path}.{key_node.value}" if path else key_node.value
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for i, item_node in enumerate(node.value):
                child = f"{path}[{i}]"
                lines[child] = item_node.start_mark.line + 1
                stack.append((item_node, child))
    return lines


# --- objects -----------------------------------------------------------------------------------


def load(paths: Sequence[str]) -> tuple[ManifestSet, list[ManifestError]]:
    """Read the manifests under `paths` (files or folders) into a ManifestSet, plus its errors."""
    docs: list[Document] = []
    errors: list[ManifestError] = []
    for file in manifest_files(paths):
        text = _read(file)
        if isinstance(text, ManifestError):
            errors.append(text)
            continue
        file_docs, file_errors = parse_text(text, file)
        docs.extend(file_docs)
        errors.extend(file_errors)
    manifests, convert_errors = convert(docs)
    errors.extend(convert_errors)
    errors.sort(key=lambda e: (e.file, e.line or 0))
    return manifests, errors


def convert(docs: Iterable[Document]) -> tuple[ManifestSet, list[ManifestError]]:
    """Convert parsed documents into a ManifestSet: classify, convert, check duplicates, derive."""
    errors: list[ManifestError] = []
    origins: dict[tuple[str, str, str], Document] = {}  # (kind, namespace, name) → first doc
    declared: dict[str, Namespace] = {}
    services: dict[tuple[str, str], Service] = {}
    given: dict[tuple[str, str], EndpointSlice] = {}
    from_endpoints: dict[tuple[str, str], tuple[tuple[EndpointSlice, ...], Document]] = {}
    pods: dict[tuple[str, str], Pod] = {}
    nodes: dict[str, Node] = {}

    ignored: Counter[str] = Counter()
    for doc in docs:
        kind = _kind_to_read(doc, errors)
        if kind is None:
            continue
        if kind.startswith(_IGNORED):
            ignored[kind[len(_IGNORED) :]] += 1
            continue
        key = _key(kind, doc.obj)
        label = _label(kind, key)
        if key is not None:
            first = origins.setdefault((kind, *key), doc)
            if first is not doc:
                where = f"{first.file}:{first.line}"
                errors.append(
                    ManifestError(doc.file, doc.line, label, "", f"defined twice; first at {where}")
                )
                continue
        try:
            if kind == "Namespace":
                ns = model.namespace_from_dict(doc.obj)
                declared[ns.name] = ns
            elif kind == "Service":
                svc = model.service_from_dict(doc.obj)
                services[svc.key] = svc
            elif kind == "EndpointSlice":
                eps = model.endpointslice_from_dict(doc.obj)
                given[eps.key] = eps
            elif kind == "Endpoints":
                converted = model.endpoints_to_slices(doc.obj)
                # An Endpoints object is named after its Service, and still names it when it
                # has no subsets (and so converts to no slice).
                assert key is not None  # endpoints_to_slices rejects a missing name
                from_endpoints[key] = (converted, doc)
            elif kind == "Node":
                node = model.node_from_dict(doc.obj)
                nodes[node.key] = node
            else:
                pod = model.pod_from_dict(doc.obj)
                pods[pod.key] = pod
        except ModelError as exc:
            errors.append(
                ManifestError(doc.file, doc.line_of(exc.field), label, exc.field, exc.message)
            )

    slices = dict(given)
    covered = {s.service_key for s in given.values()}
    for service_key, (converted, doc) in sorted(from_endpoints.items()):
        # In a real cluster an EndpointSlice mirrors each Endpoints (and a `kubectl get` dump
        # holds both): like kube-proxy and CoreDNS, read the slices and ignore the Endpoints.
        if service_key in covered:
            continue
        for eps in converted:
            _add_slice(slices, eps, doc, _label("Endpoints", service_key), origins, errors)
    covered |= from_endpoints.keys()

    pods_by_namespace: dict[str, list[Pod]] = defaultdict(list)
    for pod in pods.values():
        pods_by_namespace[pod.namespace].append(pod)
    for key, svc in sorted(services.items()):
        # The EndpointSlice controller manages the endpoints of a Service with a selector;
        # given slices or Endpoints mean someone else does (or a dump already holds them).
        if svc.selector is None or key in covered:
            continue
        doc = origins[("Service", *key)]
        for eps in model.slices_for_service(svc, pods_by_namespace[svc.namespace]):
            _add_slice(slices, eps, doc, _label("Service", key), origins, errors)

    names = set(declared)
    names.update(key[0] for key in services)
    names.update(key[0] for key in given)
    names.update(key[0] for key in from_endpoints)
    names.update(key[0] for key in pods)
    namespaces = {name: declared.get(name) or Namespace(name) for name in sorted(names)}
    ignored_kinds = dict(sorted(ignored.items()))
    return ManifestSet(namespaces, services, slices, pods, ignored_kinds, nodes), errors


_IGNORED = "ignored:"  # prefixes what `_kind_to_read` returns for a kind that is not served


def _kind_to_read(doc: Document, errors: list[ManifestError]) -> str | None:
    """The kind of `doc` if kdns reads it, `ignored:KIND` for a kind it does not serve, or None
    for a wrong document (then an error is added)."""
    kind = doc.obj.get("kind")
    api_version = doc.obj.get("apiVersion")

    def error(field: str, message: str) -> None:
        label = _label(kind if isinstance(kind, str) and kind else "object", _key("", doc.obj))
        errors.append(ManifestError(doc.file, doc.line_of(field), label, field, message))

    if not isinstance(kind, str) or not kind:
        error("kind", "required field is missing" if kind is None else f"{kind!r} is not a kind")
        return None
    if not isinstance(api_version, str) or not api_version:
        error("apiVersion", "required field is missing")
        return None
    group = api_version.rpartition("/")[0]
    if group not in BUILTIN_GROUPS:
        if "." in group:
            # A custom resource (a Knative `Service` is one too), named as kubectl names it.
            return f"{_IGNORED}{kind}.{group}"
        error("apiVersion", f"unknown apiVersion {api_version!r}")
        return None
    expected = READ_KINDS.get(kind)
    if expected is not None:
        if api_version != expected:
            error("apiVersion", f"{kind} is served as {expected!r}, not {api_version!r}")
            return None
        return kind
    if kind not in SKIPPED_KINDS:
        error("kind", f"unknown kind {kind!r}")
        return None
    # Not served, but still a Kubernetes object: one without a name would be rejected by the
    # API server too, and is most likely a document cut in the wrong place.
    meta = doc.obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        error("metadata", f"expected a mapping, got {meta!r:.40}")
        return None
    name = meta.get("name") or meta.get("generateName") if meta else None
    if not isinstance(name, str) or not name:
        error("metadata.name", "required field is missing")
        return None
    return f"{_IGNORED}{kind}"


def _key(kind: str, obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of an object ("" namespace for a Namespace or Node), None without a
    name."""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return None
    if kind in ("Namespace", "Node"):
        return ("", name)
    namespace = meta.get("namespace")
    # An object without a namespace lands in "default", as `kubectl apply` puts it.
    if not isinstance(namespace, str) or not namespace:
        namespace = "default"
    return (namespace, name)


def _label(kind: str, key: tuple[str, str] | None) -> str:
    """How errors name an object: "Service default/redis", "Namespace prod", or the bare kind."""
    if key is None:
        return kind
    return f"{kind} {key[0]}/{key[1]}" if key[0] else f"{kind} {key[1]}"


def _add_slice(
    slices: dict[tuple[str, str], EndpointSlice],
    eps: EndpointSlice,
    doc: Document,
    label: str,
    origins: Mapping[tuple[str, str, str], Document],
    errors: list[ManifestError],
) -> None:
    """Add a converted or derived slice, unless a given slice already has its generated name."""
    if eps.key not in slices:
        slices[eps.key] = eps
        return
    other = origins.get(("EndpointSlice", *eps.key))
    where = f" at {other.file}:{other.line}" if other is not None else ""
    errors.append(
        ManifestError(
            doc.file,
            doc.line,
            label,
            "",
            f"its EndpointSlice would be named {eps.name!r}, but the EndpointSlice{where} "
            "already has that name",
        )
    )

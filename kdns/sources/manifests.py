"""Manifest files → the slim model: what `kubectl apply -f` reads and `kubectl get -o yaml` writes.

A cluster described by files (the embedded default, a test cluster, a sidecar's view) is read
here into the same frozen objects the Kubernetes API source produces (kdns/model.py).
`sources/documents.py` turns text into objects with lines; `sources/static.py` puts a
`ManifestSet` into the store and reloads it.

Contract:
- `load(paths)` never raises for bad input. Every file that cannot be read, every YAML syntax
  error and every object that cannot be converted becomes one `ManifestError` naming the file,
  the 1-based line, the object and the field (docs/architecture.md §10); everything that
  did convert is returned beside the errors, and the caller decides (start-up: exit 2; reload:
  keep the last good state). Errors are sorted by file, then line.
- `ManifestReader.load(paths)` is `load` with a memory: a file is parsed again only when its
  inode, size or mtime changed and then its bytes did (a hash), so a one-file edit in a folder
  of 10,000 files costs that file. The memory holds each file's converted objects and errors,
  never its text or parse tree.
- Each object is converted as soon as it is parsed, from plain data; lines are looked up (by
  reading the file again, `documents.field_lines_at`) only for objects that fail to convert.
  A file of plain block YAML (what `kubectl get -o yaml` writes) is parsed without libyaml
  (`sources/blockyaml.py`); a file that leaves that subset anywhere is parsed again, whole,
  with libyaml, so both give the same objects and the same errors.
- A file with a YAML syntax error contributes no object: a half-read file would silently drop
  the objects after the error.
- The line of a conversion error is the line of the offending field, or, when the field is
  missing, of its deepest parent that is present (the document's first line at worst).
- Kinds read: Namespace, Service, EndpointSlice (discovery.k8s.io/v1), Endpoints (converted
  into slices), Pod, Node (its zone, for the proxy's topology hints) and ServiceCIDR
  (networking.k8s.io/v1, for the proxy's drop of unallocated ClusterIPs). Other built-in kinds
  (Deployment, ConfigMap, ClusterRole, …) and custom resources are ignored and counted by
  kind (`ManifestSet.ignored`), so a folder of cluster manifests can be served as it is; an
  ignored built-in object still needs a `metadata.name`.
  An unknown kind in a built-in API group is an error, because it is almost always a typo.
- EndpointSlices = the given slices + the converted Endpoints of Services that have no given
  slice + for a Service with a selector and neither, the slices the EndpointSlice controller
  would derive from the given Pods (`model.slices_for_service`).
- Namespaces = the declared Namespace objects ∪ the namespace of every object read.
- `ManifestReader(scope)` reads only the objects the `Scope` admits (kubernetes `namespaces`
  and `labels`): the others are left out before anything is derived from them, as if the files
  did not hold them — the API source sees the same objects.
- `read_file_bytes(file, size)` is a file's bytes, read whole whatever size it has by then
  (`size`, from its stat, only sizes the first read).
- Pure: the only I/O is reading (and stat-ing) the files named; no trio, socket or subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kdns import model
from kdns.model import (
    EndpointSlice,
    ImportSlice,
    ModelError,
    Namespace,
    Node,
    Pod,
    Service,
    ServiceCIDR,
    ServiceImport,
)
from kdns.sources.blockyaml import OutsideSubset
from kdns.sources.documents import (
    Document,
    ManifestError,
    field_lines_at,
    line_of,
    parse_text,
    read_block_documents,
    read_documents,
    short,
    syntax_error,
    yaml_text,
)
from kdns.sources.scope import Scope

__all__ = [
    "Document",
    "ManifestError",
    "ManifestReader",
    "ManifestSet",
    "convert",
    "cyclic_gc_paused",
    "fingerprint",
    "load",
    "manifest_files",
    "parse_text",
]

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# The kinds kdns reads, with the one apiVersion each is served at.
READ_KINDS = {
    "Namespace": "v1",
    "Service": "v1",
    "Endpoints": "v1",
    "Pod": "v1",
    "Node": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "ServiceCIDR": "networking.k8s.io/v1",
    # A custom resource (KEP-1645's MCS API), read for the clusterset zone.
    "ServiceImport": "multicluster.x-k8s.io/v1alpha1",
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
    # Multicluster (KEP-1645): ServiceImports, and the EndpointSlices labelled with one's name
    # (`multicluster.kubernetes.io/service-name`), kept apart from local slices.
    imports: dict[tuple[str, str], ServiceImport] = field(default_factory=dict)
    import_slices: dict[tuple[str, str], ImportSlice] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    service_cidrs: dict[str, ServiceCIDR] = field(default_factory=dict)


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


# --- reading, once per changed file ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One object of a file, converted on its own (what it means beside the others comes later).

    `kind` is a READ_KINDS kind, `ignored:KIND` for a kind not served, or None for a document
    that is no object kdns can read (then `error` says why). `value` is the model object (a
    tuple of slices for Endpoints), or None when `error` is set.
    """

    kind: str | None
    key: tuple[str, str] | None
    file: str
    line: int
    value: Any
    error: ManifestError | None
    labels: Mapping[str, str] | None = None  # a Service's, for the Scope's selector


@dataclass(frozen=True, slots=True)
class _FileObjects:
    """What one file holds, and how to tell whether it changed since."""

    stat: tuple[int, int, int]  # inode, size, mtime in ns
    digest: bytes  # of the bytes read
    entries: tuple[_Entry, ...]
    errors: tuple[ManifestError, ...]  # syntax errors and documents that are not objects


class ManifestReader:
    """`load` with a memory: a file is read again only when it changed.

    A file whose inode, size and mtime are those of the last read is not opened; one that was
    touched but holds the same bytes (same hash) is not parsed again. So a reload after a
    one-file edit in a folder of 10,000 files costs that file, plus putting the objects of
    every file together again (duplicates, Endpoints, Pods → slices), which is plain dict work.
    """

    def __init__(self, scope: Scope | None = None) -> None:
        self.scope = scope or Scope()
        self._files: dict[str, _FileObjects] = {}
        self.parsed = 0  # files parsed by the last `load`
        self.loads = 0  # `load`s done
        # Each file of the last `load` with its `stat_key` as it was just before it was read.
        self.fingerprint: Fingerprint = ()

    def load(self, paths: Sequence[str]) -> tuple[ManifestSet, list[ManifestError]]:
        """Read the manifests under `paths` (files or folders): a ManifestSet, plus its errors."""
        files: dict[str, _FileObjects] = {}
        entries: list[_Entry] = []
        errors: list[ManifestError] = []
        stats: list[tuple[str, int, int, int]] = []
        self.parsed = 0
        with cyclic_gc_paused(freeze=not self.loads):
            for file in manifest_files(paths):
                stat, found = self._read(file)
                stats.append((file, *stat))
                if isinstance(found, ManifestError):
                    errors.append(found)
                    continue
                files[file] = found
                entries.extend(found.entries)
                errors.extend(found.errors)
            self._files = files  # forgets the files that are gone
            self.fingerprint = tuple(stats)
            if self.scope != Scope():
                entries = [e for e in entries if _in_scope(e, self.scope)]
            manifests, object_errors = _assemble(entries)
            self.loads += 1
        errors.extend(object_errors)
        errors.sort(key=lambda e: (e.file, e.line or 0))
        return manifests, errors

    def _read(self, file: str) -> tuple[tuple[int, int, int], _FileObjects | ManifestError]:
        known = self._files.get(file)
        # Stat before reading: a write in between shows as a changed stat next time.
        stat = stat_key(file)
        if known is not None and known.stat == stat:
            return stat, known
        try:
            data = read_file_bytes(file, stat[1])
        except OSError as exc:
            return stat, _unreadable(file, exc)
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if known is not None and known.digest == digest:
            return stat, dataclasses.replace(known, stat=stat)
        try:
            # utf-8-sig: editors on Windows start files with a byte-order mark.
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            reason = f"cannot read: not UTF-8 text ({exc.reason})"
            return stat, ManifestError(file, None, "", "", reason)
        del data
        if "\r" in text:  # as reading in text mode does: every line break becomes "\n"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        self.parsed += 1
        entries, errors = read_objects(text, file)
        return stat, _FileObjects(stat, digest, tuple(entries), tuple(errors))


Fingerprint = tuple[tuple[str, int, int, int], ...]


def read_file_bytes(file: str, size: int) -> bytes:
    """The bytes of `file`, expected to be `size` long (its stat just before): one read call
    for the whole file, and no file object (half the cost of `open` for 10,000 small files).
    A read shorter than asked for is the end of a regular file; a file that grew is read on."""
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, max(size, 0) + 1)
        if len(data) > size:
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


@contextlib.contextmanager
def cyclic_gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """Python's cycle collector off while a load builds millions of objects, then back as it was.

    Each collection walks every live object of its generation, and a load allocates enough to
    trigger many (a tenth of a 10k-Service load's time). Reference counting still frees
    everything a load drops; the few cycles a YAML alias can make wait for a later collection.
    With `freeze` (the start-up load), every object alive at the end is moved out of the
    collector's sight (`gc.freeze`): else the first collections after start-up walk the whole
    model again (0.3 CPU-s at 10k Services, before the first answer). Any later pause gives
    them back to it first (`gc.unfreeze`), so only garbage cycles among start-up objects can
    wait, and only until the first reload. Both calls are O(1): no object is visited.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    gc.unfreeze()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()


def _in_scope(entry: _Entry, scope: Scope) -> bool:
    if entry.key is None or entry.kind is None or entry.kind.startswith(_IGNORED):
        return True  # errors stay errors; ignored kinds are counted all the same
    namespace, name = entry.key
    return scope.admits(entry.kind, namespace, name, entry.labels or {})


def stat_key(file: str) -> tuple[int, int, int]:
    """What tells cheaply whether a file changed: inode, size, mtime (ns); -1s if it is gone."""
    try:
        st = os.stat(file)
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """Each manifest file under `paths` with its `stat_key`, as `ManifestReader.fingerprint`."""
    return tuple((file, *stat_key(file)) for file in manifest_files(paths))


def _unreadable(file: str, exc: OSError) -> ManifestError:
    if isinstance(exc, FileNotFoundError):
        return ManifestError(file, None, "", "", "no such file or folder")
    if isinstance(exc, IsADirectoryError):
        return ManifestError(file, None, "", "", "cannot read: it is a folder")
    return ManifestError(file, None, "", "", f"cannot read: {exc.strerror or exc}")


def load(paths: Sequence[str]) -> tuple[ManifestSet, list[ManifestError]]:
    """Read the manifests under `paths` (files or folders) into a ManifestSet, plus its errors."""
    return ManifestReader().load(paths)


def read_objects(text: str, file: str) -> tuple[list[_Entry], list[ManifestError]]:
    """Every object of one file's text, each converted as soon as it is parsed.

    The plain data of a document is dropped once converted, and lines are looked up only for
    the objects that failed (by reading the text again), so memory holds the model objects
    and one document's parse tree, never the file's.
    """
    text = yaml_text(text, file)
    try:
        # Most generated manifests are plain block YAML, read faster without libyaml; what
        # that reader leaves (anchors, flow style, JSON, errors, …) is read with libyaml.
        try:
            entries, errors, failed = _convert_all(read_block_documents(text, file))
        except OutsideSubset:
            entries, errors, failed = _convert_all(read_documents(text, file))
    except (yaml.YAMLError, RecursionError) as exc:
        return [], [syntax_error(exc, text, file)]
    if failed:
        lines = field_lines_at(text, {at for _, at in failed})
        for i, at in failed:
            entry = entries[i]
            assert entry.error is not None
            line = line_of(lines.get(at, {}), entry.error.field, entry.line)
            entries[i] = dataclasses.replace(
                entry, error=dataclasses.replace(entry.error, line=line)
            )
    return entries, errors


def _convert_all(
    found: Iterable[Document | ManifestError],
) -> tuple[list[_Entry], list[ManifestError], list[tuple[int, tuple[int, ...]]]]:
    """Each document converted as it comes: the entries, the errors of documents that are no
    objects, and (index in entries, `Document.at`) of the entries whose field needs a line."""
    entries: list[_Entry] = []
    errors: list[ManifestError] = []
    failed: list[tuple[int, tuple[int, ...]]] = []
    for doc in found:
        if isinstance(doc, ManifestError):
            errors.append(doc)
            continue
        entry = _convert_document(doc)
        if entry.error is not None and entry.error.field:
            failed.append((len(entries), doc.at))
        entries.append(entry)
    return entries, errors, failed


# --- objects -----------------------------------------------------------------------------------


def convert(docs: Iterable[Document]) -> tuple[ManifestSet, list[ManifestError]]:
    """Convert parsed documents (with their lines) into a ManifestSet."""
    return _assemble([_convert_document(doc) for doc in docs])


def _convert_document(doc: Document) -> _Entry:
    """One document on its own: its kind, key and model object, or why it has none."""
    kind = _kind_to_read(doc)
    if isinstance(kind, ManifestError):
        return _Entry(None, None, doc.file, doc.line, None, kind)
    if kind.startswith(_IGNORED):
        return _Entry(kind, None, doc.file, doc.line, None, None)
    key = _key(kind, doc.obj)
    try:
        value: Any
        if kind == "Namespace":
            value = model.namespace_from_dict(doc.obj)
        elif kind == "Service":
            value = model.service_from_dict(doc.obj)
        elif kind == "EndpointSlice" and model.is_import_slice(doc.obj):
            value = model.import_slice_from_dict(doc.obj)
        elif kind == "EndpointSlice":
            value = model.endpointslice_from_dict(doc.obj)
        elif kind == "ServiceImport":
            value = model.serviceimport_from_dict(doc.obj)
        elif kind == "Endpoints":
            value = model.endpoints_to_slices(doc.obj)
        elif kind == "Node":
            value = model.node_from_dict(doc.obj)
        elif kind == "ServiceCIDR":
            value = model.service_cidr_from_dict(doc.obj)
        else:
            value = model.pod_from_dict(doc.obj)
    except ModelError as exc:
        error = ManifestError(
            doc.file, doc.line_of(exc.field), _label(kind, key), exc.field, exc.message
        )
        return _Entry(kind, key, doc.file, doc.line, None, error)
    labels = None
    if kind == "Service":
        meta = doc.obj.get("metadata")
        given = meta.get("labels") if isinstance(meta, dict) else None
        labels = {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}
    return _Entry(kind, key, doc.file, doc.line, value, None, labels)


@dataclass(slots=True)
class _Sorted:
    """Every file's objects filed by kind (`_sort_entries`), before endpoints are picked."""

    # (kind, namespace, name) → first entry
    origins: dict[tuple[str, str, str], _Entry] = field(default_factory=dict)
    declared: dict[str, Namespace] = field(default_factory=dict)
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    given: dict[tuple[str, str], EndpointSlice] = field(default_factory=dict)
    from_endpoints: dict[tuple[str, str], tuple[tuple[EndpointSlice, ...], _Entry]] = field(
        default_factory=dict
    )
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    imports: dict[tuple[str, str], ServiceImport] = field(default_factory=dict)
    import_slices: dict[tuple[str, str], ImportSlice] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    service_cidrs: dict[str, ServiceCIDR] = field(default_factory=dict)
    ignored: Counter[str] = field(default_factory=Counter)
    errors: list[ManifestError] = field(default_factory=list)


def _assemble(entries: Iterable[_Entry]) -> tuple[ManifestSet, list[ManifestError]]:
    """Put every file's objects together: check duplicates, pick endpoints, derive slices."""
    found = _sort_entries(entries)
    slices = _endpoint_slices(found)
    manifests = ManifestSet(
        _namespaces(found),
        found.services,
        slices,
        found.pods,
        dict(sorted(found.ignored.items())),
        found.imports,
        found.import_slices,
        found.nodes,
        found.service_cidrs,
    )
    return manifests, found.errors


def _sort_entries(entries: Iterable[_Entry]) -> _Sorted:
    """File each entry's object by kind; an entry that failed, or names an object already
    read, becomes an error instead, and an ignored kind a count."""
    found = _Sorted()
    origins, errors = found.origins, found.errors
    for entry in entries:
        kind, key = entry.kind, entry.key
        if kind is None:
            assert entry.error is not None
            errors.append(entry.error)
            continue
        if kind.startswith(_IGNORED):
            found.ignored[kind[len(_IGNORED) :]] += 1
            continue
        if key is not None:
            first = origins.setdefault((kind, *key), entry)
            if first is not entry:
                errors.append(_defined_twice(entry, first))
                continue
        if entry.error is not None:
            errors.append(entry.error)
            continue
        value = entry.value
        if kind == "Namespace":
            found.declared[value.name] = value
        elif kind == "Service":
            found.services[value.key] = value
        elif kind == "EndpointSlice" and isinstance(value, ImportSlice):
            found.import_slices[value.key] = value
        elif kind == "EndpointSlice":
            found.given[value.key] = value
        elif kind == "ServiceImport":
            found.imports[value.key] = value
        elif kind == "Endpoints":
            # An Endpoints object is named after its Service, and still names it when it
            # has no subsets (and so converts to no slice).
            assert key is not None  # endpoints_to_slices rejects a missing name
            found.from_endpoints[key] = (value, entry)
        elif kind == "Node":
            found.nodes[value.key] = value
        elif kind == "ServiceCIDR":
            found.service_cidrs[value.key] = value
        else:
            found.pods[value.key] = value
    return found


def _defined_twice(entry: _Entry, first: _Entry) -> ManifestError:
    """The error of an object read a second time (`first` is where it was read first)."""
    assert entry.kind is not None
    where = f"{first.file}:{first.line}"
    return ManifestError(
        entry.file,
        entry.line,
        _label(entry.kind, entry.key),
        "",
        f"defined twice; first at {where}",
    )


def _endpoint_slices(found: _Sorted) -> dict[tuple[str, str], EndpointSlice]:
    """The given slices, then those converted from Endpoints, then those derived from Pods,
    each only for a Service whose endpoints nothing before gave (the module contract)."""
    slices = dict(found.given)
    covered = {s.service_key for s in found.given.values()}
    for service_key, (converted, entry) in sorted(found.from_endpoints.items()):
        # In a real cluster an EndpointSlice mirrors each Endpoints (and a `kubectl get` dump
        # holds both): like kube-proxy and CoreDNS, read the slices and ignore the Endpoints.
        if service_key in covered:
            continue
        for eps in converted:
            _add_slice(
                slices, eps, entry, _label("Endpoints", service_key), found.origins, found.errors
            )
    covered |= found.from_endpoints.keys()
    _add_derived_slices(found, slices, covered)
    return slices


def _add_derived_slices(
    found: _Sorted, slices: dict[tuple[str, str], EndpointSlice], covered: set[tuple[str, str]]
) -> None:
    """Add the slices the EndpointSlice controller would derive from the Pods, for each Service
    with a selector whose endpoints are not `covered`."""
    pods_by_namespace: dict[str, list[Pod]] = defaultdict(list)
    for pod in found.pods.values():
        pods_by_namespace[pod.namespace].append(pod)
    for key, svc in sorted(found.services.items()):
        # The EndpointSlice controller manages the endpoints of a Service with a selector;
        # given slices or Endpoints mean someone else does (or a dump already holds them).
        if svc.selector is None or key in covered:
            continue
        entry = found.origins[("Service", *key)]
        for eps in model.slices_for_service(svc, pods_by_namespace[svc.namespace]):
            _add_slice(slices, eps, entry, _label("Service", key), found.origins, found.errors)


def _namespaces(found: _Sorted) -> dict[str, Namespace]:
    """The declared Namespaces ∪ the namespace of every Service, slice, Endpoints and Pod, by
    name in order."""
    names = set(found.declared)
    names.update(key[0] for key in found.services)
    names.update(key[0] for key in found.given)
    names.update(key[0] for key in found.from_endpoints)
    names.update(key[0] for key in found.pods)
    return {name: found.declared.get(name) or Namespace(name) for name in sorted(names)}


_IGNORED = "ignored:"  # prefixes what `_kind_to_read` returns for a kind that is not served


def _kind_to_read(doc: Document) -> str | ManifestError:
    """The kind of `doc` if kdns reads it, `ignored:KIND` for a kind it does not serve, or the
    error of a wrong document."""
    kind = doc.obj.get("kind")
    api_version = doc.obj.get("apiVersion")

    def error(field: str, message: str) -> ManifestError:
        shown = kind if isinstance(kind, str) and kind else "object"
        label = _label(shown, _key(shown, doc.obj))  # a cluster-scoped kind shows no namespace
        return ManifestError(doc.file, doc.line_of(field), label, field, message)

    if not isinstance(kind, str) or not kind:
        return error(
            "kind", "required field is missing" if kind is None else f"{short(kind)} is not a kind"
        )
    if not isinstance(api_version, str) or not api_version:
        return error("apiVersion", "required field is missing")
    group = api_version.rpartition("/")[0]
    if kind == "ServiceImport" and api_version == READ_KINDS[kind]:
        return kind
    if group not in BUILTIN_GROUPS:
        if "." in group:
            # A custom resource (a Knative `Service` is one too), named as kubectl names it.
            return f"{_IGNORED}{kind}.{group}"
        return error("apiVersion", f"unknown apiVersion {api_version!r}")
    expected = READ_KINDS.get(kind)
    if expected is not None:
        if api_version != expected:
            return error("apiVersion", f"{kind} is served as {expected!r}, not {api_version!r}")
        return kind
    if kind not in SKIPPED_KINDS:
        return error("kind", f"unknown kind {kind!r}")
    # Not served, but still a Kubernetes object: one without a name would be rejected by the
    # API server too, and is most likely a document cut in the wrong place.
    meta = doc.obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        return error("metadata", f"expected a mapping, got {short(meta)}")
    name = meta.get("name") or meta.get("generateName") if meta else None
    if not isinstance(name, str) or not name:
        return error("metadata.name", "required field is missing")
    return f"{_IGNORED}{kind}"


def _key(kind: str, obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of an object ("" namespace for a cluster-scoped one), None without a
    name."""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return None
    if kind in ("Namespace", "Node", "ServiceCIDR"):
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
    entry: _Entry,
    label: str,
    origins: Mapping[tuple[str, str, str], _Entry],
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
            entry.file,
            entry.line,
            label,
            "",
            f"its EndpointSlice would be named {eps.name!r}, but the EndpointSlice{where} "
            "already has that name",
        )
    )

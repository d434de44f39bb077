"""A fake kube-apiserver: serves list/watch for a few core and discovery resources over real HTTPS.

It speaks the wire protocol of kube-apiserver closely enough that the unchanged ``kubernetes``
Python client cannot tell the difference; tests mutate its state from Python and inject faults.

Contract (what a client author may rely on):

Transport
- HTTP/1.1 over TLS (a trustme CA; ``ca_pem``), keep-alive, one thread per connection, all
  daemon threads. ``tls=False`` serves plain HTTP (for benchmarks). Every request needs
  ``Authorization: Bearer <token>``; otherwise 401 with a Status object (reason Unauthorized).
- Bodies are JSON ending in "\\n". Bodies over 2 KiB are sent chunked (as Go's net/http does),
  small ones with Content-Length. A watch is ``200``, ``Transfer-Encoding: chunked``, one event
  (``{"type":…,"object":…}\\n``) per chunk, written as soon as it exists; a clean end is the
  terminating zero-length chunk, after which the connection stays usable.

State and resourceVersion
- Objects are keyed by (resource, namespace, name). ONE global counter (like etcd's revision)
  starts at ``start_rv``; every create/update/delete bumps it by one and stamps the object's
  ``metadata.resourceVersion``; create also fills ``uid`` and ``creationTimestamp`` when absent.
  An update that changes nothing is a no-op: no new RV, no event (as kube-apiserver does).
- Each resource keeps an event history: ADDED / MODIFIED with the new object, DELETED with the
  last state stamped with the deletion's new RV.
- Compaction horizon, per resource: a watch (or continue token) from RV ``N`` is served iff
  ``N >= horizon``. ``compact()`` moves every horizon to the current RV. ``history_limit=L``
  compacts automatically so that at most ``L`` events newer than the horizon are kept per
  resource. Compaction never breaks a watch that is already streaming.

List (``GET …/{resource}`` without ``watch``)
- Always served from the current state, sorted by "namespace/name"; ``metadata.resourceVersion``
  is the current global RV, whatever ``resourceVersion`` was asked (``""``, ``"0"`` or ``N``);
  ``N`` above the current RV waits up to 3 s for it, then 504 (ResourceVersionTooLarge).
- ``limit`` + ``continue``: pages of a consistent snapshot taken by the first page. The token
  (opaque; base64 JSON of rv and start key, like the real one) stays valid while its RV is not
  below the resource's horizon and its snapshot is among the last 64 of that resource;
  otherwise 410 Expired whose ``metadata.continue`` carries an inconsistent-continuation token.
  ``continue`` together with a ``resourceVersion`` other than "" / "0" is a 400, as upstream.
  ``remainingItemCount`` is set when there is no selector.
- Selectors: ``fieldSelector`` on metadata.name / metadata.namespace, and on pods'
  status.phase / spec.nodeName (=, ==, !=);
  ``labelSelector`` with =, ==, !=, in, notin, exists, !exists. Anything else is a 400.

Watch (``watch=true`` or ``watch=1``)
- ``resourceVersion`` "" or "0" (or ``sendInitialEvents=true``): synthetic ADDED for every
  current object, then live events. ``sendInitialEvents`` needs
  ``resourceVersionMatch=NotOlderThan`` and ``allowWatchBookmarks=true`` (else 422), and ends
  the initial events with a BOOKMARK annotated ``k8s.io/initial-events-end: "true"``.
- ``resourceVersion=N``: every event with RV > N from the history, then live events. N below the
  horizon → HTTP 410 Status (reason Expired, "too old resource version: N (horizon)"); with
  ``ApiServer(expired_as_event=True)`` instead 200 + an ERROR event, which is what a real
  apiserver's watch cache does. N above the current RV waits up to 3 s, then 504.
- ``allowWatchBookmarks=true``: a BOOKMARK ``{"kind":K,"apiVersion":V,"metadata":
  {"resourceVersion":"<current global RV>"}}`` every ``bookmark_interval`` seconds, and one just
  before a timeout ends the watch. A bookmark is only sent after every event up to its RV.
- ``timeoutSeconds=S`` ends the stream cleanly after S seconds (``default_watch_timeout``
  otherwise; None = never). Label selectors turn MODIFIED into ADDED / DELETED when an object
  starts / stops matching, as the watch cache does.
- The server notices a client that closed its watch within ~0.2 s (stats drop it).

Paths and verbs
- ``/api``, ``/api/v1``, ``/apis``, ``/apis/discovery.k8s.io[/v1]``, ``/version``, ``/healthz``;
  ``/api/v1/{r}``, ``/api/v1/namespaces/{ns}/{r}[/{name}]``, ``/api/v1/namespaces[/{name}]``,
  ``/apis/discovery.k8s.io/v1/endpointslices``, ``…/v1/namespaces/{ns}/endpointslices[/{name}]``.
  Anything else: 404 Status. ``discovery_v1=False``: the group is absent from ``/apis`` and all
  its paths are 404. ``multicluster=True`` adds the MCS API's CRD group
  (``/apis/multicluster.x-k8s.io/v1alpha1/serviceimports``); without it, its paths are 404 as on a
  cluster without the CRD. ``service_cidrs=True`` serves ``networking.k8s.io/v1`` with
  ``servicecidrs`` (cluster-scoped; Kubernetes 1.33+); ``networking_v1=True`` alone serves the
  group without that resource in its list (a cluster before 1.33, which has Ingress there);
  neither: the group is absent. Only GET is served (others: 405); clients cannot write.
- ``resourceVersionMatch=Exact`` on a list is honoured only for the current RV or a retained
  pagination snapshot (else 410); ``NotOlderThan`` is the current state.

Faults: see ``Faults``. Statistics: see ``Stats``.
Python-side mutations (``create``, ``update``, ``apply``, ``patch``, ``delete``, ``load``,
``scale_headless``, ``compact``) are thread-safe and may be called while clients stream.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hmac
import http.server
import json
import os
import re
import secrets
import select
import socket
import ssl
import struct
import threading
import time
import traceback
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import trustme
import yaml

from tests.kubeapi import objects

__all__ = ["RESOURCES", "AlreadyExists", "ApiServer", "Faults", "NotFound", "ResourceInfo", "Stats"]

Json = dict[str, Any]

_RV_MARK = "@@kdns-test-rv@@"
_RV_MARK_JSON = f'"resourceVersion":"{_RV_MARK}"'.encode()
_MAX_SNAPSHOTS = 64
TOO_LARGE_WAIT = 3.0  # seconds a read at a future resourceVersion waits before its 504
_POLL = 0.2
_CHUNK_THRESHOLD = 2048
_CHUNK = 256 * 1024
_MIB = 1024 * 1024


@dataclass(frozen=True)
class ResourceInfo:
    """One served resource: its URL name, kind, group/version and scope."""

    name: str
    kind: str
    group: str
    version: str
    namespaced: bool
    singular: str
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


RESOURCES: dict[str, ResourceInfo] = {
    r.name: r
    for r in (
        ResourceInfo("namespaces", "Namespace", "", "v1", False, "namespace", ("ns",)),
        ResourceInfo("services", "Service", "", "v1", True, "service", ("svc",)),
        ResourceInfo("endpoints", "Endpoints", "", "v1", True, "endpoints", ("ep",)),
        ResourceInfo("pods", "Pod", "", "v1", True, "pod", ("po",)),
        ResourceInfo("nodes", "Node", "", "v1", False, "node", ("no",)),
        ResourceInfo(
            "endpointslices", "EndpointSlice", "discovery.k8s.io", "v1", True, "endpointslice"
        ),
        # ServiceCIDR (KEP-1880), served only by ApiServer(service_cidrs=True).
        ResourceInfo(
            "servicecidrs", "ServiceCIDR", "networking.k8s.io", "v1", False, "servicecidr"
        ),
        # The MCS API's CRD (KEP-1645), served only by ApiServer(multicluster=True).
        ResourceInfo(
            "serviceimports",
            "ServiceImport",
            "multicluster.x-k8s.io",
            "v1alpha1",
            True,
            "serviceimport",
        ),
    )
}
_DISCOVERY_GROUP = "discovery.k8s.io"
_MCS_GROUP, _MCS_VERSION = "multicluster.x-k8s.io", "v1alpha1"
_NET_GROUP = "networking.k8s.io"


class NotFound(LookupError):
    """The object does not exist (Python-side API)."""


class AlreadyExists(ValueError):
    """``create`` of an object that exists (Python-side API)."""


class _HttpError(Exception):
    """Raised inside request handling; becomes a Status response."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Json | None = None,
        headers: Mapping[str, str] | None = None,
        list_meta: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        self.list_meta = list_meta


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(
    code: int,
    reason: str,
    message: str,
    details: Json | None = None,
    list_meta: Json | None = None,
) -> bytes:
    """A ``Status`` object (status Failure) as kube-apiserver serialises it."""
    obj: Json = {"kind": "Status", "apiVersion": "v1", "metadata": list_meta or {}}
    obj.update({"status": "Failure", "message": message, "reason": reason})
    if details:
        obj["details"] = details
    obj["code"] = code
    return _dumps(obj) + b"\n"


def _status_dict(code: int, reason: str, message: str) -> Json:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(obj: Any) -> bytes:
    """Compact JSON with raw UTF-8, as Go's encoding/json writes it."""
    return _ENCODER.encode(obj).encode()


_clock: tuple[int, str] = (0, "")


def _now() -> str:
    """The current time as an RFC 3339 creationTimestamp (whole seconds, UTC)."""
    global _clock
    second = int(time.time())
    if _clock[0] != second:
        _clock = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _clock[1]


def _key(ns: str | None, name: str) -> str:
    return f"{ns}/{name}" if ns else name


def _event_line(type_: str, data: bytes) -> bytes:
    return b'{"type":"' + type_.encode() + b'","object":' + data + b"}\n"


def _chunk(line: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(line), line)


# --------------------------------------------------------------------------- state


class _Entry:
    __slots__ = ("created", "data", "name", "ns", "rv", "uid")

    def __init__(self, ns: str | None, name: str, data: bytes, rv: int, uid: str, created: str):
        self.ns = ns
        self.name = name
        self.data = data
        self.rv = rv
        self.uid = uid
        self.created = created


class _Event:
    __slots__ = ("data", "name", "ns", "prev", "rv", "type")

    def __init__(
        self, rv: int, type_: str, ns: str | None, name: str, data: bytes, prev: bytes | None
    ):
        self.rv = rv
        self.type = type_
        self.ns = ns
        self.name = name
        self.data = data
        self.prev = prev


@dataclass(frozen=True)
class _View:
    """An immutable, sorted snapshot of one resource: parallel lists of keys and JSON bytes."""

    keys: list[str]
    datas: list[bytes]


@dataclass
class _ResourceState:
    info: ResourceInfo
    horizon: int
    entries: dict[str, _Entry] = field(default_factory=dict)
    hist_rv: list[int] = field(default_factory=list)
    hist: list[_Event] = field(default_factory=list)
    view: _View | None = None
    snapshots: OrderedDict[int, _View] = field(default_factory=OrderedDict)


class _Watch:
    """An open watch stream; ``action`` is set by another thread to end it."""

    def __init__(self, resource: str, namespace: str | None, cursor: int, conn: _Conn) -> None:
        self.resource = resource
        self.namespace = namespace
        self.cursor = cursor
        self.conn = conn
        self.action: str | None = None  # "reset" | "expire" | "release" | "stop"


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.watch: _Watch | None = None


# --------------------------------------------------------------------------- selectors

_LABEL_IN = re.compile(r"^([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_LABEL_OP = re.compile(r"^([A-Za-z0-9._/-]+)\s*(==|!=|=)\s*([A-Za-z0-9._-]*)$")
_LABEL_KEY = re.compile(r"^(!?)\s*([A-Za-z0-9._/-]+)$")


class _Selector:
    """fieldSelector (metadata.name/namespace, status.phase, spec.nodeName) and labelSelector of
    one request."""

    def __init__(self, field_selector: str, label_selector: str) -> None:
        self.fields: list[tuple[str, bool, str]] = []  # (field, equal, value)
        self.labels: list[tuple[str, str, frozenset[str]]] = []  # (key, op, values)
        for term in filter(None, (t.strip() for t in field_selector.split(","))):
            m = re.match(r"^([A-Za-z.]+)\s*(==|!=|=)\s*(.*)$", term)
            if not m:
                raise _HttpError(400, "BadRequest", f"invalid field selector: {term!r}")
            fld, op, value = m.groups()
            if fld not in ("metadata.name", "metadata.namespace", "status.phase", "spec.nodeName"):
                raise _HttpError(
                    400,
                    "BadRequest",
                    f'Unable to find "{fld}" in field selector: field label not supported: {fld}',
                )
            self.fields.append((fld, op != "!=", value))
        for term in re.split(r",(?![^(]*\))", label_selector):
            term = term.strip()
            if not term:
                continue
            if m := _LABEL_IN.match(term):
                vals = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
                self.labels.append((m.group(1), m.group(2), vals))
            elif m := _LABEL_OP.match(term):
                op = "!=" if m.group(2) == "!=" else "="
                self.labels.append((m.group(1), op, frozenset([m.group(3)])))
            elif m := _LABEL_KEY.match(term):
                self.labels.append((m.group(2), "!" if m.group(1) else "exists", frozenset()))
            else:
                raise _HttpError(
                    400,
                    "BadRequest",
                    f"unable to parse requirement: invalid label selector {term!r}",
                )

    @property
    def empty(self) -> bool:
        return not self.fields and not self.labels

    def matches(self, ns: str | None, name: str, data: bytes) -> bool:
        for fld, equal, value in self.fields:
            if fld == "status.phase":
                # kube-apiserver supports it for pods (what CoreDNS and kdns watch with).
                actual = (json.loads(data).get("status") or {}).get("phase") or ""
            elif fld == "spec.nodeName":
                # Pods too: the kubelet's own watch, and the node DNS's (`--dns-autopath`).
                actual = (json.loads(data).get("spec") or {}).get("nodeName") or ""
            else:
                actual = name if fld == "metadata.name" else (ns or "")
            if (actual == value) != equal:
                return False
        if not self.labels:
            return True
        labels: Mapping[str, str] = json.loads(data).get("metadata", {}).get("labels") or {}
        for key, op, values in self.labels:
            present = key in labels
            v = labels.get(key)
            ok = {
                "=": present and v in values,
                "!=": not present or v not in values,
                "in": present and v in values,
                "notin": not present or v not in values,
                "exists": present,
                "!": not present,
            }[op]
            if not ok:
                return False
        return True


# --------------------------------------------------------------------------- stats


class Stats:
    """Request and stream counters, thread-safe; tests read them and wait on them.

    ``requests`` counts every routed request by ``(verb, resource, kind)``: verb is the HTTP
    method, resource the URL resource name ("" for discovery), kind one of "list", "watch",
    "get", "discovery" ("other" for unknown paths). ``statuses`` counts responses by HTTP status (watches: 200 once headers
    are sent). Watch streams: ``open_watches()`` now, ``max_open_watches`` high-water mark.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.statuses: Counter[int] = Counter()
        self._open_watches: Counter[str] = Counter()
        self.max_open_watches = 0
        self.connections_accepted = 0
        self.open_connections = 0
        self.events_sent = 0
        self.bookmarks_sent = 0

    def count(
        self, kind: str | None = None, resource: str | None = None, verb: str | None = None
    ) -> int:
        """Requests so far matching every given filter (kind: list/watch/get/discovery)."""
        with self._cond:
            return sum(
                n
                for (v, r, k), n in self.requests.items()
                if (verb is None or v == verb)
                and (resource is None or r == resource)
                and (kind is None or k == kind)
            )

    def open_watches(self, resource: str | None = None) -> int:
        """Watch streams open right now (headers sent, not yet ended), optionally per resource."""
        with self._cond:
            if resource is None:
                return sum(self._open_watches.values())
            return self._open_watches[resource]

    def wait_until(self, predicate: Callable[[Stats], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(self)`` holds (re-checked on every change); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def reset(self) -> None:
        """Zero every counter except the currently open watches / connections."""
        with self._cond:
            self.requests.clear()
            self.statuses.clear()
            self.max_open_watches = self.open_watches_locked()
            self.connections_accepted = 0
            self.events_sent = 0
            self.bookmarks_sent = 0

    def open_watches_locked(self) -> int:
        return sum(self._open_watches.values())

    def snapshot(self) -> Json:
        """All counters as a plain dict (for printing in benchmarks)."""
        with self._cond:
            return {
                "requests": {"/".join(k): v for k, v in sorted(self.requests.items())},
                "statuses": dict(self.statuses),
                "open_watches": dict(self._open_watches),
                "max_open_watches": self.max_open_watches,
                "connections_accepted": self.connections_accepted,
                "open_connections": self.open_connections,
                "events_sent": self.events_sent,
                "bookmarks_sent": self.bookmarks_sent,
            }

    # -- updates from the server (its hooks: tests only read)
    def note_request(self, verb: str, resource: str, kind: str) -> None:
        with self._cond:
            self.requests[(verb, resource, kind)] += 1
            self._cond.notify_all()

    def note_status(self, code: int) -> None:
        with self._cond:
            self.statuses[code] += 1
            self._cond.notify_all()

    def note_watch(self, resource: str, delta: int) -> None:
        with self._cond:
            self._open_watches[resource] += delta
            self.max_open_watches = max(self.max_open_watches, self.open_watches_locked())
            self._cond.notify_all()

    def note_connection(self, delta: int) -> None:
        with self._cond:
            if delta > 0:
                self.connections_accepted += 1
            self.open_connections += delta
            self._cond.notify_all()

    def note_sent(self, events: int, bookmarks: int) -> None:
        with self._cond:
            self.events_sent += events
            self.bookmarks_sent += bookmarks
            self._cond.notify_all()


# --------------------------------------------------------------------------- faults


@dataclass
class _Armed:
    what: str
    remaining: int | None  # None = until clear()
    resource: str | None
    kind: str | None = None
    payload: Any = None


@dataclass
class _WatchFaults:
    hang: bool = False
    expire: bool = False
    close: bool = False
    garbage: bytes | None = None
    huge: int | None = None


class Faults:
    """Fault injection; every method is thread-safe and takes effect for the next requests.

    Counted faults (``n``) fire for the next ``n`` matching requests; ``n=None`` means until
    ``clear()``. ``resource`` restricts a fault to one resource ("services", …).

    - ``refuse_connections(True)``: the listening socket is CLOSED, so connects get
      ECONNREFUSED (urllib3: NewConnectionError inside MaxRetryError); by default every open
      connection is also cut with a TCP RST (watches included), like a crashed apiserver.
      ``refuse_connections(False)`` re-binds the SAME port. Returns once the socket state changed.
    - ``drop_connections()``: RST every open connection now, keep accepting new ones.
    - ``reset_watches()``: every open watch stream is aborted mid-stream with a TCP RST
      (SO_LINGER 0, no terminating chunk): the client sees ProtocolError / connection reset.
    - ``expire_watches()``: every open watch gets an ERROR 410 event, then a clean end.
    - ``hang_next_watch(n)``: the watch gets 200 + headers, then nothing at all until
      ``clear()`` or ``stop()``, when it is closed abruptly (no terminating chunk).
    - ``garbage_next_watch(line, n)``: ``line`` (+ "\\n" if missing) is the stream's first
      event chunk; then the watch proceeds normally.
    - ``huge_line_next_watch(size, n)``: after the replayed / initial events, one valid BOOKMARK
      event padded (metadata.annotations) to ``size`` bytes (+ "\\n"); its RV is the one the stream had
      reached, so it is harmless to a correct client; then normal.
    - ``error_next(status, n, resource, kind, retry_after)``: the next ``n`` matching requests
      get ``status`` with a Status body (reason by code), ``Retry-After`` when ``retry_after``
      (default 1 for 429).
    - ``slow_list(delay_seconds, n)``: lists wait ``delay_seconds`` before being served.
    - ``expire_next_continue(n)``: the next ``n`` list pages asked with a ``continue`` token get
      410 Expired, as a token whose snapshot was compacted away (the body's
      ``metadata.continue`` is the inconsistent-continuation token, as upstream).
    - ``close_watches_immediately(n)``: the watch gets 200 + headers + the terminating chunk, no
      events (a clean, empty stream), again and again.
    - ``expire_next_watch(n)``: the watch gets 200 + an ERROR event (code 410, reason Expired,
      "too old resource version: …") + the terminating chunk.
    - ``clear()``: disarm everything, release hung watches, accept connections again.
    """

    def __init__(
        self,
        set_listening: Callable[[bool], None],
        drop_connections: Callable[[], None],
        signal_watches: Callable[..., int],
    ) -> None:
        """The server's own controls the faults work through: bind (True) or close the
        listening socket; RST every open connection; set an action ("reset", "expire",
        "release") on the open watches (of one resource; only the hung ones), returning how many.
        """
        self._set_listening = set_listening
        self._drop_connections = drop_connections
        self._signal_watches = signal_watches
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []

    def _arm(self, armed: _Armed) -> None:
        if armed.resource is not None and armed.resource not in RESOURCES:
            raise ValueError(f"unknown resource {armed.resource!r}")
        with self._lock:
            self._armed.append(armed)

    # -- for the server: the armed fault a request meets, used up
    def take(self, what: str, resource: str, kind: str | None = None) -> _Armed | None:
        """The first fault armed as `what` matching `resource` (and `kind`), one use of it
        consumed; None when none is armed."""
        with self._lock:
            for a in self._armed:
                if a.what != what or a.remaining == 0:
                    continue
                if a.resource is not None and a.resource != resource:
                    continue
                if a.kind is not None and a.kind != kind:
                    continue
                if a.remaining is not None:
                    a.remaining -= 1
                return a
        return None

    def take_watch(self, resource: str) -> _WatchFaults:
        """The faults a new watch of `resource` meets, each consumed (hang, expire and close
        exclude the rest)."""
        f = _WatchFaults()
        if self.take("hang", resource):
            f.hang = True
        elif self.take("expire", resource):
            f.expire = True
        elif self.take("close", resource):
            f.close = True
        else:
            if a := self.take("garbage", resource):
                f.garbage = a.payload
            if a := self.take("huge", resource):
                f.huge = a.payload
        return f

    # -- connection-level
    def refuse_connections(self, refuse: bool = True, *, drop_connections: bool = True) -> None:
        """Close (True) or re-bind (False) the listening socket; True also RSTs open connections."""
        self._set_listening(not refuse)
        if refuse and drop_connections:
            self._drop_connections()

    def drop_connections(self) -> None:
        """RST every open connection (idle keep-alive, lists, watches); keep accepting."""
        self._drop_connections()

    # -- watch streams
    def reset_watches(self, resource: str | None = None) -> int:
        """Abort every open watch stream with a TCP RST now; returns how many."""
        return self._signal_watches("reset", resource)

    def expire_watches(self, resource: str | None = None) -> int:
        """Send every open watch an ERROR 410 event and end it cleanly; returns how many."""
        return self._signal_watches("expire", resource)

    def hang_next_watch(self, n: int | None = 1, resource: str | None = None) -> None:
        """The next ``n`` watches get headers and then silence, until ``clear()``/``stop()``."""
        self._arm(_Armed("hang", n, resource))

    def garbage_next_watch(
        self, line: bytes = b"not json", n: int | None = 1, resource: str | None = None
    ) -> None:
        """The next ``n`` watches start with ``line`` as an event chunk, then go on normally."""
        self._arm(
            _Armed("garbage", n, resource, payload=line if line.endswith(b"\n") else line + b"\n")
        )

    def huge_line_next_watch(
        self, size: int = 5 * _MIB, n: int | None = 1, resource: str | None = None
    ) -> None:
        """The next ``n`` watches carry one valid BOOKMARK line of ``size`` bytes after replay."""
        self._arm(_Armed("huge", n, resource, payload=size))

    def close_watches_immediately(self, n: int | None = None, resource: str | None = None) -> None:
        """The next ``n`` watches (None: all until ``clear()``) end at once, cleanly and empty."""
        self._arm(_Armed("close", n, resource))

    def expire_next_watch(self, n: int | None = 1, resource: str | None = None) -> None:
        """The next ``n`` watches get 200 + one ERROR 410 (Expired) event + a clean end."""
        self._arm(_Armed("expire", n, resource))

    # -- any request
    def error_next(
        self,
        status: int = 500,
        n: int | None = 1,
        resource: str | None = None,
        *,
        kind: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next ``n`` matching requests (``kind``: list/watch/get/discovery) get ``status``."""
        if retry_after is None and status == 429:
            retry_after = 1
        self._arm(_Armed("error", n, resource, kind=kind, payload=(status, retry_after)))

    def expire_next_continue(self, n: int | None = 1, resource: str | None = None) -> None:
        """The next ``n`` list requests with a continue token get the 410 Expired an expired
        token gets (as if the snapshot had been compacted away between two pages)."""
        self._arm(_Armed("expire_continue", n, resource, kind="list"))

    def slow_list(
        self, delay_seconds: float, n: int | None = None, resource: str | None = None
    ) -> None:
        """Lists (the next ``n``; None: until ``clear()``) wait ``delay_seconds`` first."""
        self._arm(_Armed("slow", n, resource, kind="list", payload=delay_seconds))

    def clear(self) -> None:
        """Disarm every fault, release hung watches, listen again."""
        with self._lock:
            self._armed.clear()
        self._signal_watches("release", None, only_hung=True)
        self._set_listening(True)


# --------------------------------------------------------------------------- HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    """One keep-alive connection; the ApiServer does the work (``self.server`` is the ApiServer)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ApiServer  # type: ignore[assignment]
    conn: _Conn

    def __init__(self, conn: _Conn, addr: Any, api: ApiServer) -> None:
        self.conn = conn
        super().__init__(conn.sock, addr, api)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        # No "Server:" header: kube-apiserver (Go net/http) sends none.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")

    def do_GET(self) -> None:
        self.server.handle_get(self)

    def _no_write(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_body(
            405, status_body(405, "MethodNotAllowed", "this test server only serves GET")
        )

    do_POST = do_PUT = do_PATCH = do_DELETE = _no_write

    # -- response helpers
    def send_body(
        self,
        code: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if len(body) <= _CHUNK_THRESHOLD:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            view = memoryview(body)
            for i in range(0, len(body), _CHUNK):
                part = view[i : i + _CHUNK]
                self.wfile.write(b"".join((b"%x\r\n" % len(part), part, b"\r\n")))
            self.wfile.write(b"0\r\n\r\n")
        self.server.stats.note_status(code)

    def send_error_status(self, err: _HttpError) -> None:
        body = status_body(err.code, err.reason, err.message, err.details, err.list_meta)
        self.send_body(err.code, body, headers=err.headers)

    def abort(self, rst: bool) -> None:
        """Close the connection now: with a TCP RST when ``rst``, else a plain FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            if rst:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)


# --------------------------------------------------------------------------- server


class ApiServer:
    """A fake kube-apiserver in a background thread; see the module docstring for the protocol."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tls: bool = True,
        discovery_v1: bool = True,
        bookmark_interval: float = 1.0,
        history_limit: int | None = None,
        default_watch_timeout: float | None = None,
        expired_as_event: bool = False,
        start_rv: int = 1,
        version: str = "v1.31.0",
        multicluster: bool = False,
        service_cidrs: bool = False,
        networking_v1: bool = False,
    ) -> None:
        self.host = host
        self.multicluster = multicluster
        self.service_cidrs = service_cidrs
        self.networking_v1 = networking_v1 or service_cidrs
        self.token = token or secrets.token_urlsafe(24)
        self.tls = tls
        self.discovery_v1 = discovery_v1
        self.bookmark_interval = bookmark_interval
        self.history_limit = history_limit
        self.default_watch_timeout = default_watch_timeout
        self.expired_as_event = expired_as_event
        self.version = version
        self.stats = Stats()
        self.faults = Faults(self._set_listening, self._drop_connections, self._signal_watches)

        self._cond = threading.Condition()
        self._rv = start_rv
        self._state = {name: _ResourceState(info, start_rv) for name, info in RESOURCES.items()}
        self._watches: set[_Watch] = set()
        self._conns: set[_Conn] = set()
        self._conn_threads: set[threading.Thread] = set()
        self._all_conn_threads: list[threading.Thread] = []
        self._stopping = False

        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.ca_pem: bytes = self._ca.cert_pem.bytes()
        self._ssl: ssl.SSLContext | None = None
        if tls:
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._cert.configure_cert(self._ssl)

        self._listener: socket.socket | None = None
        self._want_listen = True
        self._listen_gen = 0  # bumped by the accept thread after each (un)bind
        self._listen_cond = threading.Condition()
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self.port = port
        self._bind()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> Self:
        """Start the accept thread (idempotent); returns self."""
        if self._accept_thread is None:
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name=f"kubeapi-accept-{self.port}", daemon=True
            )
            self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection (watches end abruptly); join the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._poke()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        elif self._listener is not None:
            self._listener.close()
            self._listener = None
        self._drop_connections(rst=False)
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = list(self._all_conn_threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kubeconfig(self, context: str = "test", namespace: str = "default") -> Json:
        """The kubeconfig document (dict) for this server: CA data, bearer token, one context."""
        cluster: Json = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | os.PathLike[str], context: str = "test") -> Path:
        """Write ``kubeconfig(context)`` as YAML to ``path``; returns the path."""
        p = Path(path)
        p.write_text(yaml.safe_dump(self.kubeconfig(context), sort_keys=False))
        return p

    # ------------------------------------------------------------------ listening socket
    def _bind(self) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError:
                s.close()
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            s.listen(512)
            s.setblocking(False)
            self.port = s.getsockname()[1]
            self._listener = s
            return

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _set_listening(self, listen: bool) -> None:
        with self._cond:
            if self._stopping:
                return
        with self._listen_cond:
            if self._want_listen == listen:
                return
            self._want_listen = listen
            gen = self._listen_gen
        if self._accept_thread is None:  # not started: do it here
            if listen and self._listener is None:
                self._bind()
            elif not listen and self._listener is not None:
                self._listener.close()
                self._listener = None
            return
        self._poke()
        with self._listen_cond:
            self._listen_cond.wait_for(lambda: self._listen_gen != gen, timeout=10)

    def _accept_loop(self) -> None:
        while True:
            with self._cond:
                stopping = self._stopping
            with self._listen_cond:
                want = self._want_listen and not stopping
                changed = False
                if want and self._listener is None:
                    self._bind()
                    changed = True
                elif not want and self._listener is not None:
                    self._listener.close()
                    self._listener = None
                    changed = True
                if changed:
                    self._listen_gen += 1
                    self._listen_cond.notify_all()
            if stopping:
                return
            fds: list[socket.socket] = [self._wake_r]
            if self._listener is not None:
                fds.append(self._listener)
            readable, _, _ = select.select(fds, [], [])
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            if self._listener is not None and self._listener in readable:
                try:
                    sock, addr = self._listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                sock.setblocking(True)
                t = threading.Thread(
                    target=self._serve_connection,
                    args=(sock, addr),
                    name=f"kubeapi-conn-{self.port}",
                    daemon=True,
                )
                with self._cond:
                    self._conn_threads.add(t)
                    # Kept after the thread leaves _conn_threads (its last lines run after
                    # that), so stop() can join it to the very end.
                    self._all_conn_threads.append(t)
                t.start()

    def _serve_connection(self, raw: socket.socket, addr: Any) -> None:
        self.stats.note_connection(+1)
        conn = _Conn(raw)
        try:
            if self._ssl is not None:
                raw.settimeout(10)
                try:
                    sock = self._ssl.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError):
                    raw.close()
                    return
                sock.settimeout(None)
                conn.sock = sock
            with self._cond:
                if self._stopping:
                    conn.sock.close()
                    return
                self._conns.add(conn)
            with contextlib.suppress(OSError, ValueError):
                _Handler(conn, addr, self)
        finally:
            with self._cond:
                self._conns.discard(conn)
                self._conn_threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                conn.sock.close()
            self.stats.note_connection(-1)

    def _drop_connections(self, rst: bool = True) -> None:
        with self._cond:
            conns = list(self._conns)
            for c in conns:
                if c.watch is not None:
                    c.watch.action = "reset" if rst else "stop"
            self._cond.notify_all()
        for c in conns:
            if c.watch is None:
                with contextlib.suppress(OSError):
                    if rst:
                        c.sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    socket.socket.shutdown(c.sock, socket.SHUT_RDWR)

    def _signal_watches(self, action: str, resource: str | None, only_hung: bool = False) -> int:
        n = 0
        with self._cond:
            for w in self._watches:
                if resource is not None and w.resource != resource:
                    continue
                if only_hung and w.action != "hang":
                    continue
                if w.action not in (None, "hang"):
                    continue
                w.action = action
                n += 1
            self._cond.notify_all()
        return n

    # ------------------------------------------------------------------ Python-side state API
    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        with self._cond:
            return self._rv

    def _info(self, resource: str) -> ResourceInfo:
        try:
            return RESOURCES[resource]
        except KeyError:
            raise ValueError(f"unknown resource {resource!r}; known: {sorted(RESOURCES)}") from None

    def _put_locked(self, resource: str, obj: Mapping[str, Any], mode: str) -> _Entry:
        """create / update / apply one object; caller holds the lock and notifies."""
        info = RESOURCES[resource]
        st = self._state[resource]
        meta_in: Mapping[str, Any] = obj.get("metadata") or {}
        name = meta_in.get("name")
        if not name:
            raise ValueError(f"{resource}: metadata.name is required")
        ns: str | None = (meta_in.get("namespace") or "default") if info.namespaced else None
        key = _key(ns, name)
        old = st.entries.get(key)
        if mode == "create" and old is not None:
            raise AlreadyExists(f'{resource} "{key}" already exists')
        if mode == "update" and old is None:
            raise NotFound(f'{resource} "{key}" not found')
        uid = old.uid if old else (meta_in.get("uid") or str(uuid.uuid4()))
        created = old.created if old else (meta_in.get("creationTimestamp") or _now())
        meta: Json = {"name": name}
        if "generateName" in meta_in:
            meta["generateName"] = meta_in["generateName"]
        if ns is not None:
            meta["namespace"] = ns
        meta["uid"] = uid
        meta["resourceVersion"] = _RV_MARK
        if "generation" in meta_in:
            meta["generation"] = meta_in["generation"]
        meta["creationTimestamp"] = created
        skip = {"name", "generateName", "namespace", "uid", "resourceVersion", "generation"}
        skip.add("creationTimestamp")
        meta.update((k, v) for k, v in meta_in.items() if k not in skip)
        out: Json = {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta}
        out.update((k, v) for k, v in obj.items() if k not in ("kind", "apiVersion", "metadata"))
        template = _dumps(out)
        if old is not None:
            same = template.replace(_RV_MARK.encode(), str(old.rv).encode(), 1)
            if same == old.data:
                return old
        self._rv += 1
        rv = self._rv
        data = template.replace(_RV_MARK_JSON, b'"resourceVersion":"%d"' % rv, 1)
        entry = _Entry(ns, name, data, rv, uid, created)
        st.entries[key] = entry
        self._record_locked(
            st,
            _Event(rv, "MODIFIED" if old else "ADDED", ns, name, data, old.data if old else None),
        )
        return entry

    def _record_locked(self, st: _ResourceState, ev: _Event) -> None:
        st.view = None
        st.hist_rv.append(ev.rv)
        st.hist.append(ev)
        self._trim_locked(st)

    def _trim_locked(self, st: _ResourceState) -> None:
        if self.history_limit is not None:
            live = len(st.hist_rv) - bisect.bisect_right(st.hist_rv, st.horizon)
            if live > self.history_limit:
                st.horizon = st.hist_rv[len(st.hist_rv) - self.history_limit - 1]
                self._drop_snapshots_locked(st)
        limit = st.horizon
        for w in self._watches:
            if w.resource == st.info.name:
                limit = min(limit, w.cursor)
        k = bisect.bisect_right(st.hist_rv, limit)
        if k and (k >= 4096 or 2 * k >= len(st.hist_rv)):
            del st.hist_rv[:k]
            del st.hist[:k]

    def _drop_snapshots_locked(self, st: _ResourceState) -> None:
        for rv in [rv for rv in st.snapshots if rv < st.horizon]:
            del st.snapshots[rv]

    @staticmethod
    def _parse(entry: _Entry) -> Json:
        return json.loads(entry.data)

    def create(self, resource: str, obj: Mapping[str, Any]) -> Json:
        """Create ``obj`` (AlreadyExists if present); returns the stored object."""
        self._info(resource)
        with self._cond:
            entry = self._put_locked(resource, obj, "create")
            self._cond.notify_all()
        return self._parse(entry)

    def update(self, resource: str, obj: Mapping[str, Any]) -> Json:
        """Replace an existing object (NotFound otherwise); uid and creationTimestamp are kept."""
        self._info(resource)
        with self._cond:
            entry = self._put_locked(resource, obj, "update")
            self._cond.notify_all()
        return self._parse(entry)

    def apply(self, resource: str, obj: Mapping[str, Any]) -> Json:
        """Create or replace ``obj``; returns the stored object."""
        self._info(resource)
        with self._cond:
            entry = self._put_locked(resource, obj, "apply")
            self._cond.notify_all()
        return self._parse(entry)

    def patch(
        self, resource: str, namespace: str | None, name: str, patch: Mapping[str, Any]
    ) -> Json:
        """Apply a JSON merge patch (RFC 7386: None deletes a key) to an existing object."""
        self._info(resource)
        with self._cond:
            st = self._state[resource]
            ns = namespace if RESOURCES[resource].namespaced else None
            old = st.entries.get(_key(ns, name))
            if old is None:
                raise NotFound(f'{resource} "{_key(ns, name)}" not found')
            entry = self._put_locked(resource, _merge_patch(json.loads(old.data), patch), "update")
            self._cond.notify_all()
        return self._parse(entry)

    def delete(self, resource: str, namespace: str | None, name: str) -> Json:
        """Delete an object (NotFound otherwise); returns its last state, stamped with the new RV."""
        info = self._info(resource)
        ns = namespace if info.namespaced else None
        key = _key(ns, name)
        with self._cond:
            st = self._state[resource]
            old = st.entries.pop(key, None)
            if old is None:
                raise NotFound(f'{resource} "{key}" not found')
            self._rv += 1
            obj = json.loads(old.data)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            data = _dumps(obj)
            self._record_locked(st, _Event(self._rv, "DELETED", ns, name, data, old.data))
            self._cond.notify_all()
        return obj

    def get(self, resource: str, namespace: str | None, name: str) -> Json:
        """The stored object (a fresh dict); NotFound if absent."""
        info = self._info(resource)
        ns = namespace if info.namespaced else None
        with self._cond:
            entry = self._state[resource].entries.get(_key(ns, name))
        if entry is None:
            raise NotFound(f'{resource} "{_key(ns, name)}" not found')
        return self._parse(entry)

    def list_objects(self, resource: str, namespace: str | None = None) -> list[Json]:
        """Every stored object of ``resource`` (in ``namespace``), sorted by namespace/name."""
        self._info(resource)
        with self._cond:
            entries = sorted(
                (k, e)
                for k, e in self._state[resource].entries.items()
                if namespace is None or e.ns == namespace
            )
        return [json.loads(e.data) for _, e in entries]

    def load(self, resource: str, objs: Iterable[Mapping[str, Any]]) -> int:
        """Create or replace many objects fast (one RV per object); returns the last RV."""
        self._info(resource)
        with self._cond:
            for obj in objs:
                self._put_locked(resource, obj, "apply")
            self._cond.notify_all()
            return self._rv

    def compact(self, rv: int | None = None) -> int:
        """Move every resource's horizon to ``rv`` (default: the current RV); returns it.

        Watches and continue tokens older than the horizon then get 410; open streams go on.
        """
        with self._cond:
            target = self._rv if rv is None else min(rv, self._rv)
            for st in self._state.values():
                st.horizon = max(st.horizon, target)
                self._drop_snapshots_locked(st)
                self._trim_locked(st)
            return target

    def scale_headless(
        self,
        namespace: str,
        service: str,
        n_ready: int,
        n_not_ready: int = 0,
        *,
        hostnames: bool = False,
    ) -> Json:
        """Rewrite Service ``namespace/service``'s endpoints to ``n_ready`` + ``n_not_ready`` pods.

        The first EndpointSlice labelled ``kubernetes.io/service-name=service`` (by name) is
        rewritten, others of that service are deleted, one is created if there is none; an
        Endpoints object of that name, if present, is rewritten alike. Addresses are
        deterministic (10.{200+h}.{i/250}.{i%250+1}), pods named ``service-i``, hostnames
        ``service-i`` when ``hostnames``. Ports come from the existing slice, else the Service's
        targetPorts, else 80. Returns the new EndpointSlice.
        """
        h = zlib.crc32(f"{namespace}/{service}".encode()) % 50
        n = n_ready + n_not_ready
        addrs = [f"10.{200 + h}.{i // 250}.{i % 250 + 1}" for i in range(n)]
        ready = [i < n_ready for i in range(n)]
        host = [f"{service}-{i}" for i in range(n)] if hostnames else None
        with self._cond:
            st = self._state["endpointslices"]
            mine: list[Json] = []
            for e in st.entries.values():
                if e.ns == namespace:
                    obj = json.loads(e.data)
                    labels = obj["metadata"].get("labels") or {}
                    if labels.get("kubernetes.io/service-name") == service:
                        mine.append(obj)
            mine.sort(key=lambda o: o["metadata"]["name"])
            ports: list[Any]
            if mine and mine[0].get("ports"):
                ports = mine[0]["ports"]
            else:
                svc = self._state["services"].entries.get(_key(namespace, service))
                ports = [80]
                if svc is not None:
                    sp = json.loads(svc.data)["spec"].get("ports") or []
                    ports = [
                        {
                            "name": p.get("name", ""),
                            "protocol": p.get("protocol", "TCP"),
                            "port": p["targetPort"]
                            if isinstance(p.get("targetPort"), int)
                            else p["port"],
                        }
                        for p in sp
                    ] or [80]
            name = mine[0]["metadata"]["name"] if mine else None
            svc_entry = self._state["services"].entries.get(_key(namespace, service))
            new = objects.endpointslice(
                namespace,
                service,
                name,
                addresses=addrs,
                ready=ready,
                ports=ports,
                hostname=host,
                service_uid=svc_entry.uid if svc_entry else None,
            )
            entry = self._put_locked("endpointslices", new, "apply")
            for other in mine[1:]:
                m = other["metadata"]
                okey = _key(namespace, m["name"])
                old = st.entries.pop(okey)
                self._rv += 1
                other["metadata"]["resourceVersion"] = str(self._rv)
                self._record_locked(
                    st, _Event(self._rv, "DELETED", namespace, m["name"], _dumps(other), old.data)
                )
            ep_state = self._state["endpoints"]
            if _key(namespace, service) in ep_state.entries:
                ep = objects.endpoints(
                    namespace,
                    service,
                    addresses=addrs,
                    ready=ready,
                    ports=[
                        {k: v for k, v in p.items() if k != "appProtocol"}
                        if isinstance(p, dict)
                        else p
                        for p in ports
                    ],
                    hostname=host,
                )
                self._put_locked("endpoints", ep, "apply")
            self._cond.notify_all()
        return self._parse(entry)

    # ------------------------------------------------------------------ request handling
    def handle_get(self, h: _Handler) -> None:
        """Answer the GET request `h` holds (its connection's handler calls this)."""
        try:
            self._dispatch(h)
        except _HttpError as e:
            h.send_error_status(e)
        except OSError:
            h.close_connection = True
        except Exception as e:  # a bug in this server: show it, answer 500
            traceback.print_exc()
            h.send_error_status(_HttpError(500, "InternalError", f"test server bug: {e!r}"))

    def _dispatch(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        parts = [unquote(p) for p in split.path.split("/") if p]
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        route = self._route(parts)
        kind, info, ns, name = route
        is_watch = query.get("watch", "").lower() in ("true", "1")
        if kind == "list" and is_watch:
            kind = "watch"
        resource = info.name if info else ""
        self.stats.note_request(h.command, resource, kind if kind != "notfound" else "other")
        auth = h.headers.get("Authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
            raise _HttpError(401, "Unauthorized", "Unauthorized")
        if a := self.faults.take("error", resource, kind):
            code, retry_after = a.payload
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            details = {"retryAfterSeconds": retry_after} if retry_after is not None else None
            reason = _REASONS.get(code, "InternalError")
            message = {
                429: "Too many requests, please try again later.",
                500: "Internal error occurred: injected fault",
            }.get(code, f"injected fault {code}")
            raise _HttpError(code, reason, message, details, headers)
        if kind == "notfound":
            raise _HttpError(404, "NotFound", "the server could not find the requested resource")
        if kind == "discovery":
            body = self._discovery(parts)
            if isinstance(body, bytes):
                h.send_body(200, body, "text/plain; charset=utf-8")
            else:
                h.send_body(200, _dumps(body) + b"\n")
            return
        assert info is not None
        if kind == "get":
            assert name is not None
            self._serve_get(h, info, ns, name)
        elif kind == "list":
            self._serve_list(h, info, ns, query)
        else:
            self._serve_watch(h, info, ns, query)

    def _route(self, parts: list[str]) -> tuple[str, ResourceInfo | None, str | None, str | None]:
        """(kind, resource, namespace, name); kind: discovery / list / get / notfound."""
        nf: tuple[str, ResourceInfo | None, str | None, str | None] = ("notfound", None, None, None)
        if parts in (
            ["api"],
            ["api", "v1"],
            ["apis"],
            ["version"],
            ["healthz"],
            ["livez"],
            ["readyz"],
        ):
            return ("discovery", None, None, None)
        if parts[:1] == ["apis"] and len(parts) in (2, 3):
            if self.discovery_v1 and parts[1] == _DISCOVERY_GROUP and parts[2:] in ([], ["v1"]):
                return ("discovery", None, None, None)
            if self.multicluster and parts[1] == _MCS_GROUP and parts[2:] in ([], [_MCS_VERSION]):
                return ("discovery", None, None, None)
            if self.networking_v1 and parts[1] == _NET_GROUP and parts[2:] in ([], ["v1"]):
                return ("discovery", None, None, None)
            return nf
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:3] == ["apis", _DISCOVERY_GROUP, "v1"] and self.discovery_v1:
            group, rest = _DISCOVERY_GROUP, parts[3:]
        elif parts[:3] == ["apis", _MCS_GROUP, _MCS_VERSION] and self.multicluster:
            group, rest = _MCS_GROUP, parts[3:]
        elif parts[:3] == ["apis", _NET_GROUP, "v1"] and self.service_cidrs:
            group, rest = _NET_GROUP, parts[3:]
        else:
            return nf

        def res(name: str) -> ResourceInfo | None:
            info = RESOURCES.get(name)
            return info if info is not None and info.group == group else None

        if len(rest) == 1 and (info := res(rest[0])):
            return ("list", info, None, None)
        if len(rest) == 2 and rest[0] == "namespaces" and group == "":
            return ("get", RESOURCES["namespaces"], None, rest[1])
        if len(rest) in (3, 4) and rest[0] == "namespaces" and (info := res(rest[2])):
            if not info.namespaced:
                return nf
            if len(rest) == 3:
                return ("list", info, rest[1], None)
            return ("get", info, rest[1], rest[3])
        return nf

    def _api_resources(self, group: str) -> list[Json]:
        out: list[Json] = []
        for info in RESOURCES.values():
            if info.group != group:
                continue
            r: Json = {
                "name": info.name,
                "singularName": info.singular,
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": [
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ],
            }
            if info.short_names:
                r["shortNames"] = list(info.short_names)
            r["storageVersionHash"] = base64.b64encode(
                zlib.crc32(info.name.encode()).to_bytes(4, "big") * 2
            ).decode()[:11]
            out.append(r)
            if info.name in ("namespaces", "services", "pods"):
                out.append(
                    {
                        "name": f"{info.name}/status",
                        "singularName": "",
                        "namespaced": info.namespaced,
                        "kind": info.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return out

    def _discovery(self, parts: list[str]) -> Json | bytes:
        gv = {"groupVersion": f"{_DISCOVERY_GROUP}/v1", "version": "v1"}
        group = {"name": _DISCOVERY_GROUP, "versions": [gv], "preferredVersion": gv}
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if parts == ["api", "v1"]:
            return {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": self._api_resources(""),
            }
        mcs_gv = {"groupVersion": f"{_MCS_GROUP}/{_MCS_VERSION}", "version": _MCS_VERSION}
        mcs = {"name": _MCS_GROUP, "versions": [mcs_gv], "preferredVersion": mcs_gv}
        net_gv = {"groupVersion": f"{_NET_GROUP}/v1", "version": "v1"}
        net = {"name": _NET_GROUP, "versions": [net_gv], "preferredVersion": net_gv}
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": ([group] if self.discovery_v1 else [])
                + ([mcs] if self.multicluster else [])
                + ([net] if self.networking_v1 else []),
            }
        if parts == ["apis", _NET_GROUP]:
            return {"kind": "APIGroup", "apiVersion": "v1", **net}
        if parts == ["apis", _NET_GROUP, "v1"]:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{_NET_GROUP}/v1",
                "resources": self._api_resources(_NET_GROUP) if self.service_cidrs else [],
            }
        if parts == ["apis", _MCS_GROUP]:
            return {"kind": "APIGroup", "apiVersion": "v1", **mcs}
        if parts == ["apis", _MCS_GROUP, _MCS_VERSION]:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{_MCS_GROUP}/{_MCS_VERSION}",
                "resources": self._api_resources(_MCS_GROUP),
            }
        if parts == ["apis", _DISCOVERY_GROUP]:
            return {"kind": "APIGroup", "apiVersion": "v1", **group}
        if parts == ["apis", _DISCOVERY_GROUP, "v1"]:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{_DISCOVERY_GROUP}/v1",
                "resources": self._api_resources(_DISCOVERY_GROUP),
            }
        if parts == ["version"]:
            major, minor = self.version.lstrip("v").split(".")[:2]
            return {
                "major": major,
                "minor": minor,
                "gitVersion": self.version,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2024-08-13T07:28:49Z",
                "goVersion": "go1.22.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        return b"ok"

    def _serve_get(self, h: _Handler, info: ResourceInfo, ns: str | None, name: str) -> None:
        with self._cond:
            entry = self._state[info.name].entries.get(_key(ns, name))
        if entry is None:
            details: Json = {"name": name}
            if info.group:
                details["group"] = info.group
            details["kind"] = info.name
            raise _HttpError(404, "NotFound", f'{info.name} "{name}" not found', details)
        h.send_body(200, entry.data + b"\n")

    def _view_locked(self, st: _ResourceState) -> _View:
        if st.view is None:
            keys = sorted(st.entries)
            ents = st.entries
            st.view = _View(keys, [ents[k].data for k in keys])
        return st.view

    def _wait_rv_locked(self, n: int) -> None:
        deadline = time.monotonic() + TOO_LARGE_WAIT
        while self._rv < n and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _HttpError(
                    504,
                    "Timeout",
                    f"Timeout: Too large resource version: {n}, current: {self._rv}",
                    {
                        "causes": [
                            {
                                "reason": "ResourceVersionTooLarge",
                                "message": "Too large resource version",
                            }
                        ],
                        "retryAfterSeconds": 1,
                    },
                )
            self._cond.wait(left)

    def _serve_list(
        self, h: _Handler, info: ResourceInfo, ns: str | None, q: Mapping[str, str]
    ) -> None:
        if a := self.faults.take("slow", info.name, "list"):
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=a.payload)
        sel = _Selector(q.get("fieldSelector", ""), q.get("labelSelector", ""))
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise _HttpError(400, "BadRequest", f"invalid limit {q.get('limit')!r}") from None
        rv_param = q.get("resourceVersion", "")
        rvm = q.get("resourceVersionMatch", "")
        cont = q.get("continue", "")
        if rvm and not rv_param:
            raise _HttpError(
                422,
                "Invalid",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is "
                "forbidden unless resourceVersion is provided",
            )
        if rvm not in ("", "NotOlderThan", "Exact"):
            raise _HttpError(422, "Invalid", f"resourceVersionMatch: Unsupported value: {rvm!r}")
        if cont and rv_param not in ("", "0"):
            raise _HttpError(
                400, "BadRequest", "specifying resource version is not allowed when using continue"
            )
        want_rv: int | None = None
        if rv_param not in ("", "0"):
            try:
                want_rv = int(rv_param)
            except ValueError:
                raise _HttpError(
                    400, "BadRequest", f"invalid resource version: {rv_param!r}"
                ) from None
        start_key = ""
        token_rv = 0
        if cont:
            token_rv, start_key = _decode_continue(cont)
        with self._cond:
            st = self._state[info.name]
            if want_rv is not None:
                self._wait_rv_locked(want_rv)
                if rvm == "Exact" and want_rv != self._rv and want_rv not in st.snapshots:
                    raise _HttpError(
                        410,
                        "Expired",
                        f"too old resource version: {want_rv} ({self._rv})",
                    )
            if cont and token_rv > 0:
                view = st.snapshots.get(token_rv)
                expire = self.faults.take("expire_continue", info.name, "list") is not None
                if token_rv < st.horizon or view is None or expire:
                    raise _HttpError(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter, "
                        "or use the continue token in this response to retrieve the remainder "
                        "of the results. Continuing with the provided token results in an "
                        "inconsistent list - objects that were created, modified, or deleted "
                        "between the time the first chunk was returned and now may show up in "
                        "the list.",
                        list_meta={"continue": _encode_continue(-1, start_key)},
                    )
                st.snapshots.move_to_end(token_rv)
                list_rv = token_rv
            else:
                if rvm == "Exact" and want_rv is not None and want_rv in st.snapshots:
                    view, list_rv = st.snapshots[want_rv], want_rv
                else:
                    view, list_rv = self._view_locked(st), self._rv
                if limit:
                    st.snapshots[list_rv] = view
                    st.snapshots.move_to_end(list_rv)
                    while len(st.snapshots) > _MAX_SNAPSHOTS:
                        st.snapshots.popitem(last=False)
        keys, datas = view.keys, view.datas
        lo, hi = _ns_range(keys, ns) if ns is not None else (0, len(keys))
        if start_key:
            lo = max(lo, bisect.bisect_left(keys, start_key))
        meta = b'"resourceVersion":"%d"' % list_rv
        if not limit and sel.empty:
            items = datas[lo:hi]
        else:
            items = []
            i = lo
            while i < hi and (not limit or len(items) < limit):
                k = keys[i]
                ons, _, oname = k.rpartition("/")
                if sel.empty or sel.matches(ons or None, oname, datas[i]):
                    items.append(datas[i])
                i += 1
            if limit and i < hi:
                meta += (
                    b',"continue":"%s"' % _encode_continue(list_rv, keys[i - 1] + "\x00").encode()
                )
                if sel.empty:
                    meta += b',"remainingItemCount":%d' % (hi - i)
        body = b"".join(
            (
                b'{"kind":"%s","apiVersion":"%s","metadata":{'
                % (info.list_kind.encode(), info.api_version.encode()),
                meta,
                b'},"items":[',
                b",".join(items),
                b"]}\n",
            )
        )
        h.send_body(200, body)

    def _bookmark(self, info: ResourceInfo, rv: int, annotations: Json | None = None) -> bytes:
        meta: Json = {"resourceVersion": str(rv)}
        if annotations:
            meta["annotations"] = annotations
        obj = {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta}
        return _event_line("BOOKMARK", _dumps(obj))

    def _too_old(self, n: int, horizon: int) -> Json:
        return _status_dict(410, "Expired", f"too old resource version: {n} ({horizon})")

    def _serve_watch(
        self, h: _Handler, info: ResourceInfo, ns: str | None, q: Mapping[str, str]
    ) -> None:
        sel = _Selector(q.get("fieldSelector", ""), q.get("labelSelector", ""))
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        send_initial = q.get("sendInitialEvents", "").lower() in ("true", "1")
        rvm = q.get("resourceVersionMatch", "")
        rv_param = q.get("resourceVersion", "")
        if send_initial and (rvm != "NotOlderThan" or not bookmarks):
            raise _HttpError(
                422,
                "Invalid",
                "sendInitialEvents requires resourceVersionMatch=NotOlderThan and "
                "allowWatchBookmarks=true",
            )
        if rvm and not send_initial:
            raise _HttpError(
                422,
                "Invalid",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch "
                "unless sendInitialEvents is provided",
            )
        timeout: float | None = self.default_watch_timeout
        if q.get("timeoutSeconds"):
            try:
                seconds = float(q["timeoutSeconds"])
            except ValueError:
                raise _HttpError(400, "BadRequest", "invalid timeoutSeconds") from None
            if seconds > 0:  # 0 means "the server's default", as upstream
                timeout = seconds
        n: int | None = None
        if rv_param not in ("", "0"):
            try:
                n = int(rv_param)
            except ValueError:
                raise _HttpError(
                    400, "BadRequest", f"invalid resource version: {rv_param!r}"
                ) from None
        initial: _View | None = None
        expired: Json | None = None
        with self._cond:
            st = self._state[info.name]
            if n is not None:
                self._wait_rv_locked(n)
                if n < st.horizon:
                    if not self.expired_as_event:
                        raise _HttpError(
                            410, "Expired", f"too old resource version: {n} ({st.horizon})"
                        )
                    expired = self._too_old(n, st.horizon)
            if n is None or send_initial:
                initial = self._view_locked(st)
                start = self._rv
            else:
                start = n
            w = _Watch(info.name, ns, start, h.conn)
            faults = self.faults.take_watch(info.name)
            if faults.hang or faults.close or faults.expire or expired:
                w.cursor = 1 << 62  # will not read the history: never holds back trimming
            if faults.hang:
                w.action = "hang"
            self._watches.add(w)
            h.conn.watch = w
        self.stats.note_watch(info.name, +1)
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            self.stats.note_status(200)
            if faults.hang:
                with self._cond:
                    while w.action == "hang" and not self._stopping:
                        self._cond.wait(_POLL)
                        if _peer_closed(h.connection):
                            w.action = "gone"
                h.abort(rst=w.action == "reset")
                return
            if faults.expire or expired:
                obj = expired or self._too_old(start, self.resource_version)
                h.wfile.write(_chunk(_event_line("ERROR", _dumps(obj))) + b"0\r\n\r\n")
                return
            if faults.close:
                h.wfile.write(b"0\r\n\r\n")
                return
            if faults.garbage is not None:
                h.wfile.write(_chunk(faults.garbage))
            self._stream(
                h, info, ns, sel, w, initial, start, timeout, bookmarks, send_initial, faults.huge
            )
        except (OSError, ssl.SSLError):
            h.close_connection = True
        finally:
            with self._cond:
                self._watches.discard(w)
                h.conn.watch = None
                self._trim_locked(self._state[info.name])
            self.stats.note_watch(info.name, -1)

    def _stream(
        self,
        h: _Handler,
        info: ResourceInfo,
        ns: str | None,
        sel: _Selector,
        w: _Watch,
        initial: _View | None,
        start: int,
        timeout: float | None,
        bookmarks: bool,
        send_initial: bool,
        huge: int | None,
    ) -> None:
        """Initial events or history replay, the huge-line fault, then live events until the end."""
        now = time.monotonic()
        deadline = now + timeout if timeout is not None else float("inf")
        interval = self.bookmark_interval
        next_bm = now + interval if bookmarks else float("inf")
        last = start
        if initial is not None:
            keys, datas = initial.keys, initial.datas
            lo, hi = _ns_range(keys, ns) if ns is not None else (0, len(keys))
            lines: list[bytes] = []
            for i in range(lo, hi):
                ons, _, oname = keys[i].rpartition("/")
                if sel.empty or sel.matches(ons or None, oname, datas[i]):
                    lines.append(_event_line("ADDED", datas[i]))
            self._send_lines(h, lines)
            if send_initial:
                end = self._bookmark(info, start, {"k8s.io/initial-events-end": "true"})
                self._send_lines(h, [end], bookmarks=1)
        if huge is not None:
            # Replay the history first so that the padded bookmark's RV is truthful.
            with self._cond:
                st = self._state[info.name]
                evs = st.hist[bisect.bisect_right(st.hist_rv, last) :]
                cur = self._rv
                if evs:
                    last = w.cursor = evs[-1].rv
            self._send_lines(h, self._lines(evs, ns, sel))
            self._send_lines(h, [self._huge_bookmark(info, cur, huge)], bookmarks=1)
        sock = h.connection
        while True:
            evs = []
            with self._cond:
                st = self._state[info.name]
                while w.action is None and not self._stopping:
                    i = bisect.bisect_right(st.hist_rv, last)
                    if i < len(st.hist_rv):
                        evs = st.hist[i:]
                        break
                    t = time.monotonic()
                    if t >= deadline or t >= next_bm:
                        break
                    self._cond.wait(min(deadline, next_bm, t + _POLL) - t)
                    if _peer_closed(sock):
                        w.action = "gone"
                cur = self._rv
                action = "stop" if self._stopping else w.action
                if evs:
                    last = w.cursor = evs[-1].rv
            if action == "expire":
                error = _event_line("ERROR", _dumps(self._too_old(last, cur)))
                h.wfile.write(_chunk(error) + b"0\r\n\r\n")
                return
            if action is not None:
                h.abort(rst=action == "reset")
                return
            self._send_lines(h, self._lines(evs, ns, sel))
            # Every event of this resource up to `cur` has been sent: a bookmark at `cur` is true.
            t = time.monotonic()
            if t >= deadline:
                tail = [self._bookmark(info, cur)] if bookmarks else []
                self._send_lines(h, tail, bookmarks=len(tail), end=True)
                return
            if t >= next_bm:
                self._send_lines(h, [self._bookmark(info, cur)], bookmarks=1)
                next_bm = t + interval

    def _lines(self, evs: list[_Event], ns: str | None, sel: _Selector) -> list[bytes]:
        out: list[bytes] = []
        for ev in evs:
            if ns is not None and ev.ns != ns:
                continue
            line = self._convert(ev, sel)
            if line is not None:
                out.append(line)
        return out

    def _send_lines(
        self, h: _Handler, lines: list[bytes], bookmarks: int = 0, end: bool = False
    ) -> None:
        """Write each line as its own chunk (batched into few writes); ``end``: terminating chunk."""
        for i in range(0, len(lines), 1000):
            h.wfile.write(b"".join(_chunk(line) for line in lines[i : i + 1000]))
        if end:
            h.wfile.write(b"0\r\n\r\n")
        if lines:
            self.stats.note_sent(len(lines) - bookmarks, bookmarks)

    def _huge_bookmark(self, info: ResourceInfo, rv: int, size: int) -> bytes:
        base = self._bookmark(info, rv, {"padding": ""})  # ends with "\n", not counted
        pad = max(0, size - (len(base) - 1))
        return self._bookmark(info, rv, {"padding": "x" * pad})

    def _convert(self, ev: _Event, sel: _Selector) -> bytes | None:
        """The event line this watch sends for ``ev`` (None: filtered out)."""
        if sel.empty:
            return _event_line(ev.type, ev.data)
        if not sel.labels or ev.type != "MODIFIED" or ev.prev is None:
            if sel.matches(ev.ns, ev.name, ev.data):
                return _event_line(ev.type, ev.data)
            return None
        now_ok = sel.matches(ev.ns, ev.name, ev.data)
        was_ok = sel.matches(ev.ns, ev.name, ev.prev)
        if now_ok:
            return _event_line("MODIFIED" if was_ok else "ADDED", ev.data)
        if was_ok:
            prev = json.loads(ev.prev)
            prev["metadata"]["resourceVersion"] = str(ev.rv)
            return _event_line("DELETED", _dumps(prev))
        return None


# --------------------------------------------------------------------------- helpers


def _ns_range(keys: list[str], ns: str) -> tuple[int, int]:
    """The slice of sorted "ns/name" keys that belong to namespace ``ns``."""
    return bisect.bisect_left(keys, ns + "/"), bisect.bisect_left(keys, ns + "0")


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        obj = json.loads(raw)
        if obj.get("v") != "meta.k8s.io/v1":
            raise ValueError("bad version")
        return int(obj["rv"]), str(obj["start"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _HttpError(400, "BadRequest", f"continue key is not valid: {e}") from None


def _peer_closed(sock: socket.socket) -> bool:
    """True if the client has closed (or reset) a connection that should be silent."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not r:
        return False
    try:
        data = socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    # EOF, or bytes (a TLS close_notify, anything) on a watch connection: the client is done.
    del data
    return True


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out

"""The Kubernetes API source: one Reflector per kind, list then watch, feeding the store.

Each Reflector does what client-go's does for CoreDNS, with the official `kubernetes` client in
a worker thread (its calls block) and every store update on the trio thread
(docs/architecture.md §6); an event that changes a Service of `interpreter.LARGE_BUILD`
endpoints or more is applied under `interpreter.handing_over()`, and a watch event whose
object carries as many endpoints is converted under it in the worker thread, never a list's
(scheduling only):

- list (paginated, `limit=500` and `continue`; a continue token that expired mid-list, 410,
  starts the list over) → `Store.replace` of the whole kind in one step, then watch from the
  list's resourceVersion (never an item's), with bookmarks, a server-side timeout drawn from
  5–10 minutes, and a client-side read timeout so a silently dead connection is noticed; a
  listed object equal to the store's is replaced by the store's, so a relist does not hold the
  cluster twice;
- a watch that ends cleanly is reopened from the last resourceVersion seen (events or bookmarks);
- 410 Gone, as an HTTP status or an ERROR event → relist from resourceVersion "" (the store swaps
  the kind in one step, so no query sees a half-replaced kind);
- any other failure → backoff from 0.8 s doubling to 30 s with jitter, reset after 2 minutes
  without failure; a watch that closes at once without any event counts as a failure, so a
  misbehaving server cannot make us spin;
- a line that is not JSON, an unknown event type, an object without metadata, or an object the
  model rejects is counted and skipped — never applied half-way.

Requests go through the client's `ApiClient` (its kubeconfig and in-cluster loading, TLS, token
refresh, REST layer), and responses are read raw and converted straight into the slim model. The
generated `CoreV1Api` classes are not used: importing them costs a second and 22 MiB, and their
model classes are slow and large at scale.

Only this module imports `kubernetes` (docs/architecture.md §4).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import trio
import urllib3
from kubernetes import config as k8s_config
from kubernetes.client.api_client import ApiClient
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException

from kdns import metrics
from kdns.interpreter import LARGE_BUILD, handing_over
from kdns.model import (
    IMPORT_NAME_LABEL,
    ModelError,
    endpoints_to_slices,
    endpointslice_from_dict,
    import_slice_from_dict,
    is_import_slice,
    namespace_from_dict,
    node_from_dict,
    pod_from_dict,
    service_cidr_from_dict,
    service_from_dict,
    serviceimport_from_dict,
)
from kdns.sources.scope import Scope
from kdns.store import (
    ENDPOINTSLICES,
    IMPORTSLICES,
    MULTICLUSTER_KINDS,
    NAMESPACES,
    NODES,
    PODS,
    SERVICECIDRS,
    SERVICEIMPORTS,
    SERVICES,
    Change,
    Kind,
    Store,
)

log = logging.getLogger(__name__)

LIST_PAGE = 500
MAX_LINE = 64 << 20  # a watch line longer than this is not an object we can hold: restart
EARLY_CLOSE = 1.0  # a watch that ends sooner than this with no event is a failure

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ClusterConfigError(Exception):
    """No usable cluster configuration; the text is one line for the operator."""


def cluster_client(kubeconfig: str | None, context: str | None) -> ApiClient | None:
    """An API client from --kubeconfig, $KUBECONFIG, or the in-cluster service account.

    Returns None when none of the three is there. In a pod the token file is re-read as the
    kubelet rotates it (the client's `try_refresh_token`)."""
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    configuration = Configuration()
    try:
        if path:
            k8s_config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(IN_CLUSTER_TOKEN):
            k8s_config.load_incluster_config(
                client_configuration=configuration, try_refresh_token=True
            )
        else:
            return None
    except (k8s_config.ConfigException, OSError, ValueError, TypeError) as e:
        where = path or "the in-cluster service account"
        raise ClusterConfigError(f"{where}: cannot use this cluster configuration: {e}") from None
    # The client retries 429s and connection errors by itself; the Reflector owns retrying.
    configuration.retries = False
    return ApiClient(configuration)


# --- what each kind is -------------------------------------------------------------------------


Converted = list[tuple[Any, Any]]  # (store key, model object) of the resource's store kind


def _one(convert: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Converted]:
    def run(obj: dict[str, Any]) -> Converted:
        item = convert(obj)
        return [(item.key, item)]

    return run


def _service_slice(obj: dict[str, Any]) -> Converted:
    # An imported slice (KEP-1645) belongs to a ServiceImport, not to a local Service: it is
    # read by the import slices' own watch, and skipped here without a word.
    if is_import_slice(obj):
        return []
    item = endpointslice_from_dict(obj)
    return [(item.key, item)]


def _endpoints(obj: dict[str, Any]) -> Converted:
    return [(s.key, s) for s in endpoints_to_slices(obj)]


# How many endpoints a raw object carries, read before it is converted (a length or two, no
# pass over them): its conversion is about 13 µs of Python per endpoint.


def _no_endpoints(obj: dict[str, Any]) -> int:
    return 0


def _slice_endpoints(obj: dict[str, Any]) -> int:
    endpoints = obj.get("endpoints")
    return len(endpoints) if isinstance(endpoints, list) else 0


def _endpoints_addresses(obj: dict[str, Any]) -> int:
    subsets = obj.get("subsets")
    if not isinstance(subsets, list):
        return 0
    return sum(
        len(subset.get(key) or ())
        for subset in subsets
        if isinstance(subset, dict)
        for key in ("addresses", "notReadyAddresses")
    )


@dataclass(frozen=True, slots=True)
class Resource:
    kind: Kind[Any, Any]  # the store kind
    name: str  # for metrics and logs: the API resource
    path: str  # the cluster-wide collection
    convert: Callable[[dict[str, Any]], Converted]
    field_selector: str | None = None
    label_selector: str | None = None
    # Does one API object become exactly one store object under the same key? (Endpoints: no.)
    one_to_one: bool = True
    # Endpoints in a raw object: a watch event's object of `LARGE_BUILD` or more is converted
    # under `handing_over()` (`Reflector.parse`).
    endpoints_in: Callable[[dict[str, Any]], int] = _no_endpoints

    def selectors(self) -> list[tuple[str, Any]]:
        params: list[tuple[str, Any]] = []
        if self.field_selector:
            params.append(("fieldSelector", self.field_selector))
        if self.label_selector:
            params.append(("labelSelector", self.label_selector))
        return params

    def scoped(self, scope: Scope, api_kind: str) -> Resource:
        """This resource serving only what `scope` admits: the Services selector goes to the
        API server; namespaces (several, which no field selector can say) are left out here,
        as are Services an API server that ignores labelSelector would still send."""
        if scope == Scope():
            return self
        convert = self.convert

        def scoped_convert(obj: dict[str, Any]) -> Converted:
            return convert(obj) if scope.admits_object(api_kind, obj) else []

        selector = scope.service_selector if api_kind == "Service" else self.label_selector
        return replace(self, convert=scoped_convert, label_selector=selector)


SERVICES_RESOURCE = Resource(SERVICES, "services", "/api/v1/services", _one(service_from_dict))
ENDPOINTSLICES_RESOURCE = Resource(
    ENDPOINTSLICES,
    "endpointslices",
    "/apis/discovery.k8s.io/v1/endpointslices",
    _service_slice,
    endpoints_in=_slice_endpoints,
)
# On an API server without discovery.k8s.io/v1: core/v1 Endpoints, converted into slices.
ENDPOINTS_RESOURCE = Resource(
    ENDPOINTSLICES,
    "endpoints",
    "/api/v1/endpoints",
    _endpoints,
    one_to_one=False,
    endpoints_in=_endpoints_addresses,
)
NAMESPACES_RESOURCE = Resource(
    NAMESPACES, "namespaces", "/api/v1/namespaces", _one(namespace_from_dict)
)
# Finished pods never get DNS records (`pods verified`), so the API server filters them out, as
# CoreDNS's pod watch does; a pod that finishes arrives as a deletion.
PODS_RESOURCE = Resource(
    PODS,
    "pods",
    "/api/v1/pods",
    _one(pod_from_dict),
    field_selector="status.phase!=Succeeded,status.phase!=Failed",
)


def pods_resource(node_name: str = "") -> Resource:
    """PODS_RESOURCE, narrowed to the pods scheduled on `node_name` when one is given: the node
    DNS's autopath (`kdns proxy --dns-autopath`) needs only the pods that ask it, and
    kube-apiserver filters `spec.nodeName` for pods (as the kubelet's own pod watch does)."""
    if not node_name:
        return PODS_RESOURCE
    selector = f"{PODS_RESOURCE.field_selector},spec.nodeName={node_name}"
    return replace(PODS_RESOURCE, field_selector=selector)


# The proxy's own Node, for its zone label (topology hints): kube-proxy's informer "that
# selects for our nodename" (cmd/kube-proxy/app/server.go), so one object, never every Node.
NODES_RESOURCE = Resource(NODES, "nodes", "/api/v1/nodes", _one(node_from_dict))


def node_resource(node_name: str) -> Resource:
    """NODES_RESOURCE narrowed to the Node named `node_name`."""
    return replace(NODES_RESOURCE, field_selector=f"metadata.name={node_name}")


# ServiceCIDRs (KEP-1880, networking.k8s.io/v1 from Kubernetes 1.33), watched by the proxy when
# the API server serves them, as kube-proxy's ServiceCIDR informer: every object's spec.cidrs
# together are the ranges whose unallocated addresses nftables mode drops.
NETWORKING_GROUP, NETWORKING_VERSION = "networking.k8s.io", "v1"
SERVICECIDRS_RESOURCE = Resource(
    SERVICECIDRS,
    "servicecidrs",
    f"/apis/{NETWORKING_GROUP}/{NETWORKING_VERSION}/servicecidrs",
    _one(service_cidr_from_dict),
)

# Multicluster (KEP-1645), watched with `multicluster ZONES` when the MCS CRD is served: the
# ServiceImports, and the EndpointSlices an MCS controller imported for them (by their label).
MCS_GROUP, MCS_VERSION = "multicluster.x-k8s.io", "v1alpha1"
SERVICEIMPORTS_RESOURCE = Resource(
    SERVICEIMPORTS,
    "serviceimports",
    f"/apis/{MCS_GROUP}/{MCS_VERSION}/serviceimports",
    _one(serviceimport_from_dict),
)
IMPORTSLICES_RESOURCE = Resource(
    IMPORTSLICES,
    "importslices",
    "/apis/discovery.k8s.io/v1/endpointslices",
    _one(import_slice_from_dict),
    label_selector=IMPORT_NAME_LABEL,
    endpoints_in=_slice_endpoints,
)

API_KINDS = {
    "namespaces": "Namespace",
    "services": "Service",
    "endpointslices": "EndpointSlice",
    "endpoints": "Endpoints",
    "pods": "Pod",
    "serviceimports": "ServiceImport",
    "importslices": "EndpointSlice",
    "nodes": "Node",
    "servicecidrs": "ServiceCIDR",
}


def api_get(
    api: ApiClient, path: str, params: list[tuple[str, Any]], timeout: tuple[float, float]
) -> urllib3.HTTPResponse:
    """GET `path` through the client's REST layer; the raw response, or ApiException."""
    request = api.param_serialize(
        method="GET",
        resource_path=path,
        query_params=params,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


def serves(api: ApiClient, group: str, version: str, timeout: float, resource: str = "") -> bool:
    """Does the API server serve `group`/`version` (a CRD's too), and in it `resource` when one
    is named? (Raises when it cannot be asked.)"""
    response = api_get(api, "/apis", [], (timeout, timeout))
    groups = json.loads(response.data).get("groups", [])
    if not any(
        g.get("name") == group and any(v.get("version") == version for v in g.get("versions", []))
        for g in groups
    ):
        return False
    if not resource:
        return True
    # A group can be served without one of its resources (networking.k8s.io/v1 has Ingress on
    # every cluster, ServiceCIDR only from 1.33 or with the MultiCIDRServiceAllocator gate).
    try:
        response = api_get(api, f"/apis/{group}/{version}", [], (timeout, timeout))
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    resources = json.loads(response.data).get("resources", [])
    return any(r.get("name") == resource for r in resources)


# --- backoff -------------------------------------------------------------------------------------


class Backoff:
    """client-go's backoff for a Reflector: 0.8 s doubling to 30 s, jittered, reset after 2 min
    without a failure. Pure: the caller passes the time."""

    def __init__(
        self,
        initial: float = 0.8,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        reset_after: float = 120.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.jitter, self.reset_after, self.rng = jitter, reset_after, rng
        self._next = initial
        self._last_failure: float | None = None

    def failure(self, now: float) -> float:
        """Record a failure at `now`; returns how long to wait before trying again."""
        if self._last_failure is not None and now - self._last_failure >= self.reset_after:
            self._next = self.initial
        self._last_failure = now
        delay = self._next * (1 + self.jitter * self.rng())
        self._next = min(self.maximum, self._next * self.factor)
        return delay


# --- the Reflector -------------------------------------------------------------------------------


class Expired(Exception):
    """410 Gone: the resourceVersion we hold is too old; relist."""


class WatchClosedEarly(Exception):
    """The server closed the watch at once with nothing in it."""


@dataclass(slots=True)
class Event:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    resource_version: str
    source_key: object = None
    items: Converted | None = None  # converted objects (ADDED / MODIFIED)
    arrival: float = 0.0  # time.time() when the line was read


def _source_key(obj: dict[str, Any]) -> object:
    meta = obj["metadata"]
    name = meta["name"]
    namespace = meta.get("namespace")
    return (namespace or "default", name) if namespace is not None else name


def _service_kind(service_headless: bool, has_selector: bool) -> str:
    # CoreDNS's label values for dns_programming_duration_seconds.
    if not service_headless:
        return "cluster_ip"
    return "headless_with_selector" if has_selector else "headless_without_selector"


class Reflector:
    def __init__(
        self,
        resource: Resource,
        api: ApiClient,
        store: Store,
        backoff: Backoff | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 90.0,
        watch_timeout: tuple[int, int] = (300, 600),
        page_size: int = LIST_PAGE,
    ) -> None:
        self.resource = resource
        self.page_size = page_size  # objects per list page (`limit`), as client-go's 500
        self.api = api
        self.store = store
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        # Longer than the server's bookmark interval (about a minute in kube-apiserver), so
        # only a dead connection goes that long without a byte.
        self.read_timeout = read_timeout
        self.watch_timeout = watch_timeout
        self.resource_version = ""
        self.synced = False
        self._listed_at = -EARLY_CLOSE
        self.last_event = time.time()  # of the last event or bookmark (start-up until then)
        self.lists = 0
        self.watches = 0
        # Which store keys each API object produced (an Endpoints object makes several slices).
        self._produced: dict[object, set[object]] = {}
        self._kind = resource.name

    # --- the loop (trio) -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Started at once: until the first list lands the store is unsynced and cluster names
        # get SERVFAIL, never NXDOMAIN.
        task_status.started()
        need_list = True
        relist_reason = ""
        while True:
            try:
                if need_list:
                    await self._list()
                    if relist_reason:
                        metrics.KUBE_RELISTS.labels(self._kind, relist_reason).inc()
                    need_list = False
                await self._watch()
                metrics.KUBE_WATCH_RESTARTS.labels(self._kind, "timeout").inc()
            except Expired:
                log.info("%s: resourceVersion expired (410): relisting", self._kind)
                metrics.KUBE_WATCH_RESTARTS.labels(self._kind, "expired").inc()
                self.resource_version = ""
                need_list, relist_reason = True, "expired"
                if trio.current_time() - self._listed_at < EARLY_CLOSE:
                    # Expired right after a fresh list: a server in that state would have us
                    # list everything in a tight loop; wait as for any failure (client-go's
                    # ListAndWatch rounds run under a backoff too).
                    metrics.KUBE_WATCH_ERRORS.labels(self._kind, "expired_at_once").inc()
                    await trio.sleep(self.backoff.failure(trio.current_time()))
            except Exception as e:
                # The Reflector's retry boundary (docs/architecture.md §10): every failure is
                # logged, counted and retried after a backoff; the last good state keeps serving.
                reason = _reason(e)
                metrics.KUBE_WATCH_ERRORS.labels(self._kind, reason).inc()
                delay = self.backoff.failure(trio.current_time())
                log.warning(
                    "%s: %s failed (%s: %s); retrying in %.1f s",
                    self._kind,
                    "list" if need_list else "watch",
                    reason,
                    _short(e),
                    delay,
                )
                if not need_list:
                    metrics.KUBE_WATCH_RESTARTS.labels(self._kind, reason).inc()
                elif self.synced:
                    relist_reason = relist_reason or "error"
                await trio.sleep(delay)

    async def _list(self) -> None:
        items, produced, resource_version, skipped = await trio.to_thread.run_sync(
            self._list_blocking, abandon_on_cancel=True
        )
        self.store.replace(self.resource.kind, items)
        self._listed_at = trio.current_time()
        self._produced = produced
        self.resource_version = resource_version
        self.synced = True
        self.lists += 1
        metrics.KUBE_SYNCS.labels(self._kind).inc()
        metrics.KUBE_SYNCED.labels(self._kind).set(1)
        log.info(
            "%s: listed %d objects at resourceVersion %s%s",
            self._kind,
            len(items),
            resource_version,
            f" ({skipped} skipped)" if skipped else "",
        )

    async def _watch(self) -> None:
        started = trio.current_time()
        self.watches += 1
        received = await trio.to_thread.run_sync(self._watch_blocking, abandon_on_cancel=True)
        if received == 0 and trio.current_time() - started < EARLY_CLOSE:
            raise WatchClosedEarly("the server closed the watch at once")

    # --- applying (trio thread) ---------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """A watch event's second step, on the trio thread: the store updated (`parse` made
        the event in the watch thread)."""
        self.resource_version = event.resource_version or self.resource_version
        now = self.last_event = time.time()
        metrics.KUBE_LAST_EVENT.labels(self._kind).set(now)
        if event.type == "BOOKMARK":
            return
        kind = self.resource.kind
        if self.resource.one_to_one:
            # The store key is the API object's key: nothing to remember per object.
            old_keys = {event.source_key}
        else:
            old_keys = self._produced.pop(event.source_key, set())
        change = Change()
        # A large Service's change is milliseconds of Python here (its slices merged, its
        # records and the answers that read it dropped): all of it under the short switch
        # interval, not only the resolver's part (kdns/interpreter.py).
        with handing_over() if self._large(old_keys, event.items) else nullcontext():
            if event.type == "DELETED":
                for key in old_keys:
                    change.merge(self.store.delete(kind, key))
            else:
                assert event.items is not None
                new_keys = {key for key, _ in event.items}
                for key in old_keys - new_keys:
                    change.merge(self.store.delete(kind, key))
                for _, obj in event.items:
                    change.merge(self.store.upsert(kind, obj))
                if new_keys and not self.resource.one_to_one:
                    self._produced[event.source_key] = new_keys
        metrics.KUBE_EVENTS.labels(self._kind, event.type).inc()
        if change and kind == ENDPOINTSLICES:
            # The store has updated the resolver and dropped stale answers synchronously: the
            # new answer is being served from now on.
            began = change.trigger_time or event.arrival
            for service_key in change.services:
                service = self.store.services.get(service_key)
                if service is not None:
                    label = _service_kind(service.headless, service.selector is not None)
                    metrics.DNS_PROGRAMMING_DURATION.labels(label).observe(max(0.0, now - began))

    def _large(self, old_keys: set[Any], items: Converted | None) -> bool:
        """Whether an event changes the endpoints of a Service of `LARGE_BUILD` endpoints or
        more, before or after it: one slice that large, or one of such a Service."""
        if self.resource.kind != ENDPOINTSLICES:
            return False
        slices = [self.store.slices.get(key) for key in old_keys]
        slices += [obj for _, obj in items or ()]
        merged = self.store.endpoints
        return any(
            len(eps.endpoints) >= LARGE_BUILD or len(merged.get(eps.service_key, ())) >= LARGE_BUILD
            for eps in slices
            if eps is not None
        )

    # --- blocking I/O (worker threads) ---------------------------------------------------------

    def _timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def _list_blocking(self) -> tuple[dict[object, object], dict[object, set[object]], str, int]:
        """The whole kind, page by page (`limit` + `continue`), converted into the model.

        An object equal to the one the store holds under its key is replaced by the store's
        (`_shared`), so a relist of an unchanged cluster holds one copy of each object, not two:
        only the new table's dict and the objects that did change are allocated while the old
        state keeps serving, and each page's JSON is garbage before the next is read
        (docs/architecture.md §6, "A relist")."""
        current = self.store.view(self.resource.kind)
        items: dict[object, object] = {}
        produced: dict[object, set[object]] = {}
        skipped = 0
        token: str | None = None
        resource_version = ""
        while True:
            params: list[tuple[str, Any]] = [("limit", self.page_size)]
            if token:
                params.append(("continue", token))
            params += self.resource.selectors()
            try:
                response = api_get(self.api, self.resource.path, params, self._timeout())
            except ApiException as e:
                if e.status == 410 and token:
                    # The continue token expired mid-list: start the list over for a
                    # consistent snapshot (API concepts, "Retrieving large results sets");
                    # nothing of the abandoned snapshot has reached the store.
                    metrics.KUBE_LIST_RESTARTS.labels(self._kind).inc()
                    items, produced, skipped, token = {}, {}, 0, None
                    continue
                raise
            body = json.loads(response.data)
            response.release_conn()
            for obj in body.get("items") or ():
                try:
                    converted = self.resource.convert(obj)
                    source = _source_key(obj)
                except (ModelError, KeyError, TypeError, AttributeError) as e:
                    skipped += 1
                    metrics.KUBE_EVENTS_SKIPPED.labels(self._kind, "invalid_object").inc()
                    log.warning("%s: skipping an object the model rejects: %s", self._kind, e)
                    continue
                if not self.resource.one_to_one:
                    produced[source] = {key for key, _ in converted}
                for key, item in converted:
                    key, item = _shared(current, key, item)
                    items[key] = item
            # Every page of one list carries the first page's resourceVersion (the snapshot's):
            # the watch starts there.
            meta = body.get("metadata") or {}
            resource_version = meta.get("resourceVersion") or resource_version
            token = meta.get("continue") or None
            del body, response  # this page's JSON is garbage before the next is read
            if not token:
                return items, produced, resource_version, skipped

    def _watch_blocking(self) -> int:
        """Stream one watch; returns the number of events applied (bookmarks included)."""
        params: list[tuple[str, Any]] = [
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", self.resource_version),
            ("timeoutSeconds", random.randint(*self.watch_timeout)),
            ("watch", "true"),
        ]
        params += self.resource.selectors()
        try:
            response = api_get(self.api, self.resource.path, params, self._timeout())
        except ApiException as e:
            if e.status == 410:
                raise Expired() from None
            raise
        received = 0
        try:
            for line in _lines(response):
                event = self.parse(line)
                if event is None:
                    continue
                trio.from_thread.run_sync(self.apply, event)
                received += 1
        finally:
            response.release_conn()
        return received

    def parse(self, line: bytes) -> Event | None:
        """A watch event's first step, in the watch thread: one line → an Event, or None
        (counted) when it cannot be applied; raises Expired or WatchError for an ERROR event.
        An object of `LARGE_BUILD` endpoints or more is converted under `handing_over()`: that
        is milliseconds of Python (13 µs per endpoint), which the UDP receive thread waits
        behind (kdns/interpreter.py). Never a list's objects (`_list_blocking`): a relist at
        the short interval lost queries."""
        arrival = time.time()
        try:
            data = json.loads(line)
        except ValueError:
            metrics.KUBE_EVENTS_SKIPPED.labels(self._kind, "invalid_json").inc()
            log.warning(
                "%s: skipping a watch line that is not JSON (%d bytes)", self._kind, len(line)
            )
            return None
        if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
            metrics.KUBE_EVENTS_SKIPPED.labels(self._kind, "invalid_event").inc()
            return None
        etype, obj = data.get("type"), data["object"]
        if etype == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Expired()
            raise WatchError(f"ERROR event: {obj.get('reason')} {obj.get('message')}")
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            metrics.KUBE_EVENTS_SKIPPED.labels(self._kind, "no_metadata").inc()
            return None
        resource_version = str(meta.get("resourceVersion") or "")
        if etype == "BOOKMARK":
            return Event("BOOKMARK", resource_version, arrival=arrival)
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            metrics.KUBE_EVENTS_SKIPPED.labels(self._kind, "unknown_type").inc()
            log.warning("%s: skipping a watch event of unknown type %r", self._kind, etype)
            return None
        try:
            source = _source_key(obj)
            items = None if etype == "DELETED" else self._convert_event(obj)
        except (ModelError, KeyError, TypeError, AttributeError) as e:
            metrics.KUBE_EVENTS_SKIPPED.labels(self._kind, "invalid_object").inc()
            log.warning("%s: skipping an object the model rejects: %s", self._kind, e)
            return None
        return Event(etype, resource_version, source, items, arrival)

    def _convert_event(self, obj: dict[str, Any]) -> Converted:
        large = self.resource.endpoints_in(obj) >= LARGE_BUILD
        with handing_over() if large else nullcontext():
            return self.resource.convert(obj)


class WatchError(Exception):
    """The server ended the watch with an ERROR event other than 410."""


def _shared(current: Mapping[Any, Any], key: Any, item: Any) -> tuple[Any, Any]:
    """(`key`, `item`), or the equal object `current` (the store's table) already holds under
    `key` with its own key (whose strings the store holds already, not the page's).

    Runs in the list's worker thread while the trio thread owns the table. Safe by
    construction: `dict.get` is one step under the GIL, model objects are frozen, and only an
    equal value is substituted, so whichever object the table holds at that instant, the
    result is the listed value; the table of a kind is written only by its own Reflector,
    which is waiting on this list, so in practice the object found is the one served."""
    old = current.get(key)
    return (old.key, old) if old is not None and old == item else (key, item)


def _lines(response: urllib3.HTTPResponse) -> Iterator[bytes]:
    """Newline-delimited lines of a watch stream; a line over MAX_LINE ends the watch."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        if len(buffer) > MAX_LINE and b"\n" not in buffer:
            raise WatchError(f"a watch line longer than {MAX_LINE} bytes")
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if end > start:
                yield bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
    if buffer.strip():
        yield bytes(buffer)


def _reason(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"http_{error.status}" if error.status else "connection"
    if isinstance(error, WatchClosedEarly):
        return "closed_early"
    if isinstance(error, WatchError):
        return "watch_error"
    if isinstance(error, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "read_timeout"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        return "protocol"
    if isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | OSError):
        return "connection"
    if isinstance(error, ValueError):
        return "invalid_response"
    return type(error).__name__


def _short(error: BaseException) -> str:
    text = str(error).replace("\n", " ")
    return text if len(text) <= 200 else text[:200] + "…"


# --- the source: all Reflectors ----------------------------------------------------------------


class KubeSource:
    """One Reflector per watched kind, sharing one API client.

    `reflector` holds keyword arguments for every Reflector (timeouts); `backoff` those of each
    Reflector's own `Backoff` (tests shorten both)."""

    def __init__(
        self,
        api: ApiClient,
        store: Store,
        watch_pods: bool,
        reflector: dict[str, Any] | None = None,
        backoff: dict[str, Any] | None = None,
        scope: Scope | None = None,
        multicluster: bool = False,
        node_name: str = "",
        service_cidrs: bool = False,
        pods_node: str = "",
    ) -> None:
        self.scope = scope or Scope()
        self.api = api
        self.store = store
        self.watch_pods = watch_pods
        # ServiceImports and their slices (`multicluster ZONES`), when the CRD is served.
        self.multicluster = multicluster
        self.node_name = node_name  # the proxy's node: its Node is watched too
        self.service_cidrs = service_cidrs  # the proxy: ServiceCIDRs too, when served
        # The node DNS's autopath: the pods on this node only, watched even without
        # `watch_pods` (they then do not gate the sync: without them autopath answers plainly).
        self.pods_node = pods_node
        self.reflector_options = reflector or {}
        self.backoff_options = backoff or {}
        self.reflectors: dict[str, Reflector] = {}

    @staticmethod
    def kinds(watch_pods: bool, multicluster: bool = False) -> tuple[str, ...]:
        """The kinds that must be listed before the store counts as synced. The proxy's Node
        is not one: its zone only narrows routes, and a Node we may not read (RBAC from before
        topology support) must not keep the data plane unprogrammed; until it is listed, every
        endpoint is used (kube-proxy's fallback for a node without a zone)."""
        return (
            NAMESPACES,
            SERVICES,
            ENDPOINTSLICES,
            *((PODS,) if watch_pods else ()),
            *(MULTICLUSTER_KINDS if multicluster else ()),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for resource in (NAMESPACES_RESOURCE, SERVICES_RESOURCE):
                nursery.start_soon(self._reflect, resource)
            if self.watch_pods or self.pods_node:
                nursery.start_soon(self._reflect, pods_resource(self.pods_node))
            if self.node_name:
                nursery.start_soon(self._reflect, node_resource(self.node_name))
            if self.service_cidrs:
                nursery.start_soon(self._reflect_service_cidrs)
            nursery.start_soon(self._reflect_endpoints)
            if self.multicluster:
                nursery.start_soon(self._reflect_imports)
            task_status.started()

    async def _reflect(self, resource: Resource) -> None:
        reflector = Reflector(
            resource.scoped(self.scope, API_KINDS[resource.name]),
            self.api,
            self.store,
            backoff=Backoff(**self.backoff_options),
            **self.reflector_options,
        )
        self.reflectors[resource.name] = reflector
        metrics.KUBE_SYNCED.labels(resource.name).set(0)
        metrics.KUBE_LAST_EVENT_AGE.labels(resource.name).set_function(
            lambda: time.time() - reflector.last_event
        )
        await reflector.run()

    async def _discover(self, group: str, version: str, resource: str = "") -> bool:
        """Whether the API server serves `group`/`version` (and `resource` in it), asked once
        (retried with backoff while the server is away)."""
        backoff = Backoff(**self.backoff_options)
        timeout = self.reflector_options.get("connect_timeout", 5.0)
        while True:
            try:
                return await trio.to_thread.run_sync(
                    serves, self.api, group, version, timeout, resource, abandon_on_cancel=True
                )
            except Exception as e:  # the Reflector's retry boundary, before it exists
                delay = backoff.failure(trio.current_time())
                metrics.KUBE_WATCH_ERRORS.labels("discovery", _reason(e)).inc()
                log.warning("API discovery failed (%s); retrying in %.1f s", _short(e), delay)
                await trio.sleep(delay)

    async def _reflect_imports(self) -> None:
        """ServiceImports and their EndpointSlices, when the MCS CRD is installed. Without it
        the clusterset zone is simply empty: one log line, both kinds synced as empty, and no
        request that could only fail (CoreDNS likewise watches only what the server has)."""
        if not await self._discover(MCS_GROUP, MCS_VERSION):
            log.info(
                "the API server does not serve %s/%s (no MCS CRD): no ServiceImports to answer",
                MCS_GROUP,
                MCS_VERSION,
            )
            self.store.replace(SERVICEIMPORTS, {})
            self.store.replace(IMPORTSLICES, {})
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reflect, SERVICEIMPORTS_RESOURCE)
            nursery.start_soon(self._reflect, IMPORTSLICES_RESOURCE)

    async def _reflect_service_cidrs(self) -> None:
        """ServiceCIDRs, when the API server serves them; without them there is no range to
        drop unallocated addresses in (kube-proxy too watches them only when the
        MultiCIDRServiceAllocator feature is on), which one log line says."""
        if not await self._discover(NETWORKING_GROUP, NETWORKING_VERSION, "servicecidrs"):
            log.info(
                "the API server does not serve %s/%s servicecidrs: unallocated ClusterIPs are "
                "not dropped",
                NETWORKING_GROUP,
                NETWORKING_VERSION,
            )
            return
        await self._reflect(SERVICECIDRS_RESOURCE)

    async def _reflect_endpoints(self) -> None:
        """EndpointSlices, or Endpoints on an API server without discovery.k8s.io/v1 — which
        one is decided once, at start (retried with backoff while the server is away)."""
        v1 = await self._discover("discovery.k8s.io", "v1")
        if not v1:
            log.info("the API server lacks discovery.k8s.io/v1: watching core/v1 Endpoints")
        await self._reflect(ENDPOINTSLICES_RESOURCE if v1 else ENDPOINTS_RESOURCE)

"""The store: the one owner of cluster state, and the only place that tells consumers what changed.

Sources (manifest files, the Kubernetes API) feed it with `replace` (a full list of one kind),
`upsert` and `delete`. It keeps the slim model objects, merges the EndpointSlices of each Service
into one endpoint list (consumers never see slices), and calls every subscriber with a `Change`
naming exactly the Services, namespaces and pod IPs whose visible state changed.

Contract:
- Every method runs on the trio thread (docs/architecture.md §6); nothing here locks.
- A call that changes nothing a consumer can see notifies nobody (docs/architecture.md, rule 2):
  model objects compare by value, so an update that only touched fields we drop is free.
- `replace` computes the new state of a kind beside the old one and swaps it in one step, so a
  subscriber never observes a half-replaced kind.
- `synced` is true once every watched kind has had its first `replace`
  (docs/architecture.md, rule 4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kdns.model import Endpoint, EndpointSlice, Namespace, Pod, Service

NAMESPACES = "namespaces"
SERVICES = "services"
ENDPOINTSLICES = "endpointslices"
PODS = "pods"
KINDS = (NAMESPACES, SERVICES, ENDPOINTSLICES, PODS)

ServiceKey = tuple[str, str]


@dataclass(slots=True)
class Change:
    """What a store operation changed, as consumers see it."""

    services: set[ServiceKey] = field(default_factory=set)
    namespaces: set[str] = field(default_factory=set)  # namespaces added or removed
    pod_ips: set[str] = field(default_factory=set)  # IPs whose pods changed
    # The earliest time (epoch seconds) a change in this batch was made at the API server.
    trigger_time: float | None = None

    def __bool__(self) -> bool:
        return bool(self.services or self.namespaces or self.pod_ips)

    def merge(self, other: Change) -> None:
        self.services |= other.services
        self.namespaces |= other.namespaces
        self.pod_ips |= other.pod_ips
        if other.trigger_time is not None and (
            self.trigger_time is None or other.trigger_time < self.trigger_time
        ):
            self.trigger_time = other.trigger_time


Subscriber = Callable[[Change], None]


class Store:
    def __init__(self, watched: Iterable[str] = KINDS) -> None:
        self.watched = frozenset(watched)
        self.namespaces: dict[str, Namespace] = {}
        self.services: dict[ServiceKey, Service] = {}
        self.slices: dict[ServiceKey, EndpointSlice] = {}
        # Merged endpoints per Service key: every slice of the service, deduplicated.
        self.endpoints: dict[ServiceKey, tuple[Endpoint, ...]] = {}
        self.pods: dict[ServiceKey, Pod] = {}
        self.pods_by_ip: dict[str, tuple[Pod, ...]] = {}
        self._slices_by_service: dict[ServiceKey, dict[ServiceKey, EndpointSlice]] = {}
        self._synced: set[str] = set()
        self._subscribers: list[Subscriber] = []
        # Unix time of the last visible change: the SOA serial (as CoreDNS's kubernetes plugin).
        self.last_change = int(time.time())

    # --- reading -----------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self.watched <= self._synced

    def unsynced_kinds(self) -> list[str]:
        return sorted(self.watched - self._synced)

    def namespace_exists(self, name: str) -> bool:
        return name in self.namespaces

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    # --- writing -----------------------------------------------------------------------------

    def replace(self, kind: str, objects: Mapping[object, object]) -> Change:
        """Replace the whole state of `kind` with `objects` (key → model object)."""
        change = Change()
        if kind == NAMESPACES:
            old_ns = self.namespaces
            new_ns = dict(objects)  # type: ignore[arg-type]
            change.namespaces = set(old_ns) ^ set(new_ns)
            self.namespaces = new_ns
        elif kind == SERVICES:
            old_svc = self.services
            new_svc = dict(objects)  # type: ignore[arg-type]
            change.services = {
                k for k in old_svc.keys() | new_svc.keys() if old_svc.get(k) != new_svc.get(k)
            }
            self.services = new_svc
        elif kind == ENDPOINTSLICES:
            new_slices: dict[ServiceKey, EndpointSlice] = dict(objects)  # type: ignore[arg-type]
            by_service: dict[ServiceKey, dict[ServiceKey, EndpointSlice]] = {}
            for key, eps in new_slices.items():
                by_service.setdefault(eps.service_key, {})[key] = eps
            endpoints = {k: _merge(v) for k, v in by_service.items()}
            change.services = {
                k
                for k in self.endpoints.keys() | endpoints.keys()
                if self.endpoints.get(k) != endpoints.get(k)
            }
            old_slices = self.slices
            change.trigger_time = _earliest(
                s.trigger_time
                for k, s in new_slices.items()
                if s.service_key in change.services and old_slices.get(k) != s
            )
            self.slices, self._slices_by_service, self.endpoints = new_slices, by_service, endpoints
        elif kind == PODS:
            old_pods = self.pods
            new_pods = dict(objects)  # type: ignore[arg-type]
            for k in old_pods.keys() | new_pods.keys():
                before, after = old_pods.get(k), new_pods.get(k)
                if before != after:
                    change.pod_ips.update(before.ips if before else ())
                    change.pod_ips.update(after.ips if after else ())
            self.pods = new_pods
            self.pods_by_ip = _index_pods(new_pods.values())
        else:
            raise ValueError(f"unknown kind {kind!r}")
        self._synced.add(kind)
        return self._publish(change)

    def upsert(self, kind: str, obj: Namespace | Service | EndpointSlice | Pod) -> Change:
        change = Change()
        if isinstance(obj, Namespace):
            if obj.name not in self.namespaces:
                change.namespaces.add(obj.name)
            self.namespaces[obj.name] = obj
        elif isinstance(obj, Service):
            if self.services.get(obj.key) != obj:
                change.services.add(obj.key)
            self.services[obj.key] = obj
        elif isinstance(obj, EndpointSlice):
            old = self.slices.get(obj.key)
            if old is not None and old.service_key != obj.service_key:
                change.merge(self._remove_slice(old))
            self.slices[obj.key] = obj
            self._slices_by_service.setdefault(obj.service_key, {})[obj.key] = obj
            change.merge(self._remerge(obj.service_key, obj.trigger_time))
        elif isinstance(obj, Pod):
            old_pod = self.pods.get(obj.key)
            if old_pod != obj:
                if old_pod is not None:
                    change.pod_ips.update(old_pod.ips)
                    self._unindex_pod(old_pod)
                change.pod_ips.update(obj.ips)
                self.pods[obj.key] = obj
                self._index_pod(obj)
        else:
            raise TypeError(f"cannot upsert {type(obj).__name__} into {kind}")
        return self._publish(change)

    def delete(self, kind: str, key: object) -> Change:
        change = Change()
        if kind == NAMESPACES:
            if self.namespaces.pop(key, None) is not None:  # type: ignore[call-overload]
                change.namespaces.add(key)  # type: ignore[arg-type]
        elif kind == SERVICES:
            if self.services.pop(key, None) is not None:  # type: ignore[call-overload]
                change.services.add(key)  # type: ignore[arg-type]
        elif kind == ENDPOINTSLICES:
            old = self.slices.get(key)  # type: ignore[call-overload]
            if old is not None:
                change.merge(self._remove_slice(old))
        elif kind == PODS:
            old_pod = self.pods.pop(key, None)  # type: ignore[call-overload]
            if old_pod is not None:
                change.pod_ips.update(old_pod.ips)
                self._unindex_pod(old_pod)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        return self._publish(change)

    # --- internals ---------------------------------------------------------------------------

    def _remove_slice(self, old: EndpointSlice) -> Change:
        del self.slices[old.key]
        group = self._slices_by_service.get(old.service_key, {})
        group.pop(old.key, None)
        if not group:
            self._slices_by_service.pop(old.service_key, None)
        return self._remerge(old.service_key, None)

    def _remerge(self, service_key: ServiceKey, trigger_time: float | None) -> Change:
        group = self._slices_by_service.get(service_key)
        merged = _merge(group) if group else None
        if self.endpoints.get(service_key) == merged:
            return Change()
        if merged is None:
            del self.endpoints[service_key]
        else:
            self.endpoints[service_key] = merged
        return Change(services={service_key}, trigger_time=trigger_time)

    def _index_pod(self, pod: Pod) -> None:
        for ip in pod.ips:
            self.pods_by_ip[ip] = (*self.pods_by_ip.get(ip, ()), pod)

    def _unindex_pod(self, pod: Pod) -> None:
        for ip in pod.ips:
            rest = tuple(p for p in self.pods_by_ip.get(ip, ()) if p.key != pod.key)
            if rest:
                self.pods_by_ip[ip] = rest
            else:
                self.pods_by_ip.pop(ip, None)

    def _publish(self, change: Change) -> Change:
        if change:
            self.last_change = max(int(time.time()), self.last_change + 1)
            for subscriber in self._subscribers:
                subscriber(change)
        return change


def _merge(slices: Mapping[ServiceKey, EndpointSlice]) -> tuple[Endpoint, ...]:
    # Slices in name order so the merged list (and so the answers) do not depend on the order
    # events arrived in; an endpoint listed twice (during a slice rebalance) counts once.
    seen: dict[Endpoint, None] = {}
    for key in sorted(slices):
        for endpoint in slices[key].endpoints:
            seen.setdefault(endpoint, None)
    return tuple(seen)


def _index_pods(pods: Iterable[Pod]) -> dict[str, tuple[Pod, ...]]:
    index: dict[str, tuple[Pod, ...]] = {}
    for pod in pods:
        for ip in pod.ips:
            index[ip] = (*index.get(ip, ()), pod)
    return index


def _earliest(times: Iterable[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None

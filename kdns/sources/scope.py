"""Which cluster objects kdns serves: CoreDNS's kubernetes `namespaces` and `labels` options.

Contract (pure):
- `Scope(namespaces, selector)`: with `namespaces` set, only objects in those namespaces (and
  those Namespace objects) are served, so every name under any other namespace gets NXDOMAIN,
  as CoreDNS's `namespaces NS...` exposes only the listed ones; with a selector, only Services
  whose labels match it are served (CoreDNS's `labels SELECTOR` on its Services watch).
- `admits(kind, namespace, name, labels)` decides for one object; both sources (the API
  Reflectors and the manifests) ask it, so the same objects are served either way. The
  selector is also sent to the API server as `labelSelector` (`service_selector`), which then
  sends only those Services.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kdns.config import KubernetesSection
from kdns.labelselector import Selector, parse


@dataclass(frozen=True, slots=True)
class Scope:
    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    selector: Selector = field(default_factory=Selector)  # applies to Services

    @classmethod
    def of(cls, section: KubernetesSection) -> Scope:
        # The config has checked the selector's syntax already.
        return cls(frozenset(section.namespaces), parse(section.labels))

    @property
    def service_selector(self) -> str | None:
        return str(self.selector) or None

    def admits(self, kind: str, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        """`kind` is the API kind (Namespace, Service, EndpointSlice, Endpoints, Pod, Node,
        ServiceCIDR)."""
        if kind in ("Node", "ServiceCIDR"):
            return True  # cluster-scoped, read by the proxy: `namespaces` does not apply
        if self.namespaces:
            own = name if kind == "Namespace" else namespace
            if own not in self.namespaces:
                return False
        return kind != "Service" or self.selector.matches(labels)

    def admits_object(self, kind: str, obj: Mapping[str, object]) -> bool:
        """The same for a raw API object (a dict as the API server sends it)."""
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            return True  # the model refuses it, and names why
        labels = meta.get("labels")
        return self.admits(
            kind,
            str(meta.get("namespace") or "default"),
            str(meta.get("name") or ""),
            labels if isinstance(labels, dict) else {},
        )

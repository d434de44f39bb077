"""A small cluster for the DNS tables, and helpers to compare answers with zone-file text."""

from __future__ import annotations

from typing import Any

from dnslib import RR

from kdns.config import Config
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.model import (
    Namespace,
    endpointslice_from_dict,
    pod_from_dict,
    service_from_dict,
)
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store
from tests.builders import api_endpoint, api_endpointslice, api_service

SERVICES_ = [
    api_service(
        "default", "redis", clusterIP="10.97.97.97", ports=[{"name": "redis", "port": 6379}]
    ),
    api_service(
        "default",
        "web",
        clusterIP="10.96.0.20",
        ports=[
            {"name": "http", "port": 80},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
    ),
    api_service("default", "bare", clusterIP="10.96.0.30", ports=[{"port": 8080}]),
    api_service("default", "hl", clusterIP="None", ports=[{"name": "http", "port": 80}]),
    api_service("default", "empty-hl", clusterIP="None", ports=[{"name": "http", "port": 80}]),
    api_service("default", "ext", type="ExternalName", externalName="www.example.com"),
    api_service("default", "ext-ip", type="ExternalName", externalName="192.0.2.55"),
    api_service(
        "prod", "alias", type="ExternalName", externalName="redis.default.svc.cluster.local."
    ),
    api_service(
        "prod", "dangling", type="ExternalName", externalName="gone.default.svc.cluster.local"
    ),
    api_service(
        "prod",
        "api",
        clusterIPs=["10.96.50.50", "fd00:10:96::50"],
        ports=[{"name": "https", "port": 443}],
    ),
    api_service(
        "kube-system",
        "kube-dns",
        clusterIP="10.96.0.10",
        ports=[{"name": "dns", "port": 53, "protocol": "UDP"}],
    ),
]

SLICES = [
    api_endpointslice(
        "default",
        "hl",
        "hl-a",
        [
            api_endpoint("10.244.1.5", hostname="web-0"),
            api_endpoint("10.244.1.6"),
            api_endpoint("10.244.1.7", ready=False),
        ],
        [{"name": "http", "port": 8080, "protocol": "TCP"}],
    ),
    api_endpointslice(
        "default",
        "empty-hl",
        "empty-hl-a",
        [api_endpoint("10.244.2.9", ready=False)],
        [{"name": "http", "port": 80}],
    ),
    api_endpointslice(
        "default",
        "redis",
        "redis-a",
        [api_endpoint("10.244.3.3")],
        [{"name": "redis", "port": 6379}],
    ),
]

PODS_ = [
    {
        "metadata": {"name": "p1", "namespace": "default"},
        "status": {"phase": "Running", "podIP": "10.244.1.5"},
    },
    {
        "metadata": {"name": "done", "namespace": "default"},
        "status": {"phase": "Succeeded", "podIP": "10.244.9.9"},
    },
]


def load(store: Store, services: list[dict[str, Any]] | None = None) -> None:
    services_ = [service_from_dict(s) for s in (SERVICES_ if services is None else services)]
    slices = [endpointslice_from_dict(s) for s in SLICES]
    pods = [pod_from_dict(p) for p in PODS_]
    namespaces = {"default", "prod", "kube-system", "quiet"}
    store.replace(NAMESPACES, {n: Namespace(n) for n in namespaces})
    store.replace(SERVICES, {s.key: s for s in services_})
    store.replace(ENDPOINTSLICES, {s.key: s for s in slices})
    store.replace(PODS, {p.key: p for p in pods})


def make_handler(
    config: Config | None = None, synced: bool = True
) -> tuple[Store, Resolver, Handler]:
    store = Store()
    resolver = Resolver(store, config or Config())
    handler = Handler(resolver)
    store.subscribe(lambda change: handler.cache.drop(resolver.apply(change)))
    if synced:
        load(store)
    return store, resolver, handler


def zone(text: str) -> set[str]:
    """Zone-file text → a set of normalised record strings (names compared case-insensitively)."""
    # Each line stands alone: a leading blank would mean "same owner" in zone-file syntax.
    lines = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return {_norm(rr) for rr in RR.fromZone(lines)} if lines else set()


def rrset(rrs: list[RR]) -> set[str]:
    return {_norm(rr) for rr in rrs}


def _norm(rr: RR) -> str:
    return " ".join(str(rr).lower().split())

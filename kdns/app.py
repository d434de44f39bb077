"""The composition root: builds every part from the config and runs them in one nursery.

Contract:
- `build` wires store → resolver → handler (the resolver and the answer cache follow every store
  change) and picks the source: manifest files when given, else the live cluster (a kubeconfig,
  $KUBECONFIG, or the in-cluster service account). It raises `StartupError` carrying one line per
  problem, so the command line can print them and exit 2 before anything binds.
- `serve` binds every socket first (a taken port is a plain OSError), then runs the DNS
  listeners, the HTTP endpoints and the source until cancelled or SIGTERM.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from kdns.config import Config, parse_hostport
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.dns.server import DnsServer
from kdns.http import HttpEndpoint, health, prometheus, readiness
from kdns.sources.static import ManifestSource
from kdns.store import KINDS, Change, Store

log = logging.getLogger(__name__)

NO_SOURCE = (
    "no source of cluster state: give --manifests PATH (manifest files), --kubeconfig FILE "
    "(or set KUBECONFIG), or run in a pod with a service account (in-cluster)"
)


class StartupError(Exception):
    """kdns cannot start; `lines` are the messages for the operator, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Source(Protocol):
    async def run(self, *, task_status: Any = ...) -> None: ...


@dataclass(slots=True)
class App:
    config: Config
    store: Store
    resolver: Resolver
    handler: Handler
    source: Source


def build(config: Config, kube_options: dict[str, Any] | None = None) -> App:
    """`kube_options`: keyword arguments for the KubeSource (tests shorten its timeouts)."""
    if config.manifests:
        store = Store(watched=KINDS)
    else:
        # Imported only for a live cluster: the client costs a second and 15 MiB at start-up.
        from kdns.sources import kube

        try:
            api = kube.cluster_client(config.kubeconfig or None, config.context or None)
        except kube.ClusterConfigError as e:
            raise StartupError([str(e)]) from None
        if api is None:
            raise StartupError([NO_SOURCE])
        store = Store(watched=kube.KubeSource.kinds(watch_pods=config.pods == "verified"))
    host, _ = parse_hostport(config.dns_addr)
    specific = () if host in ("0.0.0.0", "::") else (host,)
    resolver = Resolver(store, config, ns_addresses=specific)
    handler = Handler(resolver)

    def follow(change: Change) -> None:
        handler.cache.drop(resolver.apply(change))

    store.subscribe(follow)
    source: Source
    if config.manifests:
        manifests = ManifestSource(config.manifests, store)
        errors = manifests.load()
        if errors:
            raise StartupError([str(e) for e in errors])
        manifests.apply()
        source = manifests
    else:
        source = kube.KubeSource(api, store, config.pods == "verified", **(kube_options or {}))
    return App(config, store, resolver, handler, source)


async def serve(
    app: App, *, task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run everything; `task_status.started` reports the bound ports by name."""
    config = app.config
    host, port = parse_hostport(config.dns_addr)
    server = DnsServer(app.handler, host, port)
    server.bind()  # outside the nursery: a taken port is a plain OSError for the command line
    endpoints = {
        "health": HttpEndpoint(*parse_hostport(config.health_addr), {"/health": health}),
        "ready": HttpEndpoint(
            *parse_hostport(config.ready_addr), {"/ready": readiness(app.store.unsynced_kinds)}
        ),
        "metrics": HttpEndpoint(*parse_hostport(config.metrics_addr), {"/metrics": prometheus}),
    }
    for endpoint in endpoints.values():
        await endpoint.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for endpoint in endpoints.values():
            await nursery.start(endpoint.run)
        await nursery.start(app.source.run)
        nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
        log.info("kdns ready to answer for %s", ", ".join(config.zones))
        ports = {"dns": server.port, **{name: e.port for name, e in endpoints.items()}}
        task_status.started(ports)


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    # The kubelet stops a pod with SIGTERM: stop serving and exit 0 (lameduck comes later).
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("SIGTERM: shutting down")
            scope.cancel()
            return

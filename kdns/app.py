"""The composition root: builds every part from the config and runs them in one nursery.

Contract:
- `build` wires store → resolver → handler (the resolver's index and the answer cache follow
  every store change) and reads the manifests once; it raises `StartupError` carrying one line
  per problem, so the command line can print them and exit 2 before anything binds.
- `serve` binds the DNS listeners, then keeps the manifests fresh, until cancelled or SIGTERM.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import trio

from kdns.config import Config, parse_hostport
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.dns.server import DnsServer
from kdns.sources.static import ManifestSource
from kdns.store import KINDS, Change, Store

log = logging.getLogger(__name__)


class StartupError(Exception):
    """kdns cannot start; `lines` are the messages for the operator, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(slots=True)
class App:
    config: Config
    store: Store
    resolver: Resolver
    handler: Handler
    source: ManifestSource


def build(config: Config) -> App:
    if not config.manifests:
        raise StartupError(
            ["no source of cluster state: give --manifests PATH (a manifest file or folder)"]
        )
    store = Store(watched=KINDS)
    host, _ = parse_hostport(config.dns_addr)
    specific = () if host in ("0.0.0.0", "::") else (host,)
    resolver = Resolver(store, config, ns_addresses=specific)
    handler = Handler(resolver)

    def follow(change: Change) -> None:
        handler.cache.drop(resolver.apply(change))

    store.subscribe(follow)
    source = ManifestSource(config.manifests, store)
    errors = source.load()
    if errors:
        raise StartupError([str(e) for e in errors])
    source.apply()
    return App(config, store, resolver, handler, source)


async def serve(
    app: App, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    host, port = parse_hostport(app.config.dns_addr)
    server = DnsServer(app.handler, host, port)
    server.bind()  # outside the nursery: a taken port is a plain OSError for the command line
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        await nursery.start(app.source.run)
        nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
        log.info(
            "kdns ready: %d services in %s",
            len(app.store.services),
            ", ".join(app.config.zones),
        )
        task_status.started(address)


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    # The kubelet stops a pod with SIGTERM: stop serving and exit 0 (lameduck comes later).
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("SIGTERM: shutting down")
            scope.cancel()
            return

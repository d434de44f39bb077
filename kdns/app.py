"""The composition root: builds every part from the config and runs them in one nursery.

Contract:
- `build` wires store → resolver → handler (the resolver and the answer cache follow every store
  change) and picks the source: manifest files when given, else the live cluster (a kubeconfig,
  $KUBECONFIG, or the in-cluster service account). It raises `StartupError` carrying one line per
  problem, so the command line can print them and exit 2 before anything binds.
- `serve` binds every socket first (a taken port is a plain OSError), then runs the DNS
  listeners, the HTTP endpoints and the source until cancelled or SIGTERM.
- With `proxy: userspace`, the resolver answers each ClusterIP Service's loopback VIP (A only)
  and `serve` runs the relay; the VIP map follows the store before the resolver does, and the
  Services whose VIP moved are handed to the resolver with the change.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import platform
import signal
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from kdns.config import Config, ConfigError, load_kube_dns_configmap, parse_hostport
from kdns.dns.forward import (
    ForwardConfig,
    Forwarder,
    Upstream,
    parse_upstreams,
    resolv_conf_nameservers,
    resolv_conf_search,
)
from kdns.dns.handler import Handler
from kdns.dns.querylog import QueryLog
from kdns.dns.resolver import Resolver
from kdns.dns.server import DnsServer
from kdns.http import HttpEndpoint, health, metrics_route, readiness
from kdns.proxy.loopback import LoopbackVips
from kdns.proxy.userspace import Relay
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
    forwarder: Forwarder | None = None
    relay: Relay | None = None


def build(config: Config, kube_options: dict[str, Any] | None = None) -> App:
    """`kube_options`: keyword arguments for the KubeSource (tests shorten its timeouts)."""
    store, api = open_store(config, _watch_pods(config))
    host, _ = parse_hostport(config.dns_addr)
    specific = () if host in ("0.0.0.0", "::") else (host,)
    forwarder = _forwarder(config)
    vips = LoopbackVips() if config.proxy == "userspace" else None
    resolver = Resolver(
        store,
        config,
        ns_addresses=specific,
        reverse_fallthrough=forwarder is not None and bool(forwarder.config.upstreams),
        service_addresses=vips.addresses if vips is not None else None,
    )
    handler = Handler(
        resolver,
        forwarder=forwarder,
        autopath=config.autopath,
        host_search=resolv_conf_search(config.resolv_conf) if config.autopath else (),
    )

    def follow(change: Change) -> None:
        if vips is not None:
            # A Service that came or went may move another's VIP (a collision): its answers
            # change too.
            moved = vips.update(store.services, change.services) - change.services
            if moved:
                change = Change(
                    services=change.services | moved,
                    namespaces=change.namespaces,
                    pod_ips=change.pod_ips,
                    trigger_time=change.trigger_time,
                )
        handler.cache.drop(resolver.apply(change))

    store.subscribe(follow)
    source = open_source(config, store, api, _watch_pods(config), kube_options)
    relay = Relay(store, node_name()) if config.proxy == "userspace" else None
    return App(config, store, resolver, handler, source, forwarder, relay)


def open_store(config: Config, watch_pods: bool) -> tuple[Store, Any]:
    """The store for the config's source, and the API client when the source is a cluster.

    Raises StartupError when no source is configured or the cluster config is unusable."""
    if config.manifests:
        return Store(watched=KINDS), None
    # Imported only for a live cluster: the client costs a second and 15 MiB at start-up.
    from kdns.sources import kube

    try:
        api = kube.cluster_client(config.kubeconfig or None, config.context or None)
    except kube.ClusterConfigError as e:
        raise StartupError([str(e)]) from None
    if api is None:
        raise StartupError([NO_SOURCE])
    return Store(watched=kube.KubeSource.kinds(watch_pods=watch_pods)), api


def open_source(
    config: Config,
    store: Store,
    api: Any,
    watch_pods: bool,
    kube_options: dict[str, Any] | None = None,
) -> Source:
    """The source feeding `store`: manifests are read (and applied) now, so their errors stop
    the start with file/line/field; a cluster is listed when the source runs."""
    if config.manifests:
        manifests = ManifestSource(config.manifests, store)
        errors = manifests.load()
        if errors:
            raise StartupError([str(e) for e in errors])
        manifests.apply()
        return manifests
    from kdns.sources import kube

    return kube.KubeSource(api, store, watch_pods, **(kube_options or {}))


def node_name() -> str:
    """This node's name, for traffic policies Local: $NODE_NAME (the downward API's
    spec.nodeName, as kube-proxy's manifests pass it), else the host name (kube-proxy's
    default)."""
    return os.environ.get("NODE_NAME") or platform.node()


def _watch_pods(config: Config) -> bool:
    # Pods cost memory and API traffic: watched only for features that need them.
    return config.pods == "verified" or config.autopath


def _forwarder(config: Config) -> Forwarder | None:
    """The Forwarder for the config, or None when there is nowhere to forward to."""
    stubs = list(config.stub_domains)
    upstream_texts = config.upstreams
    try:
        if config.kube_dns_configmap:
            cm_stubs, cm_upstreams = load_kube_dns_configmap(config.kube_dns_configmap)
            stubs.extend(cm_stubs)
            if cm_upstreams is not None:
                upstream_texts = cm_upstreams
        if upstream_texts is None:
            upstreams = resolv_conf_nameservers(config.resolv_conf)
        else:
            upstreams = parse_upstreams(upstream_texts, "upstreams")
        stub_domains = tuple(
            (domain.rstrip(".").lower(), parse_upstreams(servers, f"stub_domains.{domain}"))
            for domain, servers in stubs
        )
    except (ValueError, ConfigError) as e:
        raise StartupError([str(e)]) from None
    problems = [
        problem
        for upstream in (*upstreams, *(u for _, servers in stub_domains for u in servers))
        if (problem := loop_problem(upstream, config.dns_addr))
    ]
    if problems:
        raise StartupError(sorted(set(problems)))
    if not upstreams and not stub_domains:
        return None
    return Forwarder(
        ForwardConfig(
            upstreams=upstreams,
            stub_domains=stub_domains,
            timeout=config.forward_timeout,
            max_concurrent=config.max_concurrent,
            success_size=config.cache_success,
            denial_size=config.cache_denial,
            max_ttl=config.cache_max_ttl,
            max_denial_ttl=config.cache_max_denial_ttl,
            serve_stale=config.serve_stale,
        )
    )


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    # ::ffff:127.0.0.1 is 127.0.0.1 (a dual-stack socket sees IPv4 clients that way).
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def loop_problem(upstream: Upstream, dns_addr: str) -> str | None:
    """Why forwarding to `upstream` would come back to us, or None.

    Two cases are certain without sending anything: systemd-resolved's stub listener
    (127.0.0.53, whose own upstream is typically the node's resolv.conf — and so us, in a pod
    with dnsPolicy Default), and kdns's own listening address."""
    if upstream.host in ("127.0.0.53", "127.0.0.54"):
        return (
            f"upstream {upstream} is systemd-resolved's stub listener, which forwards back to "
            "this host's resolver: a loop; give the real upstreams (see "
            "/run/systemd/resolve/resolv.conf) with `upstreams`"
        )
    host, port = parse_hostport(dns_addr)
    if upstream.port != port:
        return None
    up = _unmapped(ipaddress.ip_address(upstream.host))
    mine = _unmapped(ipaddress.ip_address(host))
    if mine.is_unspecified:
        # 0.0.0.0 listens on every IPv4 address, "::" (dual-stack) on every address.
        ours = up.is_loopback and (host == "::" or up.version == 4)
    else:
        ours = up == mine
    same_port = True
    if same_port and ours:
        return f"upstream {upstream} is kdns itself (dns_addr {dns_addr}): forwarding would loop"
    return None


async def serve(
    app: App, *, task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run everything; `task_status.started` reports the bound ports by name."""
    config = app.config
    host, port = parse_hostport(config.dns_addr)
    query_log = QueryLog(config.query_log) if isinstance(config.query_log, str) else None
    server = DnsServer(app.handler, host, port, query_log=query_log)
    server.bind()  # outside the nursery: a taken port is a plain OSError for the command line
    endpoints = {
        "health": HttpEndpoint(*parse_hostport(config.health_addr), {"/health": health}),
        "ready": HttpEndpoint(
            *parse_hostport(config.ready_addr), {"/ready": readiness(app.store.unsynced_kinds)}
        ),
        "metrics": HttpEndpoint(
            *parse_hostport(config.metrics_addr),
            {"/metrics": metrics_route(config.metrics_coredns_names)},
        ),
    }
    for endpoint in endpoints.values():
        await endpoint.bind()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for endpoint in endpoints.values():
            await nursery.start(endpoint.run)
        await nursery.start(app.source.run)
        if app.forwarder is not None:
            await nursery.start(app.forwarder.run)
        nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
        if app.relay is not None:
            await nursery.start(app.relay.run)  # returns once bound, after the first sync
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

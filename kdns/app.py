"""The composition root: builds every part from the config and runs them in one nursery.

Contract:
- `build` wires store → resolver → handler (the resolver and the answer cache follow every store
  change) and picks the source: manifest files when given, else the live cluster (a kubeconfig,
  $KUBECONFIG, or the in-cluster service account). It raises `StartupError` carrying one line per
  problem, so the command line can print them and exit 2 before anything binds.
- `serve` raises the soft file descriptor limit to the hard one (each TCP client holds one),
  binds every socket first (a taken port is a plain OSError), then runs the DNS listeners, the
  HTTP endpoints and the source, and returns the exit status:
  - SIGTERM or SIGINT: /ready answers 503 at once, DNS keeps answering for `lameduck` seconds
    (so the EndpointSlice drops this pod first, as CoreDNS's `health { lameduck }`), then the
    listeners close, answers in flight get up to `DRAIN_GRACE` seconds to be written, and the
    status is 0. A second SIGTERM or SIGINT stops at once with 128 + the signal's number.
  - SIGHUP, SIGUSR1, or a change of the config file (or the kube-dns ConfigMap it names) seen
    by a poll every `reload_interval` seconds: `reload`.
- `reload` rebuilds what depends on the config (zones, ttl, pods, upstreams, stub domains, cache,
  autopath, query log, listen addresses) around the same store and source — nothing is listed
  again — into a new `Serving`, and swaps that one reference on the trio thread, so each query
  is answered wholly by the old or wholly by the new config. `Listeners` binds a new listen
  address before the old one closes. A config that does not load, validate or bind is refused:
  the old one keeps serving, one line is logged naming file, line and key, and
  `kdns_reload_total{result="error"}` counts it. The source itself (manifests, kubeconfig,
  context; for a live cluster whether Pods are watched) cannot change on reload: that would mean
  listing everything again and gating on sync, which is what a restart does; such a reload is
  refused with a line saying so. So is a change of `proxy`.
- The hosts plugin's file is watched on its own, every `hosts.reload` seconds, as CoreDNS's
  hosts does: a change is served without a reload (and empties the answer cache).
- With `proxy: userspace`, the resolver answers each ClusterIP Service's loopback VIP (A only)
  and `serve` runs the relay; the VIP map follows the store before the resolver does, and the
  Services whose VIP moved are handed to the resolver with the change.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import ipaddress
import logging
import math
import os
import platform
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from kdns import interpreter, logs, metrics
from kdns.config import (
    Config,
    ConfigError,
    load_kube_dns_configmap,
    locate,
    parse_hostport,
)
from kdns.dns.forward import Forwarder
from kdns.dns.handler import Handler
from kdns.dns.plugins import Plugins
from kdns.dns.querylog import QueryLog
from kdns.dns.resolver import Resolver
from kdns.dns.server import DnsServer
from kdns.dns.upstream_config import (
    ForwardConfig,
    Upstream,
    parse_upstreams,
    resolv_conf_nameservers,
    resolv_conf_search,
)
from kdns.dns.wire import AnswerCache
from kdns.http import HttpEndpoint, health, metrics_route, readiness
from kdns.proxy.loopback import LoopbackVips
from kdns.proxy.userspace import Relay
from kdns.sources.scope import Scope
from kdns.sources.static import ManifestSource
from kdns.store import KINDS, Change, Store

log = logging.getLogger(__name__)

NO_SOURCE = (
    "no source of cluster state: give --manifests PATH (manifest files), --kubeconfig FILE "
    "(or set KUBECONFIG), or run in a pod with a service account (in-cluster)"
)
# Seconds answers in flight get once the listeners close (CoreDNS's server waits 5 s; ours are
# bounded by forward_timeout, 2 s by default), so kdns exits within lameduck + 3 s.
DRAIN_GRACE = 3.0
HTTP_NAMES = ("health", "ready", "metrics")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
# Keys that pick the source of cluster state: a reload cannot change them (module docstring).
SOURCE_KEYS = (
    "kubernetes.manifests",
    "kubernetes.kubeconfig",
    "kubernetes.context",
    "kubernetes.namespaces",
    "kubernetes.labels",
)


class StartupError(Exception):
    """kdns cannot start; `lines` are the messages for the operator, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Source(Protocol):
    async def run(self, *, task_status: Any = ...) -> None: ...


@dataclass(frozen=True, slots=True)
class Serving:
    """What answers queries under one config. Never edited: a reload builds a new one and swaps
    the reference, synchronously, so each query is answered wholly by one config."""

    config: Config
    resolver: Resolver
    handler: Handler
    forwarder: Forwarder | None
    query_log: QueryLog | None


@dataclass(slots=True)
class App:
    """The store and the source, for the life of the process, and what serves now (`serving`,
    replaced whole by a reload)."""

    serving: Serving
    store: Store
    source: Source
    vips: LoopbackVips | None = None  # proxy: userspace
    relay: Relay | None = None

    @property
    def config(self) -> Config:
        return self.serving.config

    @property
    def resolver(self) -> Resolver:
        return self.serving.resolver

    @property
    def handler(self) -> Handler:
        return self.serving.handler

    @property
    def forwarder(self) -> Forwarder | None:
        return self.serving.forwarder

    def follow(self, change: Change) -> None:
        # Subscribed once; reads the current resolver, so a reload needs no re-subscription.
        if self.vips is not None:
            # A Service that came or went may move another's VIP (a collision): its answers
            # change too.
            moved = self.vips.update(self.store.services, change.services) - change.services
            if moved:
                change = Change(
                    services=change.services | moved,
                    namespaces=change.namespaces,
                    pod_ips=change.pod_ips,
                    trigger_time=change.trigger_time,
                )
        serving = self.serving
        serving.handler.cache.drop(serving.resolver.apply(change))
        if self.relay is not None:
            self.relay.follow(change.services)  # VIPs that moved included, as for the resolver


@dataclass(frozen=True, slots=True)
class Plan:
    """What a config needs from files (upstreams, stub domains, search list): read before the
    swap, off the trio thread, so a file that fails refuses the reload."""

    forwarder: Forwarder | None
    host_search: tuple[str, ...]
    hosts_file_text: str = ""  # the hosts plugin's file


def plan(config: Config) -> Plan:
    """Raises StartupError (a bad upstream, a loop, an unreadable kube-dns ConfigMap)."""
    return Plan(
        _forwarder(config),
        resolv_conf_search(config.forward.resolv_conf) if config.dns.autopath else (),
        read_hosts_file(config.hosts.file) if config.hosts.enabled else "",
    )


def read_hosts_file(path: str) -> str:
    """The hosts plugin's file, or "" when it cannot be read: CoreDNS's hosts serves its inline
    lines then, and empties its map when the file goes away (plugin/hosts/hostsfile.go)."""
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        log.warning(
            "hosts file %s: %s; serving the inline lines only",
            path,
            e.strerror,
            extra={"consolidate": f"hosts file {path} unreadable"},
        )
        return ""


def assemble(
    config: Config, store: Store, planned: Plan, vips: LoopbackVips | None = None
) -> Serving:
    """What serves `config` over `store` (synchronous: no store change can slip in between)."""
    host, _ = parse_hostport(config.dns.addr)
    specific = () if host in ("0.0.0.0", "::") else (host,)
    forwarder = planned.forwarder
    resolver = Resolver(
        store,
        config,
        ns_addresses=specific,
        reverse_fallthrough=forwarder is not None and bool(forwarder.config.upstreams),
        service_addresses=vips.addresses if vips is not None else None,
    )
    handler = Handler(
        resolver,
        # Bounded in bytes (config `cache.answer_max_bytes`): a random-name flood must not push
        # the process past its memory limit.
        cache=AnswerCache(
            rotate=config.dns.loadbalance != "off", max_bytes=config.cache.answer_max_bytes
        ),
        forwarder=forwarder,
        autopath=config.dns.autopath,
        host_search=planned.host_search,
        loadbalance=config.dns.loadbalance,
        plugins=Plugins.from_config(config, planned.hosts_file_text),
        fallthrough=config.dns.fallthrough,
    )
    return Serving(config, resolver, handler, forwarder, _query_log(config))


def build(config: Config, kube_options: dict[str, Any] | None = None) -> App:
    """`kube_options`: keyword arguments for the KubeSource (tests shorten its timeouts)."""
    store, api = open_store(config, _watch_pods(config))
    planned = plan(config)
    source = open_source(config, store, api, _watch_pods(config), kube_options)
    # The resolver starts from what the source already put in the store (manifests), then
    # follows every change.
    vips = None
    relay = None
    if config.dns.proxy == "userspace":
        vips = LoopbackVips()
        vips.update(store.services)
        # One VIP map: DNS answers from it and the relay listens on it.
        relay = Relay(store, node_name(config.node.name), vips=vips)
    return answering(config, store, source, planned, vips, relay)


def answering(
    config: Config,
    store: Store,
    source: Source,
    planned: Plan,
    vips: LoopbackVips | None = None,
    relay: Relay | None = None,
) -> App:
    """What answers DNS for `config` over `store`, following every change to it: the one
    assembly of `kdns serve` and of `kdns proxy --dns` (the proxy's store, no extra watch)."""
    app = App(assemble(config, store, planned, vips), store, source, vips, relay)
    store.subscribe(app.follow)
    return app


def node_name(configured: str = "") -> str:
    """This node's name, for traffic policies Local: the `node_name` key or flag, else
    $NODE_NAME (the downward API's spec.nodeName, as kube-proxy's manifests pass it), else the
    host name (kube-proxy's default)."""
    return configured or os.environ.get("NODE_NAME") or platform.node()


def check(config: Config) -> Plan:
    """Everything `build` checks that needs no source: for `kdns check` without manifests."""
    return plan(config)


def open_store(config: Config, watch_pods: bool) -> tuple[Store, Any]:
    """The store for the config's source, and the API client when the source is a cluster.

    Raises StartupError when no source is configured or the cluster config is unusable."""
    if config.kubernetes.manifests:
        store = Store(watched=KINDS)
        interpreter.freeze_when_synced(store)
        return store, None
    # Imported only for a live cluster: the client costs a second and 15 MiB at start-up.
    from kdns.sources import kube

    try:
        api = kube.cluster_client(
            config.kubernetes.kubeconfig or None, config.kubernetes.context or None
        )
    except kube.ClusterConfigError as e:
        raise StartupError([str(e)]) from None
    if api is None:
        raise StartupError([NO_SOURCE])
    kinds = kube.KubeSource.kinds(watch_pods, multicluster=bool(config.dns.multicluster))
    store = Store(watched=kinds)
    interpreter.freeze_when_synced(store)  # the synced heap out of the collector's way
    return store, api


def open_source(
    config: Config,
    store: Store,
    api: Any,
    watch_pods: bool,
    kube_options: dict[str, Any] | None = None,
) -> Source:
    """The source feeding `store`: manifests are read (and applied) now, so their errors stop
    the start with file/line/field; a cluster is listed when the source runs. Both serve only
    the namespaces and Services that kubernetes.namespaces and kubernetes.labels select."""
    scope = Scope.of(config.kubernetes)
    if config.kubernetes.manifests:
        manifests = ManifestSource(config.kubernetes.manifests, store, scope=scope)
        errors = manifests.load()
        if errors:
            raise StartupError([str(e) for e in errors])
        manifests.apply()
        return manifests
    from kdns.sources import kube

    return kube.KubeSource(
        api,
        store,
        watch_pods,
        scope=scope,
        multicluster=bool(config.dns.multicluster),
        **(kube_options or {}),
    )


def _watch_pods(config: Config) -> bool:
    # Pods cost memory and API traffic: watched only for features that need them.
    return config.dns.pods == "verified" or config.dns.autopath


def _forwarder(config: Config) -> Forwarder | None:
    """The Forwarder for the config, or None when there is nowhere to forward to."""
    forward = config.forward
    stubs = list(forward.stub_domains)
    upstream_texts = forward.upstreams
    try:
        if forward.kube_dns_configmap:
            cm_stubs, cm_upstreams = load_kube_dns_configmap(forward.kube_dns_configmap)
            stubs.extend(cm_stubs)
            if cm_upstreams is not None:
                upstream_texts = cm_upstreams
        if upstream_texts is None:
            upstreams = resolv_conf_nameservers(forward.resolv_conf)
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
        if (problem := loop_problem(upstream, config.dns.addr))
    ]
    if problems:
        raise StartupError(sorted(set(problems)))
    if not upstreams and not stub_domains:
        return None
    return Forwarder(
        ForwardConfig(
            upstreams=upstreams,
            stub_domains=stub_domains,
            timeout=forward.timeout,
            max_concurrent=forward.max_concurrent,
            cache=config.cache,
            policy=forward.policy,
            force_tcp=forward.force_tcp,
            except_zones=forward.except_zones,
            tls_servername=forward.tls_servername,
            tls_ca=forward.tls_ca,
            tls_cert=forward.tls_cert,
            tls_key=forward.tls_key,
            expire=forward.expire,
            max_fails=forward.max_fails,
            health_check=forward.health_check,
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
    if ours:
        return f"upstream {upstream} is kdns itself (dns_addr {dns_addr}): forwarding would loop"
    return None


# --- running: listeners, signals, lameduck, reload ------------------------------------------------


@dataclass(slots=True)
class Task:
    """A task started in the runtime's nursery that can be stopped on its own."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


async def start_task(nursery: trio.Nursery, run: Callable[..., Awaitable[Any]]) -> Task:
    """Start `run` in `nursery` (returning once it reports started) as a `Task`."""
    task = Task()

    async def wrapped(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            with task.scope:
                await run(task_status=task_status)
        finally:
            task.done.set()

    await nursery.start(wrapped)
    return task


async def drain(server: DnsServer, task: Task) -> None:
    """Close a DNS listener: stop taking queries, let answers in flight be written."""
    server.stop_listening()
    with trio.move_on_after(DRAIN_GRACE):
        await task.done.wait()
    task.scope.cancel()


def config_fingerprint(config: Config) -> str:
    """A hash of the files a reload reads: the config file and the kube-dns ConfigMap it names
    (kube-dns itself followed its ConfigMap), and the files a Corefile imports — a glob's
    matches by name and content, so a file added to k3s's or AKS's `coredns-custom` counts. An
    unreadable file hashes as its error."""
    digest = hashlib.sha256()
    imported = [
        path
        for pattern in config.imports
        for path in (sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern])
    ]
    for path in (config.source, config.forward.kube_dns_configmap, *imported):
        digest.update(path.encode() + b"\0")
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                digest.update(f.read())
        except OSError as e:
            digest.update(f"unreadable: {e.strerror}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as Go's runtime does for CoreDNS: each
    TCP client holds a descriptor (a DNS listener keeps up to MAX_TCP_CONNECTIONS)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard or (hard == resource.RLIM_INFINITY and soft != hard):
        # An unlimited hard limit may be refused (the kernel's nr_open): then soft stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class BindError(OSError):
    """A listen address that cannot be bound, and the config key that gives it."""

    def __init__(self, key: str, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.key = key


@dataclass(slots=True)
class Bound:
    """Listeners bound for a config but not serving yet: `Listeners.serve` runs them, `close`
    gives them up (a refused reload)."""

    dns: DnsServer | None = None
    http: dict[str, HttpEndpoint] = field(default_factory=dict)

    async def close(self) -> None:
        if self.dns is not None:
            self.dns.close()
        for endpoint in self.http.values():
            await endpoint.aclose()


class Listeners:
    """The DNS listener and the HTTP endpoints: bound before they serve (a taken port fails
    before anything changes), moved on reload (the new address serves before the old one
    closes), drained at shutdown."""

    def __init__(
        self,
        dns: Callable[[Config], DnsServer],
        http: Callable[[str, Config], HttpEndpoint],
    ) -> None:
        self._new_dns, self._new_http = dns, http
        self.dns: DnsServer | None = None
        self._dns_task = Task()
        self._dns_task.done.set()  # nothing to drain until the listener runs
        self.http: dict[str, HttpEndpoint] = {}
        self._http_tasks: dict[str, Task] = {}

    def ports(self) -> dict[str, int]:
        assert self.dns is not None
        return {"dns": self.dns.port, **{name: e.port for name, e in self.http.items()}}

    async def bind(self, config: Config, old: Config | None = None) -> Bound:
        """Bind each address of `config` that `old` does not have (every one without `old`).

        Raises BindError naming the key, after closing what this call bound."""
        bound = Bound()
        key = "dns.addr"
        try:
            if old is None or config.dns.addr != old.dns.addr:
                bound.dns = self._new_dns(config)
                bound.dns.bind()
            for name in HTTP_NAMES:
                key = f"dns.{name}_addr"
                if old is None or config.get(key) != old.get(key):
                    bound.http[name] = self._new_http(name, config)
                    await bound.http[name].bind()
        except OSError as e:
            await bound.close()
            raise BindError(key, e) from None
        return bound

    async def serve(self, bound: Bound, nursery: trio.Nursery) -> None:
        """Run what `bound` holds; each listener it replaces stops (a DNS one drains in the
        background, so its answers in flight are still written)."""
        if bound.dns is not None:
            old, old_task = self.dns, self._dns_task
            self.dns, self._dns_task = bound.dns, await start_task(nursery, bound.dns.run)
            if old is not None:
                nursery.start_soon(drain, old, old_task)
        for name, endpoint in bound.http.items():
            if name in self._http_tasks:
                self._http_tasks[name].scope.cancel()
            self.http[name] = endpoint
            self._http_tasks[name] = await start_task(nursery, endpoint.run)

    async def drain_dns(self) -> None:
        if self.dns is not None:
            await drain(self.dns, self._dns_task)


class Runtime:
    """`serve` for one `App`: runs its listeners and tasks, and stops and reloads them (module
    docstring)."""

    def __init__(self, app: App, loader: Callable[[], Config] | None) -> None:
        self.app = app
        # Reloading re-reads the file and applies the environment and the flags again; without
        # a loader (in-process tests) the same config is rebuilt.
        self.loader = loader or (lambda: self.app.config)
        self.stopping = False
        self.status = 0
        # The listeners read what serves from the app at each query: a reload swaps it there.
        self.listeners = Listeners(
            lambda config: DnsServer(lambda: self.app.serving, *parse_hostport(config.dns.addr)),
            self._endpoint,
        )
        self.forwarder_task: Task | None = None
        self.fingerprint = ""
        self._nursery: trio.Nursery | None = None
        self._reload_requests, self._reloads = trio.open_memory_channel[str](8)
        self._swapped = trio.Event()  # set (and replaced) by each reload that swaps the config

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def _endpoint(self, name: str, config: Config) -> HttpEndpoint:
        host, port = parse_hostport(getattr(config.dns, f"{name}_addr"))
        route = {
            "health": health,
            "ready": readiness(self.app.store.unsynced_kinds, lambda: self.stopping),
            # The current config's choice: a reload may switch the CoreDNS names on or off.
            "metrics": lambda: metrics_route(self.app.config.dns.metrics_coredns_names)(),
        }[name]
        return HttpEndpoint(host, port, {f"/{name}": route})

    async def run(self, *, task_status: trio.TaskStatus[dict[str, int]]) -> int:
        config = self.app.config
        raise_fd_limit()
        # The receive thread waits less behind the trio loop's Python (kdns/interpreter.py).
        interpreter.answer_promptly()
        # Outside the nursery: a taken port is a plain OSError for the command line.
        bound = await self.listeners.bind(config)
        self.fingerprint = await trio.to_thread.run_sync(config_fingerprint, config)
        # Signals are ours before the first query is answered: a SIGTERM right after start-up
        # gets its lameduck too.
        with trio.open_signal_receiver(*SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._signals, signals)
                await self.listeners.serve(bound, nursery)
                await nursery.start(self.app.source.run)
                await self._start_forwarder()
                if self.app.relay is not None:
                    await nursery.start(self.app.relay.run)  # returns once bound, after sync
                nursery.start_soon(self._reloader)
                nursery.start_soon(self._hosts_watcher)
                log.info("kdns ready to answer for %s", ", ".join(config.dns.zones))
                task_status.started(self.listeners.ports())
        return self.status

    async def _start_forwarder(self) -> None:
        """Upstream health probes for the current forwarder; the previous one's stop, and its
        questions in flight finish on their own (they are the listeners' tasks, not this one's)."""
        if self.forwarder_task is not None:
            self.forwarder_task.scope.cancel()
        self.forwarder_task = None
        if self.app.forwarder is not None:
            self.forwarder_task = await start_task(self.nursery, self.app.forwarder.run)

    # --- signals and lameduck ------------------------------------------------------------------

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum in (signal.SIGHUP, signal.SIGUSR1):
                # SIGUSR1 is CoreDNS's reload signal; SIGHUP is the daemon convention.
                if not self.stopping:
                    # A full queue holds reloads that will read the file anyway.
                    with contextlib.suppress(trio.WouldBlock):
                        self._reload_requests.send_nowait(name)
                continue
            if self.stopping:
                # A second signal: the operator wants out now (caddy, which CoreDNS is
                # built on, force-quits on a second SIGINT). 128 + N is the shell's
                # status for death by signal N; 2 is taken by "bad config".
                log.warning("%s during lameduck: stopping now", name)
                self.status = 128 + signum
                self.nursery.cancel_scope.cancel()
                return
            self.stopping = True  # /ready answers 503 from now on
            lameduck = self.app.config.dns.lameduck
            log.info("%s: lameduck for %g s (/ready 503, DNS still answering)", name, lameduck)
            self.nursery.start_soon(self._shutdown, lameduck)

    async def _shutdown(self, lameduck: float) -> None:
        await trio.sleep(lameduck)
        log.info("lameduck over: closing the DNS listeners, finishing answers in flight")
        await self.listeners.drain_dns()
        log.info("stopped")
        self.nursery.cancel_scope.cancel()

    # --- reload ----------------------------------------------------------------------------------

    async def _reloader(self) -> None:
        """Reload on request (signals), and when a poll sees the config's files change."""
        while True:
            interval = self.app.config.dns.reload_interval
            polling = interval > 0 and bool(self.app.config.source)
            reason = ""
            with trio.move_on_after(interval if polling else math.inf):
                reason = await self._reloads.receive()
            if not reason:
                current = await trio.to_thread.run_sync(config_fingerprint, self.app.config)
                if current != self.fingerprint:
                    reason = f"{self.app.config.source} changed"
            if reason:
                # Outside the timeout: a reload is never cut short half-way.
                await self.reload(reason)

    async def _hosts_watcher(self) -> None:
        """CoreDNS's hosts `reload`: every `hosts.reload` seconds the file is read again, and
        served when its text changed. The answer cache is emptied then: a name the hosts had
        not may have been answered from the cluster zones."""
        while True:
            swapped = self._swapped
            hosts = self.app.config.hosts
            if not (hosts.enabled and hosts.file and hosts.reload > 0):
                await swapped.wait()  # off: only a reload may turn it on (an idle server sleeps)
                continue
            await trio.sleep(hosts.reload)
            serving = self.app.serving
            plugins = serving.handler.plugins
            path = serving.config.hosts.file
            if plugins is None or not path or serving.config.hosts.reload <= 0:
                continue
            text = await trio.to_thread.run_sync(read_hosts_file, path)
            if serving is self.app.serving and text != plugins.hosts_file_text:
                plugins.load_hosts_file(text)
                serving.handler.cache.clear()
                log.info("hosts file %s changed: serving its new lines", path)

    def _refuse(self, message: str) -> bool:
        log.error("config reload refused, the previous config keeps serving: %s", message)
        metrics.RELOADS.labels(result="error").inc()
        return False

    async def reload(self, reason: str) -> bool:
        """Load, check, bind, then swap (module docstring). True when the new config serves."""
        if self.stopping:
            return False
        old = self.app.config
        # What this attempt read, good or bad: the poll then waits for the next change, so a
        # broken file is reported once.
        self.fingerprint = await trio.to_thread.run_sync(config_fingerprint, old)
        try:
            config = await trio.to_thread.run_sync(self.loader)
            _check_source(old, config)
            planned = await trio.to_thread.run_sync(plan, config)
        except ConfigError as e:
            return self._refuse(str(e))
        except StartupError as e:
            return self._refuse(f"{config.source or 'config'}: {'; '.join(e.lines)}")
        # Bind what moved before anything changes: a taken port refuses the whole reload.
        try:
            bound = await self.listeners.bind(config, old)
        except BindError as e:
            where, spelled = locate(config.source, e.key)
            return self._refuse(f"{where}: {spelled}: {e.strerror}")
        if self.stopping:  # a SIGTERM arrived while we were reading files
            await bound.close()
            return False
        # The swap: one reference, synchronously, so no query and no store change sees half of
        # it; the listeners read it at their next query.
        self.app.serving = assemble(config, self.app.store, planned, self.app.vips)
        self._swapped.set()
        self._swapped = trio.Event()
        new_log, old_log = config.logging, old.logging
        if (new_log.format, new_log.consolidate) != (old_log.format, old_log.consolidate):
            logs.setup(new_log.format, logging.getLogger().level, new_log.consolidate)
        await self._start_forwarder()
        await self.listeners.serve(bound, self.nursery)
        if bound.dns is not None:
            log.info("DNS moved from %s to %s", old.dns.addr, config.dns.addr)
        metrics.RELOADS.labels(result="ok").inc()
        log.info("config reloaded (%s)", reason)
        return True


def _query_log(config: Config) -> QueryLog | None:
    query_log = config.logging.query_log
    return QueryLog(query_log) if isinstance(query_log, str) else None


def _check_source(old: Config, new: Config) -> None:
    """Raises ConfigError when `new` picks another source of cluster state (module docstring)."""
    changed = [key for key in SOURCE_KEYS if old.get(key) != new.get(key)]
    if old.dns.proxy != new.dns.proxy:
        changed.append("dns.proxy")  # the relay and the VIP answers are set up at start
    if not old.kubernetes.manifests and _watch_pods(old) != _watch_pods(new):
        # The live cluster's Reflectors were started for a set of kinds; Pods are watched only
        # for pods: verified and autopath.
        changed.append("dns.pods" if old.dns.pods != new.dns.pods else "dns.autopath")
    if changed:
        key = changed[0]
        where, spelled = locate(new.source, key)
        raise ConfigError(
            f"{where}: {spelled}: "
            + (
                "changes how Services are reached"
                if key == "dns.proxy"
                else "changes the source of cluster state"
            )
            + ", which needs a restart "
            f"(now {old.get(key)!r}, asked {new.get(key)!r})",
            key=spelled,
        )


async def serve(
    app: App,
    *,
    loader: Callable[[], Config] | None = None,
    task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run everything until stopped; `task_status.started` reports the bound ports by name.

    `loader` gives the config again for a reload (the file, the environment, the flags).
    Returns the exit status (module docstring)."""
    return await Runtime(app, loader).run(task_status=task_status)

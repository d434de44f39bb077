"""The proxy's composition root: `kdns proxy` — the same source and store as `kdns serve`, a sync
engine, the mode's data plane, and the HTTP endpoints kube-proxy operators probe.

Contract:
- `ProxyOptions` are the command's flags. `make_dataplane` turns them into the mode's data plane
  for this node, or raises `StartupError` (IPVS mode on a kernel without IPVS: one line naming
  the modes that work; a bad CIDR).
- `run_proxy` binds every HTTP listener first (a taken port is a plain OSError), then runs the
  source, the engine, /healthz and /livez (kube-proxy's :10256: 200 once the first sync is
  applied and while syncs succeed, JSON with lastUpdated/currentTime), /metrics (:10249) and one
  HTTP server per healthCheckNodePort, until SIGTERM/SIGINT. Rules stay in place on exit, as
  with kube-proxy: a restarting proxy must not cut traffic.
- Surge: the HTTP ports are shared with SO_REUSEPORT (kdns/http.py `PortSharing`). A proxy that
  finds them held by a running proxy (a surge rollout) listens only once it is ready — its
  first sync applied and its node DNS answering — so the old one answers every probe until
  then, and every new connection comes to the new one after.
- Before the first sync (not under `render` or `cleanup`), `set_sysctls` makes the kernel
  settings kube-proxy makes at start in the mode (proxy/sysctls.py) under
  `options.sysctl_root` (`/proc/sys` from the command; "" leaves them alone); a setting it
  cannot write is a warning line, never a refusal.
- `render` prints what a full sync would apply once the source has synced; nothing is written.
  `cleanup` removes what any mode installed (`proxy/cleanup.py`), whatever `--mode` says, and
  nothing else.
- With `dns_addresses` (`--dns`), the proxy also answers DNS on those addresses, port 53, from
  its own store: `kdns serve`'s assembly (`app.answering`: resolver, handler, answer cache,
  forwarder, the same metrics), no extra watch (but this node's Pods for autopath, below). Its
  sockets are bound once the store has synced (a bind failure is logged and the proxy goes on
  without DNS). Upstreams: `node.dns_upstreams`, else the forward section's (by default the
  node's resolv.conf), with its stub domains. Once its sockets answer, the data path goes in
  (`proxy/nodednsrules.py`); on a stop it is removed, unless another process answers on the
  addresses by then (a restart: the rules stay). The addresses go on the node first, before the
  sockets bind (a ClusterIP is not local until then; the proxy's DNAT or IPVS still takes its
  packets until the rules go in). From the bind on, the process runs with `kdns serve`'s
  interpreter settings (`interpreter.answer_promptly()`: its receive thread would otherwise
  wait up to CPython's 5 ms per GIL hand-over, and behind long collections, during every sync;
  kdns/interpreter.py has the figures); a proxy without `--dns` keeps CPython's.
- IPVS mode takes a ClusterIP in `--dns` over too (`IpvsDataplane.take_over_dns`,
  proxy/nodedns.py says how): once the node DNS answers, the next sync drops that ClusterIP's
  port 53 virtual services; a proxy that finds another process answering on the addresses at
  start (a restart) keeps them dropped from its first sync; a stop that is not a restart gives
  them back with one last sync before the node DNS's rules go, so pods reach the central DNS
  through IPVS again.
- With `dns_autopath` (`--dns-autopath`, config `node.dns_autopath`) as well, the node DNS
  answers autopath (CoreDNS `autopath @kubernetes`, as `kdns serve --autopath`) for the pods of
  this node: the source watches the Pods with `spec.nodeName=<node>` only — the pods that ask
  the node DNS — so memory grows with the node's pods, not the cluster's. A query from any
  other address (another node's pod, a hostNetwork pod: `Resolver.pod_namespace`) gets the
  plain answer. The Pods do not gate the first sync: until they are listed every answer is
  plain, which is correct, and a Pods watch the RBAC forbids must not keep the proxy from
  programming the node. `kdns_node_dns_pods` counts the pods held.
- `kube_options(options)` is what the proxy's source watches beyond `kdns serve`'s kinds, as
  the `kube_options` of `app.open_source`: its own Node, the ServiceCIDRs, and this node's Pods
  only with autopath and the node DNS both on.
- Pod names under `dns.pods: verified` (`central_pod_zones`): the node DNS holds no Pods of
  other nodes, so a pod name it cannot verify falls through (CoreDNS's kubernetes
  `fallthrough`) to the stub domain covering `pod.<zone>` — the central DNS, which watches
  every Pod — as NodeLocal DNSCache sends the cluster zone to the central DNS; a start with no
  such stub domain, or one naming an address the node DNS answers itself, is refused before
  anything touches the node (`central_pod_problems`: one line naming the key to set).
  `pods insecure` and `pods disabled` need no Pod and answer locally.
- The userspace mode runs the relay (`proxy/userspace.py`) instead of a data plane.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from kdns import app, interpreter, metrics
from kdns.app import Source, StartupError, open_source, open_store
from kdns.config import PROXY_COMMAND_MODES, Config, parse_hostport
from kdns.dns import reuseport
from kdns.dns.server import DnsServer
from kdns.dns.upstream_config import Upstream
from kdns.http import HttpEndpoint, PortSharing, Route, prometheus
from kdns.proxy import healthcheck, nodednsrules, sysctls, sysctlwriter, userspace
from kdns.proxy.cleanup import cleanup_every_mode
from kdns.proxy.dataplane import (
    ApplyError,
    Dataplane,
    IptablesDataplane,
    IpvsDataplane,
    NftablesDataplane,
    Runner,
    ipvs_supported,
    node_from_host,
    read_file,
    run_command,
)
from kdns.proxy.ipvs.kernel import UNAVAILABLE_MESSAGE
from kdns.proxy.routes import ServiceKey, ServicePortRoute, build_routes, service_cidr_ranges
from kdns.proxy.sync import SyncEngine
from kdns.store import Store
from kdns.synced import wait_synced

log = logging.getLogger(__name__)

MODES = PROXY_COMMAND_MODES
SYNC_TIMEOUT = 120.0  # --render waits this long for a cluster's first list
# NodeLocal DNSCache's link-local address (k8s.io/dns nodelocaldns's default `-localip`).
NODE_DNS_DEFAULT = "169.254.20.10"
NODE_DNS_PORT = 53
# The HTTP ports, shared with the next proxy of a surge rollout as the DNS sockets are.
SHARED = PortSharing(reuseport.share, reuseport.steer)
TAKE_OVER_POLL = 0.05  # seconds between readiness checks of a proxy waiting to take over
SYSCTL_ROOT = "/proc/sys"


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    mode: str = "iptables"
    node_name: str = ""
    cluster_cidrs: tuple[str, ...] = ()
    nodeport_addresses: tuple[str, ...] = ()
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    masquerade_all: bool = False
    healthz_addr: str = "0.0.0.0:10256"
    metrics_addr: str = "127.0.0.1:10249"
    ipvs_scheduler: str = "rr"
    families: tuple[int, ...] = field(default_factory=lambda: default_families())
    dns_addresses: tuple[str, ...] = ()  # --dns: () = the proxy answers no DNS
    dns_port: int = NODE_DNS_PORT  # not a flag: clients of node DNS ask on 53; tests take 0
    dns_autopath: bool = False  # --dns-autopath: autopath for this node's pods
    conntrack: sysctls.Conntrack = field(default_factory=sysctls.Conntrack)  # --conntrack-*
    # Where the sysctls are written: the command passes SYSCTL_ROOT; "" (the default, for
    # in-process tests on the host) leaves the node's sysctls alone.
    sysctl_root: str = ""


def default_families() -> tuple[int, ...]:
    """IPv4, plus IPv6 where the kernel has it enabled (as kube-proxy's dual-stack detection)."""
    return (4, 6) if os.path.exists("/proc/net/if_inet6") else (4,)


def check_options(options: ProxyOptions) -> list[str]:
    """One line per bad flag."""
    problems = []
    if options.mode not in MODES:
        problems.append(f"--mode must be one of {', '.join(MODES)} (got {options.mode!r})")
    for flag, cidrs in (
        ("--cluster-cidr", options.cluster_cidrs),
        ("--nodeport-addresses", options.nodeport_addresses),
    ):
        families = []
        for cidr in cidrs:
            try:
                families.append(ipaddress.ip_network(cidr, strict=False).version)
            except ValueError:
                problems.append(f"{flag}: {cidr!r} is not a CIDR")
        if flag == "--cluster-cidr" and len(families) != len(set(families)):
            problems.append("--cluster-cidr: at most one CIDR per IP family")
    if options.min_sync_period < 0 or options.sync_period <= 0:
        problems.append("--min-sync-period must be ≥ 0 and --sync-period > 0")
    for flag, addr in (
        ("--healthz-addr", options.healthz_addr),
        ("--metrics-addr", options.metrics_addr),
    ):
        try:
            parse_hostport(addr)
        except ValueError as e:
            problems.append(f"{flag}: {e}")
    for address in options.dns_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            problems.append(f"--dns: {address!r} is not an IP address")
    if options.dns_autopath and not options.dns_addresses:
        problems.append("--dns-autopath: needs --dns (autopath is answered by the node DNS)")
    return problems


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_dns_config(
    config: Config, addresses: Sequence[str], port: int = NODE_DNS_PORT, autopath: bool = False
) -> Config:
    """The config the node DNS answers under: `kdns serve`'s, listening on the first of
    `addresses` (its NS records and the loop check name it), forwarding to `node.dns_upstreams`
    when given, with autopath exactly when `autopath` (`--dns-autopath`) says: a `dns.autopath`
    meant for `kdns serve` does not turn it on, since the node's Pods are watched only then;
    serving stale outside answers for `node.dns_serve_stale` seconds (on by default).
    Pod names it cannot verify fall through to the upstreams (`central_pod_zones`)."""
    overrides: dict[str, object] = {
        "dns.addr": _listen(addresses[0], port),
        "dns.autopath": autopath,
        "cache.serve_stale": config.node.dns_serve_stale,
    }
    if config.node.dns_upstreams is not None:
        overrides["forward.upstreams"] = list(config.node.dns_upstreams)
    central = central_pod_zones(config)
    if central:
        overrides["dns.fallthrough"] = list(dict.fromkeys((*config.dns.fallthrough, *central)))
    return config.with_overrides("node.dns", **overrides)


def central_pod_zones(config: Config) -> tuple[str, ...]:
    """`pod.<zone>` for each cluster zone whose pod names the node DNS cannot verify itself.

    `pods verified` answers a pod name only when a watched Pod has that address; the node DNS
    holds no Pods of other nodes (none at all without `--dns-autopath`), so it would deny names
    the central DNS, which watches every Pod, answers. Those names go to the central DNS, as
    NodeLocal DNSCache sends the whole cluster zone there: a name it cannot verify falls
    through (CoreDNS's kubernetes `fallthrough`) to the stub domain that covers `pod.<zone>`
    (`central_pod_problems` refuses a start without one); a pod of this node it holds is still
    answered here. `pods insecure` needs no Pod (the address is read from the name) and
    `pods disabled` denies them all, as the central DNS does: both stay local. With
    `--manifests` every Pod of the manifests is held, so nothing goes elsewhere."""
    if config.dns.pods != "verified" or config.kubernetes.manifests:
        return ()
    return tuple(f"pod.{zone}" for zone in config.dns.forward_zones)


def central_pod_problems(
    dns_config: Config,
    stub_domains: Sequence[tuple[str, Sequence[Upstream]]],
    addresses: Sequence[str],
    port: int = NODE_DNS_PORT,
) -> list[str]:
    """One line per `pod.<zone>` of `central_pod_zones` that no stub domain (the forwarder's,
    a kube-dns ConfigMap's included) sends to a server other than the node DNS itself."""
    problems = []
    for name in central_pod_zones(dns_config):
        covering = [stub for stub in stub_domains if _within(name, stub[0])]
        if not covering:
            problems.append(
                f"node.dns: dns.pods is verified, but the node DNS holds no other node's Pods to "
                f"verify pod names with: set forward.stub_domains {{{name}: [CENTRAL-DNS-IP]}} "
                "(the central DNS: a kube-dns-upstream Service's ClusterIP, not an address "
                "the node takes over), or dns.pods: insecure"
            )
            continue
        domain, servers = max(covering, key=lambda stub: len(stub[0]))  # longest wins
        problems.extend(
            f"forward.stub_domains.{domain}: {server.host} is the node DNS itself (--dns "
            "answers it on this node): forwarding pod names there would loop; give the central "
            "DNS's own address (e.g. a kube-dns-upstream Service's ClusterIP)"
            for server in servers
            if _answers(server, addresses, port)
        )
    return problems


def _within(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def _answers(server: Upstream, addresses: Sequence[str], port: int) -> bool:
    """Whether the node DNS itself answers at `server` (a ClusterIP it takes over, say)."""
    host = ipaddress.ip_address(server.host)
    return server.port == port and any(host == ipaddress.ip_address(a) for a in addresses)


def _node_dns(
    config: Config, options: ProxyOptions, store: Store, source: Source
) -> tuple[app.App, list[DnsServer]] | None:
    """The node DNS's answering app and one server per address, not bound yet; None without
    `--dns`. Raises StartupError (a bad upstream, a forwarding loop, pod names under `pods
    verified` with no central DNS to send them to: `central_pod_problems`)."""
    if not options.dns_addresses:
        return None
    dns_config = node_dns_config(
        config, options.dns_addresses, options.dns_port, options.dns_autopath
    )
    planned = app.plan(dns_config)
    stubs = planned.forwarder.config.stub_domains if planned.forwarder is not None else ()
    problems = central_pod_problems(dns_config, stubs, options.dns_addresses, options.dns_port)
    if problems:
        raise StartupError(problems)
    node_app = app.answering(dns_config, store, source, planned)
    if options.dns_autopath:
        # len() of the store's dict is one read under the GIL: safe from the scrape thread.
        pods = store.pods
        metrics.NODE_DNS_PODS.set_function(lambda: len(pods))
    servers = [
        DnsServer(lambda: node_app.serving, address, options.dns_port)
        for address in options.dns_addresses
    ]
    return node_app, servers


async def _serve_node_dns(
    node_dns: tuple[app.App, list[DnsServer]] | None,
    store: Store,
    options: ProxyOptions,
    runner: Runner,
    settled: trio.Event,
    answering: Callable[[], None] = lambda: None,
) -> None:
    """Binds the node DNS once the store has synced — a restarted proxy takes the queries over
    the moment it binds (kdns/dns/reuseport.py), so it must know every name by then — then
    serves, and installs the data path once the sockets answer, then calls `answering` (IPVS
    mode's takeover). `settled` is set once the node DNS answers, or will not (none asked for,
    or its bind failed)."""
    if node_dns is None:
        settled.set()
        return
    node_app, servers = node_dns
    await wait_synced(store)
    # The addresses first: a ClusterIP is not local before (IPVS binds it on kube-ipvs0 only
    # with its first sync), and a socket binds only to a local address.
    for line in await trio.to_thread.run_sync(
        nodednsrules.install_device, runner, options.dns_addresses
    ):
        log.error("node DNS device: %s", line)
    # The receive thread waits less behind each sync's Python, as `kdns serve`'s does behind
    # a rebuild (kdns/interpreter.py has the figures of both).
    interpreter.answer_promptly()
    try:
        for server in servers:
            server.bind()
    except OSError as e:
        for server in servers:
            server.close()
        log.error("node DNS not answering: %s", e.strerror)
        settled.set()
        return
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run)
        if node_app.forwarder is not None:
            await nursery.start(node_app.forwarder.run)  # upstream health probes
        await _install_node_dns(options, runner)
        answering()
        settled.set()


def make_dataplane(options: ProxyOptions, runner: Runner = run_command) -> Dataplane:
    if options.mode == "userspace":
        raise ValueError("userspace mode has no data plane: it relays")
    if options.mode == "ipvs" and not ipvs_supported(read_file):
        raise StartupError([UNAVAILABLE_MESSAGE.removeprefix("kdns proxy: ")])
    try:
        node = node_from_host(
            runner,
            options.families,
            options.cluster_cidrs,
            options.nodeport_addresses,
            options.masquerade_all,
        )
    except ApplyError as e:
        raise StartupError([str(e)]) from None
    if options.mode == "iptables":
        return IptablesDataplane(node, runner)
    if options.mode == "nftables":
        return NftablesDataplane(node, runner)
    return IpvsDataplane(node, runner, options.ipvs_scheduler)


def set_sysctls(options: ProxyOptions) -> list[str]:
    """The kernel settings kube-proxy makes at start in this mode (proxy/sysctls.py); a
    failure is a warning line, not a refusal (proxy/sysctlwriter.py says why)."""
    wanted = sysctls.wanted(
        options.mode,
        options.conntrack,
        os.cpu_count() or 1,  # every CPU of the node, as kube-proxy's detectNumCPU (#99225)
        sysctls.kernel_version(os.uname().release),
    )
    return sysctlwriter.apply(wanted, options.sysctl_root)


def cleanup(runner: Runner = run_command) -> list[str]:
    """Removes what any mode installed, whichever `--mode` is given (kube-proxy's --cleanup);
    returns one line per leftover (empty: all gone). IPVS services can exist only once the
    running kernel has IPVS: /proc/net/ip_vs tells, without loading the module."""
    return cleanup_every_mode(runner, ipvs=read_file("/proc/net/ip_vs") is not None)


async def render(config: Config, options: ProxyOptions, runner: Runner = run_command) -> str:
    """What a full sync would apply, once the source has listed everything."""
    dataplane = None if options.mode == "userspace" else make_dataplane(options, runner)
    store, api = open_store(config, watch_pods=False)
    # Rules only: the node DNS's Pods would be listed for nothing.
    watched = kube_options(replace(options, dns_autopath=False))
    source = open_source(config, store, api, False, watched)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        with trio.move_on_after(SYNC_TIMEOUT):
            await wait_synced(store)
        nursery.cancel_scope.cancel()
    if not store.synced:
        raise StartupError([f"the cluster did not sync within {SYNC_TIMEOUT:.0f} s"])
    if dataplane is None:
        return "".join(f"{line}\n" for line in userspace.render(store, options.node_name))
    node = store.nodes.get(options.node_name)
    zone = node.zone if node is not None else ""
    routes = build_routes(store.services, store.endpoints, options.node_name, zone=zone)
    dataplane.set_service_cidrs(service_cidr_ranges(store.service_cidrs.values()))
    if isinstance(dataplane, IpvsDataplane) and options.dns_addresses:
        dataplane.take_over_dns(options.dns_addresses)  # as once the node DNS answers
    return await trio.to_thread.run_sync(dataplane.render, routes)


def kube_options(options: ProxyOptions) -> dict[str, Any]:
    """From a cluster the proxy also watches its own Node (its zone picks topology hints) and
    the ServiceCIDRs (nftables mode drops traffic to their unallocated addresses); with the
    node DNS's autopath, the Pods on this node (module docstring)."""
    watched: dict[str, Any] = {"node_name": options.node_name, "service_cidrs": True}
    if options.dns_autopath and options.dns_addresses:
        watched["pods_node"] = options.node_name
    return watched


class HealthCheckServers:
    """One HTTP server per healthCheckNodePort (kube-proxy's ServiceHealthServer)."""

    def __init__(self, engine_healthy: Callable[[], bool]) -> None:
        self._healthy = engine_healthy
        self._counts: dict[int, tuple[ServiceKey, int]] = {}
        self._running: dict[int, trio.CancelScope] = {}
        self._wake = trio.Event()

    def update(self, routes: Sequence[ServicePortRoute]) -> None:
        self._counts = healthcheck.health_check_ports(routes)
        self._wake.set()

    def _route(self, port: int) -> Route:
        def answer() -> tuple[int, str, bytes]:
            entry = self._counts.get(port)
            if entry is None:
                return 503, "text/plain; charset=utf-8", b"no such service\n"
            return healthcheck.response(entry[0], entry[1], self._healthy())

        return answer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                wanted = set(self._counts)
                for port in sorted(set(self._running) - wanted):
                    self._running.pop(port).cancel()
                    log.info("health check node port %d closed", port)
                for port in sorted(wanted - set(self._running)):
                    route = self._route(port)
                    routes = {"/": route, "/healthz": route}
                    endpoint = HttpEndpoint("0.0.0.0", port, routes, sharing=SHARED)
                    try:
                        await endpoint.bind()
                    except OSError as e:
                        log.error("health check node port %d: %s", port, e.strerror)
                        continue
                    scope = trio.CancelScope()
                    self._running[port] = scope
                    nursery.start_soon(_run_in_scope, scope, endpoint)
                    log.info("health check node port %d open", port)
                self._wake = trio.Event()
                await self._wake.wait()


async def _run_in_scope(scope: trio.CancelScope, endpoint: HttpEndpoint) -> None:
    with scope:
        await endpoint.run()


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def _healthz(healthy: Callable[[], bool], last_updated: Callable[[], float | None]) -> Route:
    """kube-proxy's /healthz and /livez answer: 200 or 503 with lastUpdated and currentTime."""

    def answer() -> tuple[int, str, bytes]:
        body = {
            "lastUpdated": _iso(last_updated()),
            "currentTime": _iso(time.time()),
            "nodeEligible": True,
        }
        status = 200 if healthy() else 503
        return status, "application/json", (json.dumps(body) + "\n").encode()

    return answer


async def run_proxy(
    config: Config,
    options: ProxyOptions,
    runner: Runner = run_command,
    *,
    task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    store, api = open_store(config, watch_pods=False)
    source = open_source(config, store, api, False, kube_options(options))
    # Before anything touches the node: a node DNS config that cannot start refuses the start.
    node_dns = _node_dns(config, options, store, source)
    if options.mode == "userspace":
        await _run_userspace(store, source, node_dns, options, runner, task_status=task_status)
        return
    dataplane = make_dataplane(options, runner)
    set_sysctls(options)  # before the first sync, as kube-proxy's setupConntrack and NewProxier
    if await _restarting_node_dns(dataplane, options, runner):
        # The running process took the ClusterIP over: the first sync must not bring :53 back.
        dataplane.take_over_dns(options.dns_addresses)
    checks = HealthCheckServers(lambda: engine.healthy())
    engine = SyncEngine(
        store,
        dataplane,
        options.node_name,
        min_sync_period=options.min_sync_period,
        sync_period=options.sync_period,
        runner=runner,
        on_routes=checks.update,
        freeze_full_syncs=True,  # the collector's long pauses out of the node DNS's way
    )
    endpoints = await _bind_endpoints(
        options, _healthz(engine.healthy, lambda: engine.last_success)
    )
    dns_settled = trio.Event()
    async with trio.open_nursery() as nursery:
        # The health check node ports follow the same take-over: their answers need a sync.
        await _start_endpoints(
            nursery, endpoints, lambda: engine.healthy() and dns_settled.is_set(), checks.run
        )
        answering = _take_over_dns(dataplane, engine, options)
        nursery.start_soon(
            _serve_node_dns, node_dns, store, options, runner, dns_settled, answering
        )
        await nursery.start(engine.run)
        await nursery.start(source.run)
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        log.info("kdns proxy (%s mode) running for node %r", options.mode, options.node_name)
        task_status.started({name: e.port for name, e in endpoints.items()})
    await _remove_node_dns(options, runner, _give_back_dns(dataplane, engine))


async def _restarting_node_dns(dataplane: Dataplane, options: ProxyOptions, runner: Runner) -> bool:
    """IPVS mode with --dns, and another process answering on the addresses already."""
    if not isinstance(dataplane, IpvsDataplane) or not options.dns_addresses:
        return False
    return await trio.to_thread.run_sync(
        nodednsrules.other_listener, runner, options.dns_addresses, options.dns_port
    )


def _take_over_dns(
    dataplane: Dataplane, engine: SyncEngine, options: ProxyOptions
) -> Callable[[], None]:
    """What to do once the node DNS answers: in IPVS mode, drop the :53 virtual services of
    the ClusterIPs among its addresses with the next sync (module docstring)."""

    def take_over() -> None:
        if isinstance(dataplane, IpvsDataplane) and dataplane.node_dns != options.dns_addresses:
            dataplane.take_over_dns(options.dns_addresses)
            engine.resync()
            log.info("node DNS: taking port 53 of its ClusterIPs over from IPVS")

    return take_over


def _give_back_dns(dataplane: Dataplane, engine: SyncEngine) -> Callable[[], None]:
    """What a stop for good does before the node DNS's rules go (in a worker thread, the engine
    stopped): in IPVS mode, one last sync that brings the :53 virtual services back."""

    def give_back() -> None:
        if not isinstance(dataplane, IpvsDataplane) or not dataplane.node_dns:
            return
        dataplane.take_over_dns(())
        if not engine.synced:
            return  # nothing was programmed, so nothing was taken over
        try:
            dataplane.sync(engine.routes(), None)
        except ApplyError as e:
            log.error("node DNS: giving port 53 of its ClusterIPs back to IPVS failed: %s", e)
            return
        log.info("node DNS: port 53 of its ClusterIPs is IPVS's again")

    return give_back


async def _install_node_dns(options: ProxyOptions, runner: Runner) -> None:
    """The node DNS's device and rules, once its sockets answer (a failure is logged: DNS to
    the addresses still works, through conntrack)."""
    if not options.dns_addresses:
        return
    problems = await trio.to_thread.run_sync(
        nodednsrules.install, runner, options.mode, options.dns_addresses
    )
    for line in problems:
        log.error("node DNS rules: %s", line)
    log.info("answering DNS on %s", ", ".join(options.dns_addresses))


async def _remove_node_dns(
    options: ProxyOptions, runner: Runner, give_back: Callable[[], None] = lambda: None
) -> None:
    """On a stop that is not a restart (no other process answers on the addresses now), the
    rules go, so pods fall back to the central DNS; on a restart they stay for the new one.
    `give_back` (IPVS mode's last sync) runs first: the ClusterIP is IPVS's again before the
    NOTRACK rules go."""
    if not options.dns_addresses:
        return
    with trio.CancelScope(shield=True):
        restarting = await trio.to_thread.run_sync(
            nodednsrules.other_listener, runner, options.dns_addresses, options.dns_port
        )
        if restarting:
            log.info("node DNS: another process answers on its addresses; rules stay")
            return
        await trio.to_thread.run_sync(give_back)
        problems = await trio.to_thread.run_sync(nodednsrules.remove, runner)
    for line in problems:
        log.error("node DNS rules: %s", line)


async def _bind_endpoints(options: ProxyOptions, healthz: Route) -> dict[str, HttpEndpoint]:
    """kube-proxy's /healthz and /livez, and /metrics, bound now (a taken port is an OSError)."""
    endpoints = {
        "healthz": HttpEndpoint(
            *parse_hostport(options.healthz_addr),
            {"/healthz": healthz, "/livez": healthz},
            sharing=SHARED,
        ),
        "metrics": HttpEndpoint(
            *parse_hostport(options.metrics_addr), {"/metrics": prometheus}, sharing=SHARED
        ),
    }
    for endpoint in endpoints.values():
        await endpoint.bind()
    return endpoints


Runnable = Callable[..., Awaitable[None]]  # started with nursery.start


async def _start_endpoints(
    nursery: trio.Nursery,
    endpoints: dict[str, HttpEndpoint],
    ready: Callable[[], bool],
    *more: Runnable,
) -> None:
    """Runs the endpoints (and `more` servers): at once, or, when a running proxy holds the
    ports (a surge rollout), once `ready()`: until then the old proxy answers every probe and
    scrape, so a health check never sees this one's 503 of before its first sync."""
    waiting = [e for e in endpoints.values() if e.successor]
    for endpoint in endpoints.values():
        if not endpoint.successor:
            await nursery.start(endpoint.run)
    if not waiting:
        for run in more:
            await nursery.start(run)
        return
    ports = ", ".join(str(e.port) for e in waiting)
    log.info("ports %s held by a running proxy: taking them over once ready", ports)
    nursery.start_soon(_take_over, [e.run for e in waiting] + list(more), ready, ports)


async def _take_over(runs: list[Runnable], ready: Callable[[], bool], ports: str) -> None:
    # A short poll, once per start: readiness is several conditions, each owned elsewhere.
    while not ready():
        await trio.sleep(TAKE_OVER_POLL)
    async with trio.open_nursery() as nursery:
        for run in runs:
            await nursery.start(run)
        log.info("took over ports %s", ports)


async def _run_userspace(
    store: Store,
    source: Source,
    node_dns: tuple[app.App, list[DnsServer]] | None,
    options: ProxyOptions,
    runner: Runner,
    *,
    task_status: trio.TaskStatus[dict[str, int]],
) -> None:
    """The relay instead of a data plane: nothing to sync, healthy once the store synced."""
    healthz = _healthz(lambda: store.synced, lambda: None)
    endpoints = await _bind_endpoints(options, healthz)
    dns_settled = trio.Event()
    relaying = trio.Event()
    async with trio.open_nursery() as nursery:
        await _start_endpoints(
            nursery, endpoints, lambda: relaying.is_set() and dns_settled.is_set()
        )
        nursery.start_soon(_serve_node_dns, node_dns, store, options, runner, dns_settled)
        await nursery.start(source.run)
        await nursery.start(userspace.run_relay, store, options.node_name)
        relaying.set()
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        log.info("kdns proxy (userspace mode) running for node %r", options.node_name)
        task_status.started({name: e.port for name, e in endpoints.items()})
    await _remove_node_dns(options, runner)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: stopping (rules stay in place)", signal.Signals(signum).name)
            scope.cancel()
            return

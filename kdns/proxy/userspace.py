"""The userspace proxy: a trio TCP and UDP relay from loopback VIPs to endpoints, needing no
privileges at all (no NET_ADMIN, no NET_BIND_SERVICE, no root).

Each Service with a ClusterIP gets a loopback VIP (`proxy/loopback.py`); for each of its ports
the relay listens on VIP:port (TCP or UDP) and carries every connection to an endpoint.
`kdns serve --proxy userspace` answers that VIP in DNS, so a pod without NET_ADMIN, a sidecar or
a developer's laptop reaches `svc.ns.svc.cluster.local` by name.

Contract:
- Follows the store: a store change rebuilds the changed Services' listeners synchronously in
  the subscriber, so the next connection uses the new endpoint set. Listeners come and go with
  Services and ports; a Service whose VIP moved is re-bound. Nothing is bound before the store
  has synced (docs/architecture.md, rule 4).
- Endpoint choice is kube-proxy's userspace `LoadBalancerRR`: round robin over the usable
  endpoints (CategorizeEndpoints' cluster set; the local set under internalTrafficPolicy
  Local), starting at a random index so that many relays do not all begin with the same
  endpoint; with sessionAffinity ClientIP a client IP keeps its endpoint until timeoutSeconds
  after its last connection. Round robin rather than random: it is even at every count, not
  only on average, which is what a handful of long-lived connections needs.
- Topology as in the kernel modes: the endpoints are `routes.service_routes`' for this node
  and its zone (its Node's topology.kubernetes.io/zone label, from the store's NODES), so
  trafficDistribution, hints and their fallbacks are the same; a change of the zone rebuilds
  every Service's listeners (kube-proxy's OnTopologyChange).
- TCP: a failed or slow connect moves on to the next endpoint, at most four tries with
  kube-proxy userspace's dial timeouts (0.25, 0.5, 1, 2 s); no usable endpoint, or every try
  failed, closes the accepted connection with RST (SO_LINGER 0): the client sees a reset at once,
  not a hang. Bytes are copied both ways, at most 128 KiB read at a time per direction and
  written out before the next read (so a connection holds at most that per direction, none
  while idle, and a slow reader slows the writer down); an EOF is passed on as
  a half-close (shutdown SHUT_WR); an error on either side resets both. Removing an endpoint
  leaves connections already made to it alone (as conntrack does for iptables mode).
- UDP: one session per client (address, port), with a connected socket of its own to the chosen
  endpoint; replies go back from the VIP socket. A session ends after `udp_idle_timeout` with
  no datagram either way (30 s: the kernel's nf_conntrack_udp_timeout, which the other modes'
  UDP flows live by; kube-proxy userspace's 250 ms default dropped sessions whose reply was
  slower than that), when its endpoint refuses (ICMP port unreachable) or goes away (as the
  other modes delete its conntrack entries), and, beyond `max_udp_sessions` per listener, the
  least recently active one is closed to make room.
- A port that cannot be bound (below net.ipv4.ip_unprivileged_port_start without
  CAP_NET_BIND_SERVICE, or taken) costs one warning line and a metric; everything else serves.
- Limits: IPv4 VIPs only (IPv6 loopback is the single address ::1); the endpoint sees the
  relay's address, not the client's (the relay works on connections, not packets); SCTP is
  not relayed; a UDP client gets no ICMP error when there is no endpoint (sending one needs
  a raw socket), its datagrams are dropped.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from random import randrange

import trio
from prometheus_client import Counter

from kdns import metrics
from kdns.proxy.loopback import LoopbackVips, RelayRoute, relay_routes, relay_table
from kdns.proxy.loopback import render_relay_table as _render
from kdns.proxy.routes import RouteEndpoint
from kdns.store import Change, Store
from kdns.synced import wait_synced

log = logging.getLogger(__name__)

ServiceKey = tuple[str, str]
ListenerKey = tuple[str, int, str]  # (VIP, port, protocol)

# kube-proxy pkg/proxy/userspace/proxysocket.go `EndpointDialTimeouts`: one try per timeout.
CONNECT_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)
BUFFER_SIZE = 128 * 1024  # a read; measured: 64 KiB costs a third of the throughput
UDP_IDLE_TIMEOUT = 30.0
MAX_UDP_SESSIONS = 4096  # per listener
BACKLOG = 1024
# Seconds between clean-ups of expired affinity entries and retries of unbound ports.
SWEEP_INTERVAL = 10.0
UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_TCP_TO_ENDPOINT = metrics.RELAY_BYTES.labels("tcp", "to_endpoint")
_TCP_TO_CLIENT = metrics.RELAY_BYTES.labels("tcp", "to_client")
_UDP_TO_ENDPOINT = metrics.RELAY_BYTES.labels("udp", "to_endpoint")
_UDP_TO_CLIENT = metrics.RELAY_BYTES.labels("udp", "to_client")


class Balancer:
    """Round robin over one listener's endpoints, with ClientIP affinity (kube-proxy userspace
    `LoadBalancerRR`)."""

    def __init__(self, endpoints: tuple[RouteEndpoint, ...], affinity_timeout: int | None) -> None:
        self.endpoints: tuple[RouteEndpoint, ...] = ()
        self.affinity_timeout = affinity_timeout
        self.affinity: dict[str, tuple[RouteEndpoint, float]] = {}  # client IP → (endpoint, last)
        self._cursor = randrange(1 << 16)
        self.update(endpoints, affinity_timeout)

    def update(self, endpoints: tuple[RouteEndpoint, ...], affinity_timeout: int | None) -> None:
        if affinity_timeout != self.affinity_timeout:
            self.affinity.clear()  # affinity switched off or its timeout changed: start afresh
        self.affinity_timeout = affinity_timeout
        self.endpoints = endpoints
        # An affinity entry to an endpoint that is gone is dropped.
        live = {ep.address for ep in endpoints}
        for client in [c for c, (ep, _) in self.affinity.items() if ep.address not in live]:
            del self.affinity[client]

    def pick(
        self, client_ip: str, now: float, exclude: frozenset[str] | set[str] = frozenset()
    ) -> RouteEndpoint | None:
        """The endpoint for a new connection from `client_ip`, None if none is left to try."""
        timeout = self.affinity_timeout
        if timeout is not None:
            sticky = self.affinity.get(client_ip)
            if (
                sticky is not None
                and now - sticky[1] < timeout
                and sticky[0].address not in exclude
            ):
                self.affinity[client_ip] = (sticky[0], now)
                return sticky[0]
        n = len(self.endpoints)
        for _ in range(n):
            endpoint = self.endpoints[self._cursor % n]
            self._cursor += 1
            if endpoint.address not in exclude:
                if timeout is not None:
                    self.affinity[client_ip] = (endpoint, now)
                return endpoint
        return None

    def forget(self, client_ip: str) -> None:
        self.affinity.pop(client_ip, None)

    def sweep(self, now: float) -> None:
        timeout = self.affinity_timeout
        if timeout is None:
            return
        for client in [c for c, (_, last) in self.affinity.items() if now - last >= timeout]:
            del self.affinity[client]


@dataclass(eq=False, slots=True)
class UdpSession:
    client: tuple[str, int]
    endpoint: RouteEndpoint
    sock: trio.socket.SocketType
    last: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    open: bool = True

    def close(self) -> None:
        """Idempotent; the owner removes the session from its listener's table."""
        if self.open:
            self.open = False
            metrics.RELAY_UDP_SESSIONS.dec()
        self.scope.cancel()
        self.sock.close()


@dataclass(eq=False, slots=True)
class Listener:
    entry: RelayRoute
    sock: trio.socket.SocketType
    balancer: Balancer
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    sessions: OrderedDict[tuple[str, int], UdpSession] = field(default_factory=OrderedDict)

    @property
    def protocol(self) -> str:
        return self.entry.route.protocol

    def update(self, entry: RelayRoute) -> None:
        self.entry = entry
        self.balancer.update(entry.endpoints, entry.route.affinity_timeout)
        live = {ep.address for ep in entry.endpoints}
        for session in [s for s in self.sessions.values() if s.endpoint.address not in live]:
            # Its endpoint went away: the next datagram picks a live one (the other modes
            # delete the conntrack entries of a UDP endpoint that is gone).
            del self.sessions[session.client]
            session.close()

    def close(self) -> None:
        self.scope.cancel()
        self.sock.close()
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()


class Relay:
    """Every listener of one node's userspace proxy, following the store."""

    def __init__(
        self,
        store: Store,
        node_name: str,
        *,
        connect_timeouts: tuple[float, ...] = CONNECT_TIMEOUTS,
        udp_idle_timeout: float = UDP_IDLE_TIMEOUT,
        max_udp_sessions: int = MAX_UDP_SESSIONS,
        sweep_interval: float = SWEEP_INTERVAL,
        vips: LoopbackVips | None = None,
    ) -> None:
        """`vips`: a VIP map someone else keeps up to date (`kdns serve`, whose DNS answers
        from it); that owner then calls `follow` after each change, instead of the relay
        following the store itself."""
        self.store = store
        self.sweep_interval = sweep_interval
        self.node_name = node_name
        self.connect_timeouts = connect_timeouts
        self.udp_idle_timeout = udp_idle_timeout
        self.max_udp_sessions = max_udp_sessions
        self.vips = vips if vips is not None else LoopbackVips()
        self._driven = vips is not None
        self.listeners: dict[ListenerKey, Listener] = {}
        self.by_service: dict[ServiceKey, set[ListenerKey]] = {}
        self.unbindable: dict[ListenerKey, str] = {}  # listener → reason it could not be bound
        self._warned: set[ListenerKey] = set()
        self._nursery: trio.Nursery | None = None
        self._ready = False
        # This node's zone (its Node's topology.kubernetes.io/zone label), for topology hints
        # exactly as the kernel modes read them (routes.categorize_endpoints).
        self.zone = ""

    # --- following the store -----------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        if self.node_name in change.nodes and self._node_zone() != self.zone:
            # kube-proxy's OnTopologyChange: every Service's hints are read anew.
            self.zone = self._node_zone()
            log.info("userspace proxy: node %r is in zone %r", self.node_name, self.zone)
            self.follow(set(self.store.services) | set(self.by_service))
            return
        self.follow(change.services)

    def _node_zone(self) -> str:
        node = self.store.nodes.get(self.node_name)
        return node.zone if node is not None else ""

    def follow(self, keys: set[ServiceKey]) -> None:
        """The Services in `keys` changed (or their VIPs moved): rebuild their listeners."""
        if self._ready and keys:
            self.sync(keys)

    def sync(self, keys: Iterable[ServiceKey] | None = None) -> None:
        """Rebuild the listeners of `keys` (None: every Service) and of Services whose VIP
        moved. Synchronous: binding a numeric address never blocks."""
        services = self.store.services
        changed = None if keys is None else set(keys)
        moved = self.vips.update(services, changed)
        affected = (set(services) | set(self.by_service)) if changed is None else changed | moved
        desired: dict[ServiceKey, dict[ListenerKey, RelayRoute]] = {}
        for key in affected:
            service = services.get(key)
            entries = (
                relay_routes(
                    service,
                    self.store.endpoints.get(key, ()),
                    self.node_name,
                    self.vips.address(key),
                    zone=self.zone,
                )
                if service is not None
                else ()
            )
            desired[key] = {e.listener: e for e in entries if e.route.protocol in ("TCP", "UDP")}
        # Close first, then open: a VIP freed by one Service may be bound by another at once.
        for key, wanted in desired.items():
            for lkey in self.by_service.get(key, set()) - wanted.keys():
                self._close(key, lkey)
        for key, wanted in desired.items():
            for lkey, entry in wanted.items():
                listener = self.listeners.get(lkey)
                if listener is not None:
                    listener.update(entry)
                else:
                    self._open(key, lkey, entry)
            if not self.by_service.get(key):
                self.by_service.pop(key, None)
        self._count_unbindable()

    def _close(self, key: ServiceKey, lkey: ListenerKey) -> None:
        self.by_service[key].discard(lkey)
        self.unbindable.pop(lkey, None)
        listener = self.listeners.pop(lkey, None)
        if listener is not None:
            listener.close()
            metrics.RELAY_LISTENERS.labels(lkey[2].lower()).dec()

    def _open(self, key: ServiceKey, lkey: ListenerKey, entry: RelayRoute) -> None:
        assert self._nursery is not None
        self.by_service.setdefault(key, set()).add(lkey)
        vip, port, protocol = lkey
        try:
            sock = _bind(vip, port, protocol)
        except OSError as e:
            self._unbindable(lkey, entry, e)
            return
        self.unbindable.pop(lkey, None)
        listener = Listener(entry, sock, Balancer(entry.endpoints, entry.route.affinity_timeout))
        self.listeners[lkey] = listener
        metrics.RELAY_LISTENERS.labels(protocol.lower()).inc()
        serve = self._serve_tcp if protocol == "TCP" else self._serve_udp
        self._nursery.start_soon(serve, listener)

    def _unbindable(self, lkey: ListenerKey, entry: RelayRoute, error: OSError) -> None:
        vip, port, protocol = lkey
        if error.errno in (errno.EACCES, errno.EPERM):
            reason = "privileged"
            why = (
                f"ports below net.ipv4.ip_unprivileged_port_start ({_unprivileged_port_start()}"
                " here) need CAP_NET_BIND_SERVICE; set that sysctl to 0 (a safe sysctl: pod "
                "securityContext.sysctls, or sysctl -w on a host) to relay it"
            )
        elif error.errno == errno.EADDRINUSE:
            reason, why = "in_use", "the address is in use (another relay on this host?)"
        else:
            reason, why = "other", error.strerror or str(error)
        self.unbindable[lkey] = reason
        if lkey not in self._warned:
            self._warned.add(lkey)
            log.warning(
                "userspace proxy: cannot listen on %s %s/%d for %s: %s; every other Service "
                "is still relayed",
                vip,
                protocol.lower(),
                port,
                entry.route.name,
                why,
            )

    def _count_unbindable(self) -> None:
        for reason in ("privileged", "in_use", "other"):
            count = sum(1 for r in self.unbindable.values() if r == reason)
            metrics.RELAY_UNBINDABLE.labels(reason).set(count)

    # --- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener once the store has synced, then relay until cancelled."""
        if not self._driven:
            self.store.subscribe(self._on_change)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._run(task_status)
                finally:
                    self._ready = False  # no binding into a nursery that is closing
        finally:
            for lkey in list(self.listeners):
                self.listeners.pop(lkey).close()
                metrics.RELAY_LISTENERS.labels(lkey[2].lower()).dec()
            self.by_service.clear()
            self.unbindable.clear()
            self._count_unbindable()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        # Not every first list is a visible change (an empty kind publishes nothing): wait for
        # the sync itself, not for a notification.
        await wait_synced(self.store)
        self.zone = self._node_zone()
        self._ready = True
        self.sync()
        log.info(
            "userspace proxy: %d listeners on loopback VIPs (%d ports not bound)",
            len(self.listeners),
            len(self.unbindable),
        )
        task_status.started()
        while True:
            await trio.sleep(self.sweep_interval)
            now = trio.current_time()
            for listener in self.listeners.values():
                listener.balancer.sweep(now)
            if self.unbindable:
                # Try the ports that could not be bound again (an operator may have lowered
                # the sysctl, or freed the port); the warning is not repeated.
                self.sync(
                    {
                        key
                        for key, lkeys in self.by_service.items()
                        if lkeys & self.unbindable.keys()
                    }
                )

    # --- TCP ---------------------------------------------------------------------------------

    async def _serve_tcp(self, listener: Listener) -> None:
        assert self._nursery is not None
        with listener.scope:
            while True:
                try:
                    client, address = await listener.sock.accept()
                except trio.ClosedResourceError:
                    return  # the listener was closed: its Service or port went away
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        # Out of descriptors or memory: back off instead of spinning.
                        log.warning("userspace proxy: accept on %s: %s", listener.entry.vip, e)
                        await trio.sleep(0.1)
                    # Anything else (ECONNABORTED: the client gave up in the backlog) concerns
                    # one connection only.
                    continue
                # The relay forwards what it reads at once; Nagle would only add latency.
                with contextlib.suppress(OSError):  # already reset: the relay will see
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Connection tasks live in the relay's nursery: closing the listener (its
                # Service went away) leaves connections already made alone.
                self._nursery.start_soon(self._relay_tcp, listener, client, address[0])

    async def _relay_tcp(
        self, listener: Listener, client: trio.socket.SocketType, client_ip: str
    ) -> None:
        with client:
            upstream = await self._connect(listener, client_ip)
            if upstream is None:
                _reset(client)
                return
            with upstream:
                await _splice(client, upstream)

    async def _connect(self, listener: Listener, client_ip: str) -> trio.socket.SocketType | None:
        tried: set[str] = set()
        for timeout in self.connect_timeouts:
            endpoint = listener.balancer.pick(client_ip, trio.current_time(), tried)
            if endpoint is None:
                break
            tried.add(endpoint.address)
            connected = False
            try:
                sock = trio.socket.socket(_family(endpoint.ip), socket.SOCK_STREAM)
            except OSError as e:  # out of descriptors: this client is turned away, not kdns
                log.warning("userspace proxy: cannot open a socket: %s", e)
                break
            try:
                with trio.move_on_after(timeout):
                    await sock.connect((endpoint.ip, endpoint.port))
                    connected = True
            except OSError:
                pass  # refused, unreachable: the next endpoint
            finally:
                if not connected:
                    sock.close()
            if connected:
                # The relay forwards what it reads at once; Nagle would only add latency.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                metrics.RELAY_CONNECTIONS.labels("tcp", "relayed").inc()
                return sock
            metrics.RELAY_DIAL_FAILURES.labels("tcp").inc()
            # kube-proxy userspace resets the client's affinity when its endpoint fails.
            listener.balancer.forget(client_ip)
        metrics.RELAY_CONNECTIONS.labels("tcp", "backend_failed" if tried else "no_endpoints").inc()
        return None

    # --- UDP ---------------------------------------------------------------------------------

    async def _serve_udp(self, listener: Listener) -> None:
        with listener.scope:
            async with trio.open_nursery() as sessions:
                while True:
                    try:
                        data, client = await listener.sock.recvfrom(65535)
                    except trio.ClosedResourceError:
                        return  # the listener was closed: its Service or port went away
                    except OSError as e:
                        log.debug("userspace proxy: recvfrom on %s: %s", listener.entry.vip, e)
                        await trio.sleep(0.01)
                        continue
                    await self._forward_datagram(listener, client, data, sessions)

    async def _forward_datagram(
        self,
        listener: Listener,
        client: tuple[str, int],
        data: bytes,
        sessions: trio.Nursery,
    ) -> None:
        for _ in range(2):
            session = listener.sessions.get(client)
            if session is None:
                session = self._open_session(listener, client, sessions)
                if session is None:
                    return  # no endpoint: dropped (no ICMP without a raw socket)
            else:
                listener.sessions.move_to_end(client)
            session.last = trio.current_time()
            try:
                await session.sock.send(data)
            except (trio.ClosedResourceError, OSError):
                # ICMP port unreachable from an earlier datagram: the endpoint is gone. The
                # datagram goes once more, in a new session (to the next endpoint).
                self._end_session(listener, session, failed=True)
                continue
            _UDP_TO_ENDPOINT.inc(len(data))
            return

    def _open_session(
        self, listener: Listener, client: tuple[str, int], nursery: trio.Nursery
    ) -> UdpSession | None:
        endpoint = listener.balancer.pick(client[0], trio.current_time())
        if endpoint is None:
            metrics.RELAY_CONNECTIONS.labels("udp", "no_endpoints").inc()
            return None
        if len(listener.sessions) >= self.max_udp_sessions:
            _, oldest = listener.sessions.popitem(last=False)
            oldest.close()
            metrics.RELAY_CONNECTIONS.labels("udp", "evicted").inc()
        try:
            raw = socket.socket(_family(endpoint.ip), socket.SOCK_DGRAM)
        except OSError as e:  # out of descriptors: this datagram is dropped, not kdns
            log.warning("userspace proxy: cannot open a socket: %s", e)
            return None
        try:
            # A connected UDP socket: the kernel passes on only the endpoint's replies and
            # reports its ICMP errors to us. connect() on a datagram socket sends nothing.
            raw.connect((endpoint.ip, endpoint.port))
        except OSError:
            raw.close()
            metrics.RELAY_DIAL_FAILURES.labels("udp").inc()
            return None
        metrics.RELAY_UDP_SESSIONS.inc()
        session = UdpSession(
            client, endpoint, trio.socket.from_stdlib_socket(raw), trio.current_time()
        )
        listener.sessions[client] = session
        metrics.RELAY_CONNECTIONS.labels("udp", "relayed").inc()
        nursery.start_soon(self._udp_replies, listener, session)
        return session

    async def _udp_replies(self, listener: Listener, session: UdpSession) -> None:
        failed = False
        with session.scope:
            while True:
                with trio.move_on_at(session.last + self.udp_idle_timeout) as idle:
                    try:
                        data = await session.sock.recv(65535)
                    except (trio.ClosedResourceError, OSError):
                        # Refused (ICMP port unreachable), unless we closed it ourselves.
                        failed = session.open
                        break
                if idle.cancelled_caught:
                    if trio.current_time() >= session.last + self.udp_idle_timeout:
                        break  # idle in both directions for the whole timeout
                    continue
                session.last = trio.current_time()
                try:
                    await listener.sock.sendto(data, session.client)
                except (trio.ClosedResourceError, OSError):
                    break
                _UDP_TO_CLIENT.inc(len(data))
        self._end_session(listener, session, failed=failed)

    def _end_session(self, listener: Listener, session: UdpSession, *, failed: bool) -> None:
        if listener.sessions.get(session.client) is session:
            del listener.sessions[session.client]
        session.close()
        if failed:
            metrics.RELAY_DIAL_FAILURES.labels("udp").inc()
            listener.balancer.forget(session.client[0])


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _bind(vip: str, port: int, protocol: str) -> trio.socket.SocketType:
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if protocol == "TCP":
            # Rebinding while old connections sit in TIME_WAIT (a restart, a VIP that moved
            # back). For UDP it would let two sockets share the address: not set.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((vip, port))
        if protocol == "TCP":
            sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return trio.socket.from_stdlib_socket(sock)


def _unprivileged_port_start() -> str:
    try:
        with open(UNPRIVILEGED_PORT_START, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _reset(sock: trio.socket.SocketType) -> None:
    """Close with RST, not FIN: the client learns at once that nobody is there."""
    with contextlib.suppress(OSError):  # already reset by the peer: nothing to say
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


async def _pump(
    source: trio.socket.SocketType,
    sink: trio.socket.SocketType,
    counter: Counter,
    failed: list[bool],
    scope: trio.CancelScope,
) -> None:
    try:
        while True:
            # A fresh buffer per read, not one per connection: an idle connection (a pool's)
            # then holds no buffer at all, a busy one at most BUFFER_SIZE per direction.
            data = await source.recv(BUFFER_SIZE)
            if not data:
                break
            n = len(data)
            sent = await sink.send(data)
            if sent < n:
                view = memoryview(data)
                while sent < n:
                    sent += await sink.send(view[sent:])
            counter.inc(n)
        sink.shutdown(socket.SHUT_WR)  # pass the EOF on: a half-close, the other way still flows
    except (OSError, trio.ClosedResourceError):
        failed[0] = True
        scope.cancel()


async def _splice(client: trio.socket.SocketType, upstream: trio.socket.SocketType) -> None:
    failed = [False]
    async with trio.open_nursery() as nursery:
        scope = nursery.cancel_scope
        nursery.start_soon(_pump, client, upstream, _TCP_TO_ENDPOINT, failed, scope)
        nursery.start_soon(_pump, upstream, client, _TCP_TO_CLIENT, failed, scope)
    if failed[0]:
        # One side reset (or vanished): reset the other too, as a router's RST would reach it.
        _reset(client)
        _reset(upstream)


async def run_relay(
    store: Store, node_name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """`kdns proxy --mode userspace`: relay for the store's Services until cancelled."""
    await Relay(store, node_name).run(task_status=task_status)


def render(store: Store, node_name: str) -> list[str]:
    """`kdns proxy --mode userspace --render`: the VIP map and where each listener relays to."""
    vips = LoopbackVips()
    vips.update(store.services)
    node = store.nodes.get(node_name)
    zone = node.zone if node is not None else ""
    table = relay_table(store.services, store.endpoints, node_name, vips.by_service, zone=zone)
    return _render(table)

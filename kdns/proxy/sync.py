"""The proxy's sync engine: follows the store and keeps a data plane in step with it.

Contract:
- Nothing is written before the store has synced (every watched kind listed once): an early
  write would program a partial cluster and cut connections to Services not yet seen.
- The first sync is a full one; so is every sync after a failed apply (the kernel's state is
  then unknown), one every `full_sync_period` (kube-proxy's FullSyncPeriod, an hour), and one
  whenever the canary finds kdns's rules tampered with. The others are partial: only the
  Services changed since the last successful sync (kube-proxy KEP-3453).
- Bursts are coalesced as kube-proxy's BoundedFrequencyRunner does: a change syncs at once if
  the last sync began at least `min_sync_period` ago, else when that period is over; there is
  a sync (and a canary check) at least every `sync_period`. A failed apply is retried, in
  full, after `min_sync_period`.
- Routes are rebuilt only for changed Services (`routes.service_routes`); the data plane gets
  every route (iptables rewrites its fixed chains from them) and the set of changed keys.
  A change of this node's zone (its Node's `topology.kubernetes.io/zone` label, read for the
  topology hints) rebuilds every route in a full sync, as kube-proxy's OnTopologyChange does.
- The Service CIDRs (every ServiceCIDR's `spec.cidrs`, `routes.service_cidr_ranges`) go to the
  data plane before each full sync; a change of them makes the next sync a full one (nftables
  writes the drop of unallocated ClusterIPs only then, as kube-proxy's setupNFTables does).
- After a successful sync, UDP conntrack entries the change left pointing nowhere are deleted
  (`conntrack.stale_flows`); `on_routes` (the health-check servers) sees the new routes.
- Metrics: sync duration by kind, syncs by result, failures, rules written, programming
  latency (from the change's trigger time, else its arrival, to the apply).
- `resync()` asks for a full sync (a data-plane setting changed); from the trio thread.
- The data plane's blocking calls run in a worker thread, one at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import trio

from kdns import interpreter, metrics
from kdns.proxy import conntrack
from kdns.proxy.dataplane import Applied, ApplyError, Dataplane, Runner, run_command
from kdns.proxy.routes import (
    ServiceKey,
    ServicePortRoute,
    service_cidr_ranges,
    service_routes,
)
from kdns.store import Change, Store
from kdns.synced import wait_synced

log = logging.getLogger(__name__)

FULL_SYNC_PERIOD = 3600.0  # kube-proxy proxyutil.FullSyncPeriod
DEFERRED_DELETE_DELAY = 1.0  # nftables: stale chains are deleted ≥ 1 s after their flush

_ServiceRoutes = dict[ServiceKey, tuple[ServicePortRoute, ...]]  # routes by Service


class SyncEngine:
    def __init__(
        self,
        store: Store,
        dataplane: Dataplane,
        node_name: str,
        *,
        min_sync_period: float = 1.0,
        sync_period: float = 30.0,
        full_sync_period: float = FULL_SYNC_PERIOD,
        clean_conntrack: bool = True,
        runner: Runner = run_command,
        on_routes: Callable[[Sequence[ServicePortRoute]], None] | None = None,
        freeze_full_syncs: bool = False,
    ) -> None:
        self.store = store
        self.dataplane = dataplane
        self.mode = dataplane.mode
        self.node_name = node_name
        self.zone = ""  # this node's zone, as the routes were last built for
        self.service_cidrs: tuple[str, ...] = ()  # the cluster's, for the next full sync
        self.min_sync_period = min_sync_period
        self.sync_period = sync_period
        self.full_sync_period = full_sync_period
        self.clean_conntrack = clean_conntrack
        self.runner = runner
        self.on_routes = on_routes
        self.freeze_full_syncs = freeze_full_syncs
        self._routes: _ServiceRoutes = {}
        self._changed: set[ServiceKey] = set()
        self._trigger: float | None = None  # epoch seconds of the oldest unsynced change
        self._need_full = True
        self._unapplied: _ServiceRoutes = {}
        self._wake = trio.Event()
        self.syncs = 0  # successful syncs
        self.last_success: float | None = None  # time.time() of the last successful sync
        self.last_full = 0.0  # trio clock of the last successful full sync
        self.failing_since: float | None = None
        store.subscribe(self._follow)

    # --- state the health endpoints read ------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self.syncs > 0

    def healthy(self) -> bool:
        """kube-proxy's /healthz: synced, and no change has waited for longer than two sync
        periods (a data plane that keeps failing is not healthy)."""
        if not self.synced:
            return False
        if self.failing_since is not None:
            return time.time() - self.failing_since < 2 * self.sync_period
        return True

    def resync(self) -> None:
        """A full sync as soon as `min_sync_period` allows: a setting of the data plane changed
        (IPVS mode: the node DNS took a ClusterIP over, kdns/proxyapp.py)."""
        self._need_full = True
        self._wake.set()

    def routes(self) -> list[ServicePortRoute]:
        return [r for key in sorted(self._routes) for r in self._routes[key]]

    # --- following the store ------------------------------------------------------------------

    def _follow(self, change: Change) -> None:
        services = change.services
        if change.service_cidrs and self._cidrs() != self.service_cidrs:
            self.service_cidrs = self._cidrs()
            log.info("%s proxy: Service CIDRs %s", self.mode, ", ".join(self.service_cidrs))
            self._need_full = True
            self._wake.set()
        if self.node_name in change.nodes and self._node_zone() != self.zone:
            self.zone = self._node_zone()
            log.info("%s proxy: node %r is in zone %r", self.mode, self.node_name, self.zone)
            self._need_full = True
            services = services | set(self.store.services)
        if not services:
            return
        self._changed |= services
        began = change.trigger_time or time.time()
        if self._trigger is None or began < self._trigger:
            self._trigger = began
        self._wake.set()

    def _cidrs(self) -> tuple[str, ...]:
        return service_cidr_ranges(self.store.service_cidrs.values())

    def _node_zone(self) -> str:
        node = self.store.nodes.get(self.node_name)
        return node.zone if node is not None else ""

    def _route(self, key: ServiceKey) -> tuple[ServicePortRoute, ...]:
        service = self.store.services.get(key)
        if service is None:
            return ()
        endpoints = self.store.endpoints.get(key, ())
        return service_routes(service, endpoints, self.node_name, zone=self.zone)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await wait_synced(self.store)
        log.info("%s proxy: cluster state synced, programming the data plane", self.mode)
        self.service_cidrs = self._cidrs()
        self._changed |= set(self.store.services)
        last_start = -float("inf")
        next_periodic = trio.current_time() + self.sync_period
        while True:
            now = trio.current_time()
            if now >= next_periodic:
                next_periodic = now + self.sync_period
                await self._check_canary()
                await self._sync_now()
                last_start = now
                continue
            due = next_periodic
            if self._changed or self._need_full or self._deferred():
                due = min(due, last_start + self.min_sync_period)
                if self._deferred() and not (self._changed or self._need_full):
                    due = max(due, last_start + DEFERRED_DELETE_DELAY)
            if due <= now:
                last_start = now
                await self._sync_now()
                continue
            self._wake = trio.Event()
            with trio.move_on_at(due):
                await self._wake.wait()

    def _deferred(self) -> bool:
        return self.dataplane.pending_deletes

    async def _check_canary(self) -> None:
        if not self.synced or self._need_full:
            return
        try:
            intact = await trio.to_thread.run_sync(self.dataplane.intact)
        except Exception:  # an unreadable listing is no proof the rules are right
            log.exception("%s proxy: the canary check failed", self.mode)
            intact = False
        if not intact:
            log.warning("%s proxy: kdns's rules were changed by someone else; repairing", self.mode)
            metrics.PROXY_REPAIRS.labels(self.mode).inc()
            self._need_full = True

    async def _sync_now(self) -> None:
        """One sync; a full one, with `freeze_full_syncs`, with the cycle collector paused and
        what it keeps frozen once it succeeded."""
        changed, trigger, full = self._take_changes()
        if not (full and self.freeze_full_syncs):
            await self._sync(changed, trigger, full)
            return
        # A full sync builds every route and renders every rule anew: tens of thousands of
        # containers the sync keeps until the next one, which collections of the older
        # generations walked again and again while holding the GIL (tens of ms each, during
        # which the node DNS answers nothing). Freed by reference counting when replaced
        # (acyclic: tests/proxy/test_sync.py), so frozen they are never walked, and not kept
        # (kdns/interpreter.py).
        with interpreter.collector_paused():
            if await self._sync(changed, trigger, full):
                interpreter.freeze()

    async def _sync(self, changed: set[ServiceKey], trigger: float | None, full: bool) -> bool:
        """Rebuild the changed Services' routes, apply them (in a worker thread), record the
        outcome, then tell the health checks and clean conntrack. Whether the apply succeeded."""
        before, after = self._rebuild_routes(changed)
        routes = self._routes_to_apply(changed, full)
        kind = "full" if full else "partial"
        if full:
            self.dataplane.set_service_cidrs(self.service_cidrs)
        started = time.perf_counter()
        try:
            applied = await trio.to_thread.run_sync(
                self.dataplane.sync, routes, None if full else frozenset(changed)
            )
        except Exception as e:
            self._sync_failed(e, kind, changed, before, trigger)
            return False
        duration = time.perf_counter() - started
        ports = self._sync_succeeded(kind, changed, trigger, applied, duration)
        if self.on_routes is not None:
            self.on_routes(routes if len(routes) == ports else self.routes())
        if self.clean_conntrack:
            await self._clean_conntrack(routes, changed, before, after)
        return True

    def _take_changes(self) -> tuple[set[ServiceKey], float | None, bool]:
        """(changed Services, the oldest change's trigger time, whether this sync is full),
        taken from the pending state, which starts over empty."""
        changed, self._changed = self._changed, set()
        trigger, self._trigger = self._trigger, None
        full = self._need_full or trio.current_time() - self.last_full >= self.full_sync_period
        # Cleared now, not after the apply: a change that needs a full sync (Service CIDRs, the
        # zone) arriving while this one runs in its thread must get one of its own.
        self._need_full = False
        return changed, trigger, full

    def _rebuild_routes(self, changed: set[ServiceKey]) -> tuple[_ServiceRoutes, _ServiceRoutes]:
        """Rebuilds the routes of the `changed` Services; returns (before, after): their routes
        as the kernel had them and as they are now, for the conntrack clean-up."""
        # What the kernel had for these Services: after a failed apply, what it had before it.
        before = {k: self._routes.get(k, ()) for k in changed if k in self._routes}
        before.update(self._unapplied)
        self._unapplied = {}
        for key in changed:
            routes = self._route(key)
            if routes:
                self._routes[key] = routes
            else:
                self._routes.pop(key, None)
        after = {k: self._routes.get(k, ()) for k in changed}
        return before, after

    def _routes_to_apply(self, changed: set[ServiceKey], full: bool) -> list[ServicePortRoute]:
        """The routes handed to the data plane."""
        # A partial nftables sync reads only the changed Services' routes: handing it only
        # those keeps the work before the apply O(change) (iptables and IPVS need them all).
        if full or self.dataplane.needs_all_routes:
            return self.routes()
        return [r for key in sorted(changed) for r in self._routes.get(key, ())]

    def _sync_failed(
        self,
        error: Exception,
        kind: str,
        changed: set[ServiceKey],
        before: _ServiceRoutes,
        trigger: float | None,
    ) -> None:
        """A failed apply: logged and counted, its changes put back for a full retry."""
        # ApplyError is the kernel refusing; anything else is a bug, but the proxy keeps
        # the last rules and retries in full rather than dying (docs/architecture.md §10: never
        # a crash).
        if isinstance(error, ApplyError):
            log.error("%s proxy: %s sync failed, retrying in full: %s", self.mode, kind, error)
        else:
            log.error("%s proxy: %s sync failed, retrying in full", self.mode, kind, exc_info=error)
        metrics.PROXY_SYNC_FAILURES.labels(self.mode, kind).inc()
        metrics.PROXY_SYNCS.labels(self.mode, kind, "error").inc()
        self._need_full = True
        self._changed |= changed
        self._unapplied = before
        if trigger is not None and (self._trigger is None or trigger < self._trigger):
            self._trigger = trigger
        if self.failing_since is None:
            self.failing_since = time.time()

    def _sync_succeeded(
        self,
        kind: str,
        changed: set[ServiceKey],
        trigger: float | None,
        applied: Applied,
        duration: float,
    ) -> int:
        """A successful apply: the health state, the metrics and the log line. Returns the
        number of service ports now programmed."""
        self.failing_since = None
        if kind == "full":
            self.last_full = trio.current_time()
        self.syncs += 1
        self.last_success = time.time()
        metrics.PROXY_SYNC_DURATION.labels(self.mode, kind).observe(duration)
        metrics.PROXY_SYNCS.labels(self.mode, kind, "ok").inc()
        metrics.PROXY_RULES_WRITTEN.labels(self.mode).inc(applied.rules)
        metrics.PROXY_LAST_SYNC_RULES.labels(self.mode).set(applied.rules)
        metrics.PROXY_LAST_SYNC.labels(self.mode).set(self.last_success)
        ports = sum(len(r) for r in self._routes.values())
        metrics.PROXY_SERVICES.labels(self.mode).set(ports)
        if trigger is not None:
            metrics.PROXY_PROGRAMMING_DURATION.observe(max(0.0, self.last_success - trigger))
        log.log(
            logging.INFO if kind == "full" or changed else logging.DEBUG,
            "%s proxy: %s sync of %d service ports (%d changed Services): %d rules, %d bytes, "
            "%.0f ms",
            self.mode,
            kind,
            ports,
            len(changed),
            applied.rules,
            applied.size,
            duration * 1000,
        )
        return ports

    async def _clean_conntrack(
        self,
        routes: Sequence[ServicePortRoute],
        changed: set[ServiceKey],
        before: _ServiceRoutes,
        after: _ServiceRoutes,
    ) -> None:
        """Deletes the UDP conntrack entries this sync left pointing nowhere."""
        if self.syncs == 1:
            # After a (re)start there is no "before": reconcile against the kernel instead.
            await trio.to_thread.run_sync(self._reconcile_conntrack_safely, routes)
        elif changed:
            flows = conntrack.stale_flows(before, after)
            if flows:
                await trio.to_thread.run_sync(self._delete_flows, flows)

    def _reconcile_conntrack(self, routes: Sequence[ServicePortRoute]) -> None:
        entries: list[conntrack.Entry] = []
        for family in self.dataplane.families:
            argv = ["conntrack", "-L", "-f", "ipv4" if family == 4 else "ipv6", "-p", "udp"]
            status, out, err = self.runner(argv, None)
            if status != 0:
                log.warning("conntrack: %s: %s", " ".join(argv), err.strip())
                continue
            entries += conntrack.parse_entries(out, family)
        flows = conntrack.unused_dnat_flows(entries, routes)
        if flows:
            log.info("conntrack: %d UDP flows point at endpoints that are gone", len(flows))
            self._delete_flows(flows)

    def _reconcile_conntrack_safely(self, routes: Sequence[ServicePortRoute]) -> None:
        try:
            self._reconcile_conntrack(routes)
        except Exception:  # clean-up is best effort: the rules are already right
            log.exception("conntrack: reconciliation failed")

    def _delete_flows(self, flows: list[conntrack.Flow]) -> None:
        for flow in flows:
            status, out, err = self.runner(conntrack.argv(flow), None)
            # conntrack exits 1 when the filter matched nothing: that is not a failure.
            if status == 0 or "0 flow entries" in err + out:
                metrics.PROXY_CONNTRACK_DELETES.labels("ok").inc()
            else:
                metrics.PROXY_CONNTRACK_DELETES.labels("error").inc()
                log.warning("conntrack: %s: %s", " ".join(conntrack.argv(flow)), err.strip())

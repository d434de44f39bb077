"""The Kubernetes source in one process: kdns (`app.build` + `app.serve`) against the fake API server.

Every test runs the real `kubernetes` client over HTTPS against `tests/kubeapi`'s server, asks
over real UDP with dnspython's trio backend, and reads /ready and /metrics over HTTP. Timeouts and
the backoff are shortened (`FAST`) so fault episodes take seconds; every wait is bounded, every
fault is cleared by the `kube_api` fixture. Metrics live in the process-wide registry, so tests
compare a snapshot before and after, never absolute values.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.asyncbackend
import dns.asyncquery
import dns.message
import dns.rcode
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kdns.app import App, build, serve
from kdns.config import Config
from tests.builders import pod_fqdn, service_fqdn
from tests.kubeapi import objects
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer

__all__ = ["kube_api", "kubeconfig"]  # fixtures, re-exported for pytest

WAIT = 5.0  # the bound on any single wait; a passing test never waits this long
BACKEND = dns.asyncbackend.get_backend("trio")
KINDS = ("endpointslices", "namespaces", "services")
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"

Snapshot = dict[tuple[str, frozenset[tuple[str, str]]], float]
Shape = tuple[str, tuple[str, ...]]


def fast_options(
    read_timeout: float = 1.0, initial: float = 0.1, maximum: float = 0.8
) -> dict[str, Any]:
    return {
        "reflector": {
            "read_timeout": read_timeout,
            "connect_timeout": 1.0,
            "watch_timeout": (5, 10),
        },
        "backoff": {"initial": initial, "maximum": maximum, "rng": lambda: 0.0},
    }


def shape(response: dns.message.Message) -> Shape:
    """(rcode, sorted answer rdata) — what `dig +short` plus the status line show."""
    rdata = (r.to_text() for rrset in response.answer for r in rrset)
    return dns.rcode.to_text(response.rcode()), tuple(sorted(rdata))


def ok(*ips: str) -> Shape:
    return "NOERROR", tuple(sorted(ips))


NXDOMAIN: Shape = ("NXDOMAIN", ())
SERVFAIL: Shape = ("SERVFAIL", ())


def value(snapshot: Snapshot, name: str, **labels: str) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def delta(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def ready_addresses(eps: dict[str, Any]) -> tuple[str, ...]:
    return tuple(e["addresses"][0] for e in eps["endpoints"] if e["conditions"]["ready"])


async def http_get(port: int, path: str) -> tuple[int, str]:
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: kdns\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@dataclass
class Kdns:
    app: App
    ports: dict[str, int]
    api: ApiServer

    async def ask(self, name: str, rdtype: str = "A") -> Shape:
        query = dns.message.make_query(name, rdtype)
        response = await dns.asyncquery.udp(
            query, "127.0.0.1", port=self.ports["dns"], timeout=WAIT, backend=BACKEND
        )
        return shape(response)

    async def wait_for(
        self, name: str, expected: Shape, rdtype: str = "A", timeout: float = WAIT
    ) -> float:
        """Poll until `name` answers `expected`; returns how long that took."""
        began = trio.current_time()
        got: Shape | None = None
        with trio.move_on_after(timeout):
            while (got := await self.ask(name, rdtype)) != expected:
                await trio.sleep(0.02)
            return trio.current_time() - began
        pytest.fail(f"{name} {rdtype}: wanted {expected} within {timeout} s, last got {got}")

    async def ready(self) -> tuple[int, str]:
        return await http_get(self.ports["ready"], "/ready")

    async def metrics(self) -> Snapshot:
        status, body = await http_get(self.ports["metrics"], "/metrics")
        assert status == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }

    async def metrics_until(
        self,
        condition: Callable[[Snapshot], bool],
        what: str,
        *,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
        timeout: float = WAIT,
    ) -> Snapshot:
        """Poll /metrics until `condition` holds of a snapshot, and return that snapshot;
        `meanwhile` runs before every poll (to check what must hold all along)."""
        with trio.move_on_after(timeout):
            while True:
                if meanwhile is not None:
                    await meanwhile()
                snapshot = await self.metrics()
                if condition(snapshot):
                    return snapshot
                await trio.sleep(0.05)
        pytest.fail(f"timed out after {timeout} s waiting for {what}")

    async def wait_synced(self, timeout: float = WAIT) -> None:
        with trio.move_on_after(timeout):
            while (await self.ready())[0] != 200:
                await trio.sleep(0.02)
            return
        pytest.fail(f"not synced after {timeout} s: {self.app.store.unsynced_kinds()}")

    def reflector(self, name: str) -> Any:
        return self.app.source.reflectors[name]  # type: ignore[attr-defined]


async def start(
    nursery: trio.Nursery,
    api: ApiServer,
    kubeconfig: Path,
    *,
    pods: str = "insecure",
    synced: bool = True,
    keys: dict[str, Any] | None = None,
    page_size: int | None = None,
    **options: float,
) -> Kdns:
    config = Config().with_overrides(
        **(keys or {}),
        kubeconfig=str(kubeconfig),
        dns_addr="127.0.0.1:0",
        health_addr="127.0.0.1:0",
        ready_addr="127.0.0.1:0",
        metrics_addr="127.0.0.1:0",
        pods=pods,
    )
    kube_options = fast_options(**options)
    if page_size is not None:
        kube_options["reflector"]["page_size"] = page_size  # objects per list page (`limit`)
    app = build(config, kube_options=kube_options)
    for attempt in range(5):
        try:
            ports = await nursery.start(serve, app)
            break
        except OSError as e:
            # Port 0: the DNS server gives TCP the port the kernel chose for UDP, which a TCP
            # client socket may hold (kdns/dns/server.py `_bind` does not retry): pick again.
            if e.errno != errno.EADDRINUSE or attempt == 4:
                raise
    kdns = Kdns(app, ports, api)
    if synced:
        await kdns.wait_synced()
    return kdns


async def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def make_api(tmp_path: Path, **options: Any) -> tuple[ApiServer, Path]:
    api = ApiServer(bookmark_interval=0.2, **options)
    api.create("namespaces", objects.namespace("default"))
    api.start()
    return api, api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def own_api(tmp_path: Path) -> Iterator[Any]:
    """`own_api(**ApiServer options)` → (server, kubeconfig path); faults cleared, then stopped."""
    made: list[ApiServer] = []

    def make(**options: Any) -> tuple[ApiServer, Path]:
        api, path = make_api(tmp_path, **options)
        made.append(api)
        return api, path

    yield make
    for api in made:
        api.faults.clear()
        api.stop()


# --- start-up and outages ----------------------------------------------------------------------


async def test_api_down_at_start_servfail_then_answers_once_synced(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    web = kube_api.create("services", objects.service("default", "web"))
    web_ip = web["spec"]["clusterIP"]
    kube_api.faults.refuse_connections(True)
    k = await start(nursery, kube_api, kubeconfig, synced=False)
    before = await k.metrics()

    async def unsynced() -> None:
        # Unsynced: a name that exists and one that does not both get SERVFAIL, never NXDOMAIN
        # (clients cache negatives), and /ready names every kind still missing.
        assert await k.ask(service_fqdn("web")) == SERVFAIL
        assert await k.ask(service_fqdn("missing")) == SERVFAIL
        assert await k.ready() == (503, "not synced: endpointslices, namespaces, services\n")

    def retried(snapshot: Snapshot) -> bool:
        return all(
            delta(before, snapshot, "kdns_kube_errors_total", kind=kind, reason="connection") >= 2
            for kind in ("namespaces", "services")
        )

    # It keeps trying (backoff 0.1, 0.2, 0.4 …), and says why it fails.
    during = await k.metrics_until(retried, "two failed tries of each kind", meanwhile=unsynced)
    assert value(during, "kdns_kube_synced", kind="services") == 0

    kube_api.faults.refuse_connections(False)
    await k.wait_synced()
    assert await k.ready() == (200, "OK\n")
    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    assert await k.ask(service_fqdn("missing")) == NXDOMAIN
    after = await k.metrics()
    for kind in KINDS:
        assert value(after, "kdns_kube_synced", kind=kind) == 1


async def test_api_killed_after_sync_keeps_answers_and_backs_off(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    old_ip = kube_api.create("services", objects.service("default", "old"))["spec"]["clusterIP"]
    k = await start(nursery, kube_api, kubeconfig)
    await k.wait_for(service_fqdn("web"), ok(web_ip))
    lists = kube_api.stats.count(kind="list")
    before = await k.metrics()

    kube_api.faults.refuse_connections(True)
    # Changes while kdns cannot see them.
    new_ip = kube_api.create("services", objects.service("default", "new"))["spec"]["clusterIP"]
    kube_api.delete("services", "default", "old")

    async def last_known_state() -> None:
        # The last known state keeps serving, unchanged: no downgrade during an outage.
        assert await k.ask(service_fqdn("web")) == ok(web_ip)
        assert await k.ask(service_fqdn("old")) == ok(old_ip)
        assert await k.ask(service_fqdn("new")) == NXDOMAIN
        assert await k.ask(service_fqdn("missing")) == NXDOMAIN
        assert (await k.ready())[0] == 200

    def failures(snapshot: Snapshot, kind: str) -> float:
        return sum(
            delta(before, snapshot, "kdns_kube_errors_total", kind=kind, reason=reason)
            for reason in ("connection", "protocol")
        )

    began = trio.current_time()
    after = await k.metrics_until(
        lambda snapshot: all(failures(snapshot, kind) >= 4 for kind in KINDS),
        "four failed tries of each kind",
        meanwhile=last_known_state,
        timeout=4 * WAIT,
    )
    # Backoff 0.1 s doubling to 0.8 s (no jitter): the fourth failure comes 0.1 + 0.2 + 0.4 s
    # after the first at the soonest. A hot loop would have made hundreds by then; a stuck
    # reflector would never get there.
    assert trio.current_time() - began >= 0.7
    for kind in KINDS:
        assert 4 <= failures(after, kind) <= 8, (kind, failures(after, kind))

    kube_api.faults.refuse_connections(False)
    await k.wait_for(service_fqdn("new"), ok(new_ip))
    await k.wait_for(service_fqdn("old"), NXDOMAIN)
    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    # The watch resumed from the resourceVersion it had: the history replayed, no relist.
    assert kube_api.stats.count(kind="list") == lists
    assert k.reflector("services").lists == 1


# --- 410 Gone ----------------------------------------------------------------------------------


@pytest.mark.parametrize("expired_as_event", [False, True], ids=["http-410", "error-event"])
async def test_410_relists_and_unchanged_names_never_fail(
    own_api: Any, nursery: trio.Nursery, expired_as_event: bool
) -> None:
    api, path = own_api(expired_as_event=expired_as_event)
    stable = {
        service_fqdn(f"stable-{i}"): api.create(
            "services", objects.service("default", f"stable-{i}")
        )["spec"]["clusterIP"]
        for i in range(3)
    }
    for i in range(2):
        api.create("services", objects.service("default", f"doomed-{i}"))
    k = await start(nursery, api, path)
    await k.wait_for(service_fqdn("doomed-0"), ok(objects.cluster_ip_for("default", "doomed-0")))
    before = await k.metrics()

    bad: list[tuple[str, Shape]] = []
    asked = 0
    stop = trio.Event()

    async def keep_asking() -> None:
        nonlocal asked
        while not stop.is_set():
            for name, ip in stable.items():
                got = await k.ask(name)
                asked += 1
                if got != ok(ip):
                    bad.append((name, got))
            await trio.sleep(0.005)

    nursery.start_soon(keep_asking)
    await wait_until(lambda: asked >= 10, "answers before the break")
    # The watch breaks, services are deleted in the gap, and the history is compacted past the
    # reflector's resourceVersion: the next watch must get 410 and relist.
    api.faults.refuse_connections(True)
    for i in range(2):
        api.delete("services", "default", f"doomed-{i}")
    api.compact()
    await k.metrics_until(
        lambda snapshot: (
            delta(before, snapshot, "kdns_kube_errors_total", kind="services", reason="connection")
            >= 1
        ),
        "a refused reconnect of the services watch",
    )
    api.faults.refuse_connections(False)
    for i in range(2):
        await k.wait_for(service_fqdn(f"doomed-{i}"), NXDOMAIN)
    relisted = asked
    await wait_until(lambda: asked >= relisted + 10, "answers after the relist")
    stop.set()

    after = await k.metrics()
    assert bad == []
    assert asked >= 30
    assert delta(before, after, "kdns_kube_relists_total", kind="services", reason="expired") == 1
    assert k.reflector("services").lists == 2
    if expired_as_event:
        assert api.stats.statuses[410] == 0  # 200 + an ERROR event, as the watch cache does
    else:
        assert api.stats.statuses[410] >= 1


async def test_error_event_410_on_an_open_watch_relists(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    k = await start(nursery, kube_api, kubeconfig)
    before = await k.metrics()
    lists = kube_api.stats.count(kind="list", resource="services")

    # One watch expired mid-stream (ERROR event), the next one expired at once.
    kube_api.faults.expire_next_watch(n=1, resource="services")
    assert kube_api.faults.expire_watches(resource="services") == 1
    await wait_until(
        lambda: kube_api.stats.count(kind="list", resource="services") >= lists + 2,
        "two relists of services",
    )
    await wait_until(lambda: kube_api.stats.open_watches("services") == 1, "a new watch")
    after = await k.metrics()
    assert delta(before, after, "kdns_kube_relists_total", kind="services", reason="expired") == 2
    assert delta(before, after, "kdns_kube_relists_total", kind="namespaces", reason="expired") == 0
    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    # Still following: a service created afterwards resolves.
    new = kube_api.create("services", objects.service("default", "after"))
    await k.wait_for(service_fqdn("after"), ok(new["spec"]["clusterIP"]))


async def test_a_server_that_expires_every_watch_cannot_make_kdns_spin(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    """Every watch answered with an ERROR 410: relist → watch → 410 → relist … must back off.

    The module's contract: "a misbehaving server cannot make us spin"; client-go waits its
    backoff between ListAndWatch rounds (wait.BackoffUntil), 410 included."""
    kube_api.create("services", objects.service("default", "web"))
    k = await start(nursery, kube_api, kubeconfig)
    lists = kube_api.stats.count(kind="list", resource="services")
    kube_api.faults.expire_next_watch(n=None, resource="services")
    began = trio.current_time()
    kube_api.faults.expire_watches(resource="services")
    await wait_until(
        lambda: kube_api.stats.count(kind="list", resource="services") - lists >= 4,
        "four relists of services",
        timeout=4 * WAIT,
    )
    took = trio.current_time() - began
    relists = kube_api.stats.count(kind="list", resource="services") - lists
    kube_api.faults.clear()
    # With the test backoff (0.1 s doubling to 0.8 s) four rounds take 0.1 + 0.2 + 0.4 s at the
    # soonest; a full list of every service hundreds of times a second is what an operator must
    # never see.
    assert took >= 0.7, f"four full lists of services in {took:.2f} s"
    assert relists <= 5, f"{relists} full lists of services in {took:.2f} s"
    assert await k.ask(service_fqdn("web")) == ok(objects.cluster_ip_for("default", "web"))


# --- silent, broken and garbage watches --------------------------------------------------------


async def test_silent_hang_reconnects_after_read_timeout_without_leaks(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    k = await start(nursery, kube_api, kubeconfig, read_timeout=0.4, maximum=0.1)
    # Settled: every kind watching, so the threads counted are those of a steady state.
    await wait_until(lambda: kube_api.stats.open_watches() == len(KINDS), "one watch per kind")
    threads_before = threading.active_count()
    before = await k.metrics()
    watches = kube_api.stats.count(kind="watch")

    kube_api.faults.hang_next_watch(n=None)  # every watch: headers, then silence
    kube_api.faults.reset_watches()
    max_threads = max_open = 0
    cycles = 20
    with trio.fail_after(20):
        # +3: the three watches opened into the hang right after the reset.
        while kube_api.stats.count(kind="watch") < watches + 3 + cycles:
            max_threads = max(max_threads, threading.active_count())
            max_open = max(max_open, kube_api.stats.open_watches())
            assert await k.ask(service_fqdn("web")) == ok(web_ip)
            await trio.sleep(0.02)
    after = await k.metrics()

    timeouts = sum(
        delta(before, after, "kdns_kube_errors_total", kind=kind, reason="read_timeout")
        for kind in KINDS
    )
    assert timeouts >= cycles  # each hung watch was given up by the client's read timeout
    # One watch per kind, plus hung ones the server has not yet seen closed (it polls every
    # 0.2 s); a leak would pile up one per cycle.
    assert max_open <= 3 * len(KINDS), max_open
    # Threads (kdns's workers and the fake server's per-connection ones) stay bounded.
    assert max_threads <= threads_before + 8, (threads_before, max_threads)

    kube_api.faults.clear()
    new = kube_api.create("services", objects.service("default", "after-hang"))
    await k.wait_for(service_fqdn("after-hang"), ok(new["spec"]["clusterIP"]))
    await wait_until(lambda: kube_api.stats.open_watches() == len(KINDS), "one watch per kind")


async def test_garbage_and_huge_lines_are_skipped_and_counted(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    # A read timeout far past the bookmark interval: on a loaded machine a 1 s timeout could
    # end an idle watch before `reset_watches`, and that restart counts under another reason.
    k = await start(nursery, kube_api, kubeconfig, read_timeout=10.0)
    reflector = k.reflector("services")
    lines = [
        (b"this is not json", "invalid_json"),
        (b"{" + b"x" * (5 << 20), "invalid_json"),  # a 5 MiB line
        (b'{"type":"ADDED","object":{"kind":"Service"}}', "no_metadata"),
        (b'{"type":"RENAMED","object":{"metadata":{"name":"x"}}}', "unknown_type"),
        (
            b'{"type":"ADDED","object":{"metadata":{"name":"bad","namespace":"default"},'
            b'"spec":{"ports":"nope","clusterIP":"not-an-ip"}}}',
            "invalid_object",
        ),
        (b"[1, 2, 3]", "invalid_event"),
    ]
    for i, (line, reason) in enumerate(lines):
        before = await k.metrics()
        watches = reflector.watches
        kube_api.faults.garbage_next_watch(line, resource="services")
        if i == 0:
            kube_api.faults.huge_line_next_watch(5 << 20, resource="services")
        kube_api.faults.reset_watches("services")
        await wait_until(lambda w=watches: reflector.watches > w, "a new services watch")
        # The same watch goes on: an event after the bad line is applied.
        created = kube_api.create("services", objects.service("default", f"after-{i}"))
        await k.wait_for(service_fqdn(f"after-{i}"), ok(created["spec"]["clusterIP"]))
        after = await k.metrics()
        skipped = delta(
            before, after, "kdns_kube_events_skipped_total", kind="services", reason=reason
        )
        assert skipped == 1, (line[:60], reason)
        assert reflector.watches == watches + 1, "the bad line must not end the watch"
        assert delta(before, after, "kdns_kube_errors_total", kind="services", reason="protocol")
        assert not delta(
            before, after, "kdns_kube_errors_total", kind="services", reason="watch_error"
        )
    assert await k.ask(service_fqdn("bad")) == NXDOMAIN
    # The valid 5 MiB bookmark was read as a bookmark: the reflector kept up.
    await wait_until(
        lambda: reflector.resource_version == str(kube_api.resource_version), "bookmarks"
    )


async def test_bookmarks_advance_the_resource_version_and_spare_a_relist(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    kube_api.create("services", objects.service("default", "web"))
    k = await start(nursery, kube_api, kubeconfig)
    # Counted before the pods exist: a bookmark carrying their resourceVersion can only be sent
    # after this (taken after them, one sent meanwhile would already be in the count).
    bookmarks = kube_api.stats.bookmarks_sent
    # Pods are not watched (pods: insecure): creating some moves the global resourceVersion
    # without an event on any watched kind. Only bookmarks can tell the reflectors.
    for i in range(3):
        kube_api.create("pods", objects.pod("default", f"p-{i}"))
    current = str(kube_api.resource_version)
    before = await k.metrics()
    await wait_until(
        lambda: all(k.reflector(kind).resource_version == current for kind in KINDS),
        f"every reflector at resourceVersion {current}",
    )
    assert kube_api.stats.bookmarks_sent > bookmarks

    lists, watches = kube_api.stats.count(kind="list"), kube_api.stats.count(kind="watch")
    gone = kube_api.stats.statuses[410]
    assert kube_api.compact() == int(current)
    assert kube_api.faults.reset_watches() == len(KINDS)
    await wait_until(
        lambda: (
            kube_api.stats.count(kind="watch") >= watches + len(KINDS)
            and kube_api.stats.open_watches() == len(KINDS)
        ),
        "every kind watching again",
    )
    after = await k.metrics()
    # Resumed from the bookmarked resourceVersion, which the compaction kept: no 410, no list.
    assert kube_api.stats.statuses[410] == gone
    assert kube_api.stats.count(kind="list") == lists
    for kind in KINDS:
        assert not delta(before, after, "kdns_kube_relists_total", kind=kind, reason="expired")
        assert k.reflector(kind).lists == 1
    assert not delta(before, after, "kdns_kube_events_total", kind="services", type="ADDED")


async def test_instant_closes_are_backed_off(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    k = await start(nursery, kube_api, kubeconfig)
    before = await k.metrics()
    watches = {kind: kube_api.stats.count(kind="watch", resource=kind) for kind in KINDS}

    def new_watches() -> dict[str, int]:
        return {
            kind: kube_api.stats.count(kind="watch", resource=kind) - watches[kind]
            for kind in KINDS
        }

    kube_api.faults.close_watches_immediately(n=None)
    began = trio.current_time()
    kube_api.faults.reset_watches()
    await wait_until(
        lambda: min(new_watches().values()) >= 4, "four closed watches of each kind", 4 * WAIT
    )
    took = trio.current_time() - began
    counts = new_watches()
    after = await k.metrics()
    kube_api.faults.clear()
    # reset → 0.1 s → close → 0.2 s → close → 0.4 s → close: the fourth watch of a kind comes
    # 0.7 s after the reset at the soonest; without the backoff it would be a hot loop.
    assert took >= 0.7, (took, counts)
    for kind in KINDS:
        assert 4 <= counts[kind] <= 6, counts
        closed = delta(before, after, "kdns_kube_errors_total", kind=kind, reason="closed_early")
        assert closed >= counts[kind] - 1, (kind, closed, counts)
    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    new = kube_api.create("services", objects.service("default", "after"))
    await k.wait_for(service_fqdn("after"), ok(new["spec"]["clusterIP"]))


@pytest.mark.parametrize("status", [500, 429])
async def test_list_errors_are_retried_after_backoff(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery, status: int
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    kube_api.faults.error_next(status, n=2, resource="services", kind="list")
    began = trio.current_time()
    k = await start(nursery, kube_api, kubeconfig, synced=False)
    before = await k.metrics()
    assert await k.ask(service_fqdn("web")) == SERVFAIL
    await k.wait_synced()
    took = trio.current_time() - began
    after = await k.metrics()
    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    assert kube_api.stats.count(kind="list", resource="services") == 3
    assert kube_api.stats.statuses[status] == 2
    assert delta(before, after, "kdns_kube_errors_total", kind="services", reason=f"http_{status}")
    assert value(after, "kdns_kube_errors_total", kind="services", reason=f"http_{status}") >= 2
    assert took >= 0.1 + 0.2  # the two backoff delays were waited out


# --- kinds -------------------------------------------------------------------------------------


async def test_endpoints_fallback_without_discovery_v1(own_api: Any, nursery: trio.Nursery) -> None:
    api, path = own_api(discovery_v1=False)
    api.create("services", objects.service("default", "db", headless=True))
    api.create("endpoints", objects.endpoints("default", "db", addresses=["10.1.0.1", "10.1.0.2"]))
    k = await start(nursery, api, path)
    assert await k.ask(service_fqdn("db")) == ok("10.1.0.1", "10.1.0.2")
    assert api.stats.count(resource="endpointslices") == 0
    assert api.stats.count(kind="watch", resource="endpoints") >= 1
    assert (await k.metrics())[("kdns_kube_synced", frozenset({("kind", "endpoints")}))] == 1

    scaled = ready_addresses(api.scale_headless("default", "db", 3))
    assert len(scaled) == 3
    await k.wait_for(service_fqdn("db"), ok(*scaled), timeout=1.0)
    one = ready_addresses(api.scale_headless("default", "db", 1, 1))
    await k.wait_for(service_fqdn("db"), ok(*one), timeout=1.0)
    api.delete("endpoints", "default", "db")
    await k.wait_for(service_fqdn("db"), NXDOMAIN, timeout=1.0)


async def test_service_lifecycle_is_visible_within_a_second(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    k = await start(nursery, kube_api, kubeconfig)
    web = kube_api.create("services", objects.service("default", "web"))
    await k.wait_for(service_fqdn("web"), ok(web["spec"]["clusterIP"]), timeout=1.0)

    kube_api.create("services", objects.service("default", "db", headless=True, ports=[5432]))
    await k.wait_for(service_fqdn("db"), NXDOMAIN, timeout=1.0)  # no endpoints yet
    three = ready_addresses(kube_api.scale_headless("default", "db", 3))
    await k.wait_for(service_fqdn("db"), ok(*three), timeout=1.0)
    five = ready_addresses(kube_api.scale_headless("default", "db", 5, 1))
    assert len(five) == 5
    await k.wait_for(service_fqdn("db"), ok(*five), timeout=1.0)

    # Update: a named port on the ClusterIP service, and its SRV name appears.
    srv = service_fqdn("_http._tcp.web")
    assert await k.ask(srv, "SRV") == NXDOMAIN
    port = {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080}
    kube_api.patch("services", "default", "web", {"spec": {"ports": [port]}})
    await k.wait_for(srv, ok("0 100 8080 web.default.svc.cluster.local."), "SRV", timeout=1.0)

    one = ready_addresses(kube_api.scale_headless("default", "db", 1))
    await k.wait_for(service_fqdn("db"), ok(*one), timeout=1.0)
    kube_api.delete("services", "default", "db")
    await k.wait_for(service_fqdn("db"), NXDOMAIN, timeout=1.0)
    kube_api.delete("services", "default", "web")
    await k.wait_for(service_fqdn("web"), NXDOMAIN, timeout=1.0)


async def test_trigger_time_feeds_the_programming_duration_histogram(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    kube_api.create("services", objects.service("default", "db", headless=True))
    k = await start(nursery, kube_api, kubeconfig)
    before = await k.metrics()
    eps = objects.endpointslice("default", "db", addresses=["10.1.2.3"])
    # The controller saw the change 3 s ago: the histogram measures from then, not from arrival.
    triggered = datetime.fromtimestamp(int(time.time()) - 3, UTC)
    eps["metadata"]["annotations"][TRIGGER_TIME] = triggered.strftime("%Y-%m-%dT%H:%M:%SZ")
    kube_api.create("endpointslices", eps)
    await k.wait_for(service_fqdn("db"), ok("10.1.2.3"), timeout=1.0)
    after = await k.metrics()
    name = "kdns_kubernetes_dns_programming_duration_seconds"
    label = {"service_kind": "headless_with_selector"}
    assert delta(before, after, f"{name}_count", **label) == 1
    assert 2.5 <= delta(before, after, f"{name}_sum", **label) <= 10


async def test_a_change_dns_cannot_see_keeps_the_cached_answer(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    k = await start(nursery, kube_api, kubeconfig)
    cache = k.app.handler.cache

    async def counts() -> tuple[float, float, int]:
        # From /metrics: UDP hits are answered (and counted) by the receive thread, so the
        # cache's own counters see only what reached trio; the metrics add both.
        # Only this app's listener: earlier tests' apps in this process share the registry.
        snapshot = await k.metrics()
        mine = f":{k.ports['dns']}"

        def total(name: str) -> float:
            return sum(
                v
                for (n, labels), v in snapshot.items()
                if n == name and dict(labels).get("server", "").endswith(mine)
            )

        return total("kdns_cache_hits_total"), total("kdns_cache_misses_total"), len(cache)

    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    hits, misses, entries = await counts()
    assert hits >= 1

    async def edit(patch: dict[str, Any]) -> None:
        before = await k.metrics()
        rv = str(kube_api.patch("services", "default", "web", patch)["metadata"]["resourceVersion"])
        reflector = k.reflector("services")
        await wait_until(lambda: int(reflector.resource_version) >= int(rv), f"rv {rv}")
        after = await k.metrics()
        assert delta(before, after, "kdns_kube_events_total", kind="services", type="MODIFIED")

    await edit({"metadata": {"labels": {"team": "blue"}, "annotations": {"note": "hi"}}})
    for _ in range(3):
        assert await k.ask(service_fqdn("web")) == ok(web_ip)
    assert await counts() == (hits + 3, misses, entries)

    # The control: a change DNS does see (a new port) drops the entry, so the next ask misses.
    await edit({"spec": {"ports": [{"protocol": "TCP", "port": 81, "targetPort": 81}]}})
    assert await k.ask(service_fqdn("web")) == ok(web_ip)
    assert (await counts())[1] == misses + 1


# --- pods --------------------------------------------------------------------------------------


async def test_pods_verified_watches_pods_and_answers_running_pods_only(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    running = objects.pod_ip_for("default", "running")
    done = objects.pod_ip_for("default", "done")
    kube_api.create("pods", objects.pod("default", "running"))
    kube_api.create("pods", objects.pod("default", "done", phase="Succeeded"))
    kube_api.faults.error_next(500, n=None, resource="pods", kind="list")
    k = await start(nursery, kube_api, kubeconfig, pods="verified", synced=False)
    assert "pods" in k.app.store.watched
    await wait_until(lambda: k.app.store.unsynced_kinds() == ["pods"], "all but pods synced")
    assert await k.ready() == (503, "not synced: pods\n")
    assert await k.ask(pod_fqdn(running)) == SERVFAIL

    kube_api.faults.clear()
    await k.wait_synced()
    await wait_until(
        lambda: kube_api.stats.count(kind="watch", resource="pods") >= 1, "a pod watch"
    )
    assert await k.ask(pod_fqdn(running)) == ok(running)
    assert await k.ask(pod_fqdn(done)) == NXDOMAIN  # finished pods get no record
    assert await k.ask(pod_fqdn("10.244.254.254")) == NXDOMAIN  # no such pod
    later = objects.pod_ip_for("default", "later")
    kube_api.create("pods", objects.pod("default", "later"))
    await k.wait_for(pod_fqdn(later), ok(later), timeout=1.0)
    kube_api.delete("pods", "default", "running")
    await k.wait_for(pod_fqdn(running), NXDOMAIN, timeout=1.0)


async def test_pods_insecure_does_not_watch_pods(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    k = await start(nursery, kube_api, kubeconfig)
    assert "pods" not in k.app.store.watched
    # Every watched kind has its watch open: a pod watch would have started with them.
    await wait_until(lambda: kube_api.stats.open_watches() == len(KINDS), "one watch per kind")
    assert kube_api.stats.count(resource="pods") == 0
    assert "pods" not in k.app.source.reflectors  # type: ignore[attr-defined]
    # insecure: any address-shaped name in an existing namespace answers, no pod needed.
    assert await k.ask(pod_fqdn("10.244.254.254")) == ok("10.244.254.254")


# --- credentials -------------------------------------------------------------------------------


async def test_wrong_token_keeps_retrying_unready(
    kube_api: ApiServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    kube_api.create("services", objects.service("default", "web"))
    document = kube_api.kubeconfig()
    document["users"][0]["user"]["token"] = "not-the-token"
    path = tmp_path / "wrong-token"
    path.write_text(yaml.safe_dump(document))
    k = await start(nursery, kube_api, path, synced=False)
    before = await k.metrics()

    async def unready() -> None:
        assert await k.ask(service_fqdn("web")) == SERVFAIL
        assert (await k.ready())[0] == 503

    def retried(snapshot: Snapshot) -> bool:
        return all(
            delta(before, snapshot, "kdns_kube_errors_total", kind=kind, reason="http_401") >= 2
            for kind in ("namespaces", "services", "discovery")
        )

    after = await k.metrics_until(retried, "two refused tries of each", meanwhile=unready)
    assert kube_api.stats.statuses[401] >= 6
    assert kube_api.stats.statuses[200] == 0
    for kind in ("namespaces", "services"):
        assert delta(before, after, "kdns_kube_errors_total", kind=kind, reason="http_401") >= 2
    assert delta(before, after, "kdns_kube_errors_total", kind="discovery", reason="http_401") >= 2
    assert k.app.store.unsynced_kinds() == list(KINDS)


async def test_namespaces_and_labels_serve_only_what_they_select(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    """CoreDNS's kubernetes `namespaces default team` and `labels dns in (on, yes),!hidden`:
    the API server sends only the selected Services; every name of another namespace,
    Services, namespace and pod names alike, is NXDOMAIN."""
    kube_api.create("namespaces", objects.namespace("team"))
    kube_api.create("namespaces", objects.namespace("other"))

    def labelled(ns: str, name: str, **labels: str) -> dict[str, Any]:
        obj = objects.service(ns, name)
        obj["metadata"]["labels"] = labels
        return kube_api.create("services", obj)

    web = labelled("default", "web", dns="on")
    api = labelled("team", "api", dns="yes")
    labelled("default", "quiet")  # no dns label
    labelled("team", "hidden", dns="on", hidden="")
    labelled("other", "web", dns="on")
    keys = {
        "kubernetes.namespaces": ["default", "team"],
        "kubernetes.labels": "dns in (on,yes),!hidden",
    }
    k = await start(nursery, kube_api, kubeconfig, keys=keys)
    assert await k.ask(service_fqdn("web")) == ok(web["spec"]["clusterIP"])
    assert await k.ask(service_fqdn("api", "team")) == ok(api["spec"]["clusterIP"])
    assert await k.ask(service_fqdn("quiet")) == NXDOMAIN
    assert await k.ask(service_fqdn("hidden", "team")) == NXDOMAIN
    assert await k.ask(service_fqdn("web", "other")) == NXDOMAIN
    assert await k.ask(pod_fqdn("10.1.2.3", "other")) == NXDOMAIN
    assert await k.ask(pod_fqdn("10.1.2.3", "team")) == ok("10.1.2.3")
    assert (await k.ask("other.svc.cluster.local"))[0] == "NXDOMAIN"
    assert (await k.ask("team.svc.cluster.local"))[0] == "NOERROR"
    # Watch events go through the same filter: a label change makes a Service appear.
    kube_api.patch("services", "default", "quiet", {"metadata": {"labels": {"dns": "on"}}})
    quiet = kube_api.get("services", "default", "quiet")
    await k.wait_for(service_fqdn("quiet"), ok(quiet["spec"]["clusterIP"]), timeout=1.0)
    labelled("other", "late", dns="on")
    late = labelled("default", "late", dns="on")
    await k.wait_for(service_fqdn("late"), ok(late["spec"]["clusterIP"]), timeout=1.0)
    assert await k.ask(service_fqdn("late", "other")) == NXDOMAIN

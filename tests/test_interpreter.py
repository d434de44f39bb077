"""kdns/interpreter.py: a serving process runs with the short switch interval; a large build
runs with a shorter one to the end of its trio step, and not past it; once the store has
synced, the heap alive then leaves the cycle collector's sight (gc.freeze), and not before."""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from dnslib import DNSRecord

from kdns import app, interpreter, proxyapp
from kdns.config import Config
from kdns.sources import kube
from kdns.store import ENDPOINTSLICES, SERVICES, Store
from tests.builders import service_fqdn
from tests.dns.test_forward import EXAMPLES, WAIT, ask, kdns_app
from tests.dns.upstreams import free_port, udp_query
from tests.kubeapi import objects
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer
from tests.sources.test_kube import NXDOMAIN, ok, ready_addresses, start, wait_until

__all__ = ["kube_api", "kubeconfig"]  # fixtures, re-exported for pytest


@pytest.fixture(autouse=True)
def nothing_frozen() -> Iterator[None]:
    gc.unfreeze()  # whatever earlier tests froze
    yield
    gc.unfreeze()  # the rest of the suite's objects stay collectable


def test_the_heap_is_frozen_once_every_kind_is_listed_and_not_before() -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    interpreter.freeze_when_synced(store)
    store.replace(SERVICES, {})
    assert gc.get_freeze_count() == 0  # EndpointSlices not listed yet
    store.replace(ENDPOINTSLICES, {})
    frozen = gc.get_freeze_count()
    assert frozen > 0
    store.replace(SERVICES, {})  # a relist later freezes nothing more
    assert gc.get_freeze_count() == frozen


def test_a_store_synced_already_is_frozen_at_once() -> None:
    store = Store(watched=(SERVICES,))
    store.replace(SERVICES, {})
    interpreter.freeze_when_synced(store)
    assert gc.get_freeze_count() > 0


def test_frozen_objects_are_still_freed_when_dropped() -> None:
    # Reference counting frees an acyclic object frozen with the rest (the model's objects are
    # acyclic): freezing costs no memory when the store replaces them later.
    class Probe:
        freed = False

        def __del__(self) -> None:
            Probe.freed = True

    held = [Probe()]
    interpreter.freeze()
    held.clear()
    assert Probe.freed


@pytest.fixture
def default_switch_interval() -> Iterator[None]:
    before, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(0.005)  # CPython's defaults
    gc.set_threshold(700, *thresholds[1:])
    yield
    sys.setswitchinterval(before)  # the rest of the suite runs as it did
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("default_switch_interval")
async def test_kdns_serve_answers_with_the_short_switch_interval_and_young_threshold() -> None:
    # The whole `kdns serve` as the command runs it (app.build, app.serve), in this process:
    # once it answers, the interpreter lets a thread that holds the GIL go after 1 ms and
    # collects the youngest generation every 10,000 allocations.
    assert sys.getswitchinterval() == pytest.approx(0.005)
    async with kdns_app(Config()) as running:
        answer = await ask(running.port, "api.prod.svc.cluster.local")
        assert answer.answer  # it answers
        assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)
        assert gc.get_threshold()[0] == interpreter.YOUNG_COLLECTION


def test_building_without_serving_leaves_the_interval_alone(
    default_switch_interval: None,
) -> None:
    # `kdns check` builds the app and serves nothing: the process keeps CPython's default.
    app.build(Config().with_overrides(manifests=(str(EXAMPLES),)))
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert gc.get_threshold()[0] == 700


@pytest.fixture
def serving_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(interpreter.SWITCH_INTERVAL)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """Each `time.sleep` the interpreter module makes, recorded instead of slept: (its
    argument, the switch interval at that moment)."""
    slept: list[tuple[float, float]] = []
    monkeypatch.setattr(
        interpreter.time, "sleep", lambda s: slept.append((s, sys.getswitchinterval()))
    )
    return slept


@pytest.mark.usefixtures("serving_interval")
def test_handing_over_shortens_the_interval_for_the_block_and_sets_it_back() -> None:
    with interpreter.handing_over():
        assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)


@pytest.mark.usefixtures("serving_interval")
def test_handing_over_sets_the_interval_back_when_the_block_raises() -> None:
    with pytest.raises(ValueError), interpreter.handing_over():
        raise ValueError("a bug in the build")
    assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)


@pytest.mark.usefixtures("serving_interval")
def test_nested_handing_over_keeps_the_short_interval_until_the_outermost_ends() -> None:
    with interpreter.handing_over():
        with interpreter.handing_over():
            assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
        # The inner one ended inside the outer build: still short.
        assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)


def test_handing_over_never_lengthens_a_shorter_interval() -> None:
    before = sys.getswitchinterval()
    shorter = interpreter.HANDOVER_INTERVAL / 2
    sys.setswitchinterval(shorter)
    try:
        with interpreter.handing_over():
            assert sys.getswitchinterval() == pytest.approx(shorter)
        assert sys.getswitchinterval() == pytest.approx(shorter)
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("default_switch_interval")
def test_handing_over_leaves_a_process_at_cpythons_interval_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No thread of it answers queries (`kdns proxy` without `--dns`, whose Kubernetes source
    # enters the scope too): nothing shortened, no sleep, in a trio task or not.
    slept: list[float] = []
    monkeypatch.setattr(interpreter.time, "sleep", slept.append)

    def build() -> None:
        with interpreter.handing_over():
            assert sys.getswitchinterval() == pytest.approx(0.005)

    async def step() -> None:
        build()
        await trio.lowlevel.checkpoint()

    build()
    trio_run(step)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert slept == []


@pytest.mark.usefixtures("serving_interval")
def test_the_outermost_handing_over_gives_the_cpu_away_once_on_leaving(
    sleeps: list[tuple[float, float]],
) -> None:
    # One `time.sleep(0)` when the interval is set back, none inside or for an inner scope.
    slept = sleeps
    with interpreter.handing_over():
        with interpreter.handing_over():
            pass
        assert slept == []
    assert slept == [(0, pytest.approx(interpreter.SWITCH_INTERVAL))]


def trio_run(task: Callable[[], Awaitable[object]]) -> None:
    """`task` as the only task of a trio run of its own (a run loop like `kdns serve`'s)."""
    trio.run(task)


@pytest.mark.usefixtures("serving_interval")
def test_in_a_trio_task_the_short_interval_lasts_until_the_step_ends() -> None:
    # A large rebuild is one step of the trio thread: the Python between its scopes (the
    # store's merge, the cache's bookkeeping) runs at the short interval too, and the interval
    # is set back only once the task yields to the loop.
    seen: list[float] = []

    async def rebuild() -> None:
        with interpreter.handing_over():
            pass
        seen.append(sys.getswitchinterval())  # between two scopes of one step
        with interpreter.handing_over():
            pass
        seen.append(sys.getswitchinterval())
        await trio.lowlevel.checkpoint()  # the step ends here
        seen.append(sys.getswitchinterval())

    trio_run(rebuild)
    short, serving = interpreter.HANDOVER_INTERVAL, interpreter.SWITCH_INTERVAL
    assert seen == [pytest.approx(short), pytest.approx(short), pytest.approx(serving)]


@pytest.mark.usefixtures("serving_interval")
def test_the_next_task_the_loop_runs_finds_the_serving_interval() -> None:
    # Set back as the step ends, before any other task runs: a relist applied by a task that
    # the large build woke runs at the serving interval (a short one lost queries there).
    seen: list[float] = []

    async def main() -> None:
        woken = trio.Event()

        async def relist() -> None:
            await woken.wait()
            seen.append(sys.getswitchinterval())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(relist)
            await trio.testing.wait_all_tasks_blocked()
            with interpreter.handing_over():
                woken.set()  # runnable from now on, in the loop's next batch
            seen.append(sys.getswitchinterval())

    trio_run(main)
    assert seen == [
        pytest.approx(interpreter.HANDOVER_INTERVAL),
        pytest.approx(interpreter.SWITCH_INTERVAL),
    ]


@pytest.mark.usefixtures("serving_interval")
def test_a_step_that_raises_out_of_its_task_and_the_run_still_sets_the_interval_back() -> None:
    # Nothing may leave the process at the short interval for good: the step ends, whether
    # the task goes on, returns or raises, and so does the run that it ends.
    async def failing_build() -> None:
        with interpreter.handing_over():
            raise ValueError("a bug in the build")

    with pytest.raises(ValueError):
        trio_run(failing_build)
    assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)

    async def caught() -> None:
        with pytest.raises(ValueError), interpreter.handing_over():
            raise ValueError("a bug in the build")
        assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
        await trio.lowlevel.checkpoint()
        assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)

    trio_run(caught)


@pytest.mark.usefixtures("serving_interval")
def test_in_a_trio_task_each_scope_gives_the_cpu_away_and_the_step_sets_back_once(
    sleeps: list[tuple[float, float]],
) -> None:
    # A `time.sleep(0)` as each outermost scope ends (still short) and one more as the
    # interval is set back; none for an inner scope.
    slept = sleeps

    async def rebuild() -> None:
        with interpreter.handing_over():
            with interpreter.handing_over():
                pass
            assert slept == []
        with interpreter.handing_over():
            pass
        await trio.lowlevel.checkpoint()

    trio_run(rebuild)
    short = interpreter.HANDOVER_INTERVAL
    at_end = (0, pytest.approx(interpreter.SWITCH_INTERVAL))
    assert slept == [(0, pytest.approx(short)), (0, pytest.approx(short)), at_end]


class Holder:
    """A thread of its own (as the Kubernetes source's watch thread) inside one
    `handing_over()` scope from `enter()` to `leave()`; `leave(raising=True)` leaves it by an
    exception. Each call returns once the thread has done it (bounded waits)."""

    def __init__(self) -> None:
        self._go = threading.Event()
        self._raise = False
        self._inside = threading.Event()
        self.raised: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with interpreter.handing_over():
                self._inside.set()
                assert self._go.wait(WAIT)
                if self._raise:
                    raise ValueError("a bug in the conversion")
        except ValueError as e:
            self.raised = e

    def enter(self) -> Holder:
        self._thread.start()
        assert self._inside.wait(WAIT)
        return self

    def leave(self, raising: bool = False) -> None:
        self._raise = raising
        self._go.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


@pytest.mark.usefixtures("serving_interval")
def test_two_threads_holds_keep_the_interval_short_until_the_last_leaves() -> None:
    first = Holder().enter()
    assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
    second = Holder().enter()  # the process is at the short interval: it joins, not ignores
    first.leave()
    assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
    second.leave()
    assert sys.getswitchinterval() == interpreter.SWITCH_INTERVAL  # exactly what it was


@pytest.mark.usefixtures("serving_interval")
def test_a_thread_whose_block_raises_lets_its_hold_go_and_no_other() -> None:
    first, second = Holder().enter(), Holder().enter()
    first.leave(raising=True)
    assert isinstance(first.raised, ValueError)
    assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
    second.leave(raising=True)
    assert sys.getswitchinterval() == interpreter.SWITCH_INTERVAL
    # Nothing left held: a scope later starts from the serving interval and returns to it.
    with interpreter.handing_over():
        assert sys.getswitchinterval() == pytest.approx(interpreter.HANDOVER_INTERVAL)
    assert sys.getswitchinterval() == interpreter.SWITCH_INTERVAL


@pytest.mark.usefixtures("serving_interval")
def test_the_trio_steps_hold_and_a_worker_threads_overlap_either_way() -> None:
    # The watch thread converts while the trio thread applies a large change: whichever leaves
    # last sets the interval back, the trio thread's hold lasting to the end of its step.
    seen: list[float] = []

    async def worker_leaves_inside_the_step() -> None:
        worker = Holder().enter()
        with interpreter.handing_over():
            pass
        worker.leave()
        seen.append(sys.getswitchinterval())  # the step's hold still there
        await trio.lowlevel.checkpoint()
        seen.append(sys.getswitchinterval())

    async def worker_outlasts_the_step() -> None:
        with interpreter.handing_over():
            worker = Holder().enter()
        await trio.lowlevel.checkpoint()
        seen.append(sys.getswitchinterval())  # the step ended; the worker holds on
        worker.leave()
        seen.append(sys.getswitchinterval())

    short, serving = pytest.approx(interpreter.HANDOVER_INTERVAL), interpreter.SWITCH_INTERVAL
    trio_run(worker_leaves_inside_the_step)
    assert seen == [short, serving]
    seen.clear()
    trio_run(worker_outlasts_the_step)
    assert seen == [short, serving]


@pytest.mark.usefixtures("default_switch_interval")
def test_a_thread_of_a_process_at_cpythons_interval_changes_nothing() -> None:
    # `kdns proxy` without `--dns`: its watch thread converts large slices too.
    holder = Holder().enter()
    assert sys.getswitchinterval() == pytest.approx(0.005)
    holder.leave()
    assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.usefixtures("serving_interval")
async def test_the_kube_source_applies_a_large_services_change_at_the_short_interval(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery
) -> None:
    # The whole of such a change (the store's merge of its slices, then the rest) runs in the
    # scope, not only the resolver's rebuild; a small Service's change runs as before, and
    # the serving interval is back once the change is applied.
    for name in ("big", "small"):
        kube_api.create("services", objects.service("default", name, headless=True))
    k = await start(nursery, kube_api, kubeconfig)
    applied: list[tuple[set[tuple[str, str]], float]] = []
    k.app.store.subscribe(
        lambda change: applied.append((set(change.services), sys.getswitchinterval()))
    )
    large = interpreter.LARGE_BUILD + 50
    big = kube_api.scale_headless("default", "big", large)
    # Too many addresses for one UDP answer: the store tells when the watch event is applied.
    endpoints = k.app.store.endpoints
    await wait_until(lambda: len(endpoints.get(("default", "big"), ())) == large, "its endpoints")
    small = kube_api.scale_headless("default", "small", 3)
    await k.wait_for(service_fqdn("small"), ok(*ready_addresses(small)))
    # Its last slice gone, the resolver builds nothing for the Service: the source's scope.
    kube_api.delete("endpointslices", "default", big["metadata"]["name"])
    await k.wait_for(service_fqdn("big"), NXDOMAIN)
    short, serving = interpreter.HANDOVER_INTERVAL, interpreter.SWITCH_INTERVAL
    assert applied == [
        ({("default", "big")}, pytest.approx(short)),
        ({("default", "small")}, pytest.approx(serving)),
        ({("default", "big")}, pytest.approx(short)),
    ]
    assert sys.getswitchinterval() == pytest.approx(serving)


@pytest.mark.usefixtures("serving_interval")
async def test_the_kube_source_converts_a_large_watch_event_at_the_short_interval(
    kube_api: ApiServer, kubeconfig: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watch thread's conversion of a large slice (milliseconds of Python) runs short; a
    # small slice's does not, nor does a relist's, which lists that same large slice (a relist
    # at the short interval lost steady queries).
    for name in ("big", "small"):
        kube_api.create("services", objects.service("default", name, headless=True))
    k = await start(nursery, kube_api, kubeconfig)
    converted: list[tuple[str, float, bool]] = []
    convert = kube.endpointslice_from_dict

    def noting(obj: dict[str, Any]) -> Any:
        worker = threading.current_thread() is not threading.main_thread()
        converted.append((obj["metadata"]["name"], sys.getswitchinterval(), worker))
        return convert(obj)

    monkeypatch.setattr(kube, "endpointslice_from_dict", noting)
    large = interpreter.LARGE_BUILD + 50
    big = kube_api.scale_headless("default", "big", large)["metadata"]["name"]
    endpoints = k.app.store.endpoints
    await wait_until(lambda: len(endpoints.get(("default", "big"), ())) == large, "its endpoints")
    small = kube_api.scale_headless("default", "small", 3)
    await k.wait_for(service_fqdn("small"), ok(*ready_addresses(small)))
    lists = kube_api.stats.count(kind="list", resource="endpointslices")
    assert kube_api.faults.expire_watches(resource="endpointslices") == 1
    await wait_until(lambda: len(converted) == 4, "the relist's conversions")
    await wait_until(
        lambda: kube_api.stats.count(kind="list", resource="endpointslices") == lists + 1,
        "one relist",
    )
    short, serving = pytest.approx(interpreter.HANDOVER_INTERVAL), interpreter.SWITCH_INTERVAL
    name = small["metadata"]["name"]
    assert converted[:2] == [(big, short, True), (name, serving, True)]
    assert sorted(converted[2:]) == sorted([(big, serving, True), (name, serving, True)])
    assert sys.getswitchinterval() == serving


def addresses(n: int) -> list[dict[str, Any]]:
    return [{"ip": f"10.0.{i // 250}.{i % 250 + 1}"} for i in range(n)]


LARGE, BELOW = interpreter.LARGE_BUILD, interpreter.LARGE_BUILD - 1
META = {"namespace": "default", "name": "web", "resourceVersion": "7"}


@pytest.mark.parametrize(
    ("resource", "event", "obj", "short"),
    [
        (kube.ENDPOINTSLICES_RESOURCE, "ADDED", {"endpoints": addresses(LARGE)}, True),
        (kube.ENDPOINTSLICES_RESOURCE, "MODIFIED", {"endpoints": addresses(BELOW)}, False),
        (kube.IMPORTSLICES_RESOURCE, "MODIFIED", {"endpoints": addresses(LARGE)}, True),
        # core/v1 Endpoints: ready and not-ready addresses of every subset together.
        (
            kube.ENDPOINTS_RESOURCE,
            "MODIFIED",
            {"subsets": [{"addresses": addresses(60)}, {"notReadyAddresses": addresses(40)}]},
            True,
        ),
        (
            kube.ENDPOINTS_RESOURCE,
            "MODIFIED",
            {"subsets": [{"addresses": addresses(BELOW)}]},
            False,
        ),
        (kube.SERVICES_RESOURCE, "MODIFIED", {"spec": {"ports": addresses(LARGE)}}, False),
    ],
)
@pytest.mark.usefixtures("serving_interval")
def test_a_watch_lines_object_is_converted_short_when_it_carries_many_endpoints(
    resource: kube.Resource, event: str, obj: dict[str, Any], short: bool
) -> None:
    intervals: list[float] = []

    def noting(raw: dict[str, Any]) -> kube.Converted:
        intervals.append(sys.getswitchinterval())
        return []

    noted = dataclasses.replace(resource, convert=noting)
    line = json.dumps({"type": event, "object": {"metadata": META, **obj}}).encode()
    parsed = kube.Reflector(noted, None, Store()).parse(line)  # type: ignore[arg-type]
    assert parsed is not None and parsed.type == event
    expected = interpreter.HANDOVER_INTERVAL if short else interpreter.SWITCH_INTERVAL
    assert intervals == [pytest.approx(expected)]
    assert sys.getswitchinterval() == interpreter.SWITCH_INTERVAL


class NodeCommands:
    """A Runner for the in-process proxy: records every command the node DNS's device and
    rules would run on the node, and runs none (nothing touches the host)."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        self.argvs.append(list(argv))
        if list(argv[:3]) == ["ip", "link", "show"]:
            return 1, "", f'Device "{argv[-1]}" does not exist.'
        return 0, "", ""  # `ss`: nobody else answers on the addresses; the rest succeed


async def answered(port: int, name: str) -> DNSRecord | None:
    """One query to 127.0.0.1:port from a worker thread; None while nothing answers there."""
    try:
        return await trio.to_thread.run_sync(functools.partial(udp_query, port, name, timeout=0.2))
    except OSError:  # TimeoutError, or refused: not bound yet
        return None


@asynccontextmanager
async def userspace_proxy(dns: bool, port: int) -> AsyncIterator[dict[str, int]]:
    """`kdns proxy --mode userspace` over config/examples in this process (`run_proxy`, as the
    command runs it), with `--dns 127.0.0.1` on `port` when `dns`; stopped on the way out.
    Yields its HTTP endpoints' ports."""
    config = Config().with_overrides(
        "test", **{"kubernetes.manifests": [str(EXAMPLES)], "node.dns_upstreams": ["127.0.0.1:9"]}
    )
    options = proxyapp.ProxyOptions(
        mode="userspace",
        node_name="node1",
        healthz_addr="127.0.0.1:0",
        metrics_addr="127.0.0.1:0",
        dns_addresses=("127.0.0.1",) if dns else (),
        dns_port=port,
    )
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(
            functools.partial(proxyapp.run_proxy, config, options, NodeCommands())
        )
        yield ports
        nursery.cancel_scope.cancel()


def healthy(port: int) -> bool:
    """The proxy's /healthz answers 200: synced, relaying, its node DNS settled."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.usefixtures("default_switch_interval")
async def test_kdns_proxy_answering_dns_runs_with_the_short_switch_interval() -> None:
    # The node DNS's receive thread waits behind every sync's Python as `kdns serve`'s waits
    # behind a rebuild: once the proxy answers DNS, the process runs as `kdns serve` does.
    port = free_port()
    async with userspace_proxy(dns=True, port=port):
        with trio.fail_after(WAIT):  # the sockets bind once the store has synced
            while (answer := await answered(port, "api.prod.svc.cluster.local")) is None:
                await trio.sleep(0.05)
        assert answer.rr  # it answers, from its own store
        assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)
        assert gc.get_threshold()[0] == interpreter.YOUNG_COLLECTION


@pytest.mark.usefixtures("default_switch_interval")
async def test_kdns_proxy_without_dns_keeps_cpythons_interval() -> None:
    # Nothing answers queries from a thread of its own: nothing waits on the GIL for it.
    async with userspace_proxy(dns=False, port=0) as ports:
        # Past the point where a node DNS would have set them: healthy once it settled.
        with trio.fail_after(WAIT):
            while not await trio.to_thread.run_sync(healthy, ports["healthz"]):
                await trio.sleep(0.05)
        assert sys.getswitchinterval() == pytest.approx(0.005)
        assert gc.get_threshold()[0] == 700


def test_collector_paused_runs_no_collection_inside_and_resumes_after() -> None:
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        with interpreter.collector_paused():
            assert not gc.isenabled()
            # Far more tracked allocations than any threshold: still no automatic collection.
            kept = [[i] for i in range(50 * gc.get_threshold()[0])]
            assert collections == []
        assert gc.isenabled()
        del kept
        more = [[i] for i in range(5 * gc.get_threshold()[0])]
        assert collections  # the collector is back
        del more
    finally:
        gc.callbacks.remove(seen)


def test_collector_paused_resumes_when_the_block_raises() -> None:
    with pytest.raises(ValueError), interpreter.collector_paused():
        raise ValueError("a failed sync")
    assert gc.isenabled()


def test_collector_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with interpreter.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()

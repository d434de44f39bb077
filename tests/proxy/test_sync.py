"""The sync engine (kdns/proxy/sync.py) driving real data planes inside a throwaway namespace.

The store is fed directly (the sources have their own tests); the data planes run the real
iptables-restore / nft / conntrack in a network namespace through a Runner that records every
command, so the tests see both what was written and what the kernel holds.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from kdns.model import EndpointSlice, Node, ServiceCIDR
from kdns.proxy.dataplane import (
    IptablesDataplane,
    NftablesDataplane,
    run_command,
)
from kdns.proxy.dataplane import Node as NodeConfig
from kdns.proxy.sync import SyncEngine
from kdns.store import ENDPOINTSLICES, NODES, SERVICECIDRS, SERVICES, Store
from tests.builders import model_endpoint, model_service
from tests.conftest import throwaway_netns
from tests.proxy.builders import NODE, PODS

UDP = (("dns", "UDP", 53, None),)
UDP_EP = (("dns", "UDP", 5353),)


@pytest.fixture
def netns() -> Iterator[str]:
    tools = [("iptables-restore", "iptables"), ("nft", "nftables"), ("conntrack", "conntrack")]
    with throwaway_netns("kdns-sync", *tools) as name:
        yield name


class Recorder:
    """A Runner into the namespace that keeps every command, and can fail chosen ones."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail_next: str | None = None  # argv[0] of the next command to fail
        self.garble_listing = False  # answer the next `nft -j list …` with broken JSON

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        self.calls.append((list(argv), stdin))
        if self.garble_listing and list(argv[:3]) == ["nft", "-j", "list"]:
            self.garble_listing = False
            return 0, '{"nftables": [', ""
        if self.fail_next and argv[0] == self.fail_next:
            self.fail_next = None
            return 1, "", f"{argv[0]}: line 2 failed (injected)"
        return run_command(["ip", "netns", "exec", self.ns, *argv], stdin)

    def writes(self, tool: str) -> list[str]:
        return [stdin or "" for argv, stdin in self.calls if argv[0] == tool]


def slice_of(name: str, *endpoints, service: str | None = None) -> EndpointSlice:
    namespace, _, short = name.partition("/")
    return EndpointSlice(namespace, short + "-abc", service or short, "IPv4", tuple(endpoints))


def in_ns(ns: str, *argv: str) -> str:
    return run_command(["ip", "netns", "exec", ns, *argv])[1]


NODE_CONFIG = NodeConfig(families=(4,), cluster_cidrs=(PODS,))


def make_engine(kind: str, store: Store, runner: Recorder, **kw) -> SyncEngine:
    plane = (IptablesDataplane if kind == "iptables" else NftablesDataplane)(NODE_CONFIG, runner)
    options = dict(min_sync_period=0.2, sync_period=30.0)
    options.update(kw)
    return SyncEngine(store, plane, NODE, runner=runner, **options)


async def wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def sample(name: str, **labels: str) -> float:
    """A metric's current value, read the public way (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def repairs(mode: str) -> float:
    return sample("kdns_proxy_tamper_repairs_total", mode=mode)


def two_services(store: Store) -> None:
    store.replace(
        SERVICES,
        {
            ("ns", "web"): model_service("ns/web", ip="10.96.0.20"),
            ("ns", "dns"): model_service("ns/dns", ip="10.96.0.10", ports=UDP),
        },
    )


@pytest.mark.parametrize("kind", ["iptables", "nftables"])
def test_nothing_is_written_before_services_and_slices_synced(netns: str, kind: str) -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine(kind, store, runner)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            two_services(store)  # Services listed, slices not yet
            # The change wakes the engine; once every task is blocked again it has looked at
            # the store and gone back to waiting for the slices.
            await trio.testing.wait_all_tasks_blocked()
            assert runner.writes("iptables-restore") == runner.writes("nft") == []
            assert not engine.synced
            web = slice_of("ns/web", model_endpoint("10.244.1.5"))
            store.replace(ENDPOINTSLICES, {web.key: web})
            await wait_for(lambda: engine.synced)
            nursery.cancel_scope.cancel()

    trio.run(main)
    if kind == "iptables":
        assert "10.244.1.5:8080" in in_ns(netns, "iptables-save", "-t", "nat")
    else:
        assert "10.244.1.5" in in_ns(netns, "nft", "list", "table", "ip", "kdns")


@pytest.mark.parametrize("kind", ["iptables", "nftables"])
def test_bursts_coalesce_and_partial_syncs_carry_only_the_change(netns: str, kind: str) -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine(kind, store, runner, min_sync_period=0.5)
    two_services(store)
    store.replace(ENDPOINTSLICES, {})
    tool = "iptables-restore" if kind == "iptables" else "nft"

    def transactions() -> list[str]:
        return [text for text in runner.writes(tool) if text]  # not the listings

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: engine.synced)
            first, first_writes = engine.syncs, len(transactions())
            # 40 endpoint changes of one Service within 0.2 s: one min-sync-period.
            for i in range(40):
                store.upsert(
                    ENDPOINTSLICES, slice_of("ns/web", model_endpoint(f"10.244.1.{i + 10}"))
                )
                await trio.sleep(0.005)

            def last_change_applied() -> bool:
                # One transaction per sync here (one family, a change in each): equal counts
                # mean the sync that wrote the last change has finished.
                writes = transactions()
                done = engine.syncs - first
                return len(writes) - first_writes == done and "10.244.1.49" in writes[-1]

            await wait_for(last_change_applied)
            assert 1 <= engine.syncs - first <= 3, engine.syncs - first
            nursery.cancel_scope.cancel()

    trio.run(main)
    last = runner.writes(tool)[-1]
    # The last change is in; the untouched Service's chains are not rewritten.
    assert "10.244.1.49" in last
    if kind == "iptables":
        assert "10.244.1.48" not in in_ns(netns, "iptables-save", "-t", "nat")
        assert "ns/dns" not in last.split("*nat", 1)[1].split("-A KUBE-SERVICES", 1)[0]
    else:
        assert "ns/dns" not in last
        assert "10.244.1.48" not in in_ns(netns, "nft", "list", "table", "ip", "kdns")


def test_a_service_cidr_change_is_a_full_sync_that_writes_the_drop(netns: str) -> None:
    # kube-proxy's nftables mode drops traffic to the ServiceCIDRs' unallocated addresses
    # (KEP-3866); the rule is part of the fixed chains, so only a full sync writes it.
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine("nftables", store, runner)
    two_services(store)
    store.replace(ENDPOINTSLICES, {})
    drop = "Drop traffic to unallocated ClusterIPs"

    def check_chain() -> str:
        return in_ns(netns, "nft", "list", "chain", "ip", "kdns", "cluster-ips-check")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: engine.synced)
            assert drop not in check_chain()
            store.upsert(SERVICECIDRS, ServiceCIDR("kubernetes", ("10.96.0.0/16",)))
            # A second, wider one while the first drains: one merged range (nft refuses
            # overlapping intervals); an IPv6 range stays out of the IPv4 table.
            store.upsert(SERVICECIDRS, ServiceCIDR("wide", ("10.96.0.0/12", "fd00::/108")))
            await wait_for(lambda: "10.96.0.0/12" in check_chain())
            assert "ip daddr 10.96.0.0/12 drop" in check_chain(), check_chain()
            store.delete(SERVICECIDRS, "wide")
            await wait_for(lambda: "10.96.0.0/16" in check_chain())
            store.delete(SERVICECIDRS, "kubernetes")
            await wait_for(lambda: drop not in check_chain())
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("kind", ["iptables", "nftables"])
def test_failed_apply_is_retried_as_a_full_sync(netns: str, kind: str) -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine(kind, store, runner, min_sync_period=0.3)
    two_services(store)
    store.replace(ENDPOINTSLICES, {})
    tool = "iptables-restore" if kind == "iptables" else "nft"
    before = sample("kdns_proxy_sync_failures_total", mode=kind, kind="partial")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: engine.synced)
            synced = engine.syncs
            runner.fail_next = tool
            store.upsert(ENDPOINTSLICES, slice_of("ns/web", model_endpoint("10.244.1.77")))
            await wait_for(lambda: engine.syncs > synced)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sample("kdns_proxy_sync_failures_total", mode=kind, kind="partial") == before + 1
    writes = runner.writes(tool)
    # The failed write was a partial one, the retry a full one (only full syncs re-declare
    # the canary chains / flush the whole table).
    marker = ":KDNS-CANARY" if kind == "iptables" else "flush table ip kdns"
    assert marker not in writes[-2]
    assert marker in writes[-1]
    if kind == "iptables":
        assert "10.244.1.77:8080" in in_ns(netns, "iptables-save", "-t", "nat")
    else:
        assert "10.244.1.77" in in_ns(netns, "nft", "list", "table", "ip", "kdns")


TAMPERING = {
    "iptables-flush-chain": ("iptables", "-t", "nat", "-F", "KUBE-SERVICES"),
    "iptables-flush-table": ("iptables", "-t", "nat", "-F"),
    "nftables-delete-table": ("nft", "delete", "table", "ip", "kdns"),
    "nftables-flush-chain": ("nft", "flush", "chain", "ip", "kdns", "services"),
    "nftables-flush-ruleset": ("nft", "flush", "ruleset"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_canary_repairs_tampering_within_a_sync_period(netns: str, tamper: str) -> None:
    kind = tamper.split("-", 1)[0]
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine(kind, store, runner, sync_period=1.0)
    two_services(store)
    web = slice_of("ns/web", model_endpoint("10.244.1.5"))
    store.replace(ENDPOINTSLICES, {web.key: web})
    before = repairs(kind)

    def state() -> str:
        if kind == "iptables":
            # The dispatch rule (per-service chains survive a flush of KUBE-SERVICES).
            save = in_ns(netns, "iptables-save", "-t", "nat").splitlines()
            return "\n".join(line for line in save if line.startswith("-A KUBE-SERVICES"))
        # The dispatch rule and the ClusterIP's element in the map it reads.
        chain = in_ns(netns, "nft", "list", "chain", "ip", "kdns", "services")
        vmap = in_ns(netns, "nft", "list", "map", "ip", "kdns", "service-ips")
        return vmap if "vmap @service-ips" in chain else ""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: engine.synced)
            # Nothing changes after the first sync: the next one is the periodic sync, which
            # follows a canary check that must find nothing wrong.
            synced = engine.syncs
            await wait_for(lambda: engine.syncs > synced)
            assert repairs(kind) == before
            in_ns(netns, *TAMPERING[tamper])
            assert "10.96.0.20" not in state()
            await wait_for(lambda: "10.96.0.20" in state(), timeout=3.0)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert repairs(kind) == before + 1


def test_udp_endpoint_replaced_deletes_its_conntrack_entries(netns: str) -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine("iptables", store, runner)
    two_services(store)
    dns = slice_of("ns/dns", model_endpoint("10.244.1.5", ports=UDP_EP))
    store.replace(ENDPOINTSLICES, {dns.key: dns})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: engine.synced)
            synced = engine.syncs
            store.upsert(
                ENDPOINTSLICES, slice_of("ns/dns", model_endpoint("10.244.1.6", ports=UDP_EP))
            )
            await wait_for(lambda: engine.syncs > synced)
            await wait_for(lambda: any(a[:2] == ["conntrack", "-D"] for a, _ in runner.calls))
            nursery.cancel_scope.cancel()

    trio.run(main)
    # First sync: the reconciliation lists, and finds nothing to delete (all of it happens
    # before the second sync's write).
    second_write = [i for i, (a, _) in enumerate(runner.calls) if a[0] == "iptables-restore"][1]
    first = [a[:2] for a, _ in runner.calls[:second_write] if a[0] == "conntrack"]
    assert first == [["conntrack", "-L"]]
    deletes = [" ".join(a) for a, _ in runner.calls if a[:2] == ["conntrack", "-D"]]
    assert deletes == [
        "conntrack -D -f ipv4 -p udp --orig-dst 10.96.0.10 --dst-nat 10.244.1.5",
    ]


def conntrack_entry(ns: str, client: str, sport: int, dnat_to: str) -> None:
    """A UDP entry from `client` to 10.96.0.10:53 answered by `dnat_to` (the VIP: not DNATed)."""
    reply_port = "53" if dnat_to == "10.96.0.10" else "5353"
    argv = ["conntrack", "-I", "-p", "udp", "-s", client, "-d", "10.96.0.10"]
    argv += ["--sport", str(sport), "--dport", "53", "-r", dnat_to, "-q", client]
    argv += ["--reply-port-src", reply_port, "--reply-port-dst", str(sport), "-t", "120"]
    result = run_command(["ip", "netns", "exec", ns, *argv])
    assert result[0] == 0, result[2]


def test_start_reconciles_conntrack_with_the_endpoints(netns: str) -> None:
    # Left by an earlier run: a flow to the current endpoint, one to an endpoint that went
    # away while no proxy ran, one never DNATed (made while the Service had no endpoint).
    in_ns(netns, "iptables", "-t", "nat", "-L")  # conntrack is on in the namespace
    conntrack_entry(netns, "10.244.1.20", 40000, "10.244.1.5")
    conntrack_entry(netns, "10.244.1.21", 40001, "10.244.1.9")
    conntrack_entry(netns, "10.244.1.22", 40002, "10.96.0.10")
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine("nftables", store, runner)
    two_services(store)
    dns = slice_of("ns/dns", model_endpoint("10.244.1.5", ports=UDP_EP))
    store.replace(ENDPOINTSLICES, {dns.key: dns})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: engine.synced)
            await wait_for(lambda: any(a[:2] == ["conntrack", "-D"] for a, _ in runner.calls))
            nursery.cancel_scope.cancel()

    trio.run(main)
    listing = in_ns(netns, "conntrack", "-L", "-p", "udp")
    assert "sport=40000" in listing and "sport=40002" in listing
    assert "sport=40001" not in listing


def test_a_canary_that_cannot_read_the_kernel_repairs_instead_of_crashing(netns: str) -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine("nftables", store, runner, sync_period=0.5)
    two_services(store)
    store.replace(ENDPOINTSLICES, {})
    before = repairs("nftables")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_for(lambda: engine.synced)
            runner.garble_listing = True
            await wait_for(lambda: repairs("nftables") == before + 1, timeout=3.0)
            synced = engine.syncs
            await wait_for(lambda: engine.syncs > synced)  # the engine lives on
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert engine.healthy()


# What a sync keeps (routes, rendered rules): the types a leak of it would show.
KEPT_TYPES = ("kdns.proxy.routes.", "kdns.proxy.nftables.", "kdns.proxy.dataplane.")


def ours(objects: list[object]) -> list[str]:
    names = (f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    return sorted({n for n in names if n.startswith(KEPT_TYPES)})


def test_full_syncs_kept_out_of_collections_leave_nothing_behind(netns: str) -> None:
    """`freeze_full_syncs`: each full sync (every route rebuilt by a zone change, every rule
    rendered) runs with the collector paused and freezes what it keeps. That is safe only if
    what it keeps is freed by reference counting once the next sync replaces it: the frozen
    count stays flat from one full sync to the next (a leak would add the sync's thousands of
    objects each time), and given back to the collector, none of it is cyclic garbage."""
    n = 150
    store = Store(watched=(NODES, SERVICES, ENDPOINTSLICES))
    runner = Recorder(netns)
    engine = make_engine("nftables", store, runner, min_sync_period=0.05, freeze_full_syncs=True)
    services = {("ns", f"s{i}"): model_service(f"ns/s{i}", ip=f"10.96.1.{i + 1}") for i in range(n)}
    slices = {}
    for i in range(n):
        eps = [model_endpoint(f"10.244.{i}.{k}") for k in range(1, 4)]
        es = slice_of(f"ns/s{i}", *eps)
        slices[es.key] = es
    frozen: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            store.replace(NODES, {NODE: Node(NODE, "zone-0")})
            store.replace(SERVICES, services)
            store.replace(ENDPOINTSLICES, slices)
            await wait_for(lambda: engine.synced, timeout=30)
            for k in range(1, 7):  # each zone change: a full sync that rebuilds every route
                done = engine.syncs
                store.upsert(NODES, Node(NODE, f"zone-{k % 2}"))
                await wait_for(lambda done=done: engine.syncs > done, timeout=30)
                assert gc.isenabled()  # the pause ended with the sync
                frozen.append(gc.get_freeze_count())
            nursery.cancel_scope.cancel()

    gc.unfreeze()  # what earlier tests froze (their heap: kdns.interpreter.freeze) back in view
    gc.collect()  # and their garbage out of the way: only this test's syncs' is looked for
    try:
        trio.run(main)
        assert frozen[0] > 0  # the syncs froze what they kept
        # Flat: what each sync kept went when the next one replaced it (a leak of one sync's
        # routes and rules would be well over n objects).
        assert max(frozen[1:]) - frozen[1] < n, frozen
        gc.unfreeze()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        assert ours(gc.garbage) == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.unfreeze()
    assert engine.zone == "zone-0"
    assert "10.244.149.3" in in_ns(netns, "nft", "list", "table", "ip", "kdns")

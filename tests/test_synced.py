"""kdns.synced: `wait_synced` returns when the store's last watched kind is listed — without
polling — and at once when it already was."""

from __future__ import annotations

import trio
import trio.testing

from kdns.store import ENDPOINTSLICES, SERVICES, Store
from kdns.synced import wait_synced


async def test_wait_synced_returns_when_the_last_kind_is_listed() -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    done = trio.Event()

    async def waiter() -> None:
        await wait_synced(store)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        store.replace(SERVICES, {})
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # one kind of two
        store.replace(ENDPOINTSLICES, {})
        with trio.fail_after(10):
            await done.wait()


async def test_wait_synced_when_already_synced_returns_at_once() -> None:
    store = Store(watched=(SERVICES,))
    store.replace(SERVICES, {})
    with trio.fail_after(10):
        await wait_synced(store)


async def test_a_cancelled_wait_leaves_the_store_working() -> None:
    store = Store(watched=(SERVICES,))
    with trio.move_on_after(0.01):
        await wait_synced(store)
    store.replace(SERVICES, {})  # the abandoned callback sets an event nobody waits for
    assert store.synced
    with trio.fail_after(10):
        await wait_synced(store)

"""Waiting for the store's first full sync: the trio side of `Store.when_synced`.

Contract:
- `wait_synced(store)` returns once every watched kind has been listed (at once if it has);
  it never polls. Cancelling it (a timeout around it) leaves nothing behind but a callback
  that sets an event nobody waits for.
- The store stays free of trio (it is pure); this module is the one adapter, at the I/O edge,
  for every task that must not start before the first list (client-go's WaitForCacheSync).
"""

from __future__ import annotations

import trio

from kdns.store import Store


async def wait_synced(store: Store) -> None:
    synced = trio.Event()
    store.when_synced(synced.set)
    await synced.wait()

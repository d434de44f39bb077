"""kdns/collector.py: once the store has synced, the heap alive then leaves the cycle
collector's sight (gc.freeze), and not before."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from kdns import collector
from kdns.store import ENDPOINTSLICES, SERVICES, Store


@pytest.fixture(autouse=True)
def nothing_frozen() -> Iterator[None]:
    gc.unfreeze()  # whatever earlier tests froze
    yield
    gc.unfreeze()  # the rest of the suite's objects stay collectable


def test_the_heap_is_frozen_once_every_kind_is_listed_and_not_before() -> None:
    store = Store(watched=(SERVICES, ENDPOINTSLICES))
    collector.freeze_when_synced(store)
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
    collector.freeze_when_synced(store)
    assert gc.get_freeze_count() > 0


def test_frozen_objects_are_still_freed_when_dropped() -> None:
    # Reference counting frees an acyclic object frozen with the rest (the model's objects are
    # acyclic): freezing costs no memory when the store replaces them later.
    class Probe:
        freed = False

        def __del__(self) -> None:
            Probe.freed = True

    held = [Probe()]
    collector.freeze()
    held.clear()
    assert Probe.freed

"""Python's cycle collector in a serving process: out of the way once the store has synced.

Contract: `freeze_when_synced(store)` registers, through `Store.when_synced`, one
`gc.freeze()` for the moment every watched kind has been listed: everything alive then — the
imported modules, the synced model, the resolver's records, the listeners — moves to the
collector's permanent generation, where no collection walks it again. Reference counting still
frees whatever is dropped later (the model's objects are acyclic), so memory does not grow.

Why: a full (generation 2) collection walks every tracked object while holding the GIL, and
nothing else runs meanwhile — not the trio loop, not the UDP receive thread (kdns/dns/
receiver.py). With the start-up heap in view, each one took tens of milliseconds: while a
500-endpoint answer was rebuilt every 50 ms, other clients' p99 went from 0.35 ms to 18.6 ms,
and to 7.1 ms with collections off (tests/bench/big_answer.py, docs/benchmarks.md). A manifest
source already freezes what its start-up load built (kdns/sources/manifests.py) and gives it
back to the collector on its next load; this does the same for every source, once.
"""

from __future__ import annotations

import gc
import logging

from kdns.store import Store

log = logging.getLogger(__name__)


def freeze() -> None:
    """Move every object alive now out of the cycle collector's sight (O(1): none is visited)."""
    gc.freeze()
    log.debug("cycle collector: %d start-up objects frozen", gc.get_freeze_count())


def freeze_when_synced(store: Store) -> None:
    """`freeze()` once, when the store has first synced (now, if it has)."""
    store.when_synced(freeze)

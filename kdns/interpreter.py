"""The interpreter's scheduling out of the answers' way in a serving process.

Settings of CPython that decide how long a thread answering DNS waits behind Python that
another thread runs (the trio loop rebuilding a large answer, applying a relist; a watch
thread converting an event):

- The switch interval. `answer_promptly()` sets `sys.setswitchinterval(SWITCH_INTERVAL)`, for
  the whole process, once: when `kdns serve` starts, and when `kdns proxy --dns` binds its node
  DNS (kdns/proxyapp.py; a proxy without `--dns` keeps CPython's defaults: no thread of it
  answers queries); and it has the cycle collector's youngest generation collected every
  `YOUNG_COLLECTION` allocations, not 700.
- The switch interval during a large build. `handing_over()` is a context manager the
  Kubernetes source, the resolver and the encoder enter around work that grows with a
  Service's endpoints, only when it is large (`LARGE_BUILD` endpoints or records or more: a
  watch event that changes such a Service, its records, its change, an answer from one RRset,
  a message, and in the source's watch thread the conversion of a watch event's object that
  carries as many endpoints): each thread's outermost scope makes it a holder of the short
  interval, and while any thread holds it the interval is `HANDOVER_INTERVAL` (0.1 ms); when
  the last holder lets go it is set back as the first found it, once. A scope in a trio task
  holds until the task's step ends (the task yields to the loop, returns or raises), when the
  thread lets go and sleeps for no time (`time.sleep(0)`); each outermost scope sleeps so on
  leaving as well. So the Python between a large rebuild's scopes (the store's bookkeeping,
  the handler's, the answer cache's) runs at the short interval too, and the next task the
  loop runs finds the serving one (unless a watch thread still converts). The step's end is
  trio's `after_task_step` hook (an instrument added when a scope is left, removed when it has
  run: about 9 µs per large step, nothing on any other); outside a trio task (a watch thread,
  `kdns explain`, unit tests) the thread lets go, and sleeps, as the scope ends. Nesting-safe:
  an inner scope of the same thread changes nothing and does not sleep. A process that does
  not run at `SWITCH_INTERVAL` when nobody holds the short interval is left alone: at
  CPython's 5 ms no thread of it answers queries (a `kdns proxy` without `--dns`, whose source
  enters the scopes too), and at 0.1 ms or less it switches as often. Scopes hold synchronous
  code only, each left by the thread that entered it, last in first out. Below the threshold a
  build pays one length comparison (the watch thread: a length or two of the raw object).
- The cycle collector. `freeze_when_synced(store)` registers, through `Store.when_synced`, one
  `gc.freeze()` for the moment every watched kind has been listed: everything alive then — the
  imported modules, the synced model, the resolver's records, the listeners — moves to the
  collector's permanent generation, where no collection walks it again. Reference counting
  still frees whatever is dropped later (the model's objects are acyclic), so memory does not
  grow. Registered for `kdns serve` and `kdns proxy`.
- The cycle collector during a proxy's full sync. `collector_paused()` is a context manager: no
  automatic collection inside the block, and the collector as it was on the way out, also when
  the block raises. `kdns proxy`'s sync engine runs every full sync in it
  (`SyncEngine(freeze_full_syncs=True)`, kdns/proxyapp.py) and calls `freeze()` once the sync
  has succeeded: what it keeps — every route, every Service's rendered rules — moves to the
  permanent generation without being walked. The previous full sync's were freed by reference
  counting when this one replaced them (they are acyclic: tests/proxy/test_sync.py checks that
  the frozen count stays flat from one full sync to the next and that, given back to the
  collector, none of it is cyclic garbage), so the permanent generation holds about one sync's
  state, not one per sync. A failed sync freezes nothing: the collector takes up what it
  left. What stays frozen for good is cyclic garbage that other tasks made while the collector
  was paused or that was alive at the freeze and dropped later: over 8–9 back-to-back full
  syncs at 5,000 Services the frozen count moved by less than 400 of 308,000 objects, and did
  not grow (tests/bench/node_dns_sync.py `--census`).

Contract: they only change how the interpreter schedules; no answer, rule or state changes.
`handing_over()`'s sleeps hold the trio thread back for the kernel's timer slack (about 70 µs)
once per outermost scope and once per step that entered one, no longer (a watch thread once
per large event it converts). The switch interval is one word of the interpreter's, set
whole. While serving, it is set by the holders of the short interval only — the trio thread
and the Kubernetes source's watch threads, any number at once — and only under one
`threading.Lock` together with the count of holders and the interval to set back: joining
(the first sets 0.1 ms), leaving (the last sets it back) and the count are one step for every
other thread, so no holder has it set back under it and a thread that joins while it is short
never takes 0.1 ms for the interval to set back. Only large scopes take the lock (a hold and
its release, both interval changes included, 0.6 µs); a thread that waits for it lets the
GIL go, so the thread inside gets the GIL back and leaves: no deadlock. Each thread's
nesting depth, and whether it holds to its step's end, is its own (`threading.local`).
Nothing leaves the
process at the short interval: every hold is let go, by the scope's `finally` or by trio's
`after_task_step`, which trio calls after every step, also one that raised, and the step that
ends a run.

Why the switch interval: the UDP receive thread (kdns/dns/receiver.py) releases the GIL in every
`recvfrom` and `sendto`; when the trio thread holds it to build an answer or apply a change, the
receive thread gets it back only when CPython makes the holder let go, after the switch
interval (5 ms by default) — so a cached answer that arrives during a 7 ms rebuild waited for
most of it. Measured on a quiet machine with tests/bench/big_answer.py (a 500-endpoint
headless Service rebuilt every 50 ms, another client at 1,000 qps; idle p99 0.36 ms in every
case): the other client's p99 while rebuilding was 8.68 ms at 5 ms, 1.97 ms at 0.5 ms, 1.31 ms
at 0.2 ms, 1.49 ms at 0.1 ms and 1.80 ms at 0.05 ms (shorter intervals got worse again: each
forced switch costs both threads). But a short interval hurt elsewhere: with a 20k qps flood
of never-asked names through a forced relist at 10,000 Services (tests/bench/relist_flood.py),
0.2 ms lost 2 and 45 of another client's 6,000 queries (p99 363 and 519 ms; the relist took
2.5–2.9 s instead of 1.7–2.2), while 5 ms lost none (p99 14–21 ms). Once the large answer had
become cheaper (2.9 ms), 1 ms lost none in two relist runs (p99 15 and 27 ms) and kept the
rebuilding p99 at 1.6 ms (5 ms: 4.9 ms; 0.5 ms: 1.3 ms, but p99 34–63 ms in the relist runs):
1 ms is the interval that serves both. docs/benchmarks.md has the figures.

Why the node DNS too: `kdns proxy --dns` answers from the same receive thread while the proxy
syncs, and a full sync at 5,000 Services took 1.1–1.5 s here: the routes rebuilt in the trio
thread and the rules rendered in the data plane's worker thread, in Python, before nft applies
them, with collections of the objects it leaves alive. Measured with tests/bench/node_dns_sync.py
(5,000 Services, nftables mode, back-to-back full syncs forced by flipping the node's zone, a
client at 1,000 qps; the settings interleaved in one run; load 1.5–4.6 on 2 cores,
docs/benchmarks.md): with CPython's defaults 14.5–23.1 % of the node DNS's answers came more
than 5 ms later than a control echo server's (its own process, probed at the same moment),
with `answer_promptly()` 2.9–8.7 %, in each of eight pairs; the p99 of that excess went from
39–118 ms to 12–58 ms. The 1 ms interval alone, or the threshold alone, left 12–15 %: the
interval shortens the waits for hand-overs, the threshold makes long collections fewer, and a
collection holds the GIL throughout whatever the interval. The syncs were no slower (median
ratio 0.93, 1.03 and 1.06). Idle, both answer alike. What remains is mostly the collector's (its
longest collection during the syncs still 22–89 ms), and stalls of the whole machine (the
control echo's own p99 reached 100–168 ms in some runs) hid the difference in the raw p99 of
some pairs.

Why a shorter interval only while a large answer is built: the 1 ms interval still made a
query that arrived during a 500-endpoint rebuild wait about a millisecond, and that rebuild is
the one moment the trio thread holds the GIL for milliseconds on the serving path; a relist,
which a short interval made worse, is not such a build (`Resolver.apply` scopes a small change's
large Services, never a bulk one). The interval is read by a thread when it starts to wait for
the GIL (CPython's `take_gil`), so a query read during the build waits 0.1 ms, not 1 ms, for
the first hand-over. Measured with tests/bench/big_answer.py (docs/benchmarks.md): the median
wait of the queries sent during a rebuild went from 1.25–1.34 ms to 0.57–0.69 ms.

Why the sleep after a large build: a forced switch needs the waiting thread to run twice (to
time out and ask, then to take the GIL), and on a loaded machine, or on the trio thread's own
core, it waits for the kernel to schedule it each time. `time.sleep(0)` (a nanosleep with the
GIL released: about 70 µs of wall time on Linux, the thread's timer slack, 15 µs of CPU) gives
away the CPU as well as the GIL, so whatever queued during the build is answered at once. With
it the median wait of the queries sent during a rebuild went down again, to 0.33–0.38 ms
(0.34–0.61 ms against main's 1.05–1.32 ms in interleaved runs, and the other clients' p99
while rebuilding 1.4–2.8 ms against 2.0–3.3 ms; docs/benchmarks.md), for about
0.1–0.3 ms more CPU per rebuild. The price: a sleep may hand the core to another process
too, so on a loaded machine (load 1.9 on 2 cores) the large answer itself came 1–1.7 ms later
(p50 of the rebuild's wall time); at load 2.0–2.4 the sleeps were also what kept the other
clients' p90 and p99 during rebuilds steady (docs/benchmarks.md). Not more often: a sleep on
entering the scope as well made it worse (0.6 ms, and longer rebuilds), and each one costs the
build its 70 µs or more. What is left of the p99 on a shared machine is mostly the kernel's:
the receive thread still needs two switches per query while the trio thread builds (one to
read it, one to go back to reading), and a thread waits for a core.

Why to the end of the trio step, and from the source's apply: with the interval set back as
each scope ended, a 500-endpoint rebuild still ran about 1.3–1.8 ms of its Python at 1 ms —
the store's merge of the slices before the resolver's scope, the bookkeeping between the
change and the answer, the cache's after the encoding — and a query that arrived then waited
up to 1 ms; the lead measured 1.34 ms of other clients' p99 while rebuilding with the scopes
against 0.66 ms with the whole process at 0.1 ms (quiet machine). Now a rebuild runs about
50 µs at 1 ms (the source's step before its scope). The whole process at 0.1 ms is not an
option, and nor is keeping it short past the step: a relist, which the next task may apply,
lost steady queries at 0.1 ms (tests/bench/relist_flood.py: 43 and 76 of 4,000, none at
1 ms). Hence the step's end, and trio's `after_task_step` rather than a callback queued with
`run_sync_soon` (run by the loop's entry-queue task after whatever other tasks are runnable:
a relist could start at 0.1 ms). Why a sleep per scope still, not only the one at the step's
end: measured on a shared machine (load 1.1–2.6; docs/benchmarks.md), with a single sleep the
queries sent during a rebuild waited longer than with main's four (p90 median 2.6 against
1.6 ms), with a sleep per scope less (1.3–1.4 against 1.7 ms; the p99 while rebuilding 1.8
against 2.5 ms); interleaved with main, the final tree: no difference beyond the noise in six
runs at load 1.4–2.8, and in four at load 1.7–2.1 a p90 of 1.24 against 1.50 ms (median;
lower in each pair) and a p99 while rebuilding of 1.98 against 2.29 ms.

Why the watch thread's conversion too, and why a count shared by threads: in `kdns serve` the
Kubernetes source's watch thread reads and converts each watch event before the trio thread
applies it (`json.loads` and `endpointslice_from_dict`: 7 ms of Python for a 500-endpoint
slice, 1 ms for a 100-endpoint one, the EndpointSlice controller's default most per slice),
and at 1 ms the queries sent meanwhile waited p50 0.9–2.2 ms, longer than during the trio
thread's rebuild. That thread and the trio thread overlap (the trio thread applies the
previous event while the next is converted), so neither may set the interval back under the
other: hence one hold per thread, counted under a lock, the last to leave setting it back.
Whether the object is large is read from the raw dict (the length of its `endpoints`, or of
an Endpoints object's addresses), before it is converted; `json.loads` before that is one C
call that keeps the GIL whatever the interval. A list's objects are never converted in the
scope: a relist at 0.1 ms lost steady queries (above). Measured with tests/bench/big_answer.py
`--converting` (docs/benchmarks.md, nine interleaved runs): the median wait of the queries
sent while a 500-endpoint slice was converted went from 0.59–1.21 ms to 0.32–0.56 ms (lower in
each pair), its p90 from a median of 1.99 to 1.59 ms (the line's `json.loads` is left). The
watch thread sleeps for no time as it leaves, as a trio scope does: with it that p90 was lower
in four of six interleaved runs (median 1.46 against 1.87 ms); it delays the event's apply by
about 70 µs.

Why the youngest generation's threshold: a 500-endpoint answer allocates some thousands of
container objects, most of them alive until the answer is cached; at CPython's 700 the
collector walked them several times per answer, a tenth of its CPU (2.1 → 1.9 ms per answer
after a rollout step, about the same as with the collector off). At 10,000 most temporaries are
freed by reference counting before a collection sees them, and one collection of the youngest
generation walks at most 10,000 objects (a fraction of a millisecond). Cyclic garbage waits
longer before it is freed, bounded by the same count.

Why the pause and the freeze around a proxy's full sync: a full sync rebuilds every route and
renders every rule anew, and keeps them until the next one. At 5,000 Services (one port, three
endpoints each; tests/bench/node_dns_sync.py `--census`, back-to-back full syncs) the young
collections walked the render in progress — 46,000–60,000 objects, mostly lists (25,000),
tuples (13,000), dicts and the renderer's per-Service rules (4,500 each) — 19–58 ms each on a
loaded machine, and a full collection walked what two syncs keep (the old routes are alive
until the new ones are applied, for the conntrack clean-up): 99,600 objects, 38,800 tuples,
30,000 `RouteEndpoint`, 10,000 `ServicePortRoute`, 7,600 dicts, 7,300 rendered Services,
81–101 ms; the start-up freeze had 135,000 frozen, the model's. Each held the GIL throughout,
so the node DNS answered nothing meanwhile. With the pause and the freeze, in three rounds
interleaved with the tree before (load 3.0–4.5 on 2 cores; docs/benchmarks.md), the proxy
made no collection of 10 ms or more while syncing (10, 11 and 13 before, the longest 119, 72
and 46 ms); the share of answers more than 5 ms later than the control echo's was 4.7, 2.2 and
4.2 % (8.8, 5.5, 3.6 %), the syncs took as long (median 1,015–1,193 ms against 1,030–1,594).
On a quiet machine (load 0.5–0.8), where the collections were shorter (the longest 47–49 ms),
the share went from 3.1–3.4 % to 1.9–2.2 %, with the data plane also emptying the rendering it
replaces entry by entry (kdns/proxy/nftables.py `release`: dropped whole, it freed in one
cascade of deallocations that no switch interval interrupts, 10–20 ms at 5,000 Services).
The iptables data plane does the same (kdns/proxy/iptables.py `release`), and splits, joins
and copies its megabytes of restore input and `iptables-save` output in steps (kdns/proxy/
dataplane.py): each whole was one C call or one cascade of frees holding the GIL 5–14 ms at
5,000 Services (docs/benchmarks.md, "Node DNS during proxy syncs", iptables mode).

Why not tune the thresholds instead: a young collection walks what survived the last one, and
during a render that is the render itself whatever the threshold; a rarer full collection is
as long when it comes. Measured so far: the youngest generation's threshold at 10,000 instead
of 700 made the long collections fewer (6–12 of 10 ms or more per 8–10 s of syncing, against
10–18), not shorter (the longest 22–129 ms; docs/benchmarks.md).

Why the freeze: a full (generation 2) collection walks every tracked object while holding the
GIL, and nothing else runs meanwhile — not the trio loop, not the receive thread. With the
start-up heap in view, each one took tens of milliseconds: while a 500-endpoint answer was
rebuilt every 50 ms, other clients' p99 went from 0.35 ms to 18.6 ms, and to 7.1 ms with
collections off. A manifest source already freezes what its start-up load built
(kdns/sources/manifests.py) and gives it back to the collector on its next load; this does the
same for every source, once.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from kdns.store import Store

log = logging.getLogger(__name__)

# Seconds (CPython's default is 0.005): the module docstring says how this value was chosen.
SWITCH_INTERVAL = 0.001
# Allocations between collections of the youngest generation (CPython's default is 700).
YOUNG_COLLECTION = 10_000
# Seconds: the switch interval inside `handing_over()` (the module docstring).
HANDOVER_INTERVAL = 0.0001
# Endpoints (or records) from which a build runs under `handing_over()`: about 1 µs of Python
# per endpoint and pass, so a pass over fewer takes under the short interval anyway.
LARGE_BUILD = 100


def answer_promptly() -> None:
    """Make a thread that holds the GIL let go after `SWITCH_INTERVAL` when another waits,
    and the cycle collector walk young objects less often (the module docstring)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])
    log.debug(
        "switch interval %.1f ms, young collection every %d allocations",
        SWITCH_INTERVAL * 1e3,
        YOUNG_COLLECTION,
    )


# The holders of the short interval now, across threads, and the interval to set back when the
# last one leaves (the one the first found): read and written only under `_holding`, so that
# joining, leaving and setting the interval are one step for every other thread (the module
# docstring). A trio thread's step is one holder, a worker thread's conversion another.
_holding = threading.Lock()
_holders = 0
_serving = SWITCH_INTERVAL


class _Scopes(threading.local):
    """One thread's own state (each thread sees its own values): how deep it is inside
    `handing_over()` now, and whether it holds the short interval to the end of its trio
    task's step. Scopes hold synchronous code only (no `await` inside one), so no other trio
    task runs while the trio thread's depth is above zero."""

    depth = 0
    held_for_step = False


_scopes = _Scopes()


@contextmanager
def handing_over() -> Iterator[None]:
    """Run the block with the switch interval at most `HANDOVER_INTERVAL`, and in a trio task
    keep it so until the task's step ends; then let it go, also when the block raises (outside
    a trio task: as the block ends). The interval is set back once no thread holds it. The
    module docstring says why and when."""
    mine = _scopes
    if mine.depth or not (mine.held_for_step or _hold()):
        yield  # nested: the outermost scope decides; or nothing to change (`_answering`)
        return
    mine.depth += 1
    try:
        yield
    finally:
        mine.depth -= 1
        if not (mine.held_for_step or _hold_until_step_ends()):
            _release()
        # The CPU given away now (the module docstring): what queued for the receive thread
        # meanwhile is answered now, at the short interval or the one set back.
        time.sleep(0)


def _answering(interval: float) -> bool:
    """Whether a process at `interval` answers DNS from a thread of its own and runs longer
    than the short interval: `answer_promptly()` has set `SWITCH_INTERVAL`. One at CPython's
    5 ms (a `kdns proxy` without `--dns`, `kdns explain`) has no such thread to hand over to,
    and one at `HANDOVER_INTERVAL` or shorter already switches as often."""
    return HANDOVER_INTERVAL < interval <= SWITCH_INTERVAL


def _hold() -> bool:
    """Join the holders of the short interval (the first sets it); False, holding nothing,
    when nobody holds it and the process is not `_answering`."""
    global _holders, _serving
    with _holding:
        if not _holders:
            interval = sys.getswitchinterval()
            if not _answering(interval):
                return False
            _serving = interval
            sys.setswitchinterval(HANDOVER_INTERVAL)
        _holders += 1
    return True


def _release() -> None:
    """Leave the holders; the last one sets the interval back."""
    global _holders
    with _holding:
        _holders -= 1
        if not _holders:
            sys.setswitchinterval(_serving)


def _hold_until_step_ends() -> bool:
    """Keep this thread's hold until the current trio task's step ends; False outside one."""
    if not trio.lowlevel.in_trio_task():
        return False
    trio.lowlevel.add_instrument(_STEP_END)
    _scopes.held_for_step = True  # only once the instrument that lets it go is there
    return True


class _StepEnd(trio.abc.Instrument):
    """Lets the trio thread's hold go as the step of the task that left a scope ends (trio
    calls `after_task_step` after every step, one that raised or returned too), then leaves."""

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        trio.lowlevel.remove_instrument(self)
        if _scopes.held_for_step:
            _scopes.held_for_step = False
            _release()
            # The GIL and the CPU given away for a moment (the module docstring), even to a
            # receive thread that shares this core.
            time.sleep(0)


_STEP_END = _StepEnd()


def freeze() -> None:
    """Move every object alive now out of the cycle collector's sight (O(1): none is visited)."""
    gc.freeze()
    log.debug("cycle collector: %d objects frozen", gc.get_freeze_count())


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with no automatic cycle collection, then let the collector run as it did
    before, also when the block raises (the module docstring says why and when)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def freeze_when_synced(store: Store) -> None:
    """`freeze()` once, when the store has first synced (now, if it has)."""
    store.when_synced(freeze)

"""The manifest source: Kubernetes manifest files → the store, re-read when they change.

Contract:
- `ManifestSource.load()` reads the files and returns the errors; with none, the state is ready
  to `apply`. At start-up the caller exits 2 on any error (one line per error). Only files that
  changed since the last load are parsed again (`ManifestReader`).
- `run` waits for a change with inotify (`filewatch.FileWatch`: the folders and files named, and
  every folder under them) and looks at the files (a stat of each) only when one may have
  changed, and every `safety_poll` (5 s, or longer so that it costs at most 0.5 % of a thread)
  in case an event was missed; where inotify cannot be used (or `watch=False`), it polls them
  every `poll_interval` (0.2 s) instead. Either way, looks in a row (polling, or a folder
  written all the time) are `poll_interval` apart, or further when one costs more than 5 % of
  that time, so a folder of 10,000 files stays cheap however often it is written; a change after
  a quiet spell is looked at at once. Once a change has held still for `poll_interval` (a file
  being written is not read half-way; one just emptied, for 2 s), the files are loaded again: a
  new answer is served about 0.2 s after the write (polling: one poll later). `polls` counts the
  looks; `watching` says whether inotify is used. The log line of a reload says how many files
  were parsed again and what the read and the apply cost. A reload with errors logs each one and
  keeps the last good state serving; nothing is half-applied.
- The first `apply` replaces every kind (`Store.replace`). Later ones hand the store only what
  changed (`upsert`/`delete`), or replace a kind when much of it changed; either way all four
  kinds change in one turn of the trio loop, so no query sees a mix of old and new files.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from kdns.sources.filewatch import FileWatch
from kdns.sources.manifests import (
    Fingerprint,
    ManifestError,
    ManifestReader,
    ManifestSet,
    cyclic_gc_paused,
    fingerprint,
)
from kdns.sources.scope import Scope
from kdns.store import (
    ENDPOINTSLICES,
    IMPORTSLICES,
    NAMESPACES,
    NODES,
    PODS,
    SERVICECIDRS,
    SERVICEIMPORTS,
    SERVICES,
    Store,
)

log = logging.getLogger(__name__)

EMPTIED_SETTLE = 2.0  # seconds a file that was emptied must stay empty before it is believed
POLL_SHARE = 0.05  # the most of its time the watch may spend polling
# With inotify, the files are still looked at this often, in case an event was missed (a file
# on NFS written from another host, a link to a file outside the watched folders): as often as
# CoreDNS's hosts plugin re-reads its file (`reload`, 5 s by default), at a 25th of the cost of
# polling every 0.2 s.
SAFETY_POLL = 5.0
SAFETY_SHARE = 0.005  # the most of its time the safety poll may spend (a folder of 10k files)
# Past this many changed objects of a kind, one `replace` is cheaper than an update each.
MAX_UPDATES = 100


def _emptied(before: Fingerprint, after: Fingerprint) -> bool:
    sizes = {path: size for path, _, size, _ in before}
    return any(size == 0 and sizes.get(path, 0) > 0 for path, _, size, _ in after)


def _changes(old: Mapping[Any, Any], new: Mapping[Any, Any]) -> tuple[list[Any], list[Any]] | None:
    """(keys removed, objects added or changed) from `old` to `new`; None past MAX_UPDATES."""
    removed = [key for key in old if key not in new]
    # Objects of files that were not parsed again are the very same objects: `is` is enough.
    changed = [obj for key, obj in new.items() if old.get(key) is not obj and old.get(key) != obj]
    if len(removed) + len(changed) > MAX_UPDATES:
        return None
    return removed, changed


class ManifestSource:
    def __init__(
        self,
        paths: Sequence[str],
        store: Store,
        poll_interval: float = 0.2,
        scope: Scope | None = None,
        *,
        watch: bool = True,
        safety_poll: float = SAFETY_POLL,
    ) -> None:
        self.paths = tuple(paths)
        self.store = store
        self.poll_interval = poll_interval
        self.watch = watch  # with inotify where it works; False polls every poll_interval
        self.safety_poll = safety_poll
        self.polls = 0  # looks at the files (a stat of each) since `run` started
        self.watching = False  # whether `run` waits on inotify (else it polls)
        self._settling: Fingerprint | None = None  # a change seen, not yet held still
        self._since = 0.0  # since when (trio's clock) it has held still
        self.reloads = 0
        self.reload_errors = 0
        self._pending: ManifestSet | None = None
        self._applied: ManifestSet | None = None
        self._fingerprint: Fingerprint = ()
        self._reader = ManifestReader(scope)
        self.last_load_seconds = 0.0
        # Objects of kinds kdns does not serve in the last good load, by kind (`kdns check`).
        self.ignored: dict[str, int] = {}

    def load(self) -> list[ManifestError]:
        started = time.monotonic()
        manifests, errors = self._reader.load(self.paths)
        self._fingerprint = self._reader.fingerprint
        self.last_load_seconds = time.monotonic() - started
        self._pending = None if errors else manifests
        if not errors:
            self.ignored = manifests.ignored
        return errors

    def apply(self) -> None:
        """Put the last successfully loaded manifests into the store."""
        manifests = self._pending
        if manifests is None:
            return
        self._pending = None
        applied = self._applied
        self._applied = manifests
        # The store builds its indexes of every object: as for the load, the cycle collector
        # would walk them again and again meanwhile (and, at start-up, afterwards).
        with cyclic_gc_paused(freeze=applied is None):
            self._apply(manifests, applied)

    def _apply(self, manifests: ManifestSet, applied: ManifestSet | None) -> None:
        for kind, attr in (
            (NAMESPACES, "namespaces"),
            (SERVICES, "services"),
            (ENDPOINTSLICES, "slices"),
            (PODS, "pods"),
            (SERVICEIMPORTS, "imports"),
            (IMPORTSLICES, "import_slices"),
            (NODES, "nodes"),
            (SERVICECIDRS, "service_cidrs"),
        ):
            new = getattr(manifests, attr)
            changes = None if applied is None else _changes(getattr(applied, attr), new)
            if changes is None:
                self.store.replace(kind, new)
                continue
            removed, changed = changes
            for key in removed:
                self.store.delete(kind, key)
            for obj in changed:
                self.store.upsert(kind, obj)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        spacing = self.poll_interval  # the least time between looks in a row (see below)
        safety = self.safety_poll
        woken = -math.inf  # when a change last woke a look (trio's clock)
        with FileWatch(self.paths, inotify=self.watch) as watch:
            while True:
                if self._settling is not None:
                    # A change seen is looked at again after the base interval, however long
                    # looks take: holding still for that long is what tells a finished write.
                    await trio.sleep(self.poll_interval)
                else:
                    every = safety if watch.active else spacing
                    if await watch.wait(every):
                        # Files written all the time (a folder shared with other programs)
                        # are looked at no more often than polling would, nor a big folder
                        # for more than POLL_SHARE of a thread; a change after a quiet spell
                        # at once.
                        await trio.sleep_until(woken + spacing)
                        woken = trio.current_time()
                    self.watching = watch.active
                started = time.monotonic()
                # Stat calls are cheap but blocking; a slow disk must not stall DNS answers.
                current = await watch.look(functools.partial(fingerprint, self.paths))
                self.polls += 1
                cost = time.monotonic() - started
                spacing = max(self.poll_interval, cost / POLL_SHARE)
                safety = max(self.safety_poll, cost / SAFETY_SHARE)
                if self._settled(current, trio.current_time()):
                    await self._reload()

    def _settled(self, current: Fingerprint, now: float) -> bool:
        """Whether the files' `current` fingerprint is a change that has held still long enough."""
        if current == self._fingerprint:
            self._settling = None
            return False
        if current != self._settling:
            self._settling, self._since = current, now
        # A change must hold still before it is read: `kubectl get -o yaml > file` empties
        # the file first and fills it over a while, and serving that half-written state
        # would answer NXDOMAIN for names that exist (and clients cache negatives). A file
        # that has just become empty is most likely such a write: give it longer.
        wait = EMPTIED_SETTLE if _emptied(self._fingerprint, current) else self.poll_interval
        if now - self._since < wait:
            return False
        self._settling = None
        return True

    async def _reload(self) -> None:
        errors = await trio.to_thread.run_sync(self.load)
        if errors:
            self.reload_errors += 1
            for error in errors:
                log.error("reload failed, still serving the last good manifests: %s", error)
            return
        self.reloads += 1
        started = time.monotonic()
        self.apply()
        log.info(
            "reloaded manifests from %s: %d of %d files parsed again, read in %.3f s, "
            "applied in %.3f s",
            ", ".join(self.paths),
            self._reader.parsed,
            len(self._fingerprint),
            self.last_load_seconds,
            time.monotonic() - started,
        )

"""The manifest source: Kubernetes manifest files → the store, re-read when they change.

Contract:
- `ManifestSource.load()` reads every file once and returns the errors; with none, the state is
  ready to `apply`. At start-up the caller exits 2 on any error (one line per error).
- `run` polls the files (`poll_interval`, default 0.2 s) and, once a change has held still for
  one poll (a file being written is not read half-way; one just emptied, for 2 s), re-reads
  them all: a new answer is served within about 0.5 s of the write. A reload
  with errors logs each one and keeps the last good state serving; nothing is half-applied.
- Every kind is replaced as one step (`Store.replace`), all four in one turn of the trio loop,
  so no query sees a mix of old and new files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import trio

from kdns.sources.manifests import ManifestError, ManifestSet, load, manifest_files
from kdns.store import ENDPOINTSLICES, NAMESPACES, NODES, PODS, SERVICES, Store

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int, int], ...]

EMPTIED_SETTLE = 2.0  # seconds a file that was emptied must stay empty before it is believed


def _emptied(before: Fingerprint, after: Fingerprint) -> bool:
    sizes = {path: size for path, _, size, _ in before}
    return any(size == 0 and sizes.get(path, 0) > 0 for path, _, size, _ in after)


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """What identifies the current contents cheaply: each file's path, inode, size and mtime."""
    entries = []
    for path in manifest_files(paths):
        try:
            st = os.stat(path)
        except OSError:
            entries.append((path, -1, -1, -1))
            continue
        entries.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(entries)


class ManifestSource:
    def __init__(self, paths: Sequence[str], store: Store, poll_interval: float = 0.2) -> None:
        self.paths = tuple(paths)
        self.store = store
        self.poll_interval = poll_interval
        self.reloads = 0
        self.reload_errors = 0
        self._pending: ManifestSet | None = None
        self._fingerprint: Fingerprint = ()
        # Objects of kinds kdns does not serve in the last good load, by kind (`kdns check`).
        self.ignored: dict[str, int] = {}

    def load(self) -> list[ManifestError]:
        self._fingerprint = fingerprint(self.paths)
        manifests, errors = load(self.paths)
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
        self.store.replace(NAMESPACES, manifests.namespaces)
        self.store.replace(SERVICES, manifests.services)
        self.store.replace(ENDPOINTSLICES, manifests.slices)
        self.store.replace(PODS, manifests.pods)
        self.store.replace(NODES, manifests.nodes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        settling: Fingerprint | None = None
        since = 0.0
        while True:
            await trio.sleep(self.poll_interval)
            # Stat calls are cheap but blocking; a slow disk must not stall DNS answers.
            current = await trio.to_thread.run_sync(fingerprint, self.paths)
            if current == self._fingerprint:
                settling = None
                continue
            now = trio.current_time()
            if current != settling:
                settling, since = current, now
            # A change must hold still before it is read: `kubectl get -o yaml > file` empties
            # the file first and fills it over a while, and serving that half-written state
            # would answer NXDOMAIN for names that exist (and clients cache negatives). A file
            # that has just become empty is most likely such a write: give it longer.
            wait = EMPTIED_SETTLE if _emptied(self._fingerprint, current) else self.poll_interval
            if now - since < wait:
                continue
            settling = None
            errors = await trio.to_thread.run_sync(self.load)
            if errors:
                self.reload_errors += 1
                for error in errors:
                    log.error("reload failed, still serving the last good manifests: %s", error)
                continue
            self.reloads += 1
            self.apply()
            log.info("reloaded manifests from %s", ", ".join(self.paths))

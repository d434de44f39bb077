"""The manifest source: Kubernetes manifest files → the store, re-read when they change.

Contract:
- `ManifestSource.load()` reads every file once and returns the errors; with none, the state is
  ready to `apply`. At start-up the caller exits 2 on any error (one line per error).
- `run` polls the files (`poll_interval`, default 0.2 s, so a new answer is served well within
  1 s of a write) and, when any file was added, removed or changed, re-reads them all. A reload
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
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int, int], ...]


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

    def load(self) -> list[ManifestError]:
        self._fingerprint = fingerprint(self.paths)
        manifests, errors = load(self.paths)
        self._pending = None if errors else manifests
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval)
            # Stat calls are cheap but blocking; a slow disk must not stall DNS answers.
            current = await trio.to_thread.run_sync(fingerprint, self.paths)
            if current == self._fingerprint:
                continue
            errors = await trio.to_thread.run_sync(self.load)
            if errors:
                self.reload_errors += 1
                for error in errors:
                    log.error("reload failed, still serving the last good manifests: %s", error)
                continue
            self.reloads += 1
            self.apply()
            log.info("reloaded manifests from %s", ", ".join(self.paths))

"""Wait until something under some paths may have changed: Linux inotify, else a timer.

An idle server should cost ~no CPU: stat-ing every manifest file five times a second does not
(about 4 ms of CPU a second on the benchmark machine). inotify wakes the caller only when a
watched folder or file sees a write, a rename, a creation or a deletion.

Contract:
- `FileWatch(paths, inotify=True)` is a context manager; leaving it closes the inotify fd (a
  cancelled `run` included). `inotify=False`, or inotify unavailable, makes it a plain timer.
- `await watch.wait(timeout)` returns True when something under `paths` may have changed since
  its last return, False after `timeout` seconds, whichever is first. It says nothing about *what*
  changed: the caller then looks with `await watch.look(fn)` (e.g. `manifests.fingerprint`),
  which sets the watches again where need be, then calls `fn` in the same worker thread, so
  a change made after the watches and missed by `fn` wakes the next `wait`. The first `wait`
  returns False at once: nothing is watched yet, anything may have changed.
- What is watched: a folder and every folder under it as `manifests.manifest_files` reads them
  (links followed, each real folder once, names starting with a dot skipped); a file and its
  folder. A folder's watch sees its files written, created, renamed over, deleted, and a
  ConfigMap volume's update (kubelet swaps the `..data` link in the mounted folder: a move).
  The watches are set again (by the next `look`) after a folder is created, deleted or moved,
  after the kernel dropped one (`IN_IGNORED`) or lost events (`IN_Q_OVERFLOW`), and after each
  timeout, so a new sub-folder is watched (a new link to a folder, after the next timeout) and
  a missed event (NFS, a link to a file elsewhere) is made up for by the caller's look at the
  timeout.
- `watch.active` is False once inotify cannot be used (no `inotify_init1`, too many inotify
  instances, the watch limit `fs.inotify.max_user_watches` reached): that is logged once,
  naming why, and from then on `wait` is a timer; the caller then polls as often as it must.
- Only "something changed" events are asked for (no open/read/close-without-write), so the
  caller reading the files wakes nobody.

Threads: walking the folders and setting watches blocks, so `look` does it in a worker thread
while the trio task awaits it; the fd is read and closed on the trio thread only, never while
the worker uses it (`look` waits for its thread even when cancelled).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

import trio

log = logging.getLogger(__name__)
T = TypeVar("T")

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000  # in an event's mask: the name is a folder's

# What may change what a folder holds; IN_ATTRIB because `touch` changes only the mtime the
# caller's fingerprint compares.
EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
# After these the folders to watch, or the inodes behind their names, may be others: a folder
# came or went (a link to one did too, but that shows only as a file: the safety look sets the
# watches again), a watched one was moved or deleted, the kernel dropped a watch or events.
NAMES = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
WATCHES = IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW | IN_IGNORED
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ_SIZE = 64 * 1024  # many events per read; more than one event's largest size (16 + 256)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "inotify_init1"):  # not Linux, or a libc without it
        return None
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.inotify_rm_watch.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def watched_paths(paths: Sequence[str]) -> set[str]:
    """The folders and files to watch for `paths` (see the module's contract)."""
    watched: set[str] = set()
    for path in paths:
        if not os.path.isdir(path):
            # A file, or a path that does not exist yet: its folder sees it come and go.
            watched.update((path, os.path.dirname(path) or "."))
            continue
        visited: set[str] = set()
        for folder, dirnames, _ in os.walk(path, followlinks=True):
            real = os.path.realpath(folder)
            if real in visited:
                dirnames.clear()
                continue
            visited.add(real)
            watched.add(folder)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return watched


def _reason(err: int, path: str) -> str:
    if err == errno.ENOSPC:
        return f"{path}: the inotify watch limit is reached (sysctl fs.inotify.max_user_watches)"
    if err == errno.EMFILE:  # inotify_init1: this user's instances, or this process's files
        return f"{path}: too many inotify instances (sysctl fs.inotify.max_user_instances) or files"
    return f"{path}: {os.strerror(err)}"


class FileWatch:
    def __init__(self, paths: Sequence[str], *, inotify: bool = True) -> None:
        self.paths = tuple(paths)
        self._inotify = inotify
        self._fd: int | None = None
        self._stale = True  # the watches are to be set (again) before the next look
        self._wds: set[int] = set()
        self._dropped: set[int] = set()  # watches removed on purpose: their IN_IGNORED is ours

    @property
    def active(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileWatch:
        if not self._inotify:
            return self
        if _LIBC is None:
            self._fall_back("this system has no inotify")
            return self
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            self._fall_back(_reason(ctypes.get_errno(), "inotify_init1"))
            return self
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    async def wait(self, timeout: float) -> bool:
        """Return when something under the paths may have changed (True), or after `timeout` s
        (False)."""
        if self._fd is None or self._stale:
            # Not watching, or the watches are to be set by `look` first.
            await trio.sleep(timeout if self._fd is None else 0)
            return False
        with trio.move_on_after(timeout) as scope:
            while not self._read_events():
                await trio.lowlevel.wait_readable(self._fd)
        if scope.cancelled_caught:
            self._stale = True  # the safety look: the watches are set again too
        return not scope.cancelled_caught

    async def look(self, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread, after the watches are set again if `wait` found they may
        be out of date: one thread hop for both (the hop, not the work, is most of an idle
        look's cost). Set before `fn` looks, the watches see any change it may miss."""
        failure, result = await trio.to_thread.run_sync(self._arm_and_call, fn)
        if failure is not None:
            self._close()
            self._fall_back(failure)
        return result

    def _arm_and_call(self, fn: Callable[[], T]) -> tuple[str | None, T]:
        failure = None
        if self._fd is not None and self._stale:
            failure = self._arm()
            self._stale = False
        return failure, fn()

    def _read_events(self) -> bool:
        """Every queued event read and dropped: whether there was any. Marks the watches stale
        when one of them says so."""
        assert self._fd is not None
        seen = False
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return seen
            for wd, mask in _events(data):
                if mask & IN_IGNORED and wd in self._dropped:
                    self._dropped.discard(wd)
                    continue
                seen = True
                if mask & WATCHES or (mask & NAMES and mask & IN_ISDIR):
                    self._stale = True

    def _arm(self) -> str | None:
        """Watch what `watched_paths` says now; stop watching the rest. Why inotify cannot be
        used, or None."""
        assert self._fd is not None and _LIBC is not None
        wds: set[int] = set()
        for path in sorted(watched_paths(self.paths)):
            # Adding a watch again is cheap and idempotent: the same inode keeps its wd, one
            # replaced behind the same name (a rename over it) gets a new one.
            wd = _LIBC.inotify_add_watch(self._fd, os.fsencode(path), EVENTS)
            if wd >= 0:
                wds.add(wd)
                continue
            err = ctypes.get_errno()
            # Gone since the walk, or not there yet: the watch of its folder sees it come.
            if err not in (errno.ENOENT, errno.ENOTDIR):
                return _reason(err, path)
        for wd in self._wds - wds:
            if _LIBC.inotify_rm_watch(self._fd, wd) == 0:
                self._dropped.add(wd)
        self._wds = wds
        return None

    def _fall_back(self, why: str) -> None:
        paths = ", ".join(self.paths)
        log.warning("cannot watch %s with inotify (%s): polling the files instead", paths, why)

    def _close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def _events(data: bytes) -> Iterable[tuple[int, int]]:
    """(wd, mask) of each `struct inotify_event` in one read."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _, length = _HEADER.unpack_from(data, offset)
        yield wd, mask
        offset += _HEADER.size + length

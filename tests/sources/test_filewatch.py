"""kdns.sources.filewatch through the manifest source: real files, real inotify.

Every change below must be served well before the safety poll (60 s here) could have seen it,
so each test proves that an inotify event woke the source; the fallback test proves that
polling still converges without inotify, and the idle test (trio's MockClock) that nothing
looks at the files between two safety polls.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kdns.sources.filewatch import watched_paths
from kdns.sources.static import ManifestSource
from kdns.store import Store
from tests.dns.test_forward import wall_clock_limit
from tests.sources.test_static import service, write_services

WAIT = 20.0  # seconds (real time) a change may take to be served; a pass never comes close
SAFETY = 60.0  # the safety poll of these tests: a change served before it came by inotify


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait by the wall clock (trio's may be a MockClock standing still) until `predicate`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await trio.to_thread.run_sync(time.sleep, 0.01)


def cluster_ip(store: Store, name: str) -> str | None:
    svc = store.services.get(("default", name))
    return svc.cluster_ips[0] if svc is not None else None


@asynccontextmanager
async def running(paths: Sequence[Path], **options: Any) -> AsyncIterator[ManifestSource]:
    """A manifest source loaded from `paths` and running, past its first look at the files."""
    source = ManifestSource([str(p) for p in paths], Store(), safety_poll=SAFETY, **options)
    assert source.load() == []
    source.apply()
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await until(lambda: source.polls >= 1, "the first look at the files")
        assert source.watching == options.get("watch", True)
        yield source
        nursery.cancel_scope.cancel()


async def served(source: ManifestSource, name: str, ip: str | None) -> None:
    await until(lambda: cluster_ip(source.store, name) == ip, f"{name} served as {ip}")


def replace(path: Path, text: str) -> None:
    """What editors and `kubectl ... > tmp && mv tmp file` do: write aside, rename over."""
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_text(text)
    os.replace(aside, path)


async def test_an_edit_in_place_is_served(tmp_path: Path) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1", "s2": "10.96.0.2"})
    async with running([tmp_path / "m"]) as source:
        with open(tmp_path / "m" / "s1.yaml", "r+") as f:  # same inode, same size
            f.write(service("s1", "10.96.0.9"))
        await served(source, "s1", "10.96.0.9")
        assert cluster_ip(source.store, "s2") == "10.96.0.2"


async def test_a_rename_over_a_file_is_served(tmp_path: Path) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    async with running([tmp_path / "m"]) as source:
        replace(tmp_path / "m" / "s1.yaml", service("s1", "10.96.0.9"))
        await served(source, "s1", "10.96.0.9")
        # The file's new inode is watched as well as the old one was.
        replace(tmp_path / "m" / "s1.yaml", service("s1", "10.96.0.8"))
        await served(source, "s1", "10.96.0.8")


async def test_a_new_file_and_a_deletion_are_served(tmp_path: Path) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    async with running([tmp_path / "m"]) as source:
        write_services(tmp_path / "m", {"s2": "10.96.0.2"})
        await served(source, "s2", "10.96.0.2")
        (tmp_path / "m" / "s1.yaml").unlink()
        await served(source, "s1", None)


async def test_a_new_sub_folder_is_read_and_then_watched(tmp_path: Path) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    async with running([tmp_path / "m"]) as source:
        write_services(tmp_path / "m" / "team-a", {"s2": "10.96.0.2"})
        await served(source, "s2", "10.96.0.2")
        # Only a watch on the new folder itself sees a file in it written in place.
        with open(tmp_path / "m" / "team-a" / "s2.yaml", "r+") as f:
            f.write(service("s2", "10.96.0.9"))
        await served(source, "s2", "10.96.0.9")


def configmap_volume(mount: Path, version: str, files: dict[str, str]) -> None:
    """What kubelet's AtomicWriter does to a ConfigMap volume: the files go into a new hidden
    timestamped folder, `..data` is swapped to it by a rename, the old folder is removed, and
    each key is a link `KEY -> ..data/KEY` in the mounted folder."""
    mount.mkdir(exist_ok=True)
    (mount / version).mkdir()
    for name, text in files.items():
        (mount / version / name).write_text(text)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(version, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    for name in files:
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    if old is not None:
        shutil.rmtree(mount / old)


async def test_a_configmap_volume_update_is_served(tmp_path: Path) -> None:
    mount = tmp_path / "config"
    configmap_volume(mount, "..2026_12_06_23_00_00.1", {"s1.yaml": service("s1", "10.96.0.1")})
    async with running([mount]) as source:
        configmap_volume(
            mount,
            "..2026_12_06_23_01_00.2",
            {"s1.yaml": service("s1", "10.96.0.9"), "s2.yaml": service("s2", "10.96.0.2")},
        )
        await served(source, "s1", "10.96.0.9")
        await served(source, "s2", "10.96.0.2")


async def test_a_file_named_alone_is_watched_through_renames(tmp_path: Path) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    async with running([tmp_path / "m" / "s1.yaml"]) as source:
        replace(tmp_path / "m" / "s1.yaml", service("s1", "10.96.0.9"))
        await served(source, "s1", "10.96.0.9")
        with open(tmp_path / "m" / "s1.yaml", "r+") as f:
            f.write(service("s1", "10.96.0.8"))
        await served(source, "s1", "10.96.0.8")


async def test_without_inotify_the_files_are_polled(tmp_path: Path) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    async with running([tmp_path / "m"], watch=False) as source:
        # Looks with nothing changed: polling, not the 60 s safety poll.
        await until(lambda: source.polls >= 5, "five polls")
        replace(tmp_path / "m" / "s1.yaml", service("s1", "10.96.0.9"))
        await served(source, "s1", "10.96.0.9")


@contextmanager
def no_fd_left() -> Iterator[None]:
    """Every file descriptor this process may open is taken (RLIMIT_NOFILE), for a moment."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_where_inotify_cannot_be_used_the_source_says_why_and_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    source = ManifestSource([str(tmp_path / "m")], Store(), safety_poll=SAFETY)
    assert source.load() == []
    source.apply()
    async with trio.open_nursery() as nursery:
        with no_fd_left():  # `run` opens its inotify fd before it first waits
            await nursery.start(source.run)
        await until(lambda: source.polls >= 5, "five polls")
        assert not source.watching
        replace(tmp_path / "m" / "s1.yaml", service("s1", "10.96.0.9"))
        await served(source, "s1", "10.96.0.9")
        nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.name == "kdns.sources.filewatch"]
    assert warnings == [
        f"cannot watch {tmp_path / 'm'} with inotify (inotify_init1: too many inotify instances"
        " (sysctl fs.inotify.max_user_instances) or files): polling the files instead"
    ]


async def test_idle_files_are_looked_at_only_by_the_safety_poll(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    with wall_clock_limit(WAIT):
        async with running([tmp_path / "m"]) as source:
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            mock_clock.jump(SAFETY - 1)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            assert source.polls == 1
            mock_clock.jump(2)
            await until(lambda: source.polls == 2, "the safety poll")
            assert source.reloads == 0


def inotify_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # the listing's own fd is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


async def test_the_inotify_fd_is_closed_when_the_source_stops(tmp_path: Path) -> None:
    write_services(tmp_path / "m", {"s1": "10.96.0.1"})
    before = inotify_fds()
    async with running([tmp_path / "m"]):
        assert inotify_fds() == before + 1
    assert inotify_fds() == before


def test_watched_paths_are_the_folders_read_and_each_file_named_with_its_folder(
    tmp_path: Path,
) -> None:
    for folder in ("m/a/b", "m/.hidden/c", "m/..2026_12_06", "other"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "m" / "a" / "up").symlink_to(tmp_path / "m")  # a loop: each folder once
    (tmp_path / "m" / "linked").symlink_to(tmp_path / "other")  # a folder linked in
    (tmp_path / "one.yaml").write_text("")
    paths = [tmp_path / "m", tmp_path / "one.yaml", tmp_path / "missing" / "two.yaml"]
    assert watched_paths([str(p) for p in paths]) == {
        str(tmp_path / p)
        for p in ("m", "m/a", "m/a/b", "m/linked", "one.yaml", "", "missing/two.yaml", "missing")
    }

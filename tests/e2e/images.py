"""Helpers for the image test: a private podman store, a Debian base image, and an image's
entrypoint run the way a container runtime would start it, without one.

- `Podman(root)`: podman (and so buildah's build code) over a store of its own under `root`, so
  the test never reads or writes the machine's images; `close()` removes the images, unmounts
  whatever the store mounted and deletes it.
- `make_debian_base(podman, workdir, mirror)`: `debootstrap --variant=minbase` of Debian 12 with
  python3 and python3-venv, imported as the local image `BASE_IMAGE`. No container registry is
  needed, only a Debian mirror.
- `image_command(config, rootfs, args)`: the command line that runs an image's entrypoint and
  command as its configured user, with its configured environment, chrooted into its mounted
  filesystem. The caller puts it in a network namespace of its own.

Every subprocess has a timeout; a failing one raises `ImageError` with the end of its output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_IMAGE = "localhost/kdns-test-base:bookworm"
STEP_TIMEOUT = 120.0  # seconds: an import, a mount, an inspect
BUILD_TIMEOUT = 900.0  # seconds: one target, pip or apt over the network included
DEBOOTSTRAP_TIMEOUT = 900.0  # seconds: about a minute on a quiet machine with a near mirror
# The base image's PATH: `podman import` gives an image no environment at all, and a Dockerfile
# RUN step needs one to find python3 and apt-get.
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(RuntimeError):
    """A podman, debootstrap or tar step failed."""


def run(command: list[str], timeout: float, **kw: Any) -> str:
    """Run `command` to completion; its stdout, or ImageError with the end of its output."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"{' '.join(command[:4])}…: no result in {timeout:g} s") from e
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise ImageError(f"{' '.join(command)}: exit {result.returncode}\n{tail}")
    return result.stdout


@dataclass(frozen=True)
class Podman:
    exe: str
    root: Path

    def command(self, *args: str) -> list[str]:
        # A store of our own (overlay, as podman's default) and a run root beside it.
        return [
            self.exe,
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "overlay",
            *args,
        ]

    def __call__(self, *args: str, timeout: float = STEP_TIMEOUT, **kw: Any) -> str:
        return run(self.command(*args), timeout, **kw)

    def build(self, context: Path, target: str, tag: str, base: str) -> None:
        # --isolation chroot: RUN steps in a chroot with the host's network, no OCI runtime and
        # no cgroups (this machine's cgroups do not let podman start a container).
        self(
            "build",
            "--isolation",
            "chroot",
            "--build-arg",
            f"BASE={base}",
            "--target",
            target,
            "--tag",
            tag,
            str(context),
            timeout=BUILD_TIMEOUT,
        )

    def config(self, image: str) -> dict[str, Any]:
        """The image's OCI config: User, Env, Entrypoint, Cmd, WorkingDir, ..."""
        return json.loads(self("image", "inspect", "--format", "{{json .Config}}", image))

    @contextlib.contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        """The image's filesystem, read-only, for as long as the block runs."""
        path = Path(self("image", "mount", image).strip())
        try:
            yield path
        finally:
            self("image", "unmount", image)

    def close(self) -> None:
        """Remove every image, unmount what the store mounted, delete the store."""
        for args in (("image", "unmount", "--all", "--force"), ("rmi", "--all", "--force")):
            with contextlib.suppress(ImageError):  # the unmounts and deletion still run
                self(*args)
        for mountpoint in mounts_below(self.root):
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like escaped as octal.
        mountpoint = line.split()[4].encode().decode("unicode_escape")
        if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
            found.append(mountpoint)
    return sorted(found, key=len, reverse=True)


def make_debian_base(podman: Podman, workdir: Path, mirror: str) -> str:
    """Debian 12 minbase + python3 + python3-venv from `mirror`, imported as BASE_IMAGE."""
    rootfs = workdir / "rootfs"
    run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv",
            "bookworm",
            str(rootfs),
            mirror,
        ],
        DEBOOTSTRAP_TIMEOUT,
    )
    trim_rootfs(rootfs)
    tarball = workdir / "rootfs.tar"
    run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], STEP_TIMEOUT)
    shutil.rmtree(rootfs)
    podman(
        "import",
        "--change",
        f"ENV PATH={DEBIAN_PATH}",
        # Debian 12's venv bootstraps pip 23, which trusts only its own certificate bundle; a
        # build machine behind a TLS-inspecting egress proxy reaches PyPI only with the host's.
        "--change",
        f"ENV PIP_CERT={HOST_CA_BUNDLE}",
        str(tarball),
        BASE_IMAGE,
    )
    tarball.unlink()
    return BASE_IMAGE


def trim_rootfs(rootfs: Path) -> None:
    """What a base image leaves out, plus the host's CA bundle (see make_debian_base)."""
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    for entry in (rootfs / "var/cache/apt").glob("*.bin"):
        entry.unlink()
    # debootstrap copies the host's resolv.conf in; a container runtime provides its own, and an
    # image that names this machine's resolver would let kdns forward to it.
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    if HOST_CA_BUNDLE.is_file():
        target = rootfs / HOST_CA_BUNDLE.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HOST_CA_BUNDLE, target)


def image_command(config: dict[str, Any], rootfs: Path, args: list[str] | None = None) -> list[str]:
    """Run the image at `rootfs` as a container runtime would: its user, its environment, its
    entrypoint and its command (or `args` instead of the command), with a fresh /proc.

    `unshare --mount-proc` gives the process a mount namespace of its own with proc mounted on
    the image's /proc, gone when the process exits; `env -i` leaves only the image's Env; chroot
    changes root, then user (--userspec takes numeric ids as the image's USER gives them), and
    starts in / — the working directory of an image without WORKDIR, as ours are."""
    if (config.get("WorkingDir") or "/") != "/":
        raise ImageError(f"the image sets WORKDIR {config['WorkingDir']}; chroot starts in /")
    user = config.get("User") or "0:0"
    if ":" not in user:
        user += f":{user}"
    command = list(config.get("Cmd") or []) if args is None else args
    return [
        host_tool("unshare"),
        f"--mount-proc={rootfs / 'proc'}",
        host_tool("env"),
        "-i",
        *(config.get("Env") or []),
        host_tool("chroot"),
        f"--userspec={user}",
        str(rootfs),
        *(config.get("Entrypoint") or []),
        *command,
    ]


def host_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ImageError(f"{name} is not installed")
    return path


def process_ids(pid: int) -> dict[str, list[str]]:
    """The Uid and Gid lines of a running process (real, effective, saved, filesystem)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.split() for k, v in (line.split(":", 1) for line in lines) if k in ("Uid", "Gid")}


def process_root(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/root")

"""The container image: both Dockerfile targets built for real, then run from their own files.

No container registry is reachable from CI, and this machine's cgroups do not let `podman run`
start a container, so the test does what is left of a registry and a runtime by hand:

1. once per session, a base image: `debootstrap --variant=minbase` of Debian 12 with python3
   and python3-venv (what the Dockerfile's BASE needs), imported into a podman store of the
   session's own (tests/e2e/images.py);
2. `podman build --isolation chroot --build-arg BASE=<that image>` of the `proxy` target and of
   the default `kdns` target (pip reaches PyPI and apt the Debian mirror, as in any build);
3. the image mounted (`podman image mount`) and its ENTRYPOINT + CMD run with its Env, chrooted
   into its filesystem as its USER (`chroot --userspec`), inside a throwaway network namespace;
4. `dig` at 127.0.0.1:1053 in that namespace — the port the image's own CMD serves.

It needs root, podman, debootstrap and dig (.ci/run installs them), a Debian mirror
(`KDNS_DEBIAN_MIRROR`, default deb.debian.org) and PyPI. It takes about two minutes on a quiet
machine, nearly all of it debootstrap and the two builds; every step has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tool, throwaway_netns
from tests.e2e.conftest import ROOT, STOP_TIMEOUT, wait_answering
from tests.e2e.images import (
    ImageError,
    Podman,
    image_command,
    make_debian_base,
    process_ids,
    process_root,
    run,
)
from tests.test_deploy import PROXY_TOOLS as DEPLOYED_PROXY_TOOLS

MIRROR = os.environ.get("KDNS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TAGS = {"proxy": "localhost/kdns-proxy:test", "kdns": "localhost/kdns:test"}
# A cold start from a freshly mounted image reads every module from disk for the first time.
IMAGE_START_TIMEOUT = 60.0
DIG_TIMEOUT = 15.0
PROXY_TIMEOUT = 60.0  # seconds for `kdns proxy --help` and each tool's version


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    need_root()
    exe = need_tool("podman", "podman")
    need_tool("debootstrap", "debootstrap")
    need_tool("unshare", "util-linux")
    store = Podman(exe, tmp_path_factory.mktemp("podman"))
    yield store
    store.close()


@pytest.fixture(scope="session")
def images(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Target → tag, both built from one Debian base made once per session."""
    base = make_debian_base(podman, tmp_path_factory.mktemp("debian-base"), MIRROR)
    # proxy first: it builds the shared stages, which the kdns target then takes from the cache.
    for target, tag in TAGS.items():
        podman.build(ROOT, target, tag, base)
    return TAGS


def dig(ns: str, *args: str) -> str:
    exe = need_tool("dig", "bind9-dnsutils")
    return run(
        ["ip", "netns", "exec", ns, exe, "@127.0.0.1", "-p", "1053", "+time=2", "+tries=1", *args],
        DIG_TIMEOUT,
    )


def answer(ns: str, *args: str) -> list[str]:
    """The answer section as zone-file lines (TTL left out), whitespace made single spaces."""
    out = dig(ns, "+noall", "+answer", "+nottlid", *args)
    return [" ".join(line.split()) for line in out.splitlines() if line.strip()]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def test_dns_image_serves_the_example_cluster_as_its_user(
    podman: Podman, images: dict[str, str], tmp_path: Path
) -> None:
    config = podman.config(images["kdns"])
    # The numeric non-root user config/kubernetes/kdns-deployment.yaml runs as (runAsNonRoot).
    assert config["User"] == "65532:65532"
    log_path = tmp_path / "kdns.log"
    with contextlib.ExitStack() as stack:
        rootfs = stack.enter_context(podman.mounted(images["kdns"]))
        ns = stack.enter_context(throwaway_netns("kdns-image"))
        log = stack.enter_context(log_path.open("wb"))
        # `ip netns exec`, unshare, env and chroot each exec the next: proc.pid is kdns itself.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *image_command(config, rootfs)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(stop, proc)

        def answers() -> bool:
            with contextlib.suppress(ImageError):  # dig: no server listening yet
                return bool(answer(ns, "myapp.default.svc.cluster.local", "A"))
            return False

        wait_answering(answers, proc, log_path.read_text, timeout=IMAGE_START_TIMEOUT)

        assert answer(ns, "myapp.default.svc.cluster.local", "A") == [
            "myapp.default.svc.cluster.local. IN A 10.99.99.99"
        ]
        assert answer(ns, "+tcp", "_http._tcp.myapp.default.svc.cluster.local", "SRV") == [
            "_http._tcp.myapp.default.svc.cluster.local. IN SRV 0 100 80 myapp.default.svc.cluster.local."
        ]
        assert "status: NXDOMAIN" in dig(ns, "missing.default.svc.cluster.local", "A")
        # Served as the image's user, from the image's own files.
        assert process_ids(proc.pid) == {"Uid": ["65532"] * 4, "Gid": ["65532"] * 4}
        assert process_root(proc.pid) == str(rootfs)
        assert Path(f"/proc/{proc.pid}/exe").resolve().is_relative_to(rootfs)
        # The runtime stages carry kdns's environment without the tools that built it.
        assert not (rootfs / "opt/kdns/bin/pip").exists()


# What the proxy runs (tests/test_deploy.py keeps this list in step with kdns/proxy), each with
# arguments that print its version without touching the kernel's tables, and what that prints.
# ipvsadm asks the kernel for IPVS before it reads its arguments: on a kernel without IPVS (as
# this machine's) its complaint about that is the proof it ran.
PROXY_TOOLS = {
    "ip": ("-V", r"^ip utility, iproute2-"),
    "iptables-restore": ("--version", r"^iptables-restore v1\.8\.\d+ \(nf_tables\)"),
    "nft": ("--version", r"^nftables v1\."),
    "conntrack": ("--version", r"^conntrack v1\."),
    "ipvsadm": ("--version", r"^ipvsadm v1\.|^Can't initialize ipvs: "),
    "ipset": ("--version", r"^ipset v\d"),
}


def test_proxy_image_runs_kdns_proxy_as_root_with_its_tools(
    podman: Podman, images: dict[str, str]
) -> None:
    assert {f'"{tool}"' for tool in PROXY_TOOLS} == set(DEPLOYED_PROXY_TOOLS)
    config = podman.config(images["proxy"])
    assert config["User"] == "0:0"  # NET_ADMIN in the host's network namespace
    with podman.mounted(images["proxy"]) as rootfs, throwaway_netns("kdns-image") as ns:
        in_image = ["ip", "netns", "exec", ns]
        # The image's own command: `kdns proxy --help`.
        usage = run([*in_image, *image_command(config, rootfs)], PROXY_TIMEOUT)
        assert usage.startswith("usage: kdns proxy ")
        tools_only = {**config, "Entrypoint": None}
        for tool, (flag, expected) in PROXY_TOOLS.items():
            result = subprocess.run(
                [*in_image, *image_command(tools_only, rootfs, [tool, flag])],
                capture_output=True,
                text=True,
                timeout=PROXY_TIMEOUT,
            )
            assert re.search(expected, result.stdout + result.stderr, re.MULTILINE), (tool, result)

"""glibc's stub resolver, as a pod uses it: resolv.conf with the cluster search path and ndots:5.

Two network namespaces joined by a veth pair stand in for a node and a pod: kdns listens on the
node side (10.254.254.1:53), and `getent` runs on the pod side, whose /etc/resolv.conf, hosts and
nsswitch.conf come from /etc/netns/<pod> (`ip netns exec` bind-mounts them over /etc/*). The test
addresses exist only inside the two namespaces; nothing is routed outside them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tool
from tests.e2e.conftest import EXAMPLES, ROOT
from tests.e2e.netns import ip_command as _ip
from tests.e2e.netns import node_and_pod
from tests.processes import stop_process

pytestmark = pytest.mark.root

NODE_V4, POD_V4 = "10.254.254.1", "10.254.254.2"
# IPv6 too, inside the namespaces only: getaddrinfo's AI_ADDRCONFIG (used by `getent ahosts`)
# asks for AAAA only when the host has a non-loopback IPv6 address, as a dual-stack pod has.
NODE_V6, POD_V6 = "fd00:254:254::1", "fd00:254:254::2"
NETNS_ETC = Path("/etc/netns")

RESOLV_CONF = f"""\
nameserver {NODE_V4}
search default.svc.cluster.local svc.cluster.local cluster.local
options ndots:5 timeout:2 attempts:1
"""
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NSSWITCH = "hosts: files dns\n"

# Environment variables that change what glibc's resolver does; the pod must not inherit them.
RESOLVER_ENV = ("LOCALDOMAIN", "RES_OPTIONS", "HOSTALIASES")

PROBE = """\
import sys, time
import dns.message, dns.query
deadline = time.monotonic() + float(sys.argv[2])
q = dns.message.make_query("dns-version.cluster.local", "TXT")
while time.monotonic() < deadline:
    try:
        dns.query.udp(q, sys.argv[1], timeout=0.2)
        sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit(1)
"""


@dataclass
class PodNetwork:
    node: str
    pod: str
    kdns: subprocess.Popen[bytes]
    stderr_path: Path
    ip: str

    def run_in_pod(self, *command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in RESOLVER_ENV}
        return subprocess.run(
            [self.ip, "netns", "exec", self.pod, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def getent(self, database: str, key: str) -> subprocess.CompletedProcess[str]:
        return self.run_in_pod("getent", database, key)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _remove_netns_etc(name: str) -> None:
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    # /etc/netns itself only if we left it empty (another test run may be using it).
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()


@pytest.fixture(scope="module")
def pod_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodNetwork]:
    need_root()
    ip = need_tool("ip", "iproute2")
    need_tool("getent", "libc-bin")
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    node, pod = f"kdns-node-{suffix}", f"kdns-pod-{suffix}"
    stderr_path = tmp_path_factory.mktemp("glibc") / "kdns-stderr.log"

    with contextlib.ExitStack() as cleanup:
        node_and_pod(ip, node, pod, cleanup)
        for ns, v4, v6 in ((node, NODE_V4, NODE_V6), (pod, POD_V4, POD_V6)):
            _ip(ip, "-n", ns, "addr", "add", f"{v4}/30", "dev", "eth0")
            _ip(ip, "-n", ns, "addr", "add", f"{v6}/126", "dev", "eth0", "nodad")
            _ip(ip, "-n", ns, "link", "set", "lo", "up")
            _ip(ip, "-n", ns, "link", "set", "eth0", "up")

        cleanup.callback(_remove_netns_etc, pod)
        etc = NETNS_ETC / pod
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(RESOLV_CONF)
        (etc / "hosts").write_text(HOSTS)
        (etc / "nsswitch.conf").write_text(NSSWITCH)

        with open(stderr_path, "wb") as err:
            kdns = subprocess.Popen(
                [
                    ip,
                    "netns",
                    "exec",
                    node,
                    sys.executable,
                    "-m",
                    "kdns",
                    "serve",
                    "--manifests",
                    str(EXAMPLES),
                    "--dns-addr",
                    f"{NODE_V4}:53",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        cleanup.callback(stop_process, kdns)
        network = PodNetwork(node, pod, kdns, stderr_path, ip)

        wait_answering(network)
        yield network
        assert kdns.poll() is None, f"kdns died during the tests:\n{network.stderr()}"


def wait_answering(network: PodNetwork, timeout: float = 10.0) -> None:
    """Bounded wait until kdns answers a query sent from the pod's side; fail early if it exits."""
    probe = subprocess.Popen(
        [
            network.ip,
            "netns",
            "exec",
            network.pod,
            sys.executable,
            "-c",
            PROBE,
            NODE_V4,
            str(timeout),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout + 5
        while probe.poll() is None and network.kdns.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop_process(probe)
    if probe.returncode != 0:
        pytest.fail(
            f"kdns in {network.node} did not answer from {network.pod} "
            f"(waited up to {timeout} s; kdns exit status {network.kdns.poll()}):\n"
            f"{network.stderr()}"
        )


def addresses(result: subprocess.CompletedProcess[str]) -> set[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def test_pod_resolv_conf_is_in_place(pod_network: PodNetwork) -> None:
    # Guards the other tests: they must exercise the pod's resolv.conf, not the host's.
    result = pod_network.run_in_pod("cat", "/etc/resolv.conf")
    assert result.stdout == RESOLV_CONF


def test_short_name_through_search_path(pod_network: PodNetwork) -> None:
    result = pod_network.getent("hosts", "redis")
    assert result.returncode == 0, (result.stdout, result.stderr, pod_network.stderr())
    fields = result.stdout.split()
    assert fields[0] == "10.97.97.97"
    assert fields[1] == "redis.default.svc.cluster.local"


def test_headless_service_gives_every_ready_pod(pod_network: PodNetwork) -> None:
    result = pod_network.getent("ahostsv4", "myapp-headless")
    assert addresses(result) == {"10.244.1.20", "10.244.2.21", "10.244.3.22"}
    result = pod_network.getent("ahosts", "myapp-headless")
    assert addresses(result) == {"10.244.1.20", "10.244.2.21", "10.244.3.22"}


def test_name_with_namespace_through_search_path(pod_network: PodNetwork) -> None:
    result = pod_network.getent("hosts", "redis.default")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.split()[:2] == ["10.97.97.97", "redis.default.svc.cluster.local"]


def test_fully_qualified_name(pod_network: PodNetwork) -> None:
    result = pod_network.getent("hosts", "myapp.default.svc.cluster.local.")
    assert addresses(result) == {"10.99.99.99"}


def test_dual_stack_service(pod_network: PodNetwork) -> None:
    assert addresses(pod_network.getent("ahostsv4", "api.prod")) == {"10.96.50.50"}
    assert addresses(pod_network.getent("ahostsv6", "api.prod")) == {"fd00:10:96::50"}
    assert addresses(pod_network.getent("ahosts", "api.prod")) == {"10.96.50.50", "fd00:10:96::50"}
    # `getent hosts` asks for IPv6 first and prints that when there is one.
    assert addresses(pod_network.getent("hosts", "api.prod")) == {"fd00:10:96::50"}


def test_externalname_chased_in_zone(pod_network: PodNetwork) -> None:
    result = pod_network.getent("ahostsv4", "cache.prod")
    assert addresses(result) == {"10.97.97.97"}


def test_reverse_lookup(pod_network: PodNetwork) -> None:
    result = pod_network.getent("hosts", "10.97.97.97")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.split()[:2] == ["10.97.97.97", "redis.default.svc.cluster.local"]


@pytest.mark.parametrize(
    "name", ["nope", "nope.default", "nope.default.svc.cluster.local", "redis.nons"]
)
def test_unknown_name_is_not_found(pod_network: PodNetwork, name: str) -> None:
    started = time.monotonic()
    result = pod_network.getent("hosts", name)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    # Definite answers (NXDOMAIN, REFUSED), not timeouts: the lookup must not wait them out.
    assert time.monotonic() - started < 1.5

"""glibc's stub resolver, as a pod uses it: resolv.conf with the cluster search path and ndots:5.

Two network namespaces joined by a veth pair stand in for a node and a pod: kdns listens on the
node side (10.254.254.1:53), and `getent` runs on the pod side, whose /etc/resolv.conf, hosts and
nsswitch.conf come from /etc/netns/<pod> (`ip netns exec` bind-mounts them over /etc/*). The test
addresses exist only inside the two namespaces; nothing is routed outside them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import need_root, need_tool
from tests.e2e.conftest import EXAMPLES
from tests.e2e.netns import NODE_V4, PodNetwork, pod_network

pytestmark = pytest.mark.root

RESOLV_CONF = f"""\
nameserver {NODE_V4}
search default.svc.cluster.local svc.cluster.local cluster.local
options ndots:5 timeout:2 attempts:1
"""


@pytest.fixture(scope="module")
def glibc_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodNetwork]:
    need_root()
    ip = need_tool("ip", "iproute2")
    need_tool("getent", "libc-bin")
    logs = tmp_path_factory.mktemp("glibc")
    with pod_network(ip, logs, RESOLV_CONF, ["--manifests", str(EXAMPLES)]) as network:
        yield network


def addresses(result: subprocess.CompletedProcess[str]) -> set[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def test_pod_resolv_conf_is_in_place(glibc_pod: PodNetwork) -> None:
    # Guards the other tests: they must exercise the pod's resolv.conf, not the host's.
    result = glibc_pod.run_in_pod("cat", "/etc/resolv.conf")
    assert result.stdout == RESOLV_CONF


def test_short_name_through_search_path(glibc_pod: PodNetwork) -> None:
    result = glibc_pod.getent("hosts", "redis")
    assert result.returncode == 0, (result.stdout, result.stderr, glibc_pod.stderr())
    fields = result.stdout.split()
    assert fields[0] == "10.97.97.97"
    assert fields[1] == "redis.default.svc.cluster.local"


def test_headless_service_gives_every_ready_pod(glibc_pod: PodNetwork) -> None:
    result = glibc_pod.getent("ahostsv4", "myapp-headless")
    assert addresses(result) == {"10.244.1.20", "10.244.2.21", "10.244.3.22"}
    result = glibc_pod.getent("ahosts", "myapp-headless")
    assert addresses(result) == {"10.244.1.20", "10.244.2.21", "10.244.3.22"}


def test_name_with_namespace_through_search_path(glibc_pod: PodNetwork) -> None:
    result = glibc_pod.getent("hosts", "redis.default")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.split()[:2] == ["10.97.97.97", "redis.default.svc.cluster.local"]


def test_fully_qualified_name(glibc_pod: PodNetwork) -> None:
    result = glibc_pod.getent("hosts", "myapp.default.svc.cluster.local.")
    assert addresses(result) == {"10.99.99.99"}


def test_dual_stack_service(glibc_pod: PodNetwork) -> None:
    assert addresses(glibc_pod.getent("ahostsv4", "api.prod")) == {"10.96.50.50"}
    assert addresses(glibc_pod.getent("ahostsv6", "api.prod")) == {"fd00:10:96::50"}
    assert addresses(glibc_pod.getent("ahosts", "api.prod")) == {"10.96.50.50", "fd00:10:96::50"}
    # `getent hosts` asks for IPv6 first and prints that when there is one.
    assert addresses(glibc_pod.getent("hosts", "api.prod")) == {"fd00:10:96::50"}


def test_externalname_chased_in_zone(glibc_pod: PodNetwork) -> None:
    result = glibc_pod.getent("ahostsv4", "cache.prod")
    assert addresses(result) == {"10.97.97.97"}


def test_reverse_lookup(glibc_pod: PodNetwork) -> None:
    result = glibc_pod.getent("hosts", "10.97.97.97")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.split()[:2] == ["10.97.97.97", "redis.default.svc.cluster.local"]


@pytest.mark.parametrize(
    "name", ["nope", "nope.default", "nope.default.svc.cluster.local", "redis.nons"]
)
def test_unknown_name_is_not_found(glibc_pod: PodNetwork, name: str) -> None:
    started = time.monotonic()
    result = glibc_pod.getent("hosts", name)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    # Definite answers (NXDOMAIN, REFUSED), not timeouts: the lookup must not wait them out.
    assert time.monotonic() - started < 1.5

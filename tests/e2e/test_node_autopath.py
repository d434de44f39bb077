"""`kdns proxy --dns --dns-autopath`: the node DNS answers autopath for this node's pods only.

A real `kdns proxy` process follows tests/kubeapi's API server. Both live in a "node" network
namespace: the test API server's listening socket is opened by a thread that entered that
namespace (setns), so the proxy reaches it on the node's own loopback, and nothing leaves the
namespaces this module creates. dnsmasq on the node's loopback is the upstream for outside
names (`api.example.com`). A "pod" namespace joined by a veth pair carries one source address per
pod of the cluster, and `dig -b` asks the node DNS (169.254.20.10, on the node's `lo` as in
test_node_dns.py) from each:

    10.254.251.2  pod default/client   on node-a  → autopath (CNAME to api.example.com)
    10.254.251.3  pod prod/worker      on node-a  → autopath with prod's search list
    10.254.251.4  pod default/remote   on node-b  → never listed: the plain answer (NXDOMAIN)
    10.254.251.5  pod default/hostnet  on node-a, spec.hostNetwork (the node's address stands
                  for many pods, as CoreDNS's autopath ignores it) → the plain answer

The pods held (`kdns_node_dns_pods`) show the `spec.nodeName` field selector at work: only
node-a's pods are listed and watched. Deleting a local pod and binding the remote pod's address
to a pod on node-a are followed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tool
from tests.e2e.netns import (
    DIG_ANSWER,
    api_server_in,
    dig_status_and_records,
    ip_command,
    node_and_pod,
    node_upstream_dnsmasq,
)
from tests.kubeapi import objects
from tests.kubeapi.server import ApiServer
from tests.processes import stop_process

NODE_NAME = "node-a"
NODE_DNS = "169.254.20.10"
NODE_V4 = "10.254.251.1"
CLIENT, WORKER, REMOTE, HOSTNET = "10.254.251.2", "10.254.251.3", "10.254.251.4", "10.254.251.5"
EXTERNAL, EXTERNAL_V4 = "api.example.com", "192.0.2.10"  # 192.0.2.0/24: TEST-NET-1
METRICS = "127.0.0.1:10249"
TIMEOUT = 30.0  # seconds for the proxy to list, bind and follow a change


@dataclass
class Cluster:
    ip: str
    node: str
    pod: str
    api: ApiServer
    proxy: subprocess.Popen[bytes]
    logs: Path

    def run(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [self.ip, "netns", "exec", ns, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=20)

    def ask(self, source: str, name: str) -> tuple[str, list[str]]:
        """The status and the answer records (`type data`) of `dig` from `source`."""
        out = self.run(
            self.pod,
            "dig",
            f"@{NODE_DNS}",
            "-b",
            source,
            *DIG_ANSWER,
            name,
            "A",
        ).stdout
        return dig_status_and_records(out)

    def pods_held(self) -> float | None:
        script = f"import urllib.request as u; print(u.urlopen('http://{METRICS}/metrics').read())"
        out = self.run(self.node, sys.executable, "-c", script).stdout
        for line in out.replace("\\n", "\n").splitlines():
            if line.startswith("kdns_node_dns_pods "):
                return float(line.split()[1])
        return None

    def wait(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.proxy.poll() is None, self.logs.read_text()
            assert time.monotonic() < deadline, (
                f"{what}: not within {TIMEOUT} s\n" + (self.logs.read_text()[-3000:])
            )
            time.sleep(0.1)


def _pods() -> list[dict[str, object]]:
    return [
        objects.pod("default", "client", ip=CLIENT, node_name=NODE_NAME),
        objects.pod("prod", "worker", ip=WORKER, node_name=NODE_NAME),
        objects.pod("default", "remote", ip=REMOTE, node_name="node-b"),
        objects.pod("default", "hostnet", host_network=True, host_ip=HOSTNET, node_name=NODE_NAME),
    ]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    need_root()
    ip = need_tool("ip", "iproute2")
    need_tool("dig", "bind9-dnsutils")
    need_tool("iptables-restore", "iptables")
    dnsmasq = need_tool("dnsmasq", "dnsmasq-base")
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    node, pod = f"kdns-anode-{suffix}", f"kdns-apod-{suffix}"
    with contextlib.ExitStack() as cleanup:
        node_and_pod(ip, node, pod, cleanup)
        ip_command(ip, "-n", node, "addr", "add", f"{NODE_V4}/24", "dev", "eth0")
        ip_command(ip, "-n", node, "addr", "add", f"{NODE_DNS}/32", "dev", "lo")
        for address in (CLIENT, WORKER, REMOTE, HOSTNET):
            ip_command(ip, "-n", pod, "addr", "add", f"{address}/24", "dev", "eth0")
        for ns in (node, pod):
            ip_command(ip, "-n", ns, "link", "set", "eth0", "up")
        ip_command(ip, "-n", pod, "route", "add", "default", "via", NODE_V4)

        api = api_server_in(node, TIMEOUT)
        cleanup.callback(api.stop)
        api.create("namespaces", objects.namespace("default"))
        api.create("namespaces", objects.namespace("prod"))
        for obj in _pods():
            api.create("pods", obj)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        config = tmp_path / "kdns.yaml"
        config.write_text("node:\n  dns_upstreams: ['127.0.0.1:53']\n")

        with open(tmp_path / "dnsmasq.err", "wb") as err:
            upstream = subprocess.Popen(
                [
                    ip,
                    "netns",
                    "exec",
                    node,
                    *node_upstream_dnsmasq(
                        dnsmasq, EXTERNAL, EXTERNAL_V4, tmp_path / "dnsmasq.log"
                    ),
                ],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        cleanup.callback(stop_process, upstream)
        logs = tmp_path / "proxy.log"
        command = [ip, "netns", "exec", node, sys.executable, "-m", "kdns", "proxy"]
        command += ["--config", str(config), "--kubeconfig", str(kubeconfig)]
        command += ["--node-name", NODE_NAME, "--mode", "iptables"]
        command += ["--healthz-addr", "127.0.0.1:10256", "--metrics-addr", METRICS]
        command += ["--dns", NODE_DNS, "--dns-autopath"]
        with open(logs, "wb") as err:
            proxy = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        cleanup.callback(stop_process, proxy)
        yield Cluster(ip, node, pod, api, proxy, logs)


AUTOPATH = ["CNAME api.example.com.", f"A {EXTERNAL_V4}"]  # behind the name asked


def asked(namespace: str) -> str:
    """What glibc asks first for `api.example.com` (ndots:5): its pod's first search name."""
    return f"{EXTERNAL}.{namespace}.svc.cluster.local"


def test_only_this_nodes_pods_get_autopath_and_moves_are_followed(cluster: Cluster) -> None:
    # node-a's three pods, listed through `spec.nodeName=node-a`: never node-b's.
    cluster.wait("the node's pods held", lambda: cluster.pods_held() == 3)
    cluster.wait("the node DNS answering", lambda: cluster.ask(CLIENT, EXTERNAL)[0] == "NOERROR")
    assert cluster.api.stats.count(kind="watch", resource="pods") >= 1

    assert cluster.ask(CLIENT, asked("default")) == ("NOERROR", AUTOPATH)
    assert cluster.ask(WORKER, asked("prod")) == ("NOERROR", AUTOPATH)
    # The search list is the asking pod's: prod's first name from default's pod is a plain
    # lookup of a name that does not exist.
    assert cluster.ask(CLIENT, asked("prod")) == ("NXDOMAIN", [])
    # Another node's pod and a hostNetwork pod: plain answers, the client walks its list.
    assert cluster.ask(REMOTE, asked("default")) == ("NXDOMAIN", [])
    assert cluster.ask(HOSTNET, asked("default")) == ("NXDOMAIN", [])

    # Out: the client pod deleted; in: remote's address now a pod bound to node-a.
    cluster.api.delete("pods", "default", "client")
    cluster.wait("the deleted pod dropped", lambda: cluster.pods_held() == 2)
    assert cluster.ask(CLIENT, asked("default")) == ("NXDOMAIN", [])
    cluster.api.delete("pods", "default", "remote")
    cluster.api.create("pods", objects.pod("default", "moved", ip=REMOTE, node_name=NODE_NAME))
    cluster.wait("the new local pod held", lambda: cluster.pods_held() == 3)
    assert cluster.ask(REMOTE, asked("default")) == ("NOERROR", AUTOPATH)

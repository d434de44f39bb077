"""`kdns proxy --dns` under `pods: verified`: pod names the node DNS cannot verify (it holds no
Pods of other nodes) get the central DNS's answer, through the stub domain for `pod.<zone>`;
without one the proxy refuses to start, in one line, before it touches the node.

A "node" and a "pod" network namespace joined by a veth pair (test_node_dns.py's topology).
tests/kubeapi's API server listens on the node's loopback (`api_server_in`). On the node run
the central DNS — a real `kdns serve` with `pods: verified`, which watches every Pod, on
127.0.0.1:5353 and forwarding nothing — and the proxy, whose node DNS answers on 169.254.20.10
(on the node's `lo`, standing in for the `kdns-dns` device) with `pod.cluster.local` stubbed to
the central DNS and no other upstream. The pod asks with `dig`; the central DNS's query log
shows which names reached it. With `--dns-autopath` the node holds its own pod and answers
that pod's name itself. Nothing leaves the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need_root, need_tool
from tests.e2e.netns import (
    DIG_ANSWER,
    api_server_in,
    dig_status_and_records,
    ip_command,
    node_and_pod,
)
from tests.kubeapi import objects
from tests.kubeapi.server import ApiServer
from tests.processes import stop_process

NODE_NAME = "node-a"
NODE_DNS = "169.254.20.10"
NODE_V4, POD_V4 = "10.254.249.1", "10.254.249.2"
REMOTE_POD = "10.244.2.7"  # a pod of node-b: never on this node
WEB_IP = "10.96.0.80"
CENTRAL_PORT = 5353
TIMEOUT = 30.0  # seconds for a process to list, bind, or follow a change

CENTRAL_CONFIG = f"""\
dns:
  addr: 127.0.0.1:{CENTRAL_PORT}
  pods: verified
  health_addr: 127.0.0.1:8080
  ready_addr: 127.0.0.1:8181
  metrics_addr: 127.0.0.1:9153
  lameduck: 0
forward:
  upstreams: []
logging:
  query_log: text
"""
NODE_CONFIG = f"""\
dns:
  pods: verified
forward:
  stub_domains:
    pod.cluster.local: ['127.0.0.1:{CENTRAL_PORT}']
node:
  dns_upstreams: []
"""


@dataclass
class Node:
    ip: str
    node: str
    pod: str
    api: ApiServer
    kubeconfig: Path
    tmp: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [self.ip, "netns", "exec", ns, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    def ask(self, ns: str, server: str, name: str, port: int = 53) -> tuple[str, list[str]]:
        """The status and the answer records (`type data`) of `dig` from `ns`."""
        out = self.run(
            ns,
            "dig",
            f"@{server}",
            "-p",
            str(port),
            *DIG_ANSWER,
            name,
            "A",
        ).stdout
        return dig_status_and_records(out)

    def kdns(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        """`python -m kdns ARGV` on the node, its output in `name`.log."""
        command = [self.ip, "netns", "exec", self.node, sys.executable, "-m", "kdns", *argv]
        with open(self.tmp / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.running[name] = proc
        return proc

    def log(self, name: str, whole: bool = False) -> str:
        text = (self.tmp / f"{name}.log").read_text(errors="replace")
        return text if whole else text[-3000:]

    def pods_held(self) -> float | None:
        """The proxy's `kdns_node_dns_pods`."""
        script = (
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:10249/metrics').read())"
        )
        out = self.run(self.node, sys.executable, "-c", script).stdout
        for line in out.replace("\\n", "\n").splitlines():
            if line.startswith("kdns_node_dns_pods "):
                return float(line.split()[1])
        return None

    def wait(self, what: str, condition: Callable[[], bool], *procs: str) -> None:
        """Until `condition`, within TIMEOUT, while the processes named `procs` run."""
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            for name in procs:
                proc = self.running[name]
                assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{self.log(name)}"
            logs = "".join(f"\n{name}:\n{self.log(name)}" for name in procs)
            assert time.monotonic() < deadline, f"{what}: not within {TIMEOUT} s{logs}"
            time.sleep(0.2)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    need_root()
    ip = need_tool("ip", "iproute2")
    need_tool("dig", "bind9-dnsutils")
    need_tool("iptables-restore", "iptables")
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    names = f"kdns-pnode-{suffix}", f"kdns-ppod-{suffix}"
    with contextlib.ExitStack() as cleanup:
        node_and_pod(ip, *names, cleanup)
        for ns, v4 in zip(names, (NODE_V4, POD_V4), strict=True):
            ip_command(ip, "-n", ns, "addr", "add", f"{v4}/30", "dev", "eth0")
            ip_command(ip, "-n", ns, "link", "set", "eth0", "up")
        ip_command(ip, "-n", names[0], "addr", "add", f"{NODE_DNS}/32", "dev", "lo")
        ip_command(ip, "-n", names[1], "route", "add", "default", "via", NODE_V4)
        api = api_server_in(names[0], TIMEOUT)
        cleanup.callback(api.stop)
        api.create("namespaces", objects.namespace("default"))
        api.create("services", objects.service("default", "web", cluster_ip=WEB_IP))
        api.create("pods", objects.pod("default", "client", ip=POD_V4, node_name=NODE_NAME))
        api.create("pods", objects.pod("default", "remote", ip=REMOTE_POD, node_name="node-b"))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        yield Node(ip, *names, api, kubeconfig, tmp_path)


def pod_name(ip: str, namespace: str = "default") -> str:
    return f"{ip.replace('.', '-')}.{namespace}.pod.cluster.local"


@pytest.mark.parametrize("autopath", [False, True], ids=["no-pods", "this-nodes-pods"])
def test_pod_names_the_node_cannot_verify_get_the_central_dns_answer(
    node: Node, autopath: bool
) -> None:
    (node.tmp / "central.yaml").write_text(CENTRAL_CONFIG)
    (node.tmp / "node.yaml").write_text(NODE_CONFIG)
    with contextlib.ExitStack() as stop:
        kube = ("--kubeconfig", str(node.kubeconfig))
        central = node.kdns("central", "serve", "--config", str(node.tmp / "central.yaml"), *kube)
        stop.callback(stop_process, central)
        proxy = node.kdns(
            "proxy",
            *("proxy", "--config", str(node.tmp / "node.yaml"), *kube),
            *("--node-name", NODE_NAME, "--mode", "iptables", "--dns", NODE_DNS),
            *("--healthz-addr", "127.0.0.1:10256", "--metrics-addr", "127.0.0.1:10249"),
            *(["--dns-autopath"] if autopath else []),
        )
        stop.callback(stop_process, proxy)
        remote = pod_name(REMOTE_POD)
        # The central DNS has listed every Pod; the node DNS answers its own names.
        node.wait(
            "the central DNS answering pod names",
            lambda: node.ask(node.node, "127.0.0.1", remote, CENTRAL_PORT)[0] == "NOERROR",
            "central",
        )
        node.wait(
            "the node DNS answering",
            lambda: (
                node.ask(node.pod, NODE_DNS, "web.default.svc.cluster.local")
                == ("NOERROR", [f"A {WEB_IP}"])
            ),
            "proxy",
        )
        if autopath:  # this node's pod, listed through spec.nodeName=node-a
            node.wait("the node's pod held", lambda: node.pods_held() == 1, "proxy")

        # Without --dns-autopath the node holds no Pod: each answer is the central DNS's. With
        # it, the node's own pod is verified here and only the others go there.
        assert node.ask(node.pod, NODE_DNS, remote) == ("NOERROR", [f"A {REMOTE_POD}"])
        assert node.ask(node.pod, NODE_DNS, pod_name(POD_V4)) == ("NOERROR", [f"A {POD_V4}"])
        assert node.ask(node.pod, NODE_DNS, pod_name("10.244.9.9")) == ("NXDOMAIN", [])
        assert node.ask(node.pod, NODE_DNS, pod_name(REMOTE_POD, "prod")) == ("NXDOMAIN", [])
        # Service names stay the node's own: the central DNS is never asked for them.
        assert node.ask(node.pod, NODE_DNS, "nosuch.default.svc.cluster.local") == ("NXDOMAIN", [])
        asked = node.log("central", whole=True)
        assert f'"A IN {pod_name("10.244.9.9")}. udp' in asked  # the central DNS's own query log
        assert f'"A IN {remote}. udp' in asked
        assert (f'"A IN {pod_name(POD_V4)}. udp' in asked) is not autopath
        assert "svc.cluster.local" not in asked

        # The central DNS follows the Pods, and so the node's answer does (once the forwarded
        # answer's 5 s are up).
        node.api.delete("pods", "default", "remote")
        node.wait(
            "the deleted pod denied by the node DNS",
            lambda: node.ask(node.pod, NODE_DNS, remote) == ("NXDOMAIN", []),
            "central",
            "proxy",
        )
        assert central.poll() is None and proxy.poll() is None


def test_pods_verified_without_a_central_dns_is_refused_before_the_node_is_touched(
    node: Node,
) -> None:
    (node.tmp / "node.yaml").write_text("dns:\n  pods: verified\nnode:\n  dns_upstreams: []\n")
    proxy = node.kdns(
        "refused",
        *("proxy", "--config", str(node.tmp / "node.yaml"), "--kubeconfig", str(node.kubeconfig)),
        *("--node-name", NODE_NAME, "--mode", "iptables", "--dns", NODE_DNS),
        *("--healthz-addr", "127.0.0.1:10256", "--metrics-addr", "127.0.0.1:10249"),
    )
    try:
        assert proxy.wait(TIMEOUT) == 2
    finally:
        stop_process(proxy)
    assert node.log("refused").strip().splitlines() == [
        "kdns proxy: node.dns: dns.pods is verified, but the node DNS holds no other node's Pods "
        "to verify pod names with: set forward.stub_domains {pod.cluster.local: "
        "[CENTRAL-DNS-IP]} (the central DNS: a kube-dns-upstream Service's ClusterIP, not an "
        "address the node takes over), or dns.pods: insecure"
    ]
    assert "KDNS" not in node.run(node.node, "iptables-save").stdout
    assert node.api.stats.count(kind="list") == 0  # the cluster was not even listed

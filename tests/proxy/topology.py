"""A test cluster in network namespaces: two nodes, pods routed Calico-style, an outside host.

Contract:
- `Cluster.create(cleanup)` builds the topology below and registers every namespace (and every
  process started in one) with `cleanup` *before* creating it, so a failure half-way through
  still removes everything. Names end in the test process's pid, so parallel runs cannot clash.
- `Cluster.run(ns, argv)` runs a command in a namespace (bounded by a timeout);
  `Cluster.spawn(ns, argv)` starts a long-running one, stopped (SIGTERM, then SIGKILL) at
  cleanup or by `stop_process`.
- Every address is in a documentation or private range, and nothing is joined to the host's
  namespace: no packet leaves the namespaces this module creates.

Layout (IPv4 only)::

      ext 203.0.113.2, .3 (TEST-NET-3)       pods 10.244.1.X/32          pods 10.244.2.X/32
            |                                     |  (veth, proxy_arp)         |
      203.0.113.1 ---- node1 ---- 198.51.100.1 ====== 198.51.100.2 ---- node2
                       (runs the proxy)        TEST-NET-2                (no proxy)

- node1 has a default route to ext (ext plays "the internet"): the node needs a route to the
  Service CIDR for its own connections to ClusterIPs to leave the socket layer (iptables/nft
  DNAT them in OUTPUT after the route lookup), as real nodes have. node2's default route is
  node1. ext's default route is node1, so it reaches node IPs, externalIPs and LB IPs there.
- Pods sit each in their own namespace with `eth0` holding one /32 and a default route via
  169.254.1.1 on link; the
  node side of the veth has no address, a /32 route to the pod and proxy_arp on (Calico's
  layout). There is no bridge: with one, a backend's reply to a client pod on the same bridge
  is switched at layer 2 and bypasses the node's conntrack (un-DNAT never happens) unless
  br_netfilter is loaded, which is global to the host and not ours to change.
- No routes to ext on node2: a backend on node2 can only answer an outside client through
  node1, that is, when node1 masqueraded the connection. A missing masquerade shows up as a
  timeout, not as a silently working path.
- IPv6 is disabled in every namespace, so a proxy that programs IPv6 "if present" sees only
  IPv4 (kdns's IPv6 rules are checked by the renderer tests).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import STOP_TIMEOUT, stop_process

ROOT = Path(__file__).resolve().parents[2]
ECHO = str(Path(__file__).with_name("echo.py"))

CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
NODE1_IP = "198.51.100.1"  # node1's address towards node2 (its "internal IP")
NODE2_IP = "198.51.100.2"
NODE1_EXT_IP = "203.0.113.1"  # node1's address towards ext
EXT_IP = "203.0.113.2"
EXT_OTHER_IP = "203.0.113.3"  # a second source address on ext (loadBalancerSourceRanges)
NODE1_IPS = (NODE1_IP, NODE1_EXT_IP)
POD_GATEWAY = "169.254.1.1"  # Calico's: the node answers ARP for it, no address holds it
COMMAND_TIMEOUT = 60.0  # seconds any one command may take (namespace creation can be slow)


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str  # short name, also what its echo server answers with
    node: str  # "node1" | "node2"
    ip: str
    extra_ips: tuple[str, ...] = ()  # more /32s on eth0, for clients needing several sources


# The pods every test cluster has. "client" and "client2" run no echo server of their own
# except for hairpin tests (the client pod is also an endpoint there); a, b, c, d are backends.
PODS = (
    PodSpec("client", "node1", "10.244.1.2", tuple(f"10.244.1.{i}" for i in range(100, 110))),
    PodSpec("a", "node1", "10.244.1.3"),
    PodSpec("b", "node2", "10.244.2.2"),
    PodSpec("c", "node2", "10.244.2.3"),
    PodSpec("d", "node2", "10.244.2.4"),
)
# Ports every pod's echo server listens on (TCP and UDP alike).
ECHO_PORTS = (8080, 8081, 9100, 5353)


def _check(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)}: exit {result.returncode}: {(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


@dataclass
class Cluster:
    """The namespaces of one test cluster and the means to run things in them."""

    cleanup: contextlib.ExitStack
    suffix: str
    namespaces: dict[str, str] = field(default_factory=dict)  # role → namespace name
    pods: dict[str, PodSpec] = field(default_factory=dict)

    @classmethod
    def create(cls, cleanup: contextlib.ExitStack, tag: str = "") -> Cluster:
        cluster = cls(cleanup, f"{tag}{os.getpid()}")
        cluster._build()
        return cluster

    # --- running things ----------------------------------------------------------------------

    def ns(self, role: str) -> str:
        """The namespace name of "node1", "node2", "ext" or a pod's name."""
        return self.namespaces[role]

    def run(
        self,
        role: str,
        *argv: str,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"[{role}] {' '.join(argv)}: exit {result.returncode}:"
                f" {(result.stderr or result.stdout).strip()}"
            )
        return result

    def spawn(
        self,
        role: str,
        *argv: str,
        stdout: int | None = subprocess.PIPE,
        stderr: int | None = subprocess.PIPE,
    ) -> subprocess.Popen[str]:
        """Start `argv` in the namespace; it is stopped at cleanup at the latest. A process
        that writes much must be given a file (or DEVNULL): nobody drains the pipes while it
        runs."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *argv],
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=ROOT,
        )
        self.cleanup.callback(stop_process, proc)
        return proc

    def python(self, role: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """`python ARGS` in the namespace, with this interpreter; its stdout."""
        return self.run(role, sys.executable, *args, timeout=timeout).stdout

    # --- building ----------------------------------------------------------------------------

    def _ip(self, *args: str) -> None:
        _check(["ip", *args])

    def _netns(self, role: str) -> str:
        name = f"kp-{role}-{self.suffix}"
        # Registered first: deleting a namespace also deletes the veth ends inside it.
        self.cleanup.callback(subprocess.run, ["ip", "netns", "del", name], capture_output=True)
        self._ip("netns", "add", name)
        self.namespaces[role] = name
        self._ip("-n", name, "link", "set", "lo", "up")
        for key in ("all", "default"):
            self._sysctl(role, f"net.ipv6.conf.{key}.disable_ipv6", "1")
        return name

    def _sysctl(self, role: str, key: str, value: str) -> None:
        _check(["ip", "netns", "exec", self.ns(role), "sysctl", "-qw", f"{key}={value}"])

    def _link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair created inside namespace `a`, its peer moved into `b` at creation."""
        na, nb = self.ns(a), self.ns(b)
        self._ip("-n", na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", nb)
        self._ip("-n", na, "link", "set", a_if, "up")
        self._ip("-n", nb, "link", "set", b_if, "up")

    def _build(self) -> None:
        for role in ("node1", "node2", "ext"):
            self._netns(role)
        n1, n2, ext = self.ns("node1"), self.ns("node2"), self.ns("ext")
        for node in ("node1", "node2"):
            self._sysctl(node, "net.ipv4.ip_forward", "1")
            # Loose reverse-path checks would be fine too; strict ones drop nothing here either,
            # but a proxy test should not depend on the host's default.
            for key in ("all", "default"):
                self._sysctl(node, f"net.ipv4.conf.{key}.rp_filter", "0")

        self._link("node1", "eth-node2", "node2", "eth-node1")
        self._ip("-n", n1, "addr", "add", f"{NODE1_IP}/24", "dev", "eth-node2")
        self._ip("-n", n2, "addr", "add", f"{NODE2_IP}/24", "dev", "eth-node1")
        self._link("node1", "eth-ext", "ext", "eth0")
        self._ip("-n", n1, "addr", "add", f"{NODE1_EXT_IP}/24", "dev", "eth-ext")
        for ip in (EXT_IP, EXT_OTHER_IP):
            self._ip("-n", ext, "addr", "add", f"{ip}/24", "dev", "eth0")

        self._ip("-n", n1, "route", "add", "10.244.2.0/24", "via", NODE2_IP)
        self._ip("-n", n1, "route", "add", "default", "via", EXT_IP)
        self._ip("-n", n2, "route", "add", "default", "via", NODE1_IP)
        self._ip("-n", ext, "route", "add", "default", "via", NODE1_EXT_IP)

        for i, pod in enumerate(PODS):
            self._pod(pod, f"veth{i}")

    def _pod(self, pod: PodSpec, node_if: str) -> None:
        self._netns(pod.name)
        self.pods[pod.name] = pod
        self._link(pod.node, node_if, pod.name, "eth0")
        node, ns = self.ns(pod.node), self.ns(pod.name)
        for ip in (pod.ip, *pod.extra_ips):
            self._ip("-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
            self._ip("-n", node, "route", "add", f"{ip}/32", "dev", node_if)
        # Everything goes to the node through a link-local gateway that only proxy ARP answers
        # for (the node's default route covers it). proxy_delay 0: the kernel otherwise delays
        # each proxied ARP reply by up to 0.8 s, which a first connection sees as a timeout.
        self._sysctl(pod.node, f"net.ipv4.neigh.{node_if}.proxy_delay", "0")
        self._sysctl(pod.node, f"net.ipv4.conf.{node_if}.proxy_arp", "1")
        self._ip("-n", ns, "route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link")
        self._ip(
            "-n", ns, "route", "add", "default", "via", POD_GATEWAY, "dev", "eth0", "src", pod.ip
        )

    def start_echo_servers(self, ready_timeout: float = 10.0) -> None:
        """An echo server in every pod, on ECHO_PORTS over TCP and UDP; waits until each
        answers locally."""
        ports = ",".join(str(p) for p in ECHO_PORTS)
        for pod in PODS:
            proc = self.spawn(
                pod.name,
                sys.executable,
                ECHO,
                "serve",
                "--name",
                pod.name,
                "--tcp",
                ports,
                "--udp",
                ports,
                stdout=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + ready_timeout
            while True:
                probe = self.run(
                    pod.name,
                    sys.executable,
                    ECHO,
                    "client",
                    "--tcp",
                    f"{pod.ip}:{ECHO_PORTS[0]}",
                    "--count",
                    "1",
                    "--timeout",
                    "0.5",
                    check=False,
                )
                if probe.returncode == 0 and '"ok": 1' in probe.stdout:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    _, err = proc.communicate(timeout=STOP_TIMEOUT) if proc.poll() else ("", "")
                    raise RuntimeError(f"echo server in {pod.name} did not start: {err}")
                time.sleep(0.05)

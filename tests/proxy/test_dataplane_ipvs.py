"""IPVS mode's data plane (kdns/proxy/dataplane.py IpvsDataplane) against a model of the kernel,
and `kdns proxy --mode ipvs --dns` taking the kube-dns ClusterIP's port 53 over (in process).

This kernel has no IPVS, so the commands the data plane runs go to `IpvsModel`, which applies
them as ipvsadm and ip would (errors included); the ipset and iptables inputs are recorded.
Removing IPVS mode's objects is `kdns proxy --cleanup`'s: tests/proxy/test_cleanup.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from kdns import proxyapp
from kdns.config import Config
from kdns.proxy import nodednsrules
from kdns.proxy.dataplane import IpvsDataplane, Node, node_from_host
from kdns.proxy.ipvs.kernel import DUMMY_DEVICE
from kdns.proxy.routes import ServicePortRoute
from tests.builders import model_endpoint, model_service
from tests.conftest import need_root, need_tool
from tests.e2e.netns import ip_command, node_and_pod
from tests.processes import stop_process
from tests.proxy.builders import PODS, routes

from .ipvs_model import IpvsModel


class KernelModel:
    """A Runner: ipvsadm and ip go to an IpvsModel, ipset/iptables inputs are kept."""

    def __init__(self) -> None:
        self.model = IpvsModel()
        self.restores: list[tuple[str, str]] = []
        self.commands: list[str] = []  # one line per ipvsadm / ip command run

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        argv = list(argv)
        if argv[:2] == ["ipvsadm", "-Sn"]:
            return 0, self.model.save(), ""
        if argv[:3] == ["ip", "-o", "addr"]:
            state = self.model.state
            if not state.device:
                return 1, "", f'Device "{DUMMY_DEVICE}" does not exist.'
            lines = [
                f"9: {DUMMY_DEVICE}    inet{'6' if ':' in a else ''} {a}/"
                f"{128 if ':' in a else 32} scope global {DUMMY_DEVICE}"
                for a in sorted(state.addresses)
            ]
            return 0, "\n".join(lines), ""
        if argv[0] in ("ipvsadm", "ip"):
            batch = argv in (["ipvsadm", "-R"], ["ip", "-batch", "-"])
            lines = (stdin or "").splitlines() if batch else [" ".join(argv[1:])]
            self.commands += [f"{argv[0]} {line}" for line in lines]
            self.model.apply(argv, stdin)
            return 0, "", ""
        if argv[0] in ("iptables-save", "ip6tables-save", "ipset"):
            if argv[:2] == ["ipset", "restore"]:
                self.restores.append(("ipset", stdin or ""))
            return 0, "", ""
        if argv[0] in ("iptables-restore", "ip6tables-restore"):
            self.restores.append((argv[0], stdin or ""))
            return 0, "", ""
        raise AssertionError(f"unexpected command {argv}")


NODE = Node(
    families=(4,), cluster_cidrs=(PODS,), local_ips=("192.0.2.10",), node_ips=("192.0.2.10",)
)


def two(endpoints: list[str]) -> tuple[ServicePortRoute, ...]:
    web = model_service(
        "ns/web", ip="10.96.0.20", ports=(("p80", "TCP", 80, 30080),), type="NodePort"
    )
    dns = model_service("ns/dns", ip="10.96.0.10", ports=(("dns", "UDP", 53, None),))
    dns_ep = model_endpoint("10.244.1.9", ports=(("dns", "UDP", 5353),))
    return routes((web, [model_endpoint(ip) for ip in endpoints]), (dns, [dns_ep]))


def test_full_sync_from_an_empty_kernel_then_minimal_changes() -> None:
    kernel = KernelModel()
    plane = IpvsDataplane(NODE, kernel)
    plane.sync(two(["10.244.1.5", "10.244.2.6"]), None)
    save = kernel.model.save()
    assert "-A -t 10.96.0.20:80 -s rr" in save
    assert "-a -t 10.96.0.20:80 -r 10.244.1.5:8080 -m -w 1" in save
    assert "-a -t 192.0.2.10:30080 -r 10.244.2.6:8080 -m -w 1" in save
    assert "-A -u 10.96.0.10:53 -s rr" in save
    assert kernel.model.state.addresses == {"10.96.0.20", "10.96.0.10"}
    assert any(
        tool == "iptables-restore" and "KUBE-SERVICES" in text for tool, text in kernel.restores
    )
    assert plane.intact()

    # One endpoint replaced: only its real servers change; nothing else is touched.
    kernel.commands.clear()
    plane.sync(two(["10.244.1.5", "10.244.3.7"]), {("ns", "web")})
    assert sorted(kernel.commands) == [
        "ipvsadm -a -t 10.96.0.20:80 -r 10.244.3.7:8080 -m -w 1",
        "ipvsadm -a -t 192.0.2.10:30080 -r 10.244.3.7:8080 -m -w 1",
        "ipvsadm -d -t 10.96.0.20:80 -r 10.244.2.6:8080",
        "ipvsadm -d -t 192.0.2.10:30080 -r 10.244.2.6:8080",
    ]
    save = kernel.model.save()
    assert "10.244.2.6" not in save and "-r 10.244.3.7:8080" in save
    assert "-r 10.244.1.5:8080" in save
    assert "-A -t 10.96.0.20:80" in save and "-A -u 10.96.0.10:53" in save

    # Nothing changed: no ipvsadm or ip command at all.
    kernel.commands.clear()
    plane.sync(two(["10.244.1.5", "10.244.3.7"]), set())
    assert kernel.commands == []


def test_the_node_dns_takes_the_clusterip_port_53_over_and_gives_it_back() -> None:
    """`take_over_dns` between syncs: the next sync deletes ns/dns's :53 virtual service (its
    ClusterIP stays on kube-ipvs0, the node DNS's socket is bound there) and lets port 53
    through KUBE-IPVS-FILTER; `take_over_dns(())` and a sync bring it back."""
    kernel = KernelModel()
    plane = IpvsDataplane(NODE, kernel)
    route_set = two(["10.244.1.5"])
    plane.sync(route_set, None)
    plain = kernel.model.save()

    kernel.commands.clear()
    kernel.restores.clear()
    plane.take_over_dns(["10.96.0.10", "169.254.20.10"])
    plane.sync(route_set, None)
    assert kernel.commands == ["ipvsadm -D -u 10.96.0.10:53"]
    assert "10.96.0.10:53" not in kernel.model.save()
    assert kernel.model.state.addresses == {"10.96.0.20", "10.96.0.10"}
    iptables = next(text for tool, text in kernel.restores if tool == "iptables-restore")
    assert (
        '-A KUBE-IPVS-FILTER -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment "kdns node DNS" -j RETURN'
        in iptables.splitlines()
    )
    ipset_restore = next(text for tool, text in kernel.restores if tool == "ipset")
    assert "10.96.0.10,udp:53" not in ipset_restore

    kernel.commands.clear()
    plane.take_over_dns(())
    plane.sync(route_set, None)
    assert kernel.commands == [
        "ipvsadm -A -u 10.96.0.10:53 -s rr",
        "ipvsadm -a -u 10.96.0.10:53 -r 10.244.1.9:5353 -m -w 1",
    ]
    assert kernel.model.save() == plain


def test_the_node_dns_device_holds_no_node_address() -> None:
    """A taken-over ClusterIP on the node DNS's device (or kube-ipvs0) is the proxy's own
    address: no NodePort virtual service is made on it."""
    addresses = [
        {"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
        {"ifname": "eth0", "addr_info": [{"local": "192.0.2.10"}]},
        {"ifname": DUMMY_DEVICE, "addr_info": [{"local": "10.96.0.20"}]},
        {"ifname": "kdns-dns", "addr_info": [{"local": "10.96.0.10"}, {"local": "169.254.20.10"}]},
    ]

    def runner(argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        assert list(argv) == ["ip", "-j", "addr", "show"]
        return 0, json.dumps(addresses), ""

    node = node_from_host(runner, (4,), (PODS,), (), False)
    assert node.local_ips == ("192.0.2.10",)
    assert node.node_ips == ("192.0.2.10",)


# --- kdns proxy --mode ipvs --dns: the takeover as the proxy runs it ---------------------------

KUBE_DNS_IP = "127.0.0.10"  # the kube-dns ClusterIP; on lo, so the node DNS binds it here
KUBE_DNS = f"""\
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: {KUBE_DNS_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
  - {{name: metrics, port: 9153, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-1
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints:
- addresses: [10.244.2.5]
  conditions: {{ready: true}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
- {{name: metrics, port: 9153, protocol: TCP}}
"""
OTHER_PROCESS = f'UNCONN 0 0 {KUBE_DNS_IP}:53 0.0.0.0:* users:(("kdns",pid=1,fd=7))'
WAIT = 30.0  # seconds: generous, the machine is shared


class NodeModel(KernelModel):
    """The KernelModel plus what `kdns proxy` asks of the rest of the node: its addresses, the
    node DNS's device and rules, `ss` (another process answering: `restarting`) and conntrack.
    Every command is kept in `argvs`; calls come from worker threads, one at a time."""

    def __init__(self, restarting: bool, dns_after_first_sync: bool = False) -> None:
        super().__init__()
        self.restarting = restarting
        self.argvs: list[str] = []
        self.lock = threading.Lock()
        # Set once the first sync has written its IPVS services (its `ipvsadm -R` batch).
        self.first_sync = threading.Event()
        if not dns_after_first_sync:
            self.first_sync.set()

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        if list(argv[:5]) == ["ip", "-o", "addr", "show", "to"]:
            # The node DNS's first step (nodednsrules.install_device) waits for the first sync.
            # A real start may run them in either order: both wait for the store's sync, then
            # each goes to a worker thread; the node DNS taking over before the first sync read
            # the data plane's config leaves :53 out of IPVS from the start, as a restart does
            # (test_a_restarted_proxy_keeps_port_53_taken_over). Outside the lock: the sync's
            # commands must get through meanwhile.
            self.first_sync.wait(WAIT)
        with self.lock:
            if list(argv) == ["ipvsadm", "-R"]:  # one entry per command of the batch
                self.argvs += [f"ipvsadm {line}" for line in (stdin or "").splitlines()]
                self.first_sync.set()
            elif ":KDNS-NODE-DNS -" in (stdin or ""):
                self.argvs.append("the node DNS's rules")
            else:
                self.argvs.append(" ".join(argv))
            return self._answer(list(argv), stdin)

    def _answer(self, argv: list[str], stdin: str | None) -> tuple[int, str, str]:
        if argv == ["ip", "-j", "addr", "show"]:
            eth0 = {"ifname": "eth0", "addr_info": [{"local": "192.0.2.10"}]}
            return 0, json.dumps([eth0]), ""
        if argv[:5] == ["ip", "-o", "addr", "show", "to"]:
            return 0, f"1: lo    inet {argv[5]}/8 scope host lo", ""  # 127/8 is on lo
        if argv[:3] == ["ip", "link", "show"]:
            return 1, "", f'Device "{argv[-1]}" does not exist.'
        if argv[0] == "ss":
            return 0, OTHER_PROCESS if self.restarting else "", ""
        if argv[0] in ("iptables", "ip6tables", "conntrack"):
            return (1 if "-C" in argv else 0), "", ""  # -C: no jump yet
        if argv[:2] == ["nft", "list"]:
            return 0, "", ""
        return super().__call__(argv, stdin)

    def ipvs(self) -> str:
        with self.lock:
            return self.model.save()


async def until(condition: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(WAIT):
        while not condition():
            await trio.sleep(0.02)
    assert condition(), f"no {what} within {WAIT:.0f} s"


def proxy_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Config, proxyapp.ProxyOptions]:
    """`kdns proxy --mode ipvs --dns 127.0.0.10` over the kube-dns manifest, on the model."""
    manifest = tmp_path / "kube-dns.yaml"
    manifest.write_text(KUBE_DNS)
    config = Config().with_overrides(
        "test", **{"kubernetes.manifests": [str(manifest)], "node.dns_upstreams": ["127.0.0.1:9"]}
    )
    options = proxyapp.ProxyOptions(
        mode="ipvs",
        node_name="node1",
        families=(4,),
        min_sync_period=0.0,
        healthz_addr="127.0.0.1:0",
        metrics_addr="127.0.0.1:0",
        dns_addresses=(KUBE_DNS_IP,),
        dns_port=0,
    )
    monkeypatch.setattr(proxyapp, "ipvs_supported", lambda read: True)  # the model has IPVS
    return config, options


async def run_ipvs_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: NodeModel, taken: Callable[[], bool]
) -> None:
    """`kdns proxy --mode ipvs --dns 127.0.0.10` until `taken()`, then SIGTERM."""
    config, options = proxy_setup(tmp_path, monkeypatch)
    default = signal.getsignal(signal.SIGTERM)
    with trio.fail_after(2 * WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(proxyapp.run_proxy, config, options, kernel))
            await until(taken, "takeover")
            # SIGTERM only once the proxy listens for it (else it would end the test run).
            await until(lambda: signal.getsignal(signal.SIGTERM) != default, "signal handler")
            os.kill(os.getpid(), signal.SIGTERM)


async def test_the_proxy_takes_port_53_over_once_its_dns_answers_and_gives_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = NodeModel(restarting=False, dns_after_first_sync=True)
    dns = f"{KUBE_DNS_IP}:53"
    await run_ipvs_proxy(
        tmp_path, monkeypatch, kernel, lambda: f"ipvsadm -D -u {dns}" in kernel.argvs
    )
    argvs = kernel.argvs
    # The first sync gives :53 to IPVS (the central DNS) until the node DNS answers; its
    # sockets answer, its rules go in, and the next sync takes :53 over.
    added = argvs.index(f"ipvsadm -A -u {dns} -s rr")
    rules = argvs.index("the node DNS's rules")
    taken = argvs.index(f"ipvsadm -D -u {dns}")
    assert added < rules < taken
    assert argvs.index(f"ipvsadm -D -t {dns}") > rules
    # A stop that is not a restart: one last sync gives :53 back before the node DNS's rules go.
    given_back = argvs.index(f"ipvsadm -A -u {dns} -s rr", taken)
    assert argvs.index(f"ipvsadm -A -t {dns} -s rr", taken) > taken
    removed = argvs.index("ip link show dev kdns-dns", given_back)
    assert taken < given_back < removed
    save = kernel.ipvs()
    assert f"-A -u {dns} -s rr" in save and f"-A -t {dns} -s rr" in save
    # 9153 stayed IPVS's, and the address stayed on kube-ipvs0, all along.
    assert not [a for a in argvs if f"{KUBE_DNS_IP}:9153" in a and a.startswith("ipvsadm -D")]
    assert f"-A -t {KUBE_DNS_IP}:9153 -s rr" in save
    assert not [a for a in argvs if a.startswith("ip addr del")]
    assert kernel.model.state.addresses == {KUBE_DNS_IP}


async def test_a_restarted_proxy_keeps_port_53_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process answers on the address (the proxy being replaced): from the first sync
    # on, :53 stays the node DNS's, and the stop (a restart too) leaves it so.
    kernel = NodeModel(restarting=True)
    synced = f"ipvsadm -A -t {KUBE_DNS_IP}:9153 -s rr"
    rules = "the node DNS's rules"
    await run_ipvs_proxy(
        tmp_path, monkeypatch, kernel, lambda: {synced, rules} <= set(kernel.argvs)
    )
    assert not [a for a in kernel.argvs if f"{KUBE_DNS_IP}:53" in a]
    assert f"{KUBE_DNS_IP}:53" not in kernel.ipvs()
    assert "ip link show dev kdns-dns" not in kernel.argvs  # the node DNS's rules stayed


async def test_render_with_dns_prints_the_taken_over_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `kdns proxy --mode ipvs --dns … --render`: what a full sync applies once the node DNS
    # answers. Nothing is written.
    config, options = proxy_setup(tmp_path, monkeypatch)
    kernel = NodeModel(restarting=False)
    lines = (await proxyapp.render(config, options, kernel)).splitlines()
    ipvs = [line for line in lines if line.startswith(("ipvsadm", "ip addr"))]
    assert ipvs == [
        f"ipvsadm -A -t {KUBE_DNS_IP}:9153 -s rr",
        f"ipvsadm -a -t {KUBE_DNS_IP}:9153 -r 10.244.2.5:9153 -m -w 1",
        f"ip addr add {KUBE_DNS_IP}/32 dev kube-ipvs0",
    ]
    assert [line for line in lines if "kdns node DNS" in line] == [
        f'-A KUBE-IPVS-FILTER -d {KUBE_DNS_IP}/32 -p {proto} -m {proto} --dport 53 -m comment --comment "kdns node DNS" -j RETURN'
        for proto in ("tcp", "udp")
    ]
    assert kernel.model.state == IpvsModel().state


# --- the helper rules of a takeover with real packets ------------------------------------------
#
# This kernel has no IPVS and no dummy device: IPVS and kube-ipvs0 stay in the model, while
# ipset, iptables and the node DNS's NOTRACK rules are real, in a throwaway node namespace whose
# `lo` holds what the model binds to kube-ipvs0. A pod namespace asks the ClusterIP's port 53,
# answered by sockets bound there on the node (standing in for the node DNS's), which tell the
# source address they saw.

NODE_V4, POD_V4 = "10.254.251.1", "10.254.251.2"
CLUSTER_DNS = "10.96.0.10"
ECHO = str(Path(__file__).with_name("echo.py"))  # its client
COUNT = ("--count", "3", "--timeout", "2")  # three attempts, each bounded by 2 s
COMMAND_TIMEOUT = 60.0  # seconds: namespace commands wait on a busy machine


class NamespaceNode(KernelModel):
    """IPVS and kube-ipvs0 in the model; everything else run in namespace `ns`, and each
    address the model binds to kube-ipvs0 also put on the namespace's lo."""

    def __init__(self, ip: str, ns: str) -> None:
        super().__init__()
        self.ip, self.ns = ip, ns

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        argv = list(argv)
        to_model = argv[0] == "ipvsadm" or argv in (
            ["ip", "-batch", "-"],
            ["ip", "-o", "addr", "show", "dev", DUMMY_DEVICE],
        )
        if not to_model:
            return self.real(argv, stdin)
        result = super().__call__(argv, stdin)
        for line in (stdin or "").splitlines():
            verb, _, rest = line.partition(" ")
            if verb == "addr" and rest.endswith(f"dev {DUMMY_DEVICE}"):
                words = rest.split()  # add|del ADDRESS dev kube-ipvs0
                self.real(["ip", "addr", words[0], words[1], "dev", "lo"], None)
        return result

    def real(self, argv: Sequence[str], stdin: str | None) -> tuple[int, str, str]:
        done = subprocess.run(
            [self.ip, "netns", "exec", self.ns, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        return done.returncode, done.stdout, done.stderr


def echo_client(ip: str, ns: str, proto: str, target: str) -> dict[str, Any]:
    """Three attempts from namespace `ns` (fresh sockets), each bounded by 2 s."""
    done = subprocess.run(
        [ip, "netns", "exec", ns, sys.executable, ECHO, "client", f"--{proto}", target, *COUNT],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert done.returncode == 0, done
    return json.loads(done.stdout)


# The node DNS's stand-in: sockets bound to the ClusterIP (as the node DNS binds them: a reply
# leaves from the address asked), answering each query or connection with echo.py's line.
NODE_SOCKETS = """\
import json, selectors, socket, sys
address, sel = sys.argv[1], selectors.DefaultSelector()
for kind, port in ((socket.SOCK_DGRAM, 53), (socket.SOCK_STREAM, 53), (socket.SOCK_STREAM, 5353)):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((address, port))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    sel.register(s, selectors.EVENT_READ, port)
print("ready", flush=True)
def line(src, port, proto):
    return (json.dumps({"name": "node-dns", "src": "%s:%d" % src, "port": port, "proto": proto}) + "\\n").encode()
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        if sock.type == socket.SOCK_DGRAM:
            data, src = sock.recvfrom(2048)
            sock.sendto(line(src, key.data, "udp"), src)
        else:
            conn, src = sock.accept()
            with conn:
                conn.sendall(line(src, key.data, "tcp"))
"""


def node_sockets(ip: str, ns: str, cleanup: contextlib.ExitStack) -> None:
    """NODE_SOCKETS in namespace `ns`, once it is ready (its address must be local by then)."""
    proc = subprocess.Popen(
        [ip, "netns", "exec", ns, sys.executable, "-c", NODE_SOCKETS, CLUSTER_DNS],
        stdout=subprocess.PIPE,
        text=True,
    )
    cleanup.callback(stop_process, proc)
    assert proc.stdout is not None
    ready = proc.stdout.readline()  # bounded: the process prints it at once or dies
    assert ready == "ready\n", proc.poll()


@pytest.fixture
def node_and_pod_ns() -> Iterator[tuple[str, str, str, contextlib.ExitStack]]:
    """(ip, node namespace, pod namespace, their cleanup): the pod routes all through the node."""
    need_root()
    ip = need_tool("ip", "iproute2")
    for tool, package in (("iptables", "iptables"), ("ipset", "ipset")):
        need_tool(tool, package)
    need_tool("conntrack", "conntrack")
    tag = uuid.uuid4().hex[:8]
    node, pod = f"kdns-ipvs-node-{tag}", f"kdns-ipvs-pod-{tag}"
    with contextlib.ExitStack() as cleanup:
        node_and_pod(ip, node, pod, cleanup)
        for ns, address in ((node, NODE_V4), (pod, POD_V4)):
            ip_command(ip, "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip_command(ip, "-n", ns, "link", "set", "eth0", "up")
        ip_command(ip, "-n", pod, "route", "add", "default", "via", NODE_V4)
        yield ip, node, pod, cleanup


def test_a_taken_over_clusterip_reaches_the_node_socket_through_the_helper_rules(
    node_and_pod_ns: tuple[str, str, str, contextlib.ExitStack],
) -> None:
    ip, node, pod, cleanup = node_and_pod_ns
    kernel = NamespaceNode(ip, node)
    kube_dns = model_service(
        "kube-system/kube-dns",
        ip=CLUSTER_DNS,
        ports=(("dns", "UDP", 53, None), ("dns-tcp", "TCP", 53, None)),
    )
    # The central DNS's endpoint: no host has it (IPVS, were it here, would send it there).
    central = model_endpoint("10.254.251.9", ports=(("dns", "UDP", 53), ("dns-tcp", "TCP", 53)))
    plane = IpvsDataplane(Node(families=(4,), cluster_cidrs=(PODS,), local_ips=(NODE_V4,)), kernel)
    plane.take_over_dns([CLUSTER_DNS])
    plane.sync(routes((kube_dns, [central])), None)
    assert kernel.model.state.services == {}
    assert kernel.model.state.addresses == {CLUSTER_DNS}
    node_sockets(ip, node, cleanup)  # bound once the sync made the ClusterIP local

    # Tracked (no NOTRACK yet): KUBE-IPVS-FILTER lets new connections to port 53 of the
    # kube-ipvs0 address through to the socket, unmasqueraded, over UDP and TCP …
    for proto in ("udp", "tcp"):
        summary = echo_client(ip, pod, proto, f"{CLUSTER_DNS}:53")
        assert (summary["ok"], summary["sources"]) == (3, {POD_V4: 3}), summary
    # … while it still rejects the address's other ports, a listener there or not (#72236),
    assert echo_client(ip, pod, "tcp", f"{CLUSTER_DNS}:5353")["refused"] == 3
    # and it is the node DNS's RETURN that lets 53 through: without it, 53 is rejected too.
    saved = kernel.real(["iptables-save", "-t", "filter"], None)[1].splitlines()
    rule = next(line for line in saved if "kdns node DNS" in line and "-p tcp" in line)
    assert kernel.real(["iptables", "-D", *shlex.split(rule)[1:]], None)[0] == 0
    assert echo_client(ip, pod, "tcp", f"{CLUSTER_DNS}:53")["refused"] == 3
    plane.sync(routes((kube_dns, [central])), None)  # puts it back

    # With the node DNS's NOTRACK rules (IPVS mode installs iptables mode's), the queries
    # still arrive, and conntrack holds nothing for them.
    assert nodednsrules.install(kernel, "ipvs", [CLUSTER_DNS]) == []
    kernel.real(["conntrack", "-F"], None)
    for proto in ("udp", "tcp"):
        summary = echo_client(ip, pod, proto, f"{CLUSTER_DNS}:53")
        assert (summary["ok"], summary["sources"]) == (3, {POD_V4: 3}), summary
    flows = kernel.real(["conntrack", "-L"], None)[1]
    assert f"dst={CLUSTER_DNS}" not in flows, flows

"""IPVS mode's data plane (kdns/proxy/dataplane.py IpvsDataplane) against a model of the kernel,
and `kdns proxy --mode ipvs --dns` taking the kube-dns ClusterIP's port 53 over (in process).

This kernel has no IPVS, so the commands the data plane runs go to `IpvsModel`, which applies
them as ipvsadm and ip would (errors included); the ipset and iptables inputs are recorded.
Removing IPVS mode's objects is `kdns proxy --cleanup`'s: tests/proxy/test_cleanup.py.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio

from kdns import proxyapp
from kdns.config import Config
from kdns.proxy.dataplane import IpvsDataplane, Node, node_from_host
from kdns.proxy.ipvs.kernel import DUMMY_DEVICE
from kdns.proxy.routes import ServicePortRoute
from tests.builders import model_endpoint, model_service
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

    def __init__(self, restarting: bool) -> None:
        super().__init__()
        self.restarting = restarting
        self.argvs: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        with self.lock:
            if list(argv) == ["ipvsadm", "-R"]:  # one entry per command of the batch
                self.argvs += [f"ipvsadm {line}" for line in (stdin or "").splitlines()]
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
    kernel = NodeModel(restarting=False)
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

"""IPVS mode's data plane (kdns/proxy/dataplane.py IpvsDataplane) against a model of the kernel.

This kernel has no IPVS, so the commands the data plane runs go to `IpvsModel`, which applies
them as ipvsadm and ip would (errors included); the ipset and iptables inputs are recorded.
Removing IPVS mode's objects is `kdns proxy --cleanup`'s: tests/proxy/test_cleanup.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from kdns.proxy.dataplane import IpvsDataplane, Node
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

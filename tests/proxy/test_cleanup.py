"""Removing every mode's objects (kdns/proxy/cleanup.py), in a throwaway network namespace.

This kernel has no IPVS (nor the dummy link type): IPVS mode's objects are installed by the real
`IpvsDataplane`, whose ipvsadm commands and kube-ipvs0 commands go to `IpvsModel`
(tests/proxy/ipvs_model.py) through the Runner seam, while the ipsets and the iptables rules are
real, in the namespace. `kdns proxy --cleanup`
after the iptables (both backends) and nftables modes, run as a command, is tested in
tests/e2e/test_proxy_cli.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence

import pytest

from kdns.proxy.cleanup import cleanup_every_mode
from kdns.proxy.dataplane import IpvsDataplane, Node, run_command
from kdns.proxy.routes import ServicePortRoute
from tests.builders import model_endpoint, model_service
from tests.conftest import throwaway_netns
from tests.proxy.builders import PODS, routes

from .ipvs_model import IpvsCommandError, IpvsModel

# Another owner's firewall-mark service: ipvsadm prints it, the model cannot hold it.
FWMARK = "-A -f 100 -s rr\n-a -f 100 -r 10.0.0.1:0 -g -w 1\n"
FOREIGN_IPTABLES = """*filter
:FOREIGN - [0:0]
-A INPUT -s 198.51.100.0/24 -j FOREIGN
-A FOREIGN -m set --match-set FOREIGN-SET src -j ACCEPT
COMMIT
"""
NODE = Node(
    families=(4,), cluster_cidrs=(PODS,), local_ips=("192.0.2.10",), node_ips=("192.0.2.10",)
)


@pytest.fixture
def netns() -> Iterator[str]:
    tools = [("iptables-restore", "iptables"), ("ipset", "ipset"), ("nft", "nftables")]
    with throwaway_netns("kdns-clean", *tools) as name:
        yield name


class Node1:
    """A Runner: ipvsadm goes to an IpvsModel (plus a foreign firewall-mark service in its
    listing), every other command to the namespace; a tool this host lacks exits 127, as
    `run_command` reports it."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.model = IpvsModel()
        self.ipvsadm: list[str] = []  # each ipvsadm command or batch line applied
        self.refuse: tuple[str, ...] = ()  # commands starting so fail

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        argv = list(argv)
        if self.refuse and " ".join(argv).startswith(self.refuse):
            return 1, "", f"{argv[0]}: failed (injected)"
        if argv[0] == "ipvsadm":
            return self._ipvsadm(argv, stdin)
        if argv[0] == "ip" and ("kube-ipvs0" in argv or argv[1:] == ["-batch", "-"]):
            return self._device(argv, stdin)
        if shutil.which(argv[0]) is None:
            return 127, "", f"{argv[0]}: command not found"
        return run_command(["ip", "netns", "exec", self.ns, *argv], stdin)

    def _ipvsadm(self, argv: list[str], stdin: str | None) -> tuple[int, str, str]:
        if argv == ["ipvsadm", "-Sn"]:
            return 0, self.model.save() + FWMARK, ""
        lines = (stdin or "").splitlines() if argv == ["ipvsadm", "-R"] else [" ".join(argv[1:])]
        try:
            self.model.apply(argv, stdin)
        except IpvsCommandError as e:
            return e.status, "", e.message
        self.ipvsadm += lines
        return 0, "", ""

    def _device(self, argv: list[str], stdin: str | None) -> tuple[int, str, str]:
        state = self.model.state
        if argv[:3] == ["ip", "link", "show"]:
            return (0, "9: kube-ipvs0: <BROADCAST,NOARP>", "") if state.device else (1, "", "")
        if argv[:3] == ["ip", "-o", "addr"]:
            if not state.device:
                return 1, "", 'Device "kube-ipvs0" does not exist.'
            lines = [f"9: kube-ipvs0    inet {a}/32 scope global" for a in sorted(state.addresses)]
            return 0, "\n".join(lines), ""
        try:
            self.model.apply(argv, stdin)
        except IpvsCommandError as e:
            return e.status, "", e.message
        return 0, "", ""

    def out(self, *argv: str) -> str:
        return run_command(["ip", "netns", "exec", self.ns, *argv])[1]


def two() -> tuple[ServicePortRoute, ...]:
    web = model_service(
        "ns/web", ip="10.96.0.20", ports=(("p80", "TCP", 80, 30080),), type="NodePort"
    )
    dns = model_service("ns/dns", ip="10.96.0.10", ports=(("dns", "UDP", 53, None),))
    dns_ep = model_endpoint("10.244.1.9", ports=(("dns", "UDP", 5353),))
    return routes((web, [model_endpoint("10.244.1.5")]), (dns, [dns_ep]))


def foreign(node: Node1) -> str:
    """What is not kdns's: the foreign set, and the iptables chain with its rules."""
    sets = [name for name in node.out("ipset", "list", "-n").split() if "KUBE" not in name]
    save = node.out("iptables-save").splitlines()
    return "\n".join([*sets, *(x for x in save if "FOREIGN" in x)])


def install_foreign(node: Node1) -> None:
    for argv, stdin in (
        (["ipset", "create", "FOREIGN-SET", "hash:ip"], None),
        (["ipset", "add", "FOREIGN-SET", "198.51.100.7"], None),
        (["iptables-restore", "--noflush"], FOREIGN_IPTABLES),
    ):
        status, _, err = node(argv, stdin)
        assert status == 0, err


def test_after_ipvs_mode_every_object_goes_and_nothing_else(netns: str) -> None:
    node = Node1(netns)
    install_foreign(node)
    before = foreign(node)
    IpvsDataplane(NODE, node).sync(two(), None)
    # IPVS mode's objects, in the model and in the namespace.
    assert "-A -t 10.96.0.20:80 -s rr" in node.model.save()
    assert node.model.state.addresses == {"10.96.0.20", "10.96.0.10"}
    assert "KUBE-CLUSTER-IP" in node.out("ipset", "list", "-n").split()
    assert ":KUBE-IPVS-FILTER" in node.out("iptables-save")

    assert cleanup_every_mode(node, ipvs=True) == []

    assert node.model.state.services == {}
    assert not any(line.startswith("-D -f") for line in node.ipvsadm)  # another owner's
    assert not node.model.state.device
    assert [s for s in node.out("ipset", "list", "-n").split() if "KUBE" in s] == []
    save = node.out("iptables-save")
    assert "KUBE-" not in save and "KDNS-" not in save
    assert foreign(node) == before
    # Nothing left: a second run finds nothing and removes nothing.
    node.ipvsadm.clear()
    assert cleanup_every_mode(node, ipvs=True) == []
    assert node.ipvsadm == []


def test_what_could_not_be_removed_is_named_and_the_rest_goes(netns: str) -> None:
    node = Node1(netns)
    IpvsDataplane(NODE, node).sync(two(), None)
    # A foreign rule matching on one of kdns's sets keeps it from being destroyed.
    foreign_use = "*filter\n:FOREIGN - [0:0]\n"
    foreign_use += "-A FOREIGN -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n"
    assert node(["iptables-restore", "--noflush"], foreign_use)[0] == 0
    node.refuse = ("ipvsadm -R",)  # the kernel refuses to delete the services

    problems = cleanup_every_mode(node, ipvs=True)

    assert len(problems) == 2, problems
    ipvs, sets = problems
    assert ipvs == (
        "IPVS services still there: -t 10.96.0.20:80, -t 192.0.2.10:30080, -u 10.96.0.10:53"
        " (ipvsadm -R: ipvsadm: failed (injected))"
    )
    assert sets.startswith("ipsets still there: KUBE-CLUSTER-IP (ipset destroy KUBE-CLUSTER-IP:")
    assert "in use" in sets
    # The rest went: the device, kdns's chains, the other sets.
    assert not node.model.state.device
    assert ":KUBE-IPVS-FILTER" not in node.out("iptables-save")
    assert [s for s in node.out("ipset", "list", "-n").split() if "KUBE" in s] == [
        "KUBE-CLUSTER-IP"
    ]


class Listings:
    """A Runner for the listings alone: `answers` maps argv[0] to (status, stdout, stderr);
    any other command is an error of the test."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if argv[0] == "ip":
            return 1, "", 'Device "kube-ipvs0" does not exist.'
        return self.answers.get(argv[0], (127, "", f"{argv[0]}: command not found"))


def test_tools_not_installed_mean_nothing_was_installed_with_them() -> None:
    runner = Listings({})
    assert cleanup_every_mode(runner, ipvs=True) == []
    # It looked (listings, `--version` probes) and removed nothing.
    assert {argv[0] for argv in runner.calls} >= {"ipvsadm", "ipset", "nft", "iptables-nft-save"}
    assert not any({"-D", "-R", "destroy", "-f", "del"} & set(argv) for argv in runner.calls)


def test_a_listing_that_fails_is_a_line_since_leftovers_cannot_be_ruled_out() -> None:
    runner = Listings(
        {
            "ipvsadm": (0, "-A -t 10.0.0.1:80 garbage\n", ""),
            "ipset": (1, "", "ipset v7.17: Kernel error received: ipset protocol error\n"),
            "nft": (0, "table inet filter\n", ""),
        }
    )
    assert cleanup_every_mode(runner, ipvs=True) == [
        "cannot read ipvsadm -Sn: line 1: unexpected argument garbage: '-A -t 10.0.0.1:80 garbage'",
        "cannot list ipsets: ipset list -n: ipset v7.17: Kernel error received: ipset protocol error",
    ]


def test_without_ipvs_in_the_kernel_ipvsadm_is_never_run() -> None:
    runner = Listings({"ipvsadm": (0, "-A -t 10.0.0.1:80 -s rr\n", "")})
    assert cleanup_every_mode(runner, ipvs=False) == []
    assert not any(argv[0] == "ipvsadm" for argv in runner.calls)

"""`kdns proxy` as a command: flags, --render, --cleanup, IPVS detection, lifecycle.

The rules go into a throwaway network namespace (`ip netns exec`), never the host's tables.
Packet-level behaviour is in tests/proxy/test_packets.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdns.proxy.dataplane import ipvs_supported, read_file
from tests.conftest import need_tool, throwaway_netns
from tests.processes import stop_process

from .conftest import EXAMPLES, kdns_command, run_kdns

PROXY = ("proxy", "--manifests", str(EXAMPLES), "--node-name", "node1")


@pytest.fixture
def netns() -> Iterator[str]:
    with throwaway_netns(
        "kdns-pcli", ("iptables-restore", "iptables"), ("nft", "nftables")
    ) as name:
        yield name


def in_ns(
    ns: str, *argv: str, timeout: float = 60, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
    )


def ruleset(ns: str) -> str:
    saves = [in_ns(ns, tool).stdout for tool in ("iptables-save", "ip6tables-save")]
    saves = ["\n".join(x for x in s.splitlines() if not x.startswith("#")) for s in saves]
    return "\n".join([*saves, in_ns(ns, "nft", "list", "ruleset").stdout])


FOREIGN = """*nat
:FOREIGN - [0:0]
-A PREROUTING -d 198.51.100.7/32 -j FOREIGN
-A FOREIGN -p tcp -j DNAT --to-destination 198.51.100.8:80
COMMIT
*filter
-A INPUT -s 198.51.100.0/24 -j ACCEPT
COMMIT
"""


def test_ipvs_mode_is_refused_exactly_where_the_kernel_has_no_ipvs() -> None:
    # The same files the proxy reads decide which answer is right on this host; --render
    # touches no kernel state either way.
    result = run_kdns(*PROXY, "--mode", "ipvs", "--render")
    if ipvs_supported(read_file):
        assert result.returncode == 0, result.stderr
        assert "ipvsadm -A -t 10.97.97.97:6379 -s rr" in result.stdout.splitlines()
        return
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "IPVS" in lines[0] and "iptables, nftables, userspace" in lines[0]


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (("--cluster-cidr", "10.244.0.0/33"), "--cluster-cidr: '10.244.0.0/33' is not a CIDR"),
        (("--cluster-cidr", "10.1.0.0/16,10.2.0.0/16"), "at most one CIDR per IP family"),
        (("--nodeport-addresses", "bogus"), "--nodeport-addresses: 'bogus' is not a CIDR"),
        (("--healthz-addr", "nohost"), "--healthz-addr"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags: tuple[str, ...], complaint: str) -> None:
    result = run_kdns(*PROXY, *flags)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_render_prints_the_rules_and_changes_nothing(netns: str, mode: str) -> None:
    in_ns(
        netns, "iptables-restore", "--noflush", "--wait", "5"
    ).check_returncode() if False else None
    subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-restore", "--noflush"],
        input=FOREIGN,
        text=True,
        check=True,
        capture_output=True,
    )
    before = ruleset(netns)
    result = in_ns(netns, *kdns_command(*PROXY, "--mode", mode, "--render"))
    assert result.returncode == 0, result.stderr
    # redis.default (10.97.97.97:6379) with its endpoints, in the mode's syntax.
    if mode == "iptables":
        assert (
            '-A KUBE-SERVICES -m comment --comment "default/redis:redis cluster IP" -m tcp'
            " -p tcp -d 10.97.97.97 --dport 6379 -j KUBE-SVC-" in result.stdout
        )
        assert "-I PREROUTING 1 " in result.stdout  # the jumps a fresh node needs
        assert "-j DNAT --to-destination 10.244.1.10:6379" in result.stdout
    else:
        assert "10.97.97.97 . tcp . 6379" in result.stdout
        assert "dnat to 10.244.1.10:6379" in result.stdout
    assert ruleset(netns) == before


def test_render_drops_unallocated_service_cidr_addresses_in_nftables_mode(
    netns: str, tmp_path: Path
) -> None:
    # A ServiceCIDR among the manifests: nftables mode's cluster-ips-check drops what no
    # ClusterIP of it matched (KEP-3866); iptables mode, like kube-proxy's, has no such rule.
    cidrs = tmp_path / "servicecidr.yaml"
    cidrs.write_text(
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: kubernetes\n"
        "spec:\n  cidrs: [10.96.0.0/12]\n"
    )
    drop = 'ip daddr { 10.96.0.0/12 } drop comment "Drop traffic to unallocated ClusterIPs"'
    for mode, expected in (("nftables", True), ("iptables", False)):
        argv = kdns_command(*PROXY, "--manifests", str(cidrs), "--mode", mode, "--render")
        result = in_ns(netns, *argv)
        assert result.returncode == 0, result.stderr
        assert (drop in result.stdout) is expected, mode
        assert ("10.96.0.0/12" in result.stdout) is expected, mode


def legacy_first(tmp_path: Path) -> str:
    """A PATH on which `iptables`, `iptables-save`, `iptables-restore` (and ip6…) are the
    legacy (x_tables) tools: kdns runs whichever `iptables-restore` PATH finds."""
    bindir = tmp_path / "legacy-bin"
    bindir.mkdir()
    for tool in ("iptables", "iptables-save", "iptables-restore"):
        for name in (tool, "ip6" + tool.removeprefix("ip")):
            legacy = need_tool(name.replace("tables", "tables-legacy", 1), "iptables")
            (bindir / name).symlink_to(legacy)
    return f"{bindir}:{os.environ.get('PATH', '')}"


FOREIGN_NFT = """table inet foreign {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr 198.51.100.9 counter packets 0 bytes 0 drop
\t}
}
"""
FOREIGN_IPV6 = """*filter
:FOREIGN6 - [0:0]
-A INPUT -s 2001:db8::/32 -j FOREIGN6
-A FOREIGN6 -j ACCEPT
COMMIT
"""
# Every iptables backend and family a mode may write to, and the foreign nft table.
VIEWS = (
    ("iptables-nft-save",),
    ("ip6tables-nft-save",),
    ("iptables-legacy-save",),
    ("ip6tables-legacy-save",),
    ("nft", "list", "table", "inet", "foreign"),
)
_BUILTIN_CHAIN = re.compile(r"^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ")


def without_empty_tables(save: str) -> str:
    """iptables-save output without the tables that hold only empty built-in chains: writing
    kdns's rules creates them (iptables-nft adds the table; x_tables instantiates it in the
    namespace for good), and removing kdns's rules cannot take them away."""
    out: list[str] = []
    section: list[str] = []
    for line in save.splitlines():
        if line.startswith("#"):
            continue
        section.append(line)
        if line == "COMMIT":
            if any(
                not (x.startswith("*") or _BUILTIN_CHAIN.match(x) or x == "COMMIT") for x in section
            ):
                out += section
            section = []
    return "\n".join(out + section)


def foreign_view(ns: str) -> str:
    """What is not kdns's, to compare byte for byte: each backend's and family's iptables-save
    (without tables kdns's writes left empty) and the foreign nft table."""
    views = []
    for argv in VIEWS:
        out = in_ns(ns, *argv).stdout
        # Traffic moves the counters, not kdns.
        out = re.sub(r"\[\d+:\d+\]$|counter packets \d+ bytes \d+", "[-]", out, flags=re.M)
        views.append(without_empty_tables(out))
    return "\n--\n".join(views)


def kdns_leftovers(ns: str) -> list[str]:
    """Lines naming kdns's chains or tables, in every backend and family."""
    saves = [
        in_ns(ns, f"{family}tables-{backend}-save").stdout
        for family in ("ip", "ip6")
        for backend in ("nft", "legacy")
    ]
    lines = "\n".join([*saves, in_ns(ns, "nft", "list", "tables").stdout]).splitlines()
    return [x for x in lines if re.search(r"KUBE-|KDNS-|table ip6? kdns", x)]


def installed(ns: str, marker: str) -> bool:
    """Whether `marker` is in kdns's iptables rules (any backend) or its nft tables."""
    kdns_tables = in_ns(ns, "nft", "list", "table", "ip", "kdns").stdout
    return marker in kdns_tables or any(marker in line for line in kdns_leftovers(ns))


def install_foreign(ns: str) -> None:
    for tool, text in (
        ("iptables-nft-restore", FOREIGN),
        ("iptables-legacy-restore", FOREIGN),
        ("ip6tables-nft-restore", FOREIGN_IPV6),
        ("ip6tables-legacy-restore", FOREIGN_IPV6),
    ):
        subprocess.run(
            ["ip", "netns", "exec", ns, tool, "--noflush"],
            input=text,
            text=True,
            check=True,
            capture_output=True,
        )
    in_ns(ns, "nft", "-f", "-", input_text=FOREIGN_NFT).check_returncode()


@pytest.mark.parametrize("mode", ["iptables", "iptables-legacy", "nftables"])
def test_runs_until_sigterm_keeps_rules_and_cleanup_removes_every_modes(
    netns: str, mode: str, tmp_path: Path
) -> None:
    # kube-proxy's --cleanup removes what any of its modes installed, whatever --mode says:
    # `kdns proxy --cleanup` without --mode after each mode (iptables-legacy: iptables mode
    # with the legacy tools first on PATH).
    need_tool("iptables-legacy-save", "iptables")
    install_foreign(netns)
    foreign_before = foreign_view(netns)
    env = {**os.environ, "PATH": legacy_first(tmp_path)} if mode == "iptables-legacy" else None
    kernel_mode = mode.removesuffix("-legacy")
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            *kdns_command(*PROXY, "--mode", kernel_mode, "--min-sync-period", "0.1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    marker = "10.97.97.97 . tcp . 6379" if mode == "nftables" else "KUBE-SERVICES -d 10.97.97.97"
    try:
        deadline = time.monotonic() + 15
        while not installed(netns, marker):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no rules after 15 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_process(proc)
    assert installed(netns, marker)  # rules stay: a restarting proxy must not cut traffic
    result = in_ns(netns, *kdns_command("proxy", "--cleanup"))
    assert (result.returncode, result.stderr) == (0, "")
    assert kdns_leftovers(netns) == []
    assert foreign_view(netns) == foreign_before


@pytest.mark.parametrize("mode", [None, "userspace"])
def test_cleanup_of_a_clean_node_changes_nothing(netns: str, mode: str | None) -> None:
    install_foreign(netns)
    before = foreign_view(netns)
    flags = ("--mode", mode) if mode else ()
    result = in_ns(netns, *kdns_command("proxy", *flags, "--cleanup"))
    assert (result.returncode, result.stderr) == (0, "")
    assert foreign_view(netns) == before
    assert kdns_leftovers(netns) == []


def test_cleanup_names_what_it_could_not_remove_and_exits_1(netns: str) -> None:
    # A foreign rule jumping to KUBE-SERVICES keeps that chain from being deleted: the
    # rest goes, the chain stays, and one line names it.
    rules = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:FOREIGN - [0:0]\n"
    rules += "-A FOREIGN -j KUBE-SERVICES\nCOMMIT\n"
    in_ns(netns, "iptables-nft-restore", "--noflush", input_text=rules).check_returncode()
    in_ns(netns, "nft", "add", "table", "ip", "kdns").check_returncode()
    result = in_ns(netns, *kdns_command("proxy", "--cleanup"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdns proxy: cleanup: iptables-nft (IPv4): nat chains still there:")
    assert "KUBE-SERVICES" in lines[0]
    # The transaction that failed removed nothing; what else was found is gone.
    assert in_ns(netns, "nft", "list", "table", "ip", "kdns").returncode != 0


def test_userspace_render_lists_the_loopback_vips() -> None:
    result = run_kdns(*PROXY, "--mode", "userspace", "--render")
    assert result.returncode == 0, result.stderr
    redis = [line for line in result.stdout.splitlines() if line.startswith("default/redis:")]
    assert len(redis) == 1, result.stdout
    vip = redis[0].split()[1]
    assert vip.startswith("127.")
    assert redis[0].endswith("tcp/6379 -> 10.244.1.10:6379, 10.244.2.11:6379")


def test_config_file_keys_drive_the_proxy_and_flags_override_them(tmp_path) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text(
        "proxy_mode: userspace\nnode_name: node9\ncluster_cidrs: [10.244.0.0/16]\n"
        f"manifests: [{EXAMPLES}]\n"
    )
    result = run_kdns("proxy", "--config", str(config), "--render")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("default/redis:redis 127.") for line in result.stdout.splitlines())
    # The flag wins over the file.
    result = run_kdns("proxy", "--config", str(config), "--mode", "iptables", "--render")
    assert result.returncode == 0, result.stderr
    assert "KUBE-SERVICES" in result.stdout and "10.244.0.0/16" in result.stdout
    # A bad value in the file: one line naming file, line and key.
    config.write_text("proxy_mode: iptables\ncluster_cidrs: [10.1.0.0/16, 10.2.0.0/16]\n")
    result = run_kdns("proxy", "--config", str(config), "--render")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kdns: {config}:2: cluster_cidrs: at most one CIDR per IP family "
        "(got ['10.1.0.0/16', '10.2.0.0/16'])"
    ]

"""`kdns proxy` as a command: flags, --render, --cleanup, IPVS detection, lifecycle.

The rules go into a throwaway network namespace (`ip netns exec`), never the host's tables.
Packet-level behaviour is in tests/proxy/test_packets.py.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from kdns.proxy.dataplane import ipvs_supported, read_file
from tests.conftest import throwaway_netns

from .conftest import EXAMPLES, kdns_command, run_kdns

PROXY = ("proxy", "--manifests", str(EXAMPLES), "--node-name", "node1")


@pytest.fixture
def netns() -> Iterator[str]:
    with throwaway_netns(
        "kdns-pcli", ("iptables-restore", "iptables"), ("nft", "nftables")
    ) as name:
        yield name


def in_ns(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


def ruleset(ns: str) -> str:
    saves = [in_ns(ns, tool).stdout for tool in ("iptables-save", "ip6tables-save")]
    saves = ["\n".join(x for x in s.splitlines() if not x.startswith("#")) for s in saves]
    return "\n".join([*saves, in_ns(ns, "nft", "list", "ruleset").stdout])


def ipv4(ns: str) -> str:
    save = in_ns(ns, "iptables-save").stdout
    return "\n".join(x for x in save.splitlines() if not x.startswith("#"))


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


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_runs_until_sigterm_keeps_rules_and_cleanup_removes_only_ours(
    netns: str, mode: str
) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-restore", "--noflush"],
        input=FOREIGN,
        text=True,
        check=True,
        capture_output=True,
    )
    ipv4_before = ipv4(netns)
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            *kdns_command(*PROXY, "--mode", mode, "--min-sync-period", "0.1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        marker = (
            "KUBE-SERVICES -d 10.97.97.97" if mode == "iptables" else "10.97.97.97 . tcp . 6379"
        )
        while marker not in ruleset(netns):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no rules after 15 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marker in ruleset(netns)  # rules stay: a restarting proxy must not cut traffic
    result = in_ns(netns, *kdns_command("proxy", "--mode", mode, "--cleanup"))
    assert result.returncode == 0, result.stderr
    after = ruleset(netns)
    assert "KUBE-" not in after and "KDNS" not in after and "table ip kdns" not in after
    # The foreign IPv4 rules are byte-identical. (iptables-nft may leave the empty built-in
    # IPv6 tables it created for kdns's rules: no rule, no chain of kdns's is left in them.)
    assert ipv4(netns) == ipv4_before


def test_userspace_render_lists_the_loopback_vips() -> None:
    result = run_kdns(*PROXY, "--mode", "userspace", "--render")
    assert result.returncode == 0, result.stderr
    redis = [line for line in result.stdout.splitlines() if line.startswith("default/redis:")]
    assert len(redis) == 1, result.stdout
    vip = redis[0].split()[1]
    assert vip.startswith("127.")
    assert redis[0].endswith("tcp/6379 -> 10.244.1.10:6379, 10.244.2.11:6379")


def test_userspace_cleanup_has_nothing_to_remove() -> None:
    result = run_kdns("proxy", "--mode", "userspace", "--cleanup")
    assert (result.returncode, result.stderr) == (0, "")


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

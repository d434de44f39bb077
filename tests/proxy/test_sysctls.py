"""The sysctls kube-proxy sets at start, per mode (proxy/sysctls.py), and their writer
(proxy/sysctlwriter.py) against a temp /proc/sys tree."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kdns.proxy.sysctls import RAISE, SET, Conntrack, Sysctl, kernel_version, needs_write, wanted
from kdns.proxy.sysctlwriter import apply

CPUS = 2
KERNEL = (6, 1)

# kube-proxy's defaults: max(32768 x 2 CPUs, 131072) = 131072, raised only; 24h; 1h.
CONNTRACK = """
net/netfilter/nf_conntrack_max = 131072 (raise)
net/netfilter/nf_conntrack_tcp_timeout_established = 86400 (set)
net/netfilter/nf_conntrack_tcp_timeout_close_wait = 3600 (set)
"""
IPVS = """
net/ipv4/vs/conntrack = 1 (set)
net/ipv4/vs/expire_nodest_conn = 1 (set)
net/ipv4/vs/expire_quiescent_template = 1 (set)
net/ipv4/ip_forward = 1 (set)
"""


def listing(sysctls: list[Sysctl]) -> str:
    return "".join(f"\n{s.path} = {s.value} ({s.rule})" for s in sysctls) + "\n"


@pytest.mark.parametrize(
    ("mode", "conntrack", "cpus", "kernel", "expected"),
    [
        ("iptables", Conntrack(), CPUS, KERNEL, CONNTRACK),
        ("nftables", Conntrack(), CPUS, KERNEL, CONNTRACK),
        ("ipvs", Conntrack(), CPUS, KERNEL, CONNTRACK + IPVS.lstrip("\n")),
        ("userspace", Conntrack(), CPUS, KERNEL, "\n"),
        # 32768 x 8 CPUs is above the minimum.
        (
            "iptables",
            Conntrack(),
            8,
            KERNEL,
            CONNTRACK.replace("= 131072", "= 262144"),
        ),
        # Zeros leave every setting alone.
        (
            "nftables",
            Conntrack(max_per_core=0, tcp_timeout_established=0, tcp_timeout_close_wait=0),
            CPUS,
            KERNEL,
            "\n",
        ),
        # The optional ones, only when configured (kube-proxy's --conntrack-tcp-be-liberal,
        # --conntrack-udp-timeout, --conntrack-udp-timeout-stream).
        (
            "nftables",
            Conntrack(tcp_be_liberal=True, udp_timeout=30, udp_timeout_stream=120),
            CPUS,
            KERNEL,
            CONNTRACK
            + "net/netfilter/nf_conntrack_tcp_be_liberal = 1 (set)\n"
            + "net/netfilter/nf_conntrack_udp_timeout = 30 (set)\n"
            + "net/netfilter/nf_conntrack_udp_timeout_stream = 120 (set)\n",
        ),
        # conn_reuse_mode=0 only on kernels in [4.1, 5.9) (kubernetes#93297).
        (
            "ipvs",
            Conntrack(max_per_core=0, tcp_timeout_established=0, tcp_timeout_close_wait=0),
            CPUS,
            (5, 4),
            """
net/ipv4/vs/conntrack = 1 (set)
net/ipv4/vs/conn_reuse_mode = 0 (set)
net/ipv4/vs/expire_nodest_conn = 1 (set)
net/ipv4/vs/expire_quiescent_template = 1 (set)
net/ipv4/ip_forward = 1 (set)
""",
        ),
        (
            "ipvs",
            Conntrack(max_per_core=0, tcp_timeout_established=0, tcp_timeout_close_wait=0),
            CPUS,
            (5, 9),
            IPVS,
        ),
        (
            "ipvs",
            Conntrack(max_per_core=0, tcp_timeout_established=0, tcp_timeout_close_wait=0),
            CPUS,
            (4, 0),
            IPVS,
        ),
    ],
)
def test_the_sysctls_of_each_mode(
    mode: str, conntrack: Conntrack, cpus: int, kernel: tuple[int, int], expected: str
) -> None:
    assert listing(wanted(mode, conntrack, cpus, kernel)) == expected


@pytest.mark.parametrize(
    ("rule", "current", "write"),
    [
        (RAISE, 65536, True),
        (RAISE, 131072, False),
        (RAISE, 1048576, False),  # never lowered
        (SET, 432000, True),  # lowered: kube-proxy writes any value that differs
        (SET, 86400, False),
        (SET, None, True),  # unreadable: written
    ],
)
def test_raise_writes_only_a_higher_value_and_set_any_other(
    rule: str, current: int | None, write: bool
) -> None:
    target = 131072 if rule == RAISE else 86400
    assert needs_write(Sysctl("x", target, rule), current) is write


@pytest.mark.parametrize(
    ("release", "version"),
    [("6.1.0-18-amd64", (6, 1)), ("5.10.0", (5, 10)), ("4.19.0+", (4, 19)), ("junk", (0, 0))],
)
def test_kernel_version(release: str, version: tuple[int, int]) -> None:
    assert kernel_version(release) == version


def tree(root: Path, values: dict[str, str]) -> None:
    for path, value in values.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(f"{value}\n")


def read(root: Path, path: str) -> str:
    return (root / path).read_text().strip()


NF = "net/netfilter/"


def test_the_writer_raises_max_sets_timeouts_and_logs_each_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree(
        tmp_path,
        {
            NF + "nf_conntrack_max": "65536",
            NF + "nf_conntrack_tcp_timeout_established": "432000",
            NF + "nf_conntrack_tcp_timeout_close_wait": "3600",
        },
    )
    with caplog.at_level(logging.INFO, "kdns.proxy.sysctlwriter"):
        assert apply(wanted("nftables", Conntrack(), CPUS, KERNEL), str(tmp_path)) == []
    assert read(tmp_path, NF + "nf_conntrack_max") == "131072"
    assert read(tmp_path, NF + "nf_conntrack_tcp_timeout_established") == "86400"
    assert [r.getMessage() for r in caplog.records] == [
        "sysctl net/netfilter/nf_conntrack_max: 65536 -> 131072",
        "sysctl net/netfilter/nf_conntrack_tcp_timeout_established: 432000 -> 86400",
    ]


def test_the_writer_never_lowers_max_and_leaves_zeros_alone(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {NF + "nf_conntrack_max": "1048576", NF + "nf_conntrack_tcp_timeout_established": "7"},
    )
    conntrack = Conntrack(tcp_timeout_established=0, tcp_timeout_close_wait=0)
    assert apply(wanted("iptables", conntrack, CPUS, KERNEL), str(tmp_path)) == []
    assert read(tmp_path, NF + "nf_conntrack_max") == "1048576"
    assert read(tmp_path, NF + "nf_conntrack_tcp_timeout_established") == "7"
    assert not (tmp_path / NF / "nf_conntrack_tcp_timeout_close_wait").exists()


def test_an_unwritable_sysctl_is_one_warning_and_the_rest_still_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real read-only sysctl (mode 0444: even root cannot write it) in the place of one.
    tree(tmp_path, {NF + "nf_conntrack_tcp_timeout_close_wait": "60"})
    (tmp_path / NF / "nf_conntrack_max").symlink_to("/proc/sys/kernel/ngroups_max")
    (tmp_path / NF / "nf_conntrack_tcp_timeout_established").write_text("432000\n")
    with caplog.at_level(logging.INFO, "kdns.proxy.sysctlwriter"):
        warnings = apply(
            wanted("nftables", Conntrack(max_per_core=1 << 20), CPUS, KERNEL), str(tmp_path)
        )
    assert warnings == [
        "sysctl net/netfilter/nf_conntrack_max: cannot set 2097152: Permission denied"
    ]
    assert [r.levelname for r in caplog.records].count("WARNING") == 1
    assert read(tmp_path, NF + "nf_conntrack_tcp_timeout_established") == "86400"
    assert read(tmp_path, NF + "nf_conntrack_tcp_timeout_close_wait") == "3600"


def test_a_missing_ipvs_tree_is_a_warning_per_setting(tmp_path: Path) -> None:
    tree(tmp_path, {"net/ipv4/ip_forward": "0"})
    conntrack = Conntrack(max_per_core=0, tcp_timeout_established=0, tcp_timeout_close_wait=0)
    warnings = apply(wanted("ipvs", conntrack, CPUS, KERNEL), str(tmp_path))
    assert warnings == [
        f"sysctl net/ipv4/vs/{name}: cannot set 1: No such file or directory"
        for name in ("conntrack", "expire_nodest_conn", "expire_quiescent_template")
    ]
    assert read(tmp_path, "net/ipv4/ip_forward") == "1"


def test_no_root_touches_nothing() -> None:
    assert apply(wanted("ipvs", Conntrack(), CPUS, KERNEL), "") == []


def test_the_command_takes_the_conntrack_settings_from_file_and_flags(tmp_path: Path) -> None:
    from kdns import cli

    config_file = tmp_path / "kdns.yaml"
    config_file.write_text("proxy:\n  conntrack_min: 0\n  conntrack_udp_timeout: 30\n")
    argv = ["proxy", "--config", str(config_file), "--conntrack-tcp-timeout-established", "0"]
    options = cli.proxy_options(cli.config_of(cli.parse_args(argv)))
    assert options.conntrack == Conntrack(min=0, tcp_timeout_established=0, udp_timeout=30)
    assert options.sysctl_root == "/proc/sys"  # the command writes the node's; tests pass ""
    argv = ["proxy", "--conntrack-tcp-be-liberal", "--conntrack-max-per-core", "0"]
    options = cli.proxy_options(cli.config_of(cli.parse_args(argv)))
    assert options.conntrack == Conntrack(max_per_core=0, tcp_be_liberal=True)

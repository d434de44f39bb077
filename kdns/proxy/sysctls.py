"""The kernel settings kube-proxy makes at start, as a list: what `kdns proxy` sets too.

Contract (pure: no I/O; `proxy/sysctlwriter.py` reads and writes them):
- `wanted(mode, conntrack, cpus, kernel)` is the list of `Sysctl(path, value, rule)` kube-proxy
  would set for that mode, paths relative to /proc/sys, in the order it sets them:
  - every privileged mode (iptables, nftables, IPVS): the conntrack settings of kube-proxy's
    `setupConntrack` (cmd/kube-proxy/app/server_linux.go, conntrack.go): `nf_conntrack_max` =
    max(max_per_core × CPUs, min), only ever raised (`RAISE`); the TCP established and
    close-wait timeouts; `nf_conntrack_tcp_be_liberal` and the UDP timeouts only when
    configured. A zero leaves the setting alone, as kube-proxy's flags do.
  - IPVS mode, after those (pkg/proxy/ipvs/proxier.go): `vs/conntrack=1` (the masquerade rules
    need conntrack entries for IPVS's connections), `vs/conn_reuse_mode=0` only on kernels in
    [4.1, 5.9) (kubernetes#93297: before 4.1 it does not exist, from 5.9 the kernel's default
    is right), `vs/expire_nodest_conn=1`, `vs/expire_quiescent_template=1` (connections to a
    removed endpoint end at once instead of timing out), `ip_forward=1`. kube-proxy sets
    `arp_ignore=1`/`arp_announce=2` only with `--ipvs-strict-arp`; kdns has no strict-ARP
    option, so it leaves them alone.
  - userspace mode: nothing (it runs unprivileged, and relays on loopback).
  - Never `route_localnet`: kube-proxy sets it only for localhost NodePorts (iptables mode),
    which kdns does not serve.
- `SET` writes a value that differs; `RAISE` writes only a higher one (kube-proxy never lowers
  nf_conntrack_max: an operator's larger table stays). `needs_write(sysctl, current)` says
  which; an unreadable current value (None) is written.
"""

from __future__ import annotations

from dataclasses import dataclass

SET = "set"  # write when the current value differs
RAISE = "raise"  # write only when the current value is lower

NETFILTER = "net/netfilter/"
IPVS = "net/ipv4/vs/"
# kube-proxy's IPVSConnReuseModeMinSupportedKernelVersion and ...FixedKernelVersion.
CONN_REUSE_FROM = (4, 1)
CONN_REUSE_FIXED = (5, 9)


@dataclass(frozen=True, slots=True)
class Conntrack:
    """kube-proxy's `conntrack` settings (its flags' names and defaults; seconds, 0 = leave
    alone)."""

    max_per_core: int = 32768
    min: int = 131072
    tcp_timeout_established: int = 86400  # 24h
    tcp_timeout_close_wait: int = 3600  # 1h
    tcp_be_liberal: bool = False
    udp_timeout: int = 0
    udp_timeout_stream: int = 0


@dataclass(frozen=True, slots=True)
class Sysctl:
    path: str  # under /proc/sys, e.g. net/netfilter/nf_conntrack_max
    value: int
    rule: str = SET  # SET or RAISE


def conntrack_max(max_per_core: int, minimum: int, cpus: int) -> int:
    """kube-proxy's getConntrackMax: 0 (leave alone) when max_per_core is 0, else the larger of
    max_per_core × CPUs and the minimum."""
    if max_per_core <= 0:
        return 0
    return max(max_per_core * cpus, minimum)


def wanted(mode: str, conntrack: Conntrack, cpus: int, kernel: tuple[int, int]) -> list[Sysctl]:
    """The sysctls kube-proxy sets at start in `mode` (module docstring)."""
    if mode == "userspace":
        return []
    return _conntrack(conntrack, cpus) + (_ipvs(kernel) if mode == "ipvs" else [])


def _conntrack(conntrack: Conntrack, cpus: int) -> list[Sysctl]:
    settings = [
        ("nf_conntrack_max", conntrack_max(conntrack.max_per_core, conntrack.min, cpus), RAISE),
        ("nf_conntrack_tcp_timeout_established", conntrack.tcp_timeout_established, SET),
        ("nf_conntrack_tcp_timeout_close_wait", conntrack.tcp_timeout_close_wait, SET),
        ("nf_conntrack_tcp_be_liberal", int(conntrack.tcp_be_liberal), SET),
        ("nf_conntrack_udp_timeout", conntrack.udp_timeout, SET),
        ("nf_conntrack_udp_timeout_stream", conntrack.udp_timeout_stream, SET),
    ]
    return [Sysctl(NETFILTER + name, value, rule) for name, value, rule in settings if value > 0]


def _ipvs(kernel: tuple[int, int]) -> list[Sysctl]:
    reuse = [Sysctl(IPVS + "conn_reuse_mode", 0)]
    return [
        Sysctl(IPVS + "conntrack", 1),
        *(reuse if CONN_REUSE_FROM <= kernel < CONN_REUSE_FIXED else []),
        Sysctl(IPVS + "expire_nodest_conn", 1),
        Sysctl(IPVS + "expire_quiescent_template", 1),
        Sysctl("net/ipv4/ip_forward", 1),
    ]


def needs_write(sysctl: Sysctl, current: int | None) -> bool:
    """Whether `current` must be overwritten with `sysctl.value` (module docstring)."""
    if current is None:
        return True
    if sysctl.rule == RAISE:
        return current < sysctl.value
    return current != sysctl.value


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as `6.1.0-18-amd64`; (0, 0) if none."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1].split("-")[0] if c.isdigit()) or 0)
    except (ValueError, IndexError):
        return (0, 0)

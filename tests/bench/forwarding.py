"""Benchmark: kdns forwarding to an upstream against that upstream, and against unbound forwarding.

What it measures. An unbound on 127.0.0.1 serves ``bench.example`` from ``local-data`` (default
1,000 names ``name-N.bench.example``) and answers every ``*.miss.bench.example`` with one A
record (a ``redirect`` local zone), so it answers at once, never recursing (``local-zone: "."
static``: it sends nothing anywhere). dnsperf asks it directly ("direct"), through a second
unbound that forwards every name to it with its cache on ("fwd": kdns's job done by a C server,
one thread, kdns's receive buffer, no validation, no prefetch), and through kdns
(``kdns serve --upstreams <unbound>``, "kdns"), in two mixes:

- hits: a small set of names (default 100 of the 1,000) over and over. kdns answers them from
  its upstream cache after a warm-up pass; unbound from its local data.
- misses: every query a name never asked before (``<run>-<i>.miss.bench.example``; dnsperf
  ``-n 1`` reads the file once, so no name repeats), each run against a fresh kdns: every
  query is one exchange with unbound. The kdns cache (9,984 answers) fills and evicts as it goes;
  so does the forwarding unbound's (its default 4 MB caches). "direct" answers these from its
  local zone, which is no miss at all: "fwd" is the like-for-like peer of a miss.

For each it reports the unthrottled throughput (dnsperf, 100 queries in flight, 4 sockets) and
the p50 / p99 latency at a fixed rate (``--rate``, default 500 qps). dnsperf 2.x prints no
percentiles, so they are computed (nearest rank) from the per-query latency ``dnsperf -v``
prints, with the parsing helpers of tests/bench/dns_vs_dnsmasq.py. The ratios are kdns / direct
and kdns / fwd.
Each figure is the best of ``--rounds`` (default 2; the machine may be shared), and each run
first waits (bounded, ``--quiet-wait``) for the machine to be idle. The CPU time per answered
query of the server dnsperf asks (from /proc/<pid>/stat) is the figure least disturbed by other
load. The table's "other" column is the CPU the rest of the machine used meanwhile (its busy
time from /proc/stat, less the servers, dnsperf and this script), in cores.

Then the cost of one pod's lookup of a name through its search path (ndots:5, search
``default.svc.cluster.local svc.cluster.local cluster.local``), with and without ``--autopath``:
the script plays glibc's stub resolver (each search name in turn until an answer that is not
empty, then the name itself; ``getent ahostsv4`` asks A, ``getent hosts`` asks AAAA then A) with
dnspython from 127.0.0.2, which the generated manifests give to a Running pod in ``default``.
No network namespace is needed: every 127/8 address is local, so kdns sees 127.0.0.2 as the
client. A counting UDP relay (a thread of this script) between kdns and unbound counts what goes
upstream. It reports queries sent to kdns, queries kdns sent upstream, and the median time of
the whole lookup over ``--lookups`` warm repetitions. tests/e2e/test_autopath.py checks the same
counts with glibc itself in network namespaces.

How to run (needs unbound and dnsperf, Debian packages unbound and dnsperf; talks only to
127.0.0.1 and 127.0.0.2; two to three minutes, most of it waiting for an idle machine):

    /tmp/venv/bin/python tests/bench/forwarding.py
    /tmp/venv/bin/python tests/bench/forwarding.py --quick       # short runs, smoke test
    /tmp/venv/bin/python tests/bench/forwarding.py --rounds 3 --duration 10
    # before/after in one run: main checked out beside this one, interleaved as "before"
    git worktree add /tmp/kdns-before main
    /tmp/venv/bin/python tests/bench/forwarding.py --before /tmp/kdns-before --no-autopath

It exits 0 after printing the tables, 1 when a server does not start or answers wrongly. Every
process it starts is stopped before it exits. The file name does not start with ``test_``, so
pytest does not collect it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a script: make `tests.bench` importable

import dns.exception  # noqa: E402
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402

from tests.bench.dns_vs_dnsmasq import (  # noqa: E402
    CLK_TCK,
    PerfError,
    Server,
    StartError,
    children_cpu_s,
    cpu_ticks,
    kdns_receive_buffer,
    parse_dnsperf,
    percentile,
    pick_ports,
    running,
    system_busy_s,
    wait_quiet,
)

DOMAIN = "bench.example"
MISS_DOMAIN = f"miss.{DOMAIN}"
POD_IP = "127.0.0.2"  # the pod `client` in namespace default, in the generated manifests
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
NDOTS = 5
SERVICE, SERVICE_IP = "web", "10.96.0.20"  # a ClusterIP Service in default

# Who dnsperf asks: the upstream itself, unbound forwarding to it, kdns, kdns of `--before`.
TARGETS = ("direct", "fwd", "kdns", "before")
DNSPERF_CLIENTS = 4  # -c: sockets
DNSPERF_IN_FLIGHT = 100  # -q
DNSPERF_TIMEOUT_S = 1  # -t: later than this counts as lost
START_TIMEOUT = 20.0
QUERY_TIMEOUT = 2.0

# "> NOERROR name-1.bench.example A 0.000195"; a lost query is "> T name type" (no latency).
_VERBOSE_LINE = re.compile(rb"^> [A-Z]+ \S+ \S+ (\d+)\.(\d{6})$", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def name_ip(i: int) -> str:
    return f"198.51.{100 + i // 256}.{i % 256}"  # TEST-NET-2/3 range: answers only, no traffic


def unbound_server_lines(path: Path, port: int) -> list[str]:
    """The `server:` options both unbounds share: loopback only, in the foreground, one
    thread, as kdns serves with one, and the receive buffer kdns asks for on its own UDP
    socket (unbound's default is the system's, 208 KiB here); no validation."""
    return [
        "server:",
        "  interface: 127.0.0.1",
        f"  port: {port}",
        "  do-daemonize: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{path.parent}"',
        '  pidfile: ""',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        "  do-ip6: no",
        "  num-threads: 1",
        f"  so-rcvbuf: {kdns_receive_buffer()}",
        '  module-config: "iterator"',
        # Were anything sent onwards, it would leave from loopback only.
        "  outgoing-interface: 127.0.0.1",
        "  access-control: 127.0.0.0/8 allow",
    ]


def write_unbound_config(path: Path, port: int, names: int) -> None:
    lines = unbound_server_lines(path, port)
    lines += [
        # Nothing is ever recursed: "." is a static local zone.
        '  local-zone: "." static',
        f'  local-zone: "{DOMAIN}." static',
        f'  local-data: "{DOMAIN}. 300 IN SOA ns.{DOMAIN}. host.{DOMAIN}. 1 3600 600 86400 30"',
    ]
    lines += [f'  local-data: "name-{i}.{DOMAIN}. 300 IN A {name_ip(i)}"' for i in range(names)]
    lines += [
        f'  local-zone: "{MISS_DOMAIN}." redirect',
        f'  local-data: "{MISS_DOMAIN}. 300 IN A 198.51.100.250"',
        "remote-control:",
        "  control-enable: no",
    ]
    path.write_text("\n".join(lines) + "\n")


def write_forwarder_config(path: Path, port: int, upstream_port: int) -> None:
    """unbound doing kdns's job: a caching forwarder of every name to the same upstream."""
    lines = unbound_server_lines(path, port)
    lines += [
        # The cache on, no prefetch (kdns prefetches only popular names), no QNAME
        # minimisation (a forwarder asks the whole name, as kdns does).
        "  qname-minimisation: no",
        "  prefetch: no",
        # The upstream is on 127.0.0.1, which unbound refuses to ask unless told.
        "  do-not-query-localhost: no",
        "forward-zone:",
        '  name: "."',
        f"  forward-addr: 127.0.0.1@{upstream_port}",
        "remote-control:",
        "  control-enable: no",
    ]
    path.write_text("\n".join(lines) + "\n")


def write_manifests(directory: Path) -> None:
    """Namespace default, one ClusterIP Service, and a Running pod whose IP is POD_IP."""
    directory.mkdir(parents=True, exist_ok=True)
    items = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": "default"},
            "spec": {
                "clusterIP": SERVICE_IP,
                "clusterIPs": [SERVICE_IP],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {
                "phase": "Running",
                "podIP": POD_IP,
                "podIPs": [{"ip": POD_IP}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        },
    ]
    # JSON is YAML: kdns's manifest loader reads it.
    (directory / "bench.yaml").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )


def write_hit_file(path: Path, count: int) -> None:
    path.write_text("".join(f"name-{i}.{DOMAIN} A\n" for i in range(count)))


def write_miss_file(path: Path, run: str, count: int) -> None:
    path.write_text("".join(f"{run}-{i}.{MISS_DOMAIN} A\n" for i in range(count)))


# --------------------------------------------------------------------------------------------
# dnsperf
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Perf:
    qps: float
    sent: int
    lost: int
    rcodes: dict[str, int]
    latencies_us: list[int]

    @property
    def unexpected(self) -> int:
        return sum(n for code, n in self.rcodes.items() if code != "NOERROR")

    def pct_ms(self, pct: float) -> float:
        return percentile(sorted(self.latencies_us), pct) / 1000.0


def dnsperf(
    port: int,
    query_file: Path,
    work: Path,
    duration: float,
    *,
    rate: int | None = None,
    once: bool = False,
    verbose: bool = False,
) -> Perf:
    argv = [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        str(query_file),
        "-l",
        f"{duration:g}",
        "-c",
        str(DNSPERF_CLIENTS),
        "-T",
        "1",
        "-t",
        str(DNSPERF_TIMEOUT_S),
        "-q",
        str(DNSPERF_IN_FLIGHT),
    ]
    if once:
        argv += ["-n", "1"]  # read the file once: no name is asked twice
    if rate is not None:
        argv += ["-Q", str(rate)]
    if verbose:
        argv.append("-v")
    out_path, err_path = work / "dnsperf.out", work / "dnsperf.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            proc.wait(timeout=duration + DNSPERF_TIMEOUT_S + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    raw = out_path.read_bytes()
    if proc.returncode != 0:
        raise PerfError(
            f"dnsperf exited with {proc.returncode}: {shlex.join(argv)}\n"
            f"{err_path.read_text(errors='replace')[-2000:]}{raw[-2000:].decode(errors='replace')}"
        )
    text = raw.decode(errors="replace")
    fields = parse_dnsperf(text[text.rfind("Statistics:") :] if verbose else text)
    latencies = [int(s) * 1_000_000 + int(us) for s, us in _VERBOSE_LINE.findall(raw)]
    return Perf(
        qps=float(fields["qps"]),  # type: ignore[arg-type]
        sent=int(fields["sent"]),  # type: ignore[call-overload]
        lost=int(fields["lost"]),  # type: ignore[call-overload]
        rcodes=dict(fields["rcodes"]),  # type: ignore[call-overload]
        latencies_us=latencies,
    )


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def kdns_env(checkout: Path = REPO_ROOT) -> dict[str, str]:
    # kdns must never read this machine's resolv.conf: its upstream is given explicitly.
    # No lameduck either: the benchmark stops kdns with SIGTERM.
    env = dict(os.environ, KDNS_RESOLV_CONF=os.devnull, KDNS_LAMEDUCK="0")
    # The kdns of `checkout` (`--before DIR`: another checkout, measured in the same run).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    return env


def kdns_server(
    port: int,
    manifests: Path,
    upstream: str,
    log: Path,
    autopath: bool = False,
    checkout: Path = REPO_ROOT,
) -> Server:
    argv = [
        sys.executable,
        "-m",
        "kdns",
        "serve",
        "--manifests",
        str(manifests),
        "--dns-addr",
        f"127.0.0.1:{port}",
        "--upstreams",
        upstream,
        "--health-addr",
        "127.0.0.1:0",
        "--ready-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--log-level",
        "warning",
    ]
    if autopath:
        argv.append("--autopath")
    return Server(
        name="kdns --autopath" if autopath else "kdns",
        argv=argv,
        port=port,
        log_path=log,
        cpu=None,
        cwd=checkout,
        env=kdns_env(checkout),
        ready_name=f"{SERVICE}.default.svc.cluster.local",
    )


def unbound_server(port: int, config: Path, log: Path, name: str = "unbound") -> Server:
    return Server(
        name=name,
        argv=["unbound", "-d", "-c", str(config)],
        port=port,
        log_path=log,
        cpu=None,
        ready_name=f"name-0.{DOMAIN}",
    )


class CountingRelay:
    """A UDP relay on 127.0.0.1 that counts the (type, name) of every query it passes on.

    A thread; each query is answered before the next is read, which is all the sequential
    lookups of the autopath part need. `close()` stops it within 0.2 s."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.counts: Counter[tuple[str, str]] = Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            data, client = self.sock.recvfrom(65535)
            try:
                question = dns.message.from_wire(data).question[0]
                self.counts[(dns.rdatatype.to_text(question.rdtype), str(question.name))] += 1
            except Exception:  # a query we cannot parse is still passed on, just not counted
                pass
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(QUERY_TIMEOUT)
                try:
                    up.sendto(data, self.target)
                    self.sock.sendto(up.recv(65535), client)
                except OSError:
                    continue

    def take(self) -> Counter[tuple[str, str]]:
        counts, self.counts = self.counts, Counter()
        return counts

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Part 1: forwarding, hits and misses
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    mix: str
    target: str
    throughput: Perf
    latency: Perf
    cpu_us: float  # CPU of the server dnsperf asked, per answered query (unthrottled run)
    other_cores: float  # cores the rest of the machine kept busy during the unthrottled run


@dataclasses.dataclass(frozen=True, slots=True)
class CpuMark:
    """When, and the CPU seconds so far of the measured processes and of the whole machine."""

    wall: float
    server: float  # the process dnsperf asks
    ours: float  # the upstream behind kdns, this script and its finished children (dnsperf)
    machine: float

    @classmethod
    def take(cls, server: int, upstream: int | None) -> CpuMark:
        return cls(
            wall=time.monotonic(),
            server=cpu_ticks(server) / CLK_TCK,
            ours=(cpu_ticks(upstream) / CLK_TCK if upstream else 0.0)
            + sum(os.times()[:2])
            + children_cpu_s(),
            machine=system_busy_s(),
        )

    def other_cores(self, before: CpuMark) -> float:
        used = self.machine - before.machine
        used -= (self.server - before.server) + (self.ours - before.ours)
        return max(0.0, used) / (self.wall - before.wall)


def measure(
    mix: str,
    target: str,
    server: Server,
    upstream: Server | None,
    args: argparse.Namespace,
    work: Path,
    run_id: str,
) -> Row:
    """The unthrottled run, then the fixed-rate run, against `server` (unbound, or kdns in
    front of `upstream`)."""
    port = server.port
    upstream_pid = upstream.pid if upstream else None
    if mix == "hits":
        hit_file = work / "hits.txt"
        # Warm-up: every hit name once, so the measured runs are cache hits in kdns.
        dnsperf(port, hit_file, work, 10, once=True)
        before = CpuMark.take(server.pid, upstream_pid)
        throughput = dnsperf(port, hit_file, work, args.duration)
        after = CpuMark.take(server.pid, upstream_pid)
        latency = dnsperf(port, hit_file, work, args.duration, rate=args.rate, verbose=True)
    else:
        # Enough fresh names for the run: dnsperf stops at the end of the file (-n 1).
        miss_file = work / "miss.txt"
        write_miss_file(miss_file, f"{run_id}t", args.miss_names)
        before = CpuMark.take(server.pid, upstream_pid)
        throughput = dnsperf(port, miss_file, work, args.duration, once=True)
        after = CpuMark.take(server.pid, upstream_pid)
        needed = int(args.rate * args.duration * 1.1) + 100
        write_miss_file(miss_file, f"{run_id}l", needed)
        latency = dnsperf(
            port, miss_file, work, args.duration, rate=args.rate, once=True, verbose=True
        )
    answered = max(1, throughput.sent - throughput.lost)
    cpu_us = 1e6 * (after.server - before.server) / answered
    return Row(mix, target, throughput, latency, cpu_us, after.other_cores(before))


def forwarding_rows(
    args: argparse.Namespace,
    work: Path,
    ports: dict[str, int],
    manifests: Path,
    unbound: Server,
    say: Callable[[str], None],
) -> list[Row]:
    rows: list[Row] = []
    upstream = f"127.0.0.1:{ports['unbound']}"
    targets = TARGETS if args.before else TARGETS[:-1]
    for round_ in range(args.rounds):
        for mix in ("hits", "misses"):
            for target in targets:
                run_id = f"r{round_}{target[0]}{mix[0]}"
                wait_quiet(args.quiet_wait, say)
                if target == "direct":
                    row = measure(mix, target, unbound, None, args, work, run_id)
                elif target == "fwd":
                    config = work / "forwarder.conf"
                    write_forwarder_config(config, ports["fwd"], ports["unbound"])
                    server = unbound_server(ports["fwd"], config, work / "fwd.log", "unbound-fwd")
                    with running(server, START_TIMEOUT):
                        row = measure(mix, target, server, unbound, args, work, run_id)
                else:
                    checkout = args.before if target == "before" else REPO_ROOT
                    log = work / f"{target}.log"
                    server = kdns_server(ports["kdns"], manifests, upstream, log, False, checkout)
                    with running(server, START_TIMEOUT):
                        row = measure(mix, target, server, unbound, args, work, run_id)
                rows.append(row)
                say(
                    f"  round {round_ + 1} {mix:6} {target:6}: {row.throughput.qps:8.0f} qps "
                    f"(lost {row.throughput.lost}; other processes {row.other_cores:.2f} cores)"
                    f", at {args.rate} qps p50 "
                    f"{row.latency.pct_ms(50):.3f} ms p99 {row.latency.pct_ms(99):.3f} ms "
                    f"(lost {row.latency.lost}, rcodes {row.throughput.rcodes} / "
                    f"{row.latency.rcodes})"
                )
    return rows


@dataclasses.dataclass(frozen=True, slots=True)
class Best:
    """Best over rounds: highest qps, lowest p50, p99 and CPU; lost and bad rcodes summed."""

    qps: float
    p50: float
    p99: float
    cpu_us: float
    lost: int
    bad: int
    other: float  # the most cores other processes used in any round's unthrottled run


def best(rows: Sequence[Row], mix: str, target: str) -> Best:
    mine = [r for r in rows if r.mix == mix and r.target == target]
    return Best(
        qps=max(r.throughput.qps for r in mine),
        p50=min(r.latency.pct_ms(50) for r in mine),
        p99=min(r.latency.pct_ms(99) for r in mine),
        cpu_us=min(r.cpu_us for r in mine),
        lost=sum(r.throughput.lost + r.latency.lost for r in mine),
        bad=sum(r.throughput.unexpected + r.latency.unexpected for r in mine),
        other=max(r.other_cores for r in mine),
    )


def forwarding_table(rows: Sequence[Row], rate: int) -> str:
    head = (
        f"{'mix':7} {'target':7} {'max qps':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/q':>9} "
        f"{'lost':>5} {'bad rc':>6} {'other':>6}"
    )
    lines = [head, "-" * len(head)]
    targets = sorted({r.target for r in rows}, key=TARGETS.index)
    for mix in ("hits", "misses"):
        for target in targets:
            b = best(rows, mix, target)
            lines.append(
                f"{mix:7} {target:7} {b.qps:9.0f} {b.p50:8.3f} {b.p99:8.3f} {b.cpu_us:9.1f} "
                f"{b.lost:5d} {b.bad:6d} {b.other:6.2f}"
            )
        for target in targets:
            for peer in ("direct", "fwd"):
                if target in ("direct", "fwd") or peer not in targets:
                    continue
                k, d = best(rows, mix, target), best(rows, mix, peer)
                lines.append(
                    f"{mix:7} {'ratio':7} {k.qps / d.qps:8.2f}x {k.p50 / d.p50:7.2f}x "
                    f"{k.p99 / d.p99:7.2f}x {k.cpu_us / d.cpu_us:8.2f}x   ({target} / {peer})"
                )
    lines.append(
        f"max qps: unthrottled, {DNSPERF_IN_FLIGHT} in flight; p50/p99: at {rate} qps; "
        "CPU us/q: the process dnsperf asked (unbound, unbound-fwd or kdns alone, not the "
        "upstream), in the max-qps run; direct: the upstream unbound asked itself; fwd: an "
        "unbound forwarding to it with its cache, kdns's job; "
        "other: cores busy with anything but the servers, dnsperf and this script during the "
        "max-qps runs (the most of any round; noise from the rest of the machine)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Part 2: a pod's lookup through its search path, with and without autopath
# --------------------------------------------------------------------------------------------


def stub_lookup(port: int, name: str, rdtypes: Sequence[str]) -> tuple[Counter[str], bool]:
    """glibc's res_search for `name` with the pod's search list, once per type in `rdtypes`:
    (queries sent per type, whether the last type found an address)."""
    sent: Counter[str] = Counter()
    candidates = [f"{name}.{d}" for d in SEARCH] if name.count(".") < NDOTS else []
    candidates.append(name)
    found = False
    for rdtype in rdtypes:
        found = False
        for candidate in candidates:
            q = dns.message.make_query(candidate, rdtype)
            q.flags |= dns.flags.RD
            response = dns.query.udp(
                q, "127.0.0.1", port=port, source=POD_IP, timeout=QUERY_TIMEOUT
            )
            sent[rdtype] += 1
            # res_query succeeds on NOERROR with a non-empty answer section; anything else
            # (NXDOMAIN, NODATA, SERVFAIL) lets res_search try the next name.
            if response.rcode() == dns.rcode.NOERROR and response.answer:
                found = any(
                    rrset.rdtype == dns.rdatatype.from_text(rdtype) for rrset in response.answer
                )
                break
    return sent, found


@dataclasses.dataclass
class Lookup:
    name: str
    kind: str
    rdtypes: tuple[str, ...]
    mode: str
    to_kdns: int
    upstream: int
    found: bool
    median_ms: float


# Each row its own names, so that its first lookup is cold in both kdns processes.
LOOKUPS = (
    (f"name-1.{DOMAIN}", "external", ("A",)),
    (f"name-2.{DOMAIN}", "external", ("AAAA", "A")),
    (SERVICE, "cluster short", ("A",)),
    (f"nope-1.{DOMAIN}", "nonexistent", ("A",)),
)
MODES = (("autopath", True), ("plain", False))


def autopath_lookups(
    args: argparse.Namespace, work: Path, ports: dict[str, int], manifests: Path
) -> list[Lookup]:
    """Both kdns processes run at once (one with --autopath) behind the counting relay; the
    warm repetitions alternate between them, so a busy moment of the machine hits both."""
    relay = CountingRelay(ports["relay"], ("127.0.0.1", ports["unbound"]))
    upstream = f"127.0.0.1:{ports['relay']}"
    servers = {
        mode: kdns_server(
            ports[mode], manifests, upstream, work / f"kdns-{mode}.log", autopath=autopath
        )
        for mode, autopath in MODES
    }
    results: list[Lookup] = []
    try:
        with running(servers["autopath"], START_TIMEOUT), running(servers["plain"], START_TIMEOUT):
            for name, kind, rdtypes in LOOKUPS:
                cold: dict[str, tuple[int, int, bool]] = {}
                for mode, _ in MODES:
                    relay.take()
                    sent, found = stub_lookup(ports[mode], name, rdtypes)
                    cold[mode] = (sum(sent.values()), sum(relay.take().values()), found)
                times: dict[str, list[float]] = {mode: [] for mode, _ in MODES}
                for _ in range(args.lookups):
                    for mode, _ in MODES:
                        started = time.perf_counter()
                        stub_lookup(ports[mode], name, rdtypes)
                        times[mode].append(time.perf_counter() - started)
                for mode, _ in MODES:
                    to_kdns, to_upstream, found = cold[mode]
                    median = 1000 * statistics.median(times[mode])
                    results.append(
                        Lookup(name, kind, rdtypes, mode, to_kdns, to_upstream, found, median)
                    )
    finally:
        relay.close()
    return results


def autopath_table(lookups: Sequence[Lookup], repetitions: int) -> str:
    head = (
        f"{'lookup (glibc order)':38} {'mode':9} {'to kdns':>7} {'upstream':>8} "
        f"{'found':>5} {'median ms':>9}"
    )
    lines = [head, "-" * len(head)]
    for lookup in lookups:
        what = f"{lookup.name} {'+'.join(lookup.rdtypes)} ({lookup.kind})"
        lines.append(
            f"{what:38} {lookup.mode:9} {lookup.to_kdns:7d} {lookup.upstream:8d} "
            f"{'yes' if lookup.found else 'no':>5} {lookup.median_ms:9.3f}"
        )
    lines.append(
        f"to kdns / upstream: queries of the first (cold) lookup; median: of {repetitions} warm "
        "lookups, dnspython from the pod IP"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1000, help="local-data names in unbound")
    parser.add_argument("--hit-names", type=int, default=100, help="names in the hit mix")
    parser.add_argument(
        "--miss-names",
        type=int,
        default=400_000,
        help="fresh names per unthrottled miss run (the run ends when they are used up)",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    parser.add_argument("--rate", type=int, default=500, help="qps of the latency runs")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the best is reported")
    parser.add_argument("--lookups", type=int, default=200, help="warm lookups per autopath row")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument(
        "--before",
        type=Path,
        help="another kdns checkout (e.g. a worktree of main), measured interleaved as 'before'",
    )
    parser.add_argument("--no-autopath", action="store_true", help="skip the autopath lookups")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.lookups, args.miss_names = 1.0, 1, 20, 50_000
        args.quiet_wait = 0.0
    if not 0 < args.hit_names <= args.names:
        parser.error("--hit-names must be between 1 and --names")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool, package in (("unbound", "unbound"), ("dnsperf", "dnsperf")):
        if not shutil.which(tool):
            print(f"{tool} not found (Debian package {package})", file=sys.stderr)
            return 1

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="kdns-bench-fwd-") as tmp:
        work = Path(tmp)
        names = ("unbound", "kdns", "relay", "autopath", "plain", "fwd")
        ports = dict(zip(names, pick_ports(len(names)), strict=True))
        manifests = work / "manifests"
        write_manifests(manifests)
        write_unbound_config(work / "unbound.conf", ports["unbound"], args.names)
        write_hit_file(work / "hits.txt", args.hit_names)
        unbound = unbound_server(ports["unbound"], work / "unbound.conf", work / "unbound.log")
        try:
            with running(unbound, START_TIMEOUT):
                say(
                    f"unbound on 127.0.0.1:{ports['unbound']} ({args.names} names); kdns on "
                    f":{ports['kdns']}; {args.rounds} round(s) of {args.duration:g} s runs"
                )
                rows = forwarding_rows(args, work, ports, manifests, unbound, say)
                lookups = []
                if not args.no_autopath:
                    say("autopath lookups ...")
                    lookups = autopath_lookups(args, work, ports, manifests)
        except StartError as e:
            print(f"{e}\n{e.server.log_tail()}", file=sys.stderr)
            return 1
        except PerfError as e:
            print(f"dnsperf failed: {e}", file=sys.stderr)
            return 1
        except dns.exception.Timeout as e:
            print(f"kdns did not answer a lookup in {QUERY_TIMEOUT} s: {e}", file=sys.stderr)
            return 1
    print()
    print(
        f"Forwarding: kdns -> unbound vs unbound directly and vs unbound forwarding to it "
        f"({args.names} local-data names; hits: {args.hit_names} names repeated; misses: every "
        "name new, fresh kdns and forwarder)"
    )
    print(forwarding_table(rows, args.rate))
    print()
    if lookups:
        print(
            f"A pod's lookup through its search path (ndots:{NDOTS}, 3 search domains), "
            f"from {POD_IP}"
        )
        print(autopath_table(lookups, args.lookups))
    bad = [r for r in rows if r.throughput.unexpected or r.latency.unexpected]
    wrong = [x for x in lookups if x.kind != "nonexistent" and not x.found]
    if bad or wrong:
        print("\nwrong answers: see the rcodes above / the 'found' column", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

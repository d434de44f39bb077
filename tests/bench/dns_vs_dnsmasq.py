"""Benchmark: kdns against dnsmasq serving the same Kubernetes services, both driven by dnsperf.

What it measures. The same N ClusterIP Services (default 1,000 ``svc-N`` in namespace ``bench``)
are served by kdns (from generated manifests) and by dnsmasq (an addn-hosts file, plus one
``srv-host`` line per Service in the SRV mix; ``local=/cluster.local/`` for NXDOMAIN). Two query
mixes run one after the other, each one dnsperf query file shuffled with a fixed seed that
drives both servers:

1. A only (the headline, first): 90 % existing names, 10 % NXDOMAIN names, all A; dnsmasq gets
   no ``srv-host`` lines;
2. A and SRV: 90 % existing names (70 % A, 30 % SRV), 10 % NXDOMAIN names.

``--mix a-only`` or ``--mix srv`` runs one of them. The server runs pinned to one core and dnsperf to the other (``taskset``); kdns and dnsmasq are
run interleaved (kdns, dnsmasq, kdns, dnsmasq, ...) with a fresh server process per round, and
for each server the script reports the best and the median over rounds of:

- max qps without loss: the highest ``dnsperf -Q`` rate, found by bisection with short steps, at
  which lost queries plus answers with an unexpected rcode are at most 0.01 % of the queries sent
  and the achieved rate is at least 98 % of the requested one, with at most 100 queries in flight
  (``-q``); also the unthrottled throughput (``dnsperf`` without ``-Q``, 100 in flight);
- p50 / p99 latency at a fixed 20,000 qps: dnsperf 2.x has no percentile or histogram option, so
  the percentiles (nearest rank) are computed from the per-query latency that ``dnsperf -v``
  prints for every answered query; lost queries are counted separately;
- server CPU per query at 20,000 qps: utime + stime of the server process (all threads) from
  ``/proc/<pid>/stat`` before and after that run, divided by the number of answered queries.

It prints a table with the ratios kdns / dnsmasq and the targets (kdns qps >= 0.9x dnsmasq, CPU
per query <= 1.5x dnsmasq) as PASS / MISS. It is a measurement, not a test: it exits 0 either way
(1 only when the two servers do not give the same answers, or a server does not start).

Before measuring it checks with ``dig`` that both servers answer a sample of the names the same
way (A, SRV with glue, NXDOMAIN) and exits 1 with a clear message if not. Differences that do not
change the answer (the SOA in kdns's NXDOMAIN, the RA flag) are printed as notes.

Caveats. dnsmasq scans its ``srv-host`` list linearly, so 1,000 of them make its SRV and
NXDOMAIN answers several times slower than its A answers: the SRV mix measures that list more
than either server, which is why the A-only mix, the harder comparison for kdns, leads.
dnsmasq has no option for its socket receive buffer and keeps the system default, while kdns
asks for 4 MiB: run as root, the script sets dnsmasq's socket to kdns's size itself
(pidfd_getfd; ``--own-buffers`` to not do that); the report prints both servers' buffers as
``ss`` sees them. The machine may be shared: the
step lines show the CPU used by everything else ("rest"), each round first waits (bounded) for the
machine to be idle, and best-of-rounds is what the verdict uses.

How to run (needs dnsperf, dnsmasq, dig, taskset and two cores; root for the equal receive
buffers, see above; only talks to 127.0.0.1):

    python tests/bench/dns_vs_dnsmasq.py            # after the venv is set up:
    .venv/bin/python tests/bench/dns_vs_dnsmasq.py
    .venv/bin/python tests/bench/dns_vs_dnsmasq.py --quick          # one short round, smoke run
    .venv/bin/python tests/bench/dns_vs_dnsmasq.py --only dnsmasq   # the harness without kdns
    .venv/bin/python tests/bench/dns_vs_dnsmasq.py --mix a-only     # the headline mix alone
    .venv/bin/python tests/bench/dns_vs_dnsmasq.py --before ../main  # main's kdns beside

kdns is started as ``<python> -m kdns serve --manifests <dir> --dns-addr 127.0.0.1:<port>`` from
the repository root; ``--kdns-cmd`` replaces that command line (a template with ``{python}``,
``{manifests}``, ``{port}`` and ``{addr}``).

The file name does not start with ``test_``, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import math
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ZONE = "cluster.local"
NAMESPACE = "bench"
TTL = 5
SEED = 20240601
QUERY_LINES = 100_000

DEFAULT_FIXED_QPS = 20_000  # the rate for latency and CPU per query
LOSS_LIMIT_PCT = 0.01  # lost + unexpected rcodes, in % of queries sent
RATE_FLOOR = 0.98  # achieved qps / requested qps for a step to pass
TARGET_QPS_RATIO = 0.9  # kdns max qps >= 0.9 x dnsmasq
TARGET_CPU_RATIO = 1.5  # kdns CPU per query <= 1.5 x dnsmasq
CLIENT_SATURATED = 0.85  # dnsperf busier than this (of its core): qps may be client-bound
QUIET_CORES = 0.15  # before a round, wait until the machine is this idle (cores busy)...
NOISY_REST_CORES = 0.25  # ...and re-run a failed step once when others used more than this

DNSPERF_CLIENTS = 4  # -c: UDP sockets (source ports) dnsperf spreads the queries over
DNSPERF_TIMEOUT_S = 1  # -t: an answer later than this counts as lost
OUTSTANDING_UNTHROTTLED = 100  # -q for the unthrottled run (dnsperf's default)
# -q for the -Q runs, dnsperf's default too. A default socket buffer (212992 bytes) holds 256
# small datagrams on loopback, and the kernel may keep up to a quarter of it charged to datagrams
# already read, so about 190 usable: with at most 100 in flight, a few milliseconds in which the
# server is not scheduled (the machine may be shared) cannot overflow it. A server too slow for
# the rate shows as a shortfall of the achieved rate (the 98 % floor); one that drops, as loss.
# With 200 in flight dnsmasq (it keeps that default buffer; kdns asks for megabytes) lost 5-20
# queries per 3 s step at rates it sustains, whenever another process took its core for a moment.
DEFAULT_OUTSTANDING_RATED = 100

# No forwarding (every benchmark name is a cluster name; nothing may leave loopback) and probes
# on free loopback ports, so nothing collides with CoreDNS's fixed 8080/8181/9153.
DEFAULT_KDNS_CMD = (
    "{python} -m kdns serve --manifests {manifests} --dns-addr {addr} --upstreams"
    " --health-addr 127.0.0.1:0 --ready-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0"
)


# --------------------------------------------------------------------------------------------
# Data: services, manifests, dnsmasq config, query file
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    name: str
    ip: str

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{NAMESPACE}.svc.{ZONE}"

    @property
    def srv_name(self) -> str:
        return f"_http._tcp.{self.fqdn}"


def service_ip(i: int) -> str:
    """10.100.0.1, 10.100.0.2, ... skipping .0 and .255 in the last octet."""
    return f"10.100.{i // 254}.{i % 254 + 1}"


def make_services(count: int) -> list[Service]:
    if not 1 <= count <= 254 * 256:
        raise SystemExit(f"--services must be between 1 and {254 * 256}")
    return [Service(f"svc-{i}", service_ip(i)) for i in range(count)]


def nx_name(i: int) -> str:
    return f"nope-{i}.{NAMESPACE}.svc.{ZONE}"


def write_manifests(directory: Path, services: Sequence[Service]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "namespace.yaml").write_text(
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
    )
    docs = []
    for svc in services:
        docs.append(
            "apiVersion: v1\n"
            "kind: Service\n"
            "metadata:\n"
            f"  name: {svc.name}\n"
            f"  namespace: {NAMESPACE}\n"
            "spec:\n"
            "  type: ClusterIP\n"
            f"  clusterIP: {svc.ip}\n"
            f"  clusterIPs: [{svc.ip}]\n"
            "  selector:\n"
            f"    app: {svc.name}\n"
            "  ports:\n"
            "  - name: http\n"
            "    protocol: TCP\n"
            "    port: 80\n"
            "    targetPort: 8080\n"
        )
    (directory / "services.yaml").write_text("---\n".join(docs))


def write_dnsmasq_config(
    directory: Path, services: Sequence[Service], port: int, srv: bool
) -> Path:
    hosts = directory / "dnsmasq.hosts"
    hosts.write_text("".join(f"{svc.ip} {svc.fqdn}\n" for svc in services))
    conf = directory / "dnsmasq.conf"
    lines = [
        f"port={port}",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "keep-in-foreground",
        "user=root",  # we run as root; dnsmasq would otherwise switch to "nobody"
        "pid-file=",  # no pid file
        "log-facility=-",  # start-up messages to stderr (our log file), no query logging
        f"local=/{ZONE}/",  # unknown names in the zone: NXDOMAIN, never forwarded
        f"local-ttl={TTL}",
        f"addn-hosts={hosts}",
    ]
    if srv:
        lines += [f"srv-host={svc.srv_name},{svc.fqdn},80,0,100" for svc in services]
    conf.write_text("\n".join(lines) + "\n")
    return conf


@dataclasses.dataclass(frozen=True, slots=True)
class QueryMix:
    a: int
    srv: int
    nx: int


def write_query_file(path: Path, services: Sequence[Service], lines: int, srv: bool) -> QueryMix:
    """90 % existing names (70 % A, 30 % SRV; or all A), 10 % NXDOMAIN names (A), shuffled."""
    rng = random.Random(SEED)
    n_nx = lines // 10
    n_srv = (lines - n_nx) * 3 // 10 if srv else 0
    n_a = lines - n_nx - n_srv
    queries = [f"{rng.choice(services).fqdn} A" for _ in range(n_a)]
    queries += [f"{rng.choice(services).srv_name} SRV" for _ in range(n_srv)]
    queries += [f"{nx_name(rng.randrange(len(services)))} A" for _ in range(n_nx)]
    rng.shuffle(queries)
    path.write_text("\n".join(queries) + "\n")
    return QueryMix(n_a, n_srv, n_nx)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_ports(count: int) -> list[int]:
    """Free UDP+TCP ports on 127.0.0.1 in a high range (bounded search)."""
    base = 20000 + (os.getpid() * 7) % 30000
    ports: list[int] = []
    for port in range(base, base + 500):
        if port_is_free(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise SystemExit(f"no {count} free ports found in {base}..{base + 499}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_busy_s() -> float:
    """CPU time of the whole machine (all CPUs) not idle, from /proc/stat, in seconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / CLK_TCK


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_query(name: str, qtype: int) -> tuple[int, bytes]:
    qid = random.randrange(1, 0xFFFF)
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return qid, header + qname + struct.pack("!HH", qtype, 1)


def probe(port: int, name: str, qtype: int = 1, timeout: float = 0.3) -> tuple[int, int] | None:
    """One UDP query: (rcode, answer count), or None on timeout or error."""
    qid, packet = build_query(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, ("127.0.0.1", port))
            data = sock.recv(4096)
        except OSError:
            return None
    if len(data) < 12 or struct.unpack("!H", data[:2])[0] != qid:
        return None
    return data[3] & 0x0F, struct.unpack("!H", data[6:8])[0]


@dataclasses.dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    cpu: str | None
    nice: int = 0
    cwd: Path | None = None
    env: dict[str, str] | None = None
    ready_name: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float) -> None:
        """Start the server and wait until it answers ``ready_name`` with NOERROR and an answer."""
        argv = ["taskset", "-c", self.cpu] if self.cpu is not None else []
        argv += ["nice", "-n", str(self.nice)] if self.nice else []
        argv += self.argv
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {shlex.join(argv)}\n".encode())
            log.flush()
            # taskset and nice exec the server: the pid is the server's own (/proc/<pid>/stat).
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last: tuple[int, int] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode}", self)
            last = probe(self.port, self.ready_name)
            if last is not None and last[0] == 0 and last[1] > 0:
                return
            time.sleep(0.1)
        raise StartError(
            f"{self.name} did not answer {self.ready_name} A within {timeout:.0f} s "
            f"(last reply: {'none' if last is None else f'rcode {last[0]}, {last[1]} answers'})",
            self,
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # its own session: the server and anything it spawned
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])


class StartError(Exception):
    def __init__(self, message: str, server: Server) -> None:
        super().__init__(message)
        self.server = server


def socket_rcvbuf(port: int) -> str:
    """The receive buffer size of the UDP socket bound to 127.0.0.1:port ("?" if unknown)."""
    try:
        out = subprocess.run(
            ["ss", "-uanm", "sport", "=", f":{port}"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(r"\brb(\d+)", out)
    return match.group(1) if match else "?"


SYS_PIDFD_GETFD = 438  # pidfd_getfd(2), Linux 5.6; the same number on every architecture


def kdns_receive_buffer() -> int:
    """The SO_RCVBUF kdns asks for on its UDP socket (kdns/dns/server.py)."""
    sys.path.insert(0, str(REPO_ROOT))
    from kdns.dns.server import UDP_RECV_BUFFER

    return UDP_RECV_BUFFER


def set_receive_buffer(pid: int, port: int, size: int) -> bool:
    """SO_RCVBUF = `size` on the UDP socket that process `pid` has bound to 127.0.0.1:port.

    dnsmasq has no option for its receive buffer and keeps the system default (208 KiB here),
    while kdns asks for 4 MiB: a burst dnsmasq would drop, kdns absorbs. To compare the servers
    and not their buffers, the script gives dnsmasq's own socket kdns's size from outside:
    pidfd_getfd(2) copies the descriptor into this process (root), and a socket option set on
    the copy is set on the one socket both descriptors name. False if that is not possible."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            if not os.readlink(entry).startswith("socket:"):
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(entry.name), 0)
            if fd < 0:
                return False
            with socket.socket(fileno=fd) as sock:
                if sock.type == socket.SOCK_DGRAM and sock.getsockname() == ("127.0.0.1", port):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                    return True
        return False
    finally:
        os.close(pidfd)


def wait_quiet(max_wait: float, say: Callable[[str], None]) -> None:
    """Wait (bounded) until other processes use less than QUIET_CORES of the machine."""
    deadline = time.monotonic() + max_wait
    busy = 0.0
    while True:
        before = system_busy_s()
        time.sleep(1.0)
        busy = system_busy_s() - before
        if busy < QUIET_CORES or time.monotonic() >= deadline:
            break
    if busy >= QUIET_CORES:
        say(f"    machine still busy ({busy:.0%} of a core) after {max_wait:g} s: measuring anyway")


@contextmanager
def running(server: Server, timeout: float) -> Iterator[Server]:
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Answer check with dig
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DigAnswer:
    status: str
    flags: str
    answer: frozenset[str]
    authority: frozenset[str]
    additional: frozenset[str]

    def show(self) -> str:
        parts = [f"status {self.status}, flags [{self.flags}]"]
        for label, rrs in (
            ("answer", self.answer),
            ("authority", self.authority),
            ("additional", self.additional),
        ):
            if rrs:
                parts.append(f"{label}: " + "; ".join(sorted(rrs)))
        return ", ".join(parts)


def dig(port: int, name: str, qtype: str) -> DigAnswer:
    argv = [
        "dig",
        "@127.0.0.1",
        "-p",
        str(port),
        name,
        qtype,
        "+noedns",  # like dnsperf without -e
        "+tries=1",
        "+time=2",
        "+noall",
        "+comments",
        "+answer",
        "+authority",
        "+additional",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r"flags: ([^;]*);", out)
    sections: dict[str, set[str]] = {"ANSWER": set(), "AUTHORITY": set(), "ADDITIONAL": set()}
    current: set[str] | None = None
    for line in out.splitlines():
        header = re.match(r";; (\w+) SECTION:", line)
        if header:
            current = sections.get(header.group(1))
            continue
        if not line.strip() or line.startswith(";") or current is None:
            continue
        owner, *rest = line.split()
        current.add(" ".join([owner.lower(), *rest]))
    return DigAnswer(
        status=status.group(1) if status else "NO-REPLY",
        flags=flags.group(1).strip() if flags else "",
        answer=frozenset(sections["ANSWER"]),
        authority=frozenset(sections["AUTHORITY"]),
        additional=frozenset(sections["ADDITIONAL"]),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Expectation:
    name: str
    qtype: str
    status: str
    answer: frozenset[str]
    additional: frozenset[str] | None  # None: not checked against the expectation


def expectations(services: Sequence[Service], srv: bool) -> list[Expectation]:
    rng = random.Random(SEED + 1)
    picks = sorted(
        {0, 1, len(services) - 1, *rng.sample(range(len(services)), min(12, len(services)))}
    )
    checks = []
    for i in picks:
        svc = services[i]
        a_rr = f"{svc.fqdn}. {TTL} IN A {svc.ip}"
        srv_rr = f"{svc.srv_name}. {TTL} IN SRV 0 100 80 {svc.fqdn}."
        checks.append(Expectation(svc.fqdn, "A", "NOERROR", frozenset([a_rr]), frozenset()))
        if srv:
            checks.append(
                Expectation(svc.srv_name, "SRV", "NOERROR", frozenset([srv_rr]), frozenset([a_rr]))
            )
    for i in sorted(
        {0, len(services) - 1, *rng.sample(range(len(services)), min(4, len(services)))}
    ):
        checks.append(Expectation(nx_name(i), "A", "NXDOMAIN", frozenset(), frozenset()))
    return checks


def check_expected(server: str, exp: Expectation, got: DigAnswer) -> list[str]:
    errors = []
    where = f"{server}: {exp.name} {exp.qtype}"
    if got.status != exp.status:
        errors.append(f"{where}: status {got.status}, expected {exp.status}")
    if got.answer != exp.answer:
        errors.append(
            f"{where}: answer {sorted(got.answer) or '(empty)'}, expected {sorted(exp.answer)}"
        )
    if exp.additional is not None and not exp.additional <= got.additional:
        errors.append(
            f"{where}: additional section lacks {sorted(exp.additional - got.additional)}"
        )
    return errors


def compare_answers(
    checks: Sequence[Expectation], results: dict[str, list[DigAnswer]]
) -> tuple[list[str], list[str]]:
    """Errors (a server answers differently from the data or from the other) and notes."""
    errors: list[str] = []
    notes: list[str] = []
    for server, answers in results.items():
        for exp, got in zip(checks, answers, strict=True):
            errors += check_expected(server, exp, got)
    if len(results) == 2:
        (s1, r1), (s2, r2) = results.items()
        for exp, a1, a2 in zip(checks, r1, r2, strict=True):
            where = f"{exp.name} {exp.qtype}"
            if a1.additional != a2.additional:
                errors.append(
                    f"{where}: additional differs: {s1} {sorted(a1.additional)}, "
                    f"{s2} {sorted(a2.additional)}"
                )
            if a1.authority != a2.authority:
                notes.append(
                    f"authority differs for {exp.status}: {s1} "
                    f"{sorted(a1.authority) or '(empty)'}, {s2} {sorted(a2.authority) or '(empty)'}"
                )
            if set(a1.flags.split()) != set(a2.flags.split()):
                notes.append(
                    f"header flags differ for {exp.qtype} {exp.status}: {s1} [{a1.flags}], "
                    f"{s2} [{a2.flags}]"
                )
    return errors, list(dict.fromkeys(_generalise(n) for n in notes))


def _generalise(note: str) -> str:
    """Collapse per-name notes (SOA serials etc. differ only by name) into one per kind."""
    return re.sub(r"nope-\d+|svc-\d+", "*", note)


# --------------------------------------------------------------------------------------------
# dnsperf
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PerfResult:
    target_qps: int | None
    sent: int
    completed: int
    lost: int
    qps: float
    run_time: float
    rcodes: dict[str, int]
    response_size: float
    avg_latency_s: float  # dnsperf's own average, to cross-check the parsed per-query values
    wall_s: float  # dnsperf start to exit, including its wait for late answers
    client_cpu_s: float
    server_cpu_s: float
    other_cpu_s: float  # the rest of the machine: other processes, interrupts (noise)
    latencies_us: list[int] | None = None

    @property
    def bad_rcodes(self) -> int:
        return sum(n for code, n in self.rcodes.items() if code not in ("NOERROR", "NXDOMAIN"))

    @property
    def failed_pct(self) -> float:
        return 100.0 * (self.lost + self.bad_rcodes) / self.sent if self.sent else 100.0

    @property
    def client_busy(self) -> float:
        """dnsperf's CPU time over the wall time of the run (1.0 = its whole core)."""
        return self.client_cpu_s / self.wall_s

    @property
    def cpu_us_per_query(self) -> float:
        return 1e6 * self.server_cpu_s / self.completed if self.completed else math.inf

    def passes(self) -> bool:
        assert self.target_qps is not None
        return (
            self.sent > 0
            and self.failed_pct <= LOSS_LIMIT_PCT
            and self.qps >= RATE_FLOOR * self.target_qps
        )

    def summary(self) -> str:
        rate = "unthrottled" if self.target_qps is None else f"-Q {self.target_qps}"
        codes = ", ".join(f"{k} {v}" for k, v in sorted(self.rcodes.items()))
        return (
            f"{rate:>12}: {self.qps:9.0f} qps, sent {self.sent}, lost {self.lost} "
            f"({100.0 * self.lost / max(self.sent, 1):.3f} %), [{codes}], "
            f"CPU in {self.wall_s:.1f} s: server {100 * self.server_cpu_s / self.wall_s:.0f} %, "
            f"dnsperf {100 * self.client_cpu_s / self.wall_s:.0f} %, "
            f"rest {100 * self.other_cpu_s / self.wall_s:.0f} %"
        )


class PerfError(Exception):
    pass


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if not match:
        raise PerfError(f"dnsperf output has no match for {pattern!r}:\n{text[-2000:]}")
    return float(match.group(1))


def parse_dnsperf(text: str) -> dict[str, object]:
    codes_line = re.search(r"Response codes:\s*(.*)", text)
    rcodes = {}
    if codes_line:
        for code, n in re.findall(r"([A-Z]+) (\d+) \(", codes_line.group(1)):
            rcodes[code] = int(n)
    return {
        "sent": int(_number(r"Queries sent:\s+(\d+)", text)),
        "completed": int(_number(r"Queries completed:\s+(\d+)", text)),
        "lost": int(_number(r"Queries lost:\s+(\d+)", text)),
        "qps": _number(r"Queries per second:\s+([\d.]+)", text),
        "run_time": _number(r"Run time \(s\):\s+([\d.]+)", text),
        "response_size": _number(r"Average packet size:.*response (\d+)", text),
        "avg_latency_s": _number(r"Average Latency \(s\):\s+([\d.]+)", text),
        "rcodes": rcodes,
    }


# "> NOERROR svc-1.bench.svc.cluster.local A 0.000195"; a lost query is "> T name type".
_VERBOSE_LINE = re.compile(rb"^> [A-Z]+ \S+ \S+ (\d+)\.(\d{6})$", re.MULTILINE)


@dataclasses.dataclass(frozen=True, slots=True)
class PerfSettings:
    query_file: Path
    work_dir: Path
    client_cpu: str | None
    nice: int
    outstanding: int


def run_dnsperf(
    settings: PerfSettings,
    server: Server,
    duration: float,
    qps: int | None,
    verbose: bool = False,
) -> PerfResult:
    argv = ["taskset", "-c", settings.client_cpu] if settings.client_cpu is not None else []
    argv += ["nice", "-n", str(settings.nice)] if settings.nice else []
    argv += [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(server.port),
        "-d",
        str(settings.query_file),
        "-l",
        f"{duration:g}",
        "-c",
        str(DNSPERF_CLIENTS),
        "-T",
        "1",
        "-t",
        str(DNSPERF_TIMEOUT_S),
        "-q",
        str(OUTSTANDING_UNTHROTTLED if qps is None else settings.outstanding),
    ]
    if qps is not None:
        argv += ["-Q", str(qps)]
    if verbose:
        argv.append("-v")
    out_path = settings.work_dir / "dnsperf.out"
    err_path = settings.work_dir / "dnsperf.err"
    server_before = cpu_ticks(server.pid)
    client_before = children_cpu_s()
    busy_before = system_busy_s()
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            proc.wait(timeout=duration + DNSPERF_TIMEOUT_S + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    server_after = cpu_ticks(server.pid)
    server_cpu = (server_after - server_before) / CLK_TCK
    client_cpu = children_cpu_s() - client_before
    busy = system_busy_s() - busy_before
    wall = time.monotonic() - started
    raw = out_path.read_bytes()
    text = raw.decode(errors="replace")
    if proc.returncode != 0:
        raise PerfError(
            f"dnsperf exited with {proc.returncode}: {shlex.join(argv)}\n"
            f"{err_path.read_text(errors='replace')[-2000:]}{text[-2000:]}"
        )
    if verbose:
        # Keep only the statistics block in memory for parsing; the per-query lines are big.
        text = text[text.rfind("Statistics:") :]
    fields = parse_dnsperf(text)
    latencies = None
    if verbose:
        latencies = [int(s) * 1_000_000 + int(us) for s, us in _VERBOSE_LINE.findall(raw)]
    return PerfResult(
        target_qps=qps,
        wall_s=wall,
        client_cpu_s=client_cpu,
        server_cpu_s=server_cpu,
        other_cpu_s=max(0.0, busy - server_cpu - client_cpu),
        latencies_us=latencies,
        **fields,  # type: ignore[arg-type]
    )


def percentile(sorted_values: Sequence[int], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


# --------------------------------------------------------------------------------------------
# One server, one round
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RoundResult:
    rcvbuf: str  # the server's UDP socket receive buffer, as ss reports it
    client_busy: float  # dnsperf's busiest share of its core in the qps runs
    unthrottled_qps: float
    max_qps: int  # 0: even the lowest step failed
    fixed: PerfResult
    p50_us: float
    p99_us: float
    p999_us: float


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    duration: float  # seconds per search step and for the unthrottled run
    warmup: float
    latency_duration: float
    max_steps: int
    resolution: float  # stop bisecting when (fail - ok) <= resolution x fail
    fixed_qps: int


def find_max_rate(
    run: Callable[[int], PerfResult], unthrottled: float, plan: Plan, say: Callable[[str], None]
) -> tuple[int, bool, float]:
    """Bisect the dnsperf -Q rate between "passes" and "fails", bounded by plan.max_steps.

    Starts at 85 % of the unthrottled rate and grows by 25 % a step until a rate fails. Returns
    the highest passing rate (0: none passed), whether a failing rate above it was found, and
    how busy dnsperf was in the passing step with that rate.
    """
    ok = 0  # highest rate that passed
    ok_client_busy = 0.0
    fail: int | None = None  # lowest rate that failed
    rate = max(100, round(unthrottled * 0.85 / 100) * 100)
    for step in range(plan.max_steps):
        result = run(rate)
        passed = result.passes()
        say(f"    step {step + 1}: {result.summary()} -> {'pass' if passed else 'fail'}")
        if not passed and result.other_cpu_s > NOISY_REST_CORES * result.wall_s:
            # Other work on the machine (it is shared) may have caused the failure: once more.
            time.sleep(0.3)
            result = run(rate)
            passed = result.passes()
            say(f"    again:  {result.summary()} -> {'pass' if passed else 'fail'}")
        if passed:
            ok, ok_client_busy = rate, result.client_busy
        else:
            fail = rate
        if fail is None:
            nxt = int(rate * 1.25)
        elif fail - ok <= max(100, plan.resolution * fail):
            break
        else:
            nxt = (ok + fail) // 2
        nxt = max(100, round(nxt / 100) * 100)
        if nxt == rate or nxt <= ok or (fail is not None and nxt >= fail):
            break
        rate = nxt
        time.sleep(0.3)  # let the socket buffers drain
    return ok, fail is not None, ok_client_busy


def measure(
    server: Server, settings: PerfSettings, plan: Plan, say: Callable[[str], None]
) -> RoundResult:
    rcvbuf = socket_rcvbuf(server.port)
    say(f"    UDP socket receive buffer (ss): {rcvbuf} bytes")
    run_dnsperf(settings, server, plan.warmup, None)  # fill caches (kdns: the wire fast path)
    unthrottled = run_dnsperf(settings, server, plan.duration, None)
    say(f"    {unthrottled.summary()}")
    max_qps, bounded, client_busy = find_max_rate(
        lambda rate: run_dnsperf(settings, server, plan.duration, rate),
        unthrottled.qps,
        plan,
        say,
    )
    say(
        f"    max qps without loss: {max_qps}"
        + ("" if bounded else " (no failing rate found within --max-steps: a lower bound)")
    )
    time.sleep(0.3)
    fixed = run_dnsperf(settings, server, plan.latency_duration, plan.fixed_qps, verbose=True)
    lat = sorted(fixed.latencies_us or [])
    if len(lat) != fixed.completed:
        say(f"    note: parsed {len(lat)} per-query latencies, dnsperf says {fixed.completed}")
    mean = statistics.fmean(lat) if lat else math.nan
    result = RoundResult(
        rcvbuf=rcvbuf,
        client_busy=max(unthrottled.client_busy, client_busy),
        unthrottled_qps=unthrottled.qps,
        max_qps=max_qps,
        fixed=fixed,
        p50_us=percentile(lat, 50),
        p99_us=percentile(lat, 99),
        p999_us=percentile(lat, 99.9),
    )
    say(
        f"    at {plan.fixed_qps} qps: {fixed.summary()}\n"
        f"      p50 {result.p50_us:.0f} µs, p99 {result.p99_us:.0f} µs, "
        f"p99.9 {result.p999_us:.0f} µs, mean {mean:.0f} µs "
        f"(dnsperf's average {fixed.avg_latency_s * 1e6:.0f} µs), "
        f"server CPU {fixed.cpu_us_per_query:.2f} µs/query, response {fixed.response_size:.0f} B"
    )
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    label: str
    unit_fmt: str
    higher_is_better: bool
    get: Callable[[RoundResult], float]
    target: float | None = None  # kdns / dnsmasq bound
    fixed: bool = False  # measured in the fixed-rate run


def figures(fixed_qps: int) -> list[Figure]:
    at = f"@{fixed_qps / 1000:g}k"
    return [
        Figure(
            f"max qps, failed <= {LOSS_LIMIT_PCT} %",
            "{:.0f}",
            True,
            lambda r: r.max_qps,
            TARGET_QPS_RATIO,
        ),
        Figure("unthrottled qps (-q 100)", "{:.0f}", True, lambda r: r.unthrottled_qps),
        Figure(f"p50 latency {at} qps (µs)", "{:.0f}", False, lambda r: r.p50_us, fixed=True),
        Figure(f"p99 latency {at} qps (µs)", "{:.0f}", False, lambda r: r.p99_us, fixed=True),
        Figure(
            f"server CPU µs/query {at}",
            "{:.2f}",
            False,
            lambda r: r.fixed.cpu_us_per_query,
            TARGET_CPU_RATIO,
            fixed=True,
        ),
        Figure(
            f"lost {at} qps (%)",
            "{:.3f}",
            False,
            lambda r: 100.0 * r.fixed.lost / max(r.fixed.sent, 1),
        ),
    ]


def best_and_median(values: Sequence[float], higher_is_better: bool) -> tuple[float, float]:
    best = max(values) if higher_is_better else min(values)
    return best, statistics.median(values)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf if a else math.nan


def report(results: dict[str, list[RoundResult]], fixed_qps: int) -> str:
    """The table; a * marks a fixed-rate figure of a server that could not keep up with it."""
    names = list(results)
    overloaded = {
        name: any(not r.fixed.passes() for r in rounds) for name, rounds in results.items()
    }
    both = len(names) == 2
    cols = ["figure"]
    for name in names:
        cols += [f"{name} best", f"{name} median"]
    if both:
        cols += [f"{names[0]}/{names[1]} best", "(median)", "target", "verdict"]
    rows = [cols]
    for fig in figures(fixed_qps):
        row = [fig.label]
        stats = {}
        for name in names:
            best, med = best_and_median([fig.get(r) for r in results[name]], fig.higher_is_better)
            stats[name] = (best, med)
            mark = "*" if fig.fixed and overloaded[name] else ""
            row += [fig.unit_fmt.format(best) + mark, fig.unit_fmt.format(med) + mark]
        if both:
            (b0, m0), (b1, m1) = stats[names[0]], stats[names[1]]
            rb, rm = ratio(b0, b1), ratio(m0, m1)
            row += ["-" if math.isnan(x) else f"{x:.2f}" for x in (rb, rm)]
            if fig.target is None:
                row += ["", ""]
            elif fig.higher_is_better:
                row += [f">= {fig.target:g}", "PASS" if rb >= fig.target else "MISS"]
            else:
                row += [f"<= {fig.target:g}", "PASS" if rb <= fig.target else "MISS"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    for name, rounds in results.items():
        busy = max(r.client_busy for r in rounds)
        if busy >= CLIENT_SATURATED:
            lines.append(
                f"! dnsperf used up to {busy:.0%} of its core in {name}'s qps runs: those qps "
                f"figures may be limited by the client (one core), i.e. are lower bounds"
            )
    lines.append(
        "socket receive buffers: "
        + ", ".join(f"{name} {rounds[0].rcvbuf} B" for name, rounds in results.items())
    )
    for name, bad in overloaded.items():
        if bad:
            lines.append(
                f"* {name} did not pass the max-qps criterion at {fixed_qps} qps in at least one "
                "round: overloaded at that rate, its latency there is mostly queueing and its "
                "CPU per query is measured at saturation"
            )
    return "\n".join(lines)


def environment() -> str:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout + out.stderr).strip().splitlines()
        return next((line for line in text if "version" in line.lower()), text[0] if text else "?")

    load = Path("/proc/loadavg").read_text().split()[:3]
    rmem = Path("/proc/sys/net/core/rmem_default").read_text().strip()
    return (
        f"host: {os.uname().release}, {os.cpu_count()} CPUs, load {' '.join(load)}, "
        f"net.core.rmem_default {rmem}\n"
        f"tools: {first_line(['dnsperf', '-h'])}; {first_line(['/usr/sbin/dnsmasq', '--version'])}"
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark kdns against dnsmasq with dnsperf (same services, same queries).",
    )
    parser.add_argument("--python", default=sys.executable, help="Python that runs kdns")
    parser.add_argument("--services", type=int, default=1000, help="number of Services")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per server")
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds per dnsperf step (search, unthrottled)"
    )
    parser.add_argument(
        "--latency-duration",
        type=float,
        default=10.0,
        help="seconds of the fixed-rate run (latency and CPU)",
    )
    parser.add_argument(
        "--fixed-qps",
        type=int,
        default=DEFAULT_FIXED_QPS,
        help="dnsperf -Q rate of the latency and CPU run",
    )
    parser.add_argument(
        "--outstanding",
        type=int,
        default=DEFAULT_OUTSTANDING_RATED,
        help="dnsperf -q (queries in flight) for the -Q runs",
    )
    parser.add_argument("--max-steps", type=int, default=8, help="bisection steps per search")
    parser.add_argument("--quick", action="store_true", help="one round, short steps (smoke run)")
    parser.add_argument(
        "--kdns-cmd",
        default=DEFAULT_KDNS_CMD,
        help="kdns command template; {python} {manifests} {port} {addr} are filled in "
        f"(default: {DEFAULT_KDNS_CMD!r}, run from the repository root)",
    )
    parser.add_argument("--dnsmasq", default="/usr/sbin/dnsmasq", help="dnsmasq binary")
    parser.add_argument(
        "--before",
        type=Path,
        help="also run kdns from this checkout (e.g. a worktree of main), interleaved, as "
        "kdns-before, with its own ratios against dnsmasq",
    )
    parser.add_argument(
        "--only", choices=["kdns", "dnsmasq"], help="measure one server (no ratios)"
    )
    parser.add_argument(
        "--mix",
        choices=[*MIXES, "both"],
        default="both",
        help="query mix: a-only (90 %% A, 10 %% NXDOMAIN; dnsmasq gets no srv-host lines), srv "
        "(70 %% A / 30 %% SRV of the existing names; dnsmasq scans its srv-host list on every "
        "query there) or both, a-only first (default)",
    )
    # The old spelling of --mix a-only.
    parser.add_argument(
        "--a-only", dest="mix", action="store_const", const="a-only", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--own-buffers",
        action="store_true",
        help="leave dnsmasq's receive buffer at the system default (by default the script, "
        "as root, gives dnsmasq's socket the size kdns asks for)",
    )
    parser.add_argument("--server-cpu", default="0", help="taskset CPU list for the server")
    parser.add_argument("--client-cpu", default="1", help="taskset CPU list for dnsperf")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run servers and dnsperf under nice -n N (e.g. -10 on a busy machine)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each round, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds to be ready")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.duration = min(args.duration, 1.0)
        args.latency_duration = min(args.latency_duration, 3.0)
        args.max_steps = min(args.max_steps, 5)
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if not 0.5 <= args.duration <= 60 or not 1 <= args.latency_duration <= 120:
        parser.error("--duration must be in 0.5..60 s and --latency-duration in 1..120 s")
    if not 100 <= args.fixed_qps <= 1_000_000:
        parser.error("--fixed-qps must be between 100 and 1000000")
    if not 1 <= args.outstanding <= 65535:
        parser.error("--outstanding must be between 1 and 65535")
    if not 1 <= args.max_steps <= 20:
        parser.error("--max-steps must be between 1 and 20")
    return args


def build_servers(
    args: argparse.Namespace, tmp: Path, services: Sequence[Service], srv: bool
) -> list[Server]:
    kdns_port, dnsmasq_port, before_port = pick_ports(3)
    server_cpu = None if args.no_pin else args.server_cpu
    manifests = tmp / "manifests"
    write_manifests(manifests, services)
    conf = write_dnsmasq_config(tmp, services, dnsmasq_port, srv=srv)
    addr = f"127.0.0.1:{kdns_port}"
    kdns_argv = shlex.split(
        args.kdns_cmd.format(
            python=shlex.quote(args.python),
            manifests=shlex.quote(str(manifests)),
            port=kdns_port,
            addr=addr,
        )
    )
    # No lameduck: the benchmark stops kdns with SIGTERM between rounds.
    env = dict(os.environ, KDNS_LAMEDUCK="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    servers = [
        Server(
            "kdns",
            kdns_argv,
            kdns_port,
            tmp / "kdns.log",
            server_cpu,
            nice=args.nice,
            cwd=REPO_ROOT,
            env=env,
            ready_name=services[0].fqdn,
        ),
        Server(
            "dnsmasq",
            [args.dnsmasq, f"--conf-file={conf}"],
            dnsmasq_port,
            tmp / "dnsmasq.log",
            server_cpu,
            nice=args.nice,
            ready_name=services[0].fqdn,
        ),
    ]
    servers = [s for s in servers if args.only in (None, s.name)]
    if args.before is not None:
        # kdns from another checkout, interleaved with the rest (before/after in one sitting).
        root = args.before.resolve()
        before_env = dict(env)
        before_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(root), os.environ.get("PYTHONPATH")])
        )
        before_addr = f"127.0.0.1:{before_port}"
        argv = shlex.split(
            args.kdns_cmd.format(
                python=shlex.quote(args.python),
                manifests=shlex.quote(str(manifests)),
                port=before_port,
                addr=before_addr,
            )
        )
        before = Server(
            "kdns-before",
            argv,
            before_port,
            tmp / "kdns-before.log",
            server_cpu,
            nice=args.nice,
            cwd=root,
            env=before_env,
            ready_name=services[0].fqdn,
        )
        servers.insert(0, before)
    return servers


def check_tools(args: argparse.Namespace) -> None:
    needed = ["dnsperf", "dig"] + ([] if args.no_pin else ["taskset"])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if args.only != "kdns" and not Path(args.dnsmasq).exists():
        missing.append(args.dnsmasq)
    if missing:
        raise SystemExit(f"error: missing tools: {', '.join(missing)}")
    if not args.no_pin:
        allowed = os.sched_getaffinity(0)
        for cpus in (args.server_cpu, args.client_cpu):
            wanted = {int(c) for c in re.split(r"[,-]", cpus) if c}
            if not wanted <= allowed:
                raise SystemExit(
                    f"error: CPU {cpus} not available (have {sorted(allowed)}); use --no-pin"
                )


# The query mixes, in the order they run and are reported: name -> (SRV in the mix, title). The
# A-only mix leads: dnsmasq answers A from a hash table at full speed, while with 1,000
# `srv-host` lines it scans them all for every SRV and NXDOMAIN query, so the SRV mix says more
# about that list than about either server.
MIXES = {
    "a-only": (False, "A only: 90 % A, 10 % NXDOMAIN; dnsmasq without srv-host lines"),
    "srv": (True, "A and SRV: 90 % existing (70 % A, 30 % SRV), 10 % NXDOMAIN; 1,000 srv-host"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args)

    def say(line: str) -> None:
        print(line, flush=True)

    # SIGTERM behaves like Ctrl-C, so the finally blocks stop every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.no_pin:
        # The harness mostly sleeps, but keep its parsing off the server's core.
        os.sched_setaffinity(0, {int(c) for c in re.split(r"[,-]", args.client_cpu) if c})

    tmp = Path(tempfile.mkdtemp(prefix="kdns-bench-"))
    keep = args.keep
    reports: list[str] = []
    try:
        services = make_services(args.services)
        say(environment())
        pin = "unpinned" if args.no_pin else f"server on CPU {args.server_cpu}, dnsperf on CPU "
        say(f"pinning: {pin}{'' if args.no_pin else args.client_cpu}; work dir {tmp}")
        mixes = list(MIXES) if args.mix == "both" else [args.mix]
        for number, name in enumerate(mixes, 1):
            srv, title = MIXES[name]
            say(f"\n=== mix {number}/{len(mixes)}: {title} ===")
            folder = tmp / name
            folder.mkdir()
            table = run_mix(args, folder, services, srv, say)
            if table is None:
                keep = True
                return 1
            reports.append(f"mix {number}/{len(mixes)}: {title}\n{table}")
        say(
            f"\nResults: {args.rounds} round(s) per server, interleaved, fresh server each round; "
            "best = highest qps / lowest latency and CPU."
        )
        for text in reports:
            say(f"\n{text}")
        say(method(args))
        return 0
    finally:
        if keep:
            say(f"work dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_mix(
    args: argparse.Namespace,
    tmp: Path,
    services: Sequence[Service],
    srv: bool,
    say: Callable[[str], None],
) -> str | None:
    """Check that both servers answer alike, measure them over one mix; the report table, or
    None after saying what went wrong."""
    servers: list[Server] = []
    try:
        query_file = tmp / "queries.txt"
        mix = write_query_file(query_file, services, QUERY_LINES, srv=srv)
        servers = build_servers(args, tmp, services, srv)
        settings = PerfSettings(
            query_file, tmp, None if args.no_pin else args.client_cpu, args.nice, args.outstanding
        )
        plan = Plan(
            duration=args.duration,
            warmup=1.0 if args.quick else 2.0,
            latency_duration=args.latency_duration,
            max_steps=args.max_steps,
            resolution=0.05 if args.quick else 0.02,
            fixed_qps=args.fixed_qps,
        )
        say(
            f"data: {len(services)} Services in namespace {NAMESPACE}; query file {QUERY_LINES} "
            f"lines: {mix.a} A + {mix.srv} SRV existing, {mix.nx} NXDOMAIN (seed {SEED})"
        )
        for server in servers:
            say(f"{server.name}: {shlex.join(server.argv)}  (port {server.port})")

        # 1. Same answers?
        checks = expectations(services, srv=srv)
        answers: dict[str, list[DigAnswer]] = {}
        for server in servers:
            if server.name == "kdns-before":
                continue  # main's kdns: compared with the data in its own checkout's runs
            with running(server, args.start_timeout):
                answers[server.name] = [dig(server.port, c.name, c.qtype) for c in checks]
        errors, notes = compare_answers(checks, answers)
        if errors:
            say("\nERROR: the servers do not answer the same names the same way:")
            for line in errors[:30]:
                say(f"  {line}")
            for server in servers:
                say(f"  {server.name} sample: {answers[server.name][0].show()}")
            return None
        kinds = "A, SRV, NXDOMAIN" if srv else "A, NXDOMAIN"
        say(f"\nanswers: {len(checks)} sample queries ({kinds}) checked with dig: same")
        for note in notes:
            say(f"  note: {note}")

        # 2. Measure, interleaved.
        results: dict[str, list[RoundResult]] = {s.name: [] for s in servers}
        for rnd in range(args.rounds):
            for server in servers:
                say(f"\nround {rnd + 1}/{args.rounds}: {server.name}")
                wait_quiet(args.quiet_wait, say)
                with running(server, args.start_timeout):
                    if server.name == "dnsmasq" and not args.own_buffers:
                        size = kdns_receive_buffer()
                        if not set_receive_buffer(server.pid, server.port, size):
                            say(f"    could not set dnsmasq's receive buffer to {size} (root?)")
                    results[server.name].append(measure(server, settings, plan, say))
        if "kdns-before" in results:
            before = {k: results[k] for k in ("kdns-before", "dnsmasq") if k in results}
            say(f"\n{report(before, args.fixed_qps)}")
            results.pop("kdns-before")
        table = report(results, args.fixed_qps)
        say(f"\n{table}")
        return table
    except StartError as exc:
        say(f"\nERROR: {exc}\n  log {exc.server.log_path}:\n{exc.server.log_tail()}")
        return None
    except PerfError as exc:
        say(f"\nERROR: {exc}")
        return None
    finally:
        for server in servers:
            server.stop()


def method(args: argparse.Namespace) -> str:
    """How the figures are made (printed after the tables)."""
    warmup = 1.0 if args.quick else 2.0
    return (
        "\nHow the figures are made:\n"
        f"- max qps: the highest dnsperf -Q rate (bisection, {args.duration:g} s steps, "
        f"-c {DNSPERF_CLIENTS} -T 1 -q {args.outstanding} -t {DNSPERF_TIMEOUT_S}) at which "
        f"lost queries + answers other than NOERROR/NXDOMAIN <= {LOSS_LIMIT_PCT} % of sent "
        f"and achieved qps >= {RATE_FLOOR:.0%} of the requested rate; 0 = no step passed. "
        f"At most {args.outstanding} queries in flight, so an overloaded server shows as a "
        "shortfall of the achieved rate rather than as loss. A failed step during which "
        f"other processes used > {NOISY_REST_CORES:.0%} of a core is run once more.\n"
        f"- unthrottled: dnsperf without -Q, -q {OUTSTANDING_UNTHROTTLED} outstanding, "
        f"{args.duration:g} s, after a {warmup:g} s warm-up.\n"
        f"- latency: dnsperf 2.x has no percentile/histogram option; p50/p99 are nearest-rank "
        f"percentiles of the per-query latencies printed by dnsperf -v (µs resolution) for "
        f"the answered queries of a {args.latency_duration:g} s run at -Q {args.fixed_qps}; "
        f"lost queries (> {DNSPERF_TIMEOUT_S} s) are excluded and shown as 'lost'.\n"
        f"- CPU: server utime+stime from /proc/<pid>/stat (all threads, 1/{CLK_TCK} s ticks) "
        f"across that run, divided by the queries answered.\n"
        "- 'rest' in the step lines: CPU used by everything but the server and dnsperf "
        "(other processes, interrupts) during the step; this machine may be shared, and "
        f"each round waits up to {args.quiet_wait:g} s for it to be idle first.\n"
        "- verdict: on the best-of-rounds ratio; a measurement, the exit status is 0 "
        "either way."
    )


if __name__ == "__main__":
    sys.exit(main())

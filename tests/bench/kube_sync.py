"""Benchmark: kdns following a live cluster — sync time, memory, relist, DNS programming latency.

What it measures. For each size N (``--sizes``, default 10,000 then 50,000) a fake kube-apiserver
(``tests/kubeapi/server.py``, HTTPS as a cluster's API server: TLS 1.3 with a trustme CA that
kdns's kubeconfig names, running in this process) holds N Services spread over 10
namespaces (ports 80 and 443; every tenth one headless) and N EndpointSlices (one per Service,
three ready endpoints each, every address unique), and kdns is started as a subprocess that
follows it: ``<python> -m kdns serve --kubeconfig FILE --dns-addr 127.0.0.1:P …``. Then:

1. ready time: from Popen to the first ``/ready`` 200, and to the first NOERROR answer with an
   address for the LAST Service's name (each polled every 20 ms, bounded by ``--ready-timeout``);
   also kdns's CPU seconds until ready.
2. memory after sync: VmRSS and VmHWM from ``/proc/PID/status`` once ready and idle for 1 s.
3. a forced relist: the server compacts its history and sends every open watch an ERROR 410
   event (what a real apiserver's watch cache does), so every Reflector relists from scratch.
   VmRSS is sampled every 10 ms meanwhile, and VmHWM is reset first (``/proc/PID/clear_refs``
   "5"), so VmHWM afterwards is the relist's exact peak. ``kdns_kube_relists_total`` must rise for
   every kind, or the figure is marked as not confirmed.
4. DNS programming latency while a paced thread rewrites the EndpointSlices of random Services
   at ``--change-rate`` per second for ``--duration`` seconds (one endpoint gets a new, unique IP;
   the slice's ``endpoints.kubernetes.io/last-change-trigger-time`` is the wall-clock time of the
   write, RFC 3339 with nanoseconds as the EndpointSlice controller writes it, which
   ``kdns.model`` parses):
   (a) kdns's own ``kdns_kubernetes_dns_programming_duration_seconds``: bucket counts diffed
       before / after; a percentile is reported as the upper bound of the bucket it falls in;
   (b) end to end: for one change in ten (20/s at the default rate) a separate process polls
       kdns over UDP for the new endpoint's name (``<dashed-ip>.<svc>.<ns>.svc.cluster.local A``)
       every 2 ms (every 10 ms once 100 ms have passed) and times the API write → the first
       answer carrying the new address. A Service changed in the last 2 s is not changed again,
       so a sampled address is never replaced before it can be seen.
5. query latency for unchanged names: a separate process sends A queries for 100 fixed names
   (Services the change stream never touches) at ``--qps`` over UDP, paced, first for
   ``--duration`` seconds with no changes ("idle"), then during the change stream; p50 / p99 /
   max and loss (no answer within 1 s after the period) side by side.

Targets (for N = 10,000; other sizes just print their figures, to show how things grow): ready
≤ 5 s; RSS < 170 MiB after sync and at the relist peak; DNS programming p99 < 100 ms (the
histogram bucket and the end-to-end p99 both); unchanged-name latency not degraded, meaning p99
during changes ≤ max(2 × idle p99, idle p99 + 2 ms) and loss during changes ≤ idle loss + 0.1 %.
Each is printed as PASS or MISS; the script exits 0 either way (a measurement, not a test), 1 only
when kdns cannot be started at all.

Caveats. Nothing is pinned: on a 2-core machine the fake API server (this process, one GIL),
kdns and the two client processes share both cores, so the API server's own cost is inside every
figure. The table shows the CPU used by everything else on the machine ("other") per phase; if it
is high, other benchmarks or tests were running and the figures are noisy. The client-side poll
interval (2 ms) bounds the end-to-end resolution.

How to run (only talks to 127.0.0.1; the file name does not start with ``test_``, so pytest does
not collect it):

    .venv/bin/python tests/bench/kube_sync.py                    # N = 10,000 and 50,000
    .venv/bin/python tests/bench/kube_sync.py --quick            # N = 2,000, 3 s phases: smoke run
    .venv/bin/python tests/bench/kube_sync.py --sizes 10000 --profile /tmp/prof
    .venv/bin/python tests/bench/kube_sync.py --relist-only --before /tmp/main-checkout

``--before DIR`` measures a second checkout of kdns in the same sitting: each size runs DIR's
kdns, then this tree's, side by side in the table. ``--relist-only`` stops after the forced
relist (ready, memory and relist figures), for the memory comparison at large N.

``--profile DIR`` attaches py-spy (``pip install py-spy``) to kdns from start to ready and during
the change stream, writes the raw stacks to DIR and prints the functions where the time goes
(the profiled figures are then not the clean ones: py-spy takes CPU too). ``--wait-quiet``: before
each size, wait (bounded) until the machine is nearly idle.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import multiprocessing
import multiprocessing.connection
import os
import queue
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for `tests.kubeapi` when run as a script

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.kubeapi import objects  # noqa: E402
from tests.kubeapi.server import ApiServer  # noqa: E402
from tests.processes import stop_process  # noqa: E402

ZONE = "cluster.local"
NAMESPACES = 10
HEADLESS_EVERY = 10  # Service i is headless when i % 10 == 5
ENDPOINTS_PER_SLICE = 3
SERVICE_PORTS = (80, 443)  # named port-80 / port-443 by the builder (several ports)
SLICE_PORTS = [{"name": f"port-{p}", "port": p} for p in SERVICE_PORTS]
TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
# Initial endpoint addresses count up from here; changed ones from CHANGED_BASE (disjoint).
INITIAL_BASE = int(ipaddress.IPv4Address("10.128.0.1"))
CHANGED_BASE = int(ipaddress.IPv4Address("10.192.0.1"))
FIXED_NAMES = 100  # unchanged names queried by the steady client

POLL_READY = 0.020  # ready phase: /ready and DNS polled this often
RSS_SAMPLE = 0.010  # relist phase: VmRSS sampled this often
E2E_POLL_FAST = 0.002  # end-to-end probe interval for the first 100 ms of a change
E2E_POLL_SLOW = 0.010  # ...and after that
E2E_FAST_FOR = 0.100
E2E_TIMEOUT = 5.0  # a change not seen after this long counts as a timeout
E2E_SAMPLES_PER_S = 20
RECENT_S = 2.0  # a Service changed this recently is not changed again
STEADY_GRACE = 1.0  # answers later than this after the period count as lost
RELIST_TIMEOUT = 300.0
EVENTS_TIMEOUT = 60.0  # after the change stream: wait this long for kdns to apply every event
CHILD_START_TIMEOUT = 60.0
QUIET_CORES = 0.3  # before each size, wait (bounded) until the machine uses less than this

TARGET_READY_S = 5.0
TARGET_RSS_MIB = 170.0
TARGET_PROGRAMMING_S = 0.100
TARGET_SIZE = 10_000

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

Json = dict[str, Any]
Say = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# The cluster: Services and EndpointSlices, and the addresses they hold now
# --------------------------------------------------------------------------------------------


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def dashed(ip: str) -> str:
    return ip.replace(".", "-")


def rfc3339nano(t: float) -> str:
    """Wall-clock time as Go's time.RFC3339Nano writes it (UTC, trailing zeros trimmed)."""
    whole = int(t)
    nanos = round((t - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    digits = f"{nanos:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


class Cluster:
    """N Services (``svc-i`` in ``ns-(i % 10)``) and one EndpointSlice each."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ips: list[list[str]] = [
            [_ip(INITIAL_BASE + ENDPOINTS_PER_SLICE * i + j) for j in range(ENDPOINTS_PER_SLICE)]
            for i in range(n)
        ]
        self._changed = 0

    @staticmethod
    def namespace(i: int) -> str:
        return f"ns-{i % NAMESPACES}"

    @staticmethod
    def name(i: int) -> str:
        return f"svc-{i}"

    def fqdn(self, i: int) -> str:
        return f"{self.name(i)}.{self.namespace(i)}.svc.{ZONE}"

    def service(self, i: int) -> Json:
        return objects.service(
            self.namespace(i),
            self.name(i),
            ports=SERVICE_PORTS,
            headless=i % HEADLESS_EVERY == HEADLESS_EVERY // 2,
        )

    def endpointslice(self, i: int, trigger: float | None = None) -> Json:
        obj = objects.endpointslice(
            self.namespace(i), self.name(i), addresses=self.ips[i], ports=SLICE_PORTS
        )
        if trigger is not None:
            obj["metadata"]["annotations"][TRIGGER_ANNOTATION] = rfc3339nano(trigger)
        return obj

    def new_ip(self) -> str:
        self._changed += 1
        return _ip(CHANGED_BASE + self._changed)

    def load(self, server: ApiServer) -> None:
        names = ["default", "kube-system"] + [f"ns-{k}" for k in range(NAMESPACES)]
        server.load("namespaces", (objects.namespace(ns) for ns in names))
        server.load("services", (self.service(i) for i in range(self.n)))
        server.load("endpointslices", (self.endpointslice(i) for i in range(self.n)))


# --------------------------------------------------------------------------------------------
# DNS on the wire (just enough for queries and A answers)
# --------------------------------------------------------------------------------------------


def build_query(qid: int, name: str, qtype: int = 1) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, offset: int) -> int:
    for _ in range(128):  # bounded: a name has at most 127 labels
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
    raise ValueError("name too long")


def a_records(data: bytes) -> list[bytes] | None:
    """The A rdata of a NOERROR response, or None when it is not NOERROR or not parseable."""
    if len(data) < 12 or data[3] & 0x0F != 0:
        return None
    qdcount, ancount = struct.unpack("!HH", data[4:8])
    try:
        offset = 12
        for _ in range(qdcount):
            offset = _skip_name(data, offset) + 4
        found = []
        for _ in range(ancount):
            offset = _skip_name(data, offset)
            rtype, _cls, _ttl, length = struct.unpack("!HHIH", data[offset : offset + 10])
            offset += 10
            if rtype == 1 and length == 4:
                found.append(data[offset : offset + 4])
            offset += length
        return found
    except (IndexError, ValueError, struct.error):
        return None


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


# --------------------------------------------------------------------------------------------
# Client processes (spawned: this process holds the API server and its GIL)
# --------------------------------------------------------------------------------------------


def _udp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def steady_client(
    port: int,
    names: list[str],
    qps: float,
    duration: float,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Send A queries for `names`, round robin, at `qps` for `duration` s; report latencies.

    Waits for "go" on `conn` after reporting "ready"; sends one result dict at the end."""
    sock = _udp(port)
    templates = [build_query(0, name)[2:] for name in names]
    conn.send("ready")
    if not conn.poll(CHILD_START_TIMEOUT):
        return
    conn.recv()
    total = max(1, int(qps * duration))
    sent_at = [0.0] * total
    latency = [-1.0] * total
    answered = bad_rcode = send_errors = 0
    cpu0, start = _cpu_self(), time.monotonic()
    hard_end = start + duration + STEADY_GRACE
    i = 0
    while True:
        now = time.monotonic()
        due = min(total, int((now - start) * qps) + 1)
        while i < due:
            try:
                sock.send((i & 0xFFFF).to_bytes(2, "big") + templates[i % len(templates)])
            except OSError:
                send_errors += 1
            sent_at[i] = time.monotonic()
            i += 1
        last_send = sent_at[i - 1]
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            except OSError:  # ICMP port unreachable: kdns is gone
                send_errors += 1
                break
            t = time.monotonic()
            if len(data) < 12:
                continue
            qid = int.from_bytes(data[:2], "big")
            seq = (i - 1) - (((i - 1) - qid) & 0xFFFF)  # the latest query with this ID
            if 0 <= seq < i and latency[seq] < 0:
                latency[seq] = t - sent_at[seq]
                answered += 1
                if data[3] & 0x0F:
                    bad_rcode += 1
        now = time.monotonic()
        if i >= total and (answered >= total or now >= hard_end):
            break
        wake = start + i / qps if i < total else now + 0.005
        select.select([sock], [], [], max(0.0, min(wake, hard_end) - now))
    got = sorted(x for x in latency if x >= 0)
    conn.send(
        {
            "sent": total,
            "answered": answered,
            "bad_rcode": bad_rcode,
            "send_errors": send_errors,
            "rate": total / max(1e-9, last_send - start),
            "p50": percentile(got, 50),
            "p99": percentile(got, 99),
            "p999": percentile(got, 99.9),
            "max": got[-1] if got else float("nan"),
            "cpu": _cpu_self() - cpu0,
        }
    )


@dataclasses.dataclass(slots=True)
class _Probe:
    t_write: float
    packet: bytes
    address: bytes
    next_poll: float = 0.0


def e2e_sampler(
    port: int,
    inbox: multiprocessing.Queue,  # type: ignore[type-arg]
    max_run: float,
    conn: multiprocessing.connection.Connection,
) -> None:
    """For each (write time, name, new IP) from `inbox`, poll kdns until the IP is answered.

    Times are wall-clock (time.time) so they compare with the writer's. None ends the run."""
    sock = _udp(port)
    conn.send("ready")
    pending: dict[int, _Probe] = {}
    latencies: list[float] = []
    timeouts = received = 0
    next_id = 1
    closed = False
    cpu0 = _cpu_self()
    hard_end = time.time() + max_run
    while True:
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:
                closed = True
                hard_end = min(hard_end, time.time() + E2E_TIMEOUT + 1.0)
                continue
            t_write, name, ip = item
            pending[next_id] = _Probe(t_write, build_query(next_id, name), socket.inet_aton(ip))
            next_id = next_id % 0xFFFF + 1
        now = time.time()
        for qid, probe in list(pending.items()):
            age = now - probe.t_write
            if age > E2E_TIMEOUT:
                timeouts += 1
                del pending[qid]
            elif probe.next_poll <= now:
                with contextlib.suppress(OSError):
                    sock.send(probe.packet)
                probe.next_poll = now + (E2E_POLL_FAST if age < E2E_FAST_FOR else E2E_POLL_SLOW)
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            except OSError:
                break
            t = time.time()
            received += 1
            probe_or_none = pending.get(int.from_bytes(data[:2], "big"))
            if probe_or_none is None:
                continue
            addresses = a_records(data)
            if addresses and probe_or_none.address in addresses:
                latencies.append(t - probe_or_none.t_write)
                del pending[int.from_bytes(data[:2], "big")]
        now = time.time()
        if (closed and not pending) or now >= hard_end:
            break
        wake = min((p.next_poll for p in pending.values()), default=now + 0.005)
        select.select([sock], [], [], min(0.005, max(0.0, wake - now)))
    latencies.sort()
    conn.send(
        {
            "latencies": latencies,
            "timeouts": timeouts + len(pending),
            "received": received,
            "cpu": _cpu_self() - cpu0,
        }
    )


class Child:
    """A spawned client process with a pipe; always terminated in `stop`."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(*args, child_conn), daemon=True)
        self.process.start()
        child_conn.close()

    def wait_ready(self) -> None:
        try:
            if self.conn.poll(CHILD_START_TIMEOUT) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        raise RuntimeError("a client process did not start")

    def result(self, timeout: float) -> Json | None:
        try:
            if self.conn.poll(timeout):
                return self.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            pass
        return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)
        self.conn.close()


# --------------------------------------------------------------------------------------------
# kdns: the process, its /proc figures, its metrics
# --------------------------------------------------------------------------------------------


def free_port(udp_too: bool = False) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, … (kB) from /proc/PID/status; {} once the process is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("Vm"):
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (proc(5): clear_refs "5"); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds; NaN once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_s() -> float:
    """Non-idle CPU time of the whole machine, seconds, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuWindow:
    """CPU used during a phase: kdns, this process, and everyone else ("other")."""

    def __init__(self, kdns_pid: int) -> None:
        self.kdns_pid = kdns_pid
        self.t0 = time.monotonic()
        self.busy0 = system_busy_s()
        self.kdns0 = proc_cpu_s(kdns_pid)
        self.self0 = _cpu_self()

    def end(self, children_cpu: float = 0.0) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        kdns = proc_cpu_s(self.kdns_pid) - self.kdns0
        bench = _cpu_self() - self.self0
        other = system_busy_s() - self.busy0 - kdns - bench - children_cpu
        return {
            "wall": wall,
            "kdns": kdns,
            "kdns_cores": kdns / wall,
            "bench_cores": (bench + children_cpu) / wall,
            "other_cores": max(0.0, other) / wall,
        }


class Kdns:
    def __init__(self, kubeconfig: Path, workdir: Path, root: Path = REPO_ROOT) -> None:
        self.root = root  # the checkout whose kdns runs (`python -m kdns` from there)
        self.dns_port = free_port(udp_too=True)
        self.ready_port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / "kdns.log"
        self.argv = [
            sys.executable,
            "-m",
            "kdns",
            "serve",
            "--kubeconfig",
            str(kubeconfig),
            "--dns-addr",
            f"127.0.0.1:{self.dns_port}",
            "--health-addr",
            "127.0.0.1:0",
            "--ready-addr",
            f"127.0.0.1:{self.ready_port}",
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
            "--upstreams",  # nothing: every name asked is a cluster name, nothing leaves loopback
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=dict(os.environ, KDNS_LAMEDUCK="0"),  # stopped with SIGTERM: no lameduck
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def metrics(self, timeout: float = 5.0) -> list[tuple[str, dict[str, str], float]]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]


Samples = list[tuple[str, dict[str, str], float]]


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def per_label(samples: Samples, name: str, label: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for n, lab, v in samples:
        if n == name:
            out[lab.get(label, "")] += int(v)
    return out


HISTOGRAM = "kdns_kubernetes_dns_programming_duration_seconds"


def histogram_buckets(samples: Samples) -> dict[float, float]:
    """Cumulative bucket counts of the programming histogram, summed over service_kind."""
    out: dict[float, float] = {}
    for n, lab, v in samples:
        if n == HISTOGRAM + "_bucket":
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def bucket_percentile(before: dict[float, float], after: dict[float, float], pct: float) -> float:
    """The upper bound of the bucket holding the pct-th percentile of the new observations."""
    bounds = sorted(after)
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan")
    for le in bounds:
        if after[le] - before.get(le, 0.0) >= total * pct / 100:
            return le
    return float("inf")


# --------------------------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    n: int
    label: str = ""  # "before" / "after" with --before
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    failed: str = ""


def wait_ready(kdns: Kdns, last_name: str, timeout: float) -> tuple[float | None, float | None]:
    """Poll /ready and DNS (the last Service's name) every 20 ms from two threads.

    Returns the seconds from Popen to /ready 200 and to the first NOERROR with an address."""
    got: dict[str, float] = {}
    deadline = kdns.started + timeout
    stop = threading.Event()

    def poll_ready() -> None:
        url = f"http://127.0.0.1:{kdns.ready_port}/ready"
        while not stop.is_set() and time.monotonic() < deadline and kdns.alive():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        got["ready"] = time.monotonic() - kdns.started
                        return
            except (urllib.error.URLError, OSError):
                pass
            stop.wait(POLL_READY)

    def poll_dns() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", kdns.dns_port))
            qid = 0
            while not stop.is_set() and time.monotonic() < deadline and kdns.alive():
                qid = qid % 0xFFFF + 1
                with contextlib.suppress(OSError):
                    sock.send(build_query(qid, last_name))
                until = time.monotonic() + POLL_READY
                while (left := until - time.monotonic()) > 0:
                    readable, _, _ = select.select([sock], [], [], left)
                    if not readable:
                        break
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        break
                    if a_records(data):  # any of our queries: the first NOERROR with an address
                        got["dns"] = time.monotonic() - kdns.started
                        return

    threads = [threading.Thread(target=f, daemon=True) for f in (poll_ready, poll_dns)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 5)
    finally:
        stop.set()
    return got.get("ready"), got.get("dns")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        for _ in range(int(RELIST_TIMEOUT / RSS_SAMPLE) + 1000):  # bounded
            rss = proc_status_kib(self.pid).get("VmRSS", 0)
            self.peak_kib = max(self.peak_kib, rss)
            self.samples += 1
            if self._stop_event.wait(RSS_SAMPLE):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)


def force_relist(server: ApiServer, kdns: Kdns, say: Say) -> dict[str, Any]:
    before = kdns.metrics()
    relists0 = per_label(before, "kdns_kube_relists_total", "kind")
    hwm_reset = reset_hwm(kdns.pid)
    sampler = RssSampler(kdns.pid)
    sampler.start()
    cpu = CpuWindow(kdns.pid)
    t0 = time.monotonic()
    server.compact()
    expired = server.faults.expire_watches()
    kinds_done: set[str] = set()
    duration = float("nan")
    stall = 0.0  # the longest /metrics took to answer (or not) during the relist
    try:
        while time.monotonic() - t0 < RELIST_TIMEOUT and kdns.alive():
            asked = time.monotonic()
            try:
                samples = kdns.metrics()
            except OSError:  # busy with the relist: not an answer yet, ask again
                stall = max(stall, time.monotonic() - asked)
                continue
            stall = max(stall, time.monotonic() - asked)
            relists = per_label(samples, "kdns_kube_relists_total", "kind")
            kinds_done = {k for k, v in relists.items() if v > relists0.get(k, 0)}
            if {"namespaces", "services", "endpointslices"} <= kinds_done:
                duration = time.monotonic() - t0
                break
            time.sleep(0.05)
        time.sleep(1.0)  # the tail of the relist: the old state is garbage now
    finally:
        sampler.stop()
    status = proc_status_kib(kdns.pid)
    say(
        f"  relist: {expired} watches expired, relisted {sorted(kinds_done)} in {duration:.2f} s"
        f"; /metrics answered within {stall:.2f} s at worst (5 s = no answer)"
    )
    return {
        "relist_s": duration,
        "relist_metrics_stall_s": stall,
        "relist_kinds": sorted(kinds_done),
        "relist_peak_sampled": sampler.peak_kib * 1024,
        "relist_hwm": status.get("VmHWM", 0) * 1024 if hwm_reset else float("nan"),
        "rss_after_relist": status.get("VmRSS", 0) * 1024,
        "relist_cpu": cpu.end(),
    }


class ChangeWriter(threading.Thread):
    """Rewrites EndpointSlices of random Services at `rate`/s for `duration` s (paced)."""

    def __init__(
        self,
        server: ApiServer,
        cluster: Cluster,
        candidates: list[int],
        rate: float,
        duration: float,
        sample_every: int,
        outbox: multiprocessing.Queue,  # type: ignore[type-arg]
        seed: int,
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.cluster, self.candidates = server, cluster, candidates
        self.rate, self.duration, self.sample_every = rate, duration, sample_every
        self.outbox = outbox
        self.rng = random.Random(seed)
        self.written = 0
        self.sampled = 0
        self.max_late = 0.0
        self.elapsed = 0.0
        self.error = ""

    def _pick(self, recent: set[int]) -> int:
        for _ in range(100):
            i = self.rng.choice(self.candidates)
            if i not in recent:
                return i
        return self.rng.choice(self.candidates)

    def run(self) -> None:
        total = int(self.rate * self.duration)
        recent: deque[tuple[float, int]] = deque()
        recent_set: set[int] = set()
        start = time.monotonic()
        try:
            for k in range(total):
                target = start + k / self.rate
                now = time.monotonic()
                if now > start + self.duration + 5:
                    break  # bounded even when the machine is starved
                if target > now:
                    time.sleep(target - now)
                else:
                    self.max_late = max(self.max_late, now - target)
                while recent and recent[0][0] < time.monotonic() - RECENT_S:
                    recent_set.discard(recent.popleft()[1])
                i = self._pick(recent_set)
                recent.append((time.monotonic(), i))
                recent_set.add(i)
                slot = self.rng.randrange(ENDPOINTS_PER_SLICE)
                ip = self.cluster.new_ip()
                self.cluster.ips[i][slot] = ip
                wall = time.time()
                self.server.update("endpointslices", self.cluster.endpointslice(i, trigger=wall))
                self.written += 1
                if k % self.sample_every == 0:
                    name = f"{dashed(ip)}.{self.cluster.fqdn(i)}"
                    self.outbox.put((wall, name, ip))
                    self.sampled += 1
        except Exception as e:  # reported in the table; the benchmark goes on
            self.error = f"{type(e).__name__}: {e}"
        self.elapsed = time.monotonic() - start


def steady_period(
    kdns: Kdns, names: list[str], qps: float, duration: float, during: Callable[[], None] | None
) -> tuple[Json | None, dict[str, float]]:
    """Run the steady client for `duration` s; `during` runs (in this thread) meanwhile."""
    child = Child(steady_client, kdns.dns_port, names, qps, duration)
    try:
        child.wait_ready()
        cpu = CpuWindow(kdns.pid)
        child.conn.send("go")
        if during is not None:
            during()
        result = child.result(duration + STEADY_GRACE + 30)
        return result, cpu.end(result["cpu"] if result else 0.0)
    finally:
        child.stop()


def change_phase(
    server: ApiServer, kdns: Kdns, cluster: Cluster, args: argparse.Namespace, names: list[str]
) -> dict[str, Any]:
    fixed = min(FIXED_NAMES, cluster.n // 10)
    candidates = list(range(fixed, cluster.n))
    sample_every = max(1, round(args.change_rate / E2E_SAMPLES_PER_S))
    ctx = multiprocessing.get_context("spawn")
    inbox: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    sampler = Child(e2e_sampler, kdns.dns_port, inbox, args.duration + E2E_TIMEOUT + 60)
    out: dict[str, Any] = {}
    spy: subprocess.Popen[bytes] | None = None
    try:
        sampler.wait_ready()
        before = kdns.metrics()
        modified0 = metric_sum(
            before, "kdns_kube_events_total", kind="endpointslices", type="MODIFIED"
        )

        def modified(samples: Samples) -> float:
            return (
                metric_sum(
                    samples, "kdns_kube_events_total", kind="endpointslices", type="MODIFIED"
                )
                - modified0
            )

        writer = ChangeWriter(
            server, cluster, candidates, args.change_rate, args.duration, sample_every, inbox, 1
        )

        raw = Path(args.profile or ".") / f"changes-{cluster.n}.txt"

        def run_writer() -> None:
            nonlocal spy
            if args.profile:
                spy = start_profiler(kdns.pid, raw, settle=0.0)
            writer.start()
            writer.join(args.duration + 10)
            # How long kdns needs after the last write to apply every event: a backlog means
            # kdns cannot keep up with the rate, whatever its per-event latency.
            ended = time.monotonic()
            while time.monotonic() - ended < EVENTS_TIMEOUT and kdns.alive():
                if modified(kdns.metrics()) >= writer.written:
                    out["drain_s"] = time.monotonic() - ended
                    break
                time.sleep(0.1)
            if spy is not None:
                err = stop_profiler(spy)
                spy = None
                out["profile"] = [f"py-spy profile of kdns during the change stream ({raw}):"] + (
                    profile_summary(raw) if raw.exists() else [f"  py-spy wrote nothing: {err}"]
                )

        steady, cpu = steady_period(kdns, names, args.qps, args.duration, run_writer)
        inbox.put(None)
        e2e = sampler.result(E2E_TIMEOUT + 30)
        # Wait (bounded) until kdns has applied every write, then read its histogram.
        applied = 0.0
        deadline = time.monotonic() + EVENTS_TIMEOUT
        while time.monotonic() < deadline and kdns.alive():
            applied = modified(kdns.metrics())
            if applied >= writer.written:
                break
            time.sleep(0.1)
        after = kdns.metrics()
        hb, ha = histogram_buckets(before), histogram_buckets(after)
        out.update(
            written=writer.written,
            write_rate=writer.written / max(1e-9, writer.elapsed),
            writer_late=writer.max_late,
            writer_error=writer.error,
            applied=applied,
            observed=ha.get(float("inf"), 0.0) - hb.get(float("inf"), 0.0),
            hist_p50=bucket_percentile(hb, ha, 50),
            hist_p99=bucket_percentile(hb, ha, 99),
            sampled=writer.sampled,
            e2e=e2e,
            steady_changes=steady,
            cpu_changes=cpu,
        )
    finally:
        if spy is not None:
            stop_profiler(spy)
        sampler.stop()
        inbox.close()
    return out


# Frames every stack passes through; left out of the inclusive list, which would be all them.
_PLUMBING = (
    "(<frozen runpy>)",
    "(<frozen importlib._bootstrap>)",
    "(<frozen importlib._bootstrap_external>)",
    "(threading.py)",
    "(trio/_core/_run.py)",
    "(trio/_core/_thread_cache.py)",
    "(trio/_threads.py)",
    "(outcome/_impl.py)",
    "(kdns/__main__.py)",
)


def _frame(frame: str) -> str:
    """`func (path/file.py:123)` → `func (path/file.py)`: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if where else name


def profile_summary(raw: Path, top: int = 12) -> list[str]:
    """Self and inclusive time per function from py-spy's raw (collapsed stacks) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            if not frame.endswith(_PLUMBING):
                inclusive[frame] += n
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; self time:"]
    lines += [f"    {100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive time:")
    lines += [f"    {100 * n / total:5.1f} %  {f}" for f, n in inclusive.most_common(top)]
    return lines


def start_profiler(pid: int, out: Path, settle: float = 0.2) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    time.sleep(settle)  # let the interpreter initialise, or py-spy cannot find its version
    argv = [spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--format", "raw"]
    return subprocess.Popen(
        [*argv, "--output", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_profiler(spy: subprocess.Popen[bytes]) -> str:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(15)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)
    return (spy.stderr.read() if spy.stderr else b"").decode(errors="replace")[-500:]


def wait_quiet(max_wait: float, say: Say) -> float:
    """Wait (bounded) until the machine is nearly idle; returns the cores busy in the last second.

    Other benchmarks and tests may share the machine; this only avoids starting in a burst."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        busy0 = system_busy_s()
        time.sleep(1.0)
        busy = system_busy_s() - busy0
        if busy < QUIET_CORES or time.monotonic() >= deadline:
            if waited:
                say(
                    f"  machine {'quiet' if busy < QUIET_CORES else 'still busy'}: {busy:.2f} cores"
                )
            return busy
        if not waited:
            say(
                f"  waiting up to {max_wait:.0f} s for the machine to be idle ({busy:.2f} cores busy)"
            )
            waited = True


def run_size(
    n: int, args: argparse.Namespace, say: Say, root: Path = REPO_ROOT, label: str = ""
) -> Result:
    result = Result(n, label)
    fig = result.figures
    workdir = Path(tempfile.mkdtemp(prefix=f"kdns-kube-sync-{n}-"))
    # HTTPS, as every cluster serves it: the handshakes and the encryption of every list and
    # watch event are in the figures, on both sides (kdns verifies the server with the CA in
    # the kubeconfig). --plain-http only to see what TLS costs.
    server = ApiServer(tls=not args.plain_http)
    kdns: Kdns | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        cluster = Cluster(n)
        t = time.monotonic()
        cluster.load(server)
        server.start()
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        say(
            f"N={n:,}: loaded {2 * n:,} objects into the API server in {time.monotonic() - t:.1f} s"
        )
        fig["busy_before"] = wait_quiet(args.wait_quiet, say)
        fig["load_avg"] = Path("/proc/loadavg").read_text().split()[0]

        # 1. ready time
        fig["revision"] = kdns_revision(root)
        kdns = Kdns(kubeconfig, workdir, root)
        busy0, self0 = system_busy_s(), _cpu_self()
        kdns.start()
        if args.profile:
            spy = start_profiler(kdns.pid, Path(args.profile) / f"sync-{n}.txt")
        ready, dns = wait_ready(kdns, cluster.fqdn(n - 1), args.ready_timeout)
        fig["ready_s"], fig["dns_s"] = ready, dns
        sync_wall = time.monotonic() - kdns.started
        fig["sync_cpu"] = proc_cpu_s(kdns.pid)
        fig["sync_bench_cores"] = (_cpu_self() - self0) / sync_wall
        fig["sync_other_cores"] = max(
            0.0, system_busy_s() - busy0 - fig["sync_cpu"] - (_cpu_self() - self0)
        ) / max(1e-9, sync_wall)
        if spy is not None:
            err = stop_profiler(spy)
            spy = None
            raw = Path(args.profile) / f"sync-{n}.txt"
            result.notes.append(f"py-spy profile of kdns from start to ready, N={n:,} ({raw}):")
            if raw.exists():
                result.notes.extend(profile_summary(raw))
            else:
                result.notes.append(f"  py-spy wrote nothing: {err.strip()}")
        if ready is None:
            result.failed = "kdns did not become ready" + ("" if kdns.alive() else " (exited)")
            say(f"  {result.failed}; log tail:\n{kdns.log_tail()}")
            return result
        say(f"  ready after {ready:.2f} s, last name answered after {dns or float('nan'):.2f} s")

        # 2. memory after sync
        time.sleep(1.0)
        status = proc_status_kib(kdns.pid)
        fig["rss_sync"] = status.get("VmRSS", 0) * 1024
        fig["hwm_sync"] = status.get("VmHWM", 0) * 1024
        say(f"  RSS after sync {fig['rss_sync'] / MIB:.1f} MiB (HWM {fig['hwm_sync'] / MIB:.1f})")
        if args.sync_only:
            return result

        # 3. forced relist
        fig.update(force_relist(server, kdns, say))
        say(
            f"  relist peak {fig['relist_peak_sampled'] / MIB:.1f} MiB sampled, "
            f"{fig['relist_hwm'] / MIB:.1f} MiB VmHWM"
        )
        if args.relist_only:
            return result
        time.sleep(1.0)

        # 5 (first half). unchanged names, idle
        names = [cluster.fqdn(i) for i in range(min(FIXED_NAMES, n // 10))]
        steady, cpu = steady_period(kdns, names, args.qps, args.duration, None)
        fig["steady_idle"], fig["cpu_idle"] = steady, cpu
        say("  idle period done")

        # 4 + 5. the change stream
        fig.update(change_phase(server, kdns, cluster, args, names))
        result.notes.extend(fig.pop("profile", []))
        fig["rss_end"] = proc_status_kib(kdns.pid).get("VmRSS", 0) * 1024
        say(
            f"  change stream: {fig['written']} writes, kdns applied {fig['applied']:.0f}, "
            f"histogram p99 ≤ {fig['hist_p99']} s"
        )
        if not kdns.alive():
            result.failed = "kdns exited during the run"
            say(kdns.log_tail())
        return result
    finally:
        if spy is not None:
            stop_profiler(spy)
        if kdns is not None:
            kdns.stop()
        server.faults.clear()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _s(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.2f} s"


def _ms(x: float | None) -> str:
    return "—" if x is None or x != x else f"{1000 * x:.1f} ms"


def _mib(x: float | None) -> str:
    return "—" if x is None or x != x or not x else f"{x / MIB:.1f} MiB"


def e2e_percentile(e2e: Json, pct: float) -> float:
    """A percentile of the end-to-end times, a timed-out change counting as infinitely late."""
    return percentile([*e2e["latencies"], *[float("inf")] * e2e["timeouts"]], pct)


def _e2e_ms(x: float) -> str:
    return f"> {E2E_TIMEOUT:g} s" if x == float("inf") else _ms(x)


def _bucket(x: float) -> str:
    if x != x:
        return "—"
    return "> 300 s" if x == float("inf") else f"≤ {1000 * x:g} ms"


def _steady(r: Json | None, key: str) -> str:
    if not r:
        return "—"
    if key == "loss":
        lost = r["sent"] - r["answered"]
        return f"{100 * lost / r['sent']:.2f} %"
    return _ms(r[key])


def _loss(r: Json | None) -> float:
    return (r["sent"] - r["answered"]) / r["sent"] if r else float("nan")


def relist_peak(f: dict[str, Any]) -> float:
    """The relist's peak RSS: the larger of the 10 ms samples and VmHWM (NaN: not reset)."""
    hwm = f.get("relist_hwm", 0.0)
    return max(f.get("relist_peak_sampled", 0), hwm if hwm == hwm else 0.0)


def verdicts(f: dict[str, Any]) -> dict[str, str]:
    """PASS / MISS per target, from one size's figures."""

    def v(ok: bool | None) -> str:
        return "—" if ok is None else ("PASS" if ok else "MISS")

    out: dict[str, str] = {}
    ready = f.get("ready_s")
    out["ready"] = v(None if ready is None else ready <= TARGET_READY_S)
    out["rss_sync"] = v(f["rss_sync"] < TARGET_RSS_MIB * MIB if "rss_sync" in f else None)
    peak = relist_peak(f)
    out["relist"] = v(peak < TARGET_RSS_MIB * MIB if "relist_peak_sampled" in f else None)
    e2e = f.get("e2e")
    if "hist_p99" in f:
        e2e_p99 = e2e_percentile(e2e, 99) if e2e else float("nan")
        ok = (
            f["hist_p99"] <= TARGET_PROGRAMMING_S
            and e2e_p99 < TARGET_PROGRAMMING_S
            and bool(e2e)
            and e2e["timeouts"] == 0
        )
        out["programming"] = v(ok)
    idle, busy = f.get("steady_idle"), f.get("steady_changes")
    if idle and busy:
        p99_ok = busy["p99"] <= max(2 * idle["p99"], idle["p99"] + 0.002)
        loss_ok = _loss(busy) <= _loss(idle) + 0.001
        out["steady"] = v(p99_ok and loss_ok)
    return out


def report(results: list[Result], args: argparse.Namespace) -> str:
    # With --before, this tree's figures ("after") are the ones judged.
    target_col = next((r for r in reversed(results) if r.n == TARGET_SIZE), None)
    judged = target_col or (results[-1] if results else None)
    verdict = verdicts(judged.figures) if judged and not judged.failed else {}
    head = ["figure", *[f"N={r.n:,} {r.label}".strip() for r in results], "target", "verdict"]
    rows: list[list[str]] = []

    def row(
        label: str, fmt: Callable[[dict[str, Any]], str], target: str = "", key: str = ""
    ) -> None:
        cells = []
        for r in results:
            try:
                cells.append(fmt(r.figures))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("—")
        rows.append([label, *cells, target, verdict.get(key, "") if key else ""])

    def e2e(f: dict[str, Any], pct: float) -> str:
        return _e2e_ms(e2e_percentile(f["e2e"], pct)) if f.get("e2e") else "—"

    row("ready: start → /ready 200", lambda f: _s(f["ready_s"]), "≤ 5 s", "ready")
    row("ready: start → last Service NOERROR", lambda f: _s(f["dns_s"]))
    row("  kdns CPU until ready", lambda f: _s(f["sync_cpu"]))
    row("  API server (bench) / other CPU, cores", lambda f: cores(f, "sync"))
    row("RSS after sync (VmRSS)", lambda f: _mib(f["rss_sync"]), "< 170 MiB", "rss_sync")
    row("  peak during start-up (VmHWM)", lambda f: _mib(f["hwm_sync"]))
    row("relist: all kinds relisted after", lambda f: _s(f["relist_s"]))
    row("  slowest /metrics answer meanwhile", lambda f: _s(f["relist_metrics_stall_s"]))
    row(
        "relist: peak RSS (10 ms samples / VmHWM)",
        lambda f: f"{_mib(f['relist_peak_sampled'])} / {_mib(f['relist_hwm'])}",
        "< 170 MiB",
        "relist",
    )
    row(
        "  relist peak ÷ RSS after sync",
        lambda f: f"{relist_peak(f) / f['rss_sync']:.2f}×",
        "≤ 1.2× (issue 11)",
    )
    row("  RSS after relist (+1 s)", lambda f: _mib(f["rss_after_relist"]))
    row("  kdns CPU during relist", lambda f: _s(f["relist_cpu"]["kdns"]))
    row(
        "changes: written (rate achieved)",
        lambda f: f"{f['written']} ({f['write_rate']:.0f}/s)",
        f"{args.change_rate:g}/s × {args.duration:g} s",
    )
    row("  applied by kdns (watch events)", lambda f: f"{f['applied']:.0f}")
    row(
        "  kdns caught up, after the last write",
        lambda f: (
            _s(f["drain_s"])
            if "drain_s" in f
            else f"> {EVENTS_TIMEOUT:g} s"
            if "written" in f
            else "—"
        ),
    )
    row("  histogram observations", lambda f: f"{f['observed']:.0f}")
    row("programming p50, kdns histogram", lambda f: _bucket(f["hist_p50"]))
    row(
        "programming p99, kdns histogram",
        lambda f: _bucket(f["hist_p99"]),
        "< 100 ms",
        "programming",
    )
    row(
        "programming e2e p50 / p99",
        lambda f: f"{e2e(f, 50)} / {e2e(f, 99)}",
        "p99 < 100 ms",
    )
    row(
        "programming e2e max (samples)",
        lambda f: (
            f"{e2e(f, 100)} ({len(f['e2e']['latencies'])} seen, {f['e2e']['timeouts']} not)"
            if f.get("e2e")
            else "—"
        ),
    )
    for key, label in (("p50", "p50"), ("p99", "p99"), ("max", "max"), ("loss", "loss")):
        row(
            f"unchanged names {label}: idle / changes",
            lambda f, key=key: (
                f"{_steady(f['steady_idle'], key)} / {_steady(f['steady_changes'], key)}"
            ),
            "not degraded (1)" if key == "p99" else "",
            "steady" if key == "p99" else "",
        )
    row(
        "  queries answered (idle / changes)",
        lambda f: f"{f['steady_idle']['answered']} / {f['steady_changes']['answered']}",
        f"{args.qps:g} qps",
    )
    row("  kdns CPU, cores (idle / changes)", lambda f: both(f, "kdns_cores"))
    row("  bench+clients CPU, cores (idle / changes)", lambda f: both(f, "bench_cores"))
    row("  other CPU, cores (idle / changes)", lambda f: both(f, "other_cores"))
    row("RSS at the end", lambda f: _mib(f["rss_end"]))
    row("kdns revision (at its start)", lambda f: f["revision"])
    row(
        "machine busy before start: cores / load",
        lambda f: f"{f['busy_before']:.2f} / {f['load_avg']}",
    )

    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    if judged is not None:
        where = (
            f"N={judged.n:,}"
            if judged.n == TARGET_SIZE
            else f"N={judged.n:,} (the targets are set for N={TARGET_SIZE:,}; indicative only)"
        )
        lines.append(f"verdicts judged at {where}; other sizes show how the figures grow.")
    lines.append(
        f"end-to-end: a change not answered within {E2E_TIMEOUT:g} s counts as infinitely late.\n"
        "(1) not degraded: p99 during changes ≤ max(2 × idle p99, idle p99 + 2 ms) and loss "
        "during changes ≤ idle loss + 0.1 %."
    )
    lines.append(
        "programming PASS needs the histogram p99 bucket ≤ 100 ms, the end-to-end p99 < 100 ms "
        "and no end-to-end timeout; histogram percentiles are bucket upper bounds; end-to-end "
        f"times are API write → first answer with the new address, polled every "
        f"{1000 * E2E_POLL_FAST:g} ms."
    )
    for r in results:
        if r.failed:
            lines.append(f"N={r.n:,}: {r.failed}")
        f = r.figures
        if f.get("writer_error"):
            lines.append(f"N={r.n:,}: change writer stopped: {f['writer_error']}")
        if f.get("relist_kinds") is not None and len(f["relist_kinds"]) < 3:
            lines.append(f"N={r.n:,}: relist NOT confirmed for every kind: {f['relist_kinds']}")
        if f.get("writer_late", 0) > 0.05:
            lines.append(
                f"N={r.n:,}: the change writer fell behind its schedule by up to "
                f"{f['writer_late'] * 1000:.0f} ms (CPU contention)"
            )
    for r in results:
        lines.extend(r.notes)
    return "\n".join(lines)


def cores(f: dict[str, Any], phase: str) -> str:
    return f"{f[phase + '_bench_cores']:.2f} / {f[phase + '_other_cores']:.2f}"


def both(f: dict[str, Any], key: str) -> str:
    return f"{f['cpu_idle'][key]:.2f} / {f['cpu_changes'][key]:.2f}"


def kdns_revision(root: Path = REPO_ROOT) -> str:
    """The commit kdns runs from, "+edits" when kdns/ has uncommitted changes (others may be
    committing while this runs: each size records the revision its kdns process started from)."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    rev = git("rev-parse", "--short", "HEAD") or "?"
    return rev + ("+edits" if git("status", "--porcelain", "--", "kdns") else "")


def environment() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (
        f"host: {os.uname().release}, {os.cpu_count()} CPUs, load {load}; Python "
        f"{sys.version.split()[0]}; kdns {kdns_revision()}\n"
        "nothing is pinned: the fake API server (this process), kdns and the client processes "
        f"share the {os.cpu_count()} CPUs; 'other' CPU is everything else on the machine (noise)."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark kdns following a (fake) cluster: sync, memory, relist, "
        "DNS programming latency, query latency under churn."
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 50_000], help="N Services (and slices)"
    )
    parser.add_argument(
        "--change-rate", type=float, default=200.0, help="EndpointSlice writes per second"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of changes (and of idle queries)"
    )
    parser.add_argument(
        "--qps", type=float, default=2000.0, help="steady queries per second for unchanged names"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, help="give up waiting for ready after this"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="before each size, wait up to this long for the machine to be idle (0: never)",
    )
    parser.add_argument("--quick", action="store_true", help="N=2000 and 3 s phases (smoke run)")
    parser.add_argument(
        "--plain-http",
        action="store_true",
        help="serve plain HTTP instead of HTTPS (no cluster does: only to see what TLS costs)",
    )
    parser.add_argument(
        "--sync-only", action="store_true", help="stop after the ready time and memory figures"
    )
    parser.add_argument(
        "--relist-only",
        action="store_true",
        help="stop after the forced relist (ready, memory and relist figures only)",
    )
    parser.add_argument(
        "--before",
        metavar="DIR",
        type=Path,
        help="a checkout of kdns to measure too: each size runs DIR's kdns, then this tree's",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="attach py-spy to kdns during sync and the change stream; raw stacks to DIR",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.duration = [2000], 3.0
    if any(n < 100 for n in args.sizes):
        parser.error("--sizes: at least 100")
    if not (0 < args.change_rate <= 5000 and 0 < args.duration <= 600 and 0 < args.qps <= 50000):
        parser.error("--change-rate, --duration or --qps out of range")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    say(environment())
    results: list[Result] = []
    for n in args.sizes:
        if args.before:
            results.append(run_size(n, args, say, args.before.resolve(), "before"))
        results.append(run_size(n, args, say, label="after" if args.before else ""))
    print(environment())
    print(
        f"kdns following a fake kube-apiserver ({'plain HTTP' if args.plain_http else 'HTTPS'}"
        f"): N Services (10 % headless) + N "
        f"EndpointSlices × {ENDPOINTS_PER_SLICE} ready endpoints; {args.change_rate:g} slice "
        f"writes/s for {args.duration:g} s; {args.qps:g} qps for unchanged names."
    )
    print()
    print(report(results, args))
    started = [r for r in results if "ready_s" in r.figures]
    return 0 if started else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the userspace relay against a direct connection and against socat.

What it measures. A backend process (this script with ``--backend``, plain sockets and a
thread per connection) listens on 127.1.0.50. The same client then reaches it three ways:

- direct: to the backend itself;
- kdns: through ``kdns serve --proxy userspace`` (a real process over a generated manifest),
  at the Service's loopback VIP, which the client looks up in kdns's DNS like a pod would;
- socat: through ``socat -b 131072 TCP-LISTEN:PORT,bind=127.0.0.1,fork,reuseaddr,nodelay
  TCP:BACKEND,nodelay``, the classic one-process-per-connection relay doing the same job, with
  kdns's read size (128 KiB; socat's default is 8 KiB) and TCP_NODELAY on both sides as kdns.

Figures, per path:

- throughput: the backend streams ``--megabytes`` (default 1,024: 1 GiB) of zeros down one
  connection, bounded by ``--seconds`` (default 20); the client reads with a 1 MiB buffer.
  Reported in MiB/s (the best of ``--rounds``).
- added latency: ``--connections`` (default 2,000) times, connect, send one byte, read the echo,
  close: p50 and p99 of that whole exchange in microseconds (nearest rank).

Ratios are against direct (throughput: path / direct; latency: path - direct in µs as well).
The relays' CPU time (from /proc/<pid>/stat, socat's forked children included) per GiB
streamed and per connection is the figure least disturbed by other load on the machine. The
CPU that everything else used meanwhile (the machine's busy time from /proc/stat, less the
relay, the client and the backend) is printed too, in cores, the most of any round per path.
The machine has 2 cores shared with other work: a relay that needs a core of its own competes
with the client and the backend for it, so take the figures as a ratio, not as absolutes.

How to run (needs socat, Debian package socat; talks only to 127.0.0.1, 127.1.0.50 and the
VIP in 127.64.0.0/10; about a minute):

    /tmp/venv/bin/python tests/bench/userspace_relay.py
    /tmp/venv/bin/python tests/bench/userspace_relay.py --quick   # 64 MiB, 200 connections

It exits 0 after printing the table, 1 when a server does not start or answers wrongly. Every
process it starts is stopped before it exits. The file name does not start with ``test_``, so
pytest does not collect it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parents[2]
BACKEND_IP = "127.1.0.50"
CHUNK = 1 << 20
RELAY_BUFFER = 128 * 1024  # bytes per read, kdns's relay and socat alike
START_TIMEOUT = 15.0


# --- the backend (a separate process, so it does not share the client's GIL) --------------------


class Backend(socketserver.BaseRequestHandler):
    """First byte S + 8-byte length: stream that many zero bytes and close. E: echo until EOF."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = sock.recv(1)
        if mode == b"S":
            (remaining,) = struct.unpack("!Q", _recv_exactly(sock, 8))
            zeros = memoryview(bytes(CHUNK))
            with contextlib.suppress(OSError):
                while remaining > 0:
                    n = sock.send(zeros[: min(CHUNK, remaining)])
                    remaining -= n
        elif mode == b"E":
            with contextlib.suppress(OSError):
                while data := sock.recv(65536):
                    sock.sendall(data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class BackendServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def serve_backend(port: int) -> None:
    with BackendServer((BACKEND_IP, port), Backend) as server:
        print("ready", flush=True)
        server.serve_forever()


# --- the client ----------------------------------------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """CPU time of a process and its waited-for children (socat's per-connection forks)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the ")".
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time every core spent not idle since boot (proc(5), the "cpu" line of /proc/stat);
    steal (time the hypervisor gave to other machines) counts as busy: it is noise too."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds so far: the relay's, ours (the client) + the backend's, the whole machine's."""

    wall: float
    relay: float
    ours: float
    machine: float

    @classmethod
    def take(cls, relay: int | None, backend: int) -> Snapshot:
        time.sleep(0.3)  # let the last connections' children exit and be reaped
        own = os.times()
        return cls(
            wall=time.monotonic(),
            relay=cpu_seconds(relay),
            ours=own.user + own.system + cpu_seconds(backend),
            machine=machine_busy_seconds(),
        )

    def other_cores(self, before: Snapshot) -> float:
        """Cores that everything but the relay, the client and the backend kept busy."""
        used = (self.machine - before.machine) - (self.relay - before.relay)
        used -= self.ours - before.ours
        return max(0.0, used) / (self.wall - before.wall)


def throughput(
    address: tuple[str, int], megabytes: int, seconds: float, mib_read: list[float]
) -> float:
    """MiB/s of one connection streaming `megabytes` (or for `seconds`, whichever ends first);
    the MiB actually read go to `mib_read[0]`."""
    total = megabytes * CHUNK
    buffer = bytearray(CHUNK)
    received = 0
    with socket.create_connection(address, timeout=10) as sock:
        start = time.perf_counter()
        sock.sendall(b"S" + struct.pack("!Q", total))
        deadline = start + seconds
        while received < total:
            n = sock.recv_into(buffer)
            if n == 0:
                break
            received += n
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - start
    if received < min(total, 1 << 20):
        raise RuntimeError(f"{address}: only {received} bytes received")
    mib_read[0] = received / CHUNK
    return received / CHUNK / elapsed


def latencies(address: tuple[str, int], count: int) -> list[float]:
    """Seconds per connect + one-byte round trip + close, `count` times."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        with socket.create_connection(address, timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"Ex")
            if sock.recv(1) != b"x":
                raise RuntimeError(f"{address}: wrong echo")
        out.append(time.perf_counter() - start)
    return out


def nearest_rank(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    rank = max(1, int(-(-percent * len(ordered) // 100)))
    return ordered[rank - 1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(address: tuple[str, int], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start listening on {address}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def process(command: list[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: default}}
spec:
  clusterIP: 10.96.7.7
  ports: [{{name: tcp, protocol: TCP, port: {port}, targetPort: {target}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bench-1
  namespace: default
  labels: {{kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{{name: tcp, protocol: TCP, port: {target}}}]
endpoints: [{{addresses: [{backend}]}}]
"""


def resolve(dns_port: int, name: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            reply = dns.query.udp(
                dns.message.make_query(name, "A"), "127.0.0.1", port=dns_port, timeout=0.5
            )
            for rrset in reply.answer:
                for rdata in rrset:
                    return rdata.to_text()
        except (OSError, dns.exception.Timeout):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"kdns did not answer {name}")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.backend:
        serve_backend(args.backend)
        return 0
    if args.quick:
        args.megabytes, args.connections, args.rounds = 64, 200, 1
    socat = shutil.which("socat")
    if socat is None:
        print("socat is not installed (Debian package socat)", file=sys.stderr)
        return 1
    target = free_port(BACKEND_IP)
    relay_port = free_port()
    socat_port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="kdns-bench-relay-"))
    try:
        (folder / "bench.yaml").write_text(
            MANIFEST.format(port=relay_port, target=target, backend=BACKEND_IP)
        )
        dns_port = free_port()
        with (
            process(
                [sys.executable, __file__, "--backend", str(target)], stdout=subprocess.PIPE
            ) as backend,
            process(
                [
                    sys.executable,
                    "-m",
                    "kdns",
                    "serve",
                    "--proxy",
                    "userspace",
                    "--manifests",
                    str(folder),
                    "--dns-addr",
                    f"127.0.0.1:{dns_port}",
                    "--health-addr",
                    "127.0.0.1:0",
                    "--ready-addr",
                    "127.0.0.1:0",
                    "--metrics-addr",
                    "127.0.0.1:0",
                    "--upstreams",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env={**os.environ, "KDNS_RESOLV_CONF": os.devnull},
            ) as kdns,
            process(
                [
                    socat,
                    # kdns's relay reads up to 128 KiB at a time (kdns/proxy/userspace.py) and
                    # sets TCP_NODELAY on both sides: socat gets the same (its default is 8 KiB).
                    "-b",
                    str(RELAY_BUFFER),
                    f"TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr,backlog=1024,nodelay",
                    f"TCP:{BACKEND_IP}:{target},nodelay",
                ]
            ) as socat_proc,
        ):
            assert backend.stdout is not None
            if backend.stdout.readline().strip() != b"ready":
                raise RuntimeError("the backend did not start")
            vip = resolve(dns_port, "bench.default.svc.cluster.local")
            paths = {
                "direct": (BACKEND_IP, target),
                "kdns": (vip, relay_port),
                "socat": ("127.0.0.1", socat_port),
            }
            wait_port(paths["kdns"], kdns, "kdns")
            wait_port(paths["socat"], socat_proc, "socat")
            relays = {"kdns": kdns.pid, "socat": socat_proc.pid}
            best_mib = dict.fromkeys(paths, 0.0)
            best_lat: dict[str, list[float]] = {}
            cpu = dict.fromkeys(paths, (float("inf"), float("inf")))
            other = dict.fromkeys(paths, (0.0, 0.0))
            # Rounds interleave the paths, so a burst of other load hits all three alike.
            for _ in range(args.rounds):
                for name, address in paths.items():
                    pid = relays.get(name)
                    before = Snapshot.take(pid, backend.pid)
                    mib = throughput(address, args.megabytes, args.seconds, mib_read := [0])
                    middle = Snapshot.take(pid, backend.pid)
                    lat = latencies(address, args.connections)
                    after = Snapshot.take(pid, backend.pid)
                    best_mib[name] = max(best_mib[name], mib)
                    cpu[name] = (
                        min(cpu[name][0], (middle.relay - before.relay) / (mib_read[0] / 1024)),
                        min(cpu[name][1], (after.relay - middle.relay) / args.connections),
                    )
                    other[name] = (
                        max(other[name][0], middle.other_cores(before)),
                        max(other[name][1], after.other_cores(middle)),
                    )
                    if name not in best_lat or nearest_rank(lat, 50) < nearest_rank(
                        best_lat[name], 50
                    ):
                        best_lat[name] = lat
            results = {
                name: (best_mib[name], nearest_rank(lat, 50), nearest_rank(lat, 99))
                for name, lat in best_lat.items()
            }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    direct_mib, direct_p50, direct_p99 = results["direct"]
    print(
        f"userspace relay benchmark: {args.megabytes} MiB stream (≤ {args.seconds:g} s), "
        f"{args.connections} connections of one 1-byte round trip; best of {args.rounds}"
    )
    print(
        f"{'path':8} {'MiB/s':>9} {'x direct':>9} {'p50 µs':>9} {'p99 µs':>9} "
        f"{'+p50 µs':>9} {'+p99 µs':>9}"
    )
    for name, (mib, p50, p99) in results.items():
        print(
            f"{name:8} {mib:9.0f} {mib / direct_mib:9.2f} {p50 * 1e6:9.0f} {p99 * 1e6:9.0f} "
            f"{(p50 - direct_p50) * 1e6:9.0f} {(p99 - direct_p99) * 1e6:9.0f}"
        )
    for name in ("kdns", "socat"):
        per_gib, per_conn = cpu[name]
        print(
            f"{name} relay CPU: {per_gib:.2f} s per GiB streamed, "
            f"{per_conn * 1e6:.0f} µs per connection"
        )
    kdns_mib, kdns_p50, _ = results["kdns"]
    socat_mib, socat_p50, _ = results["socat"]
    print(
        f"kdns / socat: throughput {kdns_mib / socat_mib:.2f}x, "
        f"p50 latency {kdns_p50 / socat_p50:.2f}x, "
        f"CPU per GiB {cpu['kdns'][0] / cpu['socat'][0]:.2f}x, "
        f"CPU per connection {cpu['kdns'][1] / cpu['socat'][1]:.2f}x"
    )
    print(
        "other processes (everything but the relay, the client and the backend), the most of "
        "any round, in cores busy: "
        + "; ".join(
            f"{name} stream {stream:.2f}, connections {conns:.2f}"
            for name, (stream, conns) in other.items()
        )
    )
    print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

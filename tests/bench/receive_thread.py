"""Benchmark: the UDP receive thread under GIL contention from the trio thread.

kdns answers answer-cache hits in a receive thread of its own (kdns/dns/receiver.py) while the
trio thread owns the store: an informer applying a relist, or the slow path answering misses,
holds the GIL the receive thread needs. This measures what that costs the cache hits.

It serves N ClusterIP Services (default 1,000) from an in-process store with `DnsServer` on
127.0.0.1 (the server pinned to one core, dnsperf to the other), and runs dnsperf at a paced
rate in each scenario:

- `idle`: nothing else runs in the trio thread;
- `relist`: every `--period` seconds the trio thread replaces every Service (each one's
  ClusterIP changes, so the resolver rebuilds and the answer cache drops each name), which is
  the CPU burst of a relist; the burst's length is reported;
- `misses`: `--miss-pct` % of the queries are never-asked names (NXDOMAIN), each handed to trio
  and answered by the slow path (the same hand-over a forwarded question takes);
- each with each of the receive thread's loops (`--loops`, default all three, interleaved:
  `packet`, one recvfrom per packet, each giving the GIL away; `batch`, recvmmsg holding the
  GIL while a queue is read and answered; `auto`, kdns's default, per packet until a send
  waited for the GIL, then batches), with CPython's default GIL switch interval (5 ms:
  how long a thread waiting for the GIL waits before the holder is made to let go) and, if
  `--switch` is given, with that one too.

Figures per scenario: achieved qps, lost queries, dnsperf's average and maximum latency, and
the server's CPU per answered query (the process's utime + stime). A measurement, not a test:
it exits 0 either way. Only talks to 127.0.0.1.

    .venv/bin/python tests/bench/receive_thread.py [--qps 20000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from kdns.config import Config  # noqa: E402
from kdns.dns.handler import Handler  # noqa: E402
from kdns.dns.resolver import Resolver  # noqa: E402
from kdns.dns.server import DnsServer  # noqa: E402
from kdns.model import Namespace, Service, service_from_dict  # noqa: E402
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store  # noqa: E402

NAMESPACE = "bench"
ZONE = "cluster.local"


def services(count: int, generation: int) -> dict:
    out = {}
    for i in range(count):
        # Every relist changes every ClusterIP: the resolver redoes each name.
        ip = f"10.{96 + generation % 2}.{i // 250}.{i % 250 + 1}"
        service: Service = service_from_dict(
            {
                "metadata": {"name": f"svc-{i}", "namespace": NAMESPACE},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
            }
        )
        out[service.key] = service
    return out


def query_file(path: Path, count: int, miss_pct: float, lines: int = 100_000) -> None:
    rng = random.Random(20261206)
    with path.open("w") as out:
        for n in range(lines):
            if rng.random() * 100 < miss_pct:
                out.write(f"never-{n}-{rng.randrange(1 << 30)}.{NAMESPACE}.svc.{ZONE} A\n")
            else:
                out.write(f"svc-{rng.randrange(count)}.{NAMESPACE}.svc.{ZONE} A\n")


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def parse_dnsperf(text: str) -> dict[str, float]:
    def number(pattern: str) -> float:
        found = re.search(pattern, text)
        return float(found.group(1)) if found else float("nan")

    return {
        "completed": number(r"Queries completed:\s+(\d+)"),
        "lost": number(r"Queries lost:\s+(\d+)"),
        "qps": number(r"Queries per second:\s+([\d.]+)"),
        "avg_ms": number(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        "max_ms": number(r"Average Latency \(s\):.*max ([\d.]+)") * 1000,
    }


async def relist(store: Store, count: int, period: float, bursts: list[float]) -> None:
    generation = 1
    while True:
        await trio.sleep(period)
        start = time.perf_counter()
        store.replace(SERVICES, services(count, generation))
        bursts.append(time.perf_counter() - start)
        generation += 1


async def scenario(
    args: argparse.Namespace, name: str, queries: Path, churn: bool, switch: float, loop: str
) -> str:
    os.environ["KDNS_BENCH_UDP_RECEIVE"] = loop  # read when the server starts its thread
    store = Store()
    resolver = Resolver(store, Config())
    handler = Handler(resolver)
    store.subscribe(lambda change: handler.cache.drop(resolver.apply(change)))
    store.replace(NAMESPACES, {NAMESPACE: Namespace(NAMESPACE)})
    store.replace(SERVICES, services(args.services, 0))
    store.replace(ENDPOINTSLICES, {})
    store.replace(PODS, {})
    bursts: list[float] = []
    async with trio.open_nursery() as nursery:
        server = DnsServer(handler, "127.0.0.1", 0)
        _, port = await nursery.start(server.run)
        sys.setswitchinterval(switch)
        command = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries)]
        command += ["-c", "4", "-T", "1", "-q", "200", "-t", "1"]
        pin = ["taskset", "-c", args.client_cpu] if shutil.which("taskset") else []
        # Warm the cache (every Service asked once), then measure.
        await trio.run_process([*pin, *command, "-l", "2"], capture_stdout=True)
        if churn:
            nursery.start_soon(relist, store, args.services, args.period, bursts)
        before = cpu_seconds()
        done = await trio.run_process(
            [*pin, *command, "-l", str(args.seconds), "-Q", str(args.qps)],
            capture_stdout=True,
        )
        used = cpu_seconds() - before
        nursery.cancel_scope.cancel()
    sys.setswitchinterval(0.005)
    figures = parse_dnsperf(done.stdout.decode())
    cpu_us = used / figures["completed"] * 1e6 if figures["completed"] else float("nan")
    burst = f"{1000 * max(bursts):.0f} ms max of {len(bursts)}" if bursts else "-"
    return (
        f"{name:<28} {loop:<7} {switch * 1000:>5.1f} ms {figures['qps']:>9.0f} {figures['lost']:>7.0f} "
        f"{figures['avg_ms']:>8.2f} {figures['max_ms']:>8.1f} {cpu_us:>8.1f}   {burst}"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hits, mixed = Path(tmp, "hits.txt"), Path(tmp, "mixed.txt")
        query_file(hits, args.services, 0.0)
        query_file(mixed, args.services, args.miss_pct)
        print(
            f"{args.services} Services, dnsperf -Q {args.qps} for {args.seconds} s, "
            f"server on CPU {args.server_cpu}, dnsperf on CPU {args.client_cpu}; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'scenario':<28} {'loop':<7} {'switch':>8} {'qps':>9} {'lost':>7} {'avg ms':>8} "
            f"{'max ms':>8} {'µs/query':>8}   relist burst"
        )
        for _ in range(args.rounds):
            for name, queries, churn in (
                ("idle", hits, False),
                (f"relist every {args.period} s", hits, True),
                (f"misses {args.miss_pct:g} %", mixed, False),
            ):
                for switch in (0.005, *([args.switch] if args.switch else [])):
                    for loop in args.loops.split(","):
                        line = await scenario(args, name, queries, churn, switch, loop)
                        print(line, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--qps", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--period", type=float, default=0.5, help="seconds between relists")
    parser.add_argument("--miss-pct", type=float, default=10.0)
    parser.add_argument("--switch", type=float, default=0.0, help="another switch interval (s)")
    parser.add_argument("--loops", default="packet,auto,batch", help="receive loops to compare")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    arguments = parser.parse_args()
    if not shutil.which("dnsperf"):
        sys.exit("needs dnsperf")
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {int(arguments.server_cpu)})
    trio.run(main, arguments)

"""Benchmark: cluster names never asked before (a random-subdomain flood), two kdns trees side by side.

What it measures. kdns serves N ClusterIP Services (``tests/bench/dns_vs_dnsmasq.py``'s
manifests) and dnsperf sends names no one asked before: ``<random>.bench.svc.cluster.local``
(NXDOMAIN with the SOA), ``<random>.svc.cluster.local`` (a namespace that does not exist:
NXDOMAIN) and, with ``--mix random-nx`` (the default) nothing else; ``--mix cold`` adds a
quarter of existing names asked for the first time after the server started (A answers, the
miss path too). Every measurement starts a fresh kdns, so no name is in its answer cache, and
each query file is long enough that dnsperf never wraps around within one run.

Two trees are run interleaved (``--before`` a checkout of the old code, e.g. ``/work/main``,
and this one), ``--rounds`` times each, and for each the script prints:

- closed-loop qps: dnsperf without ``-Q``, 100 queries in flight;
- server CPU per query at a paced rate (``--paced-qps``, default 10,000): utime + stime of the
  server process over the answered queries — the figure to compare on a loaded machine, where
  qps is noisy;
- lost queries, and the rcodes seen (all must be NXDOMAIN for random-nx).

Then the ratio after / before. It is a measurement, not a test: it exits 0 whatever the
figures (1 when a server does not start). The server runs pinned to ``--server-cpu`` and
dnsperf to ``--client-cpu``. Only 127.0.0.1 is used.

    .venv/bin/python tests/bench/cold_names.py --before /work/main
    .venv/bin/python tests/bench/cold_names.py --before /work/main --quick

The file name does not start with ``test_``, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.bench.dns_vs_dnsmasq import (
    DEFAULT_KDNS_CMD,
    NAMESPACE,
    REPO_ROOT,
    ZONE,
    PerfResult,
    PerfSettings,
    Server,
    make_services,
    pick_ports,
    run_dnsperf,
    running,
    write_manifests,
)

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def random_label(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(8, 16)))


def write_queries(path: Path, lines: int, mix: str, services: int, rng: random.Random) -> None:
    """`lines` questions, none repeated (random labels of 8-16 characters)."""
    with path.open("w") as out:
        for i in range(lines):
            pick = rng.random()
            if mix == "cold" and pick < 0.25:
                # An existing Service, asked once: a cold A answer (wraps after N Services).
                out.write(f"svc-{i % services}.{NAMESPACE}.svc.{ZONE} A\n")
            elif pick < 0.6:
                out.write(f"{random_label(rng)}.{NAMESPACE}.svc.{ZONE} A\n")
            else:
                out.write(f"{random_label(rng)}.svc.{ZONE} A\n")


def kdns_server(tree: Path, name: str, args: argparse.Namespace, tmp: Path, ready: str) -> Server:
    (port,) = pick_ports(1)
    argv = shlex.split(
        DEFAULT_KDNS_CMD.format(
            python=shlex.quote(args.python),
            manifests=shlex.quote(str(tmp / "manifests")),
            port=port,
            addr=f"127.0.0.1:{port}",
        )
    )
    env = dict(os.environ, KDNS_LAMEDUCK="0", PYTHONPATH=str(tree))
    return Server(
        name, argv, port, tmp / f"{name}.log", args.server_cpu, cwd=tree, env=env, ready_name=ready
    )


def one_run(server: Server, settings: PerfSettings, duration: float, qps: int | None) -> PerfResult:
    with running(server, timeout=60):
        return run_dnsperf(settings, server, duration, qps)


def show(name: str, closed: list[PerfResult], paced: list[PerfResult]) -> tuple[float, float]:
    qps = statistics.median(r.qps for r in closed)
    cpu = statistics.median(r.server_cpu_s / max(1, r.completed) * 1e6 for r in paced)
    lost = sum(r.lost for r in (*closed, *paced))
    codes: dict[str, int] = {}
    for r in (*closed, *paced):
        for code, n in r.rcodes.items():
            codes[code] = codes.get(code, 0) + n
    print(
        f"{name:8s} closed-loop {qps:9,.0f} qps (runs: {', '.join(f'{r.qps:,.0f}' for r in closed)})"
        f"  CPU/query at {paced[0].target_qps:,} qps {cpu:6.1f} µs"
        f" (runs: {', '.join(f'{r.server_cpu_s / max(1, r.completed) * 1e6:.1f}' for r in paced)})"
        f"  lost {lost}  rcodes {codes}",
        flush=True,
    )
    return qps, cpu


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--mix", choices=("random-nx", "cold"), default="random-nx")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    parser.add_argument("--paced-qps", type=int, default=10_000)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if not 1 <= args.rounds <= 10 or not 0.5 <= args.duration <= 30:
        parser.error("--rounds must be 1..10 and --duration 0.5..30 s")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    trees = [("before", args.before)] if args.before else []
    trees.append(("after", REPO_ROOT))
    services = make_services(args.services)
    rng = random.Random(20261206)
    with tempfile.TemporaryDirectory(prefix="kdns-cold-") as name:
        tmp = Path(name)
        write_manifests(tmp / "manifests", services)
        # Enough names that no run wraps around: closed-loop kdns stays well under 200k qps.
        lines = int(200_000 * args.duration)
        closed: dict[str, list[PerfResult]] = {t: [] for t, _ in trees}
        paced: dict[str, list[PerfResult]] = {t: [] for t, _ in trees}
        for round_ in range(args.rounds):
            for tree_name, tree in trees:
                for qps, into in ((None, closed), (args.paced_qps, paced)):
                    query_file = tmp / "queries.txt"
                    write_queries(query_file, lines, args.mix, args.services, rng)
                    settings = PerfSettings(query_file, tmp, args.client_cpu, 0, 100)
                    server = kdns_server(tree, tree_name, args, tmp, services[0].fqdn)
                    into[tree_name].append(one_run(server, settings, args.duration, qps))
            print(f"round {round_ + 1} done", flush=True)
        figures = {t: show(t, closed[t], paced[t]) for t, _ in trees}
        if "before" in figures:
            (q0, c0), (q1, c1) = figures["before"], figures["after"]
            print(f"after/before: qps {q1 / q0:.2f}x, CPU per query {c1 / c0:.2f}x")
        print(
            f"target: >= 40,000 qps of never-asked names: {'PASS' if figures['after'][0] >= 40_000 else 'MISS'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

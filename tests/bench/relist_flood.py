"""Benchmark: memory and lost queries when a random-name flood meets a forced relist (issue 11).

What it measures. The test API server (``tests/kubeapi/server.py``, HTTPS, in this process)
holds N Services (``--services``, default 10,000) and their EndpointSlices, as in
``kube_sync.py``; ``kdns serve`` follows it as a subprocess. Once kdns is ready:

1. dnsperf floods it with names nobody asked before (``<random>.ns-K.svc.cluster.local`` A,
   NXDOMAIN; the query file is longer than ``--qps`` × ``--duration``, so no name repeats), paced
   at ``--qps`` (default 20,000) for ``--duration`` seconds: no answer can come from a cache
   (the receive thread answers such names itself, `Handler.denial`, and stores nothing);
2. meanwhile a second client process asks 100 existing Services' names at ``--steady-qps``
   (default 200), paced, for the whole flood: every one of those queries must be answered
   (loss = no answer within 1 s after the period);
3. ``--relist-after`` seconds into the flood the API server compacts its history and sends
   every open watch an ERROR 410 event (what a real apiserver's watch cache does), so every
   Reflector relists while the flood goes on; the relist must finish within the flood.

Printed: kdns's RSS before the flood, its peak over the whole flood (VmHWM, reset just before,
and 10 ms samples), RSS at the end; the relist's duration; dnsperf's sent / completed / lost;
the steady client's sent / answered / lost / wrong rcode and latency. Targets (issue 11): peak
RSS < 200 MiB and no steady query lost. The flood's own losses are reported, not judged: at a
rate over what kdns can build answers for, dnsperf's queries time out by design (dnsperf keeps
up to `--qps` × 2 s of queries in flight, so the pacing sets the rate offered).

Caveats. Nothing is pinned: the API server (this process), kdns, dnsperf and the steady client
share the machine's cores; the load average is printed with the figures.

How to run (only 127.0.0.1; not collected by pytest):

    .venv/bin/python tests/bench/relist_flood.py
    .venv/bin/python tests/bench/relist_flood.py --no-relist        # the same flood, no relist
    .venv/bin/python tests/bench/relist_flood.py --services 2000 --duration 8   # smoke run

``--no-relist`` is the control: what the flood alone costs in memory and in lost queries, so
what the relist adds can be told apart.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for `tests.…` when run as a script

from tests.bench.kube_sync import (  # noqa: E402
    MIB,
    NAMESPACES,
    ZONE,
    Child,
    Cluster,
    Kdns,
    RssSampler,
    proc_status_kib,
    reset_hwm,
    steady_client,
    wait_ready,
)
from tests.kubeapi.server import ApiServer  # noqa: E402

TARGET_PEAK_MIB = 200.0
STEADY_NAMES = 100
STEADY_GRACE = 1.0  # kube_sync's steady client: answers later than this count as lost
DNSPERF_TIMEOUT_S = 2  # a flood query unanswered after this long is lost
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def flood_file(path: Path, count: int, seed: int = 11) -> None:
    """`count` distinct never-asked names under the cluster's namespaces (dnsperf format)."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(count):
            label = "".join(rng.choice(ALPHABET) for _ in range(12))
            out.write(f"{label}{i}.ns-{i % NAMESPACES}.svc.{ZONE} A\n")


def start_dnsperf(port: int, query_file: Path, qps: int, duration: float, out: Path) -> Any:
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
        "-Q",
        str(qps),
        # Enough queries in flight that the pacing, not unanswered queries, sets the rate
        # offered: an overloaded server must see the whole flood (a dnsperf socket holds up to
        # 65,536 query IDs).
        "-q",
        str(min(60_000, qps * DNSPERF_TIMEOUT_S)),
        "-t",
        str(DNSPERF_TIMEOUT_S),
    ]
    with out.open("wb") as sink:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)


def dnsperf_figures(text: str) -> dict[str, float]:
    """Queries sent / completed / lost and the achieved rate from dnsperf's statistics."""
    figures: dict[str, float] = {}
    for key, pattern in (
        ("sent", r"Queries sent:\s+(\d+)"),
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("qps", r"Queries per second:\s+([\d.]+)"),
    ):
        match = re.search(pattern, text)
        if match:
            figures[key] = float(match.group(1))
    return figures


RELISTED = ("namespaces", "services", "endpointslices")
RELIST_TIMEOUT = 120.0


def force_relist(server: ApiServer, say: Any) -> dict[str, Any]:
    """Expire every watch (410, after compacting the history) and wait, bounded, until every
    kind has listed again and opened its next watch. Told by the API server's own request
    counts, not by kdns's /metrics: under the flood kdns may not answer HTTP for seconds."""
    stats = server.stats
    lists0 = {r: stats.count(kind="list", resource=r) for r in RELISTED}
    watches0 = {r: stats.count(kind="watch", resource=r) for r in RELISTED}
    started = time.monotonic()
    server.compact()
    expired = server.faults.expire_watches()
    done_at: dict[str, float] = {}  # listed again, then watching again: the list was applied
    for _ in range(int(RELIST_TIMEOUT / 0.05)):  # bounded
        for r in RELISTED:
            # After a 410 a Reflector lists before it watches again, so a new watch on top of
            # a new list means the relist was applied (a small kind does both within one poll).
            if r not in done_at and (
                stats.count(kind="list", resource=r) > lists0[r]
                and stats.count(kind="watch", resource=r) > watches0[r]
            ):
                done_at[r] = time.monotonic() - started
        if len(done_at) == len(RELISTED):
            break
        time.sleep(0.05)
    duration = max(done_at.values()) if len(done_at) == len(RELISTED) else float("nan")
    say(f"  relist: {expired} watches expired; relisted {sorted(done_at)} after {duration:.2f} s")
    return {"relist_s": duration, "relist_kinds": sorted(done_at)}


def run(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="kdns-relist-flood-"))
    server = ApiServer()
    kdns: Kdns | None = None
    steady: Child | None = None
    try:
        cluster = Cluster(args.services)
        cluster.load(server)
        server.start()
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        query_file = workdir / "flood.txt"
        flood_file(query_file, int(args.qps * args.duration * 1.1) + 1000)
        kdns = Kdns(kubeconfig, workdir, args.kdns.resolve())
        kdns.start()
        ready, _ = wait_ready(kdns, cluster.fqdn(args.services - 1), args.ready_timeout)
        if ready is None:
            raise RuntimeError(f"kdns did not become ready:\n{kdns.log_tail()}")
        time.sleep(1.0)
        fig["rss_before"] = proc_status_kib(kdns.pid).get("VmRSS", 0) * 1024
        say(f"ready after {ready:.1f} s; RSS {fig['rss_before'] / MIB:.1f} MiB")

        names = [cluster.fqdn(i) for i in range(0, args.services, args.services // STEADY_NAMES)]
        steady = Child(steady_client, kdns.dns_port, names, args.steady_qps, args.duration)
        steady.wait_ready()
        fig["hwm_reset"] = reset_hwm(kdns.pid)
        sampler = RssSampler(kdns.pid)
        sampler.start()
        fig["load_before"] = Path("/proc/loadavg").read_text().split()[0]
        perf_out = workdir / "dnsperf.out"
        perf = start_dnsperf(kdns.dns_port, query_file, args.qps, args.duration, perf_out)
        steady.conn.send("go")
        started = time.monotonic()
        try:
            relist: dict[str, Any] = {}
            relister = threading.Thread(
                target=lambda: relist.update(force_relist(server, say)), daemon=True
            )
            if not args.no_relist:
                time.sleep(args.relist_after)
                relister.start()
            perf.wait(timeout=args.duration + DNSPERF_TIMEOUT_S + 30)
            fig["flood_wall"] = time.monotonic() - started
            if not args.no_relist:
                relister.join(timeout=300)
        finally:
            if perf.poll() is None:
                perf.kill()
                perf.wait(timeout=10)
            sampler.stop()
        fig["steady"] = steady.result(STEADY_GRACE + 30)
        status = proc_status_kib(kdns.pid)
        fig["peak_sampled"] = sampler.peak_kib * 1024
        fig["hwm"] = status.get("VmHWM", 0) * 1024 if fig["hwm_reset"] else float("nan")
        fig["rss_end"] = status.get("VmRSS", 0) * 1024
        fig["relist_s"] = relist.get("relist_s", float("nan"))
        fig["relist_kinds"] = relist.get("relist_kinds", [])
        fig["flood"] = dnsperf_figures(perf_out.read_text(errors="replace"))
        fig["load_after"] = Path("/proc/loadavg").read_text().split()[0]
        fig["alive"] = kdns.alive()
        return fig
    finally:
        if steady is not None:
            steady.stop()
        if kdns is not None:
            kdns.stop()
        server.faults.clear()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(fig: dict[str, Any], args: argparse.Namespace) -> str:
    peak = max(fig["peak_sampled"], fig["hwm"] if fig["hwm"] == fig["hwm"] else 0.0)
    steady = fig["steady"] or {}
    lost = steady.get("sent", 0) - steady.get("answered", 0) if steady else None
    flood = fig["flood"]
    relisted = {"namespaces", "services", "endpointslices"} <= set(fig["relist_kinds"])
    relist_line = (
        "none (--no-relist: the control run)"
        if args.no_relist
        else f"{fig['relist_s']:8.2f} s "
        + ("(every kind relisted)" if relisted else f"(NOT every kind: {fig['relist_kinds']})")
    )
    ok_peak = peak < TARGET_PEAK_MIB * MIB
    ok_lost = lost == 0 and steady.get("bad_rcode", 1) == 0
    lines = [
        f"{args.services:,} Services; flood of never-asked names at {args.qps:,} qps for "
        f"{args.duration:g} s; "
        + ("no relist; " if args.no_relist else f"forced relist after {args.relist_after:g} s; ")
        + f"{args.steady_qps:g} qps of existing names alongside "
        f"(load average {fig['load_before']} before, {fig['load_after']} after)",
        f"RSS before the flood          {fig['rss_before'] / MIB:8.1f} MiB",
        f"peak RSS during the flood     {peak / MIB:8.1f} MiB (10 ms samples "
        f"{fig['peak_sampled'] / MIB:.1f}, VmHWM {fig['hwm'] / MIB:.1f})   target < "
        f"{TARGET_PEAK_MIB:g} MiB {'✔' if ok_peak else '✘'}",
        f"RSS at the end                {fig['rss_end'] / MIB:8.1f} MiB",
        f"relist                        {relist_line}",
        f"flood (dnsperf)               sent {flood.get('sent', 0):,.0f}, completed "
        f"{flood.get('completed', 0):,.0f}, lost {flood.get('lost', 0):,.0f} "
        f"({flood.get('sent', 0) / args.duration:,.0f} qps offered, "
        f"{flood.get('qps', 0):,.0f} answered)",
        f"existing names                sent {steady.get('sent', 0):,}, answered "
        f"{steady.get('answered', 0):,}, lost {lost}, wrong rcode {steady.get('bad_rcode')}, "
        f"p50 {steady.get('p50', float('nan')) * 1e3:.1f} ms, p99 "
        f"{steady.get('p99', float('nan')) * 1e3:.1f} ms, max "
        f"{steady.get('max', float('nan')) * 1e3:.1f} ms   target: none lost "
        f"{'✔' if ok_lost else '✘'}",
    ]
    if not fig["alive"]:
        lines.append("kdns exited during the run ✘")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=10_000, help="N Services (and slices)")
    parser.add_argument("--qps", type=int, default=20_000, help="flood rate, paced")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of flood")
    parser.add_argument(
        "--relist-after", type=float, default=5.0, help="seconds into the flood to force a relist"
    )
    parser.add_argument(
        "--steady-qps", type=float, default=200.0, help="rate of queries for existing names"
    )
    parser.add_argument(
        "--no-relist", action="store_true", help="the control run: the same flood, no relist"
    )
    parser.add_argument(
        "--kdns",
        metavar="DIR",
        type=Path,
        default=REPO_ROOT,
        help="the checkout whose kdns runs (default: this one), to compare another in one sitting",
    )
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if not 100 <= args.services <= 100_000:
        parser.error("--services: 100 to 100,000")
    if not (0 < args.qps <= 200_000 and 1 <= args.duration <= 300):
        parser.error("--qps or --duration out of range")
    if not 0 <= args.relist_after < args.duration:
        parser.error("--relist-after must fall within the flood")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if shutil.which("dnsperf") is None:
        say("dnsperf is not installed (apt-get install dnsperf)")
        return 1
    fig = run(args, say)
    print(report(fig, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

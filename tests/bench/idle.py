"""Benchmark: the CPU an idle `kdns serve --manifests config/examples` uses, before and after.

What it measures. kdns is started as a subprocess from each checkout given (``<python> -m kdns
serve --manifests CHECKOUT/config/examples --dns-addr 127.0.0.1:P``, run from the checkout so
that ``import kdns`` is its own), waited for until it answers redis.default.svc.cluster.local,
left alone for ``--settle`` seconds (start-up work done), then its CPU seconds (user + system,
from /proc/PID/stat) are read over ``--seconds`` (default 20) of nothing: no query, no change.
Printed per round: milliseconds of CPU per second, and the load average. With ``--before DIR``
the same is done for another checkout (e.g. main's), interleaved round by round.

Caveats. The kernel accounts CPU time in ticks (10 ms here), so over 20 s one tick is 0.5 ms/s:
idle figures below 1 ms/s are a few ticks each; take more ``--seconds`` to see them finer. The
machine's other work does not add to this figure, but it may delay the process's wake-ups.

How to run (only talks to 127.0.0.1; pytest does not collect it):

    .venv/bin/python tests/bench/idle.py --before /path/to/main-checkout --rounds 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.manifests import REPO, cpu_seconds, free_port, wait_for

NAME = "redis.default.svc.cluster.local."
ADDRESS = "10.97.97.97"  # config/examples/redis.yaml


def idle_ms_per_s(checkout: Path, seconds: float, settle: float) -> float:
    port = free_port()
    argv = [sys.executable, "-m", "kdns", "serve", "--manifests", str(checkout / "config/examples")]
    argv += ["--dns-addr", f"127.0.0.1:{port}", "--upstreams"]  # nothing leaves loopback
    for flag in ("--health-addr", "--ready-addr", "--metrics-addr"):
        argv += [flag, "127.0.0.1:0"]
    env = dict(os.environ, KDNS_RESOLV_CONF=os.devnull)
    proc = subprocess.Popen(
        argv, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(port, NAME, ADDRESS, time.monotonic() + 60, proc)
        time.sleep(settle)
        cpu, started = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)  # what is measured: nothing happening
        return 1000 * (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - started)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPO)
    parser.add_argument("--before", type=Path, help="another checkout, measured interleaved")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    checkouts = [args.checkout] + ([args.before] if args.before else [])
    for round_ in range(1, args.rounds + 1):
        for checkout in checkouts:
            figure = idle_ms_per_s(checkout, args.seconds, args.settle)
            load = os.getloadavg()[0]
            print(f"round {round_} {checkout}: {figure:.2f} ms CPU/s idle (load {load:.2f})")


if __name__ == "__main__":
    main()

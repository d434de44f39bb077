"""Benchmark: the node DNS's answers while `kdns proxy --dns` syncs a large rule set, with
CPython's default switch interval (5 ms) and with `interpreter.answer_promptly()`'s (1 ms).

Why: `kdns proxy --dns` answers DNS on the node from its UDP receive thread while its trio
thread and the data plane's worker thread run Python for every sync (routes rebuilt, rules
rendered), tens to hundreds of milliseconds for thousands of Services. The receive thread
releases the GIL in every recvfrom/sendto and gets it back only when the holder lets go: after
the switch interval (kdns/interpreter.py). This measures what that costs a node DNS client.

What it measures, inside throwaway network namespaces (proxy_sync.py's `Lab`: a "node", a
client "pod" and a "backend" namespace, deleted at the end, even when interrupted; nothing
touches the host's tables), with the fake kube-apiserver (``tests/kubeapi``, plain HTTP, in this
process) holding N Services (``--services``, default 5,000; proxy_sync.py's cluster, 3
endpoints each), this node's Node object and a few names to ask:

- The real ``python -m kdns`` proxy (``--mode``, nftables by default; ``--min-sync-period 1``,
  kube-proxy's default) with ``--dns 169.254.20.10``, started through a two-line wrapper that
  sets the interpreter as the variant says before the command runs: ``default`` (CPython's
  5 ms interval and youngest-generation threshold 700; the wrapper makes
  `interpreter.answer_promptly` a no-op, so the variant stays CPython's whatever the tree
  calls) or ``prompt`` (`interpreter.answer_promptly()` called first); ``--variants`` adds
  ``interval`` (its 1 ms interval alone) and ``young`` (its threshold of 10,000 alone), to take
  the two apart. One start per variant and round, in alternating order (the list forwards in
  odd rounds, backwards in even ones); rules cleaned up after each stop.
- Per start, once the proxy has synced and its node DNS answers: a paced client (its own
  process, in the node namespace, as big_answer.py's: one cached name, ``--qps`` a second for
  ``--seconds``, each answer matched by ID, 1 s of grace at the end) in two phases:
  ``idle`` (nothing changes: no sync runs) and ``syncing`` (this node's zone label flipped
  every ``--flip-every`` seconds through the API server: each flip makes the next sync a full
  one that rebuilds every route and renders and applies every rule, kube-proxy's
  OnTopologyChange; the 1 s min-sync-period makes that back-to-back full syncs). Printed:
  p50 / p99 / max of the client's round trips and the answers lost, per phase, variant and run;
  the full syncs of the syncing phase (count and median engine time, from the proxy's log
  line), so a setting that slows the syncs shows; and the proxy's cycle collections of 10 ms or
  more (the wrapper logs each collection's duration through `gc.callbacks`): a collection holds
  the GIL throughout, whatever the switch interval.
- The control: every 5th slot the client also probes a UDP echo in a process of its own (its
  own GIL, nothing else to do), right after that slot's question. What the echo waits is what
  the machine adds (the client or every process waiting for a CPU, the kernel applying a large
  rule set); the node DNS's round trip less the echo's of the same slot ("over the echo",
  paired: p99, and the share over 5 ms) is what the proxy's process adds.

Caveats. Nothing is pinned; the API server (this process), the proxy, nft and the client share
the machine's CPUs with whatever else runs: the load average is printed with each run. The
client's own Python is in every figure alike.

How to run (root; nftables or iptables, and iproute2 installed; the file name does not start
with ``test_``, so pytest does not collect it):

    .venv/bin/python tests/bench/node_dns_sync.py                      # 5,000 Services, 2 rounds
    .venv/bin/python tests/bench/node_dns_sync.py --services 1000 --rounds 1 --seconds 5  # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for `tests.*` when run as a script

from tests.bench import node_dns, proxy_sync  # noqa: E402
from tests.processes import stop_process  # noqa: E402

Json = dict[str, Any]
Say = Callable[[str], None]

# What each variant of the interpreter is (the wrapper sets it): the two compared, and two
# that take answer_promptly()'s settings apart (`--variants`).
VARIANTS = {
    "default": "5 ms, young 700 (CPython)",
    "prompt": "1 ms, young 10,000 (answer_promptly)",
    "interval": "1 ms, young 700",
    "young": "5 ms, young 10,000",
}
PHASES = ("idle", "syncing")
ZONE_LABEL = "topology.kubernetes.io/zone"
CACHED = "svc-0.ns-0.svc.cluster.local"
SETTLE_TIMEOUT = 60.0
LONG_COLLECTION = 10.0  # ms: a cycle collection counted as a stall  # after the syncing phase: the last sync logged, at most

# `python -c WRAPPER VARIANT kdns-args…`: the proxy command with the variant's interpreter.
WRAPPER = r"""
import gc, os, runpy, sys, time
from kdns import interpreter
variant = sys.argv.pop(1)
if variant == "prompt":
    interpreter.answer_promptly()
else:  # CPython's defaults, whatever the tree would call, and the variant's one setting
    interpreter.answer_promptly = lambda: None
    if variant == "interval":
        sys.setswitchinterval(interpreter.SWITCH_INTERVAL)
    elif variant == "young":
        gc.set_threshold(interpreter.YOUNG_COLLECTION, *gc.get_threshold()[1:])
log, began = open(os.environ["KDNS_BENCH_GC_LOG"], "w", buffering=1), [0.0]
def collected(phase, info):  # every collection of 1 ms or more: its end, generation, ms
    if phase == "start":
        began[0] = time.monotonic()
    elif (took := time.monotonic() - began[0]) >= 0.001:
        log.write(f"{time.monotonic():.4f} {info['generation']} {took * 1e3:.1f}\n")
gc.callbacks.append(collected)
sys.argv[0] = "kdns"
runpy.run_module("kdns", run_name="__main__", alter_sys=True)
"""

# One cached question at a time to the node DNS, paced at QPS for SECONDS (big_answer.py's
# client), each answer matched by ID; every CONTROL_EVERY-th slot also a probe to the control
# echo (ECHO_PORT), sent right after that slot's question. Prints the round trips in ms of
# both, the count of each lost, and the pairs (question, probe) of the same slot.
CLIENT = r"""
import json, socket, struct, sys, time
server, qps, seconds, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
echo, every = ("127.0.0.1", int(sys.argv[5])), int(sys.argv[6])
q = b"".join(bytes((len(x),)) + x.encode() for x in name.split(".")) + b"\0"
def query(qid):
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
sent, rtts, probes, echoed = {}, {}, {}, {}
def take(data, source):
    got, times = (probes, echoed) if source == echo else (sent, rtts)
    qid = struct.unpack_from("!H", data)[0]
    t0 = got.pop(qid, None)
    if t0 is not None:
        times[qid] = (time.perf_counter() - t0) * 1e3
start = time.perf_counter()
for i in range(int(qps * seconds)):
    due = start + i / qps
    while True:
        now = time.perf_counter()
        try:
            take(*sock.recvfrom(65535))
            continue
        except BlockingIOError:
            pass
        if now >= due:
            break
        time.sleep(min(due - now, 0.0002))
    sent[i % 65536] = time.perf_counter()
    sock.sendto(query(i % 65536), (server, 53))
    if i % every == 0:
        probes[i % 65536] = time.perf_counter()
        sock.sendto(struct.pack("!H", i % 65536), echo)
end = time.perf_counter() + 1.0
while (sent or probes) and time.perf_counter() < end:
    try:
        take(*sock.recvfrom(65535))
    except BlockingIOError:
        time.sleep(0.0005)
pairs = [(rtts[q], echoed[q]) for q in echoed if q in rtts]  # sent in the same slot
out = {"rtts": list(rtts.values()), "lost": len(sent), "echoed": list(echoed.values())}
print(json.dumps({**out, "echo_lost": len(probes), "pairs": pairs}))
"""

# The control: a UDP echo in its own process (its own GIL, nothing else to run). What the
# client waits for it is what the machine itself (CPUs, kernel) adds while the proxy syncs.
ECHO = r"""
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, source = sock.recvfrom(512)
    sock.sendto(data, source)
"""
CONTROL_EVERY = 5  # one echo probe per 5 questions: 200/s at 1,000 qps


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def node_object(zone: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": proxy_sync.NODE_NAME, "labels": {ZONE_LABEL: zone}},
    }


def start_proxy(
    variant: str, args: argparse.Namespace, kubeconfig: Path, workdir: Path, stack: Any
) -> proxy_sync.Proxy:
    proxy = proxy_sync.Proxy(args.mode, kubeconfig, workdir)
    stamp = f"{variant}-{time.monotonic_ns()}"
    proxy.log_path = workdir / f"proxy-{stamp}.log"
    assert proxy.argv[1:3] == ["-m", "kdns"]
    proxy.argv[1:3] = ["-c", WRAPPER, variant]
    proxy.argv += ["--dns", node_dns.NODE_DNS]
    os.environ["KDNS_BENCH_GC_LOG"] = str(workdir / f"gc-{stamp}.log")  # Proxy.start's env
    proxy.start(stack)
    if proxy.wait_first_sync(node_dns.START_TIMEOUT) is None:
        raise RuntimeError(f"the proxy did not sync:\n{proxy.log_tail()}")
    node_dns.wait_answering(node_dns.NODE_DNS, proxy.alive, "kdns proxy --dns")
    return proxy


def start_echo(stack: contextlib.ExitStack) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", ECHO], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    stack.callback(stop_process, proc)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def _percentiles(times: Sequence[float], lost: int) -> Json:
    xs = sorted(times)
    if not xs:
        raise RuntimeError("no answers")
    return {
        "n": len(xs) + lost,
        "lost": lost,
        "p50": xs[len(xs) // 2],
        "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))],
        "max": xs[-1],
    }


def client(args: argparse.Namespace, echo_port: int) -> Json:
    argv = [sys.executable, "-c", CLIENT, node_dns.NODE_DNS, str(args.qps), str(args.seconds)]
    argv += [CACHED, str(echo_port), str(CONTROL_EVERY)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the client failed: {done.stderr.strip()[-400:]}")
    got: Json = json.loads(done.stdout)
    out = _percentiles(got["rtts"], got["lost"])
    out["echo"] = _percentiles(got["echoed"], got["echo_lost"])
    # What the node DNS adds over the control in the same moment: a stall of the whole
    # machine (the client, or every process, waiting for a CPU) delays both alike.
    excess = sorted(dns - echo for dns, echo in got["pairs"])
    out["excess"] = {"p99": excess[min(len(excess) - 1, int(len(excess) * 0.99))]}
    out["excess"]["over_5ms"] = sum(1 for x in excess if x > 5.0) / len(excess)
    return out


def collections(path: Path, start: float, end: float) -> list[float]:
    """The proxy's cycle collections (ms) that ended between `start` and `end` (monotonic)."""
    out = []
    for row in path.read_text().splitlines():
        at, _, ms = row.split()
        if start <= float(at) <= end:
            out.append(float(ms))
    return out


def flipping(server: Any, every: float, stop: threading.Event) -> None:
    """This node's zone label flipped every `every` seconds until `stop` (bounded by it)."""
    n = 0
    while not stop.wait(every):
        n += 1
        server.update("nodes", node_object(f"zone-{n % 2}"))


def full_syncs(proxy: proxy_sync.Proxy) -> list[int]:
    """The engine time (ms) of every full sync the proxy logged so far."""
    return [ms for kind, _, _, _, ms in proxy.syncs() if kind == "full"]


def phase(args: argparse.Namespace, echo_port: int, gc_log: Path) -> Json:
    start = time.monotonic()
    out = client(args, echo_port)
    out["gc"] = collections(gc_log, start, time.monotonic())
    return out


def measure(proxy: proxy_sync.Proxy, server: Any, args: argparse.Namespace, echo: int) -> Json:
    out: Json = {"load": load()}
    gc_log = Path(os.environ["KDNS_BENCH_GC_LOG"])
    node_dns.answers(node_dns.NODE_DNS)  # the name cached before the first phase
    out["idle"] = phase(args, echo, gc_log)
    before = len(full_syncs(proxy))
    stop = threading.Event()
    flipper = threading.Thread(target=flipping, args=(server, args.flip_every, stop))
    flipper.start()
    try:
        out["syncing"] = phase(args, echo, gc_log)
    finally:
        stop.set()
        flipper.join()
    # The sync running when the client stopped: logged within a sync's time.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    seen = len(full_syncs(proxy))
    while time.monotonic() < deadline and proxy.alive():
        time.sleep(1.5)  # > --min-sync-period: a queued sync has begun by then
        now = len(full_syncs(proxy))
        if now == seen:
            break
        seen = now
    out["syncs"] = full_syncs(proxy)[before:]
    out["load_after"] = load()
    return out


def run(args: argparse.Namespace, say: Say) -> Json:
    from tests.kubeapi import objects
    from tests.kubeapi.server import ApiServer

    fig: Json = {"n": args.services, "runs": []}
    cluster = proxy_sync.Cluster(args.services)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="kdns-nodedns-sync-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        lab = proxy_sync.Lab(stack)  # from here on this process is in the node namespace
        proxy_sync.ip("addr", "add", f"{node_dns.NODE_DNS}/32", "dev", "lo")
        server = ApiServer(host=node_dns.API_HOST, tls=False)
        stack.callback(server.stop)
        names = ["default", "kube-system"] + [f"ns-{k}" for k in range(proxy_sync.NAMESPACES)]
        server.load("namespaces", (objects.namespace(ns) for ns in names))
        server.load("nodes", [node_object("zone-0")])
        server.load("services", (cluster.service(i) for i in range(cluster.n)))
        server.load("endpointslices", (cluster.endpointslice(i) for i in range(cluster.n)))
        server.start()
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        echo = start_echo(stack)
        say(f"API server holds {cluster.n:,} Services; namespace {lab.node} ready")
        for r in range(args.rounds):
            order = args.variants if r % 2 == 0 else args.variants[::-1]
            for variant in order:
                proxy = start_proxy(variant, args, kubeconfig, workdir, stack)
                try:
                    got = measure(proxy, server, args, echo)
                finally:
                    proxy.stop()
                    node_dns.cleanup_rules()
                got.update(round=r + 1, variant=variant)
                fig["runs"].append(got)
                say(f"  round {r + 1} {variant}: {line(got)}")
    return fig


def _three(got: Json) -> str:
    return f"{got['p50']:.2f} / {got['p99']:.2f} / {got['max']:.1f} ms"


def _gc(ms: Sequence[float]) -> str:
    long = [x for x in ms if x >= LONG_COLLECTION]
    return f"{len(long)}, longest {max(ms):.0f} ms" if long else "0"


def _excess(got: Json) -> str:
    return f"p99 {got['excess']['p99']:.2f} ms, {got['excess']['over_5ms'] * 100:.1f} % > 5 ms"


def line(got: Json) -> str:
    phases = "; ".join(
        f"{p} {_three(got[p])} lost {got[p]['lost']}/{got[p]['n']} (echo {_three(got[p]['echo'])}"
        f"; over the echo {_excess(got[p])}; collections ≥ {LONG_COLLECTION:.0f} ms: "
        f"{_gc(got[p]['gc'])})"
        for p in PHASES
    )
    syncs = got["syncs"]
    ms = f"{statistics.median(syncs):.0f} ms" if syncs else "-"
    return f"{phases}; {len(syncs)} full syncs, median {ms} (load {got['load']})"


def _median_of(runs: Sequence[Json], phase: str, key: str) -> float:
    return statistics.median(r[phase][key] for r in runs)


def report(fig: Json, args: argparse.Namespace) -> str:
    lines = [
        f"## Node DNS during proxy syncs, N = {fig['n']:,} Services ({args.mode} mode)",
        "",
        proxy_sync.environment(),
        "",
        "| round | interval | idle: node DNS p50 / p99 / max | syncing: node DNS p50 / p99 / max "
        "| syncing: control echo p50 / p99 / max | syncing: node DNS over the echo, paired | "
        f"syncing: collections ≥ {LONG_COLLECTION:.0f} ms | lost (idle, syncing) | "
        "full syncs: count, median | load before → after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for got in fig["runs"]:
        syncs = got["syncs"]
        ms = f"{statistics.median(syncs):.0f} ms" if syncs else "-"
        label = VARIANTS[got["variant"]]
        lines.append(
            f"| {got['round']} | {label} | {_three(got['idle'])} | {_three(got['syncing'])} | "
            f"{_three(got['syncing']['echo'])} | {_excess(got['syncing'])} | "
            f"{_gc(got['syncing']['gc'])} | "
            f"{got['idle']['lost']}, {got['syncing']['lost']} | {len(syncs)}, {ms} | "
            f"{got['load']} → {got['load_after']} |"
        )
    by = {v: [g for g in fig["runs"] if g["variant"] == v] for v in args.variants}
    lines.append("")
    syncs = {v: [ms for g in by[v] for ms in g["syncs"]] for v in by}
    for variant in (v for v in args.variants if v != "default"):
        for name in PHASES:
            ratios = ", ".join(
                f"{key} {_median_of(by[variant], name, key) / _median_of(by['default'], name, key):.2f}"
                for key in ("p50", "p99", "max")
            )
            over = statistics.median(g[name]["excess"]["p99"] for g in by[variant])
            over /= statistics.median(g[name]["excess"]["p99"] for g in by["default"])
            lines.append(
                f"ratios {variant} / default, {name} (medians over the runs): {ratios}; "
                f"p99 over the echo {over:.2f}"
            )
        if syncs["default"] and syncs[variant]:
            d, p = statistics.median(syncs["default"]), statistics.median(syncs[variant])
            lines.append(
                f"full sync, median over every sync: default {d:.0f} ms, {variant} {p:.0f} ms "
                f"(ratio {p / d:.2f})"
            )
    lines.append(
        f"(client {args.qps}/s × {args.seconds:g} s per phase, an echo probe every "
        f"{CONTROL_EVERY}th; zone flipped every {args.flip_every:g} s while syncing; "
        f"{args.rounds} rounds, order alternating)"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=5000, help="N Services (5000)")
    parser.add_argument("--qps", type=int, default=1000, help="client questions/s (1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (10)")
    parser.add_argument("--rounds", type=int, default=2, help="starts per variant (2)")
    parser.add_argument(
        "--flip-every", type=float, default=0.2, help="zone flip period while syncing (0.2 s)"
    )
    parser.add_argument("--mode", choices=["nftables", "iptables"], default="nftables")
    parser.add_argument(
        "--variants",
        default="default,prompt",
        help="comma-separated, from: " + ", ".join(f"{k} ({v})" for k, v in VARIANTS.items()),
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = parser.parse_args(argv)
    if not 100 <= args.services <= 20_000:
        parser.error("--services: 100 to 20000")
    if not (1 <= args.rounds <= 10 and 2 <= args.seconds <= 60 and 10 <= args.qps <= 5000):
        parser.error("--rounds 1-10, --seconds 2-60, --qps 10-5000")
    args.variants = tuple(args.variants.split(","))
    if args.variants[0] != "default" or not set(args.variants) <= set(VARIANTS):
        parser.error(f"--variants: default first, then any of {', '.join(VARIANTS)}")
    if not 0.05 <= args.flip_every <= 5:
        parser.error("--flip-every: 0.05 to 5 s")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs every finally/ExitStack on the way out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("node_dns_sync.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    tool = "nft" if args.mode == "nftables" else "iptables-restore"
    for needed in ("ip", tool):
        if shutil.which(needed) is None:
            print(f"node_dns_sync.py: {needed} is missing", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.monotonic()
    fig = run(args, say)
    say(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))
    print(report(fig, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

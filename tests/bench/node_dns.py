"""Benchmark: node-local DNS (`kdns proxy --dns`) against the central kdns over the proxy's DNAT.

What it measures, with the fake kube-apiserver (``tests/kubeapi``, plain HTTP, in this process)
holding N Services (``--services``, default 10,000; proxy_sync.py's cluster: `svc-i` in
`ns-(i % 10)`, 3 endpoints each) plus the `kube-dns` Service, inside throwaway network namespaces
(proxy_sync.py's `Lab`: a "node", a client "pod" and a "backend" namespace, deleted at the end;
nothing touches the host's tables):

1. Memory the DaemonSet adds for DNS: the RSS of ``kdns proxy`` alone (``--mode``, nftables by
   default), synced from the API server, then, after it stopped and its rules were cleaned up,
   the RSS of ``kdns proxy --dns`` synced and answering on 169.254.20.10; ``--memory-rounds``
   times, alternating. Each RSS is the median of 5 samples 0.5 s apart, taken 2 s after the
   first full sync (and, for --dns, the first answer); the figure is the median over the
   starts. Target: the difference under 20 MiB. The --dns proxy's RSS is sampled again after
   the latency and CPU phases.
2. A pod's lookup latency, p50 and p99: a paced client in the pod namespace asks one question
   at a time (``--rate`` per second, 1 s timeout; a cluster name among 100 Services, each
   answered from the answer cache on both servers), alternately in batches of ``--batch``
   queries to the node DNS (169.254.20.10 on the node's lo, NOTRACK rules) and to the kube-dns
   ClusterIP 10.96.0.10, which the proxy DNATs to the central ``kdns serve`` in the backend
   namespace (10.64.2.2:53). ``--rounds`` batches each.
3. CPU per query: a 2,000 q/s stream from the pod for ``--seconds`` to each path, alternately
   (``--cpu-rounds`` each), its questions round robin over 50 sockets (a pod's lookups come
   from fresh source ports); the CPU time (utime + stime from /proc) of the answering process
   and of the node's proxy during the stream, less their idle rates measured before, divided by
   the answers. For the node DNS the answering process is the proxy, on the node; for the
   central path it is `kdns serve`, which in a cluster runs on some other node — what the pod's
   node itself pays there is the kernel's DNAT and conntrack work, not attributable to a
   process here; the node's conntrack entries for UDP/53 after each stream are counted instead.
4. Where the DNS's memory goes, reproducibly (RSS differences carry the noise of the sync's
   peak, ±10 MiB at 10k): the Python heap `app.answering` allocates over a store of the same
   cluster (read from manifests, in this process), by tracemalloc — per file and the top lines.

Caveats. Nothing is pinned; the API server (this process), both kdns processes, the client and
the kernel share the machine's CPUs, and other work on the machine adds noise: the load average
is printed with the figures. The latency client measures from its own socket: its Python
overhead is in both paths alike.

How to run (root; iptables, iproute2 and conntrack installed; the file name does not start with
``test_``, so pytest does not collect it):

    .venv/bin/python tests/bench/node_dns.py                    # N = 10,000 (about 3 min)
    .venv/bin/python tests/bench/node_dns.py --services 1000 --rounds 2   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import socket
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

from tests.bench import proxy_sync  # noqa: E402
from tests.processes import stop_process  # noqa: E402

Json = dict[str, Any]
Say = Callable[[str], None]

NODE_DNS = "169.254.20.10"
KUBE_DNS_IP = "10.96.0.10"
CENTRAL_IP = "10.64.2.2"  # the backend namespace's address: the central kdns's "pod"
API_HOST = "10.64.2.1"  # the node's address towards the backend: both kdns reach it
NAMES = 100  # the Services asked about (cached on both servers after the first question)
STREAM_RATE = 2000
STREAM_SOCKETS = 50
START_TIMEOUT = 600.0
ANSWER_TIMEOUT = 30.0
RSS_SAMPLES, RSS_GAP, RSS_SETTLE = 5, 0.5, 2.0
IDLE_SECONDS = 5.0
TARGET_MIB = 20.0
PATHS = {"node": NODE_DNS, "central": KUBE_DNS_IP}


# --------------------------------------------------------------------------------------------
# Clients, run inside the pod namespace (this file, `--helper NAME`); one JSON line on stdout
# --------------------------------------------------------------------------------------------


def _queries(count: int) -> list[bytes]:
    """A query for each of the first NAMES Services, ids 0 … count - 1 across them."""
    from dnslib import DNSRecord

    names = [f"svc-{i}.ns-{i % proxy_sync.NAMESPACES}.svc.cluster.local" for i in range(NAMES)]
    out = []
    for n in range(count):
        query = DNSRecord.question(names[n % NAMES], "A")
        query.header.id = n % 65536
        out.append(query.pack())
    return out


def helper_latency(server: str, count: int, rate: float) -> None:
    """One question at a time, paced; the round trip of each in µs (NaN: no answer in 1 s)."""
    queries = _queries(count)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.settimeout(1.0)
    times: list[float] = []
    start = time.monotonic()
    for n, query in enumerate(queries):
        t = time.perf_counter()
        sock.send(query)
        took = math.nan
        with contextlib.suppress(TimeoutError):
            while True:  # skip a late answer to an earlier question
                reply = sock.recv(4096)
                if reply[:2] == query[:2]:
                    took = (time.perf_counter() - t) * 1e6
                    break
        times.append(took)
        time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
    print(json.dumps({"times": times}), flush=True)


def helper_stream(server: str, seconds: float, rate: float) -> None:
    """`rate` questions a second for `seconds`, round robin over STREAM_SOCKETS sockets (a
    pod's resolver takes a fresh source port per lookup: each socket is a flow the node may
    track), a receiver counting answers; prints how many were sent and answered (ids wrap:
    fewer than 65,536 are sent)."""
    queries = _queries(65536)
    socks = []
    for _ in range(STREAM_SOCKETS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect((server, 53))
        sock.setblocking(False)
        socks.append(sock)
    answered: set[int] = set()
    done = threading.Event()

    def receive() -> None:
        with selectors.DefaultSelector() as sel:
            for sock in socks:
                sel.register(sock, selectors.EVENT_READ, sock)
            while not done.is_set():
                for key, _ in sel.select(0.2):
                    sock = key.data
                    with contextlib.suppress(OSError):
                        answered.add(int.from_bytes(sock.recv(4096)[:2], "big"))

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < seconds and sent < len(queries):
        with contextlib.suppress(OSError):
            socks[sent % STREAM_SOCKETS].send(queries[sent])
        sent += 1
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    deadline = time.monotonic() + 3.0
    while len(answered) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    print(json.dumps({"sent": sent, "answered": len(answered)}), flush=True)


def in_pod(lab: Any, *args: str, timeout: float) -> Json:
    argv = ["ip", "netns", "exec", lab.pod, sys.executable, str(Path(__file__).resolve())]
    done = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"pod helper {args[:2]}: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Processes and what is read from them
# --------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def rss_settled(pid: int) -> float:
    time.sleep(RSS_SETTLE)
    samples = []
    for _ in range(RSS_SAMPLES):
        samples.append(rss_mib(pid))
        time.sleep(RSS_GAP)
    return statistics.median(samples)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def answers(server: str, port: int = 53) -> bool:
    """One cluster question from this process (the node namespace) answered with an A."""
    query = _queries(1)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(query, (server, port))
            reply = sock.recv(4096)
        except OSError:
            return False
    return reply[:2] == query[:2] and reply[3] & 0xF == 0 and reply[6:8] != b"\0\0"


def wait_answering(server: str, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(server):
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} does not answer on {server}")
        time.sleep(0.1)


def synced_proxy(
    mode: str, kubeconfig: Path, workdir: Path, stack: contextlib.ExitStack, dns: bool
) -> proxy_sync.Proxy:
    proxy = proxy_sync.Proxy(mode, kubeconfig, workdir)
    proxy.log_path = workdir / f"proxy-{'dns' if dns else 'alone'}.log"
    if dns:
        proxy.argv += ["--dns", NODE_DNS]
    proxy.start(stack)
    if proxy.wait_first_sync(START_TIMEOUT) is None:
        raise RuntimeError(f"the proxy did not sync:\n{proxy.log_tail()}")
    if dns:
        wait_answering(NODE_DNS, proxy.alive, "kdns proxy --dns")
    return proxy


def central(lab: Any, kubeconfig: Path, workdir: Path, stack: contextlib.ExitStack) -> Any:
    argv = ["ip", "netns", "exec", lab.backend, sys.executable, "-m", "kdns", "serve"]
    argv += ["--kubeconfig", str(kubeconfig), "--dns-addr", f"{CENTRAL_IP}:53"]
    argv += ["--health-addr", "127.0.0.1:8080", "--ready-addr", "127.0.0.1:8181"]
    argv += ["--metrics-addr", "127.0.0.1:9153"]
    env = {**os.environ, "KDNS_RESOLV_CONF": "/dev/null"}
    with (workdir / "central.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log, env=env)
    stack.callback(stop_process, proc)
    return proc


def cleanup_rules() -> None:
    """`kdns proxy --cleanup` in-process: a proxy leaves its rules on exit, as kube-proxy does
    (and `--dns` leaves its own when another process answers on its addresses)."""
    from kdns.proxy.cleanup import cleanup_every_mode
    from kdns.proxy.dataplane import run_command

    problems = cleanup_every_mode(run_command, ipvs=False)
    if problems:
        raise RuntimeError("; ".join(problems))


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs every finally/ExitStack on the way out


def dns_flows() -> int:
    """The node's conntrack entries for UDP to port 53 (the namespace this process is in)."""
    argv = ["conntrack", "-L", "-p", "udp", "--dport", "53"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return sum(1 for line in done.stdout.splitlines() if "dport=53" in line)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def kube_dns_objects() -> tuple[Json, Json]:
    from tests.kubeapi import objects

    ports = [
        {"name": "dns", "protocol": "UDP", "port": 53},
        {"name": "dns-tcp", "protocol": "TCP", "port": 53},
    ]
    service = objects.service(
        "kube-system",
        "kube-dns",
        cluster_ip=KUBE_DNS_IP,
        ports=ports,
        selector={"k8s-app": "kube-dns"},
    )
    slice_ = objects.endpointslice(
        "kube-system", "kube-dns", addresses=[CENTRAL_IP], ports=ports, node_name="node-2"
    )
    return service, slice_


def measure_latency(lab: Any, args: argparse.Namespace, say: Say) -> Json:
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for r in range(args.rounds):
        for path, server in PATHS.items():
            got = in_pod(
                lab,
                "--helper",
                "latency",
                server,
                str(args.batch),
                str(args.rate),
                timeout=args.batch / args.rate + args.batch + 60,
            )
            times[path] += got["times"]
        say(f"   latency round {r + 1}/{args.rounds} done")
    out: Json = {}
    for path, xs in times.items():
        ok = sorted(x for x in xs if x == x)
        out[path] = {
            "n": len(xs),
            "lost": len(xs) - len(ok),
            "p50": ok[len(ok) // 2] if ok else math.nan,
            "p99": ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else math.nan,
        }
    return out


def measure_cpu(lab: Any, pids: dict[str, int], args: argparse.Namespace, say: Say) -> Json:
    """Per path: CPU seconds of the answering process and of the node's proxy during the
    streams (less their idle rates), answers, and the node's DNS flows after each stream."""
    idle_before = {path: cpu_seconds(pid) for path, pid in pids.items()}
    time.sleep(IDLE_SECONDS)  # the idle rate: what each process spends with no query
    idle = {p: (cpu_seconds(pid) - idle_before[p]) / IDLE_SECONDS for p, pid in pids.items()}
    out: Json = {
        path: {"cpu": 0.0, "node_cpu": 0.0, "answered": 0, "sent": 0, "flows": []} for path in PATHS
    }
    out["idle"] = idle
    for r in range(args.cpu_rounds):
        for path, server in PATHS.items():
            subprocess.run(["conntrack", "-F"], capture_output=True, timeout=30)
            before = {p: cpu_seconds(pid) for p, pid in pids.items()}
            t = time.monotonic()
            got = in_pod(
                lab,
                "--helper",
                "stream",
                server,
                str(args.seconds),
                str(STREAM_RATE),
                timeout=args.seconds + 60,
            )
            took = time.monotonic() - t
            spent = {p: cpu_seconds(pid) - before[p] - idle[p] * took for p, pid in pids.items()}
            fig = out[path]
            fig["cpu"] += spent[path]
            fig["node_cpu"] += spent["node"]
            fig["answered"] += got["answered"]
            fig["sent"] += got["sent"]
            fig["flows"].append(dns_flows())
        say(f"   CPU round {r + 1}/{args.cpu_rounds} done")
    for path in PATHS:
        fig = out[path]
        fig["us_per_query"] = fig["cpu"] / max(fig["answered"], 1) * 1e6
        fig["node_us_per_query"] = fig["node_cpu"] / max(fig["answered"], 1) * 1e6
    return out


def dns_heap(cluster: proxy_sync.Cluster, workdir: Path) -> Json:
    """Where the node DNS's memory goes: the Python heap that `app.answering` (what
    `kdns proxy --dns` adds to the proxy's store) allocates over a store holding the cluster,
    by tracemalloc, in this process; per file, and the top allocation sites."""
    import gc
    import tracemalloc

    import yaml

    from kdns import app, proxyapp
    from kdns.config import Config
    from tests.kubeapi import objects

    manifests = workdir / "manifests"
    manifests.mkdir()
    docs = [objects.namespace(f"ns-{k}") for k in range(proxy_sync.NAMESPACES)]
    docs += [cluster.service(i) for i in range(cluster.n)]
    docs += [cluster.endpointslice(i) for i in range(cluster.n)]
    (manifests / "cluster.yaml").write_text(yaml.safe_dump_all(docs))
    config = Config().with_overrides(
        "node_dns.py", **{"kubernetes.manifests": [str(manifests)], "forward.upstreams": []}
    )
    store, api = app.open_store(config, watch_pods=False)
    source = app.open_source(config, store, api, False)
    dns_config = proxyapp.node_dns_config(config, [NODE_DNS])
    planned = app.plan(dns_config)
    gc.collect()
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    answering = app.answering(dns_config, store, source, planned)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    by_file = after.compare_to(before, "filename")
    sites = after.compare_to(before, "lineno")[:5]
    del answering
    return {
        "total": sum(d.size_diff for d in by_file) / 2**20,
        "files": [
            (str(Path(d.traceback[0].filename).relative_to(REPO_ROOT)), d.size_diff / 2**20)
            for d in by_file[:4]
            if d.traceback[0].filename.startswith(str(REPO_ROOT))
        ],
        "sites": [
            (f"{Path(d.traceback[0].filename).name}:{d.traceback[0].lineno}", d.size_diff / 2**20)
            for d in sites
        ],
    }


def run(args: argparse.Namespace, say: Say) -> Json:
    from tests.kubeapi import objects
    from tests.kubeapi.server import ApiServer

    fig: Json = {"n": args.services}
    cluster = proxy_sync.Cluster(args.services)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="kdns-nodedns-bench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        fig["heap"] = dns_heap(cluster, workdir)
        say(f"0. the node DNS's heap over {cluster.n:,} Services: {fig['heap']['total']:.1f} MiB")
        lab = proxy_sync.Lab(stack)  # from here on this process is in the node namespace
        # The node DNS address on the node's lo stands in for the kdns-dns dummy device.
        proxy_sync.ip("addr", "add", f"{NODE_DNS}/32", "dev", "lo")
        server = ApiServer(host=API_HOST, tls=False)
        stack.callback(server.stop)
        names = ["default", "kube-system"] + [f"ns-{k}" for k in range(proxy_sync.NAMESPACES)]
        kube_dns, kube_dns_slice = kube_dns_objects()
        server.load("namespaces", (objects.namespace(ns) for ns in names))
        server.load("services", [kube_dns, *(cluster.service(i) for i in range(cluster.n))])
        server.load(
            "endpointslices",
            [kube_dns_slice, *(cluster.endpointslice(i) for i in range(cluster.n))],
        )
        server.start()
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        say(f"API server holds {cluster.n:,} Services; namespaces {lab.node}, {lab.pod} ready")

        fig["rss_alone"], fig["rss_dns"] = [], []
        for r in range(args.memory_rounds):  # alone, --dns, alone, --dns …: the last stays up
            for dns in (False, True):
                node = synced_proxy(args.mode, kubeconfig, workdir, stack, dns=dns)
                assert node.proc is not None
                fig["rss_dns" if dns else "rss_alone"].append(rss_settled(node.proc.pid))
                if not dns or r < args.memory_rounds - 1:
                    node.stop()
                    cleanup_rules()
            say(
                f"1. round {r + 1}: kdns proxy alone {fig['rss_alone'][-1]:.1f} MiB, "
                f"--dns {fig['rss_dns'][-1]:.1f} MiB"
            )
        serve = central(lab, kubeconfig, workdir, stack)
        wait_answering(CENTRAL_IP, lambda: serve.poll() is None, "the central kdns serve")
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while not _answered_from_pod(lab, KUBE_DNS_IP):
            if time.monotonic() > deadline:
                raise RuntimeError("the kube-dns ClusterIP does not answer from the pod")
            time.sleep(0.2)

        say("2. latency, interleaved")
        fig["latency"] = measure_latency(lab, args, say)
        say("3. CPU per query, interleaved")
        fig["cpu"] = measure_cpu(lab, {"node": node.proc.pid, "central": serve.pid}, args, say)
        fig["rss_dns_after"] = rss_mib(node.proc.pid)
        fig["rss_central"] = rss_mib(serve.pid)
        node.stop()
        cleanup_rules()
    return fig


def _answered_from_pod(lab: Any, server: str) -> bool:
    got = in_pod(lab, "--helper", "latency", server, "1", "10", timeout=60)
    return got["times"][0] == got["times"][0]


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _mibs(xs: Sequence[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in xs)


def report(fig: Json, args: argparse.Namespace) -> str:
    lat, cpu = fig["latency"], fig["cpu"]
    alone, dns = statistics.median(fig["rss_alone"]), statistics.median(fig["rss_dns"])
    added = dns - alone
    ok = "✔" if added < TARGET_MIB else "✘"
    lines = [
        f"## Node-local DNS, N = {fig['n']:,} Services",
        "",
        proxy_sync.environment(),
        "",
        "| path | p50 | p99 | lost | CPU per query: answering process | … of it on the node "
        "(the proxy) | UDP/53 conntrack entries on the node |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, label in (
        ("node", f"node DNS {NODE_DNS} (`kdns proxy --dns`, NOTRACK)"),
        ("central", f"kube-dns {KUBE_DNS_IP} → DNAT → central `kdns serve`"),
    ):
        lines.append(
            f"| {label} | {lat[path]['p50']:.0f} µs | {lat[path]['p99']:.0f} µs | "
            f"{lat[path]['lost']}/{lat[path]['n']} | {cpu[path]['us_per_query']:.0f} µs "
            f"({cpu[path]['answered']:,}/{cpu[path]['sent']:,} answered) | "
            f"{cpu[path]['node_us_per_query']:.1f} µs | {max(cpu[path]['flows'])} |"
        )
    node, central_ = lat["node"], lat["central"]
    lines += [
        "",
        f"ratios node/central: p50 {node['p50'] / central_['p50']:.2f}, "
        f"p99 {node['p99'] / central_['p99']:.2f}, CPU per query "
        f"{cpu['node']['us_per_query'] / max(cpu['central']['us_per_query'], 1e-9):.2f}",
        f"idle CPU: proxy --dns {cpu['idle']['node'] * 100:.1f} %, "
        f"central {cpu['idle']['central'] * 100:.1f} % of a core",
        "",
        f"RSS (median of {len(fig['rss_alone'])} starts each): kdns proxy alone {alone:.1f} MiB "
        f"({_mibs(fig['rss_alone'])}), kdns proxy --dns {dns:.1f} MiB ({_mibs(fig['rss_dns'])})"
        f" → DNS adds {added:.1f} MiB (target < {TARGET_MIB:.0f} MiB {ok}); after the load "
        f"{fig['rss_dns_after']:.1f} MiB; central kdns serve {fig['rss_central']:.1f} MiB",
        f"the node DNS's Python heap (tracemalloc of app.answering over the store): "
        f"{fig['heap']['total']:.1f} MiB — "
        + ", ".join(f"{name} {mib:.1f}" for name, mib in fig["heap"]["files"])
        + "; top sites: "
        + ", ".join(f"{name} {mib:.1f}" for name, mib in fig["heap"]["sites"]),
        f"(rate {args.rate:g}/s × {args.batch} × {args.rounds} rounds per path; streams "
        f"{STREAM_RATE}/s from {STREAM_SOCKETS} sockets × {args.seconds:g} s × "
        f"{args.cpu_rounds} per path; proxies in {args.mode} mode)",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000, help="N Services (10000)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency questions/s (200)")
    parser.add_argument("--batch", type=int, default=500, help="latency batch per path (500)")
    parser.add_argument("--rounds", type=int, default=4, help="latency batches per path (4)")
    parser.add_argument("--seconds", type=float, default=4.0, help="CPU stream length (4)")
    parser.add_argument("--cpu-rounds", type=int, default=2, help="CPU streams per path (2)")
    parser.add_argument(
        "--memory-rounds", type=int, default=2, help="proxy starts per variant, alternating (2)"
    )
    parser.add_argument(
        "--mode",
        choices=["nftables", "iptables"],
        default="nftables",
        help="the proxies' mode (nftables: Debian 12's iptables nft backend takes minutes for "
        "a first full sync at 10k Services, see docs/benchmarks.md)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    parser.add_argument("--helper", choices=["latency", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("helper_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.helper:
        if not 100 <= args.services <= 50_000:
            parser.error("--services: 100 to 50000")
        if not (1 <= args.rounds <= 100 and 10 <= args.batch <= 10_000 and args.rate <= 5000):
            parser.error("--rounds 1-100, --batch 10-10000, --rate ≤ 5000")
        if not (1 <= args.cpu_rounds <= 20 and 1 <= args.seconds <= 30):
            parser.error("--cpu-rounds 1-20, --seconds 1-30")
        if not 1 <= args.memory_rounds <= 10:
            parser.error("--memory-rounds 1-10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.helper == "latency":
        server, count, rate = args.helper_args
        helper_latency(server, int(count), float(rate))
        return 0
    if args.helper == "stream":
        server, seconds, rate = args.helper_args
        helper_stream(server, float(seconds), float(rate))
        return 0
    if os.geteuid() != 0:
        print("node_dns.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "iptables-restore", "conntrack"):
        if shutil.which(tool) is None:
            print(f"node_dns.py: {tool} is missing", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    fig = run(args, say)
    say(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1, default=str))
    print(report(fig, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the memory of `kdns proxy` at scale, after its first full sync and after partials.

What it measures, for N Services (``--services``, default 10,000; proxy_sync.py's cluster: `svc-i`
in `ns-(i % 10)`, 3 ready endpoints each, one TCP port), with the fake kube-apiserver
(``tests/kubeapi``, in this process) and the real ``python -m kdns proxy`` in a throwaway "node"
network namespace (proxy_sync.py's `Lab`; nothing touches the host's tables), per ``--modes``
(nftables, iptables: Debian's iptables-nft, iptables-legacy: x_tables):

1. After the first full sync (the `kdns_proxy_syncs_total` metric): VmRSS, the median of 5
   samples 0.5 s apart taken 2 s after the sync, and VmHWM, the peak RSS so far — the peak is
   what a cgroup memory limit has to hold, the settled RSS what the node keeps paying.
   "With its commands": the highest sum of the PSS of the proxy and of the commands it runs
   (`nft`, `iptables-restore`, `iptables-save` …), sampled every 20 ms from its start: what a
   container's memory limit sees.
2. After each of ``--partials`` one-endpoint changes written through the API server (each waited
   for in the proxy's log, "partial sync of …"): VmRSS settled the same way, and VmHWM.
3. A restart over the table the proxy left (stopped without clean-up, as a DaemonSet rollout
   does): the same three figures for the new process's first full sync.

With ``--reference DIR`` (a checkout of another revision, e.g. `git worktree add /tmp/main
main`) each start of this tree's proxy is paired with a start of DIR's, alternating, so both
see the same machine load; the load average is printed with each figure.

Caveats. RSS carries the noise of the allocator and of the moment of sampling (±5 MiB at 10k);
the peak depends on when the first sync lands relative to the store's initial list. Nothing is
pinned; the API server shares the machine's CPUs with the proxy.

How to run (root; nftables, iptables and iproute2 installed; the file name does not start with
``test_``, so pytest does not collect it):

    .venv/bin/python tests/bench/proxy_memory.py                       # N = 10,000, nftables
    .venv/bin/python tests/bench/proxy_memory.py --modes nftables iptables-legacy \
        --reference /tmp/main --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
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

from tests.bench import proxy_sync  # noqa: E402
from tests.processes import stop_process  # noqa: E402

Json = dict[str, Any]
Say = Callable[[str], None]

MODES = ("nftables", "iptables", "iptables-legacy")
RSS_SAMPLES, RSS_GAP, RSS_SETTLE = 5, 0.5, 2.0
START_TIMEOUT = 900.0  # a full iptables-nft restore at 10k takes minutes (README)
PARTIAL_TIMEOUT = 60.0
CHANGE_GAP = 1.2  # > --min-sync-period: every change gets a sync of its own
TREE_GAP = 0.02


def status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def settled(pid: int) -> tuple[float, float]:
    """(VmRSS median of a few samples after a pause, VmHWM) in MiB."""
    time.sleep(RSS_SETTLE)
    samples = []
    for _ in range(RSS_SAMPLES):
        samples.append(status_mib(pid, "VmRSS"))
        time.sleep(RSS_GAP)
    return statistics.median(samples), status_mib(pid, "VmHWM")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the nft, iptables-restore … it runs)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages split between their sharers, so a child between
    fork and exec (which shares all of the proxy's pages) does not count them twice."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


class TreePeak:
    """The highest sum of PSS over a process and its children, sampled every TREE_GAP s in a
    thread: what a cgroup limit on the container sees, short-lived commands included (a
    command that lives less than TREE_GAP may be missed)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TREE_GAP):
            total = 0.0
            for p in descendants(self.pid):
                with contextlib.suppress(OSError, RuntimeError):
                    total += pss_mib(p)
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class TreeProxy(proxy_sync.Proxy):
    """proxy_sync's proxy process, run from `tree` (this checkout or the reference)."""

    def __init__(self, mode: str, kubeconfig: Path, workdir: Path, tree: Path) -> None:
        super().__init__(mode, kubeconfig, workdir)
        self.tree = tree
        self.log_path = workdir / f"proxy-{mode}-{tree.name}.log"

    def start(self, stack: contextlib.ExitStack) -> None:
        env = {**os.environ, "KDNS_RESOLV_CONF": "/dev/null"}
        with self.log_path.open("wb") as log:
            self.started = time.monotonic()
            # `python -m kdns` imports the kdns of its working directory.
            self.proc = subprocess.Popen(
                self.argv, cwd=self.tree, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        stack.callback(stop_process, self.proc)


def measure(
    mode: str,
    tree: Path,
    cluster: proxy_sync.Cluster,
    server: Any,
    kubeconfig: Path,
    workdir: Path,
    partials: int,
    stack: contextlib.ExitStack,
) -> Json:
    """One start in an empty table, its partial syncs, and a restart over the table it left."""
    out: Json = {"load": load()}
    try:
        for restart in (False, True):
            proxy = TreeProxy(mode, kubeconfig, workdir, tree)
            proxy.start(stack)
            try:
                assert proxy.proc is not None
                tree_peak = TreePeak(proxy.proc.pid)
                if proxy.wait_first_sync(START_TIMEOUT) is None:
                    raise RuntimeError(
                        f"{mode} proxy from {tree} did not sync:\n{proxy.log_tail()}"
                    )
                rss, hwm = settled(proxy.proc.pid)
                if restart:
                    out["restart_rss"], out["restart_hwm"] = rss, hwm
                    out["restart_tree"] = tree_peak.stop()
                    break
                out["full_rss"], out["full_hwm"] = rss, hwm
                out["full_tree"] = tree_peak.stop()
                partial_syncs(proxy, cluster, server, partials, out)
            finally:
                proxy.stop()  # leaves its rules, as kube-proxy does: the restart finds them
    finally:
        proxy_sync.cleanup()
    return out


def partial_syncs(
    proxy: TreeProxy, cluster: proxy_sync.Cluster, server: Any, partials: int, out: Json
) -> None:
    assert proxy.proc is not None
    pid, mode = proxy.proc.pid, proxy.mode
    out["partial_rss"], out["partial_hwm"], out["partial_ms"] = [], [], []
    for k in range(partials):
        i = (k + 1) * max(1, cluster.n // (partials + 2))
        seen = len(proxy.syncs())
        cluster.replace_endpoint(i)
        server.update("endpointslices", cluster.endpointslice(i))
        deadline = time.monotonic() + PARTIAL_TIMEOUT
        while not any(s[0] == "partial" for s in proxy.syncs()[seen:]):
            if time.monotonic() > deadline or not proxy.alive():
                raise RuntimeError(f"no partial sync in {mode}:\n{proxy.log_tail()}")
            time.sleep(0.05)
        out["partial_ms"] += [s[4] for s in proxy.syncs()[seen:] if s[0] == "partial"]
        rss, hwm = settled(pid)
        out["partial_rss"].append(rss)
        out["partial_hwm"].append(hwm)
        time.sleep(CHANGE_GAP)


def run(args: argparse.Namespace, say: Say) -> Json:
    from tests.kubeapi import objects
    from tests.kubeapi.server import ApiServer

    trees = [REPO_ROOT] if args.reference is None else [Path(args.reference), REPO_ROOT]
    fig: Json = {"n": args.services, "runs": []}
    cluster = proxy_sync.Cluster(args.services)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="kdns-proxy-memory-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        proxy_sync.Lab(stack)  # from here on this process is in the node namespace
        server = ApiServer()
        stack.callback(server.stop)
        names = ["default", "kube-system"] + [f"ns-{k}" for k in range(proxy_sync.NAMESPACES)]
        server.load("namespaces", (objects.namespace(ns) for ns in names))
        server.load("services", (cluster.service(i) for i in range(cluster.n)))
        server.load("endpointslices", (cluster.endpointslice(i) for i in range(cluster.n)))
        server.start()
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        say(f"API server holds {cluster.n:,} Services")
        for r in range(args.rounds):
            for mode in args.modes:
                for tree in trees:
                    with proxy_sync.iptables_backend(mode, workdir):
                        got = measure(
                            mode, tree, cluster, server, kubeconfig, workdir, args.partials, stack
                        )
                    got.update(mode=mode, tree=str(tree), round=r + 1)
                    fig["runs"].append(got)
                    say(line(got))
    return fig


def line(got: Json) -> str:
    partial = ", ".join(f"{x:.1f}" for x in got["partial_rss"])
    return (
        f"{got['mode']:<15} {got['tree']}: after the full sync RSS {got['full_rss']:.1f} MiB "
        f"(peak {got['full_hwm']:.1f}, with its commands {got['full_tree']:.1f}); after "
        f"partials {partial} MiB (peak {max(got['partial_hwm'], default=0):.1f}; partial syncs "
        f"{', '.join(str(ms) for ms in got['partial_ms'])} ms); restarted over its table: RSS "
        f"{got['restart_rss']:.1f} MiB (peak {got['restart_hwm']:.1f}, with its commands "
        f"{got['restart_tree']:.1f}); load {got['load']}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000, help="N Services (10000)")
    parser.add_argument("--modes", nargs="+", default=["nftables"], choices=MODES)
    parser.add_argument("--partials", type=int, default=3, help="partial syncs per start (3)")
    parser.add_argument("--rounds", type=int, default=1, help="starts per mode and tree (1)")
    parser.add_argument("--reference", metavar="DIR", help="a checkout to compare with")
    args = parser.parse_args(argv)
    if not 100 <= args.services <= 50_000:
        parser.error("--services: 100 to 50000")
    if not 0 <= args.partials <= 20 or not 1 <= args.rounds <= 5:
        parser.error("--partials 0-20, --rounds 1-5")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs every finally/ExitStack on the way out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("proxy_memory.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    run(args, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())

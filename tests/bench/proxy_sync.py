"""Benchmark: `kdns proxy` at scale — render and apply times, change-to-live latency, first packet.

What it measures, for N Services (``--services``, default 10,000) × 3 ready endpoints, one TCP
port each (80 → 8080), all inside throwaway network namespaces this script creates (a "node", a
client "pod" and a "backend" namespace, names suffixed with this process's id, deleted at the
end even when interrupted; nothing touches the host's tables):

1. Full render and full apply per mode, in-process, with the real data planes and tools: the
   nftables and iptables `Dataplane.sync(routes, None)` (the Runner is wrapped to time each
   command: render = sync time minus command time; apply = the `nft -f -` or
   `iptables-restore --noflush` run), the transaction size, the canary check
   (`Dataplane.intact()`, which the engine runs every --sync-period), and one partial sync (one
   endpoint replaced). IPVS: this kernel has no IPVS, so the IPVS figures are the render, the
   diff against an empty `IpvsModel` and the application of the commands to the model (the
   ipset and iptables companions are rendered, not applied).
2. Change → live, per kernel mode: the real ``python -m kdns proxy`` runs in the node namespace,
   fed by the fake kube-apiserver (``tests/kubeapi``, plain HTTP, in this process) holding the
   cluster. After its first full sync, one endpoint of one EndpointSlice is replaced through the
   API server (``--changes`` times, ≥ 1.2 s apart so the 1 s --min-sync-period never delays a
   change), and the time from the write to the first TCP connection from the pod namespace to
   the ClusterIP that reaches the NEW endpoint is measured with real packets: the backend
   namespace accepts every endpoint address (an AnyIP route) and answers each connection with
   the address it was reached at; the client connects up to 3 times per round, one round every
   2 ms, for at most 5 s. The transaction size and the engine's sync time of each change are
   read from the proxy's INFO log line ("partial sync of … R rules, B bytes, T ms").
3. First-packet connect latency from the pod to the first and the last Service (render order,
   which is also creation order here), median and p90 over ``--connects`` connects each, with
   the proxy's rules in place; and, as references, a connect to an endpoint address directly
   (in iptables mode that packet still walks all of KUBE-SERVICES) and before any rule existed.
4. nftables transaction costs (the known problem: a one-element transaction takes far longer
   than its size): with the full table applied, `nft -f -` of an `add chain` only, of one
   `add element`, and of a one-endpoint partial sync; the same two through one libnftables
   context kept across transactions (ctypes on libnftables.so.1, which the nftables package
   ships), to show what a long-lived nft process would save.

Caveats. Nothing is pinned; the API server (this process), kdns and the client share the
machine's CPUs. The change-to-live time includes the watch delivery, the engine's render and the
kernel apply, and the client's poll interval (2 ms) bounds its resolution. The proxy runs with
--sync-period 300 so its canary (a full `nft list table` / `iptables-save`, see figure 1) does
not run in the middle of a measurement; with the default 30 s it would, now and then.

How to run (root; iptables, nftables and iproute2 installed; the file name does not start with
``test_``, so pytest does not collect it):

    .venv/bin/python tests/bench/proxy_sync.py                   # N = 10,000 (about 5 min)
    .venv/bin/python tests/bench/proxy_sync.py --services 1000   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import ipaddress
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for `tests.kubeapi` when run as a script

from tests.processes import stop_process  # noqa: E402

Json = dict[str, Any]
Say = Callable[[str], None]

NAMESPACES = 10
ENDPOINTS = 3
SERVICE_PORT, TARGET_PORT = 80, 8080
CLUSTER_CIDR = "10.0.0.0/8"  # pods: the client (10.64.1.2) and every endpoint
CLUSTER_IP_BASE = int(ipaddress.IPv4Address("172.30.0.10"))  # Services in 172.30.0.0/16
INITIAL_BASE = int(ipaddress.IPv4Address("10.128.0.1"))  # endpoint addresses count up from here
CHANGED_BASE = int(ipaddress.IPv4Address("10.192.0.1"))  # replaced endpoints: disjoint
ENDPOINT_RANGE = "10.128.0.0/9"  # both of the above: routed to, and accepted by, the backend
NODE_NAME = "node-1"  # the EndpointSlice builder's node

POLL = 0.002  # change → live: one round of connects every 2 ms
TRIES_PER_ROUND = 3  # three endpoints: a round misses a live new one with p = (2/3)^3
LIVE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 0.5
CHANGE_GAP = 1.2  # > --min-sync-period: no change waits for the rate limit
START_TIMEOUT = 600.0  # proxy start → first full sync, at most
LOG_TIMEOUT = 10.0  # a change → its sync's log line, at most
HELPER_TIMEOUT = 60.0

TARGET_NFT_LIVE = 0.100
TARGET_IPT_LIVE = 1.0


# --------------------------------------------------------------------------------------------
# Helpers that run inside the pod and backend namespaces (this file, `--helper NAME`)
# --------------------------------------------------------------------------------------------


def helper_backend() -> None:
    """Accept on 0.0.0.0:8080; answer each connection with the address it reached, close."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", TARGET_PORT))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:  # ended by the parent (SIGTERM) or by its namespace going away
        for _ in sel.select(1.0):
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                with contextlib.suppress(OSError):
                    conn.send(conn.getsockname()[0].encode() + b"\n")
                conn.close()


def _connect(ip: str, port: int) -> tuple[float, str]:
    """(seconds the connect took, the address the backend reports; "" on failure)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        t = time.perf_counter()
        sock.connect((ip, port))
        took = time.perf_counter() - t
        try:
            reply = sock.recv(64).decode(errors="replace").strip()
        except OSError:
            reply = ""
        return took, reply
    except OSError:
        return float("nan"), ""
    finally:
        sock.close()


def helper_client() -> None:
    """JSON requests on stdin, one JSON answer per line on stdout."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "probe":
            # Until a connection to the ClusterIP reaches the new endpoint: when it did
            # (time.time(), comparable with the writer's clock), or null after the timeout.
            start = time.time()
            seen = None
            rounds = 0
            while time.time() - start < req["timeout"]:
                rounds += 1
                for _ in range(TRIES_PER_ROUND):
                    _, reply = _connect(req["ip"], req["port"])
                    if reply == req["want"]:
                        seen = time.time()
                        break
                if seen is not None:
                    break
                time.sleep(POLL)
            print(json.dumps({"seen": seen, "rounds": rounds}), flush=True)
        elif req["op"] == "latency":
            times = []
            replies = set()
            for _ in range(req["count"]):
                took, reply = _connect(req["ip"], req["port"])
                times.append(took)
                replies.add(reply)
                time.sleep(0.001)
            print(json.dumps({"times": times, "replies": sorted(replies)}), flush=True)
        else:
            print(json.dumps({"error": f"unknown op {req['op']!r}"}), flush=True)


# --------------------------------------------------------------------------------------------
# Network namespaces
# --------------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    """Move this thread (the main one, before any other thread exists) into a network
    namespace: sockets it opens and processes it starts are then in that namespace."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Lab:
    """node (runs kdns and holds the rules), pod (the client) and backend (every endpoint).

    pod 10.64.1.2 —eth0/eth-pod— node 10.64.1.1 | 10.64.2.1 —eth-be/eth0— backend 10.64.2.2,
    which owns all of 10.128.0.0/9 (`ip route add local`: AnyIP), where the endpoints live."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        pid = os.getpid()
        self.node, self.pod, self.backend = (f"kb-{x}-{pid}" for x in ("node", "pod", "be"))
        self.host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
        stack.callback(os.close, self.host_ns)
        for ns in (self.node, self.pod, self.backend):
            # Registered before it exists: deleted whatever fails later.
            stack.callback(subprocess.run, ["ip", "netns", "del", ns], capture_output=True)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.node, "link", "add", "eth-pod", "type", "veth", "peer", "name", "eth0")
        ip("-n", self.node, "link", "set", "eth0", "netns", self.pod)
        ip("-n", self.node, "link", "add", "eth-be", "type", "veth", "peer", "name", "eth0")
        ip("-n", self.node, "link", "set", "eth0", "netns", self.backend)
        for ns, dev, addr in (
            (self.node, "eth-pod", "10.64.1.1/24"),
            (self.node, "eth-be", "10.64.2.1/24"),
            (self.pod, "eth0", "10.64.1.2/24"),
            (self.backend, "eth0", "10.64.2.2/24"),
        ):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", self.pod, "route", "add", "default", "via", "10.64.1.1")
        ip("-n", self.backend, "route", "add", "default", "via", "10.64.2.1")
        ip("-n", self.backend, "route", "add", "local", ENDPOINT_RANGE, "dev", "lo")
        ip("-n", self.node, "route", "add", ENDPOINT_RANGE, "via", "10.64.2.2")
        subprocess.run(
            ["ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            check=True,
            timeout=30,
        )
        # From here on this process lives in the node namespace: the API server's socket, the
        # proxy process, nft and iptables all run there. Back to the host's before the
        # namespaces are deleted.
        stack.callback(self._leave)
        _setns(f"/run/netns/{self.node}")

    def _leave(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.setns(self.host_ns, CLONE_NEWNET)


class Helper:
    """This file run with `--helper NAME` inside a namespace, spoken to over pipes."""

    def __init__(self, stack: contextlib.ExitStack, ns: str, name: str) -> None:
        argv = ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve())]
        self.proc = subprocess.Popen(
            [*argv, "--helper", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(stop_process, self.proc)
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not self._line(HELPER_TIMEOUT):
            raise RuntimeError(f"the {name} helper did not start")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        if not self._sel.select(timeout):
            return ""
        return self.proc.stdout.readline()

    def ask(self, request: Json, timeout: float) -> Json:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self._line(timeout)
        if not line:
            raise RuntimeError(f"no answer from the client helper to {request['op']}")
        return json.loads(line)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


class Cluster:
    """N Services (`svc-i` in `ns-(i % 10)`), ClusterIP 172.30.x.y, one EndpointSlice each."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ips = [
            [_ip(INITIAL_BASE + ENDPOINTS * i + j) for j in range(ENDPOINTS)] for i in range(n)
        ]
        self._changed = 0

    @staticmethod
    def key(i: int) -> tuple[str, str]:
        return (f"ns-{i % NAMESPACES}", f"svc-{i}")

    @staticmethod
    def cluster_ip(i: int) -> str:
        return _ip(CLUSTER_IP_BASE + i)

    def service(self, i: int) -> Json:
        from tests.kubeapi import objects

        ns, name = self.key(i)
        port = {"name": "http", "protocol": "TCP", "port": SERVICE_PORT, "targetPort": TARGET_PORT}
        return objects.service(ns, name, cluster_ip=self.cluster_ip(i), ports=[port])

    def endpointslice(self, i: int) -> Json:
        from tests.kubeapi import objects

        ns, name = self.key(i)
        port = {"name": "http", "protocol": "TCP", "port": TARGET_PORT}
        return objects.endpointslice(ns, name, addresses=self.ips[i], ports=[port])

    def replace_endpoint(self, i: int) -> str:
        """Service i's first endpoint gets a new, unique address; returns it."""
        self._changed += 1
        new = _ip(CHANGED_BASE + self._changed)
        self.ips[i][0] = new
        return new

    def routes(self, only: Sequence[int] | None = None) -> tuple[Any, ...]:
        """The routes kdns derives, through the same parsing as the store."""
        from kdns.model import endpointslice_from_dict, service_from_dict
        from kdns.proxy.routes import build_routes

        services, endpoints = {}, {}
        for i in range(self.n) if only is None else only:
            service = service_from_dict(self.service(i))
            services[service.key] = service
            endpoints[service.key] = endpointslice_from_dict(self.endpointslice(i)).endpoints
        return build_routes(services, endpoints, NODE_NAME)


# --------------------------------------------------------------------------------------------
# 1 + 4: the data planes in-process
# --------------------------------------------------------------------------------------------


class TimedRunner:
    """The default Runner, recording (tool, seconds, stdin bytes) of each command."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, int]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        from kdns.proxy.dataplane import run_command

        t = time.perf_counter()
        result = run_command(argv, stdin)
        self.calls.append((" ".join(argv[:2]), time.perf_counter() - t, len(stdin or "")))
        return result

    def total(self, prefix: str = "") -> float:
        return sum(d for tool, d, _ in self.calls if tool.startswith(prefix))


class Libnftables:
    """One libnftables context kept across transactions (ctypes; libnftables.so.1 comes with
    the nftables package). Its socket is opened in the namespace of the creating thread."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        """A Runner: `nft -f -` through the kept context, anything else as a command."""
        from kdns.proxy.dataplane import run_command

        if list(argv) != ["nft", "-f", "-"] or stdin is None:
            return run_command(argv, stdin)
        status = self.lib.nft_run_cmd_from_buffer(self.ctx, stdin.encode())
        err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
        return (0 if status == 0 else 1), "", err

    def close(self) -> None:
        self.lib.nft_ctx_free(self.ctx)


def _median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _p90(xs: Sequence[float]) -> float:
    xs = sorted(x for x in xs if x == x)
    return xs[min(len(xs) - 1, int(0.9 * len(xs)))] if xs else float("nan")


def _timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def _nft(text: str) -> float:
    t = time.perf_counter()
    done = subprocess.run(
        ["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=60
    )
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"nft -f: {done.stderr.strip()}")
    return took


def cleanup() -> None:
    """`kdns proxy --cleanup` in-process: every mode's objects go (this kernel has no IPVS)."""
    from kdns.proxy.cleanup import cleanup_every_mode
    from kdns.proxy.dataplane import run_command

    problems = cleanup_every_mode(run_command, ipvs=False)
    if problems:
        raise RuntimeError("; ".join(problems))


def _change_routes(cluster: Cluster, i: int) -> tuple[tuple[Any, ...], frozenset[Any]]:
    cluster.replace_endpoint(i)
    return cluster.routes([i]), frozenset({cluster.key(i)})


def phase_dataplanes(
    cluster: Cluster, node: Any, workdir: Path, modes: Sequence[str], fig: Json, say: Say
) -> None:
    from kdns.proxy.dataplane import NftablesDataplane
    from kdns.proxy.ipvs import diff as ipvs_diff
    from kdns.proxy.ipvs import ipset, rules
    from kdns.proxy.ipvs.state import IpvsState
    from tests.proxy.ipvs_model import IpvsModel

    t, routes = _timed(cluster.routes)
    fig["routes_s"] = t
    say(f"  {len(routes):,} routes built in {t:.2f} s")
    picks = iter(range(cluster.n // 3, cluster.n, max(1, cluster.n // 40)))

    # nftables: full, canary, partials, and the transaction anatomy (figure 4).
    runner = TimedRunner()
    dp = NftablesDataplane(node, runner)
    total, applied = _timed(lambda: dp.sync(routes, None))
    fig["nft_full"] = {
        "render": total - runner.total(),
        "apply": runner.total("nft -f"),
        "read": runner.total("nft -j"),
        "size": applied.size,
        "rules": applied.rules,
    }
    say(f"  nftables full sync: {total:.2f} s, {applied.size:,} bytes")
    fig["nft_canary"], intact = _timed(dp.intact)
    fig["nft_intact"] = intact
    partial: dict[str, list[float]] = {"nft -f": [], "libnftables": [], "size": []}
    chain, element = [], []
    for k in range(5):
        chain.append(_nft(f"add chain ip kdns bench-probe-{k}\n"))
        element.append(_nft(f"add element ip kdns cluster-ips {{ 172.31.255.{k + 1} }}\n"))
        runner.calls.clear()
        changed_routes, changed = _change_routes(cluster, next(picks))
        applied = dp.sync(changed_routes, changed)
        partial["nft -f"].append(runner.total("nft -f"))
        partial["size"].append(applied.size)
    fig["nft_txn"] = {"chain": chain, "element": element, "partial": partial}
    try:
        lib = Libnftables()
    except OSError as e:
        fig["nft_txn"]["libnftables_error"] = str(e)
    else:
        try:
            ctx_element = []
            for k in range(5):
                t = time.perf_counter()
                status, _, _ = lib(
                    ["nft", "-f", "-"],
                    f"delete element ip kdns cluster-ips {{ 172.31.255.{k + 1} }}\n",
                )
                ctx_element.append(time.perf_counter() - t if status == 0 else float("nan"))
                changed_routes, changed = _change_routes(cluster, next(picks))
                dp.runner = lib
                t = time.perf_counter()
                dp.sync(changed_routes, changed)
                partial["libnftables"].append(time.perf_counter() - t)
            fig["nft_txn"]["ctx_element"] = ctx_element
        finally:
            dp.runner = runner
            lib.close()
    cleanup()
    say("  nftables transactions measured, table removed")

    routes = cluster.routes()  # again: the partials above changed some Services
    for mode in [m for m in IPTABLES_MODES if m in modes]:
        with iptables_backend(mode, workdir):
            phase_iptables(mode, cluster, node, picks, fig, say)

    # IPVS: render, diff against an empty table, the commands applied to the model.
    config = rules.IpvsConfig(
        families=(4,),
        local_ips=node.local_ips,
        node_ips=node.node_ips,
        cluster_cidrs=(CLUSTER_CIDR,),
    )
    routes = cluster.routes()  # again: the iptables partials changed some Services
    t_render, rendering = _timed(lambda: rules.render(routes, config))
    empty = IpvsState(device=False)
    t_diff, plan = _timed(lambda: ipvs_diff.diff(empty, rendering.state, config))
    model = IpvsModel()
    batches = ipvs_diff.batch_commands(plan.commands)
    t_apply, _ = _timed(lambda: [model.apply(argv, stdin) for argv, stdin in batches])
    ipset_text = ipset.render_ipset_restore(4, rendering.ipsets[4], {})
    fig["ipvs_full"] = {
        "render": t_render,
        "diff": t_diff,
        "apply_model": t_apply,
        "commands": len(plan.commands),
        "size": sum(len(stdin) for _, stdin in batches),
        "companion_size": len(ipset_text) + len(rendering.iptables[4]),
        "model_matches": not ipvs_diff.diff(model.state, rendering.state, config),
    }
    i = next(picks)
    cluster.replace_endpoint(i)
    every = cluster.routes()
    t_one, one_plan = _timed(lambda: _ipvs_one(every, config, model))
    fig["ipvs_one"] = {
        "time": t_one,
        "commands": len(one_plan.commands),
        "lines": [" ".join(argv) for argv in one_plan.commands],
    }
    say("  IPVS rendered and applied to the model")


IPTABLES_MODES = ("iptables", "iptables-legacy")
_LEGACY_TOOLS = ("iptables", "iptables-save", "iptables-restore")


def legacy_path(workdir: Path) -> str:
    """A directory whose iptables, iptables-save and iptables-restore (and ip6…) are the legacy
    (x_tables) ones, put first on PATH: kdns runs whatever `iptables-restore` PATH finds."""
    bindir = workdir / "legacy-bin"
    if not bindir.exists():
        bindir.mkdir()
        for tool in _LEGACY_TOOLS:
            for fam in ("ip", "ip6"):
                name = fam + tool.removeprefix("ip")
                target = subprocess.run(
                    ["which", name.replace("tables", "tables-legacy", 1)],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                if target:
                    (bindir / name).symlink_to(target)
    return f"{bindir}:{os.environ.get('PATH', '')}"


@contextlib.contextmanager
def iptables_backend(mode: str, workdir: Path) -> Iterator[None]:
    """iptables-nft (Debian's default `iptables`) or, for "iptables-legacy", x_tables."""
    if mode != "iptables-legacy":
        yield
        return
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = legacy_path(workdir)
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def phase_iptables(
    mode: str, cluster: Cluster, node: Any, picks: Iterator[int], fig: Json, say: Say
) -> None:
    """Full sync, canary, three partial syncs, cleanup; on a failed full sync only the error."""
    from kdns.proxy.dataplane import ApplyError, IptablesDataplane

    routes = cluster.routes()
    runner = TimedRunner()
    dp = IptablesDataplane(node, runner)
    out: Json = {}
    fig[f"{mode}_inproc"] = out
    try:
        total, applied = _timed(lambda: dp.sync(routes, None))
    except ApplyError as e:
        out["error"] = str(e)[:300]
        out["apply"] = runner.total("iptables-restore")
        say(f"  {mode} full sync FAILED after {out['apply']:.0f} s: {out['error'][:120]}")
        cleanup()
        return
    out["full"] = {
        "render": total - runner.total(),
        "apply": runner.total("iptables-restore"),
        "read": runner.total("iptables-save"),
        "size": applied.size,
        "rules": applied.rules,
    }
    say(f"  {mode} full sync: {total:.2f} s, {applied.size:,} bytes")
    out["canary"], out["intact"] = _timed(dp.intact)
    partial: dict[str, list[float]] = {"apply": [], "total": [], "size": []}
    for _ in range(3):
        runner.calls.clear()
        _, changed = _change_routes(cluster, next(picks))
        every = cluster.routes()  # built before the clock starts, as the engine has them
        t = time.perf_counter()
        applied = dp.sync(every, changed)
        partial["total"].append(time.perf_counter() - t)
        partial["apply"].append(runner.total("iptables-restore"))
        partial["size"].append(applied.size)
    out["partial"] = partial
    cleanup()
    say(f"  {mode} partial syncs measured, chains removed")


def _ipvs_one(routes: Any, config: Any, model: Any) -> Any:
    """IPVS has no partial render: a change is a full render diffed against the table."""
    from kdns.proxy.ipvs.diff import diff
    from kdns.proxy.ipvs.rules import render

    return diff(model.state, render(routes, config).state, config)


# --------------------------------------------------------------------------------------------
# 2 + 3: the real `kdns proxy` process
# --------------------------------------------------------------------------------------------

SYNC_LINE = re.compile(
    r"(\w+) proxy: (full|partial) sync of (\d+) service ports \((\d+) changed Services\): "
    r"(\d+) rules, (\d+) bytes, (\d+) ms"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    def __init__(self, mode: str, kubeconfig: Path, workdir: Path) -> None:
        self.mode = mode
        self.metrics_port = free_port()
        self.log_path = workdir / f"proxy-{mode}.log"
        self.argv = [
            sys.executable,
            "-m",
            "kdns",
            "proxy",
            "--mode",
            "nftables" if mode == "nftables" else "iptables",
            "--kubeconfig",
            str(kubeconfig),
            "--node-name",
            NODE_NAME,
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--min-sync-period",
            "1",
            "--sync-period",
            "300",
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
            "--healthz-addr",
            f"127.0.0.1:{free_port()}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.tree = REPO_ROOT  # the checkout whose kdns runs (its root is the working directory)

    def start(self, stack: contextlib.ExitStack) -> None:
        # PATH as set by iptables_backend: the legacy tools first for "iptables-legacy".
        env = {**os.environ, "KDNS_RESOLV_CONF": "/dev/null"}
        with self.log_path.open("wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv, cwd=self.tree, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        stack.callback(stop_process, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def syncs(self) -> list[tuple[str, int, int, int, int]]:
        """(kind, changed Services, rules, bytes, ms) of every sync logged so far."""
        text = self.log_path.read_text(errors="replace")
        return [
            (m[2], int(m[4]), int(m[5]), int(m[6]), int(m[7])) for m in SYNC_LINE.finditer(text)
        ]

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_first_sync(self, timeout: float) -> float | None:
        """Seconds from start to the first successful full sync (kdns_proxy_syncs_total; the
        metric, not the log line, so a reworded log cannot make this wait for nothing)."""
        deadline = self.started + timeout
        while time.monotonic() < deadline and self.alive():
            with contextlib.suppress(OSError):
                if self.full_syncs() >= 1:
                    return time.monotonic() - self.started
            time.sleep(0.05)
        return None

    def full_syncs(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kdns_proxy_syncs_total{")
            and 'kind="full"' in line
            and 'result="ok"' in line
        )


def latency(client: Helper, ip_: str, port: int, count: int) -> Json:
    answer = client.ask({"op": "latency", "ip": ip_, "port": port, "count": count}, 120)
    times = answer["times"]
    ok = [t for t in times if t == t]
    return {
        "p50": _median(ok),
        "p90": _p90(ok),
        "failed": len(times) - len(ok),
        "backends": len([r for r in answer["replies"] if r]),
    }


def phase_proxy(
    mode: str,
    cluster: Cluster,
    server: Any,
    kubeconfig: Path,
    workdir: Path,
    client: Helper,
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    say: Say,
) -> Json:
    out: Json = {}
    proxy = Proxy(mode, kubeconfig, workdir)
    proxy.start(stack)
    try:
        first = proxy.wait_first_sync(START_TIMEOUT)
        if first is None:
            out["failed"] = "no full sync" + ("" if proxy.alive() else " (exited)")
            say(f"  {mode}: {out['failed']}; log tail:\n{proxy.log_tail()}")
            return out
        out["first_sync"] = first
        deadline = time.monotonic() + LOG_TIMEOUT
        while time.monotonic() < deadline and not proxy.syncs():
            time.sleep(0.05)
        full = next((s for s in proxy.syncs() if s[0] == "full"), None)
        if full is None:
            out["failed"] = "synced, but no sync line in the log (was it reworded?)"
            say(f"  {mode}: {out['failed']}")
            return out
        out["full_sync"] = {"rules": full[2], "size": full[3], "ms": full[4]}
        say(f"  {mode}: first full sync {first:.1f} s after start ({full[4]} ms in the engine)")
        time.sleep(CHANGE_GAP)

        # 2. change → live
        lives: list[float] = []
        timeouts = 0
        partials: list[tuple[str, int, int, int, int]] = []
        step = max(1, cluster.n // (args.changes + 2))
        for k in range(args.changes):
            i = (k + 1) * step  # neither the first nor the last Service (figure 3)
            seen_before = len(proxy.syncs())
            new_ip = cluster.replace_endpoint(i)
            t_write = time.time()
            server.update("endpointslices", cluster.endpointslice(i))
            answer = client.ask(
                {
                    "op": "probe",
                    "ip": cluster.cluster_ip(i),
                    "port": SERVICE_PORT,
                    "want": new_ip,
                    "timeout": LIVE_TIMEOUT,
                },
                LIVE_TIMEOUT + 30,
            )
            if answer["seen"] is None:
                timeouts += 1
            else:
                lives.append(answer["seen"] - t_write)
            deadline = time.monotonic() + LOG_TIMEOUT
            while time.monotonic() < deadline and len(proxy.syncs()) <= seen_before:
                time.sleep(0.02)
            partials.extend(s for s in proxy.syncs()[seen_before:] if s[0] == "partial")
            time.sleep(CHANGE_GAP)
        out["live"] = sorted(lives)
        out["live_timeouts"] = timeouts
        out["partials"] = partials
        say(
            f"  {mode}: change → live p50 {_median(lives) * 1000:.0f} ms, "
            f"max {max(lives, default=float('nan')) * 1000:.0f} ms, {timeouts} timeouts"
        )

        # 3. first-packet connect latency
        first_i, last_i = render_order_ends(cluster)
        out["connect_first"] = latency(
            client, cluster.cluster_ip(first_i), SERVICE_PORT, args.connects
        )
        out["connect_last"] = latency(
            client, cluster.cluster_ip(last_i), SERVICE_PORT, args.connects
        )
        out["connect_pod"] = latency(client, cluster.ips[first_i][1], TARGET_PORT, args.connects)
        out["alive_at_end"] = proxy.alive()
        return out
    finally:
        proxy.stop()


def render_order_ends(cluster: Cluster) -> tuple[int, int]:
    """Indexes of the first and last Service in render order (by namespace/name, as
    `route_sort_key`); for N a power of ten they are also the first and last created."""
    keys = sorted(range(cluster.n), key=cluster.key)
    return keys[0], keys[-1]


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, say: Say) -> Json:
    from kdns.proxy.dataplane import (
        node_from_host,
        run_command,
    )
    from tests.kubeapi import objects
    from tests.kubeapi.server import ApiServer

    fig: Json = {"n": args.services}
    cluster = Cluster(args.services)
    fig["ends"] = render_order_ends(cluster)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="kdns-proxy-bench-"))
        stack.callback(subprocess.run, ["rm", "-rf", str(workdir)])
        lab = Lab(stack)
        say(f"namespaces {lab.node}, {lab.pod}, {lab.backend} ready")
        Helper(stack, lab.backend, "backend")
        client = Helper(stack, lab.pod, "client")
        fig["connect_norules"] = latency(client, cluster.ips[0][1], TARGET_PORT, args.connects)
        node = node_from_host(run_command, (4,), (CLUSTER_CIDR,), (), False)

        say(f"1. data planes in-process, N={cluster.n:,}")
        phase_dataplanes(cluster, node, workdir, args.modes, fig, say)

        # HTTPS, as clusters serve it: the kubeconfig carries the server's CA (trustme).
        server = ApiServer()
        stack.callback(server.stop)
        t = time.monotonic()
        names = ["default", "kube-system"] + [f"ns-{k}" for k in range(NAMESPACES)]
        server.load("namespaces", (objects.namespace(ns) for ns in names))
        server.load("services", (cluster.service(i) for i in range(cluster.n)))
        server.load("endpointslices", (cluster.endpointslice(i) for i in range(cluster.n)))
        server.start()
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        say(f"2. API server loaded with {2 * cluster.n:,} objects in {time.monotonic() - t:.1f} s")
        for mode in args.modes:
            failed = fig.get(f"{mode}_inproc", {}).get("error")
            if failed:
                fig[mode] = {"failed": "skipped: the in-process full sync failed"}
                continue
            with iptables_backend(mode, workdir):
                fig[mode] = phase_proxy(
                    mode, cluster, server, kubeconfig, workdir, client, args, stack, say
                )
                cleanup()  # the proxy leaves its rules on exit, as kube-proxy does
    return fig


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x * 1000:.1f} ms"


def _us(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x * 1e6:.0f} µs"


def _s(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.2f} s"


def _kb(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x / 1000:,.1f} kB"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def report(fig: Json, args: argparse.Namespace) -> str:
    n = fig["n"]
    lines = [
        f"kdns proxy benchmark, N = {n:,} Services × {ENDPOINTS} endpoints (one TCP port each)",
        environment(),
        f"other processes used {fig.get('other_cores', 0.0):.2f} cores on average over the run",
        "",
        "1. full render / apply, in-process (real tools in a network namespace)",
    ]
    nf, iv, txn = fig["nft_full"], fig["ipvs_full"], fig["nft_txn"]
    rows = [
        [
            "nftables",
            _s(nf["render"]),
            f"{_s(nf['apply'])} (nft -f)",
            _kb(nf["size"]),
            f"{nf['rules']:,}",
            f"{_s(fig['nft_canary'])} ({'intact' if fig['nft_intact'] else 'NOT intact'})",
        ]
    ]
    partial_notes = [
        f"nftables: nft -f {_ms(_median(txn['partial']['nft -f']))} "
        f"({_kb(_median(txn['partial']['size']))})"
    ]
    for mode in IPTABLES_MODES:
        out = fig.get(f"{mode}_inproc")
        if out is None:
            continue
        if "error" in out:
            rows.append([mode, "", f"FAILED after {_s(out['apply'])}: {out['error'][:70]}"])
            rows[-1] += ["", "", ""]
            continue
        full, part = out["full"], out["partial"]
        rows.append(
            [
                mode,
                _s(full["render"]),
                f"{_s(full['apply'])} (iptables-restore; + {_s(full['read'])} iptables-save)",
                _kb(full["size"]),
                f"{full['rules']:,}",
                f"{_s(out['canary'])} ({'intact' if out['intact'] else 'NOT intact'})",
            ]
        )
        partial_notes.append(
            f"{mode}: iptables-restore {_ms(_median(part['apply']))} of "
            f"{_ms(_median(part['total']))} ({_kb(_median(part['size']))})"
        )
    rows.append(
        [
            "IPVS (model)",
            f"{_s(iv['render'])} + diff {_s(iv['diff'])}",
            f"{_s(iv['apply_model'])} (IpvsModel, no kernel IPVS)",
            f"{_kb(iv['size'])} (+ {_kb(iv['companion_size'])} ipset/iptables)",
            f"{iv['commands']:,} commands",
            "model = render" if iv["model_matches"] else "MODEL DIFFERS",
        ]
    )
    lines += table(
        ["mode", "render", "apply", "transaction", "rules/elements", "canary check"], rows
    )
    ipvs_one = fig["ipvs_one"]
    lines.append(
        f"IPVS, one endpoint replaced: render + diff {_s(ipvs_one['time'])}, "
        f"{ipvs_one['commands']} commands: {'; '.join(ipvs_one['lines'][:4])}"
    )
    lines.append("in-process partial sync, one endpoint replaced: " + "; ".join(partial_notes))
    lines += ["", "2. one endpoint replaced → the new endpoint reached by a real connection"]
    rows = []
    for mode in args.modes:
        f = fig.get(mode, {})
        if "failed" in f or "live" not in f:
            rows.append([mode, f.get("failed", "not run"), "", "", "", "", ""])
            continue
        target = TARGET_NFT_LIVE if mode == "nftables" else TARGET_IPT_LIVE
        live = f["live"]
        p50 = _median(live)
        worst = float("inf") if f["live_timeouts"] else max(live, default=float("nan"))
        ok = worst < target
        parts = f["partials"]
        rows.append(
            [
                mode,
                f"{_s(f['first_sync'])} ({f['full_sync']['ms']} ms, {_kb(f['full_sync']['size'])})",
                f"{_ms(p50)} / {'> 5 s' if worst == float('inf') else _ms(worst)}",
                f"{len(live)} of {len(live) + f['live_timeouts']}",
                _ms(_median([p[4] / 1000 for p in parts])) if parts else "—",
                (
                    f"{_median([p[2] for p in parts]):.0f} / {_kb(_median([p[3] for p in parts]))}"
                    if parts
                    else "—"
                ),
                f"< {_ms(target)}: {'PASS' if ok else 'MISS'}",
            ]
        )
    lines += table(
        [
            "mode",
            "start → first sync (engine, size)",
            "change → live p50 / max",
            "seen",
            "engine sync p50",
            "rules / bytes per change",
            "target (max)",
        ],
        rows,
    )
    lines += ["", "3. first-packet TCP connect latency from the pod, p50 / p90"]
    rows = [
        [
            "no rules at all",
            "",
            "",
            f"{_us(fig['connect_norules']['p50'])} / {_us(fig['connect_norules']['p90'])}",
        ]
    ]
    for mode in args.modes:
        f = fig.get(mode, {})
        if "connect_first" not in f:
            continue
        cells = [
            f"{_us(f[k]['p50'])} / {_us(f[k]['p90'])}"
            + (f" ({f[k]['failed']} failed)" if f[k]["failed"] else "")
            for k in ("connect_first", "connect_last", "connect_pod")
        ]
        rows.append([mode, *cells])
    lines += table(
        ["mode", "first Service", "last Service", "an endpoint directly (no Service)"], rows
    )
    lines += ["", "4. nftables transactions at this size (median of 5), the full table in place"]
    rows = [
        ["add chain only", _ms(_median(txn["chain"])), "—"],
        [
            "one add element",
            _ms(_median(txn["element"])),
            _ms(_median(txn.get("ctx_element", []))) + " (delete element)",
        ],
        [
            "one endpoint replaced (partial sync)",
            _ms(_median(txn["partial"]["nft -f"])),
            _ms(_median(txn["partial"]["libnftables"])) + " (whole sync call)",
        ],
    ]
    lines += table(["transaction", "nft -f - (a process each)", "one libnftables context"], rows)
    if "libnftables_error" in txn:
        lines.append(f"libnftables not usable: {txn['libnftables_error']}")
    lines += [
        "",
        "change → live: API write → first connection to the ClusterIP answered by the new endpoint "
        f"({TRIES_PER_ROUND} connects per round, a round every {POLL * 1000:g} ms, at most "
        f"{LIVE_TIMEOUT:g} s); the proxy ran with --min-sync-period 1 --sync-period 300; "
        f"changes {CHANGE_GAP:g} s apart. IPVS: this kernel has no IPVS; its figures come from "
        "the model.",
    ]
    return "\n".join(lines)


def environment() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    ipt = subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"host: kernel {os.uname().release}, {os.cpu_count()} CPUs, load {load}; Python "
        f"{sys.version.split()[0]}; {nft}; {ipt}; kdns {rev or '?'}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000, help="N Services (10000)")
    parser.add_argument("--changes", type=int, default=10, help="endpoint changes per mode (10)")
    parser.add_argument("--connects", type=int, default=200, help="connects per latency figure")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["nftables", *IPTABLES_MODES],
        choices=["nftables", *IPTABLES_MODES],
        help="kernel modes for the proxy process (figures 2 and 3); iptables uses the default "
        "`iptables-restore` (iptables-nft on Debian 12), iptables-legacy the x_tables one",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    parser.add_argument("--helper", choices=["backend", "client"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.helper:
        if not 100 <= args.services <= 50_000:
            parser.error("--services: 100 to 50000")
        if not 1 <= args.changes <= 100 or not 10 <= args.connects <= 5000:
            parser.error("--changes 1-100, --connects 10-5000")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs every finally/ExitStack on the way out


def machine_cpu() -> float:
    """Non-idle CPU time of the whole machine, seconds, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this script and every process it started and reaped (the proxies, nft,
    iptables-restore, the helpers): what is left of the machine's is other processes'."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.helper == "backend":
        helper_backend()
        return 0
    if args.helper == "client":
        helper_client()
        return 0
    if os.geteuid() != 0:
        print("proxy_sync.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "nft", "iptables-restore"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"proxy_sync.py: {tool} is missing", file=sys.stderr)
            return 2
    if "iptables-legacy" in args.modes and not shutil.which("iptables-legacy-restore"):
        print(
            "proxy_sync.py: no iptables-legacy-restore; iptables-legacy left out", file=sys.stderr
        )
        args.modes = [m for m in args.modes if m != "iptables-legacy"]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    machine_before, ours_before = machine_cpu(), own_cpu()
    fig = run(args, say)
    elapsed = time.monotonic() - started
    other = (machine_cpu() - machine_before) - (own_cpu() - ours_before)
    fig["other_cores"] = max(other, 0.0) / elapsed
    say(f"done in {elapsed:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1, default=str))
    print(report(fig, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

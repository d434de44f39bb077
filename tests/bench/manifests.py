"""Benchmark: kdns serving 10,000 Services from manifest files — load time, memory, one-file reload.

What it measures. N Services (``--services``, default 10,000) spread over 10 namespaces (ports 80
and 443; every tenth one headless) with one EndpointSlice each (three ready endpoints, every
address unique) are written as `kubectl get -o yaml` would print them, in two layouts:

- ``file``: one multi-document YAML file holding every object;
- ``folder``: one file per Service (the Service and its slice), ten folders of N/10 files.

For each layout, kdns is started as a subprocess: ``<python> -m kdns serve --manifests PATH
--dns-addr 127.0.0.1:P …`` (run from ``--checkout``, default this repository, so that ``import
kdns`` is that checkout's; ``--reference DIR`` runs the same steps with another checkout, e.g. main's
worktree, for before/after figures in one run). Then:

1. load: from Popen to the first NOERROR answer carrying the LAST Service's address (polled over
   UDP every 20 ms), and kdns's CPU seconds until then (user + system, from /proc/PID/stat:
   steadier than wall time on a busy machine);
2. peak RSS at load: VmHWM from /proc/PID/status once ready (the same figure as ru_maxrss);
3. steady RSS: VmRSS after 2 s idle, and kdns's CPU share over the next 3 s idle (inotify wakes
   kdns only for a change; its safety look at the files every 5 s or more may fall in them);
4. one-file reload: one Service's clusterIP is changed in its file (write to a temporary name,
   then rename, as editors and `kubectl get -o yaml > f.tmp && mv` do); timed from the rename
   to the first answer with the new address (polled every 0.1 s; this includes the second look,
   0.2 s or more later, that a change must hold still for), kdns's CPU seconds
   meanwhile, and, when kdns logs it, the reload's own cost from its log line ("read in X s,
   applied in Y s");
5. ru_maxrss of the child after it exits (os.wait4), covering the load and the reload.

Targets (N = 10,000, from issue 15): load ≤ 2 s, peak RSS ≤ 150 MB, a one-file reload ≤ 200 ms
(the reload's own read + apply, folder layout). Each is printed as PASS or MISS on a quiet
machine's terms; the script exits 0 either way (a measurement, not a test), 1 when kdns cannot
be started.

Compiled modules: by default kdns runs with its modules' bytecode cached (a temporary
PYTHONPYCACHEPREFIX, warmed by one `kdns serve --help` per checkout), as an installed kdns has
it; ``--no-bytecode`` keeps the environment's PYTHONDONTWRITEBYTECODE, and every start then
compiles each kdns module again (about 0.15 CPU-s here).

Caveats. On a 2-core machine shared with other work, wall times stretch with the load average
(printed before each run); CPU seconds stretch much less. Nothing is pinned.

How to run (only talks to 127.0.0.1; pytest does not collect it):

    .venv/bin/python tests/bench/manifests.py
    .venv/bin/python tests/bench/manifests.py --reference /path/to/main-checkout
    .venv/bin/python tests/bench/manifests.py --services 2000 --layouts folder   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rdatatype
import yaml

REPO = Path(__file__).resolve().parents[2]
NAMESPACES = 10
TARGET_SERVICES = 10_000
TARGET_LOAD_S = 2.0
TARGET_PEAK_MB = 150.0
TARGET_RELOAD_S = 0.2
LOG_COST = re.compile(r"read in ([0-9.]+) s, applied in ([0-9.]+) s")


# --- the manifests -------------------------------------------------------------------------------


def cluster_ip(i: int) -> str:
    return str(ipaddress.IPv4Address("10.96.0.0") + i)


def service(i: int, ip: str | None = None) -> dict:
    name, namespace = f"svc-{i}", f"ns-{i % NAMESPACES}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"00000000-0000-4000-8000-{i:012d}",
            "resourceVersion": str(1000 + i),
            "labels": {"app": name},
        },
        "spec": {
            "clusterIP": "None" if i % 10 == 0 else ip or cluster_ip(i),
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443},
            ],
            "selector": {"app": name},
            "sessionAffinity": "None",
            "type": "ClusterIP",
        },
    }


def endpoint_slice(i: int) -> dict:
    name, namespace = f"svc-{i}", f"ns-{i % NAMESPACES}"
    first = ipaddress.IPv4Address("10.128.0.0") + 3 * i
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-x7k2p",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [str(first + j)], "conditions": {"ready": True}, "nodeName": "node-1"}
            for j in range(3)
        ],
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "https", "port": 8443, "protocol": "TCP"},
        ],
    }


def dump(objs: Iterator[dict]) -> str:
    return yaml.dump_all(
        objs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False
    )


def write_layout(root: Path, layout: str, n: int) -> Path:
    """Write the manifests in `layout` under `root`; the path to give kdns."""
    if layout == "file":
        one = root / "cluster.yaml"
        root.mkdir(parents=True)
        one.write_text(dump(obj for i in range(n) for obj in (service(i), endpoint_slice(i))))
        return one
    for i in range(n):
        path = folder_file(root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(iter((service(i), endpoint_slice(i)))))
    return root


def size_mb(path: Path) -> float:
    files = path.rglob("*.yaml") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files) / 1e6


def folder_file(folder: Path, i: int) -> Path:
    return folder / f"ns-{i % NAMESPACES}" / f"svc-{i}.yaml"


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # a dot name: kdns skips it
    tmp.write_text(text)
    os.rename(tmp, path)


# --- the kdns process ----------------------------------------------------------------------------


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def ask(port: int, name: str, timeout: float = 0.2) -> list[str]:
    """The A addresses kdns answers for `name` (empty on no answer or an error)."""
    query = dns.message.make_query(name, dns.rdatatype.A)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query.to_wire(), ("127.0.0.1", port))
            reply = dns.message.from_wire(sock.recv(65535))
        except (OSError, dns.exception.DNSException):
            return []
    return [rr.address for rrset in reply.answer for rr in rrset if rr.rdtype == dns.rdatatype.A]


def wait_for(
    port: int,
    name: str,
    address: str,
    deadline: float,
    proc: subprocess.Popen,
    every: float = 0.02,
) -> float:
    """Poll until `name` answers `address` (every `every` s); the time it did, or raise."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kdns exited with {proc.returncode}")
        if address in ask(port, name):
            return time.monotonic()
        time.sleep(every)
    raise RuntimeError(f"{name} did not answer {address} in time")


def proc_status(pid: int, field: str) -> float:
    """A `VmRSS:`-style field of /proc/PID/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Result:
    checkout: str
    layout: str
    load_s: float = float("nan")
    load_cpu_s: float = float("nan")
    peak_mb: float = float("nan")
    steady_mb: float = float("nan")
    idle_cpu_pct: float = float("nan")
    reload_e2e_s: float = float("nan")
    reload_cost_s: float = float("nan")  # read + apply, from kdns's log line
    reload_cpu_s: float = float("nan")
    maxrss_mb: float = float("nan")
    error: str = ""


def child_env(work: Path, bytecode: bool) -> dict[str, str]:
    """The environment kdns runs in. With `bytecode`, compiled modules are written to (and read
    from) a cache under `work`, as an installed package has them; without, each start compiles
    every kdns module again when the environment says PYTHONDONTWRITEBYTECODE (this sandbox
    does), which adds its cost to every load figure."""
    env = dict(os.environ)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def warm_bytecode(checkout: Path, env: dict[str, str]) -> None:
    """Compile what `kdns serve` imports once, before anything is measured."""
    subprocess.run(
        [sys.executable, "-m", "kdns", "serve", "--help"],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )


def run_one(
    checkout: Path, layout: str, path: Path, n: int, work: Path, env: dict[str, str]
) -> Result:
    result = Result(str(checkout), layout)
    port = free_port()
    log_path = work / f"kdns-{layout}-{abs(hash(str(checkout)))}.log"
    argv = [
        sys.executable,
        "-m",
        "kdns",
        "serve",
        "--manifests",
        str(path),
        "--dns-addr",
        f"127.0.0.1:{port}",
        "--health-addr",
        f"127.0.0.1:{free_port()}",
        "--ready-addr",
        f"127.0.0.1:{free_port()}",
        "--metrics-addr",
        f"127.0.0.1:{free_port()}",
        "--query-log",
        "false",
        "--upstreams",  # nothing: every name asked is a cluster name, nothing leaves loopback
    ]
    last = n - 1 if (n - 1) % 10 else n - 2  # not headless: it has a cluster IP
    last_name = f"svc-{last}.ns-{last % NAMESPACES}.svc.cluster.local."
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = wait_for(port, last_name, cluster_ip(last), started + 300, proc)
        result.load_s = ready - started
        result.load_cpu_s = cpu_seconds(proc.pid)
        result.peak_mb = proc_status(proc.pid, "VmHWM")
        time.sleep(2)  # idle: what the process keeps
        cpu_before, t_before = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(3)
        result.idle_cpu_pct = (
            100 * (cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - t_before)
        )
        result.steady_mb = proc_status(proc.pid, "VmRSS")
        result.reload_e2e_s, result.reload_cost_s, result.reload_cpu_s = reload_one(
            layout, path, n, port, proc, log_path
        )
    except RuntimeError as exc:
        result.error = str(exc)
    finally:
        proc.terminate()
        with contextlib.suppress(ChildProcessError):
            _, _, usage = os.wait4(proc.pid, 0)
            result.maxrss_mb = usage.ru_maxrss / 1024
        proc.returncode = proc.returncode or 0
    return result


def reload_one(
    layout: str, path: Path, n: int, port: int, proc: subprocess.Popen, log_path: Path
) -> tuple[float, float, float]:
    """Change svc-1's clusterIP in its file: (write → new answer, kdns's logged read + apply,
    kdns's CPU seconds from the write to the answer)."""
    new_ip = "10.200.0.1"
    if layout == "folder":
        target = folder_file(path, 1)
        text = dump(iter((service(1, new_ip), endpoint_slice(1))))
    else:
        target = path
        text = target.read_text().replace(f"clusterIP: {cluster_ip(1)}\n", f"clusterIP: {new_ip}\n")
    logged_before = len(LOG_COST.findall(log_path.read_text(errors="replace")))
    cpu_before = cpu_seconds(proc.pid)
    written = time.monotonic()
    replace_file(target, text)
    # Polled every 0.1 s, not 20 ms: kdns's reload thread and its DNS thread share one GIL,
    # and every query takes it from the reload for a moment.
    name = "svc-1.ns-1.svc.cluster.local."
    seen = wait_for(port, name, new_ip, written + 120, proc, every=0.1)
    cpu = cpu_seconds(proc.pid) - cpu_before
    cost = float("nan")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        costs = LOG_COST.findall(log_path.read_text(errors="replace"))
        if len(costs) > logged_before:
            read_s, applied_s = costs[-1]
            cost = float(read_s) + float(applied_s)
            break
        time.sleep(0.05)
    return seen - written, cost, cpu


# --- the report ------------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "" if value != value else ("PASS" if value <= target else "MISS")


def report(results: list[Result], n: int) -> str:
    rows = [
        ("load (s)", "load_s", TARGET_LOAD_S),
        ("load CPU (s)", "load_cpu_s", None),
        ("peak RSS at load (MB)", "peak_mb", TARGET_PEAK_MB),
        ("steady RSS (MB)", "steady_mb", None),
        ("idle CPU (%)", "idle_cpu_pct", None),
        ("one-file reload, write → answer (s)", "reload_e2e_s", None),
        ("one-file reload, read + apply (s)", "reload_cost_s", TARGET_RELOAD_S),
        ("one-file reload, CPU (s)", "reload_cpu_s", None),
        ("ru_maxrss at exit (MB)", "maxrss_mb", None),
    ]
    heads = [f"{Path(r.checkout).name}/{r.layout}" for r in results]
    width = max(len(label) for label, _, _ in rows) + 2
    lines = [
        f"N = {n} Services + {n} EndpointSlices",
        "".ljust(width) + "".join(f"{h:>22}" for h in heads),
    ]
    for label, attr, target in rows:
        cells = []
        for r in results:
            value = getattr(r, attr)
            mark = verdict(value, target) if target is not None and n == TARGET_SERVICES else ""
            cells.append(f"{value:.3f} {mark}".rstrip().rjust(22))
        lines.append(label.ljust(width) + "".join(cells))
    lines.extend(f"{h}: {r.error}" for h, r in zip(heads, results, strict=True) if r.error)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=TARGET_SERVICES)
    parser.add_argument("--layouts", default="file,folder")
    parser.add_argument("--checkout", type=Path, default=REPO)
    parser.add_argument("--reference", type=Path, help="another checkout to measure the same way")
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="leave PYTHONDONTWRITEBYTECODE as it is: every start compiles kdns's modules",
    )
    args = parser.parse_args()
    checkouts = [args.checkout] + ([args.reference] if args.reference else [])
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kdns-manifests-bench-") as tmp:
        work = Path(tmp)
        env = child_env(work, bytecode=not args.no_bytecode)
        print(f"compiled modules: {'none' if args.no_bytecode else 'cached, as installed'}")
        if not args.no_bytecode:
            for checkout in checkouts:
                warm_bytecode(checkout, env)
        for layout in args.layouts.split(","):
            for checkout in checkouts:
                # Each run starts from the files as generated: the previous run edited them.
                path = write_layout(work / f"m-{len(results)}", layout, args.services)
                print(
                    f"{checkout} {layout} ({size_mb(path):.1f} MB): "
                    f"load average {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                results.append(run_one(checkout, layout, path, args.services, work, env))
    print(report(results, args.services))
    print(
        f"(this script's own peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

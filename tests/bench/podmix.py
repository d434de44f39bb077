"""Benchmark: what pods really ask (glibc's ndots:5 search list), kdns against unbound.

What it measures. A cluster of N ClusterIP Services (default 1,000: ``app-0`` … ``app-99`` in each
of 10 namespaces ``team-0`` … ``team-9``) and an upstream serving M outside names (default 500,
``host-N.example.com|net|org``, every one with an A record, every other one with an AAAA too).
The query file is what pods send when they resolve names through glibc with the resolv.conf
kubelet writes (``search <ns>.svc.cluster.local svc.cluster.local cluster.local``,
``options ndots:5``) and ask for A and AAAA (``getaddrinfo`` with ``AF_UNSPEC``). Each lookup
comes from a pod in a namespace picked uniformly and is one of:

- 50 % an outside name (Zipf-like popularity over the M names): fewer than 5 dots, so glibc
  tries each search domain first, ``host-1.example.com.team-3.svc.cluster.local``,
  ``….svc.cluster.local``, ``….cluster.local`` (each NXDOMAIN), then ``host-1.example.com.``;
  8 queries (A and AAAA for each of the 4 names);
- 35 % a short name of a Service in the pod's own namespace (Zipf-like over the 100 names):
  ``app-7`` is asked as ``app-7.team-3.svc.cluster.local`` and found; 2 queries;
- 15 % ``svc.other-namespace`` (Zipf-like Service, uniform other namespace): first
  ``app-7.team-5.team-3.svc.cluster.local`` (NXDOMAIN), then ``app-7.team-5.svc.cluster.local``
  (found); 4 queries.

glibc moves to the next search name when neither the A nor the AAAA answer has records (NXDOMAIN
or NODATA), and stops at the first name where one of them has (res_nsearch, with
``T_QUERY_A_AND_AAAA`` sending both queries for each name).

The two servers do the same job:

- kdns: ``kdns serve --manifests <generated> --upstreams <upstream>`` (one process; its upstream
  cache holds 9,984 answers and 9,984 denials and caps TTLs at 30 s, CoreDNS's ``cache 30``);
- unbound, statically: ``local-zone: "cluster.local." static`` with every Service as local-data
  (and the zone's SOA, so NXDOMAIN carries it as kdns's does), ``forward-zone`` ``.`` to the same
  upstream, cache on with the same TTL caps (``cache-max-ttl``/``cache-max-negative-ttl`` 30),
  caches in bytes sized to hold more than kdns's 2 x 9,984 entries of this size (neither evicts:
  the working set is ~1,000 outside answers), ``num-threads: 1``, no validation
  (``module-config: "iterator"``), and the receive buffer kdns asks for (``so-rcvbuf``, the 4 MiB
  of kdns/dns/server.py; ``ss`` shows both, the kernel doubles it).

The upstream is another unbound, on 127.0.0.3, answering the outside names authoritatively from
``local-data`` (``local-zone: "." static``: it never sends a query anywhere), TTL 300, on the
client's core so that the server's core holds only the server under test.

How it measures (the harness of tests/bench/dns_vs_dnsmasq.py): the server runs pinned to one
core and dnsperf to the other; kdns and unbound run interleaved (kdns, unbound, kdns, …) with a
fresh server per round and a warm-up that asks every outside name once; per round it finds the
max qps without loss (dnsperf -Q bisection, <= 0.01 % lost or SERVFAIL/REFUSED, >= 98 % of the
requested rate), the unthrottled qps, and at a fixed paced rate (``--fixed-qps``) the p50 / p99
latency (from dnsperf -v's per-query times) and the server's CPU per answered query (utime +
stime from /proc/<pid>/stat). It prints best and median of rounds and the ratios kdns / unbound
against issue 11's targets (qps >= 0.9x unbound, CPU per query <= 1.5x unbound), as PASS / MISS.
It asserts nothing about speed: it exits 0 after printing, 1 only when a server does not start or
the two do not answer a sample of the query file the same way (checked first, with dig, against
the answers the generated data implies).

How to run (Debian packages dnsperf, unbound, bind9-dnsutils; taskset; two cores; only
127.0.0.1 and 127.0.0.3 are used; about five minutes):

    .venv/bin/python tests/bench/podmix.py
    .venv/bin/python tests/bench/podmix.py --quick            # one short round, a smoke run
    .venv/bin/python tests/bench/podmix.py --rounds 3 --fixed-qps 5000
    .venv/bin/python tests/bench/podmix.py --nice -10   # a busy machine: the qps need the core
    .venv/bin/python tests/bench/podmix.py --before ../podmix-before   # main's kdns beside

The file name does not start with ``test_``, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a script: make `tests.bench` importable

import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

from tests.bench.dns_vs_dnsmasq import (  # noqa: E402
    DigAnswer,
    PerfError,
    PerfSettings,
    Plan,
    RoundResult,
    Server,
    StartError,
    dig,
    measure,
    pick_ports,
    probe,
    report,
    running,
    wait_quiet,
)

ZONE = "cluster.local"
NDOTS = 5  # kubelet's resolv.conf for ClusterFirst pods
SEED = 20261206
CLUSTER_TTL = 5  # kdns's default (CoreDNS's kubernetes plugin: ttl 5)
OUTSIDE_TTL = 300  # above the caches' 30 s cap, so both servers refetch every 30 s
CACHE_CAP_S = 30  # kdns's cache.max_ttl and cache.max_denial_ttl (CoreDNS `cache 30`)
UDP_RCVBUF = "4m"  # what kdns asks for (kdns/dns/server.py UDP_RECV_BUFFER = 4 MiB)
UPSTREAM_HOST = "127.0.0.3"
OUTSIDE_TLDS = ("com", "net", "org")
MIX = (("outside", 50), ("short", 35), ("other-ns", 15))  # % of lookups
DEFAULT_FIXED_QPS = 5_000  # the paced rate of the latency and CPU run
START_TIMEOUT = 60.0


# --------------------------------------------------------------------------------------------
# Data: the cluster, the outside names, and glibc's expansion of a pod's lookups
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    ip: str

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{ZONE}"


@dataclasses.dataclass(frozen=True, slots=True)
class OutsideName:
    name: str
    ipv4: str
    ipv6: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class World:
    namespaces: tuple[str, ...]
    service_names: tuple[str, ...]  # the same names in every namespace, most popular first
    services: tuple[Service, ...]
    outside: tuple[OutsideName, ...]  # most popular first

    def answers(self) -> dict[tuple[str, str], str]:
        """(name, qtype) → rdata of every record either server holds (no key: no record)."""
        records = {(svc.fqdn, "A"): svc.ip for svc in self.services}
        for out in self.outside:
            records[(out.name, "A")] = out.ipv4
            if out.ipv6 is not None:
                records[(out.name, "AAAA")] = out.ipv6
        return records


def make_world(namespaces: int, services: int, outside: int) -> World:
    if namespaces < 2 or services % namespaces or not 1 <= services // namespaces <= 254 * 200:
        raise SystemExit(
            "--services must be a multiple of --namespaces (>= 2), at most 50,800 each"
        )
    if not 1 <= outside <= 3 * 256:
        raise SystemExit("--outside must be between 1 and 768")
    ns_names = tuple(f"team-{k}" for k in range(namespaces))
    per_ns = services // namespaces
    names = tuple(f"app-{j}" for j in range(per_ns))
    svcs = tuple(
        Service(name, ns, f"10.{96 + k}.{j // 254}.{j % 254 + 1}")
        for k, ns in enumerate(ns_names)
        for j, name in enumerate(names)
    )
    # Documentation address ranges (RFC 5737, RFC 3849): answers only, never contacted.
    blocks = ("192.0.2", "198.51.100", "203.0.113")
    out = tuple(
        OutsideName(
            f"host-{i}.example.{OUTSIDE_TLDS[i % len(OUTSIDE_TLDS)]}",
            f"{blocks[i // 256]}.{i % 256}",
            str(ipaddress.IPv6Address(f"2001:db8::{i + 1:x}")) if i % 2 == 0 else None,
        )
        for i in range(outside)
    )
    return World(ns_names, names, svcs, out)


def search_list(namespace: str) -> tuple[str, ...]:
    """The search line kubelet writes for a ClusterFirst pod in `namespace`."""
    return (f"{namespace}.svc.{ZONE}", f"svc.{ZONE}", ZONE)


def candidates(name: str, search: Sequence[str]) -> list[str]:
    """The names glibc's res_nsearch tries for `name`, in order: with fewer than ndots dots the
    search domains first and the name as given last; otherwise the name first."""
    if name.endswith("."):
        return [name.rstrip(".")]
    suffixed = [f"{name}.{domain}" for domain in search]
    return [*suffixed, name] if name.count(".") < NDOTS else [name, *suffixed]


def glibc_queries(
    name: str, search: Sequence[str], has_records: Callable[[str], bool]
) -> list[tuple[str, str]]:
    """The (qname, qtype) queries of one getaddrinfo(AF_UNSPEC) lookup: A and AAAA for each
    candidate until one whose answers hold a record (`has_records`: A or AAAA exists)."""
    queries: list[tuple[str, str]] = []
    for candidate in candidates(name, search):
        queries += [(candidate, "A"), (candidate, "AAAA")]
        if has_records(candidate):
            break
    return queries


def zipf_cum_weights(n: int, exponent: float = 1.0) -> list[float]:
    """Cumulative weights of ranks 1..n with popularity ∝ 1 / rank**exponent."""
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, n + 1)))


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    kind: str  # outside | short | other-ns
    namespace: str  # the asking pod's
    name: str  # as the application wrote it


def make_lookups(world: World, count: int, rng: random.Random) -> list[Lookup]:
    """`count` lookups in the proportions of MIX, shuffled."""
    svc_weights = zipf_cum_weights(len(world.service_names))
    out_weights = zipf_cum_weights(len(world.outside))
    sizes = [count * pct // 100 for _, pct in MIX]
    sizes[0] += count - sum(sizes)
    lookups: list[Lookup] = []
    for (kind, _), size in zip(MIX, sizes, strict=True):
        for _ in range(size):
            ns = rng.choice(world.namespaces)
            if kind == "outside":
                name = rng.choices(world.outside, cum_weights=out_weights)[0].name
            else:
                name = rng.choices(world.service_names, cum_weights=svc_weights)[0]
                if kind == "other-ns":
                    other = rng.choice([n for n in world.namespaces if n != ns])
                    name = f"{name}.{other}"
            lookups.append(Lookup(kind, ns, name))
    rng.shuffle(lookups)
    return lookups


@dataclasses.dataclass(frozen=True, slots=True)
class QueryFile:
    lines: int
    lookups: Counter[str]  # per kind
    expected: Counter[str]  # NOERROR (records) / NODATA / NXDOMAIN
    forwarded: int  # queries for outside names as such (the rest is the cluster zone)


def expected_status(qname: str, qtype: str, records: dict[tuple[str, str], str]) -> str:
    if (qname, qtype) in records:
        return "NOERROR"
    if any(key[0] == qname for key in records):
        return "NODATA"
    return "NXDOMAIN"


def write_query_file(path: Path, world: World, lookups: Sequence[Lookup]) -> QueryFile:
    records = world.answers()
    names = {name for name, _ in records}
    outside = {out.name for out in world.outside}
    lines: list[str] = []
    expected: Counter[str] = Counter()
    forwarded = 0
    for lookup in lookups:
        for qname, qtype in glibc_queries(
            lookup.name, search_list(lookup.namespace), names.__contains__
        ):
            lines.append(f"{qname} {qtype}")
            expected[expected_status(qname, qtype, records)] += 1
            forwarded += qname in outside
    path.write_text("\n".join(lines) + "\n")
    return QueryFile(len(lines), Counter(x.kind for x in lookups), expected, forwarded)


# --------------------------------------------------------------------------------------------
# Server configurations
# --------------------------------------------------------------------------------------------


def write_manifests(directory: Path, world: World) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        for ns in world.namespaces
    ]
    items += [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc.name, "namespace": svc.namespace},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": svc.ip,
                "clusterIPs": [svc.ip],
                "selector": {"app": svc.name},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        }
        for svc in world.services
    ]
    # JSON is YAML: kdns's manifest loader reads it.
    (directory / "cluster.yaml").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )


def unbound_common(work: Path, host: str, port: int) -> list[str]:
    return [
        "server:",
        f"  interface: {host}",
        f"  port: {port}",
        "  do-daemonize: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{work}"',
        '  pidfile: ""',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        "  do-ip6: no",
        "  num-threads: 1",
        '  module-config: "iterator"',  # no validation
        "  access-control: 127.0.0.0/8 allow",
    ]


def write_upstream_config(path: Path, port: int, world: World) -> None:
    """The outside world: authoritative local-data for the outside names, nothing recursed."""
    lines = unbound_common(path.parent, UPSTREAM_HOST, port)
    lines.append('  local-zone: "." static')
    for tld in OUTSIDE_TLDS:
        zone = f"example.{tld}"
        lines += [
            f'  local-zone: "{zone}." static',
            f'  local-data: "{zone}. {OUTSIDE_TTL} IN SOA ns.{zone}. host.{zone}. 1 3600 600 86400 {OUTSIDE_TTL}"',
        ]
    for out in world.outside:
        lines.append(f'  local-data: "{out.name}. {OUTSIDE_TTL} IN A {out.ipv4}"')
        if out.ipv6 is not None:
            lines.append(f'  local-data: "{out.name}. {OUTSIDE_TTL} IN AAAA {out.ipv6}"')
    lines += ["remote-control:", "  control-enable: no"]
    path.write_text("\n".join(lines) + "\n")


def write_peer_config(path: Path, port: int, upstream_port: int, world: World) -> None:
    """unbound doing kdns's job statically: the Services as local-data, the rest forwarded."""
    lines = unbound_common(path.parent, "127.0.0.1", port)
    lines += [
        f"  so-rcvbuf: {UDP_RCVBUF}",
        # kdns caches 9,984 answers + 9,984 denials, capped at 30 s; unbound counts bytes:
        # 8 MiB of messages and 16 MiB of RRsets hold far more than 20,000 answers this small.
        "  msg-cache-size: 8m",
        "  rrset-cache-size: 16m",
        f"  cache-max-ttl: {CACHE_CAP_S}",
        f"  cache-max-negative-ttl: {CACHE_CAP_S}",
        "  prefetch: no",  # CoreDNS's cache plugin does not prefetch by default; kdns neither
        "  qname-minimisation: no",  # a forwarder sends the full name, as kdns does
        "  do-not-query-localhost: no",  # the upstream is on loopback
        "  outgoing-interface: 127.0.0.1",
        f'  local-zone: "{ZONE}." static',
        f'  local-data: "{ZONE}. {CLUSTER_TTL} IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {CLUSTER_TTL}"',
    ]
    lines += [f'  local-data: "{svc.fqdn}. {CLUSTER_TTL} IN A {svc.ip}"' for svc in world.services]
    lines += [
        "forward-zone:",
        '  name: "."',
        f"  forward-addr: {UPSTREAM_HOST}@{upstream_port}",
        "remote-control:",
        "  control-enable: no",
    ]
    path.write_text("\n".join(lines) + "\n")


def kdns_server(
    args: argparse.Namespace,
    work: Path,
    port: int,
    upstream_port: int,
    root: Path = REPO_ROOT,
    name: str = "kdns",
) -> Server:
    """kdns from the tree at `root` (`--before`: another checkout, for before/after)."""
    manifests = work / "manifests"
    argv = [
        args.python,
        "-m",
        "kdns",
        "serve",
        "--manifests",
        str(manifests),
        "--upstreams",
        f"{UPSTREAM_HOST}:{upstream_port}",
        "--dns-addr",
        f"127.0.0.1:{port}",
        # Probes on free loopback ports, so nothing collides with CoreDNS's fixed ports.
        "--health-addr",
        "127.0.0.1:0",
        "--ready-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--log-level",
        "warning",
    ]
    # Never this machine's resolv.conf; no lameduck (the benchmark stops kdns with SIGTERM).
    env = dict(os.environ, KDNS_RESOLV_CONF=os.devnull, KDNS_LAMEDUCK="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return Server(
        name,
        argv,
        port,
        work / f"{name}.log",
        None if args.no_pin else args.server_cpu,
        nice=args.nice,
        cwd=root,
        env=env,
        ready_name=f"app-0.team-0.svc.{ZONE}",
    )


def peer_server(args: argparse.Namespace, work: Path, port: int) -> Server:
    return Server(
        "unbound",
        [args.unbound, "-d", "-c", str(work / "peer.conf")],
        port,
        work / "unbound.log",
        None if args.no_pin else args.server_cpu,
        nice=args.nice,
        ready_name=f"app-0.team-0.svc.{ZONE}",
    )


@contextmanager
def upstream_running(
    args: argparse.Namespace, work: Path, port: int, ready_name: str
) -> Iterator[None]:
    """The upstream unbound on UPSTREAM_HOST, pinned with dnsperf, until the block ends."""
    argv = [] if args.no_pin else ["taskset", "-c", args.client_cpu]
    argv += ["nice", "-n", str(args.nice)] if args.nice else []
    argv += [args.unbound, "-d", "-c", str(work / "upstream.conf")]
    with (work / "upstream.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + args.start_timeout
        query = dns.message.make_query(ready_name, "A")
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"error: the upstream unbound exited, see {work}/upstream.log")
            try:
                reply = dns.query.udp(query, UPSTREAM_HOST, port=port, timeout=0.3)
                if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                    break
            except (dns.exception.Timeout, OSError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"error: the upstream unbound did not answer {ready_name}")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --------------------------------------------------------------------------------------------
# Same answers?
# --------------------------------------------------------------------------------------------


def sample_queries(lookups: Sequence[Lookup], world: World, per_kind: int) -> list[tuple[str, str]]:
    """The queries of the first `per_kind` lookups of each kind, without repeats."""
    names = {name for name, _ in world.answers()}
    seen: dict[tuple[str, str], None] = {}
    taken: Counter[str] = Counter()
    for lookup in lookups:
        if taken[lookup.kind] >= per_kind:
            continue
        taken[lookup.kind] += 1
        for query in glibc_queries(lookup.name, search_list(lookup.namespace), names.__contains__):
            seen[query] = None
    return list(seen)


def answer_rdata(answer: DigAnswer) -> frozenset[str]:
    """The answer records without their TTLs (a cached answer counts its TTL down)."""
    out = set()
    for line in answer.answer:
        owner, _ttl, rclass, rtype, *rdata = line.split()
        out.add(" ".join([owner, rclass, rtype, *rdata]))
    return frozenset(out)


def check_answers(
    servers: Sequence[Server], queries: Sequence[tuple[str, str]], world: World, timeout: float
) -> list[str]:
    """Errors: a server whose status or answer records differ from what the data implies."""
    records = world.answers()
    errors: list[str] = []
    for server in servers:
        with running(server, timeout):
            for qname, qtype in queries:
                got = dig(server.port, qname, qtype)
                want = expected_status(qname, qtype, records)
                status = "NODATA" if got.status == "NOERROR" and not got.answer else got.status
                rdata = records.get((qname, qtype))
                want_rr = frozenset([f"{qname}. IN {qtype} {rdata}"] if rdata else [])
                if status != want or answer_rdata(got) != want_rr:
                    errors.append(
                        f"{server.name}: {qname} {qtype}: {got.show()}; expected {want} "
                        f"{sorted(want_rr) or ''}"
                    )
    return errors


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pod traffic (glibc ndots:5 search-list expansion, A+AAAA) against kdns and "
        "against unbound doing the same job statically, interleaved; prints qps, CPU per query, "
        "p50/p99 and the ratios kdns/unbound.",
    )
    parser.add_argument("--python", default=sys.executable, help="Python that runs kdns")
    parser.add_argument("--unbound", default="/usr/sbin/unbound", help="unbound binary")
    parser.add_argument("--namespaces", type=int, default=10, help="namespaces")
    parser.add_argument("--services", type=int, default=1000, help="Services, over all namespaces")
    parser.add_argument(
        "--outside", type=int, default=500, help="outside names the upstream serves"
    )
    parser.add_argument("--lookups", type=int, default=20_000, help="pod lookups in the query file")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per server")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per dnsperf step")
    parser.add_argument(
        "--latency-duration", type=float, default=10.0, help="seconds of the paced run"
    )
    parser.add_argument(
        "--fixed-qps",
        type=int,
        default=DEFAULT_FIXED_QPS,
        help="dnsperf -Q rate of the paced run (latency and CPU per query)",
    )
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q for -Q runs")
    parser.add_argument("--max-steps", type=int, default=8, help="bisection steps per search")
    parser.add_argument("--quick", action="store_true", help="one round, short steps (smoke run)")
    parser.add_argument("--only", choices=["kdns", "unbound"], help="one server (no ratios)")
    parser.add_argument(
        "--before",
        type=Path,
        help="also run kdns from this checkout (e.g. a worktree of main), interleaved, as "
        "kdns-before, with its own ratios against unbound: before/after in one sitting",
    )
    parser.add_argument("--server-cpu", default="0", help="taskset CPU of the server")
    parser.add_argument("--client-cpu", default="1", help="taskset CPU of dnsperf and upstream")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the servers, the upstream and dnsperf under nice -n N, their sessions' "
        "scheduling autogroups too (e.g. -10 on a busy machine; takes CPU from other work)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each round, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument("--start-timeout", type=float, default=START_TIMEOUT, help="seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.quiet_wait = 1, min(args.quiet_wait, 2.0)
        args.duration = min(args.duration, 1.0)
        args.latency_duration = min(args.latency_duration, 3.0)
        args.max_steps = min(args.max_steps, 5)
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if not 0.5 <= args.duration <= 60 or not 1 <= args.latency_duration <= 120:
        parser.error("--duration must be in 0.5..60 s and --latency-duration in 1..120 s")
    if not 100 <= args.fixed_qps <= 1_000_000 or not 1 <= args.outstanding <= 65535:
        parser.error("--fixed-qps must be in 100..1000000 and --outstanding in 1..65535")
    if not 1 <= args.max_steps <= 20 or not 100 <= args.lookups <= 1_000_000:
        parser.error("--max-steps must be in 1..20 and --lookups in 100..1000000")
    return args


def check_tools(args: argparse.Namespace) -> None:
    needed = ["dnsperf", "dig", args.unbound] + ([] if args.no_pin else ["taskset"])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"error: missing tools: {', '.join(missing)} (Debian: dnsperf unbound)")
    if not args.no_pin:
        allowed = os.sched_getaffinity(0)
        for cpus in (args.server_cpu, args.client_cpu):
            if not {int(c) for c in re.split(r"[,-]", cpus) if c} <= allowed:
                raise SystemExit(f"error: CPU {cpus} not available; use --no-pin")


def set_autogroup_nice(pid: int, nice: int, say: Callable[[str], None]) -> None:
    """Give the scheduling autogroup of `pid` (its session) the nice value `nice`.

    With kernel.sched_autogroup_enabled=1 (the default) each session is one scheduling group
    and a process's own nice value only ranks it inside that group: against other sessions'
    work, `nice -n -10` alone buys nothing (sched(7), "The autogroup feature")."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError as exc:
        say(f"    note: could not set the autogroup nice of pid {pid}: {exc}")


def warm(server: Server, world: World) -> int:
    """Ask every outside name (A and AAAA) once, so the measured runs start with warm caches
    in both servers; returns how many got no answer in time."""
    missed = 0
    for out in world.outside:
        for qtype in (1, 28):
            missed += probe(server.port, out.name, qtype, timeout=1.0) is None
    return missed


def describe(qf: QueryFile, world: World) -> str:
    total = sum(qf.lookups.values())
    kinds = ", ".join(f"{k} {100 * qf.lookups[k] / total:.0f} %" for k, _ in MIX)
    status = ", ".join(
        f"{s} {100 * qf.expected[s] / qf.lines:.1f} %" for s in ("NOERROR", "NODATA", "NXDOMAIN")
    )
    return (
        f"data: {len(world.services)} Services in {len(world.namespaces)} namespaces, "
        f"{len(world.outside)} outside names (upstream unbound on {UPSTREAM_HOST})\n"
        f"query file: {total} lookups ({kinds}; seed {SEED}) → {qf.lines} queries "
        f"({qf.lines / total:.2f} per lookup): {status}; "
        f"{100 * qf.forwarded / qf.lines:.1f} % outside names as such (forwarded or cached)"
    )


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args)

    def say(line: str) -> None:
        print(line, flush=True)

    # SIGTERM behaves like Ctrl-C, so the finally blocks stop every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.no_pin:
        os.sched_setaffinity(0, {int(c) for c in re.split(r"[,-]", args.client_cpu) if c})
    if args.nice:
        set_autogroup_nice(os.getpid(), args.nice, say)  # dnsperf and the upstream: this session
    work = Path(tempfile.mkdtemp(prefix="kdns-bench-podmix-"))
    keep = args.keep
    try:
        world = make_world(args.namespaces, args.services, args.outside)
        lookups = make_lookups(world, args.lookups, random.Random(SEED))
        qf = write_query_file(work / "queries.txt", world, lookups)
        kdns_port, peer_port, upstream_port, before_port = pick_ports(4)
        write_manifests(work / "manifests", world)
        write_upstream_config(work / "upstream.conf", upstream_port, world)
        write_peer_config(work / "peer.conf", peer_port, upstream_port, world)
        servers = [
            kdns_server(args, work, kdns_port, upstream_port),
            peer_server(args, work, peer_port),
        ]
        servers = [s for s in servers if args.only in (None, s.name)]
        if args.before is not None:
            before = kdns_server(
                args, work, before_port, upstream_port, args.before.resolve(), "kdns-before"
            )
            servers.insert(0, before)
        say(f"uptime: {uptime()}  ({os.cpu_count()} CPUs; other work may share them)")
        say(describe(qf, world))
        for server in servers:
            say(f"{server.name}: {shlex.join(server.argv)}  (port {server.port})")
        pin = "unpinned" if args.no_pin else f"server on CPU {args.server_cpu}, dnsperf and "
        say(
            f"pinning: {pin}{'' if args.no_pin else f'upstream on CPU {args.client_cpu}'}"
            + (f"; all under nice -n {args.nice}" if args.nice else "")
        )
        with upstream_running(args, work, upstream_port, world.outside[0].name):
            queries = sample_queries(lookups, world, per_kind=8)
            errors = check_answers(servers, queries, world, args.start_timeout)
            if errors:
                say("\nERROR: a server does not answer the query file as the data implies:")
                for line in errors[:30]:
                    say(f"  {line}")
                keep = True
                return 1
            say(f"answers: {len(queries)} queries of the file checked with dig: as expected")

            settings = PerfSettings(
                work / "queries.txt",
                work,
                None if args.no_pin else args.client_cpu,
                args.nice,
                args.outstanding,
            )
            plan = Plan(
                duration=args.duration,
                warmup=1.0 if args.quick else 2.0,
                latency_duration=args.latency_duration,
                max_steps=args.max_steps,
                resolution=0.05 if args.quick else 0.02,
                fixed_qps=args.fixed_qps,
            )
            results: dict[str, list[RoundResult]] = {s.name: [] for s in servers}
            for rnd in range(args.rounds):
                for server in servers:
                    say(f"\nround {rnd + 1}/{args.rounds}: {server.name}  [{uptime()}]")
                    wait_quiet(args.quiet_wait, say)
                    with running(server, args.start_timeout):
                        if args.nice:
                            set_autogroup_nice(server.pid, args.nice, say)  # its own session
                        missed = warm(server, world)
                        if missed:
                            say(f"    warm-up: {missed} outside queries unanswered in 1 s")
                        results[server.name].append(measure(server, settings, plan, say))
        say(
            f"\nResults: {args.rounds} round(s) per server, interleaved, fresh server each round; "
            "best = highest qps / lowest latency and CPU; targets of issue 11."
        )
        if args.before is not None:
            before_results = {k: results[k] for k in ("kdns-before", "unbound") if k in results}
            say(report(before_results, args.fixed_qps))
            say("")
            results.pop("kdns-before")
        say(report(results, args.fixed_qps))
        say(f"uptime at the end: {uptime()}")
        say(
            "\nHow the figures are made: as tests/bench/dns_vs_dnsmasq.py (its --help and "
            "docstring): max qps = highest dnsperf -Q rate with <= 0.01 % lost or failed and >= "
            "98 % achieved; p50/p99 nearest-rank from dnsperf -v at the paced rate; CPU = server "
            "utime+stime (/proc/<pid>/stat) over that run / answered queries. A measurement: the "
            "exit status is 0 either way."
        )
        return 0
    except StartError as exc:
        say(f"\nERROR: {exc}\n  log {exc.server.log_path}:\n{exc.server.log_tail()}")
        keep = True
        return 1
    except PerfError as exc:
        say(f"\nERROR: {exc}")
        keep = True
        return 1
    finally:
        if keep:
            say(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

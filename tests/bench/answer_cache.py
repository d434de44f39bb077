"""Benchmark: the answer cache's hot path (`AnswerCache.answer`), round robin on and off.

What it measures. The time of one cache hit — `Handler.handle(data, udp)` on a query whose
answer is in the answer cache, as the UDP listener calls it — in-process, with no socket, for
four kinds of answer:

- one A record (a ClusterIP Service: most of a cluster's queries; nothing to rotate);
- 3 A records (a small headless Service: every rotation kept encoded);
- 40 A records (larger than the rotations kept encoded: re-joined per answer);
- 500 A records over UDP without EDNS (truncated to 29 records per answer, from the rotation).

Each is measured with `loadbalance: round_robin` (the default) and `off`, as the best of
`--rounds` runs of `--hits` hits (`timeit`); the figure is nanoseconds per hit. The machine may
be shared: the best of several rounds is the least disturbed figure, and the figures are noisy
all the same. dnsperf end to end (tests/bench/dns_vs_dnsmasq.py) asks ClusterIP names only,
where rotation has nothing to do; this script isolates what rotation costs where it acts.

How to run (pure Python, no tools, no network; about half a minute):

    /tmp/venv/bin/python tests/bench/answer_cache.py
    /tmp/venv/bin/python tests/bench/answer_cache.py --rounds 9 --hits 200000

The file name does not start with ``test_``, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import struct
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kdns.config import Config
from kdns.dns.handler import Handler
from kdns.dns.resolver import Resolver
from kdns.model import (
    Namespace,
    endpointslice_from_dict,
    service_from_dict,
)
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store

SIZES = {"one A (ClusterIP)": 0, "3 A (headless)": 3, "40 A (headless)": 40, "500 A, UDP 512": 500}


def cluster(loadbalance: str) -> Handler:
    store = Store()
    resolver = Resolver(store, Config())
    handler = Handler(resolver, loadbalance=loadbalance)
    store.subscribe(lambda change: handler.cache.drop(resolver.apply(change)))
    services = {}
    slices = {}
    for count in SIZES.values():
        name = f"s{count}"
        spec = {"clusterIP": "10.96.0.1"} if count == 0 else {"clusterIP": "None"}
        service = service_from_dict(
            {"metadata": {"name": name, "namespace": "default"}, "spec": spec}
        )
        services[service.key] = service
        if count:
            ips = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(count)]
            endpoints = endpointslice_from_dict(
                {
                    "metadata": {
                        "name": f"{name}-a",
                        "namespace": "default",
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [ip]} for ip in ips],
                }
            )
            slices[endpoints.key] = endpoints
    store.replace(NAMESPACES, {"default": Namespace("default")})
    store.replace(SERVICES, services)
    store.replace(ENDPOINTSLICES, slices)
    store.replace(PODS, {})
    return handler


def query(name: str) -> bytes:
    labels = f"{name}.default.svc.cluster.local".split(".")
    wire_name = b"".join(bytes((len(x),)) + x.encode() for x in labels) + b"\x00"
    return struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + wire_name + b"\x00\x01\x00\x01"


def measure(handler: Handler, data: bytes, hits: int, rounds: int) -> float:
    handle = handler.handle
    assert handle(data, True) is not None  # the slow path stores it
    best = min(timeit.repeat(lambda: handle(data, True), number=hits, repeat=rounds))
    assert handler.cache.hits >= hits
    return best / hits * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=100_000, help="hits per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs; the best is shown")
    args = parser.parse_args()
    handlers = {mode: cluster(mode) for mode in ("round_robin", "off")}
    print(f"ns per answer-cache hit (best of {args.rounds} × {args.hits:,}; a shared machine)")
    print(f"{'answer':<22}{'round_robin':>14}{'off':>10}{'ratio':>8}")
    for title, count in SIZES.items():
        data = query(f"s{count}")
        on = measure(handlers["round_robin"], data, args.hits, args.rounds)
        off = measure(handlers["off"], data, args.hits, args.rounds)
        print(f"{title:<22}{on:>14.0f}{off:>10.0f}{on / off:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

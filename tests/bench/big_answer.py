"""Benchmark: the first SRV answer of a 500-endpoint headless Service after its endpoints change.

What it measures. A headless Service with ``--endpoints`` ready endpoints (one named port) is
loaded into a store; then ``--changes`` times its EndpointSlice is replaced by one with new
addresses (a rollout), and right after each change the SRV question
``_http._tcp.<svc>.<ns>.svc.cluster.local`` is answered as over TCP (``Handler.handle``, no
truncation). That answer is built from nothing (the Service's records, the RRs, the encoding,
the answer cache's entry): the time the event loop answers nothing else. The script prints the
CPU time (``time.process_time``: the machine may be shared, wall time is noisy) of the store
change and of the answer, min and median over the changes, and the answer's parts measured
alone (records, resolve, encode, cache store).

It checks the answer holds ``--endpoints`` SRV records and as many glue addresses, and exits 1
if not. It is a measurement, not a test.

    .venv/bin/python -m tests.bench.big_answer
    PYTHONPATH=/path/to/other/tree .venv/bin/python -m tests.bench.big_answer   # another tree

The file name does not start with ``test_``, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from dnslib import DNSRecord

import kdns
from kdns.dns import wire
from kdns.model import endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, SERVICES
from tests.builders import api_endpoint as ep
from tests.builders import api_endpointslice as eps
from tests.builders import api_service as svc
from tests.dns.cluster import make_handler

QNAME = "_http._tcp.hl.big.svc.cluster.local"


def cpu_ms(action: Callable[[], object]) -> float:
    start = time.process_time()
    action()
    return (time.process_time() - start) * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=500)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args(argv)
    if not 1 <= args.endpoints <= 60_000 or not 1 <= args.changes <= 1000:
        parser.error("--endpoints must be 1..60000 and --changes 1..1000")
    store, resolver, handler = make_handler()
    store.upsert(SERVICES, service_from_dict(svc("big", "hl", clusterIP="None")))
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}]

    def endpoints(generation: int) -> object:
        addresses = [
            ep(f"10.{generation % 250}.{i // 250}.{i % 250 + 1}") for i in range(args.endpoints)
        ]
        return endpointslice_from_dict(eps("big", "hl", "hl-a", addresses, ports))

    query = bytes(DNSRecord.question(QNAME, "SRV").pack())
    change_ms: list[float] = []
    answer_ms: list[float] = []
    reply: object = None
    for generation in range(1, args.changes + 1):
        slice_ = endpoints(generation)
        change_ms.append(cpu_ms(lambda s=slice_: store.upsert(ENDPOINTSLICES, s)))
        start = time.process_time()
        reply = handler.handle(query, udp=False)
        answer_ms.append((time.process_time() - start) * 1e3)
    assert isinstance(reply, tuple)
    response = reply[0]
    parsed = DNSRecord.parse(response)
    if len(parsed.rr) != args.endpoints or len(parsed.ar) != args.endpoints:
        print(f"error: {len(parsed.rr)} SRV records and {len(parsed.ar)} glue records")
        return 1
    print(f"kdns from {kdns.__file__}")
    print(f"{args.endpoints} endpoints, {len(response)} octets over TCP, {args.changes} changes")
    for name, values in (("store change", change_ms), ("first answer", answer_ms)):
        print(
            f"  {name:13s} CPU ms: min {min(values):7.1f}  median {statistics.median(values):7.1f}"
        )
    # The parts of one answer, each alone (best of 10).
    parsed_query = wire.parse_query(query)
    assert isinstance(parsed_query, wire.Query)
    key = ("big", "hl")

    def best(action: Callable[[], object]) -> float:
        return min(cpu_ms(action) for _ in range(10))

    later = iter(range(args.changes + 1, args.changes + 12))  # a change each time
    records = best(
        lambda: (
            store.upsert(ENDPOINTSLICES, endpoints(next(later))),
            resolver.service_records(key),
        )
    )
    resolve = best(lambda: resolver.resolve(parsed_query.qname, parsed_query.qtype))
    answer = resolver.resolve(parsed_query.qname, parsed_query.qtype)
    assert answer is not None
    sections = (answer.answer, answer.authority, answer.additional)
    encode = best(lambda: wire.encode(parsed_query, answer.rcode, *sections))
    encoded = wire.encode(parsed_query, answer.rcode, *sections)
    store_ = best(lambda: handler.cache.store(query, parsed_query, encoded, answer.tags))
    print(
        f"  parts (best of 10, CPU ms): change (the slice read too) + records {records:.1f}, resolve (records kept) "
        f"{resolve:.1f}, encode {encode:.1f}, cache store {store_:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

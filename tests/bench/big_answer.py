"""Benchmark: the first SRV answer of a 500-endpoint headless Service after its endpoints change.

What it measures. A headless Service with ``--endpoints`` ready endpoints (one named port) is
loaded into a store; then ``--changes`` times its EndpointSlice is replaced by one with new
addresses (a rollout: every endpoint replaced, or ``--replaced N`` of them, as one step of a
rolling update replaces a few pods), and right after each change the SRV question
``_http._tcp.<svc>.<ns>.svc.cluster.local`` is answered as over TCP (``Handler.handle``, no
truncation). That answer is built from nothing (the Service's records, the RRs, the encoding,
the answer cache's entry): the time the event loop answers nothing else. The script prints the
CPU time (``time.process_time``: the machine may be shared, wall time is noisy) of the store
change and of the answer, min and median over the changes, and the answer's parts measured
alone (records, resolve, encode, cache store).

Other clients while it is built (``--clients``, on by default): the same store is served by a
real listener (kdns/dns/server.py, its UDP receive thread) on 127.0.0.1, and a client in a
process of its own asks names at ``--client-qps`` (half a cached name, half names never asked
before, NXDOMAIN) for ``--phase`` seconds twice: once idle, once while the Service changes every
``--change-every`` seconds and its SRV answer is rebuilt on the loop right after each change
(what a TCP client's question costs the loop). It prints each phase's p50 / p99 / max and the
queries lost, and, while rebuilding, the p50 / p90 of the queries sent while a change and its
answer were being built (from a millisecond before to its end; the client's clock and the
server's are the same monotonic clock): the wait a rebuild makes, steadier from run to run than
the p99 on a shared machine. Each change is applied as `kdns serve`'s Kubernetes source applies
a watch event (kdns/sources/kube.py, its trio-thread step: the store's update and whatever
scope the tree's source enters around it), without an API server.

With ``--converting`` a third phase: no change, but every ``--change-every`` seconds a worker
thread reads the Service's EndpointSlice from a watch line (``json.loads``) and converts it
(``endpointslice_from_dict``), as the source's watch thread does with each event before the
trio thread applies it (``Reflector.parse``, the tree's own step, with whatever scope it
enters): what that thread's Python costs the receive thread.

It checks the answer holds ``--endpoints`` SRV records and as many glue addresses, and exits 1
if not. It is a measurement, not a test.

    .venv/bin/python -m tests.bench.big_answer
    .venv/bin/python -m tests.bench.big_answer --before /work/main   # both trees, one run

``--before DIR`` runs this script once more against the kdns (and tests) of DIR, first, then
this tree, and both print their figures: an interleaved before/after in one run.

The file name does not start with ``test_``, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio
from dnslib import DNSRecord

import kdns
from kdns.dns import wire
from kdns.dns.server import DnsServer
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
    parser.add_argument(
        "--replaced",
        type=int,
        help="endpoints replaced by each change (default: every one; a rollout step replaces a few)",
    )
    parser.add_argument("--before", type=Path, help="a checkout to measure first, same run")
    parser.add_argument("--no-clients", dest="clients", action="store_false")
    parser.add_argument("--client-qps", type=int, default=1000)
    parser.add_argument("--phase", type=float, default=3.0, help="seconds per client phase")
    parser.add_argument("--change-every", type=float, default=0.05)
    parser.add_argument(
        "--converting", action="store_true", help="a third phase: slices converted, not applied"
    )
    parser.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval for the server (seconds)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.endpoints <= 60_000 or not 1 <= args.changes <= 1000:
        parser.error("--endpoints must be 1..60000 and --changes 1..1000")
    if not 1 <= args.client_qps <= 20_000 or not 0.5 <= args.phase <= 30:
        parser.error("--client-qps must be 1..20000 and --phase 0.5..30 s")
    replaced = args.endpoints if args.replaced is None else args.replaced
    if not 0 <= replaced <= args.endpoints:
        parser.error("--replaced must be 0..--endpoints")
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.before is not None:
        rest = list(argv if argv is not None else sys.argv[1:])
        i = rest.index("--before")
        del rest[i : i + 2]
        print(f"--- before: {args.before}", flush=True)
        code = "import runpy, sys; sys.argv[0] = sys.argv[1]; del sys.argv[1]; runpy.run_path(sys.argv[0], run_name='__main__')"
        env = dict(os.environ, PYTHONPATH=str(args.before.resolve()))
        subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).resolve()), *rest],
            env=env,
            cwd=args.before,  # sys.path[0] is the working directory: the other tree's
            check=False,
            timeout=600,
        )
        print("--- after: this tree", flush=True)
    # The interpreter as `kdns serve` sets it up (kdns/interpreter.py), in a tree that does.
    served = importlib.import_module("kdns.app")
    interpreter = getattr(served, "interpreter", None)
    if hasattr(interpreter, "answer_promptly"):
        interpreter.answer_promptly()  # type: ignore[union-attr]
    store, resolver, handler = make_handler()
    store.upsert(SERVICES, service_from_dict(svc("big", "hl", clusterIP="None")))
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}]

    def api_slice(generation: int) -> dict[str, object]:
        # The first `replaced` endpoints get new addresses (and so new names) each change.
        addresses = [
            ep(f"10.{(generation if i < replaced else 0) % 250}.{i // 250}.{i % 250 + 1}")
            for i in range(args.endpoints)
        ]
        return eps("big", "hl", "hl-a", addresses, ports)

    def endpoints(generation: int) -> object:
        return endpointslice_from_dict(api_slice(generation))

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
    print(
        f"{args.endpoints} endpoints, {len(response)} octets over TCP, {args.changes} changes"
        f" of {replaced} endpoints each"
    )
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

    # A change each time, its slice converted before (the source's work, not the answer's).
    later = iter([endpoints(g) for g in range(args.changes + 1, args.changes + 12)])
    records = best(
        lambda: (store.upsert(ENDPOINTSLICES, next(later)), resolver.service_records(key))
    )
    packed = hasattr(wire, "encode_layout")  # this tree: the handler's path, records in parts
    options = {"packed": True} if packed else {}
    resolve = best(lambda: resolver.resolve(parsed_query.qname, parsed_query.qtype, **options))
    answer = resolver.resolve(parsed_query.qname, parsed_query.qtype, **options)
    assert answer is not None
    sections = (answer.answer, answer.authority, answer.additional)
    if packed:
        rotate = handler.cache.rotate
        encode = best(
            lambda: wire.encode_layout(parsed_query, answer.rcode, *sections, rotate=rotate)
        )
        encoded, layout = wire.encode_layout(parsed_query, answer.rcode, *sections, rotate=rotate)
        extra = {"layout": layout}
    else:
        encode = best(lambda: wire.encode(parsed_query, answer.rcode, *sections))
        encoded, extra = wire.encode(parsed_query, answer.rcode, *sections), {}
    store_ = best(lambda: handler.cache.store(query, parsed_query, encoded, answer.tags, **extra))
    print(
        f"  parts (best of 10, CPU ms): change + records {records:.1f}, resolve (records kept) "
        f"{resolve:.1f}, encode {encode:.1f}, cache store {store_:.1f}"
    )
    if args.clients:
        # Built before: converting an EndpointSlice is the source's work, not the answer's.
        count = int(args.phase / args.change_every) + 2
        slices = iter([endpoints(g) for g in range(10_000, 10_000 + count)])
        lines = iter(
            [
                json.dumps({"type": "MODIFIED", "object": api_slice(g)}).encode()
                for g in range(20_000, 20_000 + count)
            ]
        )
        trio.run(
            others_while_rebuilt,
            handler,
            query,
            lambda: next(slices, None),
            store,
            args,
            lambda: next(lines, None),
        )
    return 0


# A client in its own process (no GIL shared with the server): paced queries, one socket,
# each answer matched by ID; prints the round-trip times in ms, and when each query was sent
# (time.perf_counter: CLOCK_MONOTONIC on Linux, the server's clock too), as JSON.
CLIENT = r"""
import json, random, socket, struct, sys, time
port, qps, seconds, cached = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def query(qid, name):
    q = b"".join(bytes((len(x),)) + x.encode() for x in name.split(".")) + b"\0"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
rng = random.Random(7)
sent, rtts, at = {}, [], []
start = time.perf_counter()
n = int(qps * seconds)
for i in range(n):
    due = start + i / qps
    while True:
        now = time.perf_counter()
        try:
            data = sock.recv(65535)
            qid = struct.unpack_from("!H", data)[0]
            if qid in sent:
                t0 = sent.pop(qid)
                rtts.append((time.perf_counter() - t0) * 1e3)
                at.append(t0)
            continue
        except BlockingIOError:
            pass
        if now >= due:
            break
        time.sleep(min(due - now, 0.0002))
    name = cached if i % 2 else "x%08d.big.svc.cluster.local" % rng.randrange(10**8)
    sent[i % 65536] = time.perf_counter()
    sock.sendto(query(i % 65536, name), ("127.0.0.1", port))
end = time.perf_counter() + 2.0
while sent and time.perf_counter() < end:
    try:
        data = sock.recv(65535)
    except BlockingIOError:
        time.sleep(0.0005)
        continue
    qid = struct.unpack_from("!H", data)[0]
    if qid in sent:
        t0 = sent.pop(qid)
        rtts.append((time.perf_counter() - t0) * 1e3)
        at.append(t0)
print(json.dumps({"rtts": rtts, "at": at, "lost": len(sent)}))
"""


async def others_while_rebuilt(
    handler: object,
    query: bytes,
    next_slice: Callable[[], object],
    store: object,
    args: argparse.Namespace,
    next_line: Callable[[], bytes | None],
) -> None:
    """Other clients' latency, idle and while the big answer is rebuilt after each change."""
    server = DnsServer(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    apply, convert = source_steps(store)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.run)
        # A small cached answer, asked by every other client: a ClusterIP Service's name.
        cached = "kube-dns.kube-system.svc.cluster.local"
        store.upsert(  # type: ignore[attr-defined]
            SERVICES,
            service_from_dict(svc("kube-system", "kube-dns", clusterIP="10.96.0.10")),
        )
        # As `kdns serve` does once its store has synced (kdns/interpreter.py), as far as the
        # tree measured does (one from before has kdns/collector.py, or nothing);
        # `--switch-interval` overrides the tree's interval.
        served = importlib.import_module("kdns.app")
        interpreter = getattr(served, "interpreter", None) or getattr(served, "collector", None)
        if interpreter is not None:
            interpreter.freeze()
        if args.switch_interval is not None:
            sys.setswitchinterval(args.switch_interval)
        print(f"  switch interval {sys.getswitchinterval() * 1e3:.2f} ms", flush=True)

        async def phase(mode: str) -> dict[str, object]:
            argv = [sys.executable, "-c", CLIENT, str(port), str(args.client_qps)]
            argv += [str(args.phase), cached]
            done = trio.Event()
            out: dict[str, object] = {}

            async def client() -> None:
                result = await trio.run_process(argv, capture_stdout=True)
                out.update(json.loads(result.stdout))
                done.set()

            nursery.start_soon(client)
            rebuilds: list[tuple[float, float]] = []  # (start, end) of each, perf_counter
            while not done.is_set():
                slice_ = next_slice() if mode == "rebuilding" else None
                if slice_ is not None:
                    start = time.perf_counter()
                    apply(slice_)
                    handler.handle(query, udp=False)  # type: ignore[attr-defined]
                    rebuilds.append((start, time.perf_counter()))
                line = next_line() if mode == "converting" else None
                if line is not None:
                    span = await trio.to_thread.run_sync(convert, line)
                    rebuilds.append(span)
                with trio.move_on_after(args.change_every):
                    await done.wait()
            out["rebuilds"] = rebuilds
            return out

        modes = ("idle", "rebuilding", "converting") if args.converting else ("idle", "rebuilding")
        for name in modes:
            changing = name != "idle"
            spans = "rebuilds" if name == "rebuilding" else "conversions"
            result = await phase(name)
            rtts = sorted(result["rtts"])  # type: ignore[arg-type]
            if not rtts:
                print(f"  other clients, {name}: no answers")
                continue
            p50 = rtts[len(rtts) // 2]
            p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
            print(
                f"  other clients, {name:10s}: {len(rtts)} answers, p50 {p50:.2f} ms, p99 "
                f"{p99:.2f} ms, max {rtts[-1]:.1f} ms, lost {result['lost']}"
                + (f", {len(result['rebuilds'])} {spans}" if changing else ""),  # type: ignore[arg-type]
                flush=True,
            )
            if changing:
                during(result, "a rebuild" if name == "rebuilding" else "a conversion")
        server.stop_listening()
        nursery.cancel_scope.cancel()


def source_steps(
    store: object,
) -> tuple[Callable[[object], None], Callable[[bytes], tuple[float, float]]]:
    """The Kubernetes source's two steps for one watch event (its `Reflector`'s, here without
    an API server or a watch stream): a changed EndpointSlice applied as the trio thread
    applies it, and a watch line read and converted as the watch thread does (call that one
    from a worker thread; it returns its (start, end), perf_counter)."""
    from kdns.sources import kube  # the kubernetes client: imported only when measuring

    reflector = kube.Reflector(kube.ENDPOINTSLICES_RESOURCE, None, store)  # type: ignore[arg-type]
    # A tree from before the steps were public has them under private names.
    apply_event = getattr(reflector, "apply", None) or reflector._apply  # noqa: SLF001
    parse_line = getattr(reflector, "parse", None) or reflector._parse  # noqa: SLF001

    def apply(slice_: object) -> None:
        key = slice_.key  # type: ignore[attr-defined]
        apply_event(kube.Event("MODIFIED", "1", key, [(key, slice_)], time.time()))

    def convert(line: bytes) -> tuple[float, float]:
        start = time.perf_counter()
        event = parse_line(line)
        assert event is not None and event.items, "the watch line was not converted"
        return start, time.perf_counter()

    return apply, convert


def during(result: dict[str, object], what: str = "a rebuild") -> None:
    """Print the round-trip times of the queries sent while a rebuild (or a conversion) ran, or
    a millisecond before it began: such a query is read once it has."""
    spans = result["rebuilds"]
    assert isinstance(spans, list)
    starts = [start - 0.001 for start, _ in spans]
    waited = sorted(
        rtt
        for rtt, sent in zip(result["rtts"], result["at"], strict=True)  # type: ignore[call-overload]
        if (i := bisect.bisect_right(starts, sent) - 1) >= 0 and sent <= spans[i][1]
    )
    if not waited:
        print(f"  sent during {what}: none")
        return
    wall = statistics.median((end - start) * 1e3 for start, end in spans)
    print(
        f"  sent during {what}: {len(waited)}, p50 {waited[len(waited) // 2]:.2f} ms, p90 "
        f"{waited[int(len(waited) * 0.9)]:.2f} ms ({what}'s wall time: median {wall:.1f} ms)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

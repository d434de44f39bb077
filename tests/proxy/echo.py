"""Echo backend and batch client for the packet tests, run inside network namespaces.

Contract:
- `python echo.py serve --name NAME --tcp P[,P…] --udp P[,P…]`: answers every TCP connection
  and every UDP datagram, on each port, with one JSON line `{"name", "src", "port", "proto"}`:
  its own name, the source "ip:port" it saw and the local port that was reached. TCP
  connections are closed after the line. Runs until SIGTERM.
- `python echo.py client (--tcp|--udp) HOST:PORT [--count N] [--timeout S] [--source IP,…]`:
  N connections (TCP) or N datagrams each from a fresh socket (UDP), one after the other, from
  each source address in turn; prints one JSON summary: ok / refused / timeouts / errors,
  counts per backend name, per source address seen by the backend, per port reached, per
  client source → backend names, and the slowest refusal and quickest timeout in ms.
  `--until-ok S` instead retries single attempts until one succeeds (exit 1 after S seconds).
  `--sport P` binds every attempt to that source port (UDP; TCP uses SO_REUSEADDR).
  `--distinct-sports BASE` binds attempt i to source port BASE + i: no two attempts share a
  flow, so none meets a conntrack entry an earlier one left (a UDP socket's kernel-chosen
  port is free again once it is closed: 2,000 attempts from ~28,000 ephemeral ports repeat
  about 70, each then sent where its flow went before, which no spread statistic allows for).
  `--deadline S` ends the batch after S seconds (the rest counted as one error).
- `python echo.py stream --udp HOST:PORT --sport P --interval S --duration S`: one UDP socket
  bound to a fixed source port sends a numbered datagram every interval and records, for each,
  the backend whose reply echoed its number (None when none came within `LATE_REPLY` seconds);
  prints `{"events": [[unix_time_sent, name], …]}`.
- Standard library only; every wait is bounded by the given timeouts.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import selectors
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from typing import Any


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


# --- server ----------------------------------------------------------------------------------


def serve(name: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in tcp_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(1024)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("tcp", port))
    for port in udp_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("udp", port))

    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def line(src: tuple[str, int], port: int, proto: str, data: bytes = b"") -> bytes:
        reply = {"name": name, "src": f"{src[0]}:{src[1]}", "port": port, "proto": proto}
        if data.startswith(b"ping "):  # the stream's sequence number, echoed back
            reply["seq"] = data[5:].strip().decode(errors="replace")
        return (json.dumps(reply) + "\n").encode()

    while running:
        for key, _ in sel.select(timeout=0.5):
            proto, port = key.data
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if proto == "tcp":
                    conn, src = sock.accept()
                    with conn:
                        conn.settimeout(1.0)
                        conn.sendall(line(src, port, proto))
                else:
                    data, src = sock.recvfrom(2048)
                    sock.sendto(line(src, port, proto, data), src)
            except OSError:
                continue  # a client that went away (RST, unreachable): serve the next one


# --- client ----------------------------------------------------------------------------------


class Summary:
    def __init__(self) -> None:
        self.ok = self.refused = self.timeouts = self.errors = 0
        self.names: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.ports: Counter[int] = Counter()
        self.by_client: dict[str, Counter[str]] = defaultdict(Counter)
        self.sequence: list[str | None] = []
        self.refused_max_ms = 0.0
        self.timeout_min_ms: float | None = None
        self.error_texts: Counter[str] = Counter()

    def record(self, client: str, reply: dict[str, Any] | None, outcome: str, ms: float) -> None:
        if outcome == "ok" and reply is not None:
            self.ok += 1
            self.names[reply["name"]] += 1
            self.sources[reply["src"].rpartition(":")[0]] += 1
            self.ports[reply["port"]] += 1
            self.by_client[client][reply["name"]] += 1
            self.sequence.append(reply["name"])
            return
        self.sequence.append(None)
        if outcome == "refused":
            self.refused += 1
            self.refused_max_ms = max(self.refused_max_ms, ms)
        elif outcome == "timeout":
            self.timeouts += 1
            self.timeout_min_ms = (
                ms if self.timeout_min_ms is None else min(self.timeout_min_ms, ms)
            )
        else:
            self.errors += 1
            self.error_texts[outcome] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "refused": self.refused,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "error_texts": dict(self.error_texts),
            "names": dict(self.names),
            "sources": dict(self.sources),
            "ports": {str(k): v for k, v in self.ports.items()},
            "by_client": {k: dict(v) for k, v in self.by_client.items()},
            "sequence": self.sequence,
            "refused_max_ms": round(self.refused_max_ms, 3),
            "timeout_min_ms": None
            if self.timeout_min_ms is None
            else round(self.timeout_min_ms, 3),
        }


def _outcome(exc: OSError) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "refused"
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def attempt(
    proto: str, target: tuple[str, int], source: str | None, sport: int, timeout: float
) -> tuple[dict[str, Any] | None, str, float]:
    """One TCP connection or one UDP exchange: (reply, outcome, elapsed ms)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    start = time.monotonic()
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            if sport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if source or sport:
                s.bind((source or "0.0.0.0", sport))
            s.settimeout(timeout)
            s.connect(target)
            if proto == "udp":
                s.send(b"ping\n")
                data = s.recv(2048)
            else:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(2048)
                    if not chunk:
                        break
                    data += chunk
            reply = json.loads(data.decode())
            return reply, "ok", (time.monotonic() - start) * 1000
        except OSError as exc:
            return None, _outcome(exc), (time.monotonic() - start) * 1000
        except ValueError as exc:  # an unparseable reply
            return None, f"bad reply: {exc}", (time.monotonic() - start) * 1000


def client(args: argparse.Namespace) -> int:
    proto = "tcp" if args.tcp else "udp"
    target = _hostport(args.tcp or args.udp)
    sources: list[str | None] = list(args.source.split(",")) if args.source else [None]
    if args.until_ok:
        deadline = time.monotonic() + args.until_ok
        while True:
            reply, outcome, _ = attempt(proto, target, sources[0], args.sport, args.timeout)
            if outcome == "ok":
                print(json.dumps({"ok": 1, "reply": reply}))
                return 0
            if time.monotonic() > deadline:
                print(json.dumps({"ok": 0, "last": outcome}))
                return 1
            time.sleep(0.05)
    summary = Summary()
    stop_at = time.monotonic() + args.deadline if args.deadline else None
    for i in range(args.count):
        if stop_at is not None and time.monotonic() > stop_at:
            summary.record("", None, "deadline: attempts not made", 0.0)
            break
        source = sources[i % len(sources)]
        sport = args.distinct_sports + i if args.distinct_sports else args.sport
        reply, outcome, ms = attempt(proto, target, source, sport, args.timeout)
        summary.record(source or "", reply, outcome, ms)
    print(json.dumps(summary.as_dict()))
    return 0


LATE_REPLY = 2.0  # seconds a stream datagram's reply may take on a loaded machine


def stream(args: argparse.Namespace) -> int:
    """Datagram N carries "ping N" and its reply echoes N back, so a reply that comes after the
    next datagram was sent (a loaded machine) is still counted for the datagram it answers; a
    datagram is None only when no reply to it came within `LATE_REPLY` seconds."""
    target = _hostport(args.udp)
    sent_at: list[float] = []  # datagram N → unix time it was sent
    names: dict[int, str] = {}  # datagram N → the backend that answered it
    end = time.monotonic() + args.duration
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", args.sport))
        s.connect(target)
        next_send = time.monotonic()
        last_reply_wait = end + LATE_REPLY
        while True:
            now = time.monotonic()
            if now >= next_send and now < end:
                with contextlib.suppress(OSError):
                    s.send(f"ping {len(sent_at)}\n".encode())
                sent_at.append(time.time())
                next_send += args.interval
                continue
            if now >= last_reply_wait or (now >= end and len(names) == len(sent_at)):
                break
            s.settimeout(max(0.001, (next_send if now < end else last_reply_wait) - now))
            try:
                reply = json.loads(s.recv(2048).decode())
            except (OSError, ValueError):
                continue  # a timeout, or ICMP port unreachable (a REJECT): nothing to record
            seq = int(reply.get("seq", -1))
            if 0 <= seq < len(sent_at):
                names[seq] = reply["name"]
    events = [(at, names.get(n)) for n, at in enumerate(sent_at)]
    print(json.dumps({"events": events}))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--name", required=True)
    p.add_argument("--tcp", type=_ports, default=[])
    p.add_argument("--udp", type=_ports, default=[])
    c = sub.add_parser("client")
    group = c.add_mutually_exclusive_group(required=True)
    group.add_argument("--tcp")
    group.add_argument("--udp")
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--timeout", type=float, default=1.0)
    c.add_argument("--source", default="")
    c.add_argument("--sport", type=int, default=0)
    c.add_argument("--distinct-sports", type=int, default=0, metavar="BASE")
    c.add_argument("--until-ok", type=float, default=0.0)
    c.add_argument("--deadline", type=float, default=0.0, help="stop the batch after S seconds")
    s = sub.add_parser("stream")
    s.add_argument("--udp", required=True)
    s.add_argument("--sport", type=int, required=True)
    s.add_argument("--interval", type=float, default=0.05)
    s.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.name, args.tcp, args.udp)
        return 0
    if args.command == "client":
        return client(args)
    return stream(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

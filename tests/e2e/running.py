"""Helpers for the lifecycle and reload tests: a kdns process started from a config file, its
HTTP endpoints, and a steady UDP query stream that records every query and every answer.

- `start_from_config(path, log)`: `python -m kdns serve --config PATH` with every address in the
  file (flags would win over the file, and these tests change addresses by rewriting it); waits
  (bounded) until DNS answers.
- `start_on_free_ports(write, log)`: the same on ports it chooses, again on new ones when it
  lost a port to another process.
- `http_get(port, path)`: (status, body) from one GET, on 127.0.0.1.
- `metric_value(port, name, labels)`: one sample from /metrics (0 when absent).
- `QueryStream(port, name, rate)`: a sender thread pacing UDP queries at `rate` per second and a
  receiver thread matching answers by ID; every query has its own ID, so a lost one is known.
  Bounded: `MAX_QUERIES` at most, and it stops when told or when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import HOST, ROOT, START_TIMEOUT, free_port, kdns_command, wait_answering
from tests.processes import STOP_TIMEOUT, stop_process

MAX_QUERIES = 40_000  # the most any stream sends (2,000 a second for 20 s)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_value(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    _, text = http_get(port, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                return float(sample.value)
    return 0.0


def udp_answers(port: int, name: str, timeout: float = 0.3) -> dns.message.Message | None:
    """One UDP query; None when nothing answers within `timeout` (or the port is closed)."""
    query = dns.message.make_query(name, "A")
    try:
        # A late answer to an earlier probe may reach this one's socket (the kernel reuses a
        # just-closed source port): not this query's answer, so it waits on for its own.
        return dns.query.udp(query, HOST, timeout=timeout, port=port, ignore_unexpected=True)
    except (OSError, dns.exception.Timeout):
        return None


@dataclass
class Served:
    """A running `kdns serve --config FILE`."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stderr())
            if found:
                return found
            time.sleep(0.02)
        pytest.fail(f"kdns did not log {pattern!r} within {timeout} s:\n{self.stderr()}")

    def stop(self) -> None:
        # The config file's lameduck applies here, not KDNS_LAMEDUCK=0: allow for it.
        stop_process(self.proc, STOP_TIMEOUT + 10)


def start_from_config(
    config: Path,
    log: Path,
    dns_port: int,
    *args: str,
    probe_name: str = "dns-version.cluster.local",
) -> Served:
    # The file's lameduck, not the one tests/conftest.py sets for every other kdns process.
    env = {k: v for k, v in os.environ.items() if k != "KDNS_LAMEDUCK"}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            kdns_command("serve", "--config", str(config), *args),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    served = Served(proc, log)
    try:
        wait_answering(
            lambda: udp_answers(dns_port, probe_name, 0.2) is not None,
            proc,
            served.stderr,
            START_TIMEOUT,
        )
    except BaseException:
        served.stop()
        raise
    return served


def start_on_free_ports(
    write: Callable[[int, int], Path], log: Path, attempts: int = 5
) -> tuple[Served, int, int]:
    """`start_from_config` of the file `write(dns_port, http_port)` writes, on a free UDP+TCP
    port and a free TCP port; on new ones when another process took one of them between
    choosing it and kdns's bind (tests running at once can win that race). Returns the server
    and the two ports."""
    for _ in range(attempts):
        dns_port, http_port = free_port(), free_tcp_port()
        config = write(dns_port, http_port)
        try:
            return start_from_config(config, log, dns_port), dns_port, http_port
        except pytest.fail.Exception:
            if "Address already in use" not in log.read_text(errors="replace"):
                raise
    pytest.fail(f"kdns could not bind free ports in {attempts} attempts")


@dataclass
class QueryStream:
    """UDP queries for `name` at `rate` per second from one socket, until `stop()`."""

    port: int
    name: str
    rate: float
    sent: dict[int, float] = field(default_factory=dict)  # query number → time sent
    answers: dict[int, bytes] = field(default_factory=dict)  # query number → response
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> QueryStream:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((HOST, 0))
        self._sock.settimeout(0.05)
        self._template = dns.message.make_query(self.name, "A").to_wire()
        self._receiving = threading.Event()
        self._receiving.set()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._receiving.clear()
        self._threads[1].join(timeout=5)
        self._sock.close()

    def stop(self) -> None:
        """Stop sending (answers are still received)."""
        self._stop.set()
        self._threads[0].join(timeout=5)

    def _send(self) -> None:
        start = time.monotonic()
        for n in range(MAX_QUERIES):
            if self._stop.is_set():
                return
            due = start + n / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # The query number is the DNS ID (16 bits are enough: MAX_QUERIES < 65536).
            with self._lock:  # readers copy `sent` while this thread adds to it
                self.sent[n] = time.monotonic()
            with contextlib.suppress(OSError):
                self._sock.sendto(struct.pack("!H", n) + self._template[2:], (HOST, self.port))

    def _receive(self) -> None:
        while self._receiving.is_set():
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                if not self._receiving.is_set():
                    return
                continue
            if len(data) >= 12:
                with self._lock:
                    self.answers[struct.unpack_from("!H", data)[0]] = data

    def wait_answered(self, numbers: list[int], timeout: float = 3.0) -> list[int]:
        """The numbers among `numbers` still unanswered after waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = [n for n in numbers if n not in self.answers]
            if not missing:
                return []
            time.sleep(0.05)
        return [n for n in numbers if n not in self.answers]

    def answered(self) -> list[int]:
        """The numbers answered so far (a copy: the receiver thread goes on adding)."""
        with self._lock:
            return list(self.answers)

    def sent_between(self, start: float, end: float) -> list[int]:
        with self._lock:
            sent = list(self.sent.items())
        return [n for n, at in sent if start <= at < end]

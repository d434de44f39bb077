"""Restarts that drop nothing: a second `kdns serve` binds beside the first (SO_REUSEPORT,
kdns/dns/reuseport.py), takes every new query, and the first drains and exits, under a steady
2,000 queries a second from one UDP socket."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import EXAMPLES, HOST
from tests.e2e.running import QueryStream, Served, start_from_config, start_on_free_ports

REDIS = "redis.default.svc.cluster.local"
RATE = 2000
WAIT = 20.0  # bound on each wait; never reached when passing


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def test_a_restart_of_kdns_serve_loses_no_query(tmp_path: Path) -> None:
    config = tmp_path / "kdns.yaml"

    def write(port: int, _: int) -> Path:
        config.write_text(
            f"lameduck: 1.0\nmanifests: ['{EXAMPLES}']\ndns_addr: '{HOST}:{port}'\n"
            f"ready_addr: '{HOST}:0'\nhealth_addr: '{HOST}:0'\nmetrics_addr: '{HOST}:0'\n"
        )
        return config

    old, port, _ = start_on_free_ports(write, tmp_path / "old.log")
    new: Served | None = None
    try:
        with QueryStream(port, REDIS, RATE) as stream:
            wait_for(lambda: len(stream.answers) >= 200, "answers from the first process")
            # The second process binds the same address while the first still answers.
            new = start_from_config(config, tmp_path / "new.log", port)
            new.wait_log("kdns ready to answer", timeout=WAIT)
            old.proc.send_signal(signal.SIGTERM)
            assert old.proc.wait(timeout=WAIT) == 0, old.stderr()
            stopped = time.monotonic()
            wait_for(
                lambda: len(stream.sent_between(stopped, float("inf"))) >= RATE // 2,
                "a half second of queries after the first process exited",
            )
            stream.stop()
            sent = sorted(stream.sent)
            missing = stream.wait_answered(sent, timeout=5.0)
            assert not missing, f"{len(missing)} of {len(sent)} queries unanswered"
            assert len(sent) >= 1000
    finally:
        old.stop()
        if new is not None:
            new.stop()

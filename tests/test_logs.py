"""kdns/logs.py: the JSON formatter and the consolidation of repeated errors, with a test clock."""

from __future__ import annotations

import json
import logging

import pytest

from kdns.logs import Consolidating, JsonFormatter


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup() -> tuple[logging.Logger, Collect, Consolidating, Clock]:
    target = Collect()
    clock = Clock()
    handler = Consolidating(target, interval=10.0, clock=clock, timer=False)
    logger = logging.getLogger(f"test-consolidate-{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, target, handler, clock


def timeout(logger: logging.Logger, name: str, upstream: str = "192.0.2.1:53") -> None:
    logger.error(
        "%s A: forward to %s: no answer within 2 s",
        name,
        upstream,
        extra={"consolidate": f"forward to {upstream}: timeout"},
    )


def test_a_thousand_identical_errors_give_the_first_line_and_one_count_line(setup) -> None:
    logger, target, handler, clock = setup
    for i in range(1000):
        timeout(logger, f"n{i}.example.org.")
        clock.now += 0.0005  # 1,000 in half a second
    assert target.lines() == ["n0.example.org. A: forward to 192.0.2.1:53: no answer within 2 s"]
    handler.flush(clock.now + 5)
    assert len(target.records) == 1, "the interval has not ended yet"
    handler.flush(1000.0 + 10.0)
    assert target.lines()[1:] == [
        "1000 similar errors in the last 10s: forward to 192.0.2.1:53: timeout"
    ]
    summary = target.records[1]
    assert (summary.levelno, summary.count, summary.pattern) == (
        logging.ERROR,
        1000,
        "forward to 192.0.2.1:53: timeout",
    )
    # An interval without any: nothing more, and the pattern is forgotten — the next one shows.
    handler.flush(1000.0 + 20.0)
    assert len(target.records) == 2
    clock.now = 1000.0 + 25.0
    timeout(logger, "late.example.org.")
    assert target.lines()[-1].startswith("late.example.org. A: forward to")


def test_a_steady_flood_gives_one_line_per_interval(setup) -> None:
    logger, target, handler, clock = setup
    for second in range(30):  # 100 a second for 30 s
        for i in range(100):
            clock.now = 1000.0 + second + i / 100
            timeout(logger, f"n{second}-{i}.example.org.")
    handler.flush(1000.0 + 30.0)
    lines = target.lines()
    assert len(lines) == 1 + 3, lines
    assert [line.split(" similar")[0] for line in lines[1:]] == ["1000", "1000", "1000"]


def test_patterns_are_counted_apart_and_lower_levels_pass(setup) -> None:
    logger, target, handler, clock = setup
    for _ in range(5):
        timeout(logger, "a.example.org.", "192.0.2.1:53")
        timeout(logger, "a.example.org.", "192.0.2.2:53")
        logger.info("informational")  # never held back
        logger.warning("malformed query from %s", "192.0.2.9")  # the template is the pattern
    assert target.lines().count("informational") == 5
    assert len(target.records) == 5 + 3
    clock.now += 10
    handler.flush()
    summaries = sorted(r.getMessage() for r in target.records[8:])
    assert summaries == [
        "5 similar errors in the last 10s: forward to 192.0.2.1:53: timeout",
        "5 similar errors in the last 10s: forward to 192.0.2.2:53: timeout",
        f"5 similar errors in the last 10s: {logger.name}: malformed query from 192.0.2.9",
    ]


def test_without_a_key_only_exact_repeats_are_alike(setup) -> None:
    logger, target, _, _ = setup
    for attempt in range(3):  # two different problems, one template: each one is seen
        logger.error("config reload refused: %s", f"kdns.yaml:{attempt}: ttl: bad")
    assert len(target.records) == 3


def test_a_single_error_gets_no_summary(setup) -> None:
    logger, target, handler, clock = setup
    timeout(logger, "once.example.org.")
    clock.now += 60
    handler.flush()
    assert len(target.records) == 1


def test_interval_zero_logs_every_one() -> None:
    target = Collect()
    handler = Consolidating(target, interval=0, timer=False)
    logger = logging.getLogger("test-consolidate-off")
    logger.propagate = False
    logger.addHandler(handler)
    for i in range(3):
        timeout(logger, f"n{i}.example.org.")
    assert len(target.records) == 3


def test_json_lines() -> None:
    formatter = JsonFormatter()
    record = logging.makeLogRecord(
        {
            "name": "kdns.dns.forward",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "%d similar errors",
            "args": (3,),
            "count": 3,
            "pattern": "p",
            "created": 0.5,
        }
    )
    line = formatter.format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:00.500Z",
        "level": "error",
        "logger": "kdns.dns.forward",
        "msg": "3 similar errors",
        "count": 3,
        "pattern": "p",
    }
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), True)
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(formatter.format(record))
    assert out["exc"].startswith("Traceback") and "ValueError: boom" in out["exc"]


def test_counts_still_held_are_logged_at_exit(setup) -> None:
    logger, target, handler, clock = setup
    for i in range(3):
        timeout(logger, f"n{i}.example.org.")
    clock.now += 1  # well inside the interval
    handler.close()
    assert target.lines()[1:] == [
        "3 similar errors in the last 10s: forward to 192.0.2.1:53: timeout"
    ]

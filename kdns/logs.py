"""Logging: text or JSON lines on stderr; repeated errors consolidated into one line per interval.

Contract:
- `setup(log_format, level, consolidate)` configures the root logger with one handler on stderr:
  `text` (`2026-01-02 03:04:05,678 WARNING kdns.dns.forward: …`) or `json` (one object per line:
  time, level, logger, msg, and exc, count, pattern when the record has them). Calling it again
  replaces what the previous call installed.
- The `kdns.query` logger (the query log, kdns/dns/querylog.py) writes each message as it is, one
  line on stderr at INFO whatever the level; it does not propagate and is never consolidated.
- `Consolidating` wraps the root handler (CoreDNS's errors plugin, `consolidate DURATION REGEXP
  show_first`): records at WARNING and above with the same pattern — the `consolidate` key a
  caller passes in `extra` (forward timeouts per upstream, malformed queries, internal errors),
  else the logger and the whole message (exact repeats) — are logged once, the first time;
  further ones within `interval` seconds are only counted, and once per interval while they
  keep coming one line says "N similar errors in the last 10s: <pattern>" (N counts every
  occurrence in that interval, the one shown included). An interval without any forgets the
  pattern: the next occurrence is shown again. Lower levels pass untouched.
- Thread-safe: Reflector threads log too. The summaries come from a timer thread, started at the
  first suppressed record, or from `flush(now)` (tests drive it with their own clock).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUERY_LOGGER = "kdns.query"


def _utc(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("count", "pattern"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


@dataclass(slots=True)
class _Window:
    start: float
    count: int  # occurrences since `start`, the one shown included
    last: logging.LogRecord
    shown: bool  # the first occurrence of this window was logged


class Consolidating(logging.Handler):
    """Passes records to `target`, holding back repeats of a pattern (see the module docstring)."""

    def __init__(
        self,
        target: logging.Handler,
        interval: float = 10.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        timer: bool = True,
    ) -> None:
        super().__init__()
        self.target = target
        self.interval = interval
        self.consolidate_level = level
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._mutex = threading.Lock()
        self._timer = timer
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @staticmethod
    def pattern(record: logging.LogRecord) -> str:
        key = getattr(record, "consolidate", None)
        if key:
            return str(key)
        # Without a key only exact repeats are alike: two different problems logged with the
        # same template (two bad reloads, two kinds failing) must both be seen.
        return f"{record.name}: {record.getMessage()}"

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.consolidate_level or self.interval <= 0:
            self.target.handle(record)
            return
        now = self.clock()
        pattern = self.pattern(record)
        with self._mutex:
            due = self._due(now)
            window = self._windows.get(pattern)
            if window is None:
                self._windows[pattern] = _Window(now, 1, record, shown=True)
                show = True
            else:
                window.count += 1
                window.last = record
                show = False
                if self._timer and self._thread is None:
                    self._thread = threading.Thread(
                        target=self._tick, name="log-consolidate", daemon=True
                    )
                    self._thread.start()
        for summary in due:
            self.target.handle(summary)
        if show:
            self.target.handle(record)

    def flush(self, now: float | None = None, everything: bool = False) -> None:
        """Log the summaries of every interval that has ended (`everything`: of every window,
        ended or not — at exit, so no count is lost)."""
        with self._mutex:
            due = self._due(self.clock() if now is None else now, everything)
        for summary in due:
            self.target.handle(summary)
        self.target.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.flush(everything=True)
        super().close()

    def _due(self, now: float, everything: bool = False) -> list[logging.LogRecord]:
        """Summaries of the windows that ended by `now` (the caller holds the mutex)."""
        out = []
        for pattern, window in list(self._windows.items()):
            if now - window.start < self.interval and not everything:
                continue
            repeats = window.count - (1 if window.shown else 0)
            if repeats <= 0:
                del self._windows[pattern]  # a quiet interval: show the next one again
                continue
            out.append(self._summary(window, pattern))
            # Keep counting in a new window, showing nothing until it ends.
            self._windows[pattern] = _Window(now, 0, window.last, shown=False)
        return out

    def _summary(self, window: _Window, pattern: str) -> logging.LogRecord:
        last = window.last
        return logging.makeLogRecord(
            {
                "name": last.name,
                "levelno": last.levelno,
                "levelname": last.levelname,
                "pathname": last.pathname,
                "lineno": last.lineno,
                "msg": "%d similar errors in the last %gs: %s",
                "args": (window.count, self.interval, pattern),
                "count": window.count,
                "pattern": pattern,
            }
        )

    def _tick(self) -> None:
        step = min(1.0, self.interval / 4)
        while not self._stop.wait(step):
            self.flush()


_installed: list[tuple[logging.Logger, logging.Handler]] = []


def setup(log_format: str = "text", level: str | int = "INFO", consolidate: float = 10.0) -> None:
    """Configure the root logger and the query logger (see the module docstring)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    for logger, handler in _installed:
        logger.removeHandler(handler)
        handler.close()
    _installed.clear()
    root = logging.getLogger()
    for handler in list(root.handlers):  # e.g. basicConfig's, set before the config was read
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    stream.setFormatter(formatter)
    consolidating = Consolidating(stream, interval=consolidate)
    root.addHandler(consolidating)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _installed.append((root, consolidating))

    query = logging.getLogger(QUERY_LOGGER)
    query.propagate = False
    query.setLevel(logging.INFO)
    query_handler = logging.StreamHandler(sys.stderr)
    query_handler.setFormatter(logging.Formatter("%(message)s"))
    query.addHandler(query_handler)
    _installed.append((query, query_handler))

"""tests/processes.py: the one way tests stop what they start (SIGTERM, bounded wait, SIGKILL,
reap, the rest of the output)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.processes import stop_process

# Each child says "ready" once its signal disposition is in place, so the test signals it only
# then (no sleep): before that, SIGTERM would meet Python's default handler.
OBEYS_SIGTERM = "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"
IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "sys.stderr.write('still here\\n')\n"
    "time.sleep(60)\n"
)


def start(script: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_process_that_obeys_sigterm_ends_by_it() -> None:
    proc = start(OBEYS_SIGTERM)
    stop_process(proc, timeout=30)
    assert proc.returncode == -signal.SIGTERM


def test_a_process_that_ignores_sigterm_is_killed_and_its_output_returned() -> None:
    proc = start(IGNORES_SIGTERM)
    # A short bound: the child sleeps 60 s, so only SIGKILL can end it this early.
    _, err = stop_process(proc, timeout=1.0)
    assert proc.returncode == -signal.SIGKILL
    assert err == "still here\n"


def test_a_process_that_already_exited_is_only_reaped() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "print('done')"], stdout=subprocess.PIPE, text=True
    )
    proc.wait(timeout=30)  # exited; its output still waits in the pipe
    out, err = stop_process(proc)
    assert (proc.returncode, out, err) == (0, "done\n", None)


def test_the_wait_after_sigkill_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process the kernel cannot end at once (uninterruptible sleep) is not waited for forever.
    proc = start(IGNORES_SIGTERM)
    monkeypatch.setattr(proc, "kill", lambda: None)  # a SIGKILL that does not take effect
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            stop_process(proc, timeout=0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

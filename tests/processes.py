"""Stopping the processes tests start: the one way, used by every fixture and helper.

Contract: ``stop_process(proc)`` asks the process to stop with SIGTERM (how kubelet stops a
container, and what kdns's lameduck listens for), waits at most ``timeout`` seconds, then sends
SIGKILL and waits at most ``timeout`` again; it always reaps the process (no zombie is left) and
returns what was still unread on its stdout and stderr pipes (None for a stream that is not a
pipe). A process that already exited is only reaped. A process that outlives SIGKILL by
``timeout`` (stuck in the kernel) raises ``subprocess.TimeoutExpired``: a bounded wait, always.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from typing import AnyStr

STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL, and the bound on the wait after SIGKILL


def stop_process(
    proc: subprocess.Popen[AnyStr], timeout: float = STOP_TIMEOUT
) -> tuple[AnyStr | None, AnyStr | None]:
    """SIGTERM, bounded wait, SIGKILL, reap; the rest of the process's piped output."""
    if proc.poll() is None:
        # It may exit between poll() and the signal; that is the outcome we want anyway.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        # communicate() drains the pipes while waiting: a process blocked writing to a full
        # pipe could otherwise never reach its exit.
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=timeout)

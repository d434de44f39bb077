"""`nodednsrules.other_listener`: whether a stop is a restart (another process answers on the
node DNS addresses) or not, from `ss -H -l -u -n -p` lines as ss prints them."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from kdns.proxy.nodednsrules import other_listener

ME = os.getpid()
OURS = f'UNCONN 0 0 169.254.20.10:53 0.0.0.0:* users:(("kdns",pid={ME},fd=12))'
OTHER_PID = 'UNCONN 0 0 169.254.20.10:53 0.0.0.0:* users:(("kdns",pid=4242424,fd=9))'
# The pod beside ours under a surge rollout: its process is in another PID namespace, so ss
# finds no process for the socket and prints none.
NO_PROCESS = "UNCONN 0 0 169.254.20.10:53 0.0.0.0:*"
SHARED_FD = (
    f'UNCONN 0 0 169.254.20.10:53 0.0.0.0:* users:(("kdns",pid={ME},fd=12),("x",pid=7,fd=3))'
)


@pytest.mark.parametrize(
    ("listing", "restart"),
    [
        ("", False),  # nobody answers: a stop for good
        (OURS, False),  # only this process's own socket
        (f"{OURS}\n{OTHER_PID}", True),  # another process of this PID namespace
        (f"{OURS}\n{NO_PROCESS}", True),  # a process ss cannot see: another pod's
        (NO_PROCESS, True),
        (SHARED_FD, False),  # one socket held by this process (and a child): still ours
    ],
)
def test_a_stop_is_a_restart_when_a_socket_is_not_this_process_s(
    listing: str, restart: bool
) -> None:
    asked: list[Sequence[str]] = []

    def ss(argv: Sequence[str], stdin: str | None) -> tuple[int, str, str]:
        asked.append(argv)
        return 0, listing + "\n" if listing else "", ""

    assert other_listener(ss, ["169.254.20.10"], 53) is restart
    assert asked[0][:6] == ["ss", "-H", "-l", "-u", "-n", "-p"]


def test_an_ss_that_fails_says_nothing() -> None:
    assert other_listener(lambda argv, stdin: (1, NO_PROCESS, "error"), ["10.96.0.10"], 53) is False

"""kdns/dns/admission.py: which TCP connection a full listener closes (RFC 7766 §6.2.2).

Each case is a script of events, the connections named by client and number ("a1" is client
a's first); after each `admit` the case states what was closed and whether the newcomer got in.
"""

from __future__ import annotations

import pytest

from kdns.dns.admission import CLIENT_LIMIT, SERVER_LIMIT, TcpAdmission

# (event, connection, expected) — expected for "admit": (admitted, [(closed, reason), ...]).
Script = list[tuple[str, str, object]]

CASES: dict[str, tuple[int, int, Script]] = {
    "below the limits nothing is closed": (
        3,
        3,
        [("admit", "a1", (True, [])), ("admit", "b1", (True, []))],
    ),
    "a full listener closes the connection idle the longest": (
        2,
        2,
        [
            ("admit", "a1", (True, [])),
            ("admit", "b1", (True, [])),
            ("admit", "c1", (True, [("a1", SERVER_LIMIT)])),
        ],
    ),
    "a query read makes a connection busy; answered, it is the newest idle": (
        2,
        2,
        [
            ("admit", "a1", (True, [])),
            ("admit", "b1", (True, [])),
            ("busy", "a1", None),
            ("idle", "a1", None),
            ("admit", "c1", (True, [("b1", SERVER_LIMIT)])),
        ],
    ),
    "busy connections are never closed; with none idle the newcomer is refused": (
        2,
        2,
        [
            ("admit", "a1", (True, [])),
            ("admit", "b1", (True, [])),
            ("busy", "a1", None),
            ("busy", "b1", None),
            ("admit", "c1", (False, [])),
            ("idle", "b1", None),
            ("admit", "c2", (True, [("b1", SERVER_LIMIT)])),
        ],
    ),
    "a client at its limit makes room among its own, not others'": (
        10,
        2,
        [
            ("admit", "b1", (True, [])),
            ("admit", "a1", (True, [])),
            ("admit", "a2", (True, [])),
            ("admit", "a3", (True, [("a1", CLIENT_LIMIT)])),
            ("admit", "a4", (True, [("a2", CLIENT_LIMIT)])),
        ],
    ),
    "a client at its limit with every connection busy is refused": (
        10,
        1,
        [
            ("admit", "a1", (True, [])),
            ("busy", "a1", None),
            ("admit", "a2", (False, [])),
            ("admit", "b1", (True, [])),
        ],
    ),
    "a connection that left frees its place": (
        2,
        2,
        [
            ("admit", "a1", (True, [])),
            ("admit", "b1", (True, [])),
            ("leave", "a1", None),
            ("admit", "c1", (True, [])),
            ("leave", "a1", None),  # twice: nothing
        ],
    ),
    "a closed connection no longer counts, and leaving after it changes nothing": (
        1,
        1,
        [
            ("admit", "a1", (True, [])),
            ("admit", "b1", (True, [("a1", SERVER_LIMIT)])),
            ("leave", "a1", None),
            ("idle", "a1", None),
            ("admit", "c1", (True, [("b1", SERVER_LIMIT)])),
        ],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_admission(name: str) -> None:
    limit, per_client, script = CASES[name]
    admission: TcpAdmission[str] = TcpAdmission(limit, per_client)
    for event, conn, expected in script:
        if event == "admit":
            admitted = admission.admit(conn, conn[0])
            assert (admitted.ok, admitted.close) == expected, f"{event} {conn}"
        else:
            getattr(admission, event)(conn)
        assert len(admission) <= limit


def test_out_of_descriptors_closes_the_idle_longest_or_nothing() -> None:
    admission: TcpAdmission[str] = TcpAdmission(10, 10)
    for conn in ("a1", "b1", "c1"):
        admission.admit(conn, conn[0])
    admission.busy("a1")
    assert admission.make_room() == "b1"
    assert admission.make_room() == "c1"
    assert admission.make_room() is None  # a1 is busy
    assert len(admission) == 1
    assert admission.held("a") == 1 and admission.held("b") == 0

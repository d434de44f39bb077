"""kdns/dns/mmsg.py's pure part: a raw sockaddr, as recvmmsg writes it, in the tuple form
Python's `recvfrom` gives (what trio answers a miss with and the query log prints)."""

from __future__ import annotations

import socket
import struct

import pytest

from kdns.dns import mmsg


def sockaddr_in(host: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host)


def sockaddr_in6(host: str, port: int, flowinfo: int = 0, scope: int = 0) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, flowinfo)
        + socket.inet_pton(socket.AF_INET6, host)
        + struct.pack("=I", scope)
    )


@pytest.mark.parametrize(
    ("raw", "tuple_form", "v4_mapped"),
    [
        (sockaddr_in("127.0.0.1", 53), ("127.0.0.1", 53), None),
        (sockaddr_in("10.244.1.7", 40000), ("10.244.1.7", 40000), None),
        (sockaddr_in6("::1", 5353), ("::1", 5353, 0, 0), False),
        (sockaddr_in6("fd00::a", 65535, 7), ("fd00::a", 65535, 7, 0), False),
        (sockaddr_in6("::ffff:10.0.0.1", 1024), ("::ffff:10.0.0.1", 1024, 0, 0), True),
        # A link-local sender names its interface, as getnameinfo does (index 1 is `lo`).
        (
            sockaddr_in6("fe80::1", 53, 0, 1),
            (f"fe80::1%{socket.if_indextoname(1)}", 53, 0, 1),
            False,
        ),
    ],
)
def test_a_raw_sockaddr_reads_as_python_tuple(
    raw: bytes, tuple_form: tuple[object, ...], v4_mapped: bool | None
) -> None:
    assert mmsg.decode_sockaddr(raw) == tuple_form
    if v4_mapped is not None:
        assert mmsg.is_v4_mapped(raw) is v4_mapped


def test_other_families_are_refused() -> None:
    with pytest.raises(ValueError, match="family 1"):
        mmsg.decode_sockaddr(struct.pack("=H", socket.AF_UNIX) + b"/tmp/x")

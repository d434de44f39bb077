"""kdns/dns/mmsg.py: a raw sockaddr, as recvmmsg writes it, in the tuple form Python's
`recvfrom` gives (what trio answers a miss with and the query log prints), and back (what the
answers to relayed misses are sent to); `reply_to` over real loopback sockets."""

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


ADDRESSES = [
    ("127.0.0.1", 53),
    ("10.244.1.7", 40000),
    ("::1", 5353, 0, 0),
    ("2001:db8::7", 65535, 0, 0),
    ("::ffff:10.244.1.7", 1234, 0, 0),  # an IPv4 client of a dual-stack socket
]


@pytest.mark.parametrize("address", ADDRESSES, ids=[a[0] for a in ADDRESSES])
def test_a_clients_address_becomes_the_sockaddr_the_kernel_gave(address: tuple) -> None:
    # Relayed misses are answered with sendmmsg to a raw sockaddr: it must decode back to
    # what recvfrom gave.
    assert mmsg.decode_sockaddr(mmsg.encode_sockaddr(address)) == address


def test_replies_to_raw_addresses_go_out_in_one_send_each_to_its_client() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second,
    ):
        server.bind(("127.0.0.1", 0))
        for client in (first, second):
            client.bind(("127.0.0.1", 0))
            client.settimeout(5)
        outbox = mmsg.Batch(2, 512)
        outbox.reply_to(mmsg.encode_sockaddr(first.getsockname()), b"one")
        outbox.reply_to(mmsg.encode_sockaddr(second.getsockname()), b"two" * 100)
        assert outbox.queued() == 2
        assert outbox.send(server.fileno()) == []
        assert outbox.queued() == 0
        assert first.recvfrom(512) == (b"one", server.getsockname())
        assert second.recvfrom(512) == (b"two" * 100, server.getsockname())

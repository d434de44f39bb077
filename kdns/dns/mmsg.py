"""Batched UDP receive and send (Linux `recvmmsg`/`sendmmsg`) through ctypes, pure of policy.

Why (docs/architecture.md §7): every Python socket method releases the GIL, so a thread that
reads one datagram per call gives the GIL away per packet and, while another thread runs Python
for long, waits up to the interpreter's switch interval to get it back, per packet. A foreign
call through `ctypes.PyDLL` keeps the GIL; one through `ctypes.CDLL` releases it. So a receive
loop can wait for the first datagrams with the GIL released (`receive(wait=True)`) and then take
the rest of the queue and send the answers without letting go of it (`wait=False`, `send`).

Contract:
- `available()` says whether libc has both calls (Linux); `Batch` must not be made otherwise.
- `Batch(slots, size)` preallocates `slots` receive buffers of `size` bytes, a sockaddr area per
  slot and as many send buffers; nothing is allocated per packet but the `bytes` handed out.
- `receive(fd, wait)` fills slots 0..n-1 and returns n (0 when nothing is queued, or the receive
  side was shut down, or SO_RCVTIMEO expired). `wait=True` blocks (GIL released) until at least
  one datagram is there, then takes what else is queued (MSG_WAITFORONE); `wait=False` never
  blocks and keeps the GIL (MSG_DONTWAIT). Other errors raise OSError.
- `datagram(i)` and `name(i)` (the raw sockaddr bytes, as the kernel wrote them) read slot i
  of the last receive (a slot holds 65,535 bytes by default: any UDP payload); `address(i)`
  decodes the sockaddr into Python's tuple form (only needed off the hot path).
- `reply(i, data)` queues `data` for slot i's sender (its raw sockaddr reused, nothing decoded);
  `reply_to(name, data)` queues it for a raw sockaddr (`encode_sockaddr` makes one from
  Python's address tuple), while `queued() < slots`; `send(fd)` writes every queued reply
  with `sendmmsg(MSG_DONTWAIT)`, keeping the GIL, and returns the errno of each one that
  failed (would block, unreachable: the caller counts them). `reply` must be sent before the
  next `receive`, which reuses the slots' addresses.
- One Batch belongs to one thread.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
from typing import Any

MSG_DONTWAIT = 0x40
MSG_WAITFORONE = 0x10000
SOCKADDR_SIZE = 128  # sizeof(struct sockaddr_storage)
V4_MAPPED = b"\0" * 10 + b"\xff\xff"  # ::ffff:0:0/96, bytes 8..20 of a sockaddr_in6
_FAMILY = struct.Struct("=H")
_V6_TAIL = struct.Struct("!I16s")


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),  # socklen_t
        ("msg_iov", ctypes.POINTER(IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


HDR_SIZE = ctypes.sizeof(MMsgHdr)
NAMELEN_AT = MMsgHdr.msg_hdr.offset + MsgHdr.msg_namelen.offset
NAME_AT = MMsgHdr.msg_hdr.offset + MsgHdr.msg_name.offset
FLAGS_AT = MMsgHdr.msg_hdr.offset + MsgHdr.msg_flags.offset
LEN_AT = MMsgHdr.msg_len.offset
IOV_LEN_AT = IoVec.iov_len.offset
IOV_SIZE = ctypes.sizeof(IoVec)
# msg_name and msg_namelen are written as one "@PI" (pointer, then socklen_t at its alignment).
assert MsgHdr.msg_namelen.offset == MsgHdr.msg_name.offset + ctypes.sizeof(ctypes.c_void_p)


def _functions(
    dll: type[ctypes.CDLL],
) -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:  # type: ignore[name-defined]
    try:
        libc = dll(None, use_errno=True)  # the process's own symbols: libc's
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    # Pointers are passed as prebuilt c_void_p: the cheapest conversion ctypes has.
    recvmmsg.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


# The same libc functions twice: through PyDLL the call keeps the GIL (a queue already there is
# read without giving it away), through CDLL it releases it (a wait lets the other threads run).
_HOLDING = _functions(ctypes.PyDLL)
_RELEASING = _functions(ctypes.CDLL)


def available() -> bool:
    return _HOLDING is not None and _RELEASING is not None


class Batch:
    def __init__(self, slots: int = 64, size: int = 65535) -> None:
        assert _HOLDING is not None and _RELEASING is not None, "recvmmsg is Linux only"
        self.slots = slots
        self.size = size
        self._recv_hdrs = (MMsgHdr * slots)()
        self._send_hdrs = (MMsgHdr * slots)()
        self._recv_iovs = (IoVec * slots)()
        self._send_iovs = (IoVec * slots)()
        self._names = ctypes.create_string_buffer(SOCKADDR_SIZE * slots)
        self._out_names = ctypes.create_string_buffer(SOCKADDR_SIZE * slots)  # `reply_to`'s
        # Anonymous mappings: pages the kernel fills lazily, so the buffers cost memory only
        # where datagrams were written (ctypes' own buffers are zeroed up front, all resident).
        self._rbuf = (ctypes.c_char * (size * slots)).from_buffer(mmap.mmap(-1, size * slots))
        self._sbuf = (ctypes.c_char * (size * slots)).from_buffer(mmap.mmap(-1, size * slots))
        names_at = self._names_at = ctypes.addressof(self._names)
        rbuf_at, sbuf_at = ctypes.addressof(self._rbuf), ctypes.addressof(self._sbuf)
        for i in range(slots):
            self._recv_iovs[i].iov_base = rbuf_at + i * size
            self._recv_iovs[i].iov_len = size
            hdr = self._recv_hdrs[i].msg_hdr
            hdr.msg_name = names_at + i * SOCKADDR_SIZE
            hdr.msg_namelen = SOCKADDR_SIZE
            hdr.msg_iov = ctypes.pointer(self._recv_iovs[i])
            hdr.msg_iovlen = 1
            self._send_iovs[i].iov_base = sbuf_at + i * size
            out = self._send_hdrs[i].msg_hdr
            out.msg_iov = ctypes.pointer(self._send_iovs[i])
            out.msg_iovlen = 1
        # Views over the preallocated memory: reading and writing them is plain Python (no
        # foreign call, no GIL release), and cheaper than a ctypes field per access.
        self._recv_view = memoryview(self._recv_hdrs).cast("B")
        self._send_view = memoryview(self._send_hdrs).cast("B")
        self._send_iov_view = memoryview(self._send_iovs).cast("B")
        self._name_view = memoryview(self._names).cast("B")
        self._out_names_at = ctypes.addressof(self._out_names)
        self._out_name_view = memoryview(self._out_names).cast("B")
        self._rbuf_view = memoryview(self._rbuf).cast("B")
        self._sbuf_view = memoryview(self._sbuf).cast("B")
        self._received = 0
        self._queued = 0
        self._recv_at = ctypes.c_void_p(ctypes.addressof(self._recv_hdrs))
        self._send_at = ctypes.c_void_p(ctypes.addressof(self._send_hdrs))
        self._namelen = struct.Struct("=I")
        self._name_and_len = struct.Struct("@PI")  # msg_name, msg_namelen: adjacent
        self._pointer = struct.Struct("@P")
        self._size_t = struct.Struct("@N")

    def receive(self, fd: int, wait: bool) -> int:
        """Read up to `slots` datagrams into the slots; the count (0: none, or shut down)."""
        # Each slot's address length is left as the kernel wrote it: one socket's senders all
        # have one length (sockaddr_in, or sockaddr_in6 on an IPv6 or dual-stack socket).
        self._received = self._queued = 0
        if wait:
            count = _RELEASING[0](fd, self._recv_at, self.slots, MSG_WAITFORONE, None)
        else:
            count = _HOLDING[0](fd, self._recv_at, self.slots, MSG_DONTWAIT, None)
        if count < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        self._received = count
        return count

    def datagram(self, i: int) -> bytes:
        start = i * self.size
        length = self._namelen.unpack_from(self._recv_view, i * HDR_SIZE + LEN_AT)[0]
        return self._rbuf_view[start : start + length].tobytes()

    def name(self, i: int) -> bytes:
        length = self._namelen.unpack_from(self._recv_view, i * HDR_SIZE + NAMELEN_AT)[0]
        start = i * SOCKADDR_SIZE
        return self._name_view[start : start + min(length, SOCKADDR_SIZE)].tobytes()

    def address(self, i: int) -> tuple[str, int] | tuple[str, int, int, int]:
        return decode_sockaddr(self.name(i))

    def reply(self, i: int, data: bytes) -> None:
        """Queue `data` for the sender of slot i (sent by the next `send`)."""
        j = self._queued
        length = len(data)  # at most 65,535 (a UDP payload), the slot's size
        start = j * self.size
        self._sbuf_view[start : start + length] = data
        self._size_t.pack_into(self._send_iov_view, j * IOV_SIZE + IOV_LEN_AT, length)
        namelen = self._namelen.unpack_from(self._recv_view, i * HDR_SIZE + NAMELEN_AT)[0]
        self._name_and_len.pack_into(
            self._send_view, j * HDR_SIZE + NAME_AT, self._names_at + i * SOCKADDR_SIZE, namelen
        )
        self._queued = j + 1

    def reply_to(self, name: bytes, data: bytes) -> None:
        """Queue `data` for the raw sockaddr `name` (sent by the next `send`; `queued()` must
        be under `slots`)."""
        j = self._queued
        length = len(data)
        start = j * self.size
        self._sbuf_view[start : start + length] = data
        self._size_t.pack_into(self._send_iov_view, j * IOV_SIZE + IOV_LEN_AT, length)
        at = j * SOCKADDR_SIZE
        self._out_name_view[at : at + len(name)] = name
        self._name_and_len.pack_into(
            self._send_view, j * HDR_SIZE + NAME_AT, self._out_names_at + at, len(name)
        )
        self._queued = j + 1

    def queued(self) -> int:
        """Replies queued for the next `send`."""
        return self._queued

    def send(self, fd: int) -> list[int]:
        """Send the queued replies (never blocking, GIL kept); the errno of each one lost."""
        queued = self._queued
        self._queued = 0
        if not queued:
            return NO_ERRORS
        sendmmsg = _HOLDING[1]  # type: ignore[index]
        sent = sendmmsg(fd, self._send_at, queued, MSG_DONTWAIT)
        if sent == queued:
            return NO_ERRORS
        failed: list[int] = []
        done = 0
        for _ in range(queued):  # bounded: each round sends at least one or drops one
            if sent < 0:
                failed.append(ctypes.get_errno())  # this reply is lost, as a UDP send may be
                done += 1
            else:
                done += sent
            if done >= queued:
                break
            sent = sendmmsg(fd, self._send_at.value + done * HDR_SIZE, queued - done, MSG_DONTWAIT)
        return failed


NO_ERRORS: list[int] = []  # never appended to: what `send` returns when every reply went


def encode_sockaddr(address: tuple[Any, ...]) -> bytes:
    """Python's address tuple (as recvfrom gives it) → the raw sockaddr_in / sockaddr_in6."""
    host, port = address[0], address[1]
    if len(address) == 2:
        return (
            _FAMILY.pack(socket.AF_INET)
            + port.to_bytes(2, "big")
            + socket.inet_aton(host)
            + bytes(8)
        )
    host = host.split("%", 1)[0]
    return (
        _FAMILY.pack(socket.AF_INET6)
        + port.to_bytes(2, "big")
        + _V6_TAIL.pack(address[2], socket.inet_pton(socket.AF_INET6, host))
        + struct.pack("=I", address[3])
    )


def decode_sockaddr(raw: bytes) -> tuple[str, int] | tuple[str, int, int, int]:
    """A raw sockaddr_in/sockaddr_in6 in the tuple form Python's `recvfrom` returns."""
    family = int.from_bytes(raw[:2], "little" if struct.pack("=H", 1)[0] else "big")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6:
        flowinfo = int.from_bytes(raw[4:8], "big")
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        scope = struct.unpack("=I", raw[24:28])[0]
        if scope:  # Python names the zone of a scoped (link-local) address, as getnameinfo does
            try:
                host = f"{host}%{socket.if_indextoname(scope)}"
            except OSError:
                host = f"{host}%{scope}"
        return host, port, flowinfo, scope
    raise ValueError(f"not an IPv4 or IPv6 socket address (family {family})")


def is_v4_mapped(raw: bytes) -> bool:
    """Whether a raw sockaddr_in6 holds an IPv4-mapped address (a dual-stack socket's IPv4)."""
    return raw[8:20] == V4_MAPPED

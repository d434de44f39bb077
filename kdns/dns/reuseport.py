"""Listening sockets that a restarting kdns hands over without dropping a query.

Contract:
- `share(sock)` (before `bind`) sets SO_REUSEPORT, so the next process (a restart, a rolling
  update of the DaemonSet) binds the same address while this one still answers; `steer(sock)`
  (after `bind`: a socket with a program attached before binding cannot join a group) gives
  the socket group a classic BPF program that sends every packet (UDP) and every new
  connection (TCP) to the group's second socket when there is one, else to the first.
- Why: with plain SO_REUSEPORT the kernel hashes each flow onto any socket of the group, so
  queries keep landing on the old process's socket until it closes, and those queued then are
  lost. Steered to the newest socket (the second: the group keeps sockets in bind order, and
  when one closes the last takes its place), the old process stops getting queries the moment
  the new one has bound; it answers what it holds during its lameduck, then closes an empty
  socket. An index past the group's end falls back to the kernel's hash (a group of one).
- The sockets of one group must belong to the same user (the kernel's rule). Kernels without
  the BPF option (before 4.5) keep the plain SO_REUSEPORT hand-over.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant
_NEWEST = 1  # the second socket of the group: the process that bound after this one


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


def share(sock: socket.socket) -> None:
    """SO_REUSEPORT, before `bind`."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def steer(sock: socket.socket) -> None:
    """Steering to the newest socket of the group (module docstring), after `bind`."""
    program = (_SockFilter * 1)(_SockFilter(_BPF_RET_K, 0, 0, _NEWEST))
    fprog = _SockFprog(1, ctypes.cast(program, ctypes.POINTER(_SockFilter)))
    # The kernel copies the program during the call; `program` outlives it.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))

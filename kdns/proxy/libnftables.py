"""`nft -f -` without a process: one libnftables context kept across the proxy's syncs.

Contract:
- `Libnftables.load(fallback)` opens `libnftables.so.1` (shipped with Debian's nftables package)
  through ctypes and returns a Runner, or None when the library or a context is not available
  (the caller then keeps running `nft`). The Runner runs `["nft", "-f", "-"]` with its stdin
  through the context's `nft_run_cmd_from_buffer` and hands every other command to `fallback`:
  (status, stdout, stderr) as the `nft` process would give them, 0 or 1, with nft's error text.
- Why: with nft 1.0.6 each `nft -f` process starts, loads its libraries and fetches its cache
  before the first command; a one-endpoint partial sync at 10k Services spends about 15 ms of
  its time on that (README, Proxy figures), and at 1k most of it.
- Safe with others writing the ruleset between our transactions: libnftables validates its
  cache against the kernel's ruleset generation ID before it evaluates a transaction and
  fetches it again when the ID moved (1.0.6 also drops it after each of its own commits), so a
  kept context sees what a fresh `nft` process would see; the transaction itself is atomic in
  the kernel either way.
- What a context keeps after a transaction grows with it: after a full sync at 10k Services
  (a 10 MB transaction) about 100 MiB, which a later partial sync never needs (nft 1.0.6;
  docs/benchmarks.md, Proxy). `renew()` frees the context and opens a fresh one, which the
  data plane does after each full sync; the next transaction fetches its cache as it would
  after any change of the ruleset's generation, so a partial sync costs the same.
- The netlink socket belongs to the network namespace of the thread that loads the context
  (the proxy's, whichever thread later uses it). Calls are serialised by a lock.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str], str | None], tuple[int, str, str]]

LIBRARY = "libnftables.so.1"
_NFT_FILE = ["nft", "-f", "-"]


class Libnftables:
    """A Runner: `nft -f -` through one kept libnftables context, other commands by `fallback`."""

    def __init__(self, lib: ctypes.CDLL, ctx: int, fallback: Runner) -> None:
        self._lib = lib
        self._ctx = ctx
        self._fallback = fallback
        self._lock = threading.Lock()

    @classmethod
    def load(cls, fallback: Runner, library: str = LIBRARY) -> Libnftables | None:
        """The Runner, or None (logged) when libnftables cannot be used here."""
        try:
            lib = ctypes.CDLL(library)
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        except (OSError, AttributeError) as e:
            log.info("nftables: %s not usable (%s): applying with `nft -f -`", library, e)
            return None
        ctx = _new_context(lib)
        if not ctx:
            return None
        return cls(lib, ctx, fallback)

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        if list(argv) != _NFT_FILE or stdin is None:
            return self._fallback(argv, stdin)
        with self._lock:
            if not self._ctx:
                return self._fallback(argv, stdin)
            status = self._lib.nft_run_cmd_from_buffer(self._ctx, stdin.encode())
            # Reading a buffer also rewinds it for the next command.
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return (0 if status == 0 else 1), out.decode(errors="replace"), err.decode(errors="replace")

    def renew(self) -> None:
        """Frees the context and opens a fresh one, giving back what the old one kept of its
        transactions; when no new context can be had, later calls run `nft` instead."""
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = _new_context(self._lib) or 0

    def close(self) -> None:
        """Frees the context; later calls run `nft` through the fallback."""
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = 0


def _new_context(lib: ctypes.CDLL) -> int:
    """A context that buffers its output and errors, as `nft` would print them; 0 (logged)
    when libnftables cannot make one."""
    ctx: int = lib.nft_ctx_new(0) or 0  # NFT_CTX_DEFAULT
    if not ctx:
        log.info("nftables: no libnftables context: applying with `nft -f -`")
        return 0
    if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
        lib.nft_ctx_free(ctx)
        log.info("nftables: libnftables cannot buffer its output: applying with `nft -f -`")
        return 0
    return ctx

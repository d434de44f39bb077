"""Writes the sysctls `proxy/sysctls.py` lists, under a root directory (/proc/sys on a node).

Contract:
- `apply(sysctls, root)` reads each current value and writes the ones `needs_write` says, in
  order. One info line per change (`sysctl net/netfilter/nf_conntrack_max: 65536 -> 131072`),
  one warning line per failure (a missing file: the module is not loaded or the namespace has
  no such setting; a read-only /proc/sys in an unprivileged container), and it goes on: the
  proxy still programs Services. This is a deliberate difference from kube-proxy, which exits
  when a write fails (hence kind's and usernetes' `--conntrack-max-per-core=0`): kdns names
  what failed and keeps serving. Returns the warning lines.
- `apply` touches nothing when `root` is "" (in-process tests of the proxy on the host).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from kdns.proxy.sysctls import Sysctl, needs_write

log = logging.getLogger(__name__)


def apply(sysctls: Sequence[Sysctl], root: str) -> list[str]:
    if not root:
        return []
    warnings = []
    for sysctl in sysctls:
        problem = _ensure(sysctl, os.path.join(root, sysctl.path))
        if problem:
            line = f"sysctl {sysctl.path}: cannot set {sysctl.value}: {problem}"
            log.warning("%s", line)
            warnings.append(line)
    return warnings


def _ensure(sysctl: Sysctl, file: str) -> str:
    """ "" once the setting holds, else why not."""
    try:
        with open(file) as f:
            text = f.read().strip()
    except OSError as e:
        return e.strerror or str(e)
    current = int(text) if text.lstrip("-").isdigit() else None
    if not needs_write(sysctl, current):
        return ""
    try:
        with open(file, "w") as f:
            f.write(f"{sysctl.value}\n")
    except OSError as e:
        return e.strerror or str(e)
    log.info("sysctl %s: %s -> %d", sysctl.path, text, sysctl.value)
    return ""

"""Installs and removes the node DNS's data path (`proxy/nodedns.py` renders it) through a
`Runner`: the device holding the addresses, NOTRACK, and the keep-local rules.

Contract:
- `install(runner, mode, addresses)` puts each address that is not already on the node on the
  dummy device `kdns-dns` (NodeLocal DNSCache's `nodelocaldns` device, created when missing),
  then the mode's rules: iptables and IPVS modes the `raw`/`nat` chains in each family that has
  an address, with their jumps inserted first when missing; nftables mode its own table.
  Applying again converges (chains are rewritten, jumps are checked before insertion). Returns
  one line per failure, empty when everything is in place.
- `remove(runner)` removes all of it in every mode (the device, the jumps and chains in both
  families, the table), whatever mode installed it; returns one line per failure.
- `other_listener(addresses, port)` says whether another process listens on one of the
  addresses' DNS port: a stop while the next process already answers is a restart, and the
  rules stay.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Sequence

from kdns.proxy import nodedns
from kdns.proxy.dataplane import Runner, jump_line

DEVICE = nodedns.DEVICE
_TOOLS = {
    4: ("iptables", "iptables-save", "iptables-restore"),
    6: ("ip6tables", "ip6tables-save", "ip6tables-restore"),
}
NOT_INSTALLED = 127


def _error(runner: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    status, _, err = runner(argv, stdin)
    if status == 0:
        return ""
    return f"{shlex.join(argv)}: {' '.join(err.split()) or f'exit {status}'}"


def _on_node(runner: Runner, address: str) -> bool:
    status, out, _ = runner(["ip", "-o", "addr", "show", "to", address], None)
    return status == 0 and bool(out.strip())


def install_device(runner: Runner, addresses: Sequence[str]) -> list[str]:
    missing = [a for a in addresses if not _on_node(runner, a)]
    if not missing:
        return []
    if runner(["ip", "link", "show", "dev", DEVICE], None)[0] != 0:
        error = _error(runner, ["ip", "link", "add", DEVICE, "type", "dummy"])
        if error:
            return [f"{error} (put the addresses on an interface of the node instead)"]
    problems = [_error(runner, ["ip", "link", "set", DEVICE, "up"])]
    for address in missing:
        prefix = ipaddress.ip_address(address).max_prefixlen
        problems.append(
            _error(runner, ["ip", "addr", "replace", f"{address}/{prefix}", "dev", DEVICE])
        )
    return [p for p in problems if p]


def install_iptables(runner: Runner, addresses: Sequence[str]) -> list[str]:
    problems = []
    for family, (iptables, _, restore) in _TOOLS.items():
        if not nodedns.of_family(addresses, family):
            continue
        text = nodedns.iptables_restore(addresses, family)
        error = _error(runner, [restore, "-w", "5", "--noflush"], text)
        if error:
            problems.append(error)
            continue
        # Inserted in reverse, each at the top: the list order ends up first to last.
        for rule in reversed(nodedns.JUMP_RULES):
            check = [iptables, "-w", "5", "-t", rule.table, "-C", rule.chain, *rule.args]
            if runner(check, None)[0] != 0:
                insert = [iptables, "-w", "5", "-t", rule.table, "-I", rule.chain, "1", *rule.args]
                problems.append(_error(runner, insert))
    return [p for p in problems if p]


def install(runner: Runner, mode: str, addresses: Sequence[str]) -> list[str]:
    problems = install_device(runner, addresses)
    if mode == "nftables":
        problems.append(_error(runner, ["nft", "-f", "-"], nodedns.nft_script(addresses)))
    elif mode in ("iptables", "ipvs"):
        problems += install_iptables(runner, addresses)
    return [p for p in problems if p]


def remove(runner: Runner) -> list[str]:
    problems = []
    if runner(["ip", "link", "show", "dev", DEVICE], None)[0] == 0:
        problems.append(_error(runner, ["ip", "link", "del", DEVICE]))
    for iptables, save, restore in _TOOLS.values():
        status, out, _ = runner([save], None)
        if status != 0:
            continue  # not installed: nothing was put there with it
        present = set(out.splitlines())
        for rule in nodedns.JUMP_RULES:
            while jump_line(rule) in present:
                error = _error(
                    runner, [iptables, "-w", "5", "-t", rule.table, "-D", rule.chain, *rule.args]
                )
                problems.append(error)
                if error:
                    break
                present = set(runner([save], None)[1].splitlines())
        if any(f":{c} " in out for c in (nodedns.RAW_CHAIN, nodedns.NAT_CHAIN)):
            problems.append(
                _error(runner, [restore, "-w", "5", "--noflush"], nodedns.iptables_cleanup())
            )
    status, out, _ = runner(["nft", "list", "tables"], None)
    if status == 0 and f"table inet {nodedns.NFT_TABLE}" in out:
        problems.append(_error(runner, ["nft", "-f", "-"], nodedns.nft_delete()))
    return [p for p in problems if p]


def other_listener(runner: Runner, addresses: Sequence[str], port: int) -> bool:
    """Another process listening on udp ADDRESS:port: a socket that ss -p does not name as
    this process's. A pod's processes live in a PID namespace of their own, so the socket of
    the pod beside this one (a surge rollout of the DaemonSet) shows no process at all."""
    mine = os.getpid()
    for address in addresses:
        status, out, _ = runner(
            ["ss", "-H", "-l", "-u", "-n", "-p", "src", address, "sport", "=", f":{port}"], None
        )
        if status != 0:
            continue
        for line in out.splitlines():
            if line.strip() and mine not in {int(p) for p in re.findall(r"pid=(\d+)", line)}:
                return True
    return False

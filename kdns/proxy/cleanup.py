"""`kdns proxy --cleanup`: removes what any proxy mode installed on this node, whichever mode
ran, as kube-proxy's `--cleanup` runs every mode's CleanupLeftovers; names what it found but
could not remove.

Contract:
- `cleanup_every_mode(runner, ipvs)` looks for, and removes, in this order (each step frees what
  a later one deletes):
  1. IPVS: every virtual service except firewall-mark ones (kube-proxy flushes the table; a
     firewall-mark service is never kdns's), looked for only when `ipvs` says the running
     kernel has IPVS (no module, no service); then the dummy device kube-ipvs0 with its
     addresses.
  2. iptables, in both IP families and in each backend whose tools are installed —
     iptables-nft and iptables-legacy (a node may hold an earlier proxy's rules in either; with
     neither installed, the plain `iptables` tools): the jumps from the built-in chains into
     kube-proxy's chains (iptables and IPVS mode's), then those chains (the fixed ones, every
     per-service KUBE-SVC-/SVL-/EXT-/FW-/SEP- chain, kdns's canary) in one restore per table
     set. Chains and rules that are not kdns's are left byte-identical.
  3. IPVS mode's ipsets (after the iptables rules that match on them).
  4. nftables: `table ip kdns` and `table ip6 kdns`.
  5. the node DNS's device, chains and table (`proxy/nodednsrules.py`).
- Returns one line per kind of object found and still present after its removal was tried
  (naming the backend, family, table and the objects), empty when everything is gone. A tool
  that is not installed (exit 127) means nothing of its kind was installed with it; any other
  failed listing is a line too, since leftovers cannot then be ruled out.
- Every command goes through the `Runner`, so tests can point it at a namespace or a model.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence

from kdns.proxy import iptables as ipt
from kdns.proxy import nftables as nft
from kdns.proxy import nodednsrules
from kdns.proxy.dataplane import CANARY_CHAIN, Runner, jump_line
from kdns.proxy.ipvs import ipset
from kdns.proxy.ipvs import rules as ipvs_rules
from kdns.proxy.ipvs.ipvsadm import parse_ipvsadm_save, service_args
from kdns.proxy.ipvs.kernel import DUMMY_DEVICE
from kdns.proxy.ipvs.state import IpvsParseError

NOT_INSTALLED = 127  # run_command's status for a tool that is not there
IPTABLES_BACKENDS = ("nft", "legacy")
# The chains of kdns's besides iptables mode's (IPVS mode's, the canary), and every jump in.
_OTHER_CHAINS = {
    "filter": (*ipvs_rules.FILTER_CHAINS, CANARY_CHAIN),
    "nat": (*ipvs_rules.NAT_CHAINS, CANARY_CHAIN),
}
_JUMPS = tuple(dict.fromkeys((*ipt.JUMP_RULES, *ipvs_rules.JUMP_RULES)))
_SHOWN = 5  # objects named per line; the rest are counted


def cleanup_every_mode(runner: Runner, ipvs: bool) -> list[str]:
    """Removes every mode's objects; returns one line per kind of leftover (empty: all gone)."""
    problems: list[str] = []
    if ipvs:
        problems += _sweep(runner, "IPVS services", _ipvs_services, _delete_services)
    problems += _sweep(runner, "devices", _dummy_device, _delete_devices)
    for family in (4, 6):
        for tools in _iptables_tools(runner, family):
            problems += _iptables(runner, tools, family)
    problems += _sweep(runner, "ipsets", _ipsets, _destroy_ipsets)
    problems += _sweep(runner, "nftables tables", _nft_tables, _delete_nft_tables)
    problems += nodednsrules.remove(runner)
    return problems


class _Unlisted(Exception):
    """A listing that failed for another reason than a missing tool: the line to report."""


# A listing: the names of kdns's objects of one kind, None when the tool is not installed.
Listing = Callable[[Runner], list[str] | None]
Removal = Callable[[Runner, list[str]], str]  # removes the objects named; the first error


def _sweep(runner: Runner, what: str, listing: Listing, remove: Removal) -> list[str]:
    """Lists, removes what was found, lists again: the line naming what is left, if any."""
    try:
        found = listing(runner)
        if not found:
            return []
        error = remove(runner, found)
        left = listing(runner)
    except _Unlisted as e:
        return [str(e)]
    return [_named(what, left, error)] if left else []


def _named(what: str, names: Sequence[str], error: str) -> str:
    shown = ", ".join(names[:_SHOWN])
    if len(names) > _SHOWN:
        shown += f" and {len(names) - _SHOWN} more"
    return f"{what} still there: {shown}" + (f" ({error})" if error else "")


def _run(runner: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    """The error of a command, "" when it succeeded."""
    status, _, err = runner(argv, stdin)
    if status == 0:
        return ""
    return f"{shlex.join(argv)}: {' '.join(err.split()) or f'exit {status}'}"


def _first_error(runner: Runner, commands: Sequence[Sequence[str]]) -> str:
    """Runs every command (one that fails must not stop the others); the first error."""
    errors = [_run(runner, argv) for argv in commands]
    return next((e for e in errors if e), "")


def _output(runner: Runner, argv: Sequence[str], what: str) -> str | None:
    """A listing command's output; None when its tool is not installed."""
    status, out, err = runner(argv, None)
    if status == NOT_INSTALLED:
        return None
    if status != 0:
        raise _Unlisted(f"cannot list {what}: {shlex.join(argv)}: {' '.join(err.split())}")
    return out


# --- IPVS, kube-ipvs0, ipsets, nftables ----------------------------------------------------------


def _ipvs_services(runner: Runner) -> list[str] | None:
    """Virtual services as ipvsadm spells them ("-t 10.96.0.10:53"); firewall-mark ones are
    left out (`parse_ipvsadm_save` skips them)."""
    out = _output(runner, ["ipvsadm", "-Sn"], "IPVS services")
    if out is None:
        return None
    try:
        state = parse_ipvsadm_save(out)
    except IpvsParseError as e:
        raise _Unlisted(f"cannot read ipvsadm -Sn: {e}") from None
    return [" ".join(service_args(service)) for service in state.sorted_services()]


def _delete_services(runner: Runner, found: list[str]) -> str:
    # One `ipvsadm -R` for all: each line is an ipvsadm command without the program name.
    return _run(runner, ["ipvsadm", "-R"], "".join(f"-D {service}\n" for service in found))


def _dummy_device(runner: Runner) -> list[str] | None:
    present = runner(["ip", "link", "show", "dev", DUMMY_DEVICE], None)[0] == 0
    return [DUMMY_DEVICE] if present else []


def _delete_devices(runner: Runner, found: list[str]) -> str:
    # The device's addresses go with it.
    return _first_error(runner, [["ip", "link", "del", device] for device in found])


def _ipsets(runner: Runner) -> list[str] | None:
    out = _output(runner, ["ipset", "list", "-n"], "ipsets")
    ours = {*ipset.ipset_specs(4), *ipset.ipset_specs(6)}
    return None if out is None else sorted(ours.intersection(out.split()))


def _destroy_ipsets(runner: Runner, found: list[str]) -> str:
    return _first_error(runner, [["ipset", "destroy", name] for name in found])


def _nft_tables(runner: Runner) -> list[str] | None:
    out = _output(runner, ["nft", "list", "tables"], "nftables tables")
    if out is None:
        return None
    listed = {line.strip().removeprefix("table ") for line in out.splitlines()}
    return [table for table in (f"ip {nft.TABLE}", f"ip6 {nft.TABLE}") if table in listed]


def _delete_nft_tables(runner: Runner, found: list[str]) -> str:
    families = [6 if table.startswith("ip6 ") else 4 for table in found]
    return _run(runner, ["nft", "-f", "-"], nft.render_cleanup(families))  # one transaction


# --- iptables ------------------------------------------------------------------------------------


def _iptables_tools(runner: Runner, family: int) -> list[tuple[str, str, str]]:
    """(iptables, iptables-save, iptables-restore) of each backend installed, for `family`."""
    base = "ip6tables" if family == 6 else "iptables"
    found = []
    for backend in IPTABLES_BACKENDS:
        tools = (f"{base}-{backend}", f"{base}-{backend}-save", f"{base}-{backend}-restore")
        if runner([tools[1], "--version"], None)[0] != NOT_INSTALLED:
            found.append(tools)
    if not found and runner([f"{base}-save", "--version"], None)[0] != NOT_INSTALLED:
        found.append((base, f"{base}-save", f"{base}-restore"))  # iptables before 1.8
    return found


def _ours(save: str) -> tuple[list[str], dict[str, list[str]]]:
    """The jump lines and the chains per table of kdns's in `save` (iptables-save output)."""
    present = set(save.splitlines())
    jumps = [jump_line(rule) for rule in _JUMPS if jump_line(rule) in present]
    return jumps, ipt.owned_chains(ipt.saved_chains(save), _OTHER_CHAINS)


def _iptables(runner: Runner, tools: tuple[str, str, str], family: int) -> list[str]:
    iptables, save_tool, restore = tools
    where = f"{iptables} (IPv{family})"
    try:
        save = _output(runner, [save_tool], where) or ""
        jumps, chains = _ours(save)
        if not jumps and not chains:
            return []
        # A built-in chain cannot be rewritten without touching others' rules: each jump is
        # deleted (`-D`), which also lets the chains it names go.
        error = _first_error(
            runner,
            [
                [iptables, "-w", "5", "-t", rule.table, "-D", rule.chain, *rule.args]
                for rule in _JUMPS
                if jump_line(rule) in jumps
            ],
        )
        if chains:
            text = ipt.render_cleanup(ipt.saved_chains(save), _OTHER_CHAINS)
            failed = _run(runner, [restore, "-w", "5", "--noflush"], text)
            error = error or failed
        jumps, chains = _ours(_output(runner, [save_tool], where) or "")
    except _Unlisted as e:
        return [str(e)]
    problems = [_named(f"{where}: jumps", jumps, error)] if jumps else []
    for table, names in chains.items():
        problems.append(_named(f"{where}: {table} chains", names, error))
    return problems

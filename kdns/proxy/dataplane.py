"""The kernel side of each proxy mode: render, apply, verify and clean up, with the real tools.

Contract:
- One class per mode (`IptablesDataplane`, `NftablesDataplane`, `IpvsDataplane`) with the same
  surface, called by the sync engine from a worker thread (every method blocks on a command):
  - `sync(routes, changed)`: `changed` None is a full sync (the kernel's state is read back
    first, so stale objects of an earlier run are found); a set of Service keys is a partial
    sync carrying only those Services' objects. Returns an `Applied` (rules written, size).
    A failed apply raises `ApplyError`; the data plane then forgets its last state, so the next
    call must be (and the engine makes it) a full sync.
  - `intact()`: the canary. False when someone removed or flushed what kdns installed (a
    firewall reload, `iptables -F`, `nft flush ruleset`); the engine then syncs in full.
  - `render(routes)`: what a full sync would apply, for `kdns proxy --render`; changes nothing.
  - `set_service_cidrs(cidrs)`: the cluster's Service CIDRs (every ServiceCIDR object), used
    from the next full sync on; the caller makes that sync a full one. Only nftables mode
    uses them (kube-proxy's nftables mode drops traffic to unallocated ClusterIPs, KEP-3866;
    its iptables and IPVS modes have no such rule).
  IPVS mode also has `take_over_dns(addresses)`: the node DNS answers port 53 of those
  addresses, so a ClusterIP among them keeps no virtual service for it from the next sync on
  (`ipvs/rules.py`; () gives them back). The caller makes that sync happen.
  Removing what a mode installed is not a data plane's job: `kdns proxy --cleanup` removes
  every mode's objects at once (`proxy/cleanup.py`).
- Every write is one transaction per family: `iptables-restore --noflush` (the jumps from the
  built-in chains go in the same input, inserted only where missing), an nft script (through one
  libnftables context kept across syncs, `proxy/libnftables.py`, else `nft -f -`), or
  for IPVS a few `ipvsadm -R` / `ip -batch` runs around one `ipset restore` and one
  `iptables-restore`.
- `Node` holds what the node contributes (its addresses, pod CIDRs, flags), read once at start;
  the addresses on kube-ipvs0 and on the node DNS's device are the proxy's own, not the node's.
- After a full sync the data plane gives its transient memory back: a fresh libnftables
  context, then `heap.trim()` (docs/benchmarks.md, Proxy › Memory). What a sync replaces is
  freed a step at a time rather than dropped whole (`nftables.release` after a full sync;
  `iptables.release` and `release_entries` after every sync, which creates all its strings
  anew): at 5,000 Services a whole drop is one cascade of frees holding the GIL for
  milliseconds, while `kdns proxy --dns` answers from another thread.
- All commands go through a `Runner` (argv, stdin) → (status, stdout, stderr), so the tests can
  point the data plane at a namespace; nothing here touches the host unless told to.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kdns.proxy import heap, nodedns
from kdns.proxy import iptables as ipt
from kdns.proxy import nftables as nft
from kdns.proxy.ipvs import diff as ipvs_diff
from kdns.proxy.ipvs import ipset, ipvsadm
from kdns.proxy.ipvs import kernel as ipvs_kernel
from kdns.proxy.ipvs import rules as ipvs_rules
from kdns.proxy.ipvs.state import IpvsState
from kdns.proxy.libnftables import Libnftables
from kdns.proxy.routes import JumpRule, ServiceKey, ServicePortRoute, family_of

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str], str | None], tuple[int, str, str]]

# A full iptables-restore at 10k Services takes minutes with Debian 12's iptables-nft 1.8.9
# (superlinear in userspace; README): long, but killing it would fail every full sync forever.
COMMAND_TIMEOUT = 900.0


def run_command(argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
    """The default Runner: the command on this host (or in the namespace kdns runs in)."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    except OSError as e:
        return 126, "", f"{argv[0]}: {e.strerror}"
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]}: no answer in {COMMAND_TIMEOUT:.0f} s"
    return done.returncode, done.stdout, done.stderr


class ApplyError(Exception):
    """A command of a sync failed; the message names the command and the kernel's complaint."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one sync wrote."""

    rules: int  # rules, map elements or ipvsadm commands written
    size: int  # bytes of transaction input


@dataclass(frozen=True, slots=True)
class Node:
    """The node's side of the proxy config, resolved to addresses per family."""

    families: tuple[int, ...] = (4,)
    cluster_cidrs: tuple[str, ...] = ()  # --cluster-cidr, at most one per family
    masquerade_all: bool = False
    local_ips: tuple[str, ...] = ()  # the node's own addresses (not loopback)
    node_ips: tuple[str, ...] = ()  # the primary address per family
    nodeport_ips: tuple[str, ...] | None = None  # --nodeport-addresses resolved; None: all

    def cluster_cidr(self, family: int) -> str | None:
        return next((c for c in self.cluster_cidrs if family_of(c) == family), None)

    def node_ip(self, family: int) -> str | None:
        return next((ip for ip in self.node_ips if family_of(ip) == family), None)

    def nodeport_ips_of(self, family: int) -> tuple[str, ...]:
        if self.nodeport_ips is None:
            return ()
        return tuple(ip for ip in self.nodeport_ips if family_of(ip) == family)

    def family_settings(self, family: int) -> dict[str, Any]:
        """The settings the iptables and nftables renderer configs share, for one family."""
        return {
            "family": family,
            "cluster_cidr": self.cluster_cidr(family),
            "masquerade_all": self.masquerade_all,
            "node_ip": self.node_ip(family),
            "nodeport_ips": self.nodeport_ips_of(family),
        }


def local_addresses(ip_json: str) -> list[tuple[str, str]]:
    """(interface, address) of every address in `ip -j addr show` output."""
    return [
        (link.get("ifname", ""), info["local"])
        for link in json.loads(ip_json or "[]")
        for info in link.get("addr_info", ())
        if "local" in info
    ]


def node_from_host(
    runner: Runner,
    families: Sequence[int],
    cluster_cidrs: Sequence[str],
    nodeport_cidrs: Sequence[str],
    masquerade_all: bool,
) -> Node:
    """`Node` from this host's addresses (`ip -j addr show`) and the flags.

    The node IP of a family is its first global-scope address outside kube-ipvs0 (and the node
    DNS's device, which may hold a taken-over ClusterIP), as kube-proxy falls back to when the
    Node object names none. --nodeport-addresses CIDRs select the local
    addresses inside them; an address given that is not local selects nothing (kube-proxy)."""
    status, out, err = runner(["ip", "-j", "addr", "show"], None)
    if status != 0:
        raise ApplyError(f"ip -j addr show: {err.strip()}")
    addresses = [
        (ifname, ip)
        for ifname, ip in local_addresses(out)
        if ifname not in (ipvs_kernel.DUMMY_DEVICE, nodedns.DEVICE)
        and not ipaddress.ip_address(ip).is_loopback
        and not ipaddress.ip_address(ip).is_link_local
    ]
    local_ips = tuple(dict.fromkeys(ip for _, ip in addresses))
    node_ips = []
    for family in families:
        first = next((ip for ip in local_ips if family_of(ip) == family), None)
        if first:
            node_ips.append(first)
    nodeport_ips: tuple[str, ...] | None = None
    if nodeport_cidrs:
        nets = [ipaddress.ip_network(c, strict=False) for c in nodeport_cidrs]
        nodeport_ips = tuple(
            ip
            for ip in local_ips
            if any(ipaddress.ip_address(ip) in n for n in nets if n.version == family_of(ip))
        )
    return Node(
        families=tuple(families),
        cluster_cidrs=tuple(cluster_cidrs),
        masquerade_all=masquerade_all,
        local_ips=local_ips,
        node_ips=tuple(node_ips),
        nodeport_ips=nodeport_ips,
    )


def _check(runner: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    status, out, err = runner(argv, stdin)
    if status != 0:
        raise ApplyError(f"{shlex.join(argv)}: {_complaint(err, stdin)}")
    return out


def _complaint(err: str, stdin: str | None) -> str:
    """The tool's error, with the input line it names (iptables-restore: "line N failed")."""
    text = " ".join(err.strip().split("\n")[-3:]) or "failed"
    match = re.search(r"line:? (\d+)", err)
    if match and stdin:
        lines = stdin.split("\n")
        number = int(match.group(1))
        if 0 < number <= len(lines):
            text += f" (input line {number}: {lines[number - 1][:200]})"
    return text


# --- iptables ----------------------------------------------------------------------------------

_RESTORE = {4: "iptables-restore", 6: "ip6tables-restore"}
_SAVE = {4: "iptables-save", 6: "ip6tables-save"}
CANARY_CHAIN = "KDNS-CANARY"  # kube-proxy's KUBE-PROXY-CANARY, in every table kdns writes
_CANARY_TABLES = ("filter", "nat")  # kube-proxy also uses mangle; kdns writes nothing there


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def jump_line(rule: JumpRule, verb: str = "-A") -> str:
    """The jump as iptables-save prints it (verb -A) or as restore input inserting it."""
    head = f"{verb} {rule.chain}" if verb == "-A" else f"-I {rule.chain} 1"
    return " ".join([head, *(_quote(a) for a in rule.args)])


def _insert_before_commit(text: str, added: Mapping[str, Sequence[str]]) -> str:
    """Restore input with each table's `added` lines at the end of its section (a section is
    created after the others for a table the input lacks), in one copy of `text`: it is
    megabytes in a full sync, and each copy holds the GIL."""
    cuts: list[tuple[int, str]] = []  # (where, what goes there), in the order of `added`
    for table, lines in added.items():
        if not lines:
            continue
        start = text.find(f"*{table}\n")
        if start < 0:
            cuts.append((len(text), "\n".join([f"*{table}", *lines, "COMMIT", ""])))
        else:
            cuts.append((text.find("\nCOMMIT\n", start) + 1, "\n".join(lines) + "\n"))
    pieces, done = [], 0
    for at, insert in sorted(cuts, key=lambda cut: cut[0]):  # stable: `added` order at ties
        pieces += [text[done:at], insert]
        done = at
    return "".join([*pieces, text[done:]])


class IptablesDataplane:
    """kube-proxy's iptables mode: one `iptables-restore --noflush` per family and sync."""

    mode = "iptables"
    needs_all_routes = True  # a partial render rewrites chains that list every Service
    pending_deletes = False  # nothing is left for a later sync to delete

    def __init__(self, node: Node, runner: Runner = run_command) -> None:
        self.runner = runner
        self.families = node.families
        self.configs = {f: ipt.IptablesConfig(**node.family_settings(f)) for f in node.families}
        self._last: dict[int, ipt.Rendering] = {}
        self._fixed: dict[int, ipt.FixedChains] = {}  # the fixed chains' rules, as applied
        # What our chains hold after the last successful restore: the canary compares.
        self._expected: dict[int, dict[tuple[str, str], int]] = {}

    def sync(
        self, routes: Sequence[ServicePortRoute], changed: Collection[ServiceKey] | None
    ) -> Applied:
        rules = size = 0
        full = False
        for family in self.families:
            full = full or changed is None or family not in self._last
            written = self._sync_family(routes, changed, family)
            rules += written.rules
            size += written.size
        if full:
            heap.trim()  # the full restore input and iptables-save output are garbage now
        return Applied(rules, size)

    def _sync_family(
        self,
        routes: Sequence[ServicePortRoute],
        changed: Collection[ServiceKey] | None,
        family: int,
    ) -> Applied:
        config = self.configs[family]
        last = self._last.get(family)
        try:
            if changed is None or last is None:
                save = _check(self.runner, [_SAVE[family]])
                existing = ipt.saved_chains(save).get("nat", frozenset())
                rendering = ipt.render_full(routes, config, existing)
                text = with_jumps(rendering.text, save, ipt.JUMP_RULES)
                expected: dict[tuple[str, str], int] = {}
            else:
                rendering = ipt.render_partial(routes, changed, config, last.active_chains)
                text = ipt.omit_unchanged(rendering.text, self._fixed[family])
                expected = dict(self._expected[family])
            _check(self.runner, [_RESTORE[family], "-w", "5", "--noflush"], text)
        except ApplyError:
            self._last.pop(family, None)
            self._expected.pop(family, None)
            self._fixed.pop(family, None)
            raise
        written = ipt.chain_rules(text)
        # The `-A` lines of the input (`text.count("\n-A ")` is one 4 ms call at 5k Services).
        applied = sum(map(len, written.values()))
        expected.update((key, len(rules)) for key, rules in written.items())
        for chain in rendering.deleted_chains:
            expected.pop(("nat", chain), None)
        # Built-in chains hold others' rules too: only our jumps are checked, not counts.
        for key in [k for k in expected if k[1] in _BUILTIN]:
            expected.pop(key)
        # After a partial sync `expected` is a copy of the last one, sharing all its keys.
        replaced = self._expected.get(family) if changed is None or last is None else None
        self._expected[family] = expected
        # The next render needs the chains, not the text (megabytes in a full sync).
        self._last[family] = replace(rendering, text="")
        # What the kernel's fixed chains hold now (the omitted ones kept theirs).
        fixed = {} if changed is None or last is None else dict(self._fixed[family])
        fixed.update(ipt.fixed_chain_rules(written))
        self._fixed[family] = fixed
        # What this sync replaced, and its parse of the input (every rule at 5,000 Services),
        # freed a step at a time rather than in one cascade when this returns: no render
        # shares their strings, and the node DNS answers from another thread meanwhile.
        ipt.release_entries(written)
        if replaced is not None:
            ipt.release_entries(replaced)
        if last is not None:
            ipt.release(last)
        return Applied(applied, len(text))

    def intact(self) -> bool:
        for family in self.families:
            expected = self._expected.get(family)
            if expected is None:
                return False
            status, save, _ = self.runner([_SAVE[family]], None)
            if status != 0:
                return False
            chains = ipt.chain_rules(save)
            for table in _CANARY_TABLES:
                if (table, CANARY_CHAIN) not in chains:
                    return False
            for key, n in expected.items():
                found = len(chains[key]) if key in chains else None
                if found != n:
                    log.warning("iptables: chain %s/%s has %s rules, expected %d", *key, found, n)
                    return False
            present = _jump_lines(save)
            if any(jump_line(r) not in present for r in ipt.JUMP_RULES):
                log.warning("iptables: a jump into kdns's chains is missing")
                return False
        return True

    def set_service_cidrs(self, cidrs: Sequence[str]) -> None:
        """kube-proxy's iptables mode has no rule for unallocated Service-CIDR addresses: traffic
        to one is routed as any other (usually into a timeout)."""

    def render(self, routes: Sequence[ServicePortRoute]) -> str:
        """The restore input a full sync applies to a kernel holding none of kdns's rules."""
        return "".join(
            f"# {_RESTORE[f]} -w 5 --noflush\n"
            + with_jumps(ipt.render_full(routes, self.configs[f]).text, "", ipt.JUMP_RULES)
            for f in self.families
        )


def with_jumps(text: str, save: str, jumps: Iterable[JumpRule]) -> str:
    """Restore input that also inserts the jumps `save` (iptables-save output) lacks, and
    declares the canary chains (which the canary check looks for)."""
    present = _jump_lines(save)
    jumps = tuple(jumps)
    added: dict[str, list[str]] = {}
    for table in ("filter", "nat"):
        # Each is inserted at position 1 in list order, so the last ends up first: kube-proxy's
        # prepend order.
        added[table] = [
            jump_line(r, "-I") for r in jumps if r.table == table and jump_line(r) not in present
        ]
    for table in _CANARY_TABLES:
        added.setdefault(table, []).append(f":{CANARY_CHAIN} - [0:0]")
    return _insert_before_commit(text, added)


_BUILTIN = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
_BUILTIN_APPENDS = tuple(f"-A {chain} " for chain in sorted(_BUILTIN))


def _jump_lines(save: str) -> set[str]:
    """The rules of the built-in chains in `save` (iptables-save output), where the jumps
    into ours are: a set of every line at 5,000 Services would be 100,000 strings, split in
    one call and freed in one cascade (`ipt.split_lines`)."""
    return {line for line in ipt.split_lines(save) if line.startswith(_BUILTIN_APPENDS)}


# --- nftables ----------------------------------------------------------------------------------


def _kernel_before(major: int, minor: int) -> bool:
    release = os.uname().release
    match = re.match(r"(\d+)\.(\d+)", release)
    return bool(match) and (int(match.group(1)), int(match.group(2))) < (major, minor)


class NftablesDataplane:
    """kube-proxy's nftables mode in `table ip kdns` / `table ip6 kdns`: one `nft -f` per sync.

    With the default runner the transactions go through one libnftables context kept across
    syncs (`kdns.proxy.libnftables`: no process start and library load per sync), falling back
    to an `nft -f -` process when the library is missing; a runner given by the caller (tests,
    the benchmark) runs every command itself.
    """

    mode = "nftables"
    needs_all_routes = False  # a partial render reads only the changed Services' routes

    def __init__(
        self,
        node: Node,
        runner: Runner = run_command,
        service_cidrs: Sequence[str] = (),
        libnftables: bool = True,
    ) -> None:
        self.runner = runner
        # Applies the transactions; reads (listings) stay with `runner`.
        self.apply: Runner = runner
        if libnftables and runner is run_command:
            context = Libnftables.load(runner)
            if context is not None:
                log.info("nftables: transactions go through one libnftables context")
                self.apply = context
        self.families = node.families
        defer = _kernel_before(6, 2)
        self.configs = {
            f: nft.NftablesConfig(
                **node.family_settings(f),
                service_cidrs=tuple(c for c in service_cidrs if family_of(c) == f),
                defer_chain_deletes=defer,
            )
            for f in node.families
        }
        self._last: dict[int, nft.Rendering] = {}
        # Rules of the chains only full renders write (base and fixed chains): the canary.
        self._fixed: dict[int, dict[str, int]] = {}
        self.pending_deletes = False  # a deferred chain delete wants an idle sync ≥ 1 s later

    def sync(
        self, routes: Sequence[ServicePortRoute], changed: Collection[ServiceKey] | None
    ) -> Applied:
        rules = size = 0
        pending = False
        full = False
        for family in self.families:
            full = full or changed is None or family not in self._last
            written = self._sync_family(routes, changed, family)
            pending = pending or bool(self._last[family].stale_chains)
            rules += written.rules
            size += written.size
        self.pending_deletes = pending
        if full:
            # The full transaction's memory (docs/benchmarks.md, Proxy: 459 MiB at 10k
            # Services, ~100 MiB live) is garbage now: the context's leftovers go with it, and
            # the freed heap back to the kernel.
            if isinstance(self.apply, Libnftables):
                self.apply.renew()
            heap.trim()
        return Applied(rules, size)

    def _sync_family(
        self,
        routes: Sequence[ServicePortRoute],
        changed: Collection[ServiceKey] | None,
        family: int,
    ) -> Applied:
        config = self.configs[family]
        last = self._last.get(family)
        try:
            if changed is None or last is None:
                existing = self._objects(config) if last is None else last.objects
                rendering = nft.render_full(routes, config, existing)
            else:
                rendering = nft.render_partial(routes, changed, last, config)
            if rendering.text:
                _check(self.apply, ["nft", "-f", "-"], rendering.text)
        except ApplyError:
            self._last.pop(family, None)
            raise
        if not rendering.partial:
            self._fixed[family] = _fixed_rule_counts(rendering.text, config)
        written = Applied(rendering.rules_written + rendering.elements_written, len(rendering.text))
        # The next render needs the state, not the text (10 MB for a full sync at 10k).
        self._last[family] = replace(rendering, text="")
        if last is not None and not rendering.partial:
            # A full render shares nothing with the last one: freed whole, that is one cascade
            # of deallocations holding the GIL, so it is freed piecewise. After a partial one
            # the last state's entries are mostly the new one's too: dropping it frees little.
            nft.release(last)
        return written

    def _objects(self, config: nft.NftablesConfig) -> nft.TableObjects:
        """What the table holds after a restart: its chains and sets, not its rules. `nft -j
        list table` of a 10k-Service table is a 16 MB listing that nft 1.0.6 needs ~400 MiB to
        print (docs/benchmarks.md, Proxy); the chains and the sets without their elements take
        it ~25 MiB."""
        ip = config.nft_family
        status, chains, _ = self.runner(["nft", "-j", "list", "chains", ip], None)
        if status != 0:
            return nft.TableObjects()  # nothing of ours to clean up that nft can list
        status, sets, _ = self.runner(["nft", "-j", "-t", "list", "sets", ip], None)
        return nft.table_objects(chains, sets) if status == 0 else nft.table_objects(chains)

    def intact(self) -> bool:
        """Cheap enough for every sync period at 10k Services (a full `list table` takes 10 s
        there): the chains by name, the rules of the dispatch chains, the maps' element counts.
        A per-service chain emptied by hand is not noticed until the next full sync."""
        for family in self.families:
            last = self._last.get(family)
            if last is None:
                return False
            if not self._intact(self.configs[family], last, self._fixed.get(family, {})):
                return False
        return True

    def _intact(
        self, config: nft.NftablesConfig, last: nft.Rendering, fixed: dict[str, int]
    ) -> bool:
        ip = config.nft_family
        status, out, _ = self.runner(["nft", "-j", "list", "chains", ip], None)
        if status != 0:
            return False
        chains = {
            item["chain"]["name"]
            for item in json.loads(out).get("nftables", ())
            if "chain" in item and item["chain"].get("table") == nft.TABLE
        }
        missing = (set(last.chain_rules()) | set(fixed)) - chains
        if missing:
            log.warning(
                "nftables: %d of kdns's chains are gone (%s, …)", len(missing), min(missing)
            )
            return False
        for chain in _CANARY_CHAINS:
            status, out, _ = self.runner(["nft", "-j", "list", "chain", ip, nft.TABLE, chain], None)
            rules = sum(1 for item in json.loads(out or "{}").get("nftables", ()) if "rule" in item)
            if status != 0 or rules != fixed.get(chain):
                log.warning(
                    "nftables: chain %s has %s rules, expected %s", chain, rules, fixed.get(chain)
                )
                return False
        status, out, _ = self.runner(["nft", "-j", "list", "maps", ip], None)
        if status != 0:
            return False
        elements = {
            item["map"]["name"]: len(item["map"].get("elem", ()))
            for item in json.loads(out).get("nftables", ())
            if "map" in item and item["map"].get("table") == nft.TABLE
        }
        for name, members in last.elements().items():
            if name in elements and elements[name] != len(members):
                log.warning(
                    "nftables: map %s has %d elements, expected %d",
                    name,
                    elements[name],
                    len(members),
                )
                return False
        return True

    def set_service_cidrs(self, cidrs: Sequence[str]) -> None:
        """Each family's `cluster-ips-check` drops traffic to these CIDRs that no ClusterIP
        matched (kube-proxy nftables mode, KEP-3866); written by the next full sync."""
        self.configs = {
            f: replace(config, service_cidrs=tuple(c for c in cidrs if family_of(c) == f))
            for f, config in self.configs.items()
        }

    def render(self, routes: Sequence[ServicePortRoute]) -> str:
        return "".join(
            f"# nft -f -\n{nft.render_full(routes, self.configs[f]).text}" for f in self.families
        )


# The chains every packet to a Service passes through: the canary counts their rules.
_CANARY_CHAINS = (nft.NAT_PREROUTING, nft.NAT_OUTPUT, nft.SERVICES, nft.NAT_POSTROUTING)


def _fixed_rule_counts(text: str, config: nft.NftablesConfig) -> dict[str, int]:
    """Rules per base and fixed chain in a full render's transaction."""
    names = [name for name, *_ in nft.BASE_CHAINS] + list(nft.FIXED_CHAINS)
    counts = dict.fromkeys(names, 0)
    prefix = f"add rule {config.table} "
    for line in text.splitlines():
        if line.startswith(prefix):
            chain = line[len(prefix) :].split(" ", 1)[0]
            if chain in counts:
                counts[chain] += 1
    return counts


# --- IPVS --------------------------------------------------------------------------------------


def ipvs_supported(read: Callable[[str], str | None]) -> bool:
    """Whether this kernel has IPVS: /proc/net/ip_vs, a loaded module, or one to load."""
    if read("/proc/net/ip_vs") is not None:
        return True
    texts = [read("/proc/modules") or ""]
    release = os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        texts.append(read(f"/lib/modules/{release}/{name}") or "")
    return ipvs_kernel.ipvs_available("\n".join(texts))


def read_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


class IpvsDataplane:
    """kube-proxy's IPVS mode: diff `ipvsadm -Sn` against the render, then ipset and iptables."""

    mode = "ipvs"
    needs_all_routes = True  # a partial render rewrites chains that list every Service
    pending_deletes = False  # nothing is left for a later sync to delete

    def __init__(self, node: Node, runner: Runner = run_command, scheduler: str = "rr") -> None:
        self.runner = runner
        self.families = node.families
        self.config = ipvs_rules.IpvsConfig(
            families=node.families,
            scheduler=scheduler,
            local_ips=node.local_ips,
            nodeport_ips=node.nodeport_ips,
            node_ips=node.node_ips,
            cluster_cidrs=node.cluster_cidrs,
            masquerade_all=node.masquerade_all,
        )
        self._synced = False

    def take_over_dns(self, addresses: Sequence[str]) -> None:
        """The node DNS answers port 53 of `addresses` (module docstring). One reference swap:
        a sync running in the worker thread reads the config once, the old or the new."""
        self.config = replace(self.config, node_dns=tuple(addresses))

    @property
    def node_dns(self) -> tuple[str, ...]:
        return self.config.node_dns

    def _current(self) -> tuple[IpvsState, dict[str, frozenset[str]]]:
        save = _check(self.runner, ["ipvsadm", "-Sn"])
        status, addrs, _ = self.runner(
            ["ip", "-o", "addr", "show", "dev", ipvs_kernel.DUMMY_DEVICE], None
        )
        addresses = ipvs_kernel.parse_ip_addr_show(addrs) if status == 0 else frozenset()
        state = ipvsadm.parse_ipvsadm_save(save, addresses, device=status == 0)
        status, sets, _ = self.runner(["ipset", "save"], None)
        return state, ipset.parse_ipset_save(sets) if status == 0 else {}

    def sync(
        self, routes: Sequence[ServicePortRoute], changed: Collection[ServiceKey] | None
    ) -> Applied:
        # IPVS state is diffed, not rewritten: every sync reads the kernel and writes only the
        # difference, so a partial sync is a full one that happens to write little.
        config = self.config  # once: take_over_dns may swap it meanwhile
        try:
            rendering = ipvs_rules.render(routes, config)
            state, sets = self._current()
            plan = ipvs_diff.diff(state, rendering.state, config)
            size = rules = 0
            for argv, stdin in ipvs_diff.batch_commands(plan.setup):
                _check(self.runner, argv, stdin)
                size += len(stdin)
            for family in self.families:
                text = ipset.render_ipset_restore(family, rendering.ipsets[family], sets)
                _check(self.runner, ["ipset", "restore", "-exist"], text)
                save = _check(self.runner, [_SAVE[family]])
                restore = with_jumps(rendering.iptables[family], save, ipvs_rules.JUMP_RULES)
                _check(self.runner, [_RESTORE[family], "-w", "5", "--noflush"], restore)
                size += len(text) + len(restore)
            for argv, stdin in ipvs_diff.batch_commands(plan.cleanup):
                _check(self.runner, argv, stdin)
                size += len(stdin)
            rules = len(plan.commands)
        except ApplyError:
            self._synced = False
            raise
        self._synced = True
        return Applied(rules, size)

    def intact(self) -> bool:
        return self._synced

    def set_service_cidrs(self, cidrs: Sequence[str]) -> None:
        """kube-proxy's IPVS mode has no rule for unallocated Service-CIDR addresses: traffic
        to one is routed as any other (usually into a timeout)."""

    def render(self, routes: Sequence[ServicePortRoute]) -> str:
        config = self.config
        rendering = ipvs_rules.render(routes, config)
        plan = ipvs_diff.diff(IpvsState.of(()), rendering.state, config)
        lines = ["# ipvsadm / ip commands from an empty table:"]
        lines += [shlex.join(argv) for argv in plan.commands]
        for family in self.families:
            lines.append(f"# ipset restore (IPv{family}):")
            lines.append(ipset.render_ipset_restore(family, rendering.ipsets[family], {}))
            lines.append(f"# {_RESTORE[family]} --noflush:")
            lines.append(rendering.iptables[family])
        return "\n".join(lines)


Dataplane = IptablesDataplane | NftablesDataplane | IpvsDataplane

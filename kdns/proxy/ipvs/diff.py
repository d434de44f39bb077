"""The commands that turn one IPVS state into another, and their packing into batches.

Contract:
- `diff(current, desired, config)` returns an `IpvsPlan`: argv lists for `ipvsadm` and `ip` that
  turn `current` into `desired`, in kube-proxy's order — `setup` (dummy device, added or edited
  services, added / edited / deleted real servers, address binds) before the ipset and iptables
  restores, `cleanup` (address unbinds, stale services) after them. A service or real server
  that is already right gets no command at all, so its established connections survive; a
  diff of a state against itself is empty. Only the families in `config.families` are managed,
  and services inside `config.exclude_cidrs` are never deleted (kube-proxy
  `--ipvs-exclude-cidrs`).
- `batch_commands` packs a command list into `ipvsadm -R` and `ip -batch -` runs, so a sync of
  10k services is a handful of processes.
- Deliberate difference from kube-proxy: a stale real server is deleted at once, not drained at
  weight 0 first (no GracefulTerminationManager: with `expire_nodest_conn=1` its connections end
  on their next packet).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kdns.proxy.ipvs.ipvsadm import real_args, real_settings, service_args, service_settings
from kdns.proxy.ipvs.kernel import DUMMY_DEVICE, address_argv
from kdns.proxy.ipvs.rules import IpvsConfig
from kdns.proxy.ipvs.state import IpvsState, RealServer, ip_sort_key, service_sort_key
from kdns.proxy.routes import family_of

_DEFAULTS = IpvsConfig()  # IPv4 only, as `render`'s default


@dataclass(frozen=True, slots=True)
class IpvsPlan:
    """The commands of one sync, in two phases around the ipset and iptables restores."""

    setup: list[list[str]]  # before: device, services, real servers, address binds
    cleanup: list[list[str]]  # after: address unbinds, stale services

    @property
    def commands(self) -> list[list[str]]:
        return [*self.setup, *self.cleanup]

    def __bool__(self) -> bool:
        return bool(self.setup or self.cleanup)


def diff(current: IpvsState, desired: IpvsState, config: IpvsConfig = _DEFAULTS) -> IpvsPlan:
    """The commands that turn `current` into `desired` (proxier.go syncService, syncEndpoint,
    cleanLegacyService and the dummy-device address sync, in that order).

    Within one service, new real servers are added before stale ones are deleted, so a
    service being moved to new endpoints never has none in between.
    """
    families = set(config.families)
    setup: list[list[str]] = []
    cleanup: list[list[str]] = []
    if not current.device:
        setup.append(["ip", "link", "add", DUMMY_DEVICE, "type", "dummy"])
    for key in sorted(desired.services, key=service_sort_key):
        want = desired.services[key]
        have = current.services.get(key)
        svc = service_args(want)
        if have is None:
            setup.append(["ipvsadm", "-A", *svc, *service_settings(want)])
            have_reals: dict[tuple[str, int], RealServer] = {}
        else:
            if not want.same_settings(have):
                setup.append(["ipvsadm", "-E", *svc, *service_settings(want)])
            have_reals = {r.key: r for r in have.reals}
        want_keys = set()
        for real in want.reals:
            want_keys.add(real.key)
            old = have_reals.get(real.key)
            if old is None:
                setup.append(["ipvsadm", "-a", *svc, *real_args(real), *real_settings(real)])
            elif old != real:
                # e.g. weight 0 left by a graceful delete, or another forwarding method.
                setup.append(["ipvsadm", "-e", *svc, *real_args(real), *real_settings(real)])
        for real in have_reals.values():
            if real.key not in want_keys:
                setup.append(["ipvsadm", "-d", *svc, *real_args(real)])
    for ip in sorted(desired.addresses - current.addresses, key=ip_sort_key):
        setup.append(address_argv("add", ip))
    # The dummy device is ours: any address of a managed family that is not wanted goes.
    stale_addresses = current.addresses - desired.addresses
    for ip in sorted(stale_addresses, key=ip_sort_key):
        if family_of(ip) in families:
            cleanup.append(address_argv("del", ip))
    # cleanLegacyService: every service of a managed family that no route wants, except those
    # inside --ipvs-exclude-cidrs (other owners' services, e.g. keepalived's).
    for key in sorted(current.services, key=service_sort_key):
        service = current.services[key]
        if key in desired.services or service.family not in families:
            continue
        if not config.excluded(service.ip):
            cleanup.append(["ipvsadm", "-D", *service_args(service)])
    return IpvsPlan(setup, cleanup)


def batch_commands(commands: Iterable[Sequence[str]]) -> list[tuple[list[str], str]]:
    """Consecutive ipvsadm and ip commands packed into `ipvsadm -R` and `ip -batch -` runs:
    (argv, stdin) pairs, to run in order. The order of the commands is kept."""
    runs: list[tuple[list[str], list[str]]] = []
    for argv in commands:
        tool = argv[0]
        if tool == "ipvsadm":
            batch_argv = ["ipvsadm", "-R"]
        elif tool == "ip":
            batch_argv = ["ip", "-batch", "-"]
        else:
            raise ValueError(f"not an ipvsadm or ip command: {shlex.join(argv)}")
        if not runs or runs[-1][0] != batch_argv:
            runs.append((batch_argv, []))
        runs[-1][1].append(shlex.join(argv[1:]))
    return [(argv, "".join(f"{line}\n" for line in lines)) for argv, lines in runs]

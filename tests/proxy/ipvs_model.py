"""A model of the kernel's IPVS table and kube-ipvs0, driven by ipvsadm and ip argv lists: the
test double for a kernel without IPVS (this one), used by the IPVS tests and the benchmark.

`IpvsModel` applies those argv lists (or the batches) to an in-memory kernel exactly as ipvsadm
and ip would — defaults, port rules and errors included (`IpvsCommandError`: adding a service
that exists, deleting one that does not, …) — and prints itself as `ipvsadm -Sn`.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from kdns.proxy.ipvs.ipvsadm import UsageError, format_save, parse_command
from kdns.proxy.ipvs.kernel import DUMMY_DEVICE
from kdns.proxy.ipvs.state import SCHEDULERS, IpvsState, RealServer, VirtualKey, VirtualService
from kdns.proxy.routes import family_of


class IpvsCommandError(Exception):
    """A command the model rejects as the real tool would: message and exit status."""

    def __init__(self, argv: Sequence[str], message: str, status: int) -> None:
        super().__init__(f"{shlex.join(argv)}: {message} (exit {status})")
        self.argv = tuple(argv)
        self.message = message
        self.status = status


_EINVAL = "Invalid operation.  Possibly wrong module version, address not unicast, ..."


class IpvsModel:
    """An in-memory IPVS table and kube-ipvs0 that `ipvsadm` and `ip` argv lists act on.

    `apply` does what the tool would do, or raises `IpvsCommandError` with its message and
    exit status and changes nothing: ipvsadm usage errors exit 2, kernel errors 255 (adding a
    service that exists, deleting one or a destination that does not, an unknown scheduler).
    Batches (`ipvsadm -R`, `ip -batch -`) stop at the first failing line, as `ip -batch`
    does; the real `ipvsadm -R` goes on after a kernel error and exits with the last line's
    status, so a sync must re-read `ipvsadm -Sn` after a batch rather than trust that status.
    """

    def __init__(self, state: IpvsState | None = None) -> None:
        state = state or IpvsState(device=False)
        self._services: dict[VirtualKey, VirtualService] = {
            key: replace(service, reals=()) for key, service in state.services.items()
        }
        self._reals: dict[VirtualKey, dict[tuple[str, int], RealServer]] = {
            key: {r.key: r for r in service.reals} for key, service in state.services.items()
        }
        self._device = state.device
        self._addresses: dict[str, int] = {ip: 128 if ":" in ip else 32 for ip in state.addresses}
        self.applied = 0  # commands applied, batch lines counted one by one

    @property
    def state(self) -> IpvsState:
        services = {
            key: replace(service, reals=tuple(self._reals[key].values()))
            for key, service in self._services.items()
        }
        return IpvsState(services, frozenset(self._addresses), self._device)

    def save(self) -> str:
        """`ipvsadm -Sn`."""
        return format_save(self.state)

    def apply_all(self, commands: Iterable[Sequence[str]]) -> None:
        for argv in commands:
            self.apply(argv)

    def apply(self, argv: Sequence[str], stdin: str | None = None) -> None:
        argv = list(argv)
        if not argv:
            raise ValueError("empty command")
        if argv[0] == "ipvsadm":
            if argv[1:] in (["-R"], ["--restore"]):
                for line in self._batch_lines(argv, stdin):
                    self.apply(["ipvsadm", *line])
                return
            self._ipvsadm(argv)
        elif argv[0] == "ip":
            if argv[1:] == ["-batch", "-"]:
                for line in self._batch_lines(argv, stdin):
                    self.apply(["ip", *line])
                return
            self._ip(argv)
        else:
            raise ValueError(f"the model runs ipvsadm and ip, not {argv[0]!r}")
        self.applied += 1

    @staticmethod
    def _batch_lines(argv: Sequence[str], stdin: str | None) -> Iterator[list[str]]:
        if stdin is None:
            raise IpvsCommandError(argv, "reads its commands from stdin, and none was given", 2)
        for line in stdin.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                yield words

    def _ipvsadm(self, argv: list[str]) -> None:
        try:
            line = parse_command(argv[1:])
        except UsageError as e:
            raise IpvsCommandError(argv, str(e), 2) from None
        if line.fwmark is not None:
            raise IpvsCommandError(argv, "the model has no firewall-mark services", 2)
        key: VirtualKey = (line.protocol, line.ip, line.port)
        command = line.command

        def fail(message: str) -> None:
            raise IpvsCommandError(argv, message, 255)

        if command == "C":
            self._services.clear()
            self._reals.clear()
        elif command == "S":
            pass  # prints `save()`; changes nothing
        elif command in ("A", "E"):
            try:
                service = line.service()
            except UsageError as e:
                raise IpvsCommandError(argv, str(e), 2) from None
            if command == "A" and key in self._services:
                fail("Service already exists")
            if command == "E" and key not in self._services:
                fail("No such service")
            if service.scheduler not in SCHEDULERS:
                fail("Scheduler not found")
            self._services[key] = service
            self._reals.setdefault(key, {})
        elif command == "D":
            if key not in self._services:
                fail("No such service")
            del self._services[key]
            del self._reals[key]
        else:  # a, e, d
            if key not in self._services:
                fail("Service not defined")
            real = line.real()
            reals = self._reals[key]
            if command != "d" and family_of(real.ip) != family_of(line.ip) and real.forward != "i":
                fail(_EINVAL)  # the kernel forwards to another family only through a tunnel
            if command == "a":
                if real.key in reals:
                    fail("Destination already exists")
                reals[real.key] = real
            elif real.key not in reals:
                fail("No such destination")
            elif command == "e":
                reals[real.key] = real
            else:
                del reals[real.key]

    def _ip(self, argv: list[str]) -> None:
        words = argv[1:]
        if words == ["link", "add", DUMMY_DEVICE, "type", "dummy"]:
            if self._device:
                raise IpvsCommandError(argv, "RTNETLINK answers: File exists", 2)
            self._device = True
            return
        if words in (["link", "del", DUMMY_DEVICE], ["link", "delete", DUMMY_DEVICE]):
            if not self._device:
                raise IpvsCommandError(argv, f'Cannot find device "{DUMMY_DEVICE}"', 1)
            self._device = False
            self._addresses.clear()  # the addresses go with the device
            return
        if len(words) == 5 and words[0] in ("addr", "address") and words[3] == "dev":
            verb, prefix, device = words[1], words[2], words[4]
            if verb in ("add", "del", "delete") and device == DUMMY_DEVICE:
                self._ip_addr(argv, verb, prefix)
                return
        raise IpvsCommandError(argv, "the model knows ip link/addr on kube-ipvs0 only", 1)

    def _ip_addr(self, argv: list[str], verb: str, prefix: str) -> None:
        try:
            interface = ipaddress.ip_interface(prefix)
        except ValueError:
            message = f'any valid prefix is expected rather than "{prefix}"'
            raise IpvsCommandError(argv, message, 1) from None
        if "/" not in prefix:
            raise IpvsCommandError(argv, "the model wants an explicit prefix length", 1)
        if not self._device:
            raise IpvsCommandError(argv, f'Cannot find device "{DUMMY_DEVICE}"', 1)
        ip = interface.ip.compressed
        plen = interface.network.prefixlen
        if verb == "add":
            if ip in self._addresses:
                raise IpvsCommandError(argv, "RTNETLINK answers: File exists", 2)
            self._addresses[ip] = plen
        else:
            if self._addresses.get(ip) != plen:
                raise IpvsCommandError(
                    argv, "RTNETLINK answers: Cannot assign requested address", 2
                )
            del self._addresses[ip]

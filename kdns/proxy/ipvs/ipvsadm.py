"""ipvsadm's language: its command-line grammar, the argv of the commands a diff runs, and the
table as `ipvsadm -Sn` prints it.

Contract:
- `parse_command(args)` reads one ipvsadm command line as ipvsadm does (parse_options,
  generic_opt_check and process_options' defaults; popt's "--opt=value" and bundled flags),
  returning a `CommandLine`, or raises `UsageError` with ipvsadm's complaint.
- `service_args` / `service_settings` / `real_args` / `real_settings` spell a service or real
  server as ipvsadm takes it (every setting, since `-E` / `-e` reset what they are not given);
  `format_save` prints a state as `ipvsadm -Sn` does.
- `parse_ipvsadm_save(text)` reads `ipvsadm -Sn` output into an `IpvsState`; malformed input
  raises `IpvsParseError` naming the line. Firewall-mark services (`-f`) are not kdns's: they
  are left out of the state, so nothing ever touches them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from kdns.proxy.ipvs.state import (
    IpvsParseError,
    IpvsState,
    RealServer,
    VirtualKey,
    VirtualService,
    norm_ip,
)
from kdns.proxy.routes import join_host_port

DEFAULT_PERSISTENCE = 300  # ipvsadm: `-p` without a timeout (IPVS_SVC_PERSISTENT_TIMEOUT)
MAX_PERSISTENCE = 86400 * 31  # ipvsadm MAX_TIMEOUT

_COMMANDS = {
    "-A": "A",
    "--add-service": "A",
    "-E": "E",
    "--edit-service": "E",
    "-D": "D",
    "--delete-service": "D",
    "-C": "C",
    "--clear": "C",
    "-a": "a",
    "--add-server": "a",
    "-e": "e",
    "--edit-server": "e",
    "-d": "d",
    "--delete-server": "d",
    "-S": "S",
    "--save": "S",
    "-R": "R",
    "--restore": "R",
}
_COMMAND_NAMES = {
    "A": "add-service",
    "E": "edit-service",
    "D": "delete-service",
    "C": "flush",
    "a": "add-server",
    "e": "edit-server",
    "d": "delete-server",
    "S": "save",
    "R": "restore",
}
_SERVICE_SWITCH = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
_SERVICE_OPTIONS = {
    "-t": "TCP",
    "--tcp-service": "TCP",
    "-u": "UDP",
    "--udp-service": "UDP",
    "--sctp-service": "SCTP",
}
_VALUE_OPTIONS = {
    "-s": "scheduler",
    "--scheduler": "scheduler",
    "-M": "netmask",
    "--netmask": "netmask",
    "-b": "sched-flags",
    "--sched-flags": "sched-flags",
    "-r": "real-server",
    "--real-server": "real-server",
    "-w": "weight",
    "--weight": "weight",
    "-x": "u-threshold",
    "--u-threshold": "u-threshold",
    "-y": "l-threshold",
    "--l-threshold": "l-threshold",
    "-f": "fwmark",
    "--fwmark-service": "fwmark",
}
_FORWARD_OPTIONS = {
    "-m": "m",
    "--masquerading": "m",
    "-g": "g",
    "--gatewaying": "g",
    "-i": "i",
    "--ipip": "i",
}
_FLAG_OPTIONS = {"-n": "numeric", "--numeric": "numeric", "-o": "ops", "--ops": "ops", "-6": "ipv6"}
# ipvsadm's commands_v_options table: (required, allowed) options per command.
_SERVICE_SETTINGS = frozenset(("scheduler", "persistent", "netmask", "sched-flags", "ops"))
_REAL_SETTINGS = frozenset(("forwarding-method", "weight", "u-threshold", "l-threshold"))
_LEGAL: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "A": (frozenset(("service-address",)), _SERVICE_SETTINGS),
    "E": (frozenset(("service-address",)), _SERVICE_SETTINGS),
    "D": (frozenset(("service-address",)), frozenset()),
    "C": (frozenset(), frozenset()),
    "a": (frozenset(("service-address", "real-server")), _REAL_SETTINGS),
    "e": (frozenset(("service-address", "real-server")), _REAL_SETTINGS),
    "d": (frozenset(("service-address", "real-server")), frozenset()),
    "S": (frozenset(), frozenset(("numeric",))),
    "R": (frozenset(), frozenset()),
}
_SCHED_FLAG_NAMES = {
    "sh": ("sh-fallback", "sh-port"),
    "mh": ("mh-fallback", "mh-port"),
}


class UsageError(Exception):
    """ipvsadm's `fail(2, …)`: the command line itself is wrong."""


@dataclass(slots=True)
class CommandLine:
    """One parsed ipvsadm command line (process_options, with its defaults applied)."""

    command: str = ""
    protocol: str = ""
    ip: str = ""
    port: int = 0
    fwmark: int | None = None
    scheduler: str = ""
    persistence: int | None = None
    netmask: str | None = None
    flags_text: str = ""  # -b, read once the scheduler is known
    sched_flags: int = 0
    one_packet: bool = False
    real_ip: str = ""
    real_port: int | None = None
    forward: str = "g"  # ipvsadm's default: direct routing
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    options: set[str] = field(default_factory=set)

    def set_option(self, option: str) -> None:
        if option in self.options:
            raise UsageError(f"multiple '{option}' options specified")
        self.options.add(option)

    def service(self) -> VirtualService:
        try:
            return VirtualService(
                self.protocol,
                self.ip,
                self.port,
                scheduler=self.scheduler,
                persistence=self.persistence,
                netmask=self.netmask,
                sched_flags=self.sched_flags,
                one_packet=self.one_packet,
            )
        except ValueError as e:
            raise UsageError(str(e)) from None

    def real(self, command: bool = True) -> RealServer:
        """The destination a command line names; `command` False reads a saved line as is."""
        port = self.port if self.real_port is None else self.real_port
        if command and self.command in ("a", "e") and self.forward in ("g", "i"):
            # process_options: DR and tunnel destinations get the service's port (a saved
            # table shows the kernel's port, which a netlink client may have set otherwise).
            port = self.port
        return RealServer(
            self.real_ip, port, self.weight, self.forward, self.u_threshold, self.l_threshold
        )


def split_address(text: str) -> tuple[str, int | None]:
    """ipvsadm parse_service: "ip", "ip:port", "[ip6]:port" or a bare IPv6 address."""
    if not text or text.isdigit():
        raise ValueError(text)
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(text)
        port_text = rest[1:]
    elif text.count(":") > 1:
        return norm_ip(text), None  # a bare IPv6 address: no port
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, None
    ip = norm_ip(host)  # no host names: nothing here resolves
    if port_text is None:
        return ip, None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(text)
    return ip, int(port_text)


def _number(text: str, low: int, high: int, what: str) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise UsageError(f"illegal {what} specified")
    return int(text)


def _expand(args: Sequence[str]) -> list[str]:
    """popt's spellings: "--opt=value" and bundled short flags such as "-Sn"."""
    out: list[str] = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            out += arg.split("=", 1)
        elif (
            len(arg) > 2
            and arg[0] == "-"
            and arg[1] != "-"
            and all(f"-{c}" in _COMMANDS or f"-{c}" in _FLAG_OPTIONS for c in arg[1:])
        ):
            out += [f"-{c}" for c in arg[1:]]
        else:
            out.append(arg)
    return out


def parse_command(args: Sequence[str]) -> CommandLine:
    """ipvsadm parse_options + generic_opt_check + process_options' defaults."""
    line = CommandLine()
    args = _expand(args)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in _COMMANDS:
            if line.command:
                raise UsageError("multiple commands specified")
            line.command = _COMMANDS[arg]
        elif arg in _SERVICE_OPTIONS or arg in _VALUE_OPTIONS:
            if i >= len(args):
                raise UsageError(f"{arg}: missing argument")
            value = args[i]
            i += 1
            if arg in _SERVICE_OPTIONS:
                line.set_option("service-address")
                line.protocol = _SERVICE_OPTIONS[arg]
                try:
                    line.ip, port = split_address(value)
                except ValueError:
                    raise UsageError("illegal virtual server address[:port] specified") from None
                line.port = port or 0
            else:
                _value_option(line, _VALUE_OPTIONS[arg], value)
        elif arg in ("-p", "--persistent"):
            line.set_option("persistent")
            # popt's optional argument: the next word, unless it is an option.
            if i < len(args) and not args[i].startswith("-"):
                value = args[i]
                i += 1
                if not value.isdigit() or not 1 <= int(value) <= MAX_PERSISTENCE:
                    raise UsageError(f"invalid timeout value `{value}' specified")
                line.persistence = int(value)
            else:
                line.persistence = DEFAULT_PERSISTENCE
        elif arg in _FORWARD_OPTIONS:
            line.set_option("forwarding-method")
            line.forward = _FORWARD_OPTIONS[arg]
        elif arg in _FLAG_OPTIONS:
            option = _FLAG_OPTIONS[arg]
            if option != "ipv6":
                line.set_option(option)
            line.one_packet = line.one_packet or option == "ops"
        elif arg.startswith("-"):
            raise UsageError(f"invalid option `{arg}'")
        else:
            raise UsageError(f"unexpected argument {arg}")
    _check_and_default(line)
    return line


def _check_and_default(line: CommandLine) -> None:
    """ipvsadm generic_opt_check and process_options' checks and defaults, on a parsed
    command line: the command's required and legal options, then a service's port, OPS and
    scheduler."""
    if not line.command:
        raise UsageError("no command specified")
    required, allowed = _LEGAL[line.command]
    name = _COMMAND_NAMES[line.command]
    for option in sorted(required - line.options):
        raise UsageError(f"You need to supply the '{option}' option for the '{name}' command")
    for option in sorted(line.options - required - allowed):
        raise UsageError(f"Illegal '{option}' option with the '{name}' command")
    if line.command in ("A", "E"):
        if line.fwmark is None and not line.port and line.persistence is None:
            raise UsageError("Zero port specified for non-persistent service")
        if line.one_packet and line.fwmark is None and line.protocol != "UDP":
            raise UsageError("One-Packet Scheduling is only for UDP virtual services")
        line.scheduler = line.scheduler or "wlc"  # ipvsadm DEF_SCHED
        if line.flags_text:
            names = _SCHED_FLAG_NAMES.get(line.scheduler, ())
            line.sched_flags = _sched_flags(line.flags_text, names)


def _value_option(line: CommandLine, option: str, value: str) -> None:
    if option == "fwmark":
        line.set_option("service-address")
        if not value.isdigit() or not 0 < int(value) < 1 << 32:
            raise UsageError(f"invalid fwmark value `{value}' specified")
        line.fwmark = int(value)
        line.protocol = "TCP"  # ipvsadm: "a sane value, even though it is not used"
        return
    line.set_option(option)
    if option == "scheduler":
        line.scheduler = value
    elif option == "netmask":
        line.netmask = value
    elif option == "sched-flags":
        line.flags_text = value
    elif option == "real-server":
        try:
            line.real_ip, line.real_port = split_address(value)
        except ValueError:
            raise UsageError("illegal real server address[:port] specified") from None
    elif option == "weight":
        line.weight = _number(value, 0, 65535, "weight")
    elif option == "u-threshold":
        line.u_threshold = _number(value, 0, 2**31 - 1, "u_threshold")
    elif option == "l-threshold":
        line.l_threshold = _number(value, 0, 2**31 - 1, "l_threshold")


def _sched_flags(text: str, names: tuple[str, ...]) -> int:
    """ipvsadm parse_sched_flags: "flag-1,flag-2,flag-3" or the scheduler's own names."""
    bits = 0
    for word in text.split(","):
        if word in ("flag-1", "flag-2", "flag-3"):
            bits |= 1 << (int(word[-1]) - 1)
        elif word in names:
            bits |= 1 << names.index(word)
        else:
            raise UsageError(f"invalid scheduler flag `{word}'")
    return bits


def _sched_flags_text(scheduler: str, bits: int) -> str:
    names = _SCHED_FLAG_NAMES.get(scheduler, ())
    words = []
    for bit in range(3):
        if bits & 1 << bit:
            words.append(names[bit] if bit < len(names) else f"flag-{bit + 1}")
    return ",".join(words)


def service_args(service: VirtualService) -> list[str]:
    return [_SERVICE_SWITCH[service.protocol], join_host_port(service.ip, service.port)]


def service_settings(service: VirtualService) -> list[str]:
    """-s, -b, -p, -M, -o: every setting, since -E resets what it is not given."""
    args = ["-s", service.scheduler]
    if service.sched_flags:
        args += ["-b", _sched_flags_text(service.scheduler, service.sched_flags)]
    if service.persistence is not None:
        args += ["-p", str(service.persistence)]
        if service.netmask is not None:
            args += ["-M", service.netmask]
    if service.one_packet:
        args.append("-o")
    return args


def real_args(real: RealServer) -> list[str]:
    return ["-r", join_host_port(real.ip, real.port)]


def real_settings(real: RealServer) -> list[str]:
    """-m/-g/-i and -w (and thresholds): every setting, since -e resets what it is not given."""
    args = [f"-{real.forward}", "-w", str(real.weight)]
    if real.u_threshold:
        args += ["-x", str(real.u_threshold)]
    if real.l_threshold:
        args += ["-y", str(real.l_threshold)]
    return args


def format_save(state: IpvsState) -> str:
    """The IPVS table as `ipvsadm -Sn` prints it (print_service_entry with FMT_RULE)."""
    lines: list[str] = []
    for service in state.sorted_services():
        svc = " ".join(service_args(service))
        lines.append(" ".join(["-A", svc, *service_settings(service)]))
        for real in service.reals:
            lines.append(" ".join(["-a", svc, *real_args(real), *real_settings(real)]))
    return "".join(f"{line}\n" for line in lines)


def parse_ipvsadm_save(text: str, addresses: Iterable[str] = (), device: bool = True) -> IpvsState:
    """`ipvsadm -Sn` output (plus kube-ipvs0's addresses, see `parse_ip_addr_show`) → state.

    Lines are `-A` (service) and `-a` (real server of a service listed before it), in any
    order ipvsadm prints them. Firewall-mark services and their servers are skipped.
    """
    services: dict[VirtualKey, VirtualService] = {}
    reals: dict[VirtualKey, dict[tuple[str, int], RealServer]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        fast = _saved_real(raw)
        if fast is not None:
            key, real = fast
            if key in services and real.key not in reals[key]:
                reals[key][real.key] = real
                continue  # otherwise the general path below reports the error
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        # Old ipvsadm prints " ops" for one-packet scheduling, which its own parser refuses.
        tokens = ["-o" if t == "ops" else t for t in tokens]
        try:
            line = parse_command(tokens)
            fwmark = line.fwmark is not None
            service = line.service() if line.command == "A" and not fwmark else None
        except UsageError as e:
            raise IpvsParseError(number, f"{e}: {raw.strip()!r}") from None
        if fwmark:
            continue  # not a service kdns programs
        key: VirtualKey = (line.protocol, line.ip, line.port)
        if service is not None:
            if key in services:
                raise IpvsParseError(number, f"{service.describe()} is listed twice")
            services[key] = service
            reals[key] = {}
        elif line.command == "a":
            if key not in services:
                raise IpvsParseError(number, f"real server of unlisted service: {raw.strip()!r}")
            real = line.real(command=False)
            if real.key in reals[key]:
                raise IpvsParseError(number, f"real server listed twice: {raw.strip()!r}")
            reals[key][real.key] = real
        else:
            raise IpvsParseError(number, f"not ipvsadm -S output: {raw.strip()!r}")
    table = {k: replace(s, reals=tuple(reals[k].values())) for k, s in services.items()}
    return IpvsState(table, frozenset(addresses), device)


# The shape of nearly every line of a saved table: a masqueraded (or routed) real server.
_SAVED_REAL = re.compile(r"-a (-t|-u|--sctp-service) (\S+) -r (\S+) -([mgi]) -w (\d+)")


def _saved_real(line: str) -> tuple[VirtualKey, RealServer] | None:
    """The fast path of `parse_ipvsadm_save` for `-a SVC -r ADDR -m -w N` lines (10k
    services are 40k lines); None sends the line to the general parser."""
    match = _SAVED_REAL.fullmatch(line.strip())
    if match is None:
        return None
    switch, service, real, forward, weight = match.groups()
    try:
        ip, port = split_address(service)
        real_ip, real_port = split_address(real)
    except ValueError:
        return None
    if port is None or real_port is None or int(weight) > 65535:
        return None
    key = (_SERVICE_OPTIONS[switch], ip, port)
    return key, RealServer(real_ip, real_port, int(weight), forward)

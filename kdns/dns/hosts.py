"""CoreDNS's hosts plugin: A, AAAA and PTR answers from hosts-file lines.

Contract (pure):
- `parse_hosts(text)` reads hosts-file text (`IP NAME...` per line, `#` comments) into a
  `HostsTable`, skipping lines that do not start with an address, as CoreDNS's hostsfile
  parser does. Names are compared lower-cased; an address may carry several names and a name
  several addresses.
- `Hosts(config, table).answer(qname, qtype)` returns a `HostsAnswer` (rcode and answer RRs,
  owned by the lower-case name) or None when the question goes on to the next handler (the
  cluster zones, then the upstreams). What goes on is what CoreDNS's hosts `ServeDNS` passes
  on (plugin/hosts/hosts.go):
  - a name outside `zones` (PTR questions are answered for every address, zones or not);
  - a PTR for an address no line has, and every PTR with `no_reverse`;
  - a name no line has, in a `fallthrough` zone.
  A name no line has, outside the fallthrough zones, gets SERVFAIL (hosts has no SOA to deny
  with); a name with lines but no record of the type asked (ANY included, as CoreDNS) gets
  NOERROR with no answer.
- The inline lines come before the file's, as CoreDNS searches its inline map first.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A

from kdns.config import HostsSection


@dataclass(slots=True)
class HostsTable:
    """Names → addresses (in the order the lines give them) and addresses → names."""

    v4: dict[str, list[str]] = field(default_factory=dict)
    v6: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)  # compressed address → names

    def add(self, address: str, name: str) -> None:
        ip = ipaddress.ip_address(address.split("%")[0])
        by_family = self.v4 if ip.version == 4 else self.v6
        name = name.lower().rstrip(".")
        addresses = by_family.setdefault(name, [])
        if ip.compressed not in addresses:
            addresses.append(ip.compressed)
        names = self.names.setdefault(ip.compressed, [])
        if name not in names:
            names.append(name)

    def __contains__(self, name: str) -> bool:
        return name in self.v4 or name in self.v6


def parse_hosts(text: str, table: HostsTable | None = None) -> HostsTable:
    """The lines of `text` added to `table` (a new one by default)."""
    table = table if table is not None else HostsTable()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            ipaddress.ip_address(words[0].split("%")[0])
        except ValueError:
            continue  # not a hosts line; CoreDNS skips it too
        for name in words[1:]:
            table.add(words[0], name)
    return table


@dataclass(frozen=True, slots=True)
class HostsAnswer:
    rcode: int
    answer: list[RR]


def _within(name: str, zones: tuple[str, ...]) -> bool:
    return any(z == "." or name == z or name.endswith("." + z) for z in zones)


def _address_of(reverse: str) -> str | None:
    """`10.1.168.192.in-addr.arpa` → 192.168.1.10; a nibble ip6.arpa name → its address."""
    if reverse.endswith(".in-addr.arpa"):
        labels = reverse[: -len(".in-addr.arpa")].split(".")
        text = ".".join(reversed(labels))
    elif reverse.endswith(".ip6.arpa"):
        nibbles = reverse[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32:
            return None
        digits = "".join(reversed(nibbles))
        text = ":".join(digits[i : i + 4] for i in range(0, 32, 4))
    else:
        return None
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


class Hosts:
    """The hosts plugin of one config over a table (replaced whole when the file changes)."""

    def __init__(self, config: HostsSection, table: HostsTable) -> None:
        self.config = config
        self.table = table

    def answer(self, qname: str, qtype: int) -> HostsAnswer | None:
        """The answer for `qname` (lower case, no trailing dot), or None: the next handler's."""
        config, ttl = self.config, self.config.ttl
        if qtype == QTYPE.PTR:
            address = None if config.no_reverse else _address_of(qname)
            names = self.table.names.get(address, []) if address else []
            if not names:
                return None
            rrs = [RR(qname, QTYPE.PTR, rdata=PTR(n + "."), ttl=ttl) for n in names]
            return HostsAnswer(RCODE.NOERROR, rrs)
        if not _within(qname, config.zones):
            return None
        if qname not in self.table:
            if _within(qname, config.fallthrough):
                return None
            return HostsAnswer(RCODE.SERVFAIL, [])
        rrs: list[RR] = []
        if qtype == QTYPE.A:
            rrs += [RR(qname, QTYPE.A, rdata=A(a), ttl=ttl) for a in self.table.v4.get(qname, [])]
        if qtype == QTYPE.AAAA:
            v6 = self.table.v6.get(qname, [])
            rrs += [RR(qname, QTYPE.AAAA, rdata=AAAA(a), ttl=ttl) for a in v6]
        return HostsAnswer(RCODE.NOERROR, rrs)

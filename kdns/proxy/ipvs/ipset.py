"""kube-proxy's ipsets for IPVS mode: their names and types, `ipset restore` input, and
`ipset save` parsing.

Contract:
- `IPSETS` lists kube-proxy's sets (pkg/proxy/ipvs/proxier.go ipsetInfo, ipset.go comments) in
  its order; `IpsetSpec.set_name` spells a set per IP family ("KUBE-6-…" for IPv6).
- `render_ipset_restore` writes `ipset restore` input that brings the sets of one family from
  their current to their desired contents (entries are added and deleted, never flushed, so no
  packet sees an empty set): one `ipset restore` per sync, where kube-proxy runs one
  `ipset add` per entry.
- `parse_ipset_save` reads set contents from `ipset save`; malformed input raises
  `IpvsParseError` naming the line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from kdns.proxy.ipvs.state import IpvsParseError

# ipset names (pkg/proxy/ipvs/ipset.go), as the IPv4 proxier spells them.
LOOP_BACK = "KUBE-LOOP-BACK"
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_IP = "KUBE-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "KUBE-LOAD-BALANCER"
LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
IPVS_IPS = "KUBE-IPVS-IPS"


@dataclass(frozen=True, slots=True)
class IpsetSpec:
    """One of kube-proxy's ipsets: `ipsetInfo` in proxier.go."""

    name: str  # the IPv4 name; `set_name` gives the per-family one
    type: str
    comment: str

    def set_name(self, family: int) -> str:
        """ipset.go NewIPSet: IPv6 sets are "KUBE-6-…", cut to ipset's 31 characters."""
        if family == 6:
            return ("KUBE-6-" + self.name.removeprefix("KUBE-"))[:31]
        return self.name

    def create_line(self, family: int) -> str:
        """`ipset restore` line creating the set (util/ipset createSet), idempotent."""
        name = self.set_name(family)
        if self.type == "bitmap:port":
            return f"create {name} bitmap:port range 0-65535 -exist"
        inet = "inet6" if family == 6 else "inet"
        return f"create {name} {self.type} family {inet} hashsize 1024 maxelem 65536 -exist"


# proxier.go ipsetInfo, in its order, with ipset.go's comments (used in the iptables rules).
IPSETS = (
    IpsetSpec(
        LOOP_BACK,
        "hash:ip,port,ip",
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    IpsetSpec(
        CLUSTER_IP, "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"
    ),
    IpsetSpec(
        EXTERNAL_IP,
        "hash:ip,port",
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    IpsetSpec(
        EXTERNAL_IP_LOCAL,
        "hash:ip,port",
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    IpsetSpec(LOAD_BALANCER, "hash:ip,port", "Kubernetes service lb portal"),
    IpsetSpec(
        LOAD_BALANCER_FW,
        "hash:ip,port",
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    IpsetSpec(
        LOAD_BALANCER_LOCAL,
        "hash:ip,port",
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    IpsetSpec(
        LOAD_BALANCER_SOURCE_IP,
        "hash:ip,port,ip",
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    IpsetSpec(
        LOAD_BALANCER_SOURCE_CIDR,
        "hash:ip,port,net",
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    IpsetSpec(NODE_PORT_TCP, "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    IpsetSpec(
        NODE_PORT_LOCAL_TCP,
        "bitmap:port",
        "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    ),
    IpsetSpec(NODE_PORT_UDP, "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    IpsetSpec(
        NODE_PORT_LOCAL_UDP,
        "bitmap:port",
        "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    ),
    IpsetSpec(
        NODE_PORT_SCTP,
        "hash:ip,port",
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    IpsetSpec(
        NODE_PORT_LOCAL_SCTP,
        "hash:ip,port",
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    IpsetSpec(HEALTH_CHECK_NODE_PORT, "bitmap:port", "Kubernetes health check node port"),
    IpsetSpec(IPVS_IPS, "hash:ip", "Addresses on the ipvs interface"),
)
IPSET_BY_NAME = {spec.name: spec for spec in IPSETS}


def ipset_specs(family: int) -> dict[str, IpsetSpec]:
    """The sets of one family by their per-family name, in `IPSETS` order."""
    return {spec.set_name(family): spec for spec in IPSETS}


def render_ipset_restore(
    family: int,
    desired: Mapping[str, Collection[str]],
    current: Mapping[str, Collection[str]],
) -> str:
    """`ipset restore` input taking kube-proxy's sets of `family` from `current` (what
    `parse_ipset_save` read, {} when none exist yet) to `desired` (`IpvsRendering.ipsets`).

    Every set is created if missing (the filter rules name them even when empty); stale
    entries are deleted and new ones added, so a set is never briefly empty.
    """
    specs = ipset_specs(family)
    unknown = sorted(set(desired) - set(specs))
    if unknown:
        raise ValueError(f"not IPv{family} sets of IPVS mode: {', '.join(unknown)}")
    lines = [spec.create_line(family) for spec in specs.values()]
    for name in specs:
        want = frozenset(desired.get(name, ()))
        have = frozenset(current.get(name, ()))
        lines += [f"del {name} {entry} -exist" for entry in sorted(have - want)]
        lines += [f"add {name} {entry} -exist" for entry in sorted(want - have)]
    return "\n".join([*lines, ""])


def parse_ipset_save(text: str) -> dict[str, frozenset[str]]:
    """Set name → entries from `ipset save` (or `ipset list -o save`) output."""
    sets: dict[str, set[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "create" and len(fields) >= 3:
            sets.setdefault(fields[1], set())
        elif fields[0] == "add" and len(fields) >= 3:
            sets.setdefault(fields[1], set()).add(fields[2])
        else:
            raise IpvsParseError(number, f"not ipset save output: {line!r}")
    return {name: frozenset(entries) for name, entries in sets.items()}

"""The node DNS's data path (`kdns proxy --dns`): the rules that let pods reach the addresses the
proxy answers DNS on without conntrack, and without the proxy's DNAT taking a kube-dns ClusterIP
that the node answers itself. Pure: addresses in, rule text and commands out.

Contract:
- `iptables_restore(addresses, family)` is `iptables-restore --noflush` input for one family:
  the `raw` chain KDNS-NODE-DNS (NOTRACK for udp and tcp to port 53 of each address and from
  its port 53) and the `nat` chain KDNS-NODE-DNS-LOCAL (ACCEPT for those, so nothing after it in
  PREROUTING/OUTPUT — KUBE-SERVICES — DNATs them). Declaring a chain in --noflush input empties
  it, so applying again replaces the rules. `JUMP_RULES` are the jumps from the built-in chains,
  inserted first (`-I … 1`) when missing, as the proxy's own jumps are (they are not in the
  restore input, which would clobber other owners' rules).
- `nft_script(addresses)` is an `nft -f` transaction making `table inet kdns-node-dns` with
  `notrack` base chains at the raw priority (prerouting, output). A table of its own: the
  proxy's `ip kdns` table is flushed by every full sync. With NOTRACK the nat hooks never see
  these packets, so the kube-dns ClusterIP needs no further rule to stay local.
- `nft_delete` / `iptables_cleanup` remove all of it (`--cleanup`, and a stop that is not a
  restart), leaving other owners' rules as they were.
- IPVS mode uses iptables for its helper rules, so it gets the same `raw`/`nat` chains. They
  do not stop IPVS: it takes a packet in LOCAL_IN (and LOCAL_OUT for the node's own) when the
  packet matches one of its virtual services, whatever conntrack says. So the takeover is the
  IPVS renderer's (`ipvs/rules.py`, `IpvsDataplane.take_over_dns`): a ClusterIP the node DNS
  answers on gets no virtual service for port 53 (UDP, TCP) and no KUBE-CLUSTER-IP entry (no
  masquerade mark), and KUBE-IPVS-FILTER lets its port 53 through. IPVS passes a packet that
  matches no virtual service (ip_vs_in: no connection, no service for protocol, address and
  port) on untouched, and the kernel delivers it like any packet to a local address: to the
  socket bound there.
- The address stays on kube-ipvs0, where the IPVS sync binds every ClusterIP. It must be local
  for the socket to bind and for the kernel to deliver to it, and which device holds it does
  not matter for that (a host address is a `local` route either way). Moving it to `kdns-dns`
  would give one address two owners: the IPVS diff deletes every kube-ipvs0 address no route
  wants and adds back every ClusterIP it wants. On kube-ipvs0 the Service's other ports
  (kube-dns's 9153) keep working through IPVS, KUBE-IPVS-FILTER keeps rejecting the address's
  other host ports (kubernetes#72236), and giving it back is only the :53 virtual services
  coming back with the next sync. (Before the first sync of a new node the address may also
  be put on `kdns-dns`, so the socket can bind: a second local route to it, gone with the
  device.)

Why NOTRACK: UDP DNS through conntrack races on the first packets of a flow (the DNAT race
that NodeLocal DNSCache exists to avoid, kubernetes/kubernetes#56903) and fills the table with
one entry per query; the node answers locally, so there is nothing to translate or track.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from kdns.proxy.routes import JumpRule

DNS_PORT = 53
DEVICE = "kdns-dns"  # the dummy device holding the addresses not already on the node
RAW_CHAIN = "KDNS-NODE-DNS"
NAT_CHAIN = "KDNS-NODE-DNS-LOCAL"
NFT_TABLE = "kdns-node-dns"
_COMMENT = "kdns node DNS"
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("raw", "PREROUTING", RAW_CHAIN, _COMMENT),
    JumpRule("raw", "OUTPUT", RAW_CHAIN, _COMMENT),
    JumpRule("nat", "PREROUTING", NAT_CHAIN, _COMMENT),
    JumpRule("nat", "OUTPUT", NAT_CHAIN, _COMMENT),
)


def of_family(addresses: Sequence[str], family: int) -> list[str]:
    return [a for a in addresses if ipaddress.ip_address(a).version == family]


def _host(address: str) -> str:
    return f"{address}/{ipaddress.ip_address(address).max_prefixlen}"


def _matches(address: str) -> list[str]:
    """Queries to the address and answers from it, for each transport."""
    host = _host(address)
    return [
        f"{way} {host} -p {proto} -m {proto} --{port}port {DNS_PORT}"
        for way, port in (("-d", "d"), ("-s", "s"))
        for proto in ("udp", "tcp")
    ]


def iptables_restore(addresses: Sequence[str], family: int) -> str:
    """`iptables-restore --noflush` input for the family's addresses (module docstring)."""
    mine = of_family(addresses, family)
    raw = [f"-A {RAW_CHAIN} {m} -j NOTRACK" for a in mine for m in _matches(a)]
    # Only queries need keeping away from DNAT; answers leave from a local address.
    nat = [f"-A {NAT_CHAIN} {m} -j ACCEPT" for a in mine for m in _matches(a)[:2]]
    raw_part = ["*raw", f":{RAW_CHAIN} - [0:0]", *raw, "COMMIT"]
    return "\n".join([*raw_part, "*nat", f":{NAT_CHAIN} - [0:0]", *nat, "COMMIT", ""])


def iptables_cleanup() -> str:
    """`iptables-restore --noflush` input deleting the chains, once the jumps are gone."""
    return "".join(
        f"*{table}\n:{chain} - [0:0]\n-X {chain}\nCOMMIT\n"
        for table, chain in (("raw", RAW_CHAIN), ("nat", NAT_CHAIN))
    )


def nft_script(addresses: Sequence[str]) -> str:
    """An `nft -f` transaction (re)making the node DNS table with exactly these addresses."""
    lines = [f"add table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
    lines.append(f"table inet {NFT_TABLE} {{")
    for chain, hook in (("prerouting", "prerouting"), ("output", "output")):
        lines.append(f"\tchain {chain} {{")
        lines.append(f"\t\ttype filter hook {hook} priority raw; policy accept;")
        for address in addresses:
            keyword = "ip" if ipaddress.ip_address(address).version == 4 else "ip6"
            for way, port in (("daddr", "dport"), ("saddr", "sport")):
                for proto in ("udp", "tcp"):
                    lines.append(f"\t\t{keyword} {way} {address} {proto} {port} {DNS_PORT} notrack")
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def nft_delete() -> str:
    """An `nft -f` transaction removing the node DNS table (nothing if it is not there)."""
    return f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"

"""What IPVS mode needs of the node's kernel: the ip_vs module, and the dummy device kube-ipvs0
that holds the addresses IPVS answers on.

Contract:
- `ipvs_available` decides from /proc/modules (or modules.builtin / modules.dep) text, or the
  presence of /proc/net/ip_vs, whether the kernel has IPVS; `UNAVAILABLE_MESSAGE` is the line to
  exit with when it has not.
- `address_argv` is the `ip addr add|del` command binding one VIP to kube-ipvs0 as a host
  address; `parse_ip_addr_show` reads the addresses back from `ip [-o] addr show dev kube-ipvs0`.
- Pure: the callers read the files and run the commands.
"""

from __future__ import annotations

import re

from kdns.proxy.ipvs.state import norm_ip

DUMMY_DEVICE = "kube-ipvs0"  # proxier.go defaultDummyDevice

UNAVAILABLE_MESSAGE = (
    "kdns proxy: --mode ipvs needs IPVS in the kernel (module ip_vs), and this node has none;"
    " the modes that work here are iptables, nftables, userspace"
)

_ADDRESS = re.compile(r"\binet6? (\S+?)/\d+")


def parse_ip_addr_show(text: str) -> frozenset[str]:
    """The addresses in `ip [-o] addr show dev kube-ipvs0` output."""
    return frozenset(norm_ip(m.group(1)) for m in _ADDRESS.finditer(text))


def address_argv(verb: str, ip: str) -> list[str]:
    # kube-proxy binds each VIP as a host address (netlink EnsureAddressBind).
    return ["ip", "addr", verb, f"{ip}/{128 if ':' in ip else 32}", "dev", DUMMY_DEVICE]


_IPVS_MODULE_PATH = re.compile(r"(?:^|/)ip_vs\.ko(?:\.(?:gz|xz|zst))?:?$")


def ipvs_available(modules_text: str, proc_net_ip_vs: bool = False) -> bool:
    """Whether the kernel has IPVS, from /proc/modules text (module `ip_vs` loaded), or
    /lib/modules/$(uname -r)/modules.builtin or modules.dep text (built in, or loadable), or
    the presence of /proc/net/ip_vs (which exists once IPVS is in the running kernel).

    The sync engine reads those files; on False it exits 2 with `UNAVAILABLE_MESSAGE`.
    """
    if proc_net_ip_vs:
        return True
    for line in modules_text.splitlines():
        fields = line.split()
        if fields and (fields[0] == "ip_vs" or _IPVS_MODULE_PATH.search(fields[0])):
            return True
    return False

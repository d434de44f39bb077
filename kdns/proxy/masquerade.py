"""The chains around kube-proxy's masquerade mark, which its iptables and IPVS modes write alike.

Contract:
- `postrouting_rules(mark, random_fully)`: the rules of KUBE-POSTROUTING and KUBE-MARK-MASQ
  (nat table); `forward_rules(mark, conntrack_tcp_be_liberal)`: those of KUBE-FORWARD (filter
  table), as `iptables-restore` `-A` lines in kube-proxy's order (pkg/proxy/iptables/proxier.go
  and pkg/proxy/ipvs/proxier.go write the same lines; docs/kube-proxy.md, iptables mode).
  `mark` is the mark as `routes.masquerade_mark` prints it ("0x4000").
- Pure: strings in, strings out; the renderers (`proxy/iptables.py`, `proxy/ipvs/rules.py`)
  place the lines in their restore input.
"""

from __future__ import annotations

KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"


def postrouting_rules(mark: str, random_fully: bool) -> list[str]:
    """KUBE-POSTROUTING masquerades what carries the mark, once; KUBE-MARK-MASQ sets it."""
    return [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        # Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT"'
        f" -j MASQUERADE{' --random-fully' if random_fully else ''}",
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
    ]


def forward_rules(mark: str, conntrack_tcp_be_liberal: bool) -> list[str]:
    """KUBE-FORWARD: marked (service) traffic and the rest of its connections are forwarded."""
    rules = []
    if not conntrack_tcp_be_liberal:
        # Packets conntrack calls INVALID would otherwise reach the pod un-DNATed and draw a
        # RST that kills the connection (#74839, #117924); nf_conntrack_tcp_be_liberal makes
        # conntrack accept them instead.
        rules.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP")
    # Forward what we marked for masquerade even where the FORWARD policy is DROP, and the
    # rest of those connections.
    rules.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules"'
        f" -m mark --mark {mark}/{mark} -j ACCEPT"
    )
    rules.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    return rules

"""The masquerade mark's chains, as kube-proxy's iptables and IPVS modes both write them."""

from __future__ import annotations

import textwrap

import pytest

from kdns.proxy.masquerade import forward_rules, postrouting_rules


@pytest.mark.parametrize(
    ("mark", "random_fully", "expected"),
    [
        (
            "0x4000",
            True,
            """\
            -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
            -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
            -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
            -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
            """,
        ),
        (
            "0x1000",
            False,
            """\
            -A KUBE-POSTROUTING -m mark ! --mark 0x1000/0x1000 -j RETURN
            -A KUBE-POSTROUTING -j MARK --xor-mark 0x1000
            -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
            -A KUBE-MARK-MASQ -j MARK --or-mark 0x1000
            """,
        ),
    ],
)
def test_postrouting_masquerades_marked_traffic_once(
    mark: str, random_fully: bool, expected: str
) -> None:
    assert "\n".join([*postrouting_rules(mark, random_fully), ""]) == textwrap.dedent(expected)


@pytest.mark.parametrize(
    ("liberal", "expected"),
    [
        (
            False,
            """\
            -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
            -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
            -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
            """,
        ),
        # nf_conntrack_tcp_be_liberal: conntrack accepts what it would call INVALID, no DROP.
        (
            True,
            """\
            -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
            -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
            """,
        ),
    ],
)
def test_forward_accepts_marked_traffic_and_its_connections(liberal: bool, expected: str) -> None:
    assert "\n".join([*forward_rules("0x4000", liberal), ""]) == textwrap.dedent(expected)

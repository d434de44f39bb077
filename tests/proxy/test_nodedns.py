"""The node DNS's rules (kdns/proxy/nodedns.py) as the text iptables-restore and nft read."""

from __future__ import annotations

from kdns.proxy import nodedns
from kdns.proxy.dataplane import jump_line


def test_iptables_notracks_queries_and_answers_and_keeps_them_from_dnat() -> None:
    assert nodedns.iptables_restore(["169.254.20.10", "10.96.0.10", "fd00::a"], 4) == (
        "*raw\n"
        ":KDNS-NODE-DNS - [0:0]\n"
        "-A KDNS-NODE-DNS -d 169.254.20.10/32 -p udp -m udp --dport 53 -j NOTRACK\n"
        "-A KDNS-NODE-DNS -d 169.254.20.10/32 -p tcp -m tcp --dport 53 -j NOTRACK\n"
        "-A KDNS-NODE-DNS -s 169.254.20.10/32 -p udp -m udp --sport 53 -j NOTRACK\n"
        "-A KDNS-NODE-DNS -s 169.254.20.10/32 -p tcp -m tcp --sport 53 -j NOTRACK\n"
        "-A KDNS-NODE-DNS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j NOTRACK\n"
        "-A KDNS-NODE-DNS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j NOTRACK\n"
        "-A KDNS-NODE-DNS -s 10.96.0.10/32 -p udp -m udp --sport 53 -j NOTRACK\n"
        "-A KDNS-NODE-DNS -s 10.96.0.10/32 -p tcp -m tcp --sport 53 -j NOTRACK\n"
        "COMMIT\n"
        "*nat\n"
        ":KDNS-NODE-DNS-LOCAL - [0:0]\n"
        "-A KDNS-NODE-DNS-LOCAL -d 169.254.20.10/32 -p udp -m udp --dport 53 -j ACCEPT\n"
        "-A KDNS-NODE-DNS-LOCAL -d 169.254.20.10/32 -p tcp -m tcp --dport 53 -j ACCEPT\n"
        "-A KDNS-NODE-DNS-LOCAL -d 10.96.0.10/32 -p udp -m udp --dport 53 -j ACCEPT\n"
        "-A KDNS-NODE-DNS-LOCAL -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j ACCEPT\n"
        "COMMIT\n"
    )


def test_iptables_ipv6_takes_only_the_ipv6_addresses() -> None:
    text = nodedns.iptables_restore(["169.254.20.10", "fd00::a"], 6)
    rules = [line for line in text.splitlines() if line.startswith("-A")]
    assert rules[0] == "-A KDNS-NODE-DNS -d fd00::a/128 -p udp -m udp --dport 53 -j NOTRACK"
    assert all("fd00::a/128" in rule for rule in rules)
    assert len(rules) == 6


def test_the_jumps_come_from_raw_and_nat_prerouting_and_output() -> None:
    assert [jump_line(rule) for rule in nodedns.JUMP_RULES] == [
        '-A PREROUTING -m comment --comment "kdns node DNS" -j KDNS-NODE-DNS',
        '-A OUTPUT -m comment --comment "kdns node DNS" -j KDNS-NODE-DNS',
        '-A PREROUTING -m comment --comment "kdns node DNS" -j KDNS-NODE-DNS-LOCAL',
        '-A OUTPUT -m comment --comment "kdns node DNS" -j KDNS-NODE-DNS-LOCAL',
    ]
    assert [rule.table for rule in nodedns.JUMP_RULES] == ["raw", "raw", "nat", "nat"]


def test_iptables_cleanup_deletes_both_chains() -> None:
    assert nodedns.iptables_cleanup() == (
        "*raw\n:KDNS-NODE-DNS - [0:0]\n-X KDNS-NODE-DNS\nCOMMIT\n"
        "*nat\n:KDNS-NODE-DNS-LOCAL - [0:0]\n-X KDNS-NODE-DNS-LOCAL\nCOMMIT\n"
    )


def test_nftables_notrack_chains_in_a_table_of_their_own() -> None:
    assert nodedns.nft_script(["169.254.20.10", "fd00::a"]) == (
        "add table inet kdns-node-dns\n"
        "delete table inet kdns-node-dns\n"
        "table inet kdns-node-dns {\n"
        "\tchain prerouting {\n"
        "\t\ttype filter hook prerouting priority raw; policy accept;\n"
        "\t\tip daddr 169.254.20.10 udp dport 53 notrack\n"
        "\t\tip daddr 169.254.20.10 tcp dport 53 notrack\n"
        "\t\tip saddr 169.254.20.10 udp sport 53 notrack\n"
        "\t\tip saddr 169.254.20.10 tcp sport 53 notrack\n"
        "\t\tip6 daddr fd00::a udp dport 53 notrack\n"
        "\t\tip6 daddr fd00::a tcp dport 53 notrack\n"
        "\t\tip6 saddr fd00::a udp sport 53 notrack\n"
        "\t\tip6 saddr fd00::a tcp sport 53 notrack\n"
        "\t}\n"
        "\tchain output {\n"
        "\t\ttype filter hook output priority raw; policy accept;\n"
        "\t\tip daddr 169.254.20.10 udp dport 53 notrack\n"
        "\t\tip daddr 169.254.20.10 tcp dport 53 notrack\n"
        "\t\tip saddr 169.254.20.10 udp sport 53 notrack\n"
        "\t\tip saddr 169.254.20.10 tcp sport 53 notrack\n"
        "\t\tip6 daddr fd00::a udp dport 53 notrack\n"
        "\t\tip6 daddr fd00::a tcp dport 53 notrack\n"
        "\t\tip6 saddr fd00::a udp sport 53 notrack\n"
        "\t\tip6 saddr fd00::a tcp sport 53 notrack\n"
        "\t}\n"
        "}\n"
    )
    assert nodedns.nft_delete() == "add table inet kdns-node-dns\ndelete table inet kdns-node-dns\n"

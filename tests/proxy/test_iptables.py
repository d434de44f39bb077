"""kdns.proxy.iptables: routes → iptables-restore input, compared with restore text.

The expected rules are kube-proxy's (pkg/proxy/iptables/proxier.go syncProxyRules and
writeServiceToEndpointRules, and the rule shapes in docs/kube-proxy.md), one case
per feature. With root and iptables, every case is also checked by `iptables-restore --test` in
a throwaway network namespace, and a full → partial → stale → cleanup sequence is applied there
for real; the host's tables are never touched.
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from kdns.proxy.iptables import (
    JUMP_RULES,
    IptablesConfig,
    Rendering,
    chain_rules,
    probability,
    release,
    release_entries,
    render_cleanup,
    render_full,
    render_partial,
    saved_chains,
    split_lines,
    stale_chains,
)
from kdns.proxy.routes import JumpRule, ServicePortRoute
from tests.builders import model_endpoint, model_service
from tests.conftest import throwaway_netns
from tests.proxy.builders import NODE, PODS, routes

CONFIG = IptablesConfig(cluster_cidr=PODS)
NODEPORT = (("p80", "TCP", 80, 30080),)

# --- building routes ---------------------------------------------------------------------------


# --- the expected text ---------------------------------------------------------------------------

FILTER_HEAD = """\
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]"""
FILTER_TAIL = """\
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x004000/0x004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT"""
NAT_HEAD = """\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]"""
NAT_FIXED = """\
-A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000"""
NODEPORTS_LOCAL = """\
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"""


def restore(
    filter_rules: str = "",
    nat_chains: str = "",
    nat_rules: str = "",
    nodeports: str = NODEPORTS_LOCAL,
) -> str:
    """The whole input for the default config around the rules of the case's services."""
    parts = [FILTER_HEAD, filter_rules, FILTER_TAIL, NAT_HEAD, nat_chains, NAT_FIXED]
    parts += [nat_rules, nodeports, "COMMIT"]
    return "\n".join(textwrap.dedent(p).strip("\n") for p in parts if p) + "\n"


# --- golden cases ------------------------------------------------------------------------------

CASES = [
    pytest.param(
        routes(
            (
                model_service("ns1/svc1"),
                [
                    model_endpoint("10.244.1.2"),
                    model_endpoint("10.244.2.3"),
                    model_endpoint("10.244.3.4"),
                ],
            )
        ),
        CONFIG,
        # The whole input, written out once: ClusterIP spread 1/3, 1/2, rest; masquerade of
        # off-cluster sources; hairpin masquerade first in each endpoint chain.
        """\
        *filter
        :KUBE-SERVICES - [0:0]
        :KUBE-EXTERNAL-SERVICES - [0:0]
        :KUBE-FORWARD - [0:0]
        :KUBE-NODEPORTS - [0:0]
        :KUBE-PROXY-FIREWALL - [0:0]
        -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x004000/0x004000 -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        COMMIT
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-NODEPORTS - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
        :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
        :KUBE-SEP-KB3HA5SXN43L6BKD - [0:0]
        :KUBE-SEP-IZO7N4AP67342NDF - [0:0]
        -A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN
        -A KUBE-POSTROUTING -j MARK --xor-mark 0x004000
        -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x004000
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-HJ4XRC6RYIVW74AV
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.2.3:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-KB3HA5SXN43L6BKD
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.3.4:8080" -j KUBE-SEP-IZO7N4AP67342NDF
        -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
        -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
        -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -s 10.244.2.3 -j KUBE-MARK-MASQ
        -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080
        -A KUBE-SEP-IZO7N4AP67342NDF -m comment --comment ns1/svc1:p80 -s 10.244.3.4 -j KUBE-MARK-MASQ
        -A KUBE-SEP-IZO7N4AP67342NDF -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.3.4:8080
        -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS
        COMMIT
        """,
        id="clusterip-spread",
    ),
    pytest.param(
        routes((model_service("ns1/svc1"), [model_endpoint("10.244.1.2")])),
        IptablesConfig(),
        # No cluster CIDR and no --masquerade-all: no masquerade rule in KUBE-SVC; one
        # endpoint gets an unconditional jump.
        restore(
            nat_chains="""
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="no-cluster-cidr",
    ),
    pytest.param(
        routes((model_service("ns1/svc1"), [model_endpoint("10.244.1.2")])),
        IptablesConfig(cluster_cidr=PODS, masquerade_all=True),
        # --masquerade-all: every ClusterIP connection is marked, whatever its source.
        restore(
            nat_chains="""
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="masquerade-all",
    ),
    pytest.param(
        routes(
            (model_service("ns2/dns", ports=(("", "UDP", 53, None),), ip="172.30.0.42"), []),
            (
                model_service(
                    "ns3/np",
                    type="NodePort",
                    ports=NODEPORT,
                    ip="172.30.0.43",
                    external_ips=("192.0.2.10",),
                ),
                [model_endpoint("10.244.1.2", ready=False, serving=False)],
            ),
        ),
        CONFIG,
        # No usable endpoint: REJECT in filter for the ClusterIP, the externalIP and the
        # NodePort (connection refused at once, #17359), and no nat chains at all.
        restore(
            filter_rules="""
            -A KUBE-SERVICES -m comment --comment "ns2/dns has no endpoints" -m udp -p udp -d 172.30.0.42 --dport 53 -j REJECT
            -A KUBE-SERVICES -m comment --comment "ns3/np:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j REJECT
            -A KUBE-EXTERNAL-SERVICES -m comment --comment "ns3/np:p80 has no endpoints" -m tcp -p tcp -d 192.0.2.10 --dport 80 -j REJECT
            -A KUBE-EXTERNAL-SERVICES -m comment --comment "ns3/np:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT
            """,
        ),
        id="no-endpoints-reject",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", session_affinity="ClientIP", affinity_timeout=10800),
                [model_endpoint("10.244.1.2"), model_endpoint("10.244.2.3")],
            )
        ),
        CONFIG,
        # ClientIP affinity: the recent-list checks come before the random spread; the DNAT
        # rule records the client in its endpoint's list.
        restore(
            nat_chains="""
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            :KUBE-SEP-KB3HA5SXN43L6BKD - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -m recent --name KUBE-SEP-HJ4XRC6RYIVW74AV --rcheck --seconds 10800 --reap -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.2.3:8080" -m recent --name KUBE-SEP-KB3HA5SXN43L6BKD --rcheck --seconds 10800 --reap -j KUBE-SEP-KB3HA5SXN43L6BKD
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.2.3:8080" -j KUBE-SEP-KB3HA5SXN43L6BKD
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-HJ4XRC6RYIVW74AV --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -s 10.244.2.3 -j KUBE-MARK-MASQ
            -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-KB3HA5SXN43L6BKD --set -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080
            """,
        ),
        id="session-affinity",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", type="NodePort", ports=NODEPORT),
                [model_endpoint("10.244.1.2")],
            )
        ),
        CONFIG,
        # NodePort: KUBE-NODEPORTS → KUBE-EXT, which masquerades (the endpoint may be on
        # another node) and goes on to the Cluster chain.
        restore(
            nat_chains="""
            :KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="nodeport",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", external_ips=("192.0.2.10",)),
                [model_endpoint("10.244.1.2")],
            )
        ),
        CONFIG,
        # externalIPs enter through KUBE-EXT, like NodePorts.
        restore(
            nat_chains="""
            :KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 external IP" -m tcp -p tcp -d 192.0.2.10 --dport 80 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="external-ip",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/svc1",
                    type="LoadBalancer",
                    ports=NODEPORT,
                    load_balancer_ips=("198.51.100.7",),
                ),
                [model_endpoint("10.244.1.2")],
            )
        ),
        CONFIG,
        # LB ingress IP without source ranges: straight to KUBE-EXT.
        restore(
            nat_chains="""
            :KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" -m tcp -p tcp -d 198.51.100.7 --dport 80 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="loadbalancer",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/svc1",
                    type="LoadBalancer",
                    ports=NODEPORT,
                    load_balancer_ips=("198.51.100.7",),
                    load_balancer_source_ranges=("203.0.113.0/25", "192.168.0.0/24"),
                ),
                [model_endpoint("10.244.1.2")],
            )
        ),
        IptablesConfig(cluster_cidr=PODS, node_ip="192.168.0.10"),
        # loadBalancerSourceRanges: KUBE-FW admits each range (and, as the node's IP is in one,
        # the LB IP itself as a source); the rest falls through and is dropped in filter. The
        # NodePort is not subject to the ranges.
        restore(
            filter_rules="""
            -A KUBE-PROXY-FIREWALL -m comment --comment "ns1/svc1:p80 traffic not accepted by KUBE-FW-XPGD46QRK7WJZT7O" -m tcp -p tcp -d 198.51.100.7 --dport 80 -j DROP
            """,
            nat_chains="""
            :KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-FW-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" -m tcp -p tcp -d 198.51.100.7 --dport 80 -j KUBE-FW-XPGD46QRK7WJZT7O
            -A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-FW-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-FW-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 loadbalancer IP" -s 192.168.0.0/24 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-FW-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 loadbalancer IP" -s 198.51.100.7 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-FW-XPGD46QRK7WJZT7O -m comment --comment "other traffic to ns1/svc1:p80 will be dropped by KUBE-PROXY-FIREWALL"
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="lb-source-ranges",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/svc1",
                    type="LoadBalancer",
                    ports=NODEPORT,
                    load_balancer_ips=("198.51.100.7",),
                    external_traffic_policy="Local",
                    health_check_node_port=30000,
                ),
                [model_endpoint("10.244.1.2", node=NODE), model_endpoint("10.244.2.3")],
            )
        ),
        CONFIG,
        # externalTrafficPolicy Local: KUBE-EXT sends pod and node traffic to the Cluster
        # chain, everything else to KUBE-SVL (local endpoints, source kept); the health-check
        # node port is accepted in filter.
        restore(
            filter_rules="""
            -A KUBE-NODEPORTS -m comment --comment "ns1/svc1:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
            """,
            nat_chains="""
            :KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVL-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            :KUBE-SEP-KB3HA5SXN43L6BKD - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" -m tcp -p tcp -d 198.51.100.7 --dport 80 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "pod traffic for ns1/svc1:p80 external destinations" -s 10.244.0.0/16 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "route LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVL-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.2.3:8080" -j KUBE-SEP-KB3HA5SXN43L6BKD
            -A KUBE-SVL-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -s 10.244.2.3 -j KUBE-MARK-MASQ
            -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080
            """,
        ),
        id="external-policy-local",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/svc1", type="NodePort", ports=NODEPORT, external_traffic_policy="Local"
                ),
                [model_endpoint("10.244.2.3")],
            )
        ),
        CONFIG,
        # externalTrafficPolicy Local and no local endpoint: KUBE-EXT keeps its short-circuits
        # but has no final jump, and filter DROPs the rest (a timeout, not a refusal).
        restore(
            filter_rules="""
            -A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP
            """,
            nat_chains="""
            :KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-KB3HA5SXN43L6BKD - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "pod traffic for ns1/svc1:p80 external destinations" -s 10.244.0.0/16 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "route LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.2.3:8080" -j KUBE-SEP-KB3HA5SXN43L6BKD
            -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -s 10.244.2.3 -j KUBE-MARK-MASQ
            -A KUBE-SEP-KB3HA5SXN43L6BKD -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080
            """,
        ),
        id="external-policy-local-no-local-endpoint",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", internal_traffic_policy="Local"),
                [model_endpoint("10.244.1.2", node=NODE), model_endpoint("10.244.2.3")],
            )
        ),
        CONFIG,
        # internalTrafficPolicy Local: the ClusterIP goes to KUBE-SVL (which also takes the
        # masquerade rule); the remote endpoint gets no chain.
        restore(
            nat_chains="""
            :KUBE-SVL-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVL-XPGD46QRK7WJZT7O
            -A KUBE-SVL-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-SVL-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="internal-policy-local",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", internal_traffic_policy="Local"),
                [model_endpoint("10.244.2.3")],
            )
        ),
        CONFIG,
        # internalTrafficPolicy Local and no local endpoint: DROP, not REJECT.
        restore(
            filter_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP
            """,
        ),
        id="internal-policy-local-no-local-endpoint",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1"),
                [
                    model_endpoint("10.244.1.2", ready=False, terminating=True),
                    model_endpoint("10.244.2.3", ready=False, serving=False, terminating=True),
                ],
            )
        ),
        CONFIG,
        # No ready endpoint: the terminating ones still serving are used (KEP-1669), the
        # not-serving one is not.
        restore(
            nat_chains="""
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
        ),
        id="terminating-fallback",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/svc1", ports=(("dns", "UDP", 53, None), ("sig", "SCTP", 3868, None))
                ),
                [model_endpoint("10.244.1.2", ports=(("dns", "UDP", 5353), ("sig", "SCTP", 3868)))],
            )
        ),
        CONFIG,
        # UDP and SCTP; a named port's number comes from the EndpointSlice (5353).
        restore(
            nat_chains="""
            :KUBE-SVC-AYLPSI7UY3HP5RJD - [0:0]
            :KUBE-SEP-3FFJGD6EM5BZKZ3U - [0:0]
            :KUBE-SVC-LKS3CGLADF2O5IXX - [0:0]
            :KUBE-SEP-VYBJKHSWMHM2WIR3 - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:dns cluster IP" -m udp -p udp -d 172.30.0.41 --dport 53 -j KUBE-SVC-AYLPSI7UY3HP5RJD
            -A KUBE-SVC-AYLPSI7UY3HP5RJD -m comment --comment "ns1/svc1:dns cluster IP" -m udp -p udp -d 172.30.0.41 --dport 53 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-SVC-AYLPSI7UY3HP5RJD -m comment --comment "ns1/svc1:dns -> 10.244.1.2:5353" -j KUBE-SEP-3FFJGD6EM5BZKZ3U
            -A KUBE-SEP-3FFJGD6EM5BZKZ3U -m comment --comment ns1/svc1:dns -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-3FFJGD6EM5BZKZ3U -m comment --comment ns1/svc1:dns -m udp -p udp -j DNAT --to-destination 10.244.1.2:5353
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:sig cluster IP" -m sctp -p sctp -d 172.30.0.41 --dport 3868 -j KUBE-SVC-LKS3CGLADF2O5IXX
            -A KUBE-SVC-LKS3CGLADF2O5IXX -m comment --comment "ns1/svc1:sig cluster IP" -m sctp -p sctp -d 172.30.0.41 --dport 3868 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-SVC-LKS3CGLADF2O5IXX -m comment --comment "ns1/svc1:sig -> 10.244.1.2:3868" -j KUBE-SEP-VYBJKHSWMHM2WIR3
            -A KUBE-SEP-VYBJKHSWMHM2WIR3 -m comment --comment ns1/svc1:sig -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-VYBJKHSWMHM2WIR3 -m comment --comment ns1/svc1:sig -m sctp -p sctp -j DNAT --to-destination 10.244.1.2:3868
            """,
        ),
        id="udp-and-sctp",
    ),
    pytest.param(
        routes(
            (model_service("ns1/svc1", ip="fd00:30::41"), [model_endpoint("fd00:244::2")]),
            (
                model_service("ns1/v4"),
                [model_endpoint("10.244.1.2")],
            ),  # another family: not in this input
        ),
        IptablesConfig(family=6, cluster_cidr="fd00:244::/64"),
        # ip6tables: bracketed DNAT target, and NodePorts never on ::1.
        restore(
            nat_chains="""
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-BY7UQW62EX3CL5CS - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d fd00:30::41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d fd00:30::41 --dport 80 ! -s fd00:244::/64 -j KUBE-MARK-MASQ
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> [fd00:244::2]:8080" -j KUBE-SEP-BY7UQW62EX3CL5CS
            -A KUBE-SEP-BY7UQW62EX3CL5CS -m comment --comment ns1/svc1:p80 -s fd00:244::2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-BY7UQW62EX3CL5CS -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination [fd00:244::2]:8080
            """,
            nodeports="""
            -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS
            """,
        ),
        id="ipv6",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", type="NodePort", ports=NODEPORT),
                [model_endpoint("10.244.1.2")],
            )
        ),
        IptablesConfig(cluster_cidr=PODS, nodeport_ips=("192.168.0.10", "127.0.0.1")),
        # --nodeport-addresses: one jump to KUBE-NODEPORTS per node address, never loopback.
        restore(
            nat_chains="""
            :KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" -j KUBE-MARK-MASQ
            -A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.244.1.2:8080" -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            """,
            nodeports="""
            -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -d 192.168.0.10 -j KUBE-NODEPORTS
            """,
        ),
        id="nodeport-addresses",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1"),
                [model_endpoint("10.244.1.2"), model_endpoint("10.244.2.3")],
            )
        ),
        IptablesConfig(cluster_cidr=PODS, large_cluster_endpoints=1),
        # Large-cluster mode: the per-endpoint rules lose their comments.
        restore(
            nat_chains="""
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
            :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
            :KUBE-SEP-KB3HA5SXN43L6BKD - [0:0]
            """,
            nat_rules="""
            -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
            -A KUBE-SVC-XPGD46QRK7WJZT7O -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-HJ4XRC6RYIVW74AV
            -A KUBE-SVC-XPGD46QRK7WJZT7O -j KUBE-SEP-KB3HA5SXN43L6BKD
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -s 10.244.1.2 -j KUBE-MARK-MASQ
            -A KUBE-SEP-HJ4XRC6RYIVW74AV -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
            -A KUBE-SEP-KB3HA5SXN43L6BKD -s 10.244.2.3 -j KUBE-MARK-MASQ
            -A KUBE-SEP-KB3HA5SXN43L6BKD -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080
            """,
        ),
        id="large-cluster-mode",
    ),
    pytest.param(
        (),
        IptablesConfig(conntrack_tcp_be_liberal=True, random_fully=False, masquerade_bit=15),
        # No INVALID drop when conntrack is liberal; another mark; no --random-fully.
        """\
        *filter
        :KUBE-SERVICES - [0:0]
        :KUBE-EXTERNAL-SERVICES - [0:0]
        :KUBE-FORWARD - [0:0]
        :KUBE-NODEPORTS - [0:0]
        :KUBE-PROXY-FIREWALL - [0:0]
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x008000/0x008000 -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        COMMIT
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-NODEPORTS - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        -A KUBE-POSTROUTING -m mark ! --mark 0x008000/0x008000 -j RETURN
        -A KUBE-POSTROUTING -j MARK --xor-mark 0x008000
        -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x008000
        -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS
        COMMIT
        """,
        id="liberal-conntrack-mark-bit-no-random-fully",
    ),
]


@pytest.mark.parametrize(("routes_", "config", "expected"), CASES)
def test_render_full(
    routes_: tuple[ServicePortRoute, ...], config: IptablesConfig, expected: str
) -> None:
    rendering = render_full(routes_, config)
    assert rendering.text == textwrap.dedent(expected)
    assert not rendering.partial
    assert rendering.deleted_chains == ()


# --- stale chains, partial syncs, determinism ----------------------------------------------------

TWO = (
    (model_service("ns1/a", ip="172.30.0.1"), [model_endpoint("10.244.1.2")]),
    (model_service("ns1/b", ip="172.30.0.2"), [model_endpoint("10.244.2.3")]),
)
A_SVC, A_SEP = "KUBE-SVC-RJR5Z2XEZW2NGSZC", "KUBE-SEP-5ZM4FRG7E35DWIST"
B_SVC, B_SEP = "KUBE-SVC-2USGMCUYPBEY3LZX", "KUBE-SEP-SQTCOKENPGJD4VYP"
B_SEP_NEW = "KUBE-SEP-CWSNO5VDQX2DCD5I"  # b's endpoint after it moves to 10.244.3.4


def test_active_chains_and_counts() -> None:
    rendering = render_full(routes(*TWO), CONFIG)
    assert rendering.active_chains == {A_SVC, A_SEP, B_SVC, B_SEP}
    lines = rendering.text.splitlines()
    nat = lines[lines.index("*nat") :]
    filt = lines[: lines.index("*nat")]
    assert rendering.nat_rules == sum(1 for line in nat if line.startswith("-A ")) == 15
    assert rendering.filter_rules == sum(1 for line in filt if line.startswith("-A ")) == 3


def test_stale_chains() -> None:
    existing = ["KUBE-SVC-AAAA", "KUBE-SEP-BBBB", "KUBE-SERVICES", "CALI-FOO", "KUBE-XLB-OLD"]
    existing += ["KUBE-EXT-CCCC", "KUBE-FW-DDDD", "KUBE-SVL-EEEE", "KUBE-SEP-KEEP"]
    assert stale_chains(existing, {"KUBE-SEP-KEEP"}) == (
        "KUBE-EXT-CCCC",
        "KUBE-FW-DDDD",
        "KUBE-SEP-BBBB",
        "KUBE-SVC-AAAA",
        "KUBE-SVL-EEEE",
    )


def test_render_deletes_stale_chains() -> None:
    svc_b, _ = TWO[1]
    before = render_full(routes(*TWO), CONFIG)
    # Service a is gone and b's endpoint moved: their old chains are flushed and deleted;
    # foreign chains are left alone.
    after = render_full(
        routes((svc_b, [model_endpoint("10.244.3.4")])),
        CONFIG,
        existing_chains=before.active_chains | {"CALI-FOO", "KUBE-SERVICES"},
    )
    assert after.active_chains == {B_SVC, B_SEP_NEW}
    assert after.deleted_chains == (A_SEP, B_SEP, A_SVC)
    lines = after.text.splitlines()
    for chain in after.deleted_chains:
        assert f":{chain} - [0:0]" in lines
        assert f"-X {chain}" in lines
    assert not any("CALI-FOO" in line for line in lines)
    # The deletions come before the NodePort jump, which stays the last rule of KUBE-SERVICES.
    assert lines[-2].endswith("-j KUBE-NODEPORTS")


def b_moved() -> tuple[Rendering, tuple[ServicePortRoute, ...], Rendering]:
    """TWO rendered in full, then b's endpoint moved to 10.244.3.4: (the full rendering
    before, the routes now, the partial rendering of b's change)."""
    svc_a, eps_a = TWO[0]
    svc_b, _ = TWO[1]
    before = render_full(routes(*TWO), CONFIG)
    now = routes((svc_a, eps_a), (svc_b, [model_endpoint("10.244.3.4")]))
    partial = render_partial(now, {svc_b.key}, CONFIG, existing_chains=before.active_chains)
    return before, now, partial


def test_render_partial() -> None:
    before, now, partial = b_moved()
    full = render_full(now, CONFIG, existing_chains=before.active_chains)
    assert partial.partial
    assert partial.active_chains == full.active_chains == {A_SVC, A_SEP, B_SVC, B_SEP_NEW}
    assert partial.deleted_chains == full.deleted_chains == (B_SEP,)
    # Exactly the lines of a's own chains are missing; KUBE-SERVICES still sends to a.
    partial_lines = partial.text.splitlines()
    missing = [line for line in full.text.splitlines() if line not in partial_lines]
    assert missing == [
        f":{A_SVC} - [0:0]",
        f":{A_SEP} - [0:0]",
        f'-A {A_SVC} -m comment --comment "ns1/a:p80 cluster IP" -m tcp -p tcp -d 172.30.0.1 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ',
        f'-A {A_SVC} -m comment --comment "ns1/a:p80 -> 10.244.1.2:8080" -j {A_SEP}',
        f"-A {A_SEP} -m comment --comment ns1/a:p80 -s 10.244.1.2 -j KUBE-MARK-MASQ",
        f"-A {A_SEP} -m comment --comment ns1/a:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080",
    ]
    assert len(partial_lines) == len(full.text.splitlines()) - len(missing)
    assert (
        f'-A KUBE-SERVICES -m comment --comment "ns1/a:p80 cluster IP" -m tcp -p tcp'
        f" -d 172.30.0.1 --dport 80 -j {A_SVC}"
    ) in partial_lines
    assert partial.nat_rules == full.nat_rules - 4
    # Nothing changed: only the fixed chains are written.
    idle = render_partial(now, set(), CONFIG, existing_chains=full.active_chains)
    assert not any(line.startswith((":KUBE-SVC-", ":KUBE-SEP-")) for line in idle.text.splitlines())
    assert idle.deleted_chains == ()
    assert idle.active_chains == full.active_chains


def test_render_partial_of_deleted_service() -> None:
    svc_a, _ = TWO[0]
    before = render_full(routes(*TWO), CONFIG)
    partial = render_partial(
        routes(TWO[1]), {svc_a.key}, CONFIG, existing_chains=before.active_chains
    )
    assert partial.deleted_chains == (A_SEP, A_SVC)
    assert partial.active_chains == {B_SVC, B_SEP}
    assert "ns1/a" not in partial.text


def test_deterministic() -> None:
    everything = routes(
        *TWO,
        (
            model_service("ns0/z", ip="172.30.0.9", external_ips=("192.0.2.1",)),
            [model_endpoint("10.244.9.9")],
        ),
        (model_service("ns9/none", ip="172.30.0.8"), []),
    )
    text = render_full(everything, CONFIG).text
    assert render_full(reversed(everything), CONFIG).text == text
    assert render_full([*everything[1:], everything[0]], CONFIG).text == text


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, "1.0000000000"), (2, "0.5000000000"), (3, "0.3333333333"), (7, "0.1428571429")],
)
def test_probability(n: int, expected: str) -> None:
    assert probability(n) == expected


def test_config_validation() -> None:
    assert IptablesConfig().masquerade_mark == "0x004000"
    assert IptablesConfig(masquerade_bit=0).masquerade_mark == "0x000001"
    bad: list[dict[str, Any]] = [
        {"family": 5},
        {"masquerade_bit": 32},
        {"cluster_cidr": "fd00::/64"},
        {"family": 6, "cluster_cidr": "10.0.0.0/8"},
        {"node_ip": "fd00::1"},
        {"nodeport_ips": ("fd00::1",)},
        {"cluster_cidr": "not-a-cidr"},
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            IptablesConfig(**kw)


# --- jumps, iptables-save, cleanup ---------------------------------------------------------------


def test_jump_rules() -> None:
    by_chain = {(j.table, j.chain, j.target): j.args for j in JUMP_RULES}
    assert by_chain[("nat", "PREROUTING", "KUBE-SERVICES")] == (
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    )
    assert by_chain[("filter", "INPUT", "KUBE-EXTERNAL-SERVICES")] == (
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-m",
        "comment",
        "--comment",
        "kubernetes externally-visible service portals",
        "-j",
        "KUBE-EXTERNAL-SERVICES",
    )
    assert len(JUMP_RULES) == 12


SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:CALI-INPUT - [0:0]
-A INPUT -j CALI-INPUT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
:KUBE-XLB-OLD - [0:0]
COMMIT
"""


def test_saved_chains() -> None:
    assert saved_chains(SAVED) == {
        "filter": {"INPUT", "KUBE-SERVICES", "KUBE-FORWARD", "CALI-INPUT"},
        "nat": {
            "PREROUTING",
            "KUBE-SERVICES",
            "KUBE-MARK-MASQ",
            "KUBE-SVC-XPGD46QRK7WJZT7O",
            "KUBE-SEP-HJ4XRC6RYIVW74AV",
            "KUBE-XLB-OLD",
        },
    }


def test_render_cleanup() -> None:
    assert render_cleanup(saved_chains(SAVED)) == textwrap.dedent("""\
        *filter
        :KUBE-SERVICES - [0:0]
        :KUBE-FORWARD - [0:0]
        -X KUBE-SERVICES
        -X KUBE-FORWARD
        COMMIT
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-SEP-HJ4XRC6RYIVW74AV - [0:0]
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
        -X KUBE-SERVICES
        -X KUBE-MARK-MASQ
        -X KUBE-SEP-HJ4XRC6RYIVW74AV
        -X KUBE-SVC-XPGD46QRK7WJZT7O
        COMMIT
        """)
    assert render_cleanup({"nat": {"PREROUTING"}}) == ""


# --- the real iptables-restore, in a throwaway network namespace --------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    with throwaway_netns("kdns-ipt", ("iptables-restore", "iptables")) as name:
        yield name


def in_netns(ns: str, *argv: str, stdin: str = "") -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"
    return result.stdout


def restore_tool(family: int) -> str:
    return "iptables-restore" if family == 4 else "ip6tables-restore"


@pytest.mark.root
@pytest.mark.parametrize(("routes_", "config", "expected"), CASES)
def test_restore_accepts(
    netns: str, routes_: tuple[ServicePortRoute, ...], config: IptablesConfig, expected: str
) -> None:
    text = render_full(routes_, config).text
    tool = restore_tool(config.family)
    in_netns(netns, tool, "--test", "--noflush", stdin=text)
    # --test (nf_tables backend) does not resolve jump targets; a real restore, into this
    # namespace's empty tables, does.
    in_netns(netns, tool, "--noflush", stdin=text)


@pytest.mark.root
def test_restore_check_is_not_vacuous(netns: str) -> None:
    bad = [
        "-A KUBE-SERVICES -m statistic --mode random --probability 1.5 -j RETURN",
        "-A KUBE-SERVICES -m tcp -p udp --dport 80 -j RETURN",
        "-A KUBE-SERVICES -j KUBE-SVC-MISSING",
    ]
    for rule in bad:
        text = f"*nat\n:KUBE-SERVICES - [0:0]\n{rule}\nCOMMIT\n"
        result = subprocess.run(
            ["ip", "netns", "exec", netns, "iptables-restore", "--noflush"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0, rule


def nat_lines(ns: str, chain: str) -> list[str]:
    save = in_netns(ns, "iptables-save", "-t", "nat")
    return [line for line in save.splitlines() if line.startswith(f"-A {chain} ")]


@pytest.mark.root
def test_sync_sequence_in_netns(netns: str) -> None:
    """Full, partial, stale deletion and cleanup applied for real; a foreign chain survives."""
    foreign = "*nat\n:CALI-NAT - [0:0]\n-A CALI-NAT -s 192.0.2.0/24 -j RETURN\nCOMMIT\n"
    in_netns(netns, "iptables-restore", "--noflush", stdin=foreign)

    svc_a, eps_a = TWO[0]
    svc_b, _ = TWO[1]
    full = render_full(routes(*TWO), CONFIG)
    in_netns(netns, "iptables-restore", "--noflush", stdin=full.text)
    nat = saved_chains(in_netns(netns, "iptables-save"))["nat"]
    assert full.active_chains <= nat

    a_rules = {c: nat_lines(netns, c) for c in (A_SVC, A_SEP)}

    # b's endpoint moves: a partial restore rewrites b and leaves a's chains as they were.
    now = routes((svc_a, eps_a), (svc_b, [model_endpoint("10.244.3.4")]))
    partial = render_partial(now, {svc_b.key}, CONFIG, existing_chains=full.active_chains)
    in_netns(netns, "iptables-restore", "--noflush", stdin=partial.text)
    nat = saved_chains(in_netns(netns, "iptables-save"))["nat"]
    assert partial.active_chains <= nat
    assert B_SEP not in nat
    for chain, rules in a_rules.items():
        assert nat_lines(netns, chain) == rules

    # a is deleted.
    gone = render_partial(
        routes((svc_b, [model_endpoint("10.244.3.4")])),
        {svc_a.key},
        CONFIG,
        existing_chains=partial.active_chains,
    )
    in_netns(netns, "iptables-restore", "--noflush", stdin=gone.text)
    nat = saved_chains(in_netns(netns, "iptables-save"))["nat"]
    assert {c for c in nat if c.startswith(("KUBE-SVC-", "KUBE-SEP-"))} == {B_SVC, B_SEP_NEW}

    # Jumps in, then cleanup: jumps out with -D, then the restore removes every chain of ours.
    for jump in JUMP_RULES:
        in_netns(netns, "iptables", "-t", jump.table, "-I", jump.chain, *jump.args)
    for jump in JUMP_RULES:
        in_netns(netns, "iptables", "-t", jump.table, "-D", jump.chain, *jump.args)
    cleanup = render_cleanup(saved_chains(in_netns(netns, "iptables-save")))
    in_netns(netns, "iptables-restore", "--noflush", stdin=cleanup)
    saved = saved_chains(in_netns(netns, "iptables-save"))
    assert not any(c.startswith("KUBE-") for chains in saved.values() for c in chains)
    assert nat_lines(netns, "CALI-NAT") == ["-A CALI-NAT -s 192.0.2.0/24 -j RETURN"]


def test_rendering_is_frozen() -> None:
    rendering = render_full((), CONFIG)
    assert isinstance(rendering, Rendering)
    with pytest.raises(AttributeError):
        rendering.text = ""  # type: ignore[misc]


# --- partial syncs leave out the fixed chains that did not change -------------------------------


def test_omit_unchanged_leaves_out_only_fixed_chains_that_did_not_change() -> None:
    from kdns.proxy.iptables import chain_rules, fixed_chain_rules, omit_unchanged

    config = IptablesConfig(cluster_cidr=PODS)
    web = model_service("ns/web", ip="10.96.0.20")
    before = render_full(routes((web, [model_endpoint("10.244.1.5")])), config)
    applied = fixed_chain_rules(chain_rules(before.text))
    # An endpoint replaced: KUBE-SERVICES and the other fixed chains are as they were.
    moved = render_partial(
        routes((web, [model_endpoint("10.244.1.6")])), {web.key}, config, before.active_chains
    )
    text = omit_unchanged(moved.text, applied)
    assert ":KUBE-SERVICES" not in text and "-A KUBE-SERVICES" not in text
    assert "--to-destination 10.244.1.6:8080" in text
    # A new Service: KUBE-SERVICES changes, so it is sent (whole, as kube-proxy sends it).
    api = model_service("ns/api", ip="10.96.0.30")
    grown = render_partial(
        routes((web, [model_endpoint("10.244.1.6")]), (api, [model_endpoint("10.244.2.7")])),
        {api.key},
        config,
        moved.active_chains,
    )
    text = omit_unchanged(grown.text, applied)
    assert ":KUBE-SERVICES - [0:0]" in text.split("*nat", 1)[1]
    assert text.count("-A KUBE-SERVICES") == grown.text.count("-A KUBE-SERVICES")


def test_partial_syncs_without_unchanged_chains_reach_the_full_state() -> None:
    """A history of partial syncs through the data plane leaves the kernel as one full restore
    of the final state does (both in namespaces of their own)."""
    from kdns.proxy.dataplane import IptablesDataplane, Node, run_command

    node = Node(families=(4,), cluster_cidrs=(PODS,))
    services = [model_service(f"ns/s{i}", ip=f"10.96.0.{i + 10}") for i in range(4)]
    history = [
        {0: ["10.244.1.5"], 1: ["10.244.1.6", "10.244.2.6"]},
        {0: ["10.244.1.7"], 1: ["10.244.1.6", "10.244.2.6"]},  # an endpoint replaced
        {0: ["10.244.1.7"], 1: [], 2: ["10.244.3.3"]},  # 1 loses all, 2 appears
        {1: ["10.244.1.9"], 2: ["10.244.3.3"], 3: ["10.244.4.4", "10.244.4.5"]},  # 0 goes
    ]

    def state(step: dict[int, list[str]]):
        return routes(
            *((services[i], [model_endpoint(a) for a in addrs]) for i, addrs in step.items())
        )

    with (
        throwaway_netns("kdns-ipt-a", ("iptables-restore", "iptables")) as a,
        throwaway_netns("kdns-ipt-b", ("iptables-restore", "iptables")) as b,
    ):

        def runner_in(ns: str):
            return lambda argv, stdin=None: run_command(["ip", "netns", "exec", ns, *argv], stdin)

        plane = IptablesDataplane(node, runner_in(a))
        previous: dict[int, list[str]] = {}
        for step in history:
            changed = {services[i].key for i in set(step) | set(previous)}
            plane.sync(state(step), None if not previous else changed)
            previous = step
        fresh = IptablesDataplane(node, runner_in(b))
        fresh.sync(state(history[-1]), None)

        def nat(ns: str) -> list[str]:
            save = in_netns(ns, "iptables-save", "-t", "nat")
            return sorted(x for x in save.splitlines() if x.startswith(("-A", ":KUBE")))

        assert nat(a) == nat(b)
        assert plane.intact()


# --- what a sync replaces is freed a step at a time ----------------------------------------------


def test_releasing_the_previous_rendering_leaves_the_next_one_whole() -> None:
    # The data plane releases the rendering it replaces: the next render starts from the new
    # one's chains, which share no container with it.
    before, _, partial = b_moved()
    svc_b, _ = TWO[1]
    text = partial.text
    release(before)
    assert before.active_chains == frozenset()
    assert partial.text == text
    assert partial.active_chains == {A_SVC, A_SEP, B_SVC, B_SEP_NEW}
    # b moves back: its chain of 10.244.3.4 is stale against the new rendering's chains.
    later = render_partial(routes(*TWO), {svc_b.key}, CONFIG, partial.active_chains)
    assert later.deleted_chains == (B_SEP_NEW,)
    assert later.active_chains == {A_SVC, A_SEP, B_SVC, B_SEP}


@pytest.mark.parametrize(
    "entries",
    [
        [f"-A KUBE-SEP-{i}" for i in range(2000)],
        {("nat", f"KUBE-SEP-{i}"): (f"-A KUBE-SEP-{i}",) for i in range(2000)},
        [],
    ],
    ids=["rules", "chain rules", "empty"],
)
def test_release_entries_empties_lists_and_dicts(entries: Any) -> None:
    release_entries(entries)
    assert len(entries) == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "\n\n",
        "COMMIT",
        "*nat\nCOMMIT\n",
        # Longer than one step, with lines across its boundary and one longer than a step.
        "\n".join(
            f"-A KUBE-SEP-{i} -j DNAT --to-destination 10.244.{i % 256}.1:8080" for i in range(5000)
        ),
        "x" * 70_000 + "\n" + "y" * 10 + "\n",
        "\n" * 70_001,
    ],
    ids=[
        "empty",
        "newline",
        "two newlines",
        "one line",
        "small",
        "5000 lines",
        "long line",
        "only newlines",
    ],
)
def test_split_lines_is_str_split(text: str) -> None:
    assert list(split_lines(text)) == text.split("\n")


def test_a_large_render_is_whole_line_by_line() -> None:
    # 700 Services: the text is joined in steps of a few hundred lines; no line may be lost,
    # doubled, merged with its neighbour or left empty at a step's edge.
    many = routes(
        *(
            (
                model_service(f"ns1/s{i}", ip=f"172.30.{i // 250}.{i % 250 + 1}"),
                [model_endpoint(f"10.244.{i // 250}.{i % 250 + 1}")],
            )
            for i in range(700)
        )
    )
    rendering = render_full(many, CONFIG)
    lines = rendering.text.split("\n")
    assert lines[-1] == "" and all(lines[:-1])
    assert lines.count("*filter") == lines.count("*nat") == 1 and lines.count("COMMIT") == 2
    rules = [line for line in lines if line.startswith("-A ")]
    assert len(rules) == rendering.filter_rules + rendering.nat_rules
    # Every -A line holds one rule (a merged line would hold a second "-A").
    assert all(" -A " not in rule for rule in rules)
    declared = [line for line in lines if line.startswith(":")]
    # The fixed chains, then a KUBE-SVC- and a KUBE-SEP- chain per Service.
    chains = chain_rules(rendering.text)
    assert len(declared) == 5 + 4 + 2 * 700 == len(chains)  # each (table, chain) once
    services = chains[("nat", "KUBE-SERVICES")]
    assert len(services) == 700 + 1  # each ClusterIP, then the jump to KUBE-NODEPORTS
    assert len(rendering.active_chains) == 2 * 700


_JUMPS = (
    JumpRule("filter", "INPUT", "KUBE-NODEPORTS", "health checks"),
    JumpRule("filter", "FORWARD", "KUBE-FORWARD", "forwarding"),
    JumpRule("nat", "PREROUTING", "KUBE-SERVICES", "portals"),
)


@pytest.mark.parametrize(
    ("text", "save", "expected"),
    [
        (
            "*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n",
            # The FORWARD jump is there already; the others are inserted, the canary declared.
            "*filter\n-A FORWARD -m comment --comment forwarding -j KUBE-FORWARD\nCOMMIT\n",
            """\
            *filter
            :KUBE-FORWARD - [0:0]
            -I INPUT 1 -m comment --comment "health checks" -j KUBE-NODEPORTS
            :KDNS-CANARY - [0:0]
            COMMIT
            *nat
            :KUBE-SERVICES - [0:0]
            -I PREROUTING 1 -m comment --comment portals -j KUBE-SERVICES
            :KDNS-CANARY - [0:0]
            COMMIT
            """,
        ),
        (
            # No nat section in the input: one is added after the others.
            "*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n",
            "",
            """\
            *filter
            :KUBE-FORWARD - [0:0]
            -I INPUT 1 -m comment --comment "health checks" -j KUBE-NODEPORTS
            -I FORWARD 1 -m comment --comment forwarding -j KUBE-FORWARD
            :KDNS-CANARY - [0:0]
            COMMIT
            *nat
            -I PREROUTING 1 -m comment --comment portals -j KUBE-SERVICES
            :KDNS-CANARY - [0:0]
            COMMIT
            """,
        ),
        (
            "",
            "",
            """\
            *filter
            -I INPUT 1 -m comment --comment "health checks" -j KUBE-NODEPORTS
            -I FORWARD 1 -m comment --comment forwarding -j KUBE-FORWARD
            :KDNS-CANARY - [0:0]
            COMMIT
            *nat
            -I PREROUTING 1 -m comment --comment portals -j KUBE-SERVICES
            :KDNS-CANARY - [0:0]
            COMMIT
            """,
        ),
    ],
    ids=["both sections", "no nat section", "empty input"],
)
def test_with_jumps_inserts_the_missing_jumps_and_the_canary(
    text: str, save: str, expected: str
) -> None:
    from kdns.proxy.dataplane import with_jumps

    assert with_jumps(text, save, _JUMPS) == textwrap.dedent(expected)

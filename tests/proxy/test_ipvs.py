"""kdns.proxy.ipvs: routes → IPVS services, kube-ipvs0 addresses, ipsets and iptables rules;
`ipvsadm -Sn` parsing; the diff, checked by applying it to `IpvsModel` (tests/proxy/ipvs_model).

The kernel here has no IPVS, so nothing runs ipvsadm: the golden cases state kube-proxy's IPVS
mode (pkg/proxy/ipvs/proxier.go syncProxyRules, writeIptablesRules) as `ipvsadm -Sn` text, set
contents and `iptables-restore` text, and the property tests drive the model with the diff's
own commands. Hypothesis runs are derandomised and keep no example database.
"""

from __future__ import annotations

import ipaddress
import textwrap
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdns.model import Endpoint, EndpointPort, Service, ServicePort
from kdns.proxy.ipvs.diff import IpvsPlan, batch_commands, diff
from kdns.proxy.ipvs.ipset import IPSETS, parse_ipset_save, render_ipset_restore
from kdns.proxy.ipvs.ipvsadm import format_save, parse_ipvsadm_save
from kdns.proxy.ipvs.kernel import UNAVAILABLE_MESSAGE, ipvs_available, parse_ip_addr_show
from kdns.proxy.ipvs.rules import JUMP_RULES, IpvsConfig, render
from kdns.proxy.ipvs.state import IpvsParseError, IpvsState, RealServer, VirtualKey, VirtualService
from kdns.proxy.routes import ServicePortRoute, build_routes
from tests.builders import model_endpoint, model_service
from tests.proxy.builders import NODE, PODS, routes
from tests.proxy.ipvs_model import IpvsCommandError, IpvsModel

NODE_IP = "192.168.1.10"
CONFIG = IpvsConfig(local_ips=(NODE_IP, "127.0.0.1"), node_ips=(NODE_IP,), cluster_cidrs=(PODS,))
NODEPORT = (("p80", "TCP", 80, 30080),)

# --- building routes ---------------------------------------------------------------------------


def text(block: str) -> str:
    """A dedented block of lines, ending in a newline (or "" when empty)."""
    lines = [line for line in textwrap.dedent(block).strip("\n").splitlines() if line.strip()]
    return "".join(f"{line}\n" for line in lines)


# --- the expected iptables text ----------------------------------------------------------------

NAT_HEAD = """\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"""
CLUSTER_MASQ = """\
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"""
NAT_MIDDLE = """\
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ"""
ACCEPT_CLUSTER = """\
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"""
ACCEPT_LB = """\
-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT"""
NAT_TAIL = """\
-A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000
COMMIT"""
FILTER_HEAD = """\
*filter
:KUBE-FORWARD - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]"""
SOURCE_RANGES_DROP = "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP"
FILTER_TAIL = """\
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x004000/0x004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
COMMIT"""


def restore(
    *,
    nat_sets: str = "",
    masq: str = CLUSTER_MASQ,
    external: str = "",
    accept: str = ACCEPT_CLUSTER,
    filter_sets: str = "",
    out_filter: str = "",
) -> str:
    """The IPv4 input for `CONFIG` around a case's lines, in writeIptablesRules' order: the set
    rules, the ClusterIP masquerade, the externalIP rules, the fixed jumps, the ACCEPTs."""
    parts = [NAT_HEAD, nat_sets, masq, external, NAT_MIDDLE, accept, NAT_TAIL]
    parts += [FILTER_HEAD, filter_sets, SOURCE_RANGES_DROP, out_filter, FILTER_TAIL]
    return "".join(text(p) for p in parts)


# --- golden cases ------------------------------------------------------------------------------

CASES = [
    pytest.param(
        routes(
            (
                model_service("ns1/svc1"),
                [model_endpoint("10.244.1.2"), model_endpoint("10.244.2.3", node=NODE)],
            )
        ),
        CONFIG,
        # One virtual service on the ClusterIP, a masqueraded real server per endpoint (weight
        # 1), the ClusterIP bound to kube-ipvs0; the local endpoint gets a hairpin entry.
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -a -t 172.30.0.41:80 -r 10.244.2.3:8080 -m -w 1
        """,
        {"172.30.0.41"},
        {
            "KUBE-LOOP-BACK": ["10.244.2.3,tcp:8080,10.244.2.3"],
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80"],
            "KUBE-IPVS-IPS": ["172.30.0.41"],
        },
        # The whole input, written out once.
        """
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-NODE-PORT - [0:0]
        :KUBE-LOAD-BALANCER - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        -A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
        -A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
        -A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
        -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
        -A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
        -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
        -A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN
        -A KUBE-POSTROUTING -j MARK --xor-mark 0x004000
        -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x004000
        COMMIT
        *filter
        :KUBE-FORWARD - [0:0]
        :KUBE-NODE-PORT - [0:0]
        :KUBE-PROXY-FIREWALL - [0:0]
        :KUBE-SOURCE-RANGES-FIREWALL - [0:0]
        :KUBE-IPVS-FILTER - [0:0]
        :KUBE-IPVS-OUT-FILTER - [0:0]
        -A KUBE-SOURCE-RANGES-FIREWALL -j DROP
        -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x004000/0x004000 -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        -A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
        -A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
        COMMIT
        """,
        id="clusterip-two-endpoints",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/svc1",
                    session_affinity="ClientIP",
                    affinity_timeout=10800,
                    external_ips=("192.0.2.10",),
                ),
                [model_endpoint("10.244.1.2"), model_endpoint("10.244.2.3")],
            ),
            (
                model_service(
                    "ns1/svc2", ip="172.30.0.42", session_affinity="ClientIP", affinity_timeout=60
                ),
                [model_endpoint("10.244.1.2")],
            ),
        ),
        CONFIG,
        # ClientIP affinity is IPVS persistence with the Service's timeout, on every virtual
        # service of the port (the externalIP's too).
        """
        -A -t 172.30.0.41:80 -s rr -p 10800
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -a -t 172.30.0.41:80 -r 10.244.2.3:8080 -m -w 1
        -A -t 172.30.0.42:80 -s rr -p 60
        -a -t 172.30.0.42:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 192.0.2.10:80 -s rr -p 10800
        -a -t 192.0.2.10:80 -r 10.244.1.2:8080 -m -w 1
        -a -t 192.0.2.10:80 -r 10.244.2.3:8080 -m -w 1
        """,
        {"172.30.0.41", "172.30.0.42", "192.0.2.10"},
        {
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80", "172.30.0.42,tcp:80"],
            "KUBE-EXTERNAL-IP": ["192.0.2.10,tcp:80"],
            "KUBE-IPVS-IPS": ["172.30.0.41", "172.30.0.42", "192.0.2.10"],
        },
        None,
        id="affinity-persistence",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/svc1", type="NodePort", ports=(*NODEPORT, ("dns", "UDP", 53, 30053))
                ),
                [model_endpoint("10.244.1.2", ports=(("p80", "TCP", 8080), ("dns", "UDP", 5353)))],
            )
        ),
        CONFIG,
        # NodePort: a virtual service per node address (not 127.0.0.1: no localhost NodePorts),
        # node addresses are not bound; the bitmap sets mark NodePort traffic for masquerade.
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 192.168.1.10:30080 -s rr
        -a -t 192.168.1.10:30080 -r 10.244.1.2:8080 -m -w 1
        -A -u 172.30.0.41:53 -s rr
        -a -u 172.30.0.41:53 -r 10.244.1.2:5353 -m -w 1
        -A -u 192.168.1.10:30053 -s rr
        -a -u 192.168.1.10:30053 -r 10.244.1.2:5353 -m -w 1
        """,
        {"172.30.0.41"},
        {
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80", "172.30.0.41,udp:53"],
            "KUBE-NODE-PORT-TCP": ["30080"],
            "KUBE-NODE-PORT-UDP": ["30053"],
            "KUBE-IPVS-IPS": ["172.30.0.41"],
        },
        restore(
            nat_sets="""
            -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
            -A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ
            """
        ),
        id="nodeport",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", external_ips=("192.0.2.10", NODE_IP)),
                [model_endpoint("10.244.1.2")],
            )
        ),
        CONFIG,
        # externalIPs: a virtual service each; one that is already a node address is served
        # but not bound to kube-ipvs0. The set masquerades them and accepts outside traffic.
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 192.0.2.10:80 -s rr
        -a -t 192.0.2.10:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 192.168.1.10:80 -s rr
        -a -t 192.168.1.10:80 -r 10.244.1.2:8080 -m -w 1
        """,
        {"172.30.0.41", "192.0.2.10"},
        {
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80"],
            "KUBE-EXTERNAL-IP": ["192.0.2.10,tcp:80", "192.168.1.10,tcp:80"],
            "KUBE-IPVS-IPS": ["172.30.0.41", "192.0.2.10"],
        },
        restore(
            external="""
            -A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ
            -A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT
            -A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -m addrtype --dst-type LOCAL -j ACCEPT
            """
        ),
        id="external-ips",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/open",
                    type="LoadBalancer",
                    ports=NODEPORT,
                    load_balancer_ips=("198.51.100.7",),
                    load_balancer_source_ranges=("192.168.1.0/24", "203.0.113.5/32"),
                ),
                [model_endpoint("10.244.1.2")],
            ),
            (
                model_service(
                    "ns1/shut",
                    ip="172.30.0.42",
                    type="LoadBalancer",
                    ports=(("https", "TCP", 443, 30443),),
                    load_balancer_ips=("198.51.100.8",),
                    load_balancer_source_ranges=("203.0.113.0/24",),
                ),
                [model_endpoint("10.244.1.3", ports=(("https", "TCP", 8443),))],
            ),
        ),
        CONFIG,
        # LB ingress IPs with loadBalancerSourceRanges: KUBE-PROXY-FIREWALL sends the FW set to
        # KUBE-SOURCE-RANGES-FIREWALL, which returns for listed sources and drops the rest. The
        # node's IP is in one of "open"'s ranges, so the LB IP is admitted as a source; "shut"
        # leaves the node out, so the node itself is denied its LB IP (#119656). A /32 range is
        # written as ipset prints it, without the prefix.
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 172.30.0.42:443 -s rr
        -a -t 172.30.0.42:443 -r 10.244.1.3:8443 -m -w 1
        -A -t 192.168.1.10:30080 -s rr
        -a -t 192.168.1.10:30080 -r 10.244.1.2:8080 -m -w 1
        -A -t 192.168.1.10:30443 -s rr
        -a -t 192.168.1.10:30443 -r 10.244.1.3:8443 -m -w 1
        -A -t 198.51.100.7:80 -s rr
        -a -t 198.51.100.7:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 198.51.100.8:443 -s rr
        -a -t 198.51.100.8:443 -r 10.244.1.3:8443 -m -w 1
        """,
        {"172.30.0.41", "172.30.0.42", "198.51.100.7", "198.51.100.8"},
        {
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80", "172.30.0.42,tcp:443"],
            "KUBE-LOAD-BALANCER": ["198.51.100.7,tcp:80", "198.51.100.8,tcp:443"],
            "KUBE-LOAD-BALANCER-FW": ["198.51.100.7,tcp:80", "198.51.100.8,tcp:443"],
            "KUBE-LOAD-BALANCER-SOURCE-IP": ["198.51.100.7,tcp:80,198.51.100.7"],
            "KUBE-LOAD-BALANCER-SOURCE-CIDR": [
                "198.51.100.7,tcp:80,192.168.1.0/24",
                "198.51.100.7,tcp:80,203.0.113.5",
                "198.51.100.8,tcp:443,203.0.113.0/24",
            ],
            "KUBE-NODE-PORT-TCP": ["30080", "30443"],
            "KUBE-IPVS-IPS": ["172.30.0.41", "172.30.0.42", "198.51.100.7", "198.51.100.8"],
        },
        restore(
            nat_sets="""
            -A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
            -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
            """,
            accept=ACCEPT_CLUSTER + "\n" + ACCEPT_LB,
            filter_sets="""
            -A KUBE-PROXY-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port for load balancer with sourceRange" -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL
            -A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source cidr for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN
            -A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source IP for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN
            """,
            out_filter="""
            -A KUBE-IPVS-OUT-FILTER -s 198.51.100.8 -m ipvs --vaddr 198.51.100.8 --vproto tcp --vport 443 -j DROP
            """,
        ),
        id="lb-source-ranges",
    ),
    pytest.param(
        routes(
            (
                model_service(
                    "ns1/lb-local",
                    type="LoadBalancer",
                    ports=NODEPORT,
                    load_balancer_ips=("198.51.100.7",),
                    external_traffic_policy="Local",
                    health_check_node_port=32000,
                ),
                [model_endpoint("10.244.1.2"), model_endpoint("10.244.2.3", node=NODE)],
            ),
            (
                model_service("ns1/itp-local", ip="172.30.0.42", internal_traffic_policy="Local"),
                [model_endpoint("10.244.1.4")],
            ),
            (
                model_service(
                    "ns1/etp-no-local",
                    ip="172.30.0.43",
                    type="NodePort",
                    ports=(("p80", "TCP", 80, 30081),),
                    external_traffic_policy="Local",
                ),
                [model_endpoint("10.244.1.5")],
            ),
        ),
        CONFIG,
        # externalTrafficPolicy Local: the LB IP and NodePort services get the local endpoint
        # only, and the -LOCAL sets exempt them from masquerade (the client's address is kept);
        # the ClusterIP still spreads over all. internalTrafficPolicy Local with no local
        # endpoint: no real servers. externalTrafficPolicy Local with no local endpoint: every
        # endpoint, so pods keep access (kube-proxy PR #97081). The health-check node port is
        # accepted.
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -a -t 172.30.0.41:80 -r 10.244.2.3:8080 -m -w 1
        -A -t 172.30.0.42:80 -s rr
        -A -t 172.30.0.43:80 -s rr
        -a -t 172.30.0.43:80 -r 10.244.1.5:8080 -m -w 1
        -A -t 192.168.1.10:30080 -s rr
        -a -t 192.168.1.10:30080 -r 10.244.2.3:8080 -m -w 1
        -A -t 192.168.1.10:30081 -s rr
        -a -t 192.168.1.10:30081 -r 10.244.1.5:8080 -m -w 1
        -A -t 198.51.100.7:80 -s rr
        -a -t 198.51.100.7:80 -r 10.244.2.3:8080 -m -w 1
        """,
        {"172.30.0.41", "172.30.0.42", "172.30.0.43", "198.51.100.7"},
        {
            "KUBE-LOOP-BACK": ["10.244.2.3,tcp:8080,10.244.2.3"],
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80", "172.30.0.42,tcp:80", "172.30.0.43,tcp:80"],
            "KUBE-LOAD-BALANCER": ["198.51.100.7,tcp:80"],
            "KUBE-LOAD-BALANCER-LOCAL": ["198.51.100.7,tcp:80"],
            "KUBE-NODE-PORT-TCP": ["30080", "30081"],
            "KUBE-NODE-PORT-LOCAL-TCP": ["30080", "30081"],
            "KUBE-HEALTH-CHECK-NODE-PORT": ["32000"],
            "KUBE-IPVS-IPS": ["172.30.0.41", "172.30.0.42", "172.30.0.43", "198.51.100.7"],
        },
        restore(
            nat_sets="""
            -A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
            -A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
            -A KUBE-LOAD-BALANCER -m comment --comment "Kubernetes service load balancer ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN
            -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN
            -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
            """,
            accept=ACCEPT_CLUSTER + "\n" + ACCEPT_LB,
        ),
        id="local-policies",
    ),
    pytest.param(
        routes(
            (model_service("ns2/dns", ports=(("", "UDP", 53, None),), ip="172.30.0.42"), []),
            (
                model_service("ns3/np", type="NodePort", ports=NODEPORT, ip="172.30.0.43"),
                [model_endpoint("10.244.1.2", ready=False, serving=False)],
            ),
        ),
        CONFIG,
        # No usable endpoint: the virtual services exist with no real servers, and IPVS
        # refuses the connection itself (kube-proxy PR #72534): no REJECT rule.
        """
        -A -t 172.30.0.43:80 -s rr
        -A -t 192.168.1.10:30080 -s rr
        -A -u 172.30.0.42:53 -s rr
        """,
        {"172.30.0.42", "172.30.0.43"},
        {
            "KUBE-CLUSTER-IP": ["172.30.0.42,udp:53", "172.30.0.43,tcp:80"],
            "KUBE-NODE-PORT-TCP": ["30080"],
            "KUBE-IPVS-IPS": ["172.30.0.42", "172.30.0.43"],
        },
        restore(
            nat_sets="""
            -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
            """
        ),
        id="no-endpoints",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/svc1", ip="172.30.0.41"),
                [
                    model_endpoint("10.244.1.2", ready=False, serving=True, terminating=True),
                    model_endpoint("10.244.1.3", ready=False, serving=True, terminating=True),
                    model_endpoint("10.244.1.4", ready=False, serving=False, terminating=True),
                ],
            ),
            (
                model_service("ns1/svc2", ip="172.30.0.42"),
                [
                    model_endpoint("10.244.2.2"),
                    model_endpoint("10.244.2.3", ready=False, serving=True, terminating=True),
                ],
            ),
        ),
        CONFIG,
        # Terminating endpoints (KEP-1669): used, if serving, only when none is ready.
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -a -t 172.30.0.41:80 -r 10.244.1.3:8080 -m -w 1
        -A -t 172.30.0.42:80 -s rr
        -a -t 172.30.0.42:80 -r 10.244.2.2:8080 -m -w 1
        """,
        {"172.30.0.41", "172.30.0.42"},
        {
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80", "172.30.0.42,tcp:80"],
            "KUBE-IPVS-IPS": ["172.30.0.41", "172.30.0.42"],
        },
        None,
        id="terminating-fallback",
    ),
    pytest.param(
        routes(
            (
                model_service("ns1/a", external_ips=("192.0.2.10",)),
                [model_endpoint("10.244.1.2")],
            ),
            (
                model_service("ns1/b", ip="172.30.0.42", external_ips=("192.0.2.10",)),
                [model_endpoint("10.244.1.3")],
            ),
        ),
        CONFIG,
        # Two Services claim 192.0.2.10:80: the first in route order keeps it.
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 172.30.0.42:80 -s rr
        -a -t 172.30.0.42:80 -r 10.244.1.3:8080 -m -w 1
        -A -t 192.0.2.10:80 -s rr
        -a -t 192.0.2.10:80 -r 10.244.1.2:8080 -m -w 1
        """,
        {"172.30.0.41", "172.30.0.42", "192.0.2.10"},
        {
            "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80", "172.30.0.42,tcp:80"],
            "KUBE-EXTERNAL-IP": ["192.0.2.10,tcp:80"],
            "KUBE-IPVS-IPS": ["172.30.0.41", "172.30.0.42", "192.0.2.10"],
        },
        None,
        id="shared-vip-first-wins",
    ),
]


@pytest.mark.parametrize(("route_set", "config", "save", "addresses", "ipsets", "iptables"), CASES)
def test_golden(
    route_set: tuple[ServicePortRoute, ...],
    config: IpvsConfig,
    save: str,
    addresses: set[str],
    ipsets: dict[str, list[str]],
    iptables: str | None,
) -> None:
    rendering = render(route_set, config)
    assert format_save(rendering.state) == text(save)
    assert rendering.state.addresses == addresses
    assert rendering.state.device
    assert {n: sorted(v) for n, v in rendering.ipsets[4].items() if v} == ipsets
    # Every set is rendered, empty or not: the filter rules name them all.
    assert list(rendering.ipsets[4]) == [spec.name for spec in IPSETS]
    if iptables is not None:
        assert rendering.iptables[4] == text(iptables)
    assert list(rendering.ipsets) == list(rendering.iptables) == [4]


def test_dual_stack() -> None:
    config = IpvsConfig(
        families=(4, 6),
        local_ips=(NODE_IP, "fd01::10", "127.0.0.1", "::1"),
        node_ips=(NODE_IP, "fd01::10"),
        cluster_cidrs=(PODS, "fd00:10:244::/64"),
    )
    service = model_service(
        "ns1/svc1", type="NodePort", ports=NODEPORT, ip=("172.30.0.41", "fd00::41")
    )
    rendering = render(
        routes(
            (service, [model_endpoint("10.244.1.2"), model_endpoint("fd00:10:244::2", node=NODE)])
        ),
        config,
    )
    # One IPVS table for both families, IPv4 first; IPv6 addresses in brackets.
    assert format_save(rendering.state) == text(
        """
        -A -t 172.30.0.41:80 -s rr
        -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
        -A -t 192.168.1.10:30080 -s rr
        -a -t 192.168.1.10:30080 -r 10.244.1.2:8080 -m -w 1
        -A -t [fd00::41]:80 -s rr
        -a -t [fd00::41]:80 -r [fd00:10:244::2]:8080 -m -w 1
        -A -t [fd01::10]:30080 -s rr
        -a -t [fd01::10]:30080 -r [fd00:10:244::2]:8080 -m -w 1
        """
    )
    assert rendering.state.addresses == {"172.30.0.41", "fd00::41"}
    assert {n: sorted(v) for n, v in rendering.ipsets[4].items() if v} == {
        "KUBE-CLUSTER-IP": ["172.30.0.41,tcp:80"],
        "KUBE-NODE-PORT-TCP": ["30080"],
        "KUBE-IPVS-IPS": ["172.30.0.41"],
    }
    # IPv6 sets are "KUBE-6-…" (cut to 31 characters), with their own contents.
    assert {n: sorted(v) for n, v in rendering.ipsets[6].items() if v} == {
        "KUBE-6-LOOP-BACK": ["fd00:10:244::2,tcp:8080,fd00:10:244::2"],
        "KUBE-6-CLUSTER-IP": ["fd00::41,tcp:80"],
        "KUBE-6-NODE-PORT-TCP": ["30080"],
        "KUBE-6-IPVS-IPS": ["fd00::41"],
    }
    assert "KUBE-6-LOAD-BALANCER-SOURCE-CID" in rendering.ipsets[6]
    assert "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS" in rendering.ipsets[6]
    assert rendering.iptables[6] == text(
        """
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-NODE-PORT - [0:0]
        :KUBE-LOAD-BALANCER - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        -A KUBE-SERVICES -s ::1/128 -j RETURN
        -A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-6-LOOP-BACK dst,dst,src -j MASQUERADE
        -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-6-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
        -A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-6-CLUSTER-IP dst,dst ! -s fd00:10:244::/64 -j KUBE-MARK-MASQ
        -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
        -A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
        -A KUBE-SERVICES -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j ACCEPT
        -A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN
        -A KUBE-POSTROUTING -j MARK --xor-mark 0x004000
        -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x004000
        COMMIT
        *filter
        :KUBE-FORWARD - [0:0]
        :KUBE-NODE-PORT - [0:0]
        :KUBE-PROXY-FIREWALL - [0:0]
        :KUBE-SOURCE-RANGES-FIREWALL - [0:0]
        :KUBE-IPVS-FILTER - [0:0]
        :KUBE-IPVS-OUT-FILTER - [0:0]
        -A KUBE-SOURCE-RANGES-FIREWALL -j DROP
        -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x004000/0x004000 -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        -A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-6-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-6-LOAD-BALANCER dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-6-EXTERNAL-IP dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-6-EXTERNAL-IP-LOCAL dst,dst -j RETURN
        -A KUBE-IPVS-FILTER -m set --match-set KUBE-6-HEALTH-CHECK-NODE-PORT dst -j RETURN
        -A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-6-IPVS-IPS dst -j REJECT
        COMMIT
        """
    )
    # A single-stack proxier leaves the other family out entirely.
    v4_only = render(
        routes((service, [model_endpoint("10.244.1.2")])), replace_config(config, families=(4,))
    )
    assert all(s.family == 4 for s in v4_only.state.services.values())
    assert list(v4_only.iptables) == [4]


def replace_config(config: IpvsConfig, **changes: Any) -> IpvsConfig:
    fields = {name: getattr(config, name) for name in IpvsConfig.__dataclass_fields__}
    return IpvsConfig(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {"masquerade_all": True},
            '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ',
        ),
        (
            {"cluster_cidrs": ()},
            # No local-traffic detector: masquerade node traffic sourced from a VIP instead.
            '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ',
        ),
        (
            {"masquerade_bit": 1, "random_fully": False},
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x000002',
        ),
    ],
)
def test_masquerade_options(changes: dict[str, Any], line: str) -> None:
    rendering = render(
        routes((model_service("ns1/svc1"), [model_endpoint("10.244.1.2")])),
        replace_config(CONFIG, **changes),
    )
    assert line in rendering.iptables[4]


def test_no_invalid_drop_with_liberal_conntrack() -> None:
    config = replace_config(CONFIG, conntrack_tcp_be_liberal=True)
    assert "INVALID" not in render(routes(), config).iptables[4]
    assert "INVALID" in render(routes(), CONFIG).iptables[4]


@pytest.mark.parametrize(
    ("scheduler", "line"),
    [
        ("rr", "-A -t 172.30.0.41:80 -s rr"),
        ("lc", "-A -t 172.30.0.41:80 -s lc"),
        # mh gets kube-proxy's FlagSourceHash (flag-2): the source port is hashed too.
        ("mh", "-A -t 172.30.0.41:80 -s mh -b mh-port"),
    ],
)
def test_scheduler(scheduler: str, line: str) -> None:
    config = replace_config(CONFIG, scheduler=scheduler)
    rendering = render(routes((model_service("ns1/svc1"), [model_endpoint("10.244.1.2")])), config)
    assert format_save(rendering.state).splitlines()[0] == line


def test_nodeport_addresses() -> None:
    # --nodeport-addresses picks the addresses; loopback is skipped even when listed.
    config = replace_config(
        CONFIG, local_ips=(NODE_IP, "10.0.0.10"), nodeport_ips=("10.0.0.10", "127.0.0.1")
    )
    rendering = render(
        routes((model_service("ns1/svc1", type="NodePort", ports=NODEPORT), [])), config
    )
    assert sorted(k for k in rendering.state.services if k[2] == 30080) == [
        ("TCP", "10.0.0.10", 30080)
    ]
    # No node address at all: no NodePort services and no NodePort set entries.
    rendering = render(
        routes((model_service("ns1/svc1", type="NodePort", ports=NODEPORT), [])), IpvsConfig()
    )
    assert list(rendering.state.services) == [("TCP", "172.30.0.41", 80)]
    assert not rendering.ipsets[4]["KUBE-NODE-PORT-TCP"]


def test_sctp_nodeport_uses_hash_sets() -> None:
    service = model_service(
        "ns1/svc1",
        type="NodePort",
        ports=(("s", "SCTP", 9000, 30900),),
        external_traffic_policy="Local",
    )
    rendering = render(
        routes((service, [model_endpoint("10.244.1.2", ports=(("s", "SCTP", 9000),))])), CONFIG
    )
    sets = rendering.ipsets[4]
    assert sets["KUBE-NODE-PORT-SCTP-HASH"] == {"192.168.1.10,sctp:30900"}
    assert sets["KUBE-NODE-PORT-LOCAL-SCTP-HASH"] == {"192.168.1.10,sctp:30900"}
    assert (
        '-A KUBE-NODE-PORT -p sctp -m comment --comment "Kubernetes nodeport SCTP port with'
        " externalTrafficPolicy=local with type 'hash ip:port'\" -m set --match-set"
        " KUBE-NODE-PORT-LOCAL-SCTP-HASH dst,dst -j RETURN"
    ) in rendering.iptables[4]
    assert "-A --sctp-service 192.168.1.10:30900 -s rr\n" in format_save(rendering.state)


def test_external_ip_local_policy() -> None:
    service = model_service(
        "ns1/svc1",
        type="NodePort",
        ports=NODEPORT,
        external_ips=("192.0.2.10",),
        external_traffic_policy="Local",
    )
    rendering = render(routes((service, [model_endpoint("10.244.1.2", node=NODE)])), CONFIG)
    assert rendering.ipsets[4]["KUBE-EXTERNAL-IP-LOCAL"] == {"192.0.2.10,tcp:80"}
    assert not rendering.ipsets[4]["KUBE-EXTERNAL-IP"]
    # Accepted, but not marked for masquerade: the client's address is kept.
    rules = [
        line for line in rendering.iptables[4].splitlines() if "KUBE-EXTERNAL-IP-LOCAL" in line
    ]
    assert [r.rsplit(" -j ", 1)[1] for r in rules if r.startswith("-A KUBE-SERVICES")] == [
        "ACCEPT",
        "ACCEPT",
    ]


def test_jump_rules() -> None:
    assert [(j.table, j.chain, j.target) for j in JUMP_RULES] == [
        ("nat", "OUTPUT", "KUBE-SERVICES"),
        ("nat", "PREROUTING", "KUBE-SERVICES"),
        ("nat", "POSTROUTING", "KUBE-POSTROUTING"),
        ("filter", "FORWARD", "KUBE-FORWARD"),
        ("filter", "INPUT", "KUBE-NODE-PORT"),
        ("filter", "INPUT", "KUBE-PROXY-FIREWALL"),
        ("filter", "FORWARD", "KUBE-PROXY-FIREWALL"),
        ("filter", "INPUT", "KUBE-IPVS-FILTER"),
        ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER"),
    ]
    assert JUMP_RULES[0].args == (
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    )


# --- ipsets ------------------------------------------------------------------------------------

# `ipset save` as ipset 7.17 prints it (bucketsize and initval included).
IPSET_SAVE = """\
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1f6669ff
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x8697ac8d
add KUBE-CLUSTER-IP 172.30.0.41,tcp:80
add KUBE-CLUSTER-IP 172.30.0.99,tcp:80
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create OTHER hash:ip family inet hashsize 1024 maxelem 65536
add OTHER 10.1.1.1
"""


def test_ipset_restore() -> None:
    current = parse_ipset_save(IPSET_SAVE)
    assert current["KUBE-CLUSTER-IP"] == {"172.30.0.41,tcp:80", "172.30.0.99,tcp:80"}
    assert current["KUBE-LOOP-BACK"] == frozenset()
    desired = render(
        routes(
            (
                model_service("ns1/svc1", type="NodePort", ports=NODEPORT),
                [model_endpoint("10.244.1.2")],
            )
        ),
        CONFIG,
    ).ipsets[4]
    script = render_ipset_restore(4, desired, current)
    # Every set is created if missing; entries change one by one, never by flushing; sets
    # that are not IPVS mode's (OTHER) are left alone.
    creates = [line for line in script.splitlines() if line.startswith("create ")]
    assert len(creates) == len(IPSETS)
    assert creates[1] == (
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist"
    )
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist" in creates
    assert [line for line in script.splitlines() if not line.startswith("create ")] == [
        "del KUBE-CLUSTER-IP 172.30.0.99,tcp:80 -exist",
        "add KUBE-IPVS-IPS 172.30.0.41 -exist",
    ]
    # From nothing: everything is added.
    fresh = render_ipset_restore(4, desired, {})
    assert "add KUBE-CLUSTER-IP 172.30.0.41,tcp:80 -exist" in fresh.splitlines()
    # Converged: only the (idempotent) creates remain.
    assert all(
        line.startswith("create ")
        for line in render_ipset_restore(4, desired, desired).splitlines()
    )
    v6 = render_ipset_restore(6, {}, {})
    assert "create KUBE-6-IPVS-IPS hash:ip family inet6 hashsize 1024 maxelem 65536 -exist" in v6
    with pytest.raises(ValueError, match="KUBE-CLUSTER-IP"):
        render_ipset_restore(6, {"KUBE-CLUSTER-IP": {"fd00::1,tcp:80"}}, {})
    with pytest.raises(IpvsParseError, match="line 2"):
        parse_ipset_save("create A hash:ip\nflush A\n")


# --- ipvsadm -Sn parsing -----------------------------------------------------------------------


def vs(key: str, *reals: RealServer, **settings: Any) -> VirtualService:
    """ "TCP 10.0.0.1:80" → a VirtualService (scheduler rr unless given)."""
    protocol, address = key.split()
    host, _, port = address.rpartition(":")
    return VirtualService(
        protocol, host.strip("[]"), int(port), **{"scheduler": "rr", **settings}, reals=reals
    )


PARSE_CASES = [
    pytest.param(
        """
        -A -t 10.96.0.1:443 -s rr
        -a -t 10.96.0.1:443 -r 10.0.0.5:6443 -m -w 1
        """,
        [vs("TCP 10.96.0.1:443", RealServer("10.0.0.5", 6443))],
        id="clusterip",
    ),
    pytest.param(
        """
        -A -u 10.96.0.10:53 -s rr -p 10800
        -a -u 10.96.0.10:53 -r 10.244.0.5:53 -m -w 1
        -a -u 10.96.0.10:53 -r 10.244.0.6:53 -m -w 1
        """,
        [
            vs(
                "UDP 10.96.0.10:53",
                RealServer("10.244.0.5", 53),
                RealServer("10.244.0.6", 53),
                persistence=10800,
            )
        ],
        id="udp-persistent",
    ),
    pytest.param(
        """
        -A -u [fd00::10]:53 -s rr
        -a -u [fd00::10]:53 -r [fd00:10:244::5]:53 -m -w 1
        """,
        [vs("UDP [fd00::10]:53", RealServer("fd00:10:244::5", 53))],
        id="ipv6",
    ),
    pytest.param(
        "-A --sctp-service 10.96.0.20:9000 -s rr\n",
        [vs("SCTP 10.96.0.20:9000")],
        id="sctp",
    ),
    pytest.param(
        """
        -A -t 10.96.0.1:443 -s wlc -p 300 -M 255.255.255.0
        -A -t [fd00::1]:443 -s rr -p 60 -M 64
        -A -t 10.96.0.2:443 -s rr -p 60 -M 255.255.255.255
        """,
        [
            vs("TCP 10.96.0.1:443", scheduler="wlc", persistence=300, netmask="255.255.255.0"),
            vs("TCP [fd00::1]:443", persistence=60, netmask="64"),
            # A host mask is the default, which ipvsadm does not print.
            vs("TCP 10.96.0.2:443", persistence=60),
        ],
        id="persistence-netmask",
    ),
    pytest.param(
        """
        -A -t 10.96.0.1:443 -s mh -b mh-fallback,mh-port
        -A -t 10.96.0.2:443 -s sh -b sh-port
        -A -t 10.96.0.3:443 -s rr -b flag-3
        """,
        [
            vs("TCP 10.96.0.1:443", scheduler="mh", sched_flags=3),
            vs("TCP 10.96.0.2:443", scheduler="sh", sched_flags=2),
            vs("TCP 10.96.0.3:443", sched_flags=4),
        ],
        id="sched-flags",
    ),
    pytest.param(
        """
        -A -u 10.96.0.10:53 -s rr ops
        -A -u 10.96.0.11:53 -s rr -o
        """,
        [
            vs("UDP 10.96.0.10:53", one_packet=True),
            vs("UDP 10.96.0.11:53", one_packet=True),
        ],
        id="one-packet",
    ),
    pytest.param(
        """
        -A -t 10.1.1.1:80 -s wlc
        -a -t 10.1.1.1:80 -r 10.1.1.2:80 -g -w 5
        -a -t 10.1.1.1:80 -r 10.1.1.3:80 -i -w 0
        -a -t 10.1.1.1:80 -r 10.1.1.4:8080 -m -w 1 -x 100 -y 10
        """,
        [
            vs(
                "TCP 10.1.1.1:80",
                RealServer("10.1.1.2", 80, weight=5, forward="g"),
                RealServer("10.1.1.3", 80, weight=0, forward="i"),
                RealServer("10.1.1.4", 8080, u_threshold=100, l_threshold=10),
                scheduler="wlc",
            )
        ],
        id="forwarding-weights-thresholds",
    ),
    pytest.param(
        """
        -A -t 10.0.0.1:80
        -a -t 10.0.0.1:80 -r 10.0.0.2:8080
        -A -t 10.0.0.3:80 -p
        """,
        # ipvsadm's defaults: scheduler wlc; direct routing; weight 1; persistence 300 s. A
        # saved line is the kernel's state: its port is kept even for direct routing.
        [
            vs("TCP 10.0.0.1:80", RealServer("10.0.0.2", 8080, forward="g"), scheduler="wlc"),
            vs("TCP 10.0.0.3:80", scheduler="wlc", persistence=300),
        ],
        id="defaults",
    ),
    pytest.param(
        """
        # a comment, then blank lines

        -A -f 100 -s rr
        -a -f 100 -r 10.0.0.1:0 -g -w 1
        -A -u 10.96.0.10:53 -s rr
        -A -t 10.96.0.10:53 -s rr
        -a -u 10.96.0.10:53 -r 10.244.0.5:53 -m -w 1
        -A -f 7 -6 -s rr
        """,
        # Firewall-mark services are not kdns's: skipped. Real servers may follow any service.
        [vs("UDP 10.96.0.10:53", RealServer("10.244.0.5", 53)), vs("TCP 10.96.0.10:53")],
        id="fwmark-skipped-any-order",
    ),
    pytest.param(
        "--add-service --tcp-service 10.0.0.1:80 --scheduler=rr\n"
        "--add-server --tcp-service 10.0.0.1:80 --real-server 10.0.0.2:80 --masquerading --weight 2\n",
        [vs("TCP 10.0.0.1:80", RealServer("10.0.0.2", 80, weight=2))],
        id="long-options",
    ),
    pytest.param("", [], id="empty"),
]


@pytest.mark.parametrize(("save", "services"), PARSE_CASES)
def test_parse_ipvsadm_save(save: str, services: list[VirtualService]) -> None:
    state = parse_ipvsadm_save(textwrap.dedent(save), addresses=["10.96.0.1"])
    assert state == IpvsState.of(services, addresses=["10.96.0.1"])


@pytest.mark.parametrize(
    ("save", "line", "message"),
    [
        ("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1\n", 1, "unlisted service"),
        ("-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.1:80 -s wlc\n", 2, "listed twice"),
        (
            "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m\n"
            "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g\n",
            3,
            "listed twice",
        ),
        ("-D -t 10.0.0.1:80\n", 1, "not ipvsadm -S output"),
        ("-A -t example.com:80 -s rr\n", 1, "illegal virtual server address"),
        ("-A -t 10.0.0.1:80 -s rr --pe sip\n", 1, "invalid option `--pe'"),
        ("-A -t 10.0.0.1:80 -s rr -r 10.0.0.2\n", 1, "Illegal 'real-server' option"),
        ("\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w 70000\n", 2, "illegal weight"),
        ("-A -t 10.0.0.1:80 -s rr -p 0\n", 1, "invalid timeout value `0'"),
        ("-A -t 10.0.0.1 -s rr\n", 1, "Zero port specified for non-persistent service"),
        ("-A -t 10.0.0.1:80 -s rr -p 60 -M 255.255.0\n", 1, "illegal netmask '255.255.0'"),
        ("-A -t [fd00::1]:80 -s rr -p 60 -M 129\n", 1, "illegal netmask '129'"),
        ("-A -t 10.0.0.1:80 -s rr extra\n", 1, "unexpected argument extra"),
    ],
)
def test_parse_ipvsadm_save_errors(save: str, line: int, message: str) -> None:
    with pytest.raises(IpvsParseError, match=message) as raised:
        parse_ipvsadm_save(save)
    assert raised.value.line == line


def test_save_round_trip() -> None:
    save = text(
        """
        -A -t 10.96.0.1:443 -s rr -p 10800
        -a -t 10.96.0.1:443 -r 10.0.0.5:6443 -m -w 1
        -a -t 10.96.0.1:443 -r 10.0.0.6:6443 -m -w 0
        -A -t 10.96.0.2:80 -s mh -b mh-port -p 60 -M 255.255.0.0
        -a -t 10.96.0.2:80 -r 10.0.0.7:80 -g -w 3 -x 10 -y 2
        -A -u 10.96.0.10:53 -s rr -o
        -A --sctp-service 10.96.0.20:9000 -s wlc
        -A -t [fd00::1]:443 -s rr -p 60 -M 64
        -a -t [fd00::1]:443 -r [fd00::5]:6443 -m -w 1
        """
    )
    assert format_save(parse_ipvsadm_save(save)) == save


def test_parse_ip_addr_show() -> None:
    out = (
        "7: kube-ipvs0    inet 10.96.0.1/32 scope global kube-ipvs0\\       valid_lft forever"
        " preferred_lft forever\n"
        "7: kube-ipvs0    inet6 fd00:0::10/128 scope global \\       valid_lft forever"
        " preferred_lft forever\n"
    )
    assert parse_ip_addr_show(out) == {"10.96.0.1", "fd00::10"}
    assert parse_ip_addr_show("") == frozenset()


# --- the model ---------------------------------------------------------------------------------


def ipvsadm(*args: str) -> list[str]:
    return ["ipvsadm", *" ".join(args).split()]


def started(save: str = "", addresses: Sequence[str] = ()) -> IpvsModel:
    return IpvsModel(parse_ipvsadm_save(text(save), addresses))


@pytest.mark.parametrize(
    ("save", "argv", "message", "status"),
    [
        (
            "-A -t 10.0.0.1:80 -s rr",
            ipvsadm("-A -t 10.0.0.1:80 -s rr"),
            "Service already exists",
            255,
        ),
        ("", ipvsadm("-D -t 10.0.0.1:80"), "No such service", 255),
        ("", ipvsadm("-E -t 10.0.0.1:80 -s rr"), "No such service", 255),
        ("", ipvsadm("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m"), "Service not defined", 255),
        (
            "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1",
            ipvsadm("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1"),
            "Destination already exists",
            255,
        ),
        (
            "-A -t 10.0.0.1:80 -s rr",
            ipvsadm("-d -t 10.0.0.1:80 -r 10.0.0.2:80"),
            "No such destination",
            255,
        ),
        (
            "-A -t 10.0.0.1:80 -s rr",
            ipvsadm("-e -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1"),
            "No such destination",
            255,
        ),
        ("", ipvsadm("-A -t 10.0.0.1:80 -s fastest"), "Scheduler not found", 255),
        (
            "-A -t 10.0.0.1:80 -s rr",
            ipvsadm("-a -t 10.0.0.1:80 -r [fd00::2]:80 -m"),
            "Invalid operation",
            255,
        ),
        ("", ipvsadm("-A -s rr"), "You need to supply the 'service-address' option", 2),
        ("", ipvsadm("-a -t 10.0.0.1:80 -r 10.0.0.2 -s rr"), "Illegal 'scheduler' option", 2),
        ("", ipvsadm("-A -t 10.0.0.1:80 -s rr -s wlc"), "multiple 'scheduler' options", 2),
        ("", ipvsadm("-A -D -t 10.0.0.1:80"), "multiple commands", 2),
        ("", ipvsadm("-A -t 10.0.0.1:0 -s rr"), "Zero port specified", 2),
        ("", ipvsadm("-A -t 10.0.0.1:80 -s rr -o"), "only for UDP", 2),
        ("", ipvsadm("-A -t 10.0.0.1:80 -s"), "missing argument", 2),
        ("", ipvsadm("-A -f 5 -s rr"), "firewall-mark", 2),
        ("", ipvsadm("-A -t [fd00::1]:80 -s rr -p -M 0"), "illegal netmask '0'", 2),
    ],
)
def test_model_errors(save: str, argv: list[str], message: str, status: int) -> None:
    model = started(save)
    before = model.state
    with pytest.raises(IpvsCommandError, match=message) as raised:
        model.apply(argv)
    assert raised.value.status == status
    assert model.state == before  # a failed command changes nothing


def test_model_ip_commands() -> None:
    model = IpvsModel()
    assert not model.state.device
    with pytest.raises(IpvsCommandError, match='Cannot find device "kube-ipvs0"') as raised:
        model.apply(["ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"])
    assert raised.value.status == 1
    model.apply(["ip", "link", "add", "kube-ipvs0", "type", "dummy"])
    with pytest.raises(IpvsCommandError, match="File exists"):
        model.apply(["ip", "link", "add", "kube-ipvs0", "type", "dummy"])
    model.apply(["ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"])
    model.apply(["ip", "addr", "add", "fd00::1/128", "dev", "kube-ipvs0"])
    with pytest.raises(IpvsCommandError, match="File exists") as raised:
        model.apply(["ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"])
    assert raised.value.status == 2
    with pytest.raises(IpvsCommandError, match="Cannot assign requested address"):
        model.apply(["ip", "addr", "del", "10.96.0.2/32", "dev", "kube-ipvs0"])
    with pytest.raises(IpvsCommandError, match="Cannot assign requested address"):
        model.apply(["ip", "addr", "del", "10.96.0.1/24", "dev", "kube-ipvs0"])
    with pytest.raises(IpvsCommandError, match="kube-ipvs0 only"):
        model.apply(["ip", "addr", "add", "10.96.0.9/32", "dev", "eth0"])
    assert model.state.addresses == {"10.96.0.1", "fd00::1"}
    model.apply(["ip", "addr", "del", "10.96.0.1/32", "dev", "kube-ipvs0"])
    assert model.state.addresses == {"fd00::1"}
    model.apply(["ip", "link", "del", "kube-ipvs0"])  # its addresses go with it
    assert model.state == IpvsState(device=False)


def test_model_follows_ipvsadm_defaults() -> None:
    model = IpvsModel()
    model.apply(ipvsadm("-A -t 10.0.0.1:80"))  # wlc
    model.apply(ipvsadm("-a -t 10.0.0.1:80 -r 10.0.0.2:8080"))  # DR: the service's port
    model.apply(ipvsadm("-a -t 10.0.0.1:80 -r 10.0.0.3 -m -w 4"))  # no port: the service's
    model.apply(ipvsadm("-A -u 10.0.0.1:53 -s rr -p"))  # persistence 300
    assert model.save() == text(
        """
        -A -t 10.0.0.1:80 -s wlc
        -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1
        -a -t 10.0.0.1:80 -r 10.0.0.3:80 -m -w 4
        -A -u 10.0.0.1:53 -s rr -p 300
        """
    )
    # -E and -e reset what they are not given: persistence goes, the weight returns to 1 and
    # the forwarding method to direct routing.
    model.apply(ipvsadm("-E -u 10.0.0.1:53"))
    model.apply(ipvsadm("-e -t 10.0.0.1:80 -r 10.0.0.3:80"))
    assert model.save() == text(
        """
        -A -t 10.0.0.1:80 -s wlc
        -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1
        -a -t 10.0.0.1:80 -r 10.0.0.3:80 -g -w 1
        -A -u 10.0.0.1:53 -s wlc
        """
    )
    model.apply(ipvsadm("-d -t 10.0.0.1:80 -r 10.0.0.2"))
    model.apply(ipvsadm("-D -u 10.0.0.1:53"))
    assert model.save() == "-A -t 10.0.0.1:80 -s wlc\n-a -t 10.0.0.1:80 -r 10.0.0.3:80 -g -w 1\n"
    model.apply(ipvsadm("-Sn"))  # prints, changes nothing
    model.apply(ipvsadm("-C"))
    assert model.save() == ""
    assert model.applied == 10


def test_model_sorts_like_ipvsadm() -> None:
    model = IpvsModel()
    for argv in (
        "-A -t [fd00::1]:80 -s rr",
        "-A --sctp-service 10.0.0.1:80 -s rr",
        "-A -u 10.0.0.1:80 -s rr",
        "-A -t 10.0.0.10:80 -s rr",
        "-A -t 10.0.0.9:8080 -s rr",
        "-A -t 10.0.0.9:443 -s rr",
        "-a -t 10.0.0.9:443 -r 10.1.0.10:1 -m",
        "-a -t 10.0.0.9:443 -r 10.1.0.9:2 -m",
        "-a -t 10.0.0.9:443 -r 10.1.0.9:1 -m",
    ):
        model.apply(ipvsadm(argv))
    # AF_INET first, then by protocol number (TCP, UDP, SCTP), address, port.
    assert model.save() == text(
        """
        -A -t 10.0.0.9:443 -s rr
        -a -t 10.0.0.9:443 -r 10.1.0.9:1 -m -w 1
        -a -t 10.0.0.9:443 -r 10.1.0.9:2 -m -w 1
        -a -t 10.0.0.9:443 -r 10.1.0.10:1 -m -w 1
        -A -t 10.0.0.9:8080 -s rr
        -A -t 10.0.0.10:80 -s rr
        -A -u 10.0.0.1:80 -s rr
        -A --sctp-service 10.0.0.1:80 -s rr
        -A -t [fd00::1]:80 -s rr
        """
    )


# --- the diff ----------------------------------------------------------------------------------


def key_of(argv: Sequence[str]) -> VirtualKey:
    """The virtual service an ipvsadm argv names."""
    protocol = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP"}[argv[2]]
    host, _, port = argv[3].rpartition(":")
    return (protocol, ipaddress.ip_address(host.strip("[]")).compressed, int(port))


def real_of(argv: Sequence[str]) -> tuple[str, int]:
    host, _, port = argv[argv.index("-r") + 1].rpartition(":")
    return (ipaddress.ip_address(host.strip("[]")).compressed, int(port))


def expected_after(current: IpvsState, desired: IpvsState, config: IpvsConfig) -> IpvsState:
    """What a sync must leave: `desired`, plus what it must not touch (other families' services
    and addresses, services inside the exclude CIDRs)."""
    services = dict(desired.services)
    for key, service in current.services.items():
        kept = service.family not in config.families or config.excluded(service.ip)
        if key not in services and kept:
            services[key] = service
    addresses = desired.addresses | {
        a for a in current.addresses if (6 if ":" in a else 4) not in config.families
    }
    return IpvsState(services, addresses, True)


def assert_untouched(current: IpvsState, desired: IpvsState, plan: IpvsPlan) -> None:
    """No command for a service whose settings are already right, nor for a real server that
    is already right: established connections through them survive the sync."""
    for argv in plan.commands:
        if argv[0] != "ipvsadm":
            continue
        key = key_of(argv)
        have, want = current.services.get(key), desired.services.get(key)
        if argv[1] == "-A":
            assert have is None
        elif argv[1] == "-E":
            assert have is not None and want is not None and not have.same_settings(want)
        elif argv[1] == "-D":
            assert want is None
        else:
            real = real_of(argv)
            old = {r.key: r for r in have.reals}.get(real) if have else None
            new = {r.key: r for r in want.reals}.get(real) if want else None
            assert old is None or old != new, f"{argv} touches an unchanged real server"


def check_sync(current: IpvsState, desired: IpvsState, config: IpvsConfig) -> IpvsPlan:
    plan = diff(current, desired, config)
    model = IpvsModel(current)
    model.apply_all(plan.commands)
    after = expected_after(current, desired, config)
    assert model.state == after
    # Converged: nothing more to do, and a state needs nothing to become itself.
    assert not diff(model.state, desired, config)
    assert not diff(desired, desired, config)
    assert_untouched(current, desired, plan)
    # The same commands as batches (ipvsadm -R, ip -batch -) do the same.
    batched = IpvsModel(current)
    for argv, stdin in batch_commands(plan.commands):
        batched.apply(argv, stdin)
    assert batched.state == after
    # What the model prints reads back as the same table.
    assert parse_ipvsadm_save(model.save(), model.state.addresses) == model.state
    return plan


def test_diff_from_nothing() -> None:
    rendering = render(
        routes(
            (
                model_service("ns1/svc1", type="NodePort", ports=NODEPORT),
                [model_endpoint("10.244.1.2")],
            )
        ),
        CONFIG,
    )
    plan = check_sync(IpvsState(device=False), rendering.state, CONFIG)
    # The device first, then the services with their real servers, then the binds: an address
    # becomes local only once IPVS has a service for it.
    assert plan.setup == [
        ["ip", "link", "add", "kube-ipvs0", "type", "dummy"],
        ipvsadm("-A -t 172.30.0.41:80 -s rr"),
        ipvsadm("-a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1"),
        ipvsadm("-A -t 192.168.1.10:30080 -s rr"),
        ipvsadm("-a -t 192.168.1.10:30080 -r 10.244.1.2:8080 -m -w 1"),
        ["ip", "addr", "add", "172.30.0.41/32", "dev", "kube-ipvs0"],
    ]
    assert plan.cleanup == []
    assert batch_commands(plan.commands) == [
        (["ip", "-batch", "-"], "link add kube-ipvs0 type dummy\n"),
        (
            ["ipvsadm", "-R"],
            "-A -t 172.30.0.41:80 -s rr\n"
            "-a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1\n"
            "-A -t 192.168.1.10:30080 -s rr\n"
            "-a -t 192.168.1.10:30080 -r 10.244.1.2:8080 -m -w 1\n",
        ),
        (["ip", "-batch", "-"], "addr add 172.30.0.41/32 dev kube-ipvs0\n"),
    ]


def test_diff_endpoint_replaced_adds_before_deleting() -> None:
    before = render(
        routes(
            (
                model_service("ns1/svc1"),
                [model_endpoint("10.244.1.2"), model_endpoint("10.244.1.3")],
            )
        ),
        CONFIG,
    )
    after = render(
        routes(
            (
                model_service("ns1/svc1"),
                [model_endpoint("10.244.1.3"), model_endpoint("10.244.1.4")],
            )
        ),
        CONFIG,
    )
    plan = check_sync(before.state, after.state, CONFIG)
    # 10.244.1.3 is untouched; the new one is in before the old one goes, so the service is
    # never without a real server.
    assert plan.commands == [
        ipvsadm("-a -t 172.30.0.41:80 -r 10.244.1.4:8080 -m -w 1"),
        ipvsadm("-d -t 172.30.0.41:80 -r 10.244.1.2:8080"),
    ]


def test_diff_settings_change_edits_in_place() -> None:
    before = render(routes((model_service("ns1/svc1"), [model_endpoint("10.244.1.2")])), CONFIG)
    sticky = model_service("ns1/svc1", session_affinity="ClientIP", affinity_timeout=600)
    after = render(routes((sticky, [model_endpoint("10.244.1.2")])), CONFIG)
    plan = check_sync(before.state, after.state, CONFIG)
    # -E keeps the service and its real servers (and their connections): no delete and add.
    assert plan.commands == [ipvsadm("-E -t 172.30.0.41:80 -s rr -p 600")]
    plan = check_sync(after.state, before.state, CONFIG)
    assert plan.commands == [ipvsadm("-E -t 172.30.0.41:80 -s rr")]


def test_diff_repairs_weights_left_by_graceful_termination() -> None:
    current = parse_ipvsadm_save(
        text(
            """
            -A -t 172.30.0.41:80 -s rr
            -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 0
            -a -t 172.30.0.41:80 -r 10.244.1.3:8080 -g -w 1
            """
        ),
        ["172.30.0.41"],
    )
    desired = render(
        routes(
            (
                model_service("ns1/svc1"),
                [model_endpoint("10.244.1.2"), model_endpoint("10.244.1.3")],
            )
        ),
        CONFIG,
    )
    plan = check_sync(current, desired.state, CONFIG)
    assert plan.commands == [
        ipvsadm("-e -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1"),
        ipvsadm("-e -t 172.30.0.41:80 -r 10.244.1.3:8080 -m -w 1"),
    ]


def test_diff_removes_deleted_service_after_unbinding() -> None:
    both = render(
        routes(
            (model_service("ns1/svc1"), [model_endpoint("10.244.1.2")]),
            (model_service("ns1/svc2", ip="172.30.0.42", type="NodePort", ports=NODEPORT), []),
        ),
        CONFIG,
    )
    one = render(routes((model_service("ns1/svc1"), [model_endpoint("10.244.1.2")])), CONFIG)
    plan = check_sync(both.state, one.state, CONFIG)
    assert plan.setup == []
    assert plan.cleanup == [
        ["ip", "addr", "del", "172.30.0.42/32", "dev", "kube-ipvs0"],
        ipvsadm("-D -t 172.30.0.42:80"),
        ipvsadm("-D -t 192.168.1.10:30080"),
    ]


def test_diff_keeps_excluded_and_other_family_services() -> None:
    # A keepalived service inside --ipvs-exclude-cidrs, and IPv6 state of a dual-stack node
    # whose IPv6 proxier is another process: neither is this proxier's to delete.
    current = parse_ipvsadm_save(
        text(
            """
            -A -t 10.200.0.1:80 -s wlc
            -a -t 10.200.0.1:80 -r 10.200.0.2:80 -g -w 1
            -A -t 172.30.0.99:80 -s rr
            -A -t [fd00::99]:80 -s rr
            """
        ),
        ["172.30.0.99", "fd00::99"],
    )
    config = replace_config(CONFIG, exclude_cidrs=("10.200.0.0/16",))
    desired = render(routes((model_service("ns1/svc1"), [])), config)
    plan = check_sync(current, desired.state, config)
    assert plan.cleanup == [
        ["ip", "addr", "del", "172.30.0.99/32", "dev", "kube-ipvs0"],
        ipvsadm("-D -t 172.30.0.99:80"),
    ]


# --- the node DNS's takeover of the kube-dns ClusterIP -----------------------------------------
#
# `kdns proxy --mode ipvs --dns 172.30.0.10,169.254.20.10` once the node DNS answers: the kube-dns
# ClusterIP's port 53 is the node DNS's socket, not IPVS's (kdns/proxy/nodedns.py).

KUBE_DNS_IP = "172.30.0.10"
KUBE_DNS_PORTS = (("dns", "UDP", 53, None), ("dns-tcp", "TCP", 53, None))
METRICS_PORT = (("metrics", "TCP", 9153, None),)
TAKEN = replace_config(CONFIG, node_dns=(KUBE_DNS_IP, "169.254.20.10"))


def kube_dns_routes() -> tuple[ServicePortRoute, ...]:
    """kubeadm's kube-dns Service (53/UDP, 53/TCP, 9153/TCP) and one other Service."""
    kube_dns = model_service(
        "kube-system/kube-dns", ip=KUBE_DNS_IP, ports=KUBE_DNS_PORTS + METRICS_PORT
    )
    central = model_endpoint(
        "10.244.2.5", ports=(("dns", "UDP", 53), ("dns-tcp", "TCP", 53), ("metrics", "TCP", 9153))
    )
    web = model_service("ns1/svc1")
    return routes((kube_dns, [central]), (web, [model_endpoint("10.244.1.2")]))


KUBE_DNS_SAVE = """
    -A -t 172.30.0.10:53 -s rr
    -a -t 172.30.0.10:53 -r 10.244.2.5:53 -m -w 1
    -A -t 172.30.0.10:9153 -s rr
    -a -t 172.30.0.10:9153 -r 10.244.2.5:9153 -m -w 1
    -A -t 172.30.0.41:80 -s rr
    -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
    -A -u 172.30.0.10:53 -s rr
    -a -u 172.30.0.10:53 -r 10.244.2.5:53 -m -w 1
"""
# Taken over: the :53 virtual services are gone; 9153 and the other Service are as before.
TAKEN_SAVE = """
    -A -t 172.30.0.10:9153 -s rr
    -a -t 172.30.0.10:9153 -r 10.244.2.5:9153 -m -w 1
    -A -t 172.30.0.41:80 -s rr
    -a -t 172.30.0.41:80 -r 10.244.1.2:8080 -m -w 1
"""
TAKEN_FILTER = [
    '-A KUBE-IPVS-FILTER -d 172.30.0.10/32 -p tcp -m tcp --dport 53 -m comment --comment "kdns node DNS" -j RETURN',
    '-A KUBE-IPVS-FILTER -d 172.30.0.10/32 -p udp -m udp --dport 53 -m comment --comment "kdns node DNS" -j RETURN',
]


@pytest.mark.parametrize(
    ("config", "save", "cluster_ip_set"),
    [
        pytest.param(
            CONFIG,
            KUBE_DNS_SAVE,
            [
                "172.30.0.10,tcp:53",
                "172.30.0.10,tcp:9153",
                "172.30.0.10,udp:53",
                "172.30.0.41,tcp:80",
            ],
            id="no-takeover",
        ),
        pytest.param(
            TAKEN, TAKEN_SAVE, ["172.30.0.10,tcp:9153", "172.30.0.41,tcp:80"], id="taken-over"
        ),
    ],
)
def test_node_dns_takeover_renders(
    config: IpvsConfig, save: str, cluster_ip_set: list[str]
) -> None:
    rendering = render(kube_dns_routes(), config)
    assert format_save(rendering.state) == text(save)
    # The address stays on kube-ipvs0 either way: it must be local for the node DNS's socket,
    # and 9153 still needs it there for IPVS.
    assert rendering.state.addresses == {KUBE_DNS_IP, "172.30.0.41"}
    sets = rendering.ipsets[4]
    assert sorted(sets["KUBE-IPVS-IPS"]) == [KUBE_DNS_IP, "172.30.0.41"]
    # Not in KUBE-CLUSTER-IP: no masquerade mark and no ACCEPT for DNS to the node DNS.
    assert sorted(sets["KUBE-CLUSTER-IP"]) == cluster_ip_set


def test_node_dns_takeover_lets_port_53_through_the_ipvs_filter() -> None:
    without = render(kube_dns_routes(), CONFIG).iptables[4].splitlines()
    taken = render(kube_dns_routes(), TAKEN).iptables[4].splitlines()
    # KUBE-IPVS-FILTER rejects new connections to a kube-ipvs0 address on a port no set names
    # (#72236): the node DNS's port 53 is let through just before that REJECT; nothing else
    # changes, and no rule DNATs, marks or masquerades the address.
    reject = next(i for i, line in enumerate(without) if line.endswith("-j REJECT"))
    assert taken == [*without[:reject], *TAKEN_FILTER, *without[reject:]]
    assert not [line for line in taken if KUBE_DNS_IP in line and line not in TAKEN_FILTER]


def test_node_dns_takeover_only_the_clusterip_port_53() -> None:
    # The node DNS answers on an address whose Service has DNS on port 5353 and a NodePort on
    # 53's ports: only the ClusterIP's port 53 is the node DNS's.
    odd = model_service(
        "ns1/dns",
        ip=KUBE_DNS_IP,
        type="NodePort",
        ports=(("dns", "UDP", 53, 30053), ("alt", "UDP", 5353, None)),
    )
    endpoint = model_endpoint("10.244.2.5", ports=(("dns", "UDP", 53), ("alt", "UDP", 5353)))
    rendering = render(routes((odd, [endpoint])), TAKEN)
    assert format_save(rendering.state) == text(
        """
        -A -u 172.30.0.10:5353 -s rr
        -a -u 172.30.0.10:5353 -r 10.244.2.5:5353 -m -w 1
        -A -u 192.168.1.10:30053 -s rr
        -a -u 192.168.1.10:30053 -r 10.244.2.5:53 -m -w 1
        """
    )
    assert sorted(rendering.ipsets[4]["KUBE-NODE-PORT-UDP"]) == ["30053"]


def test_node_dns_takeover_dual_stack() -> None:
    config = replace_config(
        TAKEN,
        families=(4, 6),
        local_ips=(NODE_IP, "fd01::10"),
        node_ips=(NODE_IP, "fd01::10"),
        cluster_cidrs=(PODS, "fd00:10:244::/64"),
        node_dns=(KUBE_DNS_IP, "fd00::10"),
    )
    kube_dns = model_service(
        "kube-system/kube-dns", ip=(KUBE_DNS_IP, "fd00::10"), ports=KUBE_DNS_PORTS
    )
    rendering = render(routes((kube_dns, [])), config)
    assert rendering.state.services == {}
    assert rendering.state.addresses == {KUBE_DNS_IP, "fd00::10"}
    assert [line for line in rendering.iptables[6].splitlines() if "kdns node DNS" in line] == [
        '-A KUBE-IPVS-FILTER -d fd00::10/128 -p tcp -m tcp --dport 53 -m comment --comment "kdns node DNS" -j RETURN',
        '-A KUBE-IPVS-FILTER -d fd00::10/128 -p udp -m udp --dport 53 -m comment --comment "kdns node DNS" -j RETURN',
    ]
    assert [
        line for line in rendering.iptables[4].splitlines() if "kdns node DNS" in line
    ] == TAKEN_FILTER


def test_diff_when_the_node_dns_takes_over_and_gives_back() -> None:
    before = render(kube_dns_routes(), CONFIG).state
    taken = render(kube_dns_routes(), TAKEN).state
    # Taking over: the :53 services go after the ipset and iptables restores (which let port
    # 53 through first); the address stays bound; nothing else is touched.
    plan = check_sync(before, taken, TAKEN)
    assert plan.setup == []
    assert plan.cleanup == [ipvsadm("-D -t 172.30.0.10:53"), ipvsadm("-D -u 172.30.0.10:53")]
    # Giving back (a stop for good): they come back with their real servers, before the restores.
    plan = check_sync(taken, before, CONFIG)
    assert plan.setup == [
        ipvsadm("-A -t 172.30.0.10:53 -s rr"),
        ipvsadm("-a -t 172.30.0.10:53 -r 10.244.2.5:53 -m -w 1"),
        ipvsadm("-A -u 172.30.0.10:53 -s rr"),
        ipvsadm("-a -u 172.30.0.10:53 -r 10.244.2.5:53 -m -w 1"),
    ]
    assert plan.cleanup == []


# --- property tests ----------------------------------------------------------------------------

PROPERTIES = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Small pools, so generated services collide on VIPs, ports and endpoints.
CLUSTER_V4 = ["172.30.0.1", "172.30.0.2", "172.30.0.3"]
CLUSTER_V6 = ["fd00::1", "fd00::2"]
EXTERNAL = ["192.0.2.1", "192.0.2.2", NODE_IP, "2001:db8::1", "fd01::10"]
LB_IPS = ["198.51.100.1", "198.51.100.2", "2001:db8::7"]
RANGES = ["192.168.1.0/24", "203.0.113.0/24", "0.0.0.0/0", "2001:db8:1::/48", "fd01::/64"]
ENDPOINTS_V4 = ["10.244.1.1", "10.244.1.2", "10.244.2.1"]
ENDPOINTS_V6 = ["fd00:10:244::1", "fd00:10:244::2"]
PROPERTY_CONFIG = dict(
    local_ips=(NODE_IP, "fd01::10", "127.0.0.1"),
    node_ips=(NODE_IP, "fd01::10"),
    cluster_cidrs=(PODS, "fd00:10:244::/64"),
)


@st.composite
def cluster(draw: st.DrawFn) -> tuple[dict[Any, Service], dict[Any, tuple[Endpoint, ...]]]:
    services: dict[Any, Service] = {}
    endpoints: dict[Any, tuple[Endpoint, ...]] = {}
    for i in range(draw(st.integers(0, 5))):
        family = draw(st.sampled_from(["4", "6", "46"]))
        cluster_ips = []
        if "4" in family:
            cluster_ips.append(draw(st.sampled_from(CLUSTER_V4)))
        if "6" in family:
            cluster_ips.append(draw(st.sampled_from(CLUSTER_V6)))
        kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        names = draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
        ports = tuple(
            ServicePort(
                name,
                draw(st.sampled_from(["TCP", "UDP", "SCTP"])),
                draw(st.sampled_from([53, 80, 443])),
                8080,
                draw(st.sampled_from([30080, 30081, 30082])) if kind != "ClusterIP" else None,
            )
            for name in names
        )
        external_policy = draw(st.sampled_from(["Cluster", "Local"]))
        service = Service(
            "ns",
            f"svc{i}",
            type=kind,
            cluster_ips=tuple(cluster_ips),
            ports=ports,
            session_affinity=draw(st.sampled_from(["None", "ClientIP"])),
            affinity_timeout=draw(st.sampled_from([60, 10800])),
            external_ips=tuple(draw(st.lists(st.sampled_from(EXTERNAL), max_size=2, unique=True))),
            load_balancer_ips=tuple(
                draw(st.lists(st.sampled_from(LB_IPS), max_size=2, unique=True))
                if kind == "LoadBalancer"
                else ()
            ),
            load_balancer_source_ranges=tuple(
                draw(st.lists(st.sampled_from(RANGES), max_size=2, unique=True))
            ),
            external_traffic_policy=external_policy,
            internal_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
            health_check_node_port=32000 + i if kind == "LoadBalancer" else None,
        )
        eps = []
        for address in draw(
            st.lists(st.sampled_from(ENDPOINTS_V4 + ENDPOINTS_V6), max_size=4, unique=True)
        ):
            ready = draw(st.booleans())
            eps.append(
                Endpoint(
                    address,
                    ready=ready,
                    serving=ready or draw(st.booleans()),
                    terminating=not ready and draw(st.booleans()),
                    node_name=draw(st.sampled_from([NODE, "node2"])),
                    ports=tuple(
                        EndpointPort(p.name, p.protocol, draw(st.sampled_from([8080, 53])))
                        for p in ports
                    ),
                )
            )
        services[service.key] = service
        endpoints[service.key] = tuple(eps)
    return services, endpoints


configs = st.builds(
    lambda families, scheduler, excluded: IpvsConfig(
        families=families,
        scheduler=scheduler,
        exclude_cidrs=("10.200.0.0/16",) if excluded else (),
        **PROPERTY_CONFIG,  # type: ignore[arg-type]
    ),
    st.sampled_from([(4,), (6,), (4, 6)]),
    st.sampled_from(["rr", "mh", "lc"]),
    st.booleans(),
)


@st.composite
def kernel_states(draw: st.DrawFn) -> IpvsState:
    """Arbitrary IPVS tables and kube-ipvs0 contents, near the generated clusters: leftovers of
    older syncs, foreign services, odd settings, weights and forwarding methods."""
    vips_v4 = [*CLUSTER_V4, "192.0.2.1", NODE_IP, "198.51.100.1", "10.200.0.1", "172.30.0.99"]
    vips_v6 = [*CLUSTER_V6, "2001:db8::7", "fd01::10"]
    services = {}
    for _ in range(draw(st.integers(0, 8))):
        v6 = draw(st.booleans())
        ip = draw(st.sampled_from(vips_v6 if v6 else vips_v4))
        persistence = draw(st.sampled_from([None, 60, 300, 10800]))
        reals = {}
        for _ in range(draw(st.integers(0, 4))):
            real = RealServer(
                draw(st.sampled_from(ENDPOINTS_V6 if v6 else [*ENDPOINTS_V4, "10.9.9.9"])),
                draw(st.sampled_from([8080, 53, 80])),
                weight=draw(st.sampled_from([0, 1, 1, 5])),
                forward=draw(st.sampled_from("mmgi")),
                u_threshold=draw(st.sampled_from([0, 0, 100])),
            )
            reals[real.key] = real
        protocol = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
        service = VirtualService(
            protocol,
            ip,
            draw(st.sampled_from([53, 80, 443, 30080, 30081])),
            scheduler=draw(st.sampled_from(["rr", "wlc", "mh", "sh"])),
            persistence=persistence,
            netmask=draw(st.sampled_from([None, "64" if v6 else "255.255.255.0"])),
            sched_flags=draw(st.sampled_from([0, 0, 1, 2])),
            one_packet=protocol == "UDP" and draw(st.booleans()),
            reals=tuple(reals.values()),
        )
        services[service.key] = service
    addresses = draw(st.lists(st.sampled_from([*vips_v4[:3], *vips_v6, "172.30.0.99"]), max_size=5))
    return IpvsState(services, frozenset(addresses), draw(st.booleans()))


@PROPERTIES
@given(cluster(), kernel_states(), configs)
def test_diff_from_any_state_reaches_desired(
    generated: tuple[dict[Any, Service], dict[Any, tuple[Endpoint, ...]]],
    current: IpvsState,
    config: IpvsConfig,
) -> None:
    desired = render(build_routes(*generated, NODE), config).state
    check_sync(current, desired, config)


@PROPERTIES
@given(cluster(), cluster(), configs)
def test_diff_between_syncs_reaches_desired(
    before: tuple[dict[Any, Service], dict[Any, tuple[Endpoint, ...]]],
    after: tuple[dict[Any, Service], dict[Any, tuple[Endpoint, ...]]],
    config: IpvsConfig,
) -> None:
    # Realistic current states: what the previous sync left, then the next one.
    first = render(build_routes(*before, NODE), config).state
    model = IpvsModel(IpvsState(device=False))
    model.apply_all(diff(model.state, first, config).commands)
    assert model.state == first
    second = render(build_routes(*after, NODE), config).state
    check_sync(model.state, second, config)


def drifted(desired: IpvsState) -> st.SearchStrategy[IpvsState]:
    """`desired` after drift: services lost or re-created with other settings, real servers
    lost, added, drained to weight 0 or switched to another forwarding method, addresses
    unbound or left behind, the device gone."""

    @st.composite
    def strategy(draw: st.DrawFn) -> IpvsState:
        services = {}
        for key, service in desired.services.items():
            fate = draw(st.sampled_from(["keep", "keep", "drop", "settings"]))
            if fate == "drop":
                continue
            if fate == "settings":
                service = replace_service(
                    service,
                    scheduler=draw(st.sampled_from(["rr", "wlc", "sh"])),
                    persistence=draw(st.sampled_from([None, 60, 10800])),
                )
            reals = []
            for real in service.reals:
                change = draw(st.sampled_from(["keep", "keep", "drop", "drain", "forward"]))
                if change == "drain":
                    real = RealServer(real.ip, real.port, weight=0)
                elif change == "forward":
                    real = RealServer(real.ip, real.port, forward="g", u_threshold=5)
                if change != "drop":
                    reals.append(real)
            if draw(st.booleans()):
                stray = "fd00:10:244::9" if service.family == 6 else "10.244.9.9"
                reals.append(RealServer(stray, 8080))
            services[key] = replace_service(service, reals=tuple(reals))
        addresses = {a for a in desired.addresses if draw(st.booleans())}
        addresses |= set(draw(st.lists(st.sampled_from(["172.30.0.99", "fd00::99"]), max_size=2)))
        return IpvsState(services, frozenset(addresses), draw(st.booleans()))

    return strategy()


def replace_service(service: VirtualService, **changes: Any) -> VirtualService:
    fields = {name: getattr(service, name) for name in VirtualService.__dataclass_fields__}
    return VirtualService(**{**fields, **changes})


@PROPERTIES
@given(cluster(), configs, st.data())
def test_diff_from_drifted_state_reaches_desired(
    generated: tuple[dict[Any, Service], dict[Any, tuple[Endpoint, ...]]],
    config: IpvsConfig,
    data: st.DataObject,
) -> None:
    desired = render(build_routes(*generated, NODE), config).state
    current = data.draw(drifted(desired))
    check_sync(current, desired, config)


@PROPERTIES
@given(kernel_states())
def test_save_text_round_trips(state: IpvsState) -> None:
    assert parse_ipvsadm_save(format_save(state), state.addresses, state.device) == state


# --- the kernel check --------------------------------------------------------------------------

PROC_MODULES = """\
ip_vs_rr 12288 4 - Live 0x0000000000000000
ip_vs 196608 6 ip_vs_rr, Live 0x0000000000000000
nf_conntrack 188416 5 xt_conntrack,nf_nat,ip_vs, Live 0x0000000000000000
"""


@pytest.mark.parametrize(
    ("modules", "proc_net_ip_vs", "available"),
    [
        (PROC_MODULES, False, True),
        (
            "nf_conntrack 188416 5 xt_conntrack, Live 0x0\nip_vs_rr 12288 0 - Live 0x0\n",
            False,
            False,
        ),
        ("", False, False),
        ("", True, True),  # built in, or loaded: /proc/net/ip_vs exists
        ("kernel/net/netfilter/ipvs/ip_vs.ko\n", False, True),  # modules.builtin
        (
            "kernel/net/netfilter/ipvs/ip_vs_rr.ko.zst: kernel/net/netfilter/ipvs/ip_vs.ko.zst\n"
            "kernel/net/netfilter/ipvs/ip_vs.ko.zst: kernel/net/netfilter/nf_conntrack.ko.zst\n",
            False,
            True,
        ),  # modules.dep: loadable
        ("kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: x\n", False, False),
    ],
)
def test_ipvs_available(modules: str, proc_net_ip_vs: bool, available: bool) -> None:
    assert ipvs_available(modules, proc_net_ip_vs) is available


def test_unavailable_message() -> None:
    assert "\n" not in UNAVAILABLE_MESSAGE
    assert UNAVAILABLE_MESSAGE.endswith("iptables, nftables, userspace")
    assert "ipvs" in UNAVAILABLE_MESSAGE


def test_state_validation() -> None:
    with pytest.raises(ValueError, match="repeat"):
        VirtualService("TCP", "10.0.0.1", 80, reals=(RealServer("10.0.0.2", 80),) * 2)
    with pytest.raises(ValueError, match="protocol"):
        VirtualService("ICMP", "10.0.0.1", 80)
    with pytest.raises(ValueError, match="listed twice"):
        IpvsState.of([VirtualService("TCP", "10.0.0.1", 80)] * 2)
    with pytest.raises(ValueError, match="filed under"):
        IpvsState({("UDP", "10.0.0.1", 80): VirtualService("TCP", "10.0.0.1", 80)})
    with pytest.raises(ValueError, match="scheduler"):
        IpvsConfig(scheduler="fastest")
    # Spellings of one address are one address.
    assert VirtualService("tcp", "fd00:0::1", 80).key == ("TCP", "fd00::1", 80)

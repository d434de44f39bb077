"""Pod names in the node DNS (`kdns proxy --dns`): with `pods verified` it holds no Pods of
other nodes, so the pod names it cannot verify go to the central DNS through the stub domain
that covers `pod.<zone>`; without one the start is refused in one line. Pure: the node DNS's
config, and its real handler over a store, asked without a network (in trio: the upstream
cache reads trio's clock)."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, DNSRecord

from kdns import app, proxyapp
from kdns.config import Config
from kdns.dns.handler import Deferred, Handler
from kdns.model import Namespace, Pod
from kdns.store import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES, Store
from tests.builders import model_pod

NODE_DNS = "169.254.20.10"
CENTRAL = "10.96.0.11"  # a kube-dns-upstream Service's ClusterIP
KUBE_DNS = "10.96.0.10"  # the kube-dns ClusterIP, taken over by the node DNS
LOCAL_POD, OTHER_POD = "10.244.1.5", "10.244.2.7"

REFUSED = (
    "node.dns: dns.pods is verified, but the node DNS holds no other node's Pods to verify "
    "pod names with: set forward.stub_domains {{{}: [CENTRAL-DNS-IP]}} (the central DNS: a "
    "kube-dns-upstream Service's ClusterIP, not an address the node takes over), or "
    "dns.pods: insecure"
)


def config(**keys: object) -> Config:
    return Config().with_overrides("test", **keys)


@pytest.mark.parametrize(
    ("keys", "fallthrough"),
    [
        # verified, from a cluster: every cluster zone's pod names may go to the central DNS.
        ({"dns.pods": "verified"}, ("pod.cluster.local",)),
        (
            {"dns.pods": "verified", "dns.zones": ["cluster.local", "corp.local", "in-addr.arpa"]},
            ("pod.cluster.local", "pod.corp.local"),
        ),
        # The operator's own fallthrough zones stay, first.
        (
            {"dns.pods": "verified", "dns.fallthrough": ["example.org"]},
            ("example.org", "pod.cluster.local"),
        ),
        # insecure reads the address from the name and disabled denies every pod name, as the
        # central DNS does: neither needs a Pod, both answer here.
        ({"dns.pods": "insecure"}, ()),
        ({"dns.pods": "disabled"}, ()),
        # From manifests every Pod is held: verified answers here too.
        ({"dns.pods": "verified", "kubernetes.manifests": ["/m.yaml"]}, ()),
    ],
)
def test_pod_names_fall_through_only_when_the_node_cannot_verify_them(
    keys: dict[str, object], fallthrough: tuple[str, ...]
) -> None:
    dns = proxyapp.node_dns_config(config(**keys), [NODE_DNS])
    assert dns.dns.fallthrough == fallthrough
    assert dns.dns.pods == keys["dns.pods"]  # the node DNS keeps the mode it was given


@pytest.mark.parametrize(
    ("keys", "problems"),
    [
        ({"dns.pods": "verified"}, [REFUSED.format("pod.cluster.local")]),
        (
            {"dns.pods": "verified", "dns.zones": ["cluster.local", "corp.local"]},
            [REFUSED.format("pod.cluster.local"), REFUSED.format("pod.corp.local")],
        ),
        # A stub domain for another name does not cover pod names.
        (
            {"dns.pods": "verified", "forward.stub_domains": [("acme.local", [CENTRAL])]},
            [REFUSED.format("pod.cluster.local")],
        ),
        ({"dns.pods": "verified", "forward.stub_domains": [("pod.cluster.local", [CENTRAL])]}, []),
        # NodeLocal DNSCache's shape: the whole cluster zone's stub covers its pod names.
        ({"dns.pods": "verified", "forward.stub_domains": [("cluster.local", [CENTRAL])]}, []),
        # The kube-dns ClusterIP the node takes over is the node DNS itself.
        (
            {"dns.pods": "verified", "forward.stub_domains": [("cluster.local", [KUBE_DNS])]},
            [
                f"forward.stub_domains.cluster.local: {KUBE_DNS} is the node DNS itself (--dns "
                "answers it on this node): forwarding pod names there would loop; give the "
                "central DNS's own address (e.g. a kube-dns-upstream Service's ClusterIP)"
            ],
        ),
        # …but not on another port.
        (
            {
                "dns.pods": "verified",
                "forward.stub_domains": [("cluster.local", [f"{KUBE_DNS}:54"])],
            },
            [],
        ),
        ({"dns.pods": "insecure"}, []),
        ({"dns.pods": "disabled"}, []),
        ({"dns.pods": "verified", "kubernetes.manifests": ["/m.yaml"]}, []),
    ],
)
def test_a_node_dns_that_cannot_verify_pod_names_needs_a_central_dns(
    keys: dict[str, object], problems: list[str]
) -> None:
    dns = proxyapp.node_dns_config(config(**keys), [NODE_DNS, KUBE_DNS])
    forwarder = app.plan(dns).forwarder
    stubs = forwarder.config.stub_domains if forwarder is not None else ()
    assert proxyapp.central_pod_problems(dns, stubs, [NODE_DNS, KUBE_DNS]) == problems


def _node_handler(keys: dict[str, object], pods: list[Pod]) -> Handler:
    """The node DNS's handler over a synced store holding only `pods` (this node's)."""
    dns = proxyapp.node_dns_config(config(**keys), [NODE_DNS])
    store = Store(watched=(NAMESPACES, SERVICES, ENDPOINTSLICES, PODS))
    store.replace(NAMESPACES, {"default": Namespace("default")})
    store.replace(SERVICES, {})
    store.replace(ENDPOINTSLICES, {})
    store.replace(PODS, {p.key: p for p in pods})
    return app.assemble(dns, store, app.plan(dns)).handler


def _ask(handler: Handler, name: str) -> str:
    """Where the answer comes from: `forwarded to …`, or the local answer's rcode and data."""
    reply = handler.handle(DNSRecord.question(name, "A").pack(), udp=True)
    if isinstance(reply, Deferred):
        assert handler.forwarder is not None
        servers = handler.forwarder.destinations(reply.query.qname)
        return "forwarded to " + " ".join(str(s) for s in servers)
    assert reply is not None
    answer = DNSRecord.parse(reply[0])
    records = " ".join(str(rr.rdata) for rr in answer.rr if rr.rtype == QTYPE.A)
    return f"{answer.header.rcode} {records}".strip()


LOCAL = model_pod("local", LOCAL_POD, namespace="default")
STUB = {"forward.upstreams": [], "forward.stub_domains": [("pod.cluster.local", [CENTRAL])]}


@pytest.mark.parametrize(
    ("keys", "name", "answered"),
    [
        # verified: this node's pod is verified here; another node's goes to the central DNS,
        # which watches every Pod — as does a name the node would deny, whatever the reason.
        ({"dns.pods": "verified", **STUB}, "10-244-1-5.default.pod.cluster.local", f"0 {LOCAL_POD}"),
        ({"dns.pods": "verified", **STUB}, "10-244-2-7.default.pod.cluster.local", f"forwarded to {CENTRAL}:53"),
        ({"dns.pods": "verified", **STUB}, "10-244-2-7.gone.pod.cluster.local", f"forwarded to {CENTRAL}:53"),
        # Service names are the node's own to answer: NXDOMAIN here, not forwarded.
        ({"dns.pods": "verified", **STUB}, "nosuch.default.svc.cluster.local", "3"),
        # insecure answers any address here; disabled denies it here (3 = NXDOMAIN).
        ({"dns.pods": "insecure", **STUB}, "10-244-2-7.default.pod.cluster.local", f"0 {OTHER_POD}"),
        ({"dns.pods": "disabled", **STUB}, "10-244-2-7.default.pod.cluster.local", "3"),
    ],
)  # fmt: skip
async def test_the_node_dns_answers_what_it_can_verify_and_forwards_the_other_pod_names(
    keys: dict[str, object], name: str, answered: str
) -> None:
    assert _ask(_node_handler(keys, [LOCAL]), name) == answered

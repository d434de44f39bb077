"""kdns.corefile.translate: the distro Corefiles, kept verbatim in data/, and hand-edited ones →
the kdns config keys they set (each with its line) and one line per directive kdns does not
follow as CoreDNS does. A refused line means `kdns check`/`serve --corefile` exit 2.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import yaml

from kdns.corefile.expand import expand
from kdns.corefile.lexer import CorefileError, tokenize
from kdns.corefile.load import read_corefile
from kdns.corefile.parser import parse
from kdns.corefile.translate import Translation, translate

DATA = Path(__file__).parent / "data"


def render(translation: Translation) -> str:
    """One line per key, `FILE:LINE key: value` (values in YAML flow style), sorted by place."""

    def place(where: str) -> tuple[str, int]:
        # Sorted by the name shown, not the checkout's path (which sorts differently from
        # `/etc/coredns/...` depending on where the repository is cloned).
        file, line = short(where).rsplit(":", 1)
        return file, int(line)

    lines = []
    for s in sorted(translation.settings, key=lambda s: (*place(s.where), s.key)):
        value = s.value
        if s.key == "forward.stub_domains":
            value = {zone: list(servers) for zone, servers in value}
        elif isinstance(value, tuple):
            value = list(value)
        text = yaml.safe_dump(value, default_flow_style=True, width=1000)
        text = text.strip().removesuffix("...").strip()
        lines.append(short(f"{s.where} {s.key}: {text}"))  # a rule's `where` too
    return "\n".join(lines)


def notes(translation: Translation) -> str:
    return "\n".join(short(str(n)) for n in translation.notes)


def short(text: str) -> str:
    return text.replace(f"{DATA}/", "")


def distro(name: str, custom: str | None = None, env: dict[str, str] | None = None) -> Translation:
    """Read data/NAME as the distro's pod would: k3s's `%{CLUSTER_DOMAIN}%` filled in as k3s
    does when it deploys the manifest, and the `coredns-custom` ConfigMap's keys (the files of
    data/CUSTOM, or none) mounted where the Corefile imports them from."""
    mount = {"/etc/coredns/custom": DATA / custom} if custom else {}
    mount[str(DATA / "custom")] = DATA / custom if custom else DATA / "no-such-folder"

    def real(path: str) -> Path:
        folder, _, base = path.rpartition("/")
        return mount[folder] / base if folder in mount else Path(path)

    def read(path: str) -> str:
        text = real(path).read_text(encoding="utf-8")
        return text.replace("%{CLUSTER_DOMAIN}%", "cluster.local")

    def glob(pattern: str) -> list[str]:
        folder, _, base = pattern.rpartition("/")
        where = real(pattern).parent
        names = sorted(p.name for p in where.glob("*")) if where.is_dir() else []
        return [f"{folder}/{n}" for n in names if fnmatch.fnmatchcase(n, base)]

    return read_corefile(str(DATA / name), env or {}, read, glob)


# The tail every distro default shares: what `errors`, `fallthrough in-addr.arpa ip6.arpa` and
# `loop` are in kdns.
KUBEADM = """\
kubeadm.Corefile:1 dns.addr: 0.0.0.0:53
kubeadm.Corefile:3 dns.health_addr: 0.0.0.0:8080
kubeadm.Corefile:4 dns.lameduck: 5.0
kubeadm.Corefile:6 dns.ready_addr: 0.0.0.0:8181
kubeadm.Corefile:7 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
kubeadm.Corefile:8 dns.pods: insecure
kubeadm.Corefile:10 dns.ttl: 30
kubeadm.Corefile:12 dns.metrics_addr: 0.0.0.0:9153
kubeadm.Corefile:12 dns.metrics_coredns_names: true
kubeadm.Corefile:13 forward.resolv_conf: /etc/resolv.conf
kubeadm.Corefile:13 forward.upstreams: null
kubeadm.Corefile:14 forward.max_concurrent: 1000
kubeadm.Corefile:16 cache.max_denial_ttl: 30
kubeadm.Corefile:16 cache.max_ttl: 30
kubeadm.Corefile:21 dns.reload_interval: 30.0
kubeadm.Corefile:22 dns.loadbalance: round_robin"""

KUBEADM_NOTES = """\
kubeadm.Corefile:2: errors: accepted: kdns logs errors on its own
kubeadm.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
kubeadm.Corefile:17: cache disable: accepted: kdns never caches cluster answers
kubeadm.Corefile:18: cache disable: accepted: kdns never caches cluster answers
kubeadm.Corefile:20: loop: accepted: kdns refuses, at start, an upstream that would forward back to it"""


def test_kubeadm_and_kind() -> None:
    # kind has no Corefile of its own: it runs kubeadm, so this is kind's too.
    translation = distro("kubeadm.Corefile")
    assert render(translation) == KUBEADM
    assert notes(translation) == KUBEADM_NOTES
    assert translation.refused == ()


CASES = [
    pytest.param(
        "k3s.Corefile",
        None,
        """\
k3s.Corefile:1 dns.addr: 0.0.0.0:53
k3s.Corefile:1 dns.lameduck: 0.0
k3s.Corefile:3 dns.health_addr: 0.0.0.0:8080
k3s.Corefile:4 dns.ready_addr: 0.0.0.0:8181
k3s.Corefile:5 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
k3s.Corefile:6 dns.pods: insecure
k3s.Corefile:9 hosts.file: /etc/coredns/NodeHosts
k3s.Corefile:9 hosts.zones: [.]
k3s.Corefile:10 hosts.ttl: 60
k3s.Corefile:11 hosts.reload: 15.0
k3s.Corefile:12 hosts.fallthrough: [.]
k3s.Corefile:14 dns.metrics_addr: 0.0.0.0:9153
k3s.Corefile:14 dns.metrics_coredns_names: true
k3s.Corefile:15 forward.resolv_conf: /etc/resolv.conf
k3s.Corefile:15 forward.upstreams: null
k3s.Corefile:16 cache.max_denial_ttl: 30
k3s.Corefile:16 cache.max_ttl: 30
k3s.Corefile:18 dns.reload_interval: 30.0
k3s.Corefile:19 dns.loadbalance: round_robin""",
        """\
k3s.Corefile:2: errors: accepted: kdns logs errors on its own
k3s.Corefile:7: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
k3s.Corefile:17: loop: accepted: kdns refuses, at start, an upstream that would forward back to it""",
        id="k3s",
    ),  # k3s's manifest, `coredns-custom` absent: the imports match nothing; NodeHosts is served by `hosts` (the hosts section)
    pytest.param(
        "k3s.Corefile",
        "k3s-custom",
        """\
/etc/coredns/custom/consul.server:4 forward.stub_domains: {consul.local: [10.150.0.1]}
/etc/coredns/custom/log.override:1 logging.query_log: text
k3s.Corefile:1 dns.addr: 0.0.0.0:53
k3s.Corefile:1 dns.lameduck: 0.0
k3s.Corefile:3 dns.health_addr: 0.0.0.0:8080
k3s.Corefile:4 dns.ready_addr: 0.0.0.0:8181
k3s.Corefile:5 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
k3s.Corefile:6 dns.pods: insecure
k3s.Corefile:9 hosts.file: /etc/coredns/NodeHosts
k3s.Corefile:9 hosts.zones: [.]
k3s.Corefile:10 hosts.ttl: 60
k3s.Corefile:11 hosts.reload: 15.0
k3s.Corefile:12 hosts.fallthrough: [.]
k3s.Corefile:14 dns.metrics_addr: 0.0.0.0:9153
k3s.Corefile:14 dns.metrics_coredns_names: true
k3s.Corefile:15 forward.resolv_conf: /etc/resolv.conf
k3s.Corefile:15 forward.upstreams: null
k3s.Corefile:16 cache.max_denial_ttl: 30
k3s.Corefile:16 cache.max_ttl: 30
k3s.Corefile:18 dns.reload_interval: 30.0
k3s.Corefile:19 dns.loadbalance: round_robin""",
        """\
k3s.Corefile:2: errors: accepted: kdns logs errors on its own
k3s.Corefile:7: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
k3s.Corefile:17: loop: accepted: kdns refuses, at start, an upstream that would forward back to it
/etc/coredns/custom/consul.server:2: errors: accepted: kdns logs errors on its own""",
        id="k3s-custom",
    ),  # k3s with a `coredns-custom` ConfigMap: a `log.override` inside the block, a `consul.server` stub block after it
    pytest.param(
        "rke2.Corefile",
        None,
        """\
rke2.Corefile:1 dns.addr: 0.0.0.0:53
rke2.Corefile:3 dns.health_addr: 0.0.0.0:8080
rke2.Corefile:4 dns.lameduck: 10.0
rke2.Corefile:6 dns.ready_addr: 0.0.0.0:8181
rke2.Corefile:7 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
rke2.Corefile:8 dns.pods: insecure
rke2.Corefile:10 dns.ttl: 30
rke2.Corefile:12 dns.metrics_addr: 0.0.0.0:9153
rke2.Corefile:12 dns.metrics_coredns_names: true
rke2.Corefile:13 forward.resolv_conf: /etc/resolv.conf
rke2.Corefile:13 forward.upstreams: null
rke2.Corefile:14 cache.max_denial_ttl: 30
rke2.Corefile:14 cache.max_ttl: 30
rke2.Corefile:16 dns.reload_interval: 30.0
rke2.Corefile:17 dns.loadbalance: round_robin""",
        """\
rke2.Corefile:2: errors: accepted: kdns logs errors on its own
rke2.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
rke2.Corefile:15: loop: accepted: kdns refuses, at start, an upstream that would forward back to it""",
        id="rke2",
    ),  # RKE2's chart, double spaces and all
    pytest.param(
        "eks.Corefile",
        None,
        """\
eks.Corefile:1 dns.addr: 0.0.0.0:53
eks.Corefile:3 dns.health_addr: 0.0.0.0:8080
eks.Corefile:4 dns.lameduck: 5.0
eks.Corefile:6 dns.ready_addr: 0.0.0.0:8181
eks.Corefile:7 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
eks.Corefile:8 dns.pods: insecure
eks.Corefile:11 dns.metrics_addr: 0.0.0.0:9153
eks.Corefile:11 dns.metrics_coredns_names: true
eks.Corefile:12 forward.resolv_conf: /etc/resolv.conf
eks.Corefile:12 forward.upstreams: null
eks.Corefile:13 cache.max_denial_ttl: 30
eks.Corefile:13 cache.max_ttl: 30
eks.Corefile:15 dns.reload_interval: 30.0
eks.Corefile:16 dns.loadbalance: round_robin""",
        """\
eks.Corefile:2: errors: accepted: kdns logs errors on its own
eks.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
eks.Corefile:14: loop: accepted: kdns refuses, at start, an upstream that would forward back to it""",
        id="eks",
    ),  # EKS's add-on defaults (no ttl: CoreDNS's 5)
    pytest.param(
        "aks.Corefile",
        None,
        """\
aks.Corefile:1 dns.addr: 0.0.0.0:53
aks.Corefile:3 dns.ready_addr: 0.0.0.0:8181
aks.Corefile:4 dns.health_addr: 0.0.0.0:8080
aks.Corefile:5 dns.lameduck: 5.0
aks.Corefile:7 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
aks.Corefile:8 dns.pods: insecure
aks.Corefile:10 dns.ttl: 30
aks.Corefile:12 dns.metrics_addr: 0.0.0.0:9153
aks.Corefile:12 dns.metrics_coredns_names: true
aks.Corefile:13 forward.resolv_conf: /etc/resolv.conf
aks.Corefile:13 forward.upstreams: null
aks.Corefile:14 cache.max_denial_ttl: 30
aks.Corefile:14 cache.max_ttl: 30
aks.Corefile:16 dns.reload_interval: 30.0
aks.Corefile:17 dns.loadbalance: round_robin
aks.Corefile:19 dns.templates: [{class: ANY, fallthrough: [.], match: ['^(?:[^.]+\\.){4,}internal\\.cloudapp\\.net\\.$'], rcode: NXDOMAIN, type: ANY, where: 'aks.Corefile:19', zones: [internal.cloudapp.net]}, {class: ANY, rcode: NXDOMAIN, type: ANY, where: 'aks.Corefile:24', zones: [reddog.microsoft.com]}]""",
        """\
aks.Corefile:2: errors: accepted: kdns logs errors on its own
aks.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
aks.Corefile:15: loop: accepted: kdns refuses, at start, an upstream that would forward back to it""",
        id="aks",
    ),  # AKS's managed Corefile: its NXDOMAIN templates change answers
    pytest.param(
        "aks.Corefile",
        "aks-custom",
        """\
aks.Corefile:1 dns.addr: 0.0.0.0:53
aks.Corefile:3 dns.ready_addr: 0.0.0.0:8181
aks.Corefile:4 dns.health_addr: 0.0.0.0:8080
aks.Corefile:5 dns.lameduck: 5.0
aks.Corefile:7 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
aks.Corefile:8 dns.pods: insecure
aks.Corefile:10 dns.ttl: 30
aks.Corefile:12 dns.metrics_addr: 0.0.0.0:9153
aks.Corefile:12 dns.metrics_coredns_names: true
aks.Corefile:13 forward.resolv_conf: /etc/resolv.conf
aks.Corefile:13 forward.upstreams: null
aks.Corefile:14 cache.max_denial_ttl: 30
aks.Corefile:14 cache.max_ttl: 30
aks.Corefile:16 dns.reload_interval: 30.0
aks.Corefile:17 dns.loadbalance: round_robin
custom/puglife.server:4 forward.stub_domains: {puglife.local: [192.11.0.1]}""",
        """\
aks.Corefile:2: errors: accepted: kdns logs errors on its own
aks.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
aks.Corefile:15: loop: accepted: kdns refuses, at start, an upstream that would forward back to it
aks.Corefile:19: template: accepted: never reached: a server block of its own serves each of its zones
aks.Corefile:24: template: accepted: never reached: a server block of its own serves each of its zones
custom/override-block.server:2: errors: accepted: kdns logs errors on its own
custom/override-block.server:7: errors: accepted: kdns logs errors on its own
custom/puglife.server:2: errors: accepted: kdns logs errors on its own
custom/override-block.server:4: forward: accepted: internal.cloudapp.net goes to the default upstreams, as other names do
custom/override-block.server:9: forward: accepted: reddog.microsoft.com goes to the default upstreams, as other names do""",
        id="aks-custom",
    ),  # AKS with the documented `coredns-custom` overrides: blocks for internal.cloudapp.net and reddog.microsoft.com take those names from the templates; puglife.local is a stub domain
    pytest.param(
        "aks.Corefile",
        "aks-custom-hosts",
        """\
aks.Corefile:1 dns.addr: 0.0.0.0:53
aks.Corefile:3 dns.ready_addr: 0.0.0.0:8181
aks.Corefile:4 dns.health_addr: 0.0.0.0:8080
aks.Corefile:5 dns.lameduck: 5.0
aks.Corefile:7 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
aks.Corefile:8 dns.pods: insecure
aks.Corefile:10 dns.ttl: 30
aks.Corefile:12 dns.metrics_addr: 0.0.0.0:9153
aks.Corefile:12 dns.metrics_coredns_names: true
aks.Corefile:13 forward.resolv_conf: /etc/resolv.conf
aks.Corefile:13 forward.upstreams: null
aks.Corefile:14 cache.max_denial_ttl: 30
aks.Corefile:14 cache.max_ttl: 30
aks.Corefile:16 dns.reload_interval: 30.0
aks.Corefile:17 dns.loadbalance: round_robin
aks.Corefile:19 dns.templates: [{class: ANY, fallthrough: [.], match: ['^(?:[^.]+\\.){4,}internal\\.cloudapp\\.net\\.$'], rcode: NXDOMAIN, type: ANY, where: 'aks.Corefile:19', zones: [internal.cloudapp.net]}, {class: ANY, rcode: NXDOMAIN, type: ANY, where: 'aks.Corefile:24', zones: [reddog.microsoft.com]}]
custom/test.override:1 hosts.entries: [10.0.0.1 example1.org, 10.0.0.2 example2.org, 10.0.0.3 example3.org]
custom/test.override:1 hosts.file: /etc/hosts
custom/test.override:1 hosts.zones: [.]
custom/test.override:5 hosts.fallthrough: [.]""",
        """\
aks.Corefile:2: errors: accepted: kdns logs errors on its own
aks.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
aks.Corefile:15: loop: accepted: kdns refuses, at start, an upstream that would forward back to it""",
        id="aks-custom-hosts",
    ),  # AKS with the documented `hosts` override
    pytest.param(
        "stub.Corefile",
        None,
        """\
stub.Corefile:3 dns.addr: 0.0.0.0:53
stub.Corefile:5 dns.health_addr: 0.0.0.0:8080
stub.Corefile:6 dns.lameduck: 5.0
stub.Corefile:8 dns.ready_addr: 0.0.0.0:8181
stub.Corefile:9 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
stub.Corefile:10 dns.pods: insecure
stub.Corefile:12 dns.ttl: 30
stub.Corefile:14 dns.metrics_addr: 0.0.0.0:9153
stub.Corefile:14 dns.metrics_coredns_names: true
stub.Corefile:15 forward.upstreams: [172.16.0.1, '[2001:db8::53]:5353']
stub.Corefile:16 forward.max_concurrent: 500
stub.Corefile:17 forward.policy: random
stub.Corefile:19 cache.max_denial_ttl: 30
stub.Corefile:19 cache.max_ttl: 30
stub.Corefile:22 cache.serve_stale: 3600.0
stub.Corefile:25 dns.reload_interval: 10.0
stub.Corefile:26 dns.loadbalance: round_robin
stub.Corefile:31 forward.stub_domains: {acme.example: ['10.0.0.53:5300'], consul.local: [10.150.0.1], corp.example: ['10.0.0.53:5300']}""",
        """\
stub.Corefile:4: errors: accepted: kdns logs errors on its own
stub.Corefile:11: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
stub.Corefile:20: cache disable: accepted: kdns never caches cluster answers
stub.Corefile:21: cache disable: accepted: kdns never caches cluster answers
stub.Corefile:24: loop: accepted: kdns refuses, at start, an upstream that would forward back to it
stub.Corefile:29: errors: accepted: kdns logs errors on its own
stub.Corefile:34: errors: accepted: kdns logs errors on its own""",
        id="stub",
    ),  # hand-edited: upstreams by address, stub blocks (one with two zones), serve_stale
    pytest.param(
        "hosts.Corefile",
        None,
        """\
hosts.Corefile:1 dns.addr: 0.0.0.0:53
hosts.Corefile:3 dns.health_addr: 0.0.0.0:8080
hosts.Corefile:4 dns.lameduck: 5.0
hosts.Corefile:6 dns.ready_addr: 0.0.0.0:8181
hosts.Corefile:7 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
hosts.Corefile:8 dns.pods: insecure
hosts.Corefile:10 dns.ttl: 30
hosts.Corefile:12 hosts.entries: [192.168.1.10 registry.corp.example]
hosts.Corefile:12 hosts.file: /etc/hosts
hosts.Corefile:12 hosts.zones: [.]
hosts.Corefile:14 hosts.fallthrough: [.]
hosts.Corefile:16 dns.metrics_addr: 0.0.0.0:9153
hosts.Corefile:16 dns.metrics_coredns_names: true
hosts.Corefile:17 forward.resolv_conf: /etc/resolv.conf
hosts.Corefile:17 forward.upstreams: null
hosts.Corefile:18 cache.max_denial_ttl: 30
hosts.Corefile:18 cache.max_ttl: 30
hosts.Corefile:20 dns.reload_interval: 30.0
hosts.Corefile:21 dns.loadbalance: round_robin""",
        """\
hosts.Corefile:2: errors: accepted: kdns logs errors on its own
hosts.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
hosts.Corefile:19: loop: accepted: kdns refuses, at start, an upstream that would forward back to it""",
        id="hosts",
    ),  # hand-edited: inline hosts entries
    pytest.param(
        "rewrite.Corefile",
        None,
        """\
rewrite.Corefile:1 dns.addr: 0.0.0.0:53
rewrite.Corefile:3 dns.health_addr: 0.0.0.0:8080
rewrite.Corefile:4 dns.lameduck: 5.0
rewrite.Corefile:6 dns.ready_addr: 0.0.0.0:8181
rewrite.Corefile:7 dns.rewrites: [{answer: name, answer_from: (.*)\\.default\\.svc\\.cluster\\.local, answer_to: '{1}.example.com', from: (.*)\\.example\\.com, match: regex, stop: true, to: '{1}.default.svc.cluster.local', where: 'rewrite.Corefile:7'}, {from: api.example.org, match: exact, stop: true, to: api.default.svc.cluster.local, where: 'rewrite.Corefile:11'}]
rewrite.Corefile:12 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
rewrite.Corefile:13 dns.pods: insecure
rewrite.Corefile:15 dns.ttl: 30
rewrite.Corefile:17 dns.metrics_addr: 0.0.0.0:9153
rewrite.Corefile:17 dns.metrics_coredns_names: true
rewrite.Corefile:18 forward.resolv_conf: /etc/resolv.conf
rewrite.Corefile:18 forward.upstreams: null
rewrite.Corefile:19 cache.max_denial_ttl: 30
rewrite.Corefile:19 cache.max_ttl: 30
rewrite.Corefile:21 dns.reload_interval: 30.0
rewrite.Corefile:22 dns.loadbalance: round_robin""",
        """\
rewrite.Corefile:2: errors: accepted: kdns logs errors on its own
rewrite.Corefile:14: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
rewrite.Corefile:20: loop: accepted: kdns refuses, at start, an upstream that would forward back to it""",
        id="rewrite",
    ),  # hand-edited: rewrite rules, block form and one-line form
    pytest.param(
        "snippets.Corefile",
        None,
        """\
snippets.Corefile:4 cache.max_denial_ttl: 30
snippets.Corefile:4 cache.max_ttl: 30
snippets.Corefile:6 dns.lameduck: 0.0
snippets.Corefile:6 dns.loadbalance: 'off'
snippets.Corefile:6 dns.reload_interval: 0.0
snippets.Corefile:8 dns.zones: [cluster.local, in-addr.arpa, ip6.arpa]
snippets.Corefile:9 dns.pods: verified
snippets.Corefile:10 dns.ttl: 10
snippets.Corefile:12 dns.autopath: true
snippets.Corefile:13 forward.upstreams: [10.1.1.1]
snippets.Corefile:14 logging.query_log: text
snippets.Corefile:15 dns.addr: 127.0.0.1:1053
snippets.Corefile:20 forward.stub_domains: {other.example: [10.9.9.9], stub.example: [10.9.9.9]}""",
        """\
snippets.Corefile:3: errors: accepted: kdns logs errors on its own
snippets.Corefile:3: errors: accepted: kdns logs errors on its own""",
        id="snippets",
    ),  # a snippet, {$VAR} and {%VAR%}, bind, autopath, log; no health, reload or loadbalance: CoreDNS's behaviour without them
]


ENV = {
    "CLUSTER_DOMAIN": "cluster.local",
    "DNS_PORT": "1053",
    "CACHE_TTL": "30",
    "TTL": "10",
    "UPSTREAM": "10.1.1.1",
}


@pytest.mark.parametrize("name, custom, settings, lines", CASES)
def test_distro_and_hand_edited_corefiles(
    name: str, custom: str | None, settings: str, lines: str
) -> None:
    translation = distro(name, custom, ENV)
    assert render(translation) == settings
    assert notes(translation) == lines
    assert translation.refused == tuple(n for n in translation.notes if "not supported" in str(n))


# --- malformed Corefiles: CoreDNS would not start; each error names file:line --------------------

MALFORMED = [
    ("unclosed.Corefile", "unclosed.Corefile:1: this block has no closing '}'"),
    (
        "unknown-directive.Corefile",
        "unknown-directive.Corefile:3: unknown directive 'kuberentes' (not a CoreDNS plugin)",
    ),
    ("stray-brace.Corefile", "stray-brace.Corefile:4: '}' closes no block"),
    (
        "unterminated-quote.Corefile",
        'unterminated-quote.Corefile:3: unterminated quoted string (no closing ")',
    ),
    (
        "missing-import.Corefile",
        "missing-import.Corefile:3: import missing.conf: cannot read malformed/missing.conf: "
        "No such file or directory",
    ),
    ("snippet-twice.Corefile", "snippet-twice.Corefile:4: snippet 'a' is defined twice"),
    ("bad-ttl.Corefile", "bad-ttl.Corefile:3: kubernetes ttl: 'thirty' is not a whole number"),
    (
        "bad-duration.Corefile",
        "bad-duration.Corefile:3: health lameduck: 'soon' is not a duration (e.g. 5s, 1m, 1h30m)",
    ),
    (
        "bad-prefetch.Corefile",
        "bad-prefetch.Corefile:4: cache prefetch: '5%' is not a percentage in 10%-90%",
    ),
    (
        "zone-twice.Corefile",
        "zone-twice.Corefile:7: example.org.: zone example.org port 53 is already served by the "
        "block on line 4",
    ),
    (
        "cache-twice.Corefile",
        "cache-twice.Corefile:4: cache can only be used once per server block (first on line 3)",
    ),
    (
        "no-kubernetes.Corefile",
        "no-kubernetes.Corefile:1: no server block has a kubernetes directive: nothing for kdns "
        "to serve",
    ),
    (
        "import-cycle.Corefile",
        "import-cycle.Corefile:3: import import-cycle.Corefile: malformed/import-cycle.Corefile "
        "imports itself (an import cycle)",
    ),
]


@pytest.mark.parametrize("name, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_corefiles_name_file_and_line(name: str, message: str) -> None:
    with pytest.raises(CorefileError) as caught:
        read_corefile(str(DATA / "malformed" / name), {})
    assert short(str(caught.value)) == "malformed/" + message


# --- single directives and options ---------------------------------------------------------------


def inline(text: str) -> Translation:
    def nothing(path: str) -> str:
        raise FileNotFoundError(2, "No such file or directory")

    return translate(
        parse(expand(tokenize(text, "Corefile"), {}, nothing, lambda p: [])), "Corefile"
    )


BASE = ".:53 {{\n    kubernetes cluster.local in-addr.arpa ip6.arpa{options}\n{rest}}}\n"


def corefile(rest: str = "", options: str = "") -> str:
    body = f" {{\n{options}    }}" if options else ""
    return BASE.format(options=body, rest=rest)


OPTIONS = [
    # (what, Corefile, keys it sets (a subset), its notes)
    (
        "no options: CoreDNS's defaults where kdns's differ",
        corefile(),
        {
            "dns.pods": "disabled",
            "cache.max_ttl": 0,
            "cache.max_denial_ttl": 0,
            "forward.upstreams": (),
            "dns.lameduck": 0.0,
            "dns.reload_interval": 0.0,
            "dns.loadbalance": "off",
        },
        "",
    ),
    (
        "kubeconfig with a context; startup_timeout",
        corefile(options="       kubeconfig /k/config dev\n       startup_timeout 10s\n"),
        {"kubernetes.kubeconfig": "/k/config", "kubernetes.context": "dev"},
        "Corefile:4: kubernetes startup_timeout: accepted: kdns answers SERVFAIL for cluster "
        "names until its first full list, however long",
    ),
    (
        "fallthrough for a forward zone: its NXDOMAIN names go upstream",
        corefile(options="       fallthrough cluster.local\n"),
        {"dns.fallthrough": ("cluster.local",)},
        "",
    ),
    (
        "names that fall through are forwarded: `disable` keeps their answers uncached",
        corefile(
            "    cache 30 {\n       disable success cluster.local\n    }\n",
            options="       fallthrough\n",
        ),
        {"dns.fallthrough": ("cluster.local",), "cache.disable_success": ("cluster.local",)},
        "Corefile:3: kubernetes fallthrough: accepted: PTR questions for addresses no Service "
        "owns are forwarded",
    ),
    (
        "disable without zones: the block's; success and denial apart; lines add up",
        corefile() + "corp.example {\n    forward . 10.0.0.1\n    cache {\n       disable denial\n"
        "       disable success a.corp.example\n       disable success b.corp.example\n    }\n}\n",
        {
            "cache.disable_denial": ("corp.example",),
            "cache.disable_success": ("a.corp.example", "b.corp.example"),
        },
        "",
    ),
    (
        "ignore takes only empty_service; endpoint_pod_names and noendpoints take nothing",
        corefile(options="       ignore other\n       noendpoints now\n"),
        {"dns.ignore_empty_service": "<unset>", "dns.noendpoints": "<unset>"},
        "Corefile:3: kubernetes ignore: not supported: not supported yet\n"
        "Corefile:4: kubernetes noendpoints: not supported: not supported yet",
    ),
    (
        "options that filter or change cluster answers; those kdns has",
        corefile(
            options="       namespaces default kube-system\n       labels app=x\n"
            "       endpoint_pod_names\n"
            "       noendpoints\n       ignore empty_service\n       multicluster\n"
            "       endpoint https://10.0.0.1:6443\n       fallthrough\n       bogus 1\n"
        ),
        {
            "kubernetes.namespaces": ("default", "kube-system"),
            "kubernetes.labels": "app=x",
            "dns.fallthrough": ("cluster.local",),
            "dns.endpoint_pod_names": True,
            "dns.noendpoints": True,
            "dns.ignore_empty_service": True,
        },
        "Corefile:9: kubernetes endpoint: not supported: not supported yet\n"
        "Corefile:10: kubernetes fallthrough: accepted: PTR questions for addresses no Service "
        "owns are forwarded\n"
        "Corefile:11: kubernetes bogus: not supported: unknown option",
    ),
    (
        "k8s_external ZONES with apex and ttl",
        corefile(
            "    k8s_external example.org other.example {\n       apex ns\n       ttl 30\n"
            "       headless\n    }\n"
        ),
        {
            "dns.external_zones": ("example.org", "other.example"),
            "dns.external_apex": "ns",
            "dns.external_ttl": 30,
        },
        "Corefile:6: k8s_external headless: not supported: unknown option",
    ),
    (
        "multicluster ZONES: clusterset zones among the block's (CoreDNS 1.12.2)",
        ".:53 {\n    kubernetes cluster.local clusterset.local {\n"
        "       multicluster clusterset.local.\n    }\n}\n",
        {
            "dns.zones": ("cluster.local", "clusterset.local"),
            "dns.multicluster": ("clusterset.local",),
        },
        "",
    ),
    (
        "labels: CoreDNS joins the arguments into one set-based selector",
        corefile(options="       labels app in (web, api) , !canary\n"),
        {"kubernetes.labels": "app in (web, api) , !canary", "kubernetes.namespaces": "<unset>"},
        "",
    ),
    (
        "forward: addresses, with and without ports; max_fails, health_check, expire",
        corefile(
            "    forward . 10.0.0.1 dns://10.0.0.2:5353 [fd00::1]:53 {\n"
            "       max_fails 3\n       health_check 1s\n       expire 20s\n       prefer_udp\n"
            "       failfast_all_unhealthy_upstreams\n    }\n"
        ),
        {
            "forward.upstreams": ("10.0.0.1", "10.0.0.2:5353", "[fd00::1]:53"),
            "forward.expire": 20.0,
            "forward.max_fails": 3,
            "forward.health_check": 1.0,
        },
        "Corefile:7: forward prefer_udp: accepted: kdns asks over UDP and retries over TCP when "
        "the answer is truncated\n"
        "Corefile:8: forward failfast_all_unhealthy_upstreams: accepted: kdns tries unhealthy "
        "upstreams last, then fails",
    ),
    (
        "forward: DNS over TLS, with the server name its certificate holds",
        corefile(
            "    forward . tls://1.1.1.1 tls://[2606:4700:4700::1111]:853 {\n"
            "       tls_servername cloudflare-dns.com\n       tls\n    }\n"
        ),
        {
            "forward.upstreams": ("tls://1.1.1.1", "tls://[2606:4700:4700::1111]:853"),
            "forward.tls_servername": "cloudflare-dns.com",
            "forward.tls_ca": "<unset>",
        },
        "",
    ),
    (
        "forward tls: CA; CERT KEY; CERT KEY CA (CoreDNS's pkg/tls)",
        corefile(
            "    forward . tls://10.0.0.1 {\n       tls /ca.pem\n    }\n"
            "    forward corp.example tls://10.1.0.1:8853 {\n       tls /c.pem /k.pem /ca.pem\n    }\n"
        ),
        {
            "forward.tls_ca": "/ca.pem",
            "forward.tls_cert": "/c.pem",
            "forward.tls_key": "/k.pem",
            "forward.stub_domains": (("corp.example", ("tls://10.1.0.1:8853",)),),
        },
        "",
    ),
    (
        "forward: https:// and grpc:// upstreams",
        corefile("    forward . https://1.1.1.1/dns-query\n"),
        {"forward.upstreams": ()},
        "Corefile:3: forward: not supported: https:// upstreams are not supported yet",
    ),
    (
        "forward: policy, force_tcp and except in the root block",
        corefile(
            "    forward . 10.0.0.1 10.0.0.2 {\n       policy sequential\n       force_tcp\n"
            "       except corp.example Lab.Example.\n    }\n"
        ),
        {
            "forward.upstreams": ("10.0.0.1", "10.0.0.2"),
            "forward.policy": "sequential",
            "forward.force_tcp": True,
            "forward.except_zones": ("corp.example", "lab.example"),
        },
        "",
    ),
    (
        "forward: except in a stub block; policy round_robin",
        corefile("    forward . 10.0.0.1\n")
        + "corp.example {\n    forward . 10.1.0.1 10.1.0.2 {\n       policy round_robin\n"
        "       except lab.corp.example\n    }\n}\n",
        {"forward.policy": "round_robin", "forward.except_zones": "<unset>"},
        "Corefile:8: forward except: not supported: kdns follows except only in the root zone's "
        "forward",
    ),
    (
        "forward ZONE in the root block is a stub domain; a second root forward is refused",
        corefile(
            "    forward corp.example 10.1.0.1\n    forward . 10.0.0.1\n    forward . 10.0.0.2\n"
        ),
        {
            "forward.upstreams": ("10.0.0.1",),
            "forward.stub_domains": (("corp.example", ("10.1.0.1",)),),
        },
        "Corefile:5: forward: not supported: a second forward for the root zone",
    ),
    (
        "a stub block inside a cluster zone: kdns answers those names itself",
        corefile() + "my.cluster.local:53 {\n    forward . 2.3.4.5\n}\n",
        {},
        "Corefile:5: forward: not supported: kdns answers every name under my.cluster.local "
        "from the cluster",
    ),
    (
        "a stub block sending its zone to another resolv.conf",
        corefile("    forward . /etc/resolv.conf\n")
        + "corp.example {\n    forward . /etc/other.conf\n}\n",
        {"forward.resolv_conf": "/etc/resolv.conf", "forward.upstreams": None},
        "Corefile:6: forward: not supported: a stub domain's servers must be addresses (or the "
        "root's file)",
    ),
    (
        "cache: capacities, TTLs, prefetch, serve_stale immediate",
        corefile(
            "    cache 300 {\n       success 5000 600 10\n       denial 2000 60\n"
            "       prefetch 10 1m 10%\n       serve_stale 10m\n       servfail 2s\n    }\n"
        ),
        {
            "cache.success": 5000,
            "cache.max_ttl": 600,
            "cache.denial": 2000,
            "cache.max_denial_ttl": 60,
            "cache.serve_stale": 600.0,
            "cache.prefetch": 10,
            "cache.prefetch_duration": 60.0,
            "cache.prefetch_percentage": 10,
        },
        "Corefile:4: cache success: accepted: kdns keeps an answer for its own TTL, no minimum\n"
        "Corefile:7: cache serve_stale: accepted: kdns serves a stale answer only once the "
        "upstreams fail (verify)\n"
        "Corefile:8: cache servfail: accepted: kdns keeps a SERVFAIL for 5 s",
    ),
    (
        "cache without TTL: CoreDNS's caps; disable outside the cluster zones; keepttl",
        corefile("    cache {\n       disable success example.org\n       keepttl\n    }\n"),
        {
            "cache.max_ttl": 3600,
            "cache.max_denial_ttl": 1800,
            "cache.disable_success": ("example.org",),
        },
        "Corefile:5: cache keepttl: not supported: not supported yet",
    ),
    (
        "health, ready, prometheus addresses; log with a class",
        corefile(
            "    health 127.0.0.1:18080 {\n       lameduck 2.5s\n    }\n    ready :18181\n"
            "    prometheus\n    log {\n       class denial\n    }\n"
        ),
        {
            "dns.health_addr": "127.0.0.1:18080",
            "dns.lameduck": 2.5,
            "dns.ready_addr": "0.0.0.0:18181",
            "dns.metrics_addr": "127.0.0.1:9153",
            "dns.metrics_coredns_names": True,
            "logging.query_log": "text",
        },
        "Corefile:8: log: accepted: kdns logs every query in CoreDNS's common log format, for all "
        "names",
    ),
    (
        "reload, loadbalance, autopath, bind",
        corefile(
            "    reload 1m30s\n    loadbalance round_robin\n    autopath @kubernetes\n    bind ::1\n"
        ),
        {
            "dns.reload_interval": 90.0,
            "dns.loadbalance": "round_robin",
            "dns.autopath": True,
            "dns.addr": "[::1]:53",
        },
        "",
    ),
    (
        "unsupported forms of loadbalance, autopath and bind",
        corefile(
            "    loadbalance weighted /w.txt\n    autopath cluster.local /etc/resolv.conf\n"
            "    bind eth0 lo\n"
        ),
        {"dns.addr": "0.0.0.0:53"},
        "Corefile:3: loadbalance: not supported: only round_robin is supported\n"
        "Corefile:4: autopath: not supported: only `autopath @kubernetes` is supported\n"
        "Corefile:5: bind: not supported: kdns listens on one address: give one IP",
    ),
    (
        "harmless plugins are accepted, the others refused",
        corefile(
            '    debug\n    whoami\n    pprof\n    errors {\n       consolidate 5m ".*"\n    }\n'
            "    rewrite type AAAA A\n    template CH TXT x.example\n    k8s_external example.com\n"
            "    any\n    dns64\n"
        ),
        {},
        "Corefile:3: debug: accepted: kdns logs failures without it\n"
        "Corefile:4: whoami: accepted: only answers names no other plugin of the block handles\n"
        "Corefile:5: pprof: accepted: kdns has no profiling endpoint\n"
        "Corefile:6: errors: accepted: kdns logs errors on its own\n"
        "Corefile:7: errors: accepted: ignored with its directive\n"
        "Corefile:9: rewrite: not supported: only `rewrite name` is supported (here type)\n"
        "Corefile:10: template: not supported: kdns answers only class IN\n"
        "Corefile:12: any: not supported: kdns does not have this plugin yet, and it changes answers\n"
        "Corefile:13: dns64: not supported: kdns does not have this plugin yet, and it changes answers",
    ),
    (
        "one port for every block; other ports are refused",
        ".:1053 {\n    kubernetes cluster.local\n}\ncorp.example:5300 {\n    forward . 10.0.0.1\n}\n",
        {"dns.addr": "0.0.0.0:1053", "dns.zones": ("cluster.local",)},
        "Corefile:4: server block: not supported: kdns listens on one port, and line 1 uses 1053",
    ),
    (
        "kubernetes without zones takes the block's; a CIDR key is its reverse zone",
        "cluster.local 10.96.0.0/16 fd00:10::/32 {\n    kubernetes\n}\n",
        {"dns.zones": ("cluster.local", "96.10.in-addr.arpa", "0.1.0.0.0.0.d.f.ip6.arpa")},
        "",
    ),
    (
        "kubernetes zones outside the block's are never asked",
        "cluster.local {\n    kubernetes cluster.local example.org\n}\n",
        {"dns.zones": ("cluster.local",)},
        "Corefile:2: kubernetes: not supported: zone example.org is outside the block's zones",
    ),
    (
        "two blocks setting one kdns key differently",
        corefile("    cache 30\n") + "corp.example {\n    cache 60\n    forward . 10.0.0.1\n}\n",
        {"cache.max_ttl": 30},
        "Corefile:6: cache: not supported: kdns has one cache.max_ttl for every server block, and "
        "Corefile:3 sets 30 (here 60)\n"
        "Corefile:6: cache: not supported: kdns has one cache.max_denial_ttl for every server "
        "block, and Corefile:3 sets 30 (here 60)",
    ),
]


@pytest.mark.parametrize(
    "text, keys, lines", [(t, k, n) for _, t, k, n in OPTIONS], ids=[o[0] for o in OPTIONS]
)
def test_directives_and_options(text: str, keys: dict[str, object], lines: str) -> None:
    translation = inline(text)
    values = translation.values()
    assert {k: values.get(k, "<unset>") for k in keys} == keys
    assert "\n".join(str(n) for n in translation.notes) == lines


PLUGIN_OPTIONS = [
    # (what, Corefile lines after `kubernetes`, keys it sets, its notes)
    (
        "hosts: a file, its zones and every option; inline lines",
        "    hosts /etc/extra-hosts example.org 10.0.0.0/8 {\n       10.0.0.1 a.example.org\n"
        "       ttl 60\n       reload 0\n       no_reverse\n       fallthrough example.org\n    }\n",
        {
            "hosts.file": "/etc/extra-hosts",
            "hosts.zones": ("example.org", "10.in-addr.arpa"),
            "hosts.entries": ("10.0.0.1 a.example.org",),
            "hosts.ttl": 60,
            "hosts.reload": 0.0,
            "hosts.no_reverse": True,
            "hosts.fallthrough": ("example.org",),
        },
        "",
    ),
    (
        "hosts alone reads /etc/hosts for every name, with no fallthrough",
        "    hosts\n",
        {"hosts.file": "/etc/hosts", "hosts.zones": (".",), "hosts.fallthrough": "<unset>"},
        "",
    ),
    (
        "template: a fixed answer, lines as written",
        "    template IN A example.org {\n"
        '       match "^(?P<ip>[0-9-]+)[.]example[.]org[.]$"\n'
        '       answer "{{ .Name }} 60 IN A 192.0.2.1"\n'
        '       additional "ns.{{ .Zone }} 60 IN A 192.0.2.53"\n'
        "       upstream\n    }\n",
        {
            "dns.templates": (
                {
                    "class": "IN",
                    "type": "A",
                    "zones": ["example.org"],
                    "match": ["^(?P<ip>[0-9-]+)[.]example[.]org[.]$"],
                    "answer": ["{{ .Name }} 60 IN A 192.0.2.1"],
                    "additional": ["ns.{{ .Zone }} 60 IN A 192.0.2.53"],
                    "where": "Corefile:6",
                },
            )
        },
        "Corefile:10: template upstream: accepted: deprecated in CoreDNS; ignored",
    ),
    (
        "rewrite name: every match type, continue, answer auto and the block form, in order",
        "    rewrite name exact a.example b.example\n"
        "    rewrite continue name prefix old- new- answer auto\n"
        "    rewrite stop {\n       name suffix .corp .svc.cluster.local\n"
        "       answer name (.*)\\.svc\\.cluster\\.local {1}.corp\n    }\n"
        "    rewrite name substring staging prod\n"
        "    rewrite name api.example api.default.svc.cluster.local\n",
        {
            "dns.rewrites": (
                {
                    "match": "exact",
                    "from": "a.example",
                    "to": "b.example",
                    "stop": True,
                    "where": "Corefile:6",
                },
                {
                    "match": "prefix",
                    "from": "old-",
                    "to": "new-",
                    "answer": "auto",
                    "stop": False,
                    "where": "Corefile:7",
                },
                {
                    "match": "suffix",
                    "from": ".corp",
                    "to": ".svc.cluster.local",
                    "answer": "name",
                    "answer_from": r"(.*)\.svc\.cluster\.local",
                    "answer_to": "{1}.corp",
                    "stop": True,
                    "where": "Corefile:8",
                },
                {
                    "match": "substring",
                    "from": "staging",
                    "to": "prod",
                    "stop": True,
                    "where": "Corefile:12",
                },
                {
                    "match": "exact",
                    "from": "api.example",
                    "to": "api.default.svc.cluster.local",
                    "stop": True,
                    "where": "Corefile:13",
                },
            )
        },
        "",
    ),
    (
        "rewrites kdns does not do",
        "    rewrite name regex (.*) {1}.x answer value (.*) {1}\n    rewrite edns0 local set 1 2\n",
        {"dns.rewrites": "<unset>"},
        "Corefile:6: rewrite: not supported: `answer value` is not supported yet\n"
        "Corefile:7: rewrite: not supported: only `rewrite name` is supported (here edns0)",
    ),
]


@pytest.mark.parametrize(
    "text, keys, lines",
    [(t, k, n) for _, t, k, n in PLUGIN_OPTIONS],
    ids=[o[0] for o in PLUGIN_OPTIONS],
)
def test_hosts_template_and_rewrite(text: str, keys: dict[str, object], lines: str) -> None:
    translation = inline(
        ".:53 {\n    errors\n    kubernetes cluster.local\n    forward . 10.0.0.1\n"
        "    cache 30\n" + text + "}\n"
    )
    values = translation.values()
    assert {k: values.get(k, "<unset>") for k in keys} == keys
    assert (
        "\n".join(str(n) for n in translation.notes)
        .replace("Corefile:2: errors: accepted: kdns logs errors on its own", "")
        .strip()
        == lines
    )


def test_a_rewrite_outside_the_root_block_is_refused() -> None:
    translation = inline(
        ".:53 {\n    kubernetes cluster.local\n}\n"
        "corp.example {\n    rewrite name a.corp.example b.corp.example\n    forward . 10.0.0.1\n}\n"
    )
    assert [str(n) for n in translation.refused] == [
        "Corefile:5: rewrite: not supported: kdns rewrites in the root block only (its rules see "
        "every name)"
    ]


BLOCK_ERRORS = [
    (
        "tls://.:853 {\n    kubernetes cluster.local\n}\n",
        "Corefile:1: tls://.:853: only plain DNS server blocks are supported (not tls://); kdns "
        "serves DNS over UDP and TCP",
    ),
    (".:99999 {\n}\n", "Corefile:1: .:99999: the port must be a number in 1-65535"),
    (
        "10.0.0.0/12 {\n    kubernetes\n}\n",
        "Corefile:1: 10.0.0.0/12: only CIDRs on a label boundary (/8, /16, …) are supported as "
        "reverse zones",
    ),
    (
        ".:53 {\n    kubernetes cluster.local {\n       pods\n    }\n}\n",
        "Corefile:3: pods takes one of insecure, verified, disabled",
    ),
    (
        ".:53 {\n    kubernetes cluster.local\n    forward .\n}\n",
        "Corefile:3: forward needs a zone and at least one destination",
    ),
    (
        ".:53 {\n    kubernetes cluster.local\n    health {\n       lameduk 5s\n    }\n}\n",
        "Corefile:4: health: unknown option 'lameduk'",
    ),
    (
        ".:53 {\n    kubernetes cluster.local\n    hosts {\n       10.0.0.1\n    }\n}\n",
        "Corefile:4: hosts: 10.0.0.1: a line names at least one host",
    ),
    (
        ".:53 {\n    kubernetes cluster.local\n    template ANY ANY x {\n       rcode NOPE\n    }\n"
        "    template ANY ANY y {\n       match (\n    }\n}\n",
        "Corefile:3: template: rcode: must be one of NOERROR, FORMERR, SERVFAIL, NXDOMAIN, "
        "NOTIMP, REFUSED (got 'NOPE')",
    ),
    (
        ".:53 {\n    kubernetes cluster.local {\n       multicluster clusterset.local\n    }\n}\n",
        "Corefile:3: multicluster zone 'clusterset.local' is not a zone of the kubernetes block",
    ),
    (
        ".:53 {\n    kubernetes cluster.local\n    rewrite name a.example\n}\n",
        "Corefile:3: rewrite name takes FROM and TO",
    ),
]


@pytest.mark.parametrize("text, message", BLOCK_ERRORS)
def test_what_coredns_refuses_to_start_with(text: str, message: str) -> None:
    with pytest.raises(CorefileError) as caught:
        inline(text)
    assert str(caught.value) == message


def test_reads_imports_from_the_real_file_system(tmp_path: Path) -> None:
    # AKS's layout: the Corefile beside the coredns-custom mount, imported by relative globs.
    (tmp_path / "custom").mkdir()
    (tmp_path / "Corefile").write_text((DATA / "aks.Corefile").read_text())
    for name in ("puglife.server", "override-block.server"):
        (tmp_path / "custom" / name).write_text((DATA / "aks-custom" / name).read_text())
    translation = read_corefile(str(tmp_path / "Corefile"), {})
    assert translation.values()["forward.stub_domains"] == (("puglife.local", ("192.11.0.1",)),)
    assert translation.refused == ()
    (tmp_path / "custom" / "puglife.server").unlink()
    assert "forward.stub_domains" not in read_corefile(str(tmp_path / "Corefile"), {}).values()


def test_an_unreadable_corefile_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CorefileError) as caught:
        read_corefile(str(tmp_path / "nope"), {})
    assert (
        str(caught.value)
        == f"{tmp_path}/nope:1: cannot read the Corefile: No such file or directory"
    )

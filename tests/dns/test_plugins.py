"""kdns.dns.hosts, template and rewrite: CoreDNS's plugins of those names as pure tables.
Expectations are zone-file text; None means the question goes on to the next handler (the
cluster zones, then the upstreams), as CoreDNS's `plugin.NextOrFailure`."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord

from kdns.config import Config, RewriteRule, TemplateRule
from kdns.dns.hosts import Hosts, parse_hosts
from kdns.dns.plugins import Plugins, renamed
from kdns.dns.rewrite import Rewriter
from kdns.dns.template import Templates
from kdns.dns.wire import Query, encode, finish, parse_query
from tests.dns.cluster import rrset, zone

NODE_HOSTS = """\
172.18.0.2 k3s-server
172.18.0.3 k3s-agent-1
# a comment, and a line that is no hosts line:
not-an-ip some-name
fd00::3 k3s-agent-1 agent.example  # two names
"""


def hosts(**keys: object) -> Hosts:
    section = Config().with_overrides(**{f"hosts.{k}": v for k, v in keys.items()}).hosts
    table = parse_hosts("\n".join(section.entries))
    return Hosts(section, parse_hosts(NODE_HOSTS, table))


HOSTS_CASES = [
    # (keys, qname, qtype, rcode or None, zone text)
    ({}, "k3s-server", "A", "NOERROR", "k3s-server. 3600 IN A 172.18.0.2"),
    (
        {},
        "k3s-agent-1",
        "AAAA",
        "NOERROR",
        "k3s-agent-1. 3600 IN AAAA fd00::3",
    ),
    ({"ttl": 60}, "K3S-Server", "A", "NOERROR", "k3s-server. 60 IN A 172.18.0.2"),
    ({}, "k3s-server", "AAAA", "NOERROR", ""),  # a known name, no such record: NODATA
    ({}, "k3s-server", "MX", "NOERROR", ""),
    ({}, "k3s-server", "ANY", "NOERROR", ""),  # CoreDNS's hosts answers only A, AAAA, PTR
    ({}, "unknown", "A", "SERVFAIL", ""),  # no SOA to deny with: SERVFAIL (plugin/hosts)
    ({"fallthrough": ["."]}, "unknown", "A", None, ""),
    ({"fallthrough": ["example"]}, "unknown", "A", "SERVFAIL", ""),
    ({"fallthrough": ["example"]}, "x.example", "A", None, ""),
    ({"zones": ["example"]}, "k3s-server", "A", None, ""),  # outside the zones: next
    ({"zones": ["example"]}, "agent.example", "A", "NOERROR", ""),
    (
        {},
        "2.0.18.172.in-addr.arpa",
        "PTR",
        "NOERROR",
        "2.0.18.172.in-addr.arpa. 3600 IN PTR k3s-server.",
    ),
    (
        {"zones": ["example"]},  # PTRs are answered whatever the zones
        "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
        "PTR",
        "NOERROR",
        """3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 3600 IN PTR k3s-agent-1.
        3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 3600 IN PTR agent.example.""",
    ),
    ({}, "9.9.9.10.in-addr.arpa", "PTR", None, ""),  # no line has it: next, whatever fallthrough
    ({"no_reverse": True}, "2.0.18.172.in-addr.arpa", "PTR", None, ""),
    (
        {"entries": ["192.168.1.10 registry.corp.example", "172.18.0.9 k3s-server"]},
        "k3s-server",
        "A",
        "NOERROR",
        """k3s-server. 3600 IN A 172.18.0.9
        k3s-server. 3600 IN A 172.18.0.2""",
    ),  # inline lines first, then the file's
]


@pytest.mark.parametrize(("keys", "qname", "qtype", "rcode", "expected"), HOSTS_CASES)
def test_hosts(keys: dict, qname: str, qtype: str, rcode: str | None, expected: str) -> None:
    answer = hosts(**keys).answer(qname.lower(), getattr(QTYPE, qtype))
    if rcode is None:
        assert answer is None
        return
    assert answer is not None
    assert RCODE.get(answer.rcode) == rcode
    assert rrset(answer.answer) == zone(expected)
    if "entries" in keys:  # the order of the lines is kept
        assert [str(rr.rdata) for rr in answer.answer] == ["172.18.0.9", "172.18.0.2"]


AKS = (
    TemplateRule(
        zones=("internal.cloudapp.net",),
        match=(r"^(?:[^.]+\.){4,}internal\.cloudapp\.net\.$",),
        rcode="NXDOMAIN",
        fallthrough=(".",),
    ),
    TemplateRule(zones=("reddog.microsoft.com",), rcode="NXDOMAIN"),
)
FIXED = (
    TemplateRule(
        qclass="IN",
        qtype="A",
        zones=("example",),
        match=(r"^ip-(?P<a>\d+)-(\d+)-(\d+)-(\d+)\.example\.$",),
        answer=(
            "{{ .Name }} 60 IN A {{ .Group.a }}.{{ index .Match 2 }}.{{ index .Match 3 }}."
            "{{ index .Match 4 }}",
        ),
        additional=("ns.{{ .Zone }} 60 IN A 192.0.2.53",),
    ),
    TemplateRule(zones=("example",), match=("^bad",), answer=("{{ .Name }} 60 IN A not-an-ip",)),
)

TEMPLATE_CASES = [
    # (rules, qname, qtype, rcode or None, answer zone text, additional zone text)
    (AKS, "a.b.c.d.internal.cloudapp.net", "A", "NXDOMAIN", "", ""),
    (AKS, "a.b.c.d.internal.cloudapp.net", "AAAA", "NXDOMAIN", "", ""),  # ANY ANY: every type
    (AKS, "vm1.internal.cloudapp.net", "A", None, "", ""),  # too few labels: falls through
    (AKS, "anything.reddog.microsoft.com", "TXT", "NXDOMAIN", "", ""),
    (AKS, "reddog.microsoft.com", "SOA", "NXDOMAIN", "", ""),
    (AKS, "microsoft.com", "A", None, "", ""),  # outside every template zone
    (
        FIXED,
        "ip-10-1-2-3.example",
        "A",
        "NOERROR",
        "ip-10-1-2-3.example. 60 IN A 10.1.2.3",
        "ns.example. 60 IN A 192.0.2.53",
    ),
    # Another type skips the A rule; the next rule's regex misses, without fallthrough.
    (FIXED, "ip-10-1-2-3.example", "AAAA", "SERVFAIL", "", ""),
    (FIXED[:1], "ip-10-1-2-3.example", "AAAA", None, "", ""),  # no rule takes it: next
    (FIXED, "other.example", "A", "SERVFAIL", "", ""),  # a regex miss without fallthrough
    (FIXED, "bad.example", "A", "SERVFAIL", "", ""),  # what the template gives is no record
]


@pytest.mark.parametrize(
    ("rules", "qname", "qtype", "rcode", "answer", "additional"), TEMPLATE_CASES
)
def test_template(
    rules: tuple[TemplateRule, ...],
    qname: str,
    qtype: str,
    rcode: str | None,
    answer: str,
    additional: str,
) -> None:
    result = Templates(rules).answer(qname, getattr(QTYPE, qtype))
    if rcode is None:
        assert result is None
        return
    assert result is not None
    assert RCODE.get(result.rcode) == rcode
    assert rrset(result.answer) == zone(answer)
    assert rrset(result.additional) == zone(additional)


def rules(*given: dict) -> tuple[RewriteRule, ...]:
    return Config().with_overrides(**{"dns.rewrites": list(given)}).dns.rewrites


PUBLIC = {"match": "exact", "from": "api.example.org", "to": "api.default.svc.cluster.local"}
REGEX = {
    "match": "regex",
    "from": r"(.*)\.example\.com",
    "to": "{1}.default.svc.cluster.local",
    "answer": "name",
    "answer_from": r"(.*)\.default\.svc\.cluster\.local",
    "answer_to": "{1}.example.com",
}

REWRITE_CASES = [
    # (rules, qname, the name answered or None, {answer owner: the owner the client sees})
    (
        (PUBLIC,),
        "api.example.org",
        "api.default.svc.cluster.local",
        {"api.default.svc.cluster.local": "api.example.org", "other.svc": "other.svc"},
    ),
    ((PUBLIC,), "www.example.org", None, {}),
    (
        (REGEX,),
        "web.example.com",
        "web.default.svc.cluster.local",
        {"web.default.svc.cluster.local": "web.example.com"},
    ),
    (
        ({"match": "prefix", "from": "old-", "to": "new-"},),
        "old-db.ns.svc.cluster.local",
        "new-db.ns.svc.cluster.local",
        {"new-db.ns.svc.cluster.local": "new-db.ns.svc.cluster.local"},
    ),
    (
        ({"match": "prefix", "from": "old-", "to": "new-", "answer": "auto"},),
        "old-db.ns.svc.cluster.local",
        "new-db.ns.svc.cluster.local",
        {"new-db.ns.svc.cluster.local": "old-db.ns.svc.cluster.local"},
    ),
    (
        (
            {
                "match": "suffix",
                "from": "corp.internal",
                "to": "svc.cluster.local",
                "answer": "auto",
            },
        ),
        "db.prod.corp.internal",
        "db.prod.svc.cluster.local",
        {"db.prod.svc.cluster.local": "db.prod.corp.internal"},
    ),
    (
        ({"match": "substring", "from": ".staging.", "to": ".prod.", "answer": "auto"},),
        "db.staging.svc.cluster.local",
        "db.prod.svc.cluster.local",
        {"db.prod.svc.cluster.local": "db.staging.svc.cluster.local"},
    ),
    # continue lets the next rule see the result; stop (the default) ends the run.
    (
        (
            {**PUBLIC, "stop": False},
            {
                "match": "suffix",
                "from": "default.svc.cluster.local",
                "to": "prod.svc.cluster.local",
            },
        ),
        "api.example.org",
        "api.prod.svc.cluster.local",
        {"api.prod.svc.cluster.local": "api.prod.svc.cluster.local"},
    ),
    (
        (
            PUBLIC,
            {
                "match": "suffix",
                "from": "default.svc.cluster.local",
                "to": "prod.svc.cluster.local",
            },
        ),
        "api.example.org",
        "api.default.svc.cluster.local",
        {},
    ),
    (
        ({"match": "regex", "from": "^(.*)$", "to": "{1}{1}{1}{1}{1}"},),
        "a" * 60 + ".org",
        "",
        {},
    ),  # not a name once rewritten: SERVFAIL
]


@pytest.mark.parametrize(("given", "qname", "name", "owners"), REWRITE_CASES)
def test_rewrite(given: tuple[dict, ...], qname: str, name: str | None, owners: dict) -> None:
    result = Rewriter(rules(*given)).rewrite(qname)
    if name is None:
        assert result is None
        return
    assert result is not None
    assert result.name == name
    for owner, seen in owners.items():
        assert result.revert(owner) == seen


# --- the chain: rewrite, then template, then hosts, then the cluster zones and upstreams ---------


def chain(**keys: object) -> Plugins | None:
    return Plugins.from_config(Config().with_overrides(**keys), NODE_HOSTS)


def test_no_plugin_configured_is_no_chain() -> None:
    assert chain() is None


def test_template_comes_before_hosts_and_a_miss_goes_on() -> None:
    plugins = chain(
        **{
            "hosts.file": "/etc/coredns/NodeHosts",
            "hosts.fallthrough": ["."],
            "dns.templates": [{"zones": ["k3s-server"], "rcode": "NXDOMAIN"}],
        }
    )
    assert plugins is not None
    first = plugins.answer("k3s-server", QTYPE.A)
    assert first is not None and (first.plugin, RCODE.get(first.rcode)) == ("template", "NXDOMAIN")
    second = plugins.answer("k3s-agent-1", QTYPE.A)
    assert second is not None and second.plugin == "hosts"
    assert rrset(second.answer) == zone("k3s-agent-1. 3600 IN A 172.18.0.3")
    assert plugins.answer("web.default.svc.cluster.local", QTYPE.A) is None


def test_the_hosts_file_is_re_read_and_the_inline_lines_kept() -> None:
    plugins = chain(**{"hosts.file": "/h", "hosts.entries": ["10.0.0.1 inline.example"]})
    assert plugins is not None
    plugins.load_hosts_file("172.18.0.4 k3s-agent-2\n")
    assert plugins.hosts_file_text == "172.18.0.4 k3s-agent-2\n"
    for name, expected in (
        ("k3s-agent-2", "k3s-agent-2. 3600 IN A 172.18.0.4"),
        ("inline.example", "inline.example. 3600 IN A 10.0.0.1"),
    ):
        found = plugins.answer(name, QTYPE.A)
        assert found is not None and rrset(found.answer) == zone(expected)
    gone = plugins.answer("k3s-server", QTYPE.A)
    assert gone is not None and gone.rcode == RCODE.SERVFAIL


def test_a_rewritten_answer_carries_the_question_and_names_the_client_asked() -> None:
    client = parse_query(bytes(DNSRecord.question("API.example.org", "A").pack()))
    assert isinstance(client, Query)
    plugins = chain(**{"dns.rewrites": [PUBLIC]})
    assert plugins is not None
    rewritten = plugins.rewrite(client.qname)
    assert rewritten is not None
    asked = parse_query(bytes(DNSRecord.question(rewritten.name, "A").pack()))
    assert isinstance(asked, Query)
    inner = encode(
        asked,
        RCODE.NOERROR,
        RR.fromZone("api.default.svc.cluster.local. 5 IN A 10.96.0.10"),
    )
    response = DNSRecord.parse(finish(renamed(client, inner, rewritten.revert, True), client, True))
    assert (response.header.id, str(response.q.qname)) == (client.id, "API.example.org.")
    assert rrset(response.rr) == zone("api.example.org. 5 IN A 10.96.0.10")
    assert response.header.aa and response.header.ra

"""`kdns explain` behind rewrite, template and hosts: the rule's Corefile line (or the hosts
file) is named, and a rewritten question is explained as the name it became."""

from __future__ import annotations

from pathlib import Path

from dnslib import QTYPE

from kdns.corefile.load import load_corefile
from kdns.dns.explain import explain_asked, render
from kdns.dns.plugins import Plugins
from kdns.dns.resolver import Resolver
from kdns.store import Store
from tests.corefile.test_translate import DATA
from tests.dns.cluster import load
from tests.e2e.conftest import EXAMPLES, run_kdns


def served(corefile: Path, hosts_text: str = "") -> tuple[Plugins | None, Resolver]:
    config, _ = load_corefile(str(corefile), {})
    store = Store()
    load(store)
    return Plugins.from_config(config, hosts_text), Resolver(store, config)


def test_a_template_answer_names_its_corefile_line() -> None:
    plugins, resolver = served(DATA / "aks.Corefile")
    explained = explain_asked(plugins, resolver, "x.reddog.microsoft.com", QTYPE.A)
    assert (explained.outcome, explained.codes) == ("NXDOMAIN", ["template"])
    assert f"the template at {DATA}/aks.Corefile:24" in render(explained)


def test_a_rewrite_names_its_line_and_explains_the_name_it_became() -> None:
    plugins, resolver = served(DATA / "rewrite.Corefile")
    explained = explain_asked(plugins, resolver, "redis.example.com", QTYPE.A)
    assert explained.qname == "redis.default.svc.cluster.local"
    assert explained.codes[0] == "rewritten"
    assert f"{DATA}/rewrite.Corefile:7" in explained.reasons[0].text
    assert explained.outcome == "NOERROR"
    assert explained.origins() == ["Service default/redis spec.clusterIP"]


def test_a_hosts_answer_names_the_file(tmp_path: Path) -> None:
    corefile = tmp_path / "Corefile"
    text = (DATA / "k3s.Corefile").read_text().replace("%{CLUSTER_DOMAIN}%", "cluster.local")
    corefile.write_text(text)
    plugins, resolver = served(corefile, (DATA / "k3s.NodeHosts").read_text())
    explained = explain_asked(plugins, resolver, "k3s-server", QTYPE.A)
    assert explained.codes == ["hosts"]
    assert explained.origins() == ["hosts: the hosts file /etc/coredns/NodeHosts"]


def test_the_command_names_the_template_line(tmp_path: Path) -> None:
    # The upstream by address (explain sends nothing): the machine's resolv.conf may name a
    # loopback resolver, which kdns on :53 would refuse as a loop.
    corefile = tmp_path / "aks.Corefile"
    text = (DATA / "aks.Corefile").read_text()
    corefile.write_text(text.replace("forward . /etc/resolv.conf", "forward . 192.0.2.1"))
    result = run_kdns(
        "explain",
        "--corefile",
        str(corefile),
        "--manifests",
        str(EXAMPLES),
        "a.b.c.d.e.internal.cloudapp.net",
    )
    assert result.returncode == 0, result.stderr
    assert "status: NXDOMAIN" in result.stdout
    assert f"answered by the template at {corefile}:19" in result.stdout

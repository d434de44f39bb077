"""`kdns serve --corefile` with the distro Corefiles that use hosts, template and rewrite, asked
with real dig: k3s's NodeHosts (and its reload), AKS's NXDOMAIN templates, the hand-edited
rewrite Corefile.

Each Corefile is the one in data/, moved onto loopback: its port, `bind 127.0.0.1`, the probe
addresses, `forward .` to a real dnsmasq on loopback instead of /etc/resolv.conf, and k3s's
paths under the test's folder. Everything else is as the distro ships it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_tool
from tests.corefile.test_cli import Corefile, serve, wait_for
from tests.corefile.test_translate import DATA
from tests.dns.upstreams import WWW_V4, dnsmasq
from tests.e2e.conftest import HOST, ask, write_atomically
from tests.e2e.running import Served

VM_V4 = "192.0.2.77"  # vm1.internal.cloudapp.net at the upstream: AKS's template lets it through


@pytest.fixture
def served() -> Iterator[list[Served]]:
    servers: list[Served] = []
    yield servers
    for server in servers:
        server.stop()


def on_loopback(name: str, corefile: Corefile, upstream: int, node_hosts: Path) -> str:
    """data/NAME with its addresses and paths moved onto the test's (module docstring)."""
    health, ready, metrics = corefile.http
    text = (DATA / name).read_text()
    text = text.replace(".:53 {", f".:{corefile.dns} {{\n    bind {HOST}", 1)
    text = re.sub(r"(?m)^(\s+)health\b", rf"\1health {HOST}:{health}", text)
    text = re.sub(r"(?m)^(\s+)ready\b", rf"\1ready {HOST}:{ready}", text)
    text = re.sub(r"(?m)^(\s+)prometheus.*$", rf"\1prometheus {HOST}:{metrics}", text)
    text = text.replace("forward . /etc/resolv.conf", f"forward . {HOST}:{upstream}")
    text = text.replace("/etc/coredns/NodeHosts", str(node_hosts))
    text = text.replace("/etc/coredns/custom/", "custom/")
    return text.replace("%{CLUSTER_DOMAIN}%", "cluster.local")


def dig(port: int, *args: str) -> tuple[str, list[str]]:
    """(status, answer lines) of `dig @127.0.0.1 -p PORT ARGS`."""
    exe = need_tool("dig", "bind9-dnsutils")
    result = subprocess.run(
        [
            exe,
            f"@{HOST}",
            "-p",
            str(port),
            "+time=2",
            "+tries=1",
            "+nocmd",
            "+noall",
            "+comments",
            "+question",
            "+answer",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    status = re.search(r"status: (\w+)", result.stdout)
    assert status, result.stdout
    lines = [
        " ".join(line.split())
        for line in result.stdout.splitlines()
        if line and not line.startswith(";")
    ]
    return status.group(1), lines


def test_k3s_serves_its_node_hosts_and_follows_the_file(
    tmp_path: Path, served: list[Served]
) -> None:
    node_hosts = tmp_path / "NodeHosts"
    node_hosts.write_text((DATA / "k3s.NodeHosts").read_text())
    with dnsmasq(tmp_path / "upstream") as upstream:
        corefile = Corefile(tmp_path)
        text = on_loopback("k3s.Corefile", corefile, upstream.port, node_hosts)
        # k3s re-reads NodeHosts every 15 s; 1 s keeps the test short (the option is the same).
        corefile.path.write_text(text.replace("reload 15s", "reload 1s"))
        server = serve(corefile, served)
        port = corefile.dns
        assert dig(port, "k3s-server", "A") == ("NOERROR", ["k3s-server. 60 IN A 172.18.0.2"])
        assert dig(port, "-x", "172.18.0.3") == (
            "NOERROR",
            ["3.0.18.172.in-addr.arpa. 60 IN PTR k3s-agent-1."],
        )
        # A node name with no AAAA: NODATA, not a trip upstream.
        assert dig(port, "k3s-server", "AAAA") == ("NOERROR", [])
        # fallthrough: names hosts does not know go on to the cluster, then the upstream.
        status, answer = dig(port, "redis.default.svc.cluster.local", "A")
        assert (status, answer) == (
            "NOERROR",
            ["redis.default.svc.cluster.local. 5 IN A 10.97.97.97"],
        )
        assert dig(port, "www.test", "A") == ("NOERROR", [f"www.test. 30 IN A {WWW_V4}"])
        # A node joins: k3s rewrites NodeHosts, and the new name is served without a restart.
        write_atomically(node_hosts, node_hosts.read_text() + "172.18.0.4 k3s-agent-2\n")
        wait_for(
            lambda: dig(port, "k3s-agent-2", "A")[1] == ["k3s-agent-2. 60 IN A 172.18.0.4"],
            "k3s-agent-2 in DNS",
            server,
        )


def test_aks_answers_nxdomain_from_its_templates(tmp_path: Path, served: list[Served]) -> None:
    # The upstream serves the VM's name (dnsmasq answers only inside its auth zones).
    extra = (
        f"--host-record=vm1.internal.cloudapp.net,{VM_V4}",
        "--auth-zone=internal.cloudapp.net",
    )
    with dnsmasq(tmp_path / "upstream", extra=extra) as upstream:
        corefile = Corefile(tmp_path)
        corefile.path.write_text(on_loopback("aks.Corefile", corefile, upstream.port, Path()))
        serve(corefile, served)
        port = corefile.dns
        # Seven labels or more under internal.cloudapp.net, and all of reddog.microsoft.com:
        # NXDOMAIN from the template, every type.
        assert dig(port, "a.b.c.d.e.internal.cloudapp.net", "A") == ("NXDOMAIN", [])
        assert dig(port, "a.b.c.d.e.internal.cloudapp.net", "AAAA") == ("NXDOMAIN", [])
        assert dig(port, "anything.reddog.microsoft.com", "TXT") == ("NXDOMAIN", [])
        # A VM's own name is too short for the regex: fallthrough, to the upstream.
        assert dig(port, "vm1.internal.cloudapp.net", "A") == (
            "NOERROR",
            [f"vm1.internal.cloudapp.net. 30 IN A {VM_V4}"],
        )
        assert dig(port, "redis.default.svc.cluster.local", "A")[0] == "NOERROR"


def test_rewrite_points_a_public_name_at_a_service(tmp_path: Path, served: list[Served]) -> None:
    with dnsmasq(tmp_path / "upstream") as upstream:
        corefile = Corefile(tmp_path)
        text = on_loopback("rewrite.Corefile", corefile, upstream.port, Path())
        # One rule more, whose target is outside the cluster: the upstream answers it.
        extra = "    rewrite name mirror.example www.test\n"
        corefile.path.write_text(
            text.replace("    rewrite name api", extra + "    rewrite name api")
        )
        serve(corefile, served)
        port = corefile.dns
        # regex, with `answer name`: the client sees its own name, with the Service's address.
        status, lines = dig(port, "Redis.Example.Com", "A")
        assert status == "NOERROR"
        assert lines == ["Redis.Example.Com. 30 IN A 10.97.97.97"]
        # exact: api.example.org is api.default.svc.cluster.local, which does not exist — the
        # cluster zone's NXDOMAIN (the upstream would have refused a name it does not serve).
        assert dig(port, "api.example.org", "A") == ("NXDOMAIN", [])
        denial = ask(port, "api.example.org", "A")
        assert [rrset.name.to_text() for rrset in denial.authority] == ["cluster.local."]
        assert dig(port, "mirror.example", "A") == (
            "NOERROR",
            [f"mirror.example. 30 IN A {WWW_V4}"],
        )
        # Names no rule matches are answered as before.
        assert dig(port, "www.test", "A") == ("NOERROR", [f"www.test. 30 IN A {WWW_V4}"])


def test_kubernetes_fallthrough_sends_unknown_cluster_names_upstream(
    tmp_path: Path, served: list[Served]
) -> None:
    # The upstream has a name under cluster.local that no Service gives (a migration from
    # another DNS server is the usual reason for `fallthrough`).
    extra = ("--auth-zone=cluster.local", f"--host-record=legacy.cluster.local,{VM_V4}")
    with dnsmasq(tmp_path / "upstream", extra=extra) as upstream:
        corefile = Corefile(tmp_path)
        eks = on_loopback("eks.Corefile", corefile, upstream.port, Path())
        corefile.path.write_text(
            eks.replace("fallthrough in-addr.arpa ip6.arpa", "fallthrough cluster.local")
        )
        serve(corefile, served)
        port = corefile.dns
        assert dig(port, "legacy.cluster.local", "A") == (
            "NOERROR",
            [f"legacy.cluster.local. 30 IN A {VM_V4}"],  # forwarded, so `cache 30` caps it
        )
        # Names kdns knows, and empty non-terminals (NODATA, not NXDOMAIN), stay kdns's.
        assert dig(port, "redis.default.svc.cluster.local", "A") == (
            "NOERROR",
            ["redis.default.svc.cluster.local. 5 IN A 10.97.97.97"],
        )
        assert dig(port, "svc.cluster.local", "A") == ("NOERROR", [])

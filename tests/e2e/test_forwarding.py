"""Forwarding as the real process does it: `python -m kdns serve --upstreams 127.0.0.1:P`, asked
by dig, kdig and dnspython, with dnsmasq on loopback as the upstream.

Every upstream is on 127.0.0.1 (kdns is never left to read the machine's resolv.conf: the test
conftest sets KDNS_RESOLV_CONF=/dev/null for every process). Glibc's own search-list walk is
tested in test_glibc.py; here the search list is dnspython's, whose walk is the same one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.name
import dns.rcode
import dns.resolver
import pytest

from tests.conftest import need_tool
from tests.dns import upstreams
from tests.e2e.conftest import (
    EXAMPLES,
    HOST,
    LOCAL_HTTP,
    ROOT,
    Kdns,
    KdnsFactory,
    ask,
    free_port,
    kdns_command,
    rdata_texts,
    run_kdns,
    wait_answering,
)

MYAPP_IP = "10.99.99.99"  # myapp.default.svc.cluster.local in config/examples


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[upstreams.Dnsmasq]:
    """A plain (non-authoritative) dnsmasq: it sets RA, as a recursive upstream would."""
    with upstreams.dnsmasq(tmp_path / "dnsmasq", authoritative=False) as server:
        yield server


def run_tool(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def dig(port: int, *args: str) -> str:
    exe = need_tool("dig", "bind9-dnsutils")
    return run_tool(exe, f"@{HOST}", "-p", str(port), "+time=2", "+tries=1", *args)


def kdig(port: int, *args: str) -> str:
    exe = need_tool("kdig", "knot-dnsutils")
    return run_tool(exe, f"@{HOST}", "-p", str(port), "+time=2", "+retry=0", *args)


def test_dig_and_kdig_get_forwarded_and_cluster_names_from_one_server(
    kdns_factory: KdnsFactory, dnsmasq: upstreams.Dnsmasq
) -> None:
    server = kdns_factory(EXAMPLES, "--upstreams", dnsmasq.address)
    assert dig(server.port, "+short", "www.test", "A").split() == [upstreams.WWW_V4]
    assert dig(server.port, "+short", "+tcp", "www.test", "AAAA").split() == [upstreams.WWW_V6]
    assert dig(server.port, "+short", "test", "MX").split() == ["10", "mail.test."]
    assert kdig(server.port, "+short", "txt.test", "TXT").split("\n")[0] == '"hello world"'
    assert dig(server.port, "+short", "myapp.default.svc.cluster.local").split() == [MYAPP_IP]
    assert kdig(server.port, "+short", "myapp.default.svc.cluster.local").split() == [MYAPP_IP]
    # Each forwarded question reached dnsmasq once; the cluster names never left kdns.
    assert dnsmasq.queries() == [
        ("A", "www.test"),
        ("AAAA", "www.test"),
        ("MX", "test"),
        ("TXT", "txt.test"),
    ]


def test_recursion_available_only_when_forwarding(
    kdns_factory: KdnsFactory, dnsmasq: upstreams.Dnsmasq
) -> None:
    forwarding = kdns_factory(EXAMPLES, "--upstreams", dnsmasq.address)
    alone = kdns_factory(EXAMPLES, "--upstreams")
    cluster = forwarding.ask("myapp.default.svc.cluster.local")
    forwarded = forwarding.ask("www.test")
    not_forwarding = alone.ask("myapp.default.svc.cluster.local")
    assert cluster.flags & dns.flags.RA and cluster.flags & dns.flags.AA
    assert forwarded.flags & dns.flags.RA
    assert rdata_texts(forwarded) == {upstreams.WWW_V4}
    assert not not_forwarding.flags & dns.flags.RA
    flags = re.search(
        r";; flags: ([a-z ]+);", dig(forwarding.port, "myapp.default.svc.cluster.local")
    )
    assert flags is not None and "ra" in flags.group(1).split()


def test_other_names_are_forwarded_and_refused_only_without_upstreams(
    kdns_factory: KdnsFactory, dnsmasq: upstreams.Dnsmasq
) -> None:
    forwarding = kdns_factory(EXAMPLES, "--upstreams", dnsmasq.address)
    alone = kdns_factory(EXAMPLES, "--upstreams")  # an empty list: no forwarding at all
    default = kdns_factory(EXAMPLES)  # resolv.conf is /dev/null here: nowhere to forward
    answered = forwarding.ask("mail.test")
    before = dnsmasq.count()
    refused = [server.ask("mail.test") for server in (alone, default)]
    assert (answered.rcode(), rdata_texts(answered)) == (dns.rcode.NOERROR, {upstreams.MAIL_V4})
    assert [r.rcode() for r in refused] == [dns.rcode.REFUSED] * 2
    assert dnsmasq.count() == before
    assert alone.ask("myapp.default.svc.cluster.local").rcode() == dns.rcode.NOERROR


def test_search_list_walk_reaches_the_upstream_last(
    kdns_factory: KdnsFactory, dnsmasq: upstreams.Dnsmasq
) -> None:
    server = kdns_factory(EXAMPLES, "--upstreams", dnsmasq.address)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [HOST]
    resolver.port = server.port
    resolver.timeout, resolver.lifetime = 2.0, 5.0
    # A pod in namespace `default`: resolv.conf's search list and ndots:5.
    resolver.search = [
        dns.name.from_text(d) for d in ("default.svc.cluster.local", "svc.cluster.local")
    ] + [dns.name.from_text("cluster.local")]
    resolver.ndots = 5
    resolver.use_search_by_default = True
    outside = resolver.resolve("www.test", "A")
    inside = resolver.resolve("myapp", "A")
    assert [r.to_text() for r in outside] == [upstreams.WWW_V4]
    assert outside.qname.to_text() == "www.test."
    assert [r.to_text() for r in inside] == [MYAPP_IP]
    assert inside.qname.to_text() == "myapp.default.svc.cluster.local."
    # The candidates in the cluster zone were kdns's NXDOMAINs: only the last went upstream.
    assert dnsmasq.queries() == [("A", "www.test")]


def test_kube_dns_configmap_flag_sends_a_stub_domain_to_its_server(
    kdns_factory: KdnsFactory, tmp_path: Path
) -> None:
    with (
        upstreams.dnsmasq(tmp_path / "default", authoritative=False) as default,
        upstreams.dnsmasq(tmp_path / "stub", authoritative=False) as stub,
    ):
        configmap = tmp_path / "kube-dns.yaml"
        configmap.write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-dns, namespace: kube-system}\n"
            "data:\n"
            f'  stubDomains: \'{{"acme.local": ["{stub.address}"]}}\'\n'
            f"  upstreamNameservers: '[\"{default.address}\"]'\n"
        )
        server = kdns_factory(EXAMPLES, "--kube-dns-configmap", str(configmap))
        acme = server.ask("www.acme.local")
        other = server.ask("www.test")
        assert rdata_texts(acme) == {upstreams.ACME_V4}
        assert rdata_texts(other) == {upstreams.WWW_V4}
        assert stub.queries() == [("A", "www.acme.local")]
        assert default.queries() == [("A", "www.test")]


# --- start-up refusals --------------------------------------------------------------------------


def serve_args(port: int, *extra: str) -> list[str]:
    return [
        "serve",
        "--manifests",
        str(EXAMPLES),
        "--dns-addr",
        f"{HOST}:{port}",
        *LOCAL_HTTP,
        *extra,
    ]


def test_serve_with_systemd_resolved_as_upstream_exits_2_with_one_line() -> None:
    result = run_kdns(*serve_args(free_port(), "--upstreams", "127.0.0.53"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdns: upstream 127.0.0.53:53 ")
    assert "systemd-resolved" in lines[0] and "loop" in lines[0]


def test_serve_forwarding_to_itself_exits_2_with_one_line() -> None:
    port = free_port()
    result = run_kdns(*serve_args(port, "--upstreams", f"{HOST}:{port}"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"kdns: upstream {HOST}:{port} is kdns itself (dns_addr {HOST}:{port}): forwarding would loop"
    ]


def test_serve_with_a_bad_kube_dns_configmap_exits_2_naming_the_field(tmp_path: Path) -> None:
    configmap = tmp_path / "kube-dns.yaml"
    configmap.write_text(
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  stubDomains: '{\"acme.local\": [1.2.3.4]}'\n"
    )
    result = run_kdns(*serve_args(free_port(), "--kube-dns-configmap", str(configmap)))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kdns: {configmap}: data.stubDomains: not valid JSON")


# --- a forwarding loop that no start-up check can see --------------------------------------------


def start_at(port: int, upstream_port: int, stderr_path: Path) -> Kdns:
    """kdns on a port chosen beforehand (each of the pair must know the other's)."""
    command = kdns_command(*serve_args(port, "--upstreams", f"{HOST}:{upstream_port}"))
    env = {**os.environ, "KDNS_FORWARD_TIMEOUT": "0.5"}
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
        )
    server = Kdns(proc, port, stderr_path, (EXAMPLES,))
    try:
        wait_answering(lambda: _answers(port), proc, server.stderr)
    except BaseException:
        server.stop()
        raise
    return server


def _answers(port: int) -> bool:
    try:
        ask(port, "dns-version.cluster.local", "TXT", timeout=0.2)
    except (OSError, dns.exception.Timeout):
        return False
    return True


def test_two_servers_forwarding_to_each_other_stay_up(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    assert port_a != port_b
    a = start_at(port_a, port_b, tmp_path / "a.log")
    try:
        b = start_at(port_b, port_a, tmp_path / "b.log")
        try:
            outcomes = []
            for server, name in ((a, "loop.example"), (b, "loop.example"), (a, "other.example")):
                try:
                    outcomes.append(dns.rcode.to_text(ask(server.port, name, timeout=3.0).rcode()))
                except dns.exception.Timeout:
                    outcomes.append("timeout")
            # The question goes round once (a → b → a, where it meets itself in flight and waits),
            # then the 0.5 s timeouts end it: a failure, never an answer, never a crash.
            assert set(outcomes) <= {"SERVFAIL", "timeout"}, outcomes
            for server in (a, b):
                assert server.alive(), server.stderr()
                assert server.ask("myapp.default.svc.cluster.local").rcode() == dns.rcode.NOERROR
                assert "Traceback" not in server.stderr()
        finally:
            b.stop()
    finally:
        a.stop()
    assert {a.proc.returncode, b.proc.returncode} <= {0, -signal.SIGTERM}

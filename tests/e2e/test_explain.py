"""`python -m kdns explain` as a real process: over manifests, against the fake API server, and
checked against what a running `kdns serve` answers over the wire for the same names."""

from __future__ import annotations

import re
from pathlib import Path

import dns.rcode
import pytest

from tests.e2e.conftest import EXAMPLES, HOST, Kdns, free_port, run_kdns
from tests.kubeapi import objects
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer

__all__ = ["kube_api", "kubeconfig"]  # fixtures, re-exported for pytest

NO_UPSTREAMS = ("--upstreams",)  # names outside the zones would be REFUSED, never forwarded


def answer_lines(stdout: str, section: str = "ANSWER") -> list[str]:
    """The record lines of one section, without their `← origin`."""
    lines = stdout.splitlines()
    try:
        start = lines.index(f";; {section} SECTION:") + 1
    except ValueError:
        return []
    out = []
    for line in lines[start:]:
        if not line:
            break
        out.append(line.split("  ← ")[0])
    return out


def test_explain_redis_over_the_examples() -> None:
    result = run_kdns(
        "explain", "redis.default.svc.cluster.local", "--manifests", "config/examples"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        ";; QUESTION: redis.default.svc.cluster.local. IN A",
        ";; zone cluster.local; status: NOERROR, flags: qr aa; answer: 1, authority: 0, "
        "additional: 0",
        "",
        ";; ANSWER SECTION:",
        "redis.default.svc.cluster.local. 5 IN A 10.97.97.97  ← Service default/redis "
        "spec.clusterIP",
        "",
        ";; WHY:",
        "- Service default/redis (ClusterIP 10.97.97.97; ports redis 6379/TCP)",
    ]


@pytest.mark.parametrize(
    ("args", "status", "why"),
    [
        (["10.97.97.97"], "NOERROR", "10.97.97.97 → redis.default.svc.cluster.local"),
        (["myapp-headless.default.svc.cluster.local", "aaaa"], "NOERROR (NODATA)", "no AAAA"),
        (["redis.nope.svc.cluster.local"], "NXDOMAIN", "no namespace 'nope'"),
        (["_http._udp.myapp.default.svc.cluster.local", "SRV"], "NXDOMAIN", "not UDP"),
        (["example.com.", "TYPE1", *NO_UPSTREAMS], "REFUSED", "in none of kdns's zones"),
        (["--pods", "disabled", "10-244-1-10.default.pod.cluster.local"], "NXDOMAIN", "disabled"),
    ],
)
def test_explain_exits_0_for_every_rcode(args: list[str], status: str, why: str) -> None:
    result = run_kdns("explain", *args, "--manifests", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert re.search(rf"status: {re.escape(status)},", result.stdout), result.stdout
    assert why in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a..b", "--manifests", str(EXAMPLES)], "kdns: 'a..b' is not a domain name"),
        (["x." * 130, "--manifests", str(EXAMPLES)], "is not a domain name"),
        (
            ["redis.default.svc.cluster.local", "BOGUS", "--manifests", str(EXAMPLES)],
            "kdns: 'BOGUS' is not a DNS type",
        ),
        (
            ["redis.default.svc.cluster.local", "--manifests", "/nonexistent/kdns"],
            "kdns: /nonexistent/kdns: no such file or folder",
        ),
        (
            ["redis.default.svc.cluster.local", "--ttl", "99999", "--manifests", str(EXAMPLES)],
            "ttl",
        ),
    ],
)
def test_explain_bad_input_exits_2(args: list[str], message: str) -> None:
    result = run_kdns("explain", *args)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert message in result.stderr


NAMES = [
    ("redis.default.svc.cluster.local", "A"),
    ("redis.default.svc.cluster.local", "AAAA"),
    ("myapp-headless.default.svc.cluster.local", "A"),
    ("myapp-headless.default.svc.cluster.local", "SRV"),
    ("web-0.myapp-headless.default.svc.cluster.local", "A"),
    ("_redis._tcp.redis.default.svc.cluster.local", "SRV"),
    ("api.prod.svc.cluster.local", "AAAA"),
    ("cache.prod.svc.cluster.local", "A"),
    ("20.1.244.10.in-addr.arpa", "PTR"),
    ("10-244-1-10.default.pod.cluster.local", "A"),
    ("nope.default.svc.cluster.local", "A"),
    ("_tcp.redis.default.svc.cluster.local", "A"),
]


def test_explain_agrees_with_the_server(examples_server: Kdns) -> None:
    """For each name, explain's records and status are what `kdns serve` sends over UDP."""
    for name, rdtype in NAMES:
        result = run_kdns("explain", name, rdtype, "--manifests", str(EXAMPLES))
        assert result.returncode == 0, result.stderr
        response = examples_server.ask(name, rdtype)
        status = re.search(r"status: (\w+)", result.stdout)
        assert status and status.group(1) == dns.rcode.to_text(response.rcode()), result.stdout
        served = sorted(
            " ".join([*rrset.to_text().split()[:4], rdata.to_text()])
            for rrset in response.answer
            for rdata in rrset
        )

        def normal(line: str) -> str:
            owner, ttl, cls, rtype, rdata = line.split(None, 4)
            return " ".join([owner, ttl, cls, rtype, rdata])

        explained = sorted(normal(line) for line in answer_lines(result.stdout))
        assert explained == served, (name, rdtype, result.stdout)
        assert len(answer_lines(result.stdout, "ADDITIONAL")) == sum(
            len(rrset) for rrset in response.additional
        ), (name, rdtype, result.stdout)


def test_explain_live_cluster(kube_api: ApiServer, kubeconfig: Path) -> None:
    kube_api.create("services", objects.service("default", "web", cluster_ip="10.96.7.7"))
    kube_api.create(
        "services",
        objects.service("default", "db", headless=True, ports=[{"name": "pg", "port": 5432}]),
    )
    kube_api.create(
        "endpointslices",
        objects.endpointslice(
            "default",
            "db",
            "db-x1y2z",
            addresses=["10.244.5.1", "10.244.5.2"],
            ready=[True, False],
            ports=[{"name": "pg", "port": 5432}],
        ),
    )
    live = ("--kubeconfig", str(kubeconfig), *NO_UPSTREAMS)
    web = run_kdns("explain", "web.default.svc.cluster.local", *live)
    assert web.returncode == 0, web.stderr
    assert (
        "web.default.svc.cluster.local. 5 IN A 10.96.7.7  ← Service default/web spec.clusterIP"
        in (web.stdout)
    )
    db = run_kdns("explain", "db.default.svc.cluster.local", *live)
    assert db.returncode == 0, db.stderr
    assert answer_lines(db.stdout) == ["db.default.svc.cluster.local. 5 IN A 10.244.5.1"]
    assert "EndpointSlice default/db-x1y2z endpoint 10.244.5.1 (ready" in db.stdout
    assert "not-ready endpoints are left out" in db.stdout
    assert "EndpointSlice default/db-x1y2z endpoint 10.244.5.2 (not ready" in db.stdout
    srv = run_kdns("explain", "_pg._udp.db.default.svc.cluster.local", "SRV", *live)
    assert srv.returncode == 0 and "status: NXDOMAIN," in srv.stdout
    assert "port 'pg' is TCP, not UDP" in srv.stdout


def test_explain_cluster_that_never_syncs_exits_2(tmp_path: Path) -> None:
    document = f"""apiVersion: v1
kind: Config
clusters:
- name: dead
  cluster: {{server: "https://{HOST}:{free_port()}"}}
users:
- name: dead
  user: {{token: dead}}
contexts:
- name: dead
  context: {{cluster: dead, user: dead}}
current-context: dead
"""
    path = tmp_path / "kubeconfig"
    path.write_text(document)
    result = run_kdns(
        "explain", "web.default.svc.cluster.local", "--kubeconfig", str(path), "--timeout", "1"
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "kdns: the cluster did not sync within 1 s (still waiting for: " in result.stderr

"""`kdns check --corefile` and `kdns serve --corefile`, as real processes.

check prints the kdns YAML the Corefile gives (loadable as --config), then the usual check
lines; a directive that would change answers is one line on stderr each, exit status 2. serve
answers as the Corefile says, and a reload re-reads the Corefile and the files it imports
(here a `*.server` glob gaining a stub block served by a real dnsmasq on loopback).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.rcode
import pytest

from kdns.config import load_config
from tests.corefile.test_translate import DATA
from tests.dns.upstreams import ACME_V4, dnsmasq
from tests.e2e.conftest import (
    CLI_TIMEOUT,
    EXAMPLES,
    HOST,
    ROOT,
    ask,
    free_port,
    kdns_command,
    rdata_texts,
    wait_answering,
    write_atomically,
)
from tests.e2e.running import Served, free_tcp_port, udp_answers

WAIT = 10.0  # seconds a reload may take to show (`reload 2s`); a passing test never comes close
REDIS = "redis.default.svc.cluster.local"


def kdns(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kdns_command(*args), capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=ROOT
    )


def test_check_prints_the_kdns_config_of_kubeadms_corefile(tmp_path: Path) -> None:
    result = kdns("check", "--corefile", str(DATA / "kubeadm.Corefile"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0] == f"# The kdns config that {DATA}/kubeadm.Corefile gives (kdns check --corefile)."
    )
    assert f"  ttl: 30  # {DATA}/kubeadm.Corefile:10" in lines
    assert (
        f"# {DATA}/kubeadm.Corefile:20: loop: accepted: kdns refuses, at start, an upstream that would forward back to it"
        in lines
    )
    assert lines[-2:] == [
        "config: ok (zones cluster.local, in-addr.arpa, ip6.arpa; ttl 30; pods insecure)",
        "manifests: none given (check contacts no cluster; give --manifests PATH)",
    ]
    # What it printed is a kdns config file.
    printed = tmp_path / "kdns.yaml"
    printed.write_text("\n".join(lines[:-2]) + "\n")
    assert load_config(str(printed)).dns.ttl == 30


def test_check_refuses_what_would_change_answers_one_line_each() -> None:
    result = kdns("check", "--corefile", str(DATA / "refused.Corefile"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"kdns: {DATA}/refused.Corefile:9: rewrite: not supported: only `rewrite name` is supported (here type)",
        f"kdns: {DATA}/refused.Corefile:10: dns64: not supported: kdns does not have this plugin yet, and it changes answers",
    ]
    assert f"# {DATA}/refused.Corefile:9: rewrite: not supported" in result.stdout


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["--corefile", str(DATA / "malformed" / "unclosed.Corefile")],
            f"kdns: {DATA}/malformed/unclosed.Corefile:1: this block has no closing '}}'",
        ),
        (
            [
                "--corefile",
                str(DATA / "kubeadm.Corefile"),
                "--config",
                str(ROOT / "config" / "kdns.yaml"),
            ],
            "kdns: --corefile and --config: give one of them",
        ),
    ],
)
def test_check_a_corefile_that_cannot_be_used_is_one_line(args: list[str], line: str) -> None:
    result = kdns("check", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]


# --- serve -------------------------------------------------------------------------------------


class Corefile:
    """A Corefile on loopback ports, beside a `custom/` folder it imports from."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "Corefile"
        self.custom = tmp_path / "custom"
        self.custom.mkdir()
        self.log = tmp_path / "kdns.log"
        self.dns = free_port()
        self.http = [free_tcp_port() for _ in range(3)]

    def text(self, ttl: int, extra: str = "") -> str:
        health, ready, metrics = self.http
        return (
            f".:{self.dns} {{\n"
            f"    bind {HOST}\n"
            f"    health {HOST}:{health}\n"
            f"    ready {HOST}:{ready}\n"
            f"    prometheus {HOST}:{metrics}\n"
            "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
            "       pods insecure\n"
            f"       ttl {ttl}\n"
            "    }\n"
            f"{extra}"
            "    reload 2s\n"
            "}\n"
            "import custom/*.server\n"
        )


@pytest.fixture
def served() -> Iterator[list[Served]]:
    servers: list[Served] = []
    yield servers
    for server in servers:
        server.stop()


def serve(corefile: Corefile, served: list[Served]) -> Served:
    """Start `kdns serve --corefile` and wait until it answers. Another process may take a port
    between `free_port()` and kdns's bind: then the Corefile moves to new ports and kdns starts
    again (as tests/e2e/conftest.start_kdns does)."""
    for _ in range(5):
        with open(corefile.log, "wb") as err:
            proc = subprocess.Popen(
                kdns_command(
                    "serve", "--corefile", str(corefile.path), "--manifests", str(EXAMPLES)
                ),
                env={**os.environ, "KDNS_LAMEDUCK": "0"},
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        server = Served(proc, corefile.log)
        try:
            wait_answering(
                lambda: udp_answers(corefile.dns, "dns-version.cluster.local", 0.2) is not None,
                proc,
                server.stderr,
            )
        except pytest.fail.Exception:
            server.stop()
            if "cannot listen" not in server.stderr() and "already in use" not in server.stderr():
                raise
            move_ports(corefile)  # lost the race for a port to another process
            continue
        served.append(server)
        return server
    pytest.fail("kdns could not bind free ports in 5 attempts")


def move_ports(corefile: Corefile) -> None:
    """Give the Corefile (as written) new free ports for DNS, health, ready and prometheus."""
    old = [corefile.dns, *corefile.http]
    corefile.dns, corefile.http = free_port(), [free_tcp_port() for _ in range(3)]
    text = corefile.path.read_text()
    for before, after in zip(old, [corefile.dns, *corefile.http], strict=True):
        text = text.replace(f":{before}\n", f":{after}\n").replace(f":{before} ", f":{after} ")
    corefile.path.write_text(text)


def wait_for(condition: Callable[[], bool], what: str, server: Served) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {WAIT} s:\n{server.stderr()}")


def ttl_of(port: int) -> int:
    response = ask(port, REDIS)
    assert response.rcode() == dns.rcode.NOERROR, response
    return response.answer[0].ttl


def test_serve_answers_as_the_corefile_says_and_reloads_it_and_its_imports(
    tmp_path: Path, served: list[Served]
) -> None:
    corefile = Corefile(tmp_path)
    corefile.path.write_text(corefile.text(ttl=30))
    server = serve(corefile, served)
    port = corefile.dns
    assert ttl_of(port) == 30
    assert ask(port, "www.acme.local").rcode() == dns.rcode.REFUSED  # no forward: no upstream
    # A Corefile CoreDNS would not start with, then one with a directive that would change
    # answers: both reloads are refused, each naming its line; the old config serves on.
    write_atomically(corefile.path, corefile.text(ttl=10).replace("}\nimport", "import"))
    line = server.wait_log(r"config reload refused.*", timeout=WAIT).group(0)
    assert line.endswith(f"{corefile.path}:1: this block has no closing '}}'"), line
    assert ttl_of(port) == 30
    write_atomically(corefile.path, corefile.text(ttl=10, extra="    rewrite type AAAA A\n"))
    line = server.wait_log(r"config reload refused.*rewrite.*", timeout=WAIT).group(0)
    assert re.search(rf"{re.escape(str(corefile.path))}:10: rewrite: not supported", line), line
    assert ttl_of(port) == 30
    # A good Corefile: the new TTL.
    write_atomically(corefile.path, corefile.text(ttl=10))
    wait_for(lambda: ttl_of(port) == 10, "the new ttl", server)
    # A stub block dropped into the imported folder (k3s's and AKS's coredns-custom).
    with dnsmasq(tmp_path / "dnsmasq") as acme:
        write_atomically(
            corefile.custom / "acme.server",
            f"acme.local:{port} {{\n    forward . {acme.address}\n}}\n",
        )
        wait_for(
            lambda: ask(port, "www.acme.local").rcode() == dns.rcode.NOERROR,
            "the stub domain",
            server,
        )
        assert rdata_texts(ask(port, "www.acme.local"), "A") == {ACME_V4}

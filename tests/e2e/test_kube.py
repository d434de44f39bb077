"""`kdns serve --kubeconfig` as a real process against the fake API server.

dig asks; /ready and /metrics are read over HTTP; the cluster changes through the server's Python
API. The process keeps its production timeouts and backoff (0.8 s doubling), so waits are bounded
by a few backoff steps. Start-up failures (no source, a missing kubeconfig) must exit 2 with one
line for the operator.
"""

from __future__ import annotations

import copy
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import need_tool
from tests.e2e.conftest import (
    HOST,
    LOCAL_HTTP,
    Kdns,
    KdnsFactory,
    free_port,
    run_kdns,
)
from tests.kubeapi import objects
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer

__all__ = ["kube_api", "kubeconfig"]  # fixtures, re-exported for pytest

SYNC_TIMEOUT = 10.0  # a few production backoff steps (0.8, 1.6, 3.2 s) after the API is back
CHANGE_TIMEOUT = 3.0  # a watch event reaches dig well within this
KINDS = ("endpointslices", "namespaces", "services")
DIG_OPTIONS = ("+time=2", "+tries=1", "+noall", "+comments", "+answer")

T = TypeVar("T")


def dig(port: int, name: str, rdtype: str = "A") -> tuple[str, frozenset[str]]:
    """(status, answer rdata) as `dig` prints them."""
    exe = need_tool("dig", "bind9-dnsutils")
    result = subprocess.run(
        [exe, f"@{HOST}", "-p", str(port), *DIG_OPTIONS, name, rdtype],
        capture_output=True,
        text=True,
        timeout=10,
    )
    status = re.search(r"status: (\w+)", result.stdout)
    assert status, result.stdout + result.stderr
    answers = frozenset(
        line.split()[-1]
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith(";")
    )
    return status.group(1), answers


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def eventually(probe: Callable[[], T], expected: T, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (got := probe()) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: wanted {expected!r} within {timeout} s, last got {got!r}")
        time.sleep(0.05)


@dataclass
class Served:
    kdns: Kdns
    ready_port: int
    metrics_port: int

    def dig(self, name: str, rdtype: str = "A") -> tuple[str, frozenset[str]]:
        return dig(self.kdns.port, name, rdtype)

    def ready(self) -> tuple[int, str]:
        return http_get(self.ready_port, "/ready")

    def wait_ready(self) -> None:
        eventually(self.ready, (200, "OK\n"), SYNC_TIMEOUT, f"/ready\n{self.kdns.stderr()}")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = http_get(self.metrics_port, "/metrics")
        assert status == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }


def serve_cluster(kdns_factory: KdnsFactory, *args: str) -> Served:
    """`kdns serve` with no manifests (so: the live cluster), /ready and /metrics on known ports."""
    need_tool("dig", "bind9-dnsutils")
    ready, metrics = free_port(), free_port()
    kdns = kdns_factory(
        [], *args, "--ready-addr", f"{HOST}:{ready}", "--metrics-addr", f"{HOST}:{metrics}"
    )
    return Served(kdns, ready, metrics)


def name(service: str, namespace: str = "default") -> str:
    return f"{service}.{namespace}.svc.cluster.local"


def ready_addresses(eps: dict[str, object]) -> frozenset[str]:
    return frozenset(
        e["addresses"][0]  # type: ignore[index]
        for e in eps["endpoints"]  # type: ignore[attr-defined]
        if e["conditions"]["ready"]  # type: ignore[index]
    )


def test_dig_follows_the_cluster(
    kube_api: ApiServer, kubeconfig: Path, kdns_factory: KdnsFactory
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    kube_api.create("services", objects.service("default", "db", headless=True, ports=[5432]))
    kube_api.faults.refuse_connections(True)  # down at start: kdns must wait, not deny
    served = serve_cluster(kdns_factory, "--kubeconfig", str(kubeconfig))
    assert served.ready() == (503, "not synced: endpointslices, namespaces, services\n")
    assert served.dig(name("web")) == ("SERVFAIL", frozenset())
    assert served.dig(name("missing")) == ("SERVFAIL", frozenset())

    kube_api.faults.refuse_connections(False)
    served.wait_ready()
    assert served.dig(name("web")) == ("NOERROR", {web_ip})
    assert served.dig(name("missing")) == ("NXDOMAIN", frozenset())

    new_ip = kube_api.create("services", objects.service("default", "new"))["spec"]["clusterIP"]
    eventually(lambda: served.dig(name("new")), ("NOERROR", {new_ip}), CHANGE_TIMEOUT, "created")
    three = ready_addresses(kube_api.scale_headless("default", "db", 3))
    assert len(three) == 3
    eventually(lambda: served.dig(name("db")), ("NOERROR", three), CHANGE_TIMEOUT, "scaled")
    one = ready_addresses(kube_api.scale_headless("default", "db", 1))
    eventually(lambda: served.dig(name("db")), ("NOERROR", one), CHANGE_TIMEOUT, "scaled down")
    kube_api.delete("services", "default", "new")
    eventually(
        lambda: served.dig(name("new")), ("NXDOMAIN", frozenset()), CHANGE_TIMEOUT, "deleted"
    )

    metrics = served.metrics()

    def value(metric: str, **labels: str) -> float | None:
        return metrics.get((metric, frozenset(labels.items())))

    for kind in KINDS:
        assert value("kdns_kube_synced", kind=kind) == 1, kind
        assert value("kdns_kube_syncs_total", kind=kind) == 1, kind
        assert value("kdns_kube_last_event_age_seconds", kind=kind) is not None, kind
    # The failed attempts while the API was down, by kind (endpoints wait in API discovery).
    for kind in ("discovery", "namespaces", "services"):
        assert (value("kdns_kube_errors_total", kind=kind, reason="connection") or 0) >= 1, kind
    assert value("kdns_kube_events_total", kind="services", type="ADDED") == 1
    assert value("kdns_kube_events_total", kind="services", type="DELETED") == 1
    assert (value("kdns_kube_events_total", kind="endpointslices", type="ADDED") or 0) >= 1

    # SIGTERM: a clean exit, with the watch threads still blocked in their reads.
    served.kdns.stop()
    assert served.kdns.proc.returncode == 0, served.kdns.stderr()
    assert "Traceback" not in served.kdns.stderr()


def test_context_flag_selects_the_context(
    kube_api: ApiServer, tmp_path: Path, kdns_factory: KdnsFactory
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    document = kube_api.kubeconfig("live")
    # The current context points at a port nobody listens on: only --context live can sync.
    dead_cluster = copy.deepcopy(document["clusters"][0])
    dead_cluster["name"] = "dead"
    dead_cluster["cluster"]["server"] = f"https://{HOST}:{free_port()}"
    document["clusters"].append(dead_cluster)
    document["users"].append({"name": "dead", "user": {"token": "dead"}})
    document["contexts"].append(
        {"name": "dead", "context": {"cluster": "dead", "user": "dead", "namespace": "default"}}
    )
    document["current-context"] = "dead"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))

    served = serve_cluster(kdns_factory, "--kubeconfig", str(path), "--context", "live")
    served.wait_ready()
    assert served.dig(name("web")) == ("NOERROR", {web_ip})
    assert kube_api.stats.count(kind="list", resource="services") >= 1


def test_kubeconfig_environment_variable(
    kube_api: ApiServer,
    kubeconfig: Path,
    kdns_factory: KdnsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web_ip = kube_api.create("services", objects.service("default", "web"))["spec"]["clusterIP"]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    served = serve_cluster(kdns_factory)
    served.wait_ready()
    assert served.dig(name("web")) == ("NOERROR", {web_ip})


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_no_source_exits_2_naming_the_three_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    line = one_line(run_kdns("serve", "--dns-addr", f"{HOST}:{free_port()}", *LOCAL_HTTP))
    for option in ("--manifests", "--kubeconfig", "KUBECONFIG", "in-cluster"):
        assert option in line, line


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_missing_kubeconfig_exits_2(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    args = ["serve", "--dns-addr", f"{HOST}:{free_port()}", *LOCAL_HTTP]
    if how == "flag":
        args += ["--kubeconfig", str(missing)]
    else:
        monkeypatch.setenv("KUBECONFIG", str(missing))
    line = one_line(run_kdns(*args))
    assert str(missing) in line, line


def test_sigterm_while_the_api_is_down_exits_0(
    kube_api: ApiServer, kubeconfig: Path, kdns_factory: KdnsFactory
) -> None:
    """SIGTERM while the reflectors retry an unreachable API: a prompt, clean exit 0.

    The failure this guards against is a race: a worker thread abandoned in the middle of a
    request (here in getaddrinfo) wakes up during interpreter finalization and the process
    aborts with SIGABRT (status -6) instead of exiting 0. The episode is repeated to widen the
    net."""
    kube_api.faults.refuse_connections(True)
    for episode in range(2):
        served = serve_cluster(kdns_factory, "--kubeconfig", str(kubeconfig))
        assert served.ready()[0] == 503
        began = time.monotonic()
        served.kdns.proc.send_signal(signal.SIGTERM)
        served.kdns.proc.wait(timeout=10)
        assert time.monotonic() - began < 3
        returncode = served.kdns.proc.returncode
        assert returncode == 0, f"episode {episode}: exit {returncode}\n{served.kdns.stderr()}"

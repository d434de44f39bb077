"""The Deployment's own config (the kdns ConfigMap of config/kubernetes) in a real process against
the fake API server holding the kube-dns Service of config/kubernetes: `kdns serve` answers it
with the ConfigMap's TTL and its probes answer, and `kdns explain` says where the answer comes
from. Only the listening addresses are moved to free loopback ports (flags win over the file)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.e2e.conftest import HOST, KdnsFactory, free_port, run_kdns
from tests.e2e.test_kube import dig, eventually, http_get
from tests.kubeapi import objects
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer

__all__ = ["kube_api", "kubeconfig"]  # fixtures, re-exported for pytest

DEPLOY = Path(__file__).resolve().parents[2] / "config" / "kubernetes"


def document(file: str, kind: str) -> dict:
    return next(d for d in yaml.safe_load_all((DEPLOY / file).read_text()) if d["kind"] == kind)


def configmap_file(tmp_path: Path) -> Path:
    path = tmp_path / "kdns.yaml"
    path.write_text(document("kdns-config.yaml", "ConfigMap")["data"]["kdns.yaml"])
    return path


def test_the_deployment_config_serves_the_cluster(
    kube_api: ApiServer, kubeconfig: Path, kdns_factory: KdnsFactory, tmp_path: Path
) -> None:
    kube_api.create("namespaces", objects.namespace("kube-system"))
    kube_api.create("services", document("kdns-service.yaml", "Service"))
    config = configmap_file(tmp_path)
    health, ready = free_port(), free_port()
    kdns = kdns_factory(
        [],
        "--config",
        str(config),
        "--kubeconfig",
        str(kubeconfig),
        "--health-addr",
        f"{HOST}:{health}",
        "--ready-addr",
        f"{HOST}:{ready}",
    )
    eventually(lambda: http_get(ready, "/ready"), (200, "OK\n"), 10.0, kdns.stderr())
    assert http_get(health, "/health")[0] == 200
    status, answers = dig(kdns.port, "kube-dns.kube-system.svc.cluster.local")
    assert (status, answers) == ("NOERROR", {"10.96.0.10"})
    response = kdns.ask("kube-dns.kube-system.svc.cluster.local", "A")
    assert [rrset.ttl for rrset in response.answer] == [30]  # the ConfigMap's ttl
    srv = kdns.ask("_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV")
    assert [rdata.port for rrset in srv.answer for rdata in rrset] == [53]

    result = run_kdns(
        "explain",
        "kube-dns.kube-system.svc.cluster.local",
        "--config",
        str(config),
        "--kubeconfig",
        str(kubeconfig),
        "--upstreams",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10  ← Service "
        "kube-system/kube-dns spec.clusterIP"
    ) in result.stdout.splitlines()

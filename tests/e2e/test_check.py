"""`kdns check`: validates a config (and the manifests, when there are any) without starting
anything or contacting a cluster; a problem is one line on stderr and exit status 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI_TIMEOUT, EXAMPLES, ROOT, kdns_command


def check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kdns_command("check", *args),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kdns.yaml"
    path.write_text(text)
    return path


def test_config_alone_is_checked_without_manifests_or_a_cluster(tmp_path: Path) -> None:
    # No manifests, no kubeconfig, KUBECONFIG pointing nowhere: check looks at the config only.
    config = write(tmp_path, "ttl: 30\npods: verified\nupstreams: ['10.0.0.2']\nlameduck: 10\n")
    result = check("--config", str(config), KUBECONFIG=str(tmp_path / "absent"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "config: ok (zones cluster.local, in-addr.arpa, ip6.arpa; ttl 30; pods verified)",
        "manifests: none given (check contacts no cluster; give --manifests PATH)",
    ]


def test_manifests_named_in_the_config_are_loaded(tmp_path: Path) -> None:
    config = write(tmp_path, f"manifests: ['{EXAMPLES}']\n")
    result = check("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "manifests: ok (2 namespaces, 6 services" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "ttl: 5\nlameduck: forever\n",
            "{path}:2: lameduck: must be a number of seconds in 0-3600 (got 'forever')",
            id="lameduck",
        ),
        pytest.param(
            "reload_interval: -1\n",
            "{path}:1: reload_interval: must be a number of seconds in 0-86400 (got -1)",
            id="reload-interval",
        ),
        pytest.param(
            "ttl: 5\nupstreams: ['127.0.0.53']\n",
            "upstream 127.0.0.53:53 is systemd-resolved's stub listener",
            id="loop-upstream",
        ),
        pytest.param(
            "kube_dns_configmap: /nonexistent/kube-dns.yaml\n",
            "/nonexistent/kube-dns.yaml: cannot read the kube-dns ConfigMap",
            id="missing-configmap",
        ),
    ],
)
def test_config_problems_exit_2_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path, text)
    result = check("--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("kdns: ") and message.format(path=config) in line, line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KDNS_TTL": "five"}, "kdns: $KDNS_TTL: must be a whole number (got 'five')"),
        (
            {"KDNS_PODS": "sometimes"},
            "kdns: $KDNS_PODS: pods: must be one of insecure, verified, disabled (got 'sometimes')",
        ),
        (
            {"KDNS_STUB_DOMAINS": "{acme.local: [ns1]}"},
            "kdns: $KDNS_STUB_DOMAINS: stub_domains.acme.local: 'ns1': 'ns1' is not an IP "
            "address (expected IP or IP:PORT)",
        ),
    ],
)
def test_a_bad_environment_variable_is_named(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    config = write(tmp_path, "ttl: 30\n")
    result = check("--config", str(config), **env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    config = write(tmp_path, "ttl: 30\npods: verified\n")
    result = check("--config", str(config), "--ttl", "7", KDNS_TTL="9", KDNS_PODS="disabled")
    assert result.returncode == 0, result.stderr
    assert "ttl 7; pods disabled" in result.stdout

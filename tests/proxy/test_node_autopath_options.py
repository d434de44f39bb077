"""`--dns-autopath` (config `node.dns_autopath`): how the flag, the file and the variables reach
the proxy's options, the node DNS's config and its source's Pods watch. Pure: no process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdns import cli, proxyapp
from kdns.config import Config


@pytest.fixture(autouse=True)
def no_kdns_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("KDNS_")]:
        monkeypatch.delenv(name)


def options(*argv: str) -> proxyapp.ProxyOptions:
    return cli.proxy_options(cli.config_of(cli.parse_args(["proxy", *argv])))


def test_the_flag_the_file_and_the_variable_turn_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert options("--dns").dns_autopath is False
    assert options("--dns", "--dns-autopath").dns_autopath is True
    path = tmp_path / "kdns.yaml"
    path.write_text("node:\n  dns: [169.254.20.10]\n  dns_autopath: true\n")
    assert options("--config", str(path)).dns_autopath is True
    monkeypatch.setenv("KDNS_NODE_DNS_AUTOPATH", "false")
    assert options("--config", str(path)).dns_autopath is False


def test_autopath_without_the_node_dns_is_refused() -> None:
    assert proxyapp.check_options(options("--dns-autopath")) == [
        "--dns-autopath: needs --dns (autopath is answered by the node DNS)"
    ]
    assert proxyapp.check_options(options("--dns", "--dns-autopath")) == []


@pytest.mark.parametrize(
    ("serve_autopath", "node_autopath", "answered"),
    [
        (False, False, False),
        (False, True, True),
        # A config shared with `kdns serve --autopath` does not turn it on: the node's Pods are
        # watched only with --dns-autopath, and autopath without them would answer nothing.
        (True, False, False),
        (True, True, True),
    ],
)
def test_the_node_dns_answers_autopath_exactly_when_asked(
    serve_autopath: bool, node_autopath: bool, answered: bool
) -> None:
    config = Config().with_overrides("test", **{"dns.autopath": serve_autopath})
    dns = proxyapp.node_dns_config(config, ["169.254.20.10"], autopath=node_autopath)
    assert dns.dns.autopath is answered
    assert dns.dns.addr == "169.254.20.10:53"


@pytest.mark.parametrize(
    ("argv", "pods_node"),
    [
        (("--node-name", "node-a", "--dns"), None),
        (("--node-name", "node-a", "--dns", "--dns-autopath"), "node-a"),
    ],
)
def test_the_source_watches_this_nodes_pods_only_with_autopath(
    argv: tuple[str, ...], pods_node: str | None
) -> None:
    kube_options = proxyapp.kube_options(options(*argv))
    assert kube_options.get("pods_node") == pods_node
    assert kube_options["node_name"] == "node-a"


@pytest.mark.parametrize(
    ("file", "variable", "stale"),
    [
        ("", None, 3600.0),  # on by default: the central upstream gone, outside names go on
        ("cache:\n  serve_stale: 60\n", None, 3600.0),  # serve's setting is not the node's
        ("node:\n  dns_serve_stale: 0\n", None, 0.0),  # off when asked
        ("node:\n  dns_serve_stale: 600\n", "120", 120.0),  # the variable wins over the file
    ],
)
def test_the_node_dns_serves_stale_answers_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: str, variable: str | None, stale: float
) -> None:
    path = tmp_path / "kdns.yaml"
    path.write_text(file)
    if variable is not None:
        monkeypatch.setenv("KDNS_NODE_DNS_SERVE_STALE", variable)
    config = cli.config_of(cli.parse_args(["proxy", "--dns", "--config", str(path)]))
    assert proxyapp.node_dns_config(config, ["169.254.20.10"]).cache.serve_stale == stale

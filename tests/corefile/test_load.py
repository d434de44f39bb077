"""kdns.corefile.load: a Corefile → the Config kdns serves, and the kdns YAML `kdns check
--corefile` prints (which loads back into the same Config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdns.config import Config, ConfigError, load_config
from kdns.corefile.load import (
    CorefileRefused,
    corefile_config,
    load_corefile,
    read_corefile,
    render_yaml,
)
from tests.corefile.test_translate import DATA, ENV, distro

SERVED = [
    ("kubeadm.Corefile", None),
    ("rke2.Corefile", None),
    ("eks.Corefile", None),
    ("aks.Corefile", "aks-custom"),
    ("stub.Corefile", None),
    ("snippets.Corefile", None),
]


@pytest.mark.parametrize("name, custom", SERVED)
def test_printed_yaml_loads_back_into_the_same_config(
    name: str, custom: str | None, tmp_path: Path
) -> None:
    translation = distro(name, custom, ENV)
    config = corefile_config(translation, name)
    printed = tmp_path / "kdns.yaml"
    printed.write_text(render_yaml(translation, name))
    assert load_config(str(printed)) == config
    assert config != Config()


def test_kubeadm_config() -> None:
    config, translation = load_corefile(str(DATA / "kubeadm.Corefile"), {})
    assert config.source == str(DATA / "kubeadm.Corefile")
    dns, forward, cache = config.dns, config.forward, config.cache
    assert (dns.zones, dns.ttl, dns.pods, dns.addr) == (
        ("cluster.local", "in-addr.arpa", "ip6.arpa"),
        30,
        "insecure",
        "0.0.0.0:53",
    )
    assert (dns.lameduck, dns.reload_interval, dns.loadbalance) == (5.0, 30.0, "round_robin")
    assert (dns.health_addr, dns.ready_addr, dns.metrics_addr) == (
        "0.0.0.0:8080",
        "0.0.0.0:8181",
        "0.0.0.0:9153",
    )
    assert dns.metrics_coredns_names is True
    assert (forward.upstreams, forward.resolv_conf, forward.max_concurrent) == (
        None,
        "/etc/resolv.conf",
        1000,
    )
    assert (cache.max_ttl, cache.max_denial_ttl) == (30, 30)
    assert translation.refused == ()


KUBEADM_YAML = """\
# The kdns config that kubeadm.Corefile gives (kdns check --corefile).
dns:
  zones: [cluster.local, in-addr.arpa, ip6.arpa]  # kubeadm.Corefile:7
  ttl: 30  # kubeadm.Corefile:10
  pods: insecure  # kubeadm.Corefile:8
  loadbalance: round_robin  # kubeadm.Corefile:22
  addr: 0.0.0.0:53  # kubeadm.Corefile:1
  health_addr: 0.0.0.0:8080  # kubeadm.Corefile:3
  ready_addr: 0.0.0.0:8181  # kubeadm.Corefile:6
  metrics_addr: 0.0.0.0:9153  # kubeadm.Corefile:12
  metrics_coredns_names: true  # kubeadm.Corefile:12
  lameduck: 5.0  # kubeadm.Corefile:4
  reload_interval: 30.0  # kubeadm.Corefile:21
forward:
  upstreams: null  # kubeadm.Corefile:13
  resolv_conf: /etc/resolv.conf  # kubeadm.Corefile:13
  max_concurrent: 1000  # kubeadm.Corefile:14
cache:
  max_ttl: 30  # kubeadm.Corefile:16
  max_denial_ttl: 30  # kubeadm.Corefile:16
# kubeadm.Corefile:2: errors: accepted: kdns logs errors on its own
# kubeadm.Corefile:9: kubernetes fallthrough: accepted: PTR questions for addresses no Service owns are forwarded
# kubeadm.Corefile:17: cache disable: accepted: kdns never caches cluster answers
# kubeadm.Corefile:18: cache disable: accepted: kdns never caches cluster answers
# kubeadm.Corefile:20: loop: accepted: kdns refuses, at start, an upstream that would forward back to it
"""


def test_kubeadm_yaml(tmp_path: Path) -> None:
    path = tmp_path / "kubeadm.Corefile"
    path.write_text((DATA / "kubeadm.Corefile").read_text())
    printed = render_yaml(read_corefile(str(path), {}), "kubeadm.Corefile")
    assert printed.replace(f"{tmp_path}/", "") == KUBEADM_YAML


def test_refused_directives_are_one_line_each() -> None:
    with pytest.raises(CorefileRefused) as caught:
        load_corefile(str(DATA / "refused.Corefile"), {})
    assert [line.replace(f"{DATA}/", "") for line in caught.value.lines] == [
        "refused.Corefile:9: rewrite: not supported: only `rewrite name` is supported (here type)",
        "refused.Corefile:10: dns64: not supported: kdns does not have this plugin yet, and it "
        "changes answers",
    ]
    assert isinstance(caught.value, ConfigError)


def test_a_value_out_of_range_names_the_corefile_line(tmp_path: Path) -> None:
    path = tmp_path / "Corefile"
    path.write_text(".:53 {\n    kubernetes cluster.local {\n       ttl 9999\n    }\n}\n")
    with pytest.raises(ConfigError) as caught:
        load_corefile(str(path), {})
    assert str(caught.value) == (
        f"{path}:3: ttl: must be a whole number of seconds in 0-3600 (got 9999) (kdns key dns.ttl)"
    )


def test_bytes_that_are_not_utf8_name_the_line_in_the_corefile_and_its_imports(
    tmp_path: Path,
) -> None:
    # A Latin-1 byte used to escape as a UnicodeDecodeError traceback from `kdns check`.
    path = tmp_path / "Corefile"
    path.write_bytes(b".:53 {\n    kubernetes caf\xe9.local\n}\n")
    with pytest.raises(ConfigError) as caught:
        load_corefile(str(path), {})
    assert str(caught.value) == f"{path}:2: not UTF-8 text (byte 0xe9)"
    custom = tmp_path / "custom.server"
    custom.write_bytes(b"acme.local:53 {\n  forward . 127.0.0.1\xff\n}\n")
    path.write_text(f".:53 {{\n    import {custom}\n    kubernetes cluster.local\n}}\n")
    with pytest.raises(ConfigError) as caught:
        load_corefile(str(path), {})
    assert str(caught.value) == f"{custom}:2: not UTF-8 text (byte 0xff)"


def test_imports_are_kept_for_the_reload_watch(tmp_path: Path) -> None:
    (tmp_path / "Corefile").write_text(
        ".:53 {\n    kubernetes cluster.local\n    import custom/*.override\n}\n"
        "import custom/*.server\n"
    )
    config, _ = load_corefile(str(tmp_path / "Corefile"), {})
    assert config.imports == (f"{tmp_path}/custom/*.override", f"{tmp_path}/custom/*.server")


def test_the_reload_fingerprint_covers_imported_files_and_new_glob_matches(tmp_path: Path) -> None:
    from kdns.app import config_fingerprint

    (tmp_path / "custom").mkdir()
    (tmp_path / "extra.conf").write_text("errors\n")
    (tmp_path / "Corefile").write_text(
        ".:53 {\n    kubernetes cluster.local\n    import extra.conf\n}\nimport custom/*.server\n"
    )
    config, _ = load_corefile(str(tmp_path / "Corefile"), {})
    before = config_fingerprint(config)
    assert config_fingerprint(config) == before
    (tmp_path / "custom" / "a.server").write_text("")  # an empty file: its name alone counts
    added = config_fingerprint(config)
    assert added != before
    (tmp_path / "extra.conf").write_text("errors\nlog\n")
    assert config_fingerprint(config) not in (before, added)

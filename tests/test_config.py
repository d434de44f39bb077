"""kdns.config: sections and their flat aliases, defaults, load_config, with_overrides, KDNS_*
variables, and one-line errors naming file, line and key as it was spelled."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from kdns.config import (
    ALIASES,
    KEYS,
    POD_MODES,
    Config,
    ConfigError,
    DnsSection,
    apply_env,
    env_overrides,
    is_reverse_zone,
    load_config,
    locate,
    parse_hostport,
)

# --- defaults and zones ------------------------------------------------------------------------


def test_defaults() -> None:
    config = Config()
    assert config.dns.zones == ("cluster.local", "in-addr.arpa", "ip6.arpa")
    assert config.dns.ttl == 5
    assert config.dns.pods == "insecure"
    assert config.dns.addr == "0.0.0.0:53"
    assert config.dns.loadbalance == "round_robin"
    assert config.kubernetes.manifests == ()
    assert config.dns.forward_zones == ("cluster.local",)
    assert config.dns.reverse_zones == ("in-addr.arpa", "ip6.arpa")
    assert config.proxy.mode == "iptables" and config.dns.proxy == "none"


@pytest.mark.parametrize(
    ("zones", "forward", "reverse"),
    [
        pytest.param(
            ("cluster.local", "in-addr.arpa", "ip6.arpa"),
            ("cluster.local",),
            ("in-addr.arpa", "ip6.arpa"),
            id="default",
        ),
        pytest.param(
            ("10.in-addr.arpa", "cluster.local", "clusterset.local", "d.f.ip6.arpa"),
            ("cluster.local", "clusterset.local"),
            ("10.in-addr.arpa", "d.f.ip6.arpa"),
            id="narrow-reverse-and-order-kept",
        ),
        pytest.param(("example.arpa",), ("example.arpa",), (), id="other-arpa-is-forward"),
        # "noip6.arpa" is neither ip6.arpa nor a zone under it.
        pytest.param(("noip6.arpa",), ("noip6.arpa",), (), id="ip6-suffix-without-dot"),
        pytest.param(("xin-addr.arpa",), ("xin-addr.arpa",), (), id="in-addr-suffix-without-dot"),
    ],
)
def test_forward_and_reverse_zones(
    zones: tuple[str, ...], forward: tuple[str, ...], reverse: tuple[str, ...]
) -> None:
    dns = DnsSection(zones=zones)
    assert (dns.forward_zones, dns.reverse_zones) == (forward, reverse)
    assert [is_reverse_zone(z) for z in zones] == [z in reverse for z in zones]


# --- with_overrides ----------------------------------------------------------------------------


def test_with_overrides_flags_win_and_none_means_not_given() -> None:
    base = Config().with_overrides(ttl=30, pods="verified", dns_addr="127.0.0.1:5353")
    config = base.with_overrides(ttl=None, pods="disabled", dns_addr=None, zones=None)
    assert config == Config().with_overrides(ttl=30, pods="disabled", dns_addr="127.0.0.1:5353")
    assert base.dns.pods == "verified"  # frozen: the original is untouched


def test_with_overrides_normalises_and_validates() -> None:
    config = Config().with_overrides(zones=["Example.Local.", "10.IN-ADDR.ARPA"], ttl=0)
    assert config.dns.zones == ("example.local", "10.in-addr.arpa")
    assert config.dns.ttl == 0
    with pytest.raises(ConfigError, match=r"^command line: ttl: .*0-3600"):
        Config().with_overrides(ttl=3601)
    with pytest.raises(ConfigError, match=r"^command line: dns_addr: "):
        Config().with_overrides(dns_addr="nonsense")


def test_with_overrides_keeps_the_source() -> None:
    assert Config(source="kdns.yaml").with_overrides(ttl=7).source == "kdns.yaml"


# --- load_config: good files -------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "kdns.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_load_config_good_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
# kdns configuration
zones:
  - Cluster.Local.
  - 10.in-addr.arpa
ttl: 30
pods: verified
dns_addr: "[::]:5353"
manifests:
  - /etc/kdns/services.yaml
""",
    )
    config = load_config(path)
    assert config == Config().with_overrides(
        zones=("cluster.local", "10.in-addr.arpa"),
        ttl=30,
        pods="verified",
        dns_addr="[::]:5353",
        manifests=("/etc/kdns/services.yaml",),
    )
    assert config.source == path
    assert config.dns.forward_zones == ("cluster.local",)
    assert config.dns.reverse_zones == ("10.in-addr.arpa",)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("# only a comment\n", id="comment-only"),
        pytest.param("---\n", id="empty-document"),
    ],
)
def test_load_config_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    config = load_config(path)
    assert config == Config()
    assert config.source == path


def test_load_config_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "ttl: 0\n"))
    assert config == Config().with_overrides(ttl=0)


def test_load_config_single_zone_string(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "zones: cluster.local\n")).dns.zones == ("cluster.local",)


@pytest.mark.parametrize(
    ("zone", "normalised"),
    [
        pytest.param("cluster.local.", "cluster.local", id="trailing-dot"),
        pytest.param("CLUSTER.Local", "cluster.local", id="upper-case"),
        pytest.param(" My-Cluster.Example. ", "my-cluster.example", id="spaces-dot-case"),
    ],
)
def test_zone_normalisation(tmp_path: Path, zone: str, normalised: str) -> None:
    path = write(tmp_path, f"zones: ['{zone}']\n")
    assert load_config(path).dns.zones == (normalised,)


def test_config_then_flags(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "ttl: 30\npods: verified\n"))
    final = config.with_overrides(ttl=10, pods=None)
    assert (final.dns.ttl, final.dns.pods) == (10, "verified")


# --- load_config: errors -----------------------------------------------------------------------

# (file text, line, key, text that must appear: the allowed values or the problem)
ERRORS = [
    pytest.param(
        "ttl: 5\npods: insecure\ncolour: blue\n",
        3,
        "colour",
        ["unknown key", *("dns_addr", "manifests", "pods", "ttl", "zones")],
        id="unknown-key",
    ),
    pytest.param("zones: [cluster.local]\nttl: -1\n", 2, "ttl", ["0-3600"], id="ttl-negative"),
    pytest.param("ttl: 3601\n", 1, "ttl", ["3601", "0-3600"], id="ttl-too-big"),
    pytest.param("pods: insecure\nttl: five\n", 2, "ttl", ["'five'", "0-3600"], id="ttl-word"),
    pytest.param("ttl: 1.5\n", 1, "ttl", ["0-3600"], id="ttl-float"),
    pytest.param("ttl: true\n", 1, "ttl", ["0-3600"], id="ttl-bool"),
    pytest.param(
        "ttl: 5\n\npods: maybe\n",
        3,
        "pods",
        ["'maybe'", *POD_MODES],
        id="pods-maybe",
    ),
    pytest.param(
        "dns_addr: nonsense\n", 1, "dns_addr", ["'nonsense'", "HOST:PORT"], id="dns-addr-word"
    ),
    pytest.param(
        "ttl: 5\ndns_addr: '1.2.3.4:99999'\n",
        2,
        "dns_addr",
        ["99999", "0-65535", "HOST:PORT"],
        id="dns-addr-port",
    ),
    pytest.param("ttl: 5\nzones: []\n", 2, "zones", ["at least one zone"], id="zones-empty"),
    pytest.param(
        "ttl: 5\nzones:\n  - cluster.local\n  - Cluster.Local.\n",
        2,
        "zones",
        ["'Cluster.Local.'", "listed twice"],
        id="zones-duplicate",
    ),
    pytest.param("zones: [bad_zone!]\n", 1, "zones", ["'bad_zone!'"], id="zones-bad-name"),
    pytest.param("zones: {a: b}\n", 1, "zones", ["expected a list"], id="zones-mapping"),
    pytest.param("manifests: 5\n", 1, "manifests", ["expected a list"], id="manifests-number"),
]


@pytest.mark.parametrize(("text", "line", "key", "needles"), ERRORS)
def test_load_config_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, needles: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: {key}: "), message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("zones:\n\t- cluster.local\n", 2, id="tab-in-list"),
        pytest.param("ttl: 5\npods: insecure\n\tdns_addr: ':53'\n", 3, id="tab-before-key"),
    ],
)
def test_load_config_tab_indentation(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert "tab" in message
    assert "\n" not in message


def test_load_config_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "ttl: 5\npods: 'insecure\nzones: [a\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert re.match(rf"^{re.escape(path)}:\d+: YAML syntax error: ", message), message
    assert "\n" not in message


def test_load_config_yaml_syntax_error_line(tmp_path: Path) -> None:
    path = write(tmp_path, "ttl: 5\npods: insecure\nzones: [a, b}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}:3: YAML syntax error: "):
        load_config(path)


def test_load_config_not_utf8_names_the_line(tmp_path: Path) -> None:
    # Found by fuzzing: a Latin-1 byte used to escape as a UnicodeDecodeError traceback.
    path = tmp_path / "kdns.yaml"
    path.write_bytes(b"ttl: 5\nzones: [caf\xe9]\n")
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}:2: not UTF-8 text \(byte 0xe9\)$"
    ):
        load_config(str(path))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- ttl: 5\n", id="list"),
        pytest.param("just a string\n", id="scalar"),
    ],
)
def test_load_config_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}:1: .*mapping"):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "No such file" in message


# --- parse_hostport ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1.2.3.4:53", ("1.2.3.4", 53), id="ipv4-port"),
        pytest.param("[::1]:5353", ("::1", 5353), id="ipv6-bracketed-port"),
        pytest.param("[::]:53", ("::", 53), id="ipv6-any"),
        pytest.param(":53", ("0.0.0.0", 53), id="port-only"),
        pytest.param(":0", ("0.0.0.0", 0), id="port-zero"),
        # "HOST" alone takes the default port; an unbracketed IPv6 address is a HOST.
        pytest.param("::", ("::", 53), id="ipv6-any-bare"),
        pytest.param("fd00::10", ("fd00::10", 53), id="ipv6-bare"),
        pytest.param("10.0.0.10", ("10.0.0.10", 53), id="ipv4-bare"),
        pytest.param("[fd00::10]", ("fd00::10", 53), id="ipv6-bracketed-no-port"),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


def test_parse_hostport_default_port() -> None:
    assert parse_hostport("127.0.0.1", default_port=5353) == ("127.0.0.1", 5353)
    assert parse_hostport("127.0.0.1:53", default_port=5353) == ("127.0.0.1", 53)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("host:53", "'host' is not an IP address", id="hostname"),
        pytest.param("1.2.3.4:99999", "0-65535", id="port-too-big"),
        pytest.param("1.2.3.4:-1", "0-65535", id="port-negative"),
        pytest.param("1.2.3.4:", "0-65535", id="port-empty"),
        pytest.param("1.2.3.4:dns", "0-65535", id="port-word"),
        pytest.param("[::1", "missing ']'", id="unclosed-bracket"),
        pytest.param("[::1]53", "':PORT'", id="no-colon-after-bracket"),
        pytest.param("[host]:53", "not an IP address", id="bracketed-hostname"),
    ],
)
def test_parse_hostport_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        parse_hostport(text)


# --- KDNS_* environment variables --------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"KDNS_TTL": "30"}, {"ttl": 30}),
        (
            {"KDNS_UPSTREAMS": "10.0.0.2 10.0.0.3:5353"},
            {"upstreams": ("10.0.0.2", "10.0.0.3:5353")},
        ),
        ({"KDNS_UPSTREAMS": ""}, {"upstreams": ()}),
        (
            {"KDNS_ZONES": "cluster.local,in-addr.arpa"},
            {"zones": ("cluster.local", "in-addr.arpa")},
        ),
        ({"KDNS_AUTOPATH": "true"}, {"autopath": True}),
        ({"KDNS_FORWARD_TIMEOUT": "0.5"}, {"forward_timeout": 0.5}),
        ({"KDNS_PODS": "verified", "PATH": "/bin"}, {"pods": "verified"}),
        # Service links Kubernetes injects for a Service named "kdns", and other tools' vars.
        ({"KDNS_SERVICE_HOST": "10.96.0.10", "KDNS_PORT": "udp://10.96.0.10:53"}, {}),
        ({"KDNS_REQUIRE_ALL": "1", "KDNS_SOURCE": "x"}, {}),
        (
            {"KDNS_STUB_DOMAINS": "{acme.local: [10.0.0.10, '10.0.0.11:5353'], corp: 10.1.0.1}"},
            {
                "stub_domains": (
                    ("acme.local", ("10.0.0.10", "10.0.0.11:5353")),
                    ("corp", ("10.1.0.1",)),
                )
            },
        ),
        ({"KDNS_STUB_DOMAINS": ""}, {"stub_domains": ()}),
        (
            {"KDNS_LAMEDUCK": "0", "KDNS_RELOAD_INTERVAL": "30"},
            {"lameduck": 0.0, "reload_interval": 30.0},
        ),
        ({"KDNS_AUTOPATH": " Off "}, {"autopath": False}),
    ],
)
def test_env_overrides(environ: dict[str, str], expected: dict[str, object]) -> None:
    from kdns.config import env_overrides

    overrides = env_overrides(environ)
    assert overrides == expected
    # They go through the same validation as the file and the flags.
    Config().with_overrides(**overrides)


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"KDNS_TTL": "five"}, "$KDNS_TTL: must be a whole number (got 'five')"),
        ({"KDNS_TTL": "1.5"}, "$KDNS_TTL: must be a whole number (got '1.5')"),
        ({"KDNS_LAMEDUCK": "5s"}, "$KDNS_LAMEDUCK: must be a number (got '5s')"),
        ({"KDNS_AUTOPATH": "maybe"}, "$KDNS_AUTOPATH: must be true or false (got 'maybe')"),
        (
            {"KDNS_STUB_DOMAINS": "[a, b"},
            "$KDNS_STUB_DOMAINS: YAML syntax error: expected ',' or ']', but got '<stream end>'",
        ),
        (
            {"KDNS_STUB_DOMAINS": "acme.local"},
            "$KDNS_STUB_DOMAINS: stub_domains: expected {domain: [IP[:PORT], ...]} "
            "(got 'acme.local')",
        ),
    ],
)
def test_env_override_errors_name_the_variable(environ: dict[str, str], words: str) -> None:
    from kdns.config import env_overrides

    with pytest.raises(ConfigError) as error:
        env_overrides(environ)
    assert str(error.value) == words


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"KDNS_TTL": "9999"},
            "$KDNS_TTL: ttl: must be a whole number of seconds in 0-3600 (got 9999)",
        ),
        (
            {"KDNS_PODS": "sometimes"},
            "$KDNS_PODS: pods: must be one of insecure, verified, disabled (got 'sometimes')",
        ),
        ({"KDNS_ZONES": ""}, "$KDNS_ZONES: zones: at least one zone is needed (got [])"),
        (
            {"KDNS_LAMEDUCK": "-1"},
            "$KDNS_LAMEDUCK: lameduck: must be a number of seconds in 0-3600 (got -1.0)",
        ),
        (
            {"KDNS_DNS_ADDR": "localhost:53"},
            "$KDNS_DNS_ADDR: dns_addr: 'localhost' is not an IP address (expected HOST:PORT, "
            "e.g. 0.0.0.0:53 or [::]:53)",
        ),
        (
            {"KDNS_STUB_DOMAINS": "{acme.local: [nameserver]}"},
            "$KDNS_STUB_DOMAINS: stub_domains.acme.local: 'nameserver': 'nameserver' is not an "
            "IP address (expected IP or IP:PORT)",
        ),
    ],
)
def test_apply_env_range_errors_name_the_variable_and_key(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        apply_env(Config(), {"PATH": "/bin", **environ})
    assert str(error.value) == message


def test_apply_env_overrides_the_file_one_key_each(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "ttl: 30\npods: verified\nlameduck: 10\n"))
    final = apply_env(config, {"KDNS_TTL": "7", "KDNS_RELOAD_INTERVAL": "0"})
    assert final == Config().with_overrides(ttl=7, pods="verified", lameduck=10, reload_interval=0)
    assert final.source == config.source


def _env_text(value: object) -> str:
    """How an operator writes `value` in an environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    if isinstance(value, int | float | str):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _variables(path: str) -> list[str]:
    """The KDNS_* variables that set the key at `path`: by flat name and by SECTION_FIELD."""
    alias = KEYS[path].alias or path.replace(".", "_")
    return sorted({f"KDNS_{alias.upper()}", f"KDNS_{path.replace('.', '_').upper()}"})


def test_every_key_can_be_set_from_the_environment() -> None:
    # Whatever keys Config has: each takes its default back from its variables, so a key added
    # later is covered without touching this test.
    for path, key in KEYS.items():
        if key.default is None:
            continue  # upstreams: null is the file's way of saying "resolv_conf's"
        text = "{}" if path == "forward.stub_domains" else _env_text(key.default)
        for name in _variables(path):
            assert apply_env(Config(), {name: text}) == Config(), (name, text)


def test_a_non_default_value_from_the_environment_for_every_simple_key() -> None:
    # Each scalar key, set to a value other than its default, arrives as that value.
    for path, key in KEYS.items():
        default = key.default
        if type(default) not in (bool, int, float) or key.shape != "scalar":
            continue  # query_log: false or a format, read as YAML
        other = (not default) if isinstance(default, bool) else default + 1
        for name in _variables(path):
            overrides = env_overrides({name: _env_text(other)})
            assert overrides == {name[5:].lower(): other}, name
            assert apply_env(Config(), {name: _env_text(other)}).get(path) == other, name


def test_a_variable_by_path_and_its_errors_name_it() -> None:
    config = apply_env(Config(), {"KDNS_DNS_TTL": "30", "KDNS_PROXY_MODE": "nftables"})
    assert (config.dns.ttl, config.proxy.mode) == (30, "nftables")
    with pytest.raises(ConfigError) as error:
        apply_env(Config(), {"KDNS_LOGGING_FORMAT": "xml"})
    assert (
        str(error.value)
        == "$KDNS_LOGGING_FORMAT: logging_format: must be one of text, json (got 'xml')"
    )


# --- every key is checked ------------------------------------------------------------------------


def _spellings(path: str) -> list[tuple[str, str, int]]:
    """(file text before the value, the key as spelled, its line) for both ways of writing it."""
    section, name = path.split(".")
    alias = KEYS[path].alias
    return [(f"# kdns\n{alias}:", alias, 2)] * bool(alias) + [
        (f"# kdns\n{section}:\n  {name}:", path, 3)
    ]


@pytest.mark.parametrize("path", list(KEYS))
def test_every_key_rejects_a_value_of_the_wrong_shape(tmp_path: Path, path: str) -> None:
    # A list holding a mapping is no key's value: each key must say so, naming itself as spelled
    # and its line, and what was given.
    for head, spelled, line in _spellings(path):
        indent = " " * (len(head.splitlines()[-1]) - len(head.splitlines()[-1].lstrip()) + 2)
        file = write(tmp_path, f"{head}\n{indent}- {{bogus: 1}}\n")
        with pytest.raises(ConfigError) as info:
            load_config(file)
        message = str(info.value)
        assert message.startswith(f"{file}:{line}: {spelled}: "), message
        assert "bogus" in message, message
        assert "\n" not in message


# (file text, line, key, the exact message after "path:line: key: ")
VALUE_ERRORS = [
    ("ttl: 3601\n", 1, "ttl", "must be a whole number of seconds in 0-3600 (got 3601)"),
    ("pods: maybe\n", 1, "pods", "must be one of insecure, verified, disabled (got 'maybe')"),
    ("zones: [cluster.local, 5]\n", 1, "zones", "must be a list of domain names (got 5)"),
    ("zones: cluster.local\nzones: x\n", 2, "zones", "given twice (first on line 1)"),
    ("manifests: ['']\n", 1, "manifests", "must be a list of file or folder paths (got '')"),
    ("kubeconfig: 5\n", 1, "kubeconfig", "must be a string (got 5)"),
    ("context: [a]\n", 1, "context", "must be a string (got ['a'])"),
    ("resolv_conf: null\n", 1, "resolv_conf", "must be a string (got None)"),
    ("kube_dns_configmap: true\n", 1, "kube_dns_configmap", "must be a string (got True)"),
    (
        "health_addr: 8080\n",
        1,
        "health_addr",
        "must be HOST:PORT, e.g. 0.0.0.0:53 or [::]:53 (got 8080)",
    ),
    (
        "ready_addr: ':x'\n",
        1,
        "ready_addr",
        "port 'x' is not a number in 0-65535 (expected HOST:PORT, e.g. 0.0.0.0:53 or [::]:53)",
    ),
    (
        "metrics_addr: 'a:1'\n",
        1,
        "metrics_addr",
        "'a' is not an IP address (expected HOST:PORT, e.g. 0.0.0.0:53 or [::]:53)",
    ),
    ("upstreams: [1.1.1.1, 53]\n", 1, "upstreams", "must be IP or IP:PORT (got 53)"),
    (
        "upstreams: 8.8.8.8:99999\n",
        1,
        "upstreams",
        "'8.8.8.8:99999': port '99999' is not a number in 0-65535 (expected IP or IP:PORT)",
    ),
    ("upstreams: {a: b}\n", 1, "upstreams", "expected a list (got {'a': 'b'})"),
    (
        "upstreams: [" + ", ".join(f"10.0.0.{i}" for i in range(16)) + "]\n",
        1,
        "upstreams",
        "at most 15 upstreams, as CoreDNS's forward (got 16)",
    ),
    (
        "stub_domains: [acme.local]\n",
        1,
        "stub_domains",
        "expected {domain: [IP[:PORT], ...]} (got ['acme.local'])",
    ),
    (
        "stub_domains: {'bad domain!': [1.1.1.1]}\n",
        1,
        "stub_domains",
        "must map domain names to servers (got 'bad domain!')",
    ),
    (
        "stub_domains: {acme.local: []}\n",
        1,
        "stub_domains.acme.local",
        "must be a list of IP[:PORT] (got ())",
    ),
    (
        "ttl: 5\nstub_domains:\n  acme.local: [ns1]\n",
        2,
        "stub_domains.acme.local",
        "'ns1': 'ns1' is not an IP address (expected IP or IP:PORT)",
    ),
    ("max_concurrent: 0\n", 1, "max_concurrent", "must be a whole number in 1-1000000 (got 0)"),
    (
        "cache_success: -1\n",
        1,
        "cache_success",
        "must be a whole number of entries in 0-10000000 (got -1)",
    ),
    (
        "cache_denial: 1e3\n",
        1,
        "cache_denial",
        "must be a whole number of entries in 0-10000000 (got '1e3')",
    ),
    (
        "cache_max_ttl: 86401\n",
        1,
        "cache_max_ttl",
        "must be a whole number of seconds in 0-86400 (got 86401)",
    ),
    (
        "cache_max_denial_ttl: 1.5\n",
        1,
        "cache_max_denial_ttl",
        "must be a whole number of seconds in 0-86400 (got 1.5)",
    ),
    (
        "forward_timeout: 0\n",
        1,
        "forward_timeout",
        "must be a number of seconds in 0.05-60 (got 0)",
    ),
    ("serve_stale: 2w\n", 1, "serve_stale", "must be a number of seconds in 0-604800 (got '2w')"),
    (
        "node_dns_serve_stale: -1\n",
        1,
        "node_dns_serve_stale",
        "must be a number of seconds in 0-604800 (got -1)",
    ),
    ("autopath: 'yes'\n", 1, "autopath", "must be true or false (got 'yes')"),
    ("lameduck: 5s\n", 1, "lameduck", "must be a number of seconds in 0-3600 (got '5s')"),
    (
        "loadbalance: random\n",
        1,
        "loadbalance",
        "must be one of round_robin, off (got 'random')",
    ),
    ("proxy: kernel\n", 1, "proxy", "must be one of none, userspace (got 'kernel')"),
    (
        "proxy_mode: ebpf\n",
        1,
        "proxy_mode",
        "must be one of iptables, nftables, ipvs, userspace (got 'ebpf')",
    ),
    ("node_name: 7\n", 1, "node_name", "must be a string (got 7)"),
    (
        "cluster_cidrs: [10.244.0.0/16, 10.245.0.0/16]\n",
        1,
        "cluster_cidrs",
        "at most one CIDR per IP family (got ['10.244.0.0/16', '10.245.0.0/16'])",
    ),
    (
        "nodeport_addresses: [10.0.0.0/33]\n",
        1,
        "nodeport_addresses",
        "'10.0.0.0/33' is not a CIDR (expected a list of CIDRs, e.g. 10.244.0.0/16)",
    ),
    (
        "node_dns: [169.254.20.300]\n",
        1,
        "node_dns",
        "'169.254.20.300' is not an IP address (expected e.g. [169.254.20.10])",
    ),
    (
        "node_dns_upstreams: [1.1.1.1, 53]\n",
        1,
        "node_dns_upstreams",
        "must be IP or IP:PORT (got 53)",
    ),
    (
        "min_sync_period: 3601\n",
        1,
        "min_sync_period",
        "must be a number of seconds in 0-3600 (got 3601)",
    ),
    ("sync_period: 0\n", 1, "sync_period", "must be a number of seconds in 0.1-86400 (got 0)"),
    ("masquerade_all: 'yes'\n", 1, "masquerade_all", "must be true or false (got 'yes')"),
    (
        "ipvs_scheduler: 'r r'\n",
        1,
        "ipvs_scheduler",
        "must be an IPVS scheduler name, e.g. rr (got 'r r')",
    ),
    (
        "healthz_addr: ':99999'\n",
        1,
        "healthz_addr",
        "port '99999' is not a number in 0-65535 (expected HOST:PORT, e.g. 0.0.0.0:53 or [::]:53)",
    ),
    (
        "proxy_metrics_addr: localhost\n",
        1,
        "proxy_metrics_addr",
        "'localhost' is not an IP address (expected HOST:PORT, e.g. 0.0.0.0:53 or [::]:53)",
    ),
    # In its section, a key is named by its path, on its own line.
    # kube-proxy's conntrack settings: whole numbers (seconds for timeouts); 0 leaves one alone.
    *(
        (
            f"proxy:\n  {key}: {value}\n",
            2,
            f"proxy.{key}",
            f"must be a whole number{unit} in 0-2147483647 (got {value})",
        )
        for key, unit, value in (
            ("conntrack_max_per_core", "", "-1"),
            ("conntrack_min", "", "2147483648"),
            ("conntrack_tcp_timeout_established", " of seconds", "1.5"),
            ("conntrack_tcp_timeout_close_wait", " of seconds", "-1"),
            ("conntrack_udp_timeout", " of seconds", "-30"),
            ("conntrack_udp_timeout_stream", " of seconds", "-120"),
        )
    ),
    (
        "proxy:\n  conntrack_tcp_be_liberal: 1\n",
        2,
        "proxy.conntrack_tcp_be_liberal",
        "must be true or false (got 1)",
    ),
    (
        "dns:\n  ttl: 5\n  pods: maybe\n",
        3,
        "dns.pods",
        "must be one of insecure, verified, disabled (got 'maybe')",
    ),
    (
        "forward:\n  stub_domains:\n    acme.local: [ns1]\n",
        2,
        "forward.stub_domains.acme.local",
        "'ns1': 'ns1' is not an IP address (expected IP or IP:PORT)",
    ),
    (
        "cache:\n  max_ttl: -1\n",
        2,
        "cache.max_ttl",
        "must be a whole number of seconds in 0-86400 (got -1)",
    ),
    ("lameduck: 3601\n", 1, "lameduck", "must be a number of seconds in 0-3600 (got 3601)"),
    (
        "reload_interval: -2\n",
        1,
        "reload_interval",
        "must be a number of seconds in 0-86400 (got -2)",
    ),
    (
        "reload_interval: false\n",
        1,
        "reload_interval",
        "must be a number of seconds in 0-86400 (got False)",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), VALUE_ERRORS, ids=lambda v: None)
def test_value_errors_name_key_allowed_values_and_what_was_given(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:{line}: {key}: {message}"


def test_value_error_tables_cover_every_key_of_this_module() -> None:
    # Every flat key has its range in VALUE_ERRORS or ERRORS, but the logging ones (in
    # tests/test_config_observability.py); test_every_key_rejects_a_value_of_the_wrong_shape
    # covers their shape.
    covered = {key.split(".")[0] for _, _, key, _ in VALUE_ERRORS}
    covered |= {param.values[2] for param in ERRORS}
    observability = {"log_format", "query_log", "log_consolidate", "metrics_coredns_names"}
    assert covered | observability >= set(ALIASES), set(ALIASES) - covered - observability


def test_boundaries_are_accepted(tmp_path: Path) -> None:
    text = (
        "ttl: 3600\nlameduck: 0\nreload_interval: 0\nforward_timeout: 0.05\n"
        "max_concurrent: 1\ncache_success: 0\nserve_stale: 604800\n"
    )
    config = load_config(write(tmp_path, text))
    assert (config.dns.ttl, config.dns.lameduck, config.dns.reload_interval) == (3600, 0, 0)
    forward = config.forward
    assert (forward.timeout, forward.max_concurrent, config.cache.serve_stale) == (0.05, 1, 604800)


# --- config/kdns.yaml ------------------------------------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "kdns.yaml"


def test_shipped_config_lists_every_key_with_its_default() -> None:
    # Loading it gives exactly the defaults, and it names every key Config has, in its section:
    # the file cannot drift from the code, whichever keys are added.
    config = load_config(str(SHIPPED))
    assert config == Config()
    sections = yaml.safe_load(SHIPPED.read_text())
    given = {f"{section}.{name}" for section, keys in sections.items() for name in keys}
    assert given == set(KEYS), f"missing: {set(KEYS) - given}, extra: {given - set(KEYS)}"
    for path, key in KEYS.items():
        section, name = path.split(".")
        value = sections[section][name]
        # Written as the default, not merely equal after normalisation ("5" is not 5).
        assert Config().with_overrides(**{path: _from_file(path, value)}) == Config(), path
        assert type(key.default) is type(_from_file(path, value)), path


def _from_file(path: str, value: object) -> object:
    if path == "forward.stub_domains":
        assert isinstance(value, dict)
        return tuple((k, tuple(v)) for k, v in value.items())
    return tuple(value) if isinstance(value, list) else value


def test_shipped_config_has_a_comment_above_every_key_naming_its_flat_name() -> None:
    lines = SHIPPED.read_text().splitlines()
    section = ""
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", "-")):
            continue
        comment = lines[i - 1].strip() if i else ""
        assert comment.startswith("# "), f"line {i + 1}: {line!r}"
        name = line.split(":")[0].strip()
        if not line.startswith(" "):
            section = name
            continue
        alias = KEYS[f"{section}.{name}"].alias
        if alias:
            assert comment.endswith(f"(flat: {alias})"), f"line {i}: {comment!r}"


# --- sections and flat keys --------------------------------------------------------------------


def test_sections_and_flat_keys_are_one_model(tmp_path: Path) -> None:
    flat = load_config(
        write(tmp_path, "ttl: 30\ndns_addr: ':5353'\nproxy_mode: nftables\ncache_max_ttl: 60\n")
    )
    nested = load_config(
        write(
            tmp_path,
            "dns:\n  ttl: 30\n  addr: ':5353'\nproxy:\n  mode: nftables\ncache:\n  max_ttl: 60\n",
            "nested.yaml",
        )
    )
    mixed = load_config(
        write(
            tmp_path,
            "dns:\n  ttl: 30\ndns_addr: ':5353'\nproxy: {mode: nftables}\ncache_max_ttl: 60\n",
        )
    )
    assert flat == nested == mixed
    assert (flat.dns.ttl, flat.dns.addr, flat.proxy.mode, flat.cache.max_ttl) == (
        30,
        ":5353",
        "nftables",
        60,
    )


def test_every_flat_key_names_one_path() -> None:
    assert set(ALIASES.values()) <= set(KEYS)
    for alias, path in ALIASES.items():
        assert Config().get(alias) == Config().get(path) == KEYS[path].default


def test_a_top_level_proxy_is_the_section_when_a_mapping_else_serve_s_relay(tmp_path: Path) -> None:
    relay = load_config(write(tmp_path, "proxy: userspace\n"))
    assert (relay.dns.proxy, relay.proxy.mode) == ("userspace", "iptables")
    section = load_config(write(tmp_path, "proxy:\n  mode: userspace\n"))
    assert (section.dns.proxy, section.proxy.mode) == ("none", "userspace")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "ttl: 5\ndns:\n  ttl: 6\n",
            ":3: dns.ttl: given twice (first on line 1 as ttl)",
            id="alias-and-path",
        ),
        pytest.param(
            "dns:\n  pods: verified\ncache: {}\ndns:\n  ttl: 6\n",
            ":4: dns: given twice (first on line 1)",
            id="section-twice",
        ),
        pytest.param(
            "dns:\n  ttl: 5\n  ttl: 6\n",
            ":3: dns.ttl: given twice (first on line 2)",
            id="in-section",
        ),
        pytest.param(
            "dns:\n  colour: blue\n", ":2: dns.colour: unknown key", id="unknown-in-section"
        ),
        pytest.param(
            "cache: 30\n",
            ":1: cache: must be a mapping of the section's keys (got 30)",
            id="section-scalar",
        ),
        pytest.param(
            "dns:\n  zones: {a: b}\n",
            ":2: dns.zones: expected a list (got {'a': 'b'})",
            id="shape-in-section",
        ),
    ],
)
def test_section_errors_name_the_key_as_spelled(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}{message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_with_overrides_takes_paths_and_names_them() -> None:
    config = Config().with_overrides(**{"dns.ttl": 7, "node.cluster_cidrs": ["10.244.0.0/16"]})
    assert (config.dns.ttl, config.node.cluster_cidrs) == (7, ("10.244.0.0/16",))
    with pytest.raises(ConfigError) as info:
        Config().with_overrides(**{"proxy.sync_period": 0})
    assert str(info.value) == (
        "command line: proxy.sync_period: must be a number of seconds in 0.1-86400 (got 0)"
    )
    assert info.value.problem == "must be a number of seconds in 0.1-86400 (got 0)"


def test_locate_names_a_key_as_the_file_spells_it(tmp_path: Path) -> None:
    path = write(tmp_path, "ttl: 5\ndns:\n  addr: ':53'\nmanifests: [a]\n")
    assert locate(path, "dns.addr") == (f"{path}:3", "dns.addr")
    assert locate(path, "kubernetes.manifests") == (f"{path}:4", "manifests")
    # Set by a flag or a variable: the file, and the flat name.
    assert locate(path, "dns.pods") == (path, "pods")
    assert locate("", "dns.pods") == ("config", "pods")


# --- flags ------------------------------------------------------------------------------------------


def test_every_flag_destination_is_a_key_path() -> None:
    from kdns import cli

    flags = cli.key_flags()
    assert flags, "the parser declares its config flags through _key_flag"
    assert set(flags) <= set(KEYS), set(flags) - set(KEYS)
    # The proxy's flags and serve's land in their own sections: --metrics-addr is two keys.
    assert flags["dns.metrics_addr"] == flags["proxy.metrics_addr"] == "--metrics-addr"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["serve", "--ttl", "9999"],
            "--ttl: must be a whole number of seconds in 0-3600 (got 9999)",
        ),
        (["serve", "--dns-addr", "nohost:53"], "--dns-addr: 'nohost' is not an IP address"),
        (
            ["proxy", "--sync-period", "0"],
            "--sync-period: must be a number of seconds in 0.1-86400",
        ),
        (["proxy", "--cluster-cidr", "10.0.0.0/33"], "--cluster-cidr: '10.0.0.0/33' is not a CIDR"),
    ],
)
def test_a_bad_flag_is_named_by_its_flag(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdns import cli

    for name in [n for n in os.environ if n.startswith("KDNS_")]:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as info:
        cli.config_of(cli.parse_args(argv))
    assert str(info.value).startswith(message), str(info.value)


def test_flags_override_variables_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdns import cli

    path = write(tmp_path, "dns:\n  ttl: 30\n  pods: verified\nproxy_mode: ipvs\nnode_name: a\n")
    monkeypatch.setenv("KDNS_DNS_PODS", "disabled")
    monkeypatch.setenv("KDNS_NODE_NAME", "b")
    args = ["proxy", "--config", path, "--mode", "nftables"]
    config = cli.config_of(cli.parse_args(args))
    assert (config.dns.ttl, config.dns.pods) == (30, "disabled")
    assert (config.proxy.mode, config.node.name) == ("nftables", "b")
    assert cli.proxy_options(config).mode == "nftables"

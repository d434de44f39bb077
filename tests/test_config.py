"""kdns.config: defaults, load_config, with_overrides, and one-line errors naming file, line
and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdns.config import (
    POD_MODES,
    Config,
    ConfigError,
    is_reverse_zone,
    load_config,
    parse_hostport,
)

# --- defaults and zones ------------------------------------------------------------------------


def test_defaults() -> None:
    config = Config()
    assert config.zones == ("cluster.local", "in-addr.arpa", "ip6.arpa")
    assert config.ttl == 5
    assert config.pods == "insecure"
    assert config.dns_addr == "0.0.0.0:53"
    assert config.manifests == ()
    assert config.forward_zones == ("cluster.local",)
    assert config.reverse_zones == ("in-addr.arpa", "ip6.arpa")


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
    config = Config(zones=zones)
    assert (config.forward_zones, config.reverse_zones) == (forward, reverse)
    assert [is_reverse_zone(z) for z in zones] == [z in reverse for z in zones]


# --- with_overrides ----------------------------------------------------------------------------


def test_with_overrides_flags_win_and_none_means_not_given() -> None:
    base = Config(ttl=30, pods="verified", dns_addr="127.0.0.1:5353")
    config = base.with_overrides(ttl=None, pods="disabled", dns_addr=None, zones=None)
    assert config == Config(ttl=30, pods="disabled", dns_addr="127.0.0.1:5353")
    assert base.pods == "verified"  # frozen: the original is untouched


def test_with_overrides_normalises_and_validates() -> None:
    config = Config().with_overrides(zones=["Example.Local.", "10.IN-ADDR.ARPA"], ttl=0)
    assert config.zones == ("example.local", "10.in-addr.arpa")
    assert config.ttl == 0
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
    assert config == Config(
        zones=("cluster.local", "10.in-addr.arpa"),
        ttl=30,
        pods="verified",
        dns_addr="[::]:5353",
        manifests=("/etc/kdns/services.yaml",),
    )
    assert config.source == path
    assert config.forward_zones == ("cluster.local",)
    assert config.reverse_zones == ("10.in-addr.arpa",)


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
    assert config == Config(ttl=0)


def test_load_config_single_zone_string(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "zones: cluster.local\n")).zones == ("cluster.local",)


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
    assert load_config(path).zones == (normalised,)


def test_config_then_flags(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "ttl: 30\npods: verified\n"))
    final = config.with_overrides(ttl=10, pods=None)
    assert (final.ttl, final.pods) == (10, "verified")


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
        ({"KDNS_REQUIRE_ALL": "1", "KDNS_SOURCE": "x", "KDNS_STUB_DOMAINS": "x"}, {}),
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
        ({"KDNS_TTL": "five"}, "$KDNS_TTL: 'five' is not a number"),
        ({"KDNS_AUTOPATH": "maybe"}, "$KDNS_AUTOPATH: 'maybe' is not true or false"),
    ],
)
def test_env_override_errors_name_the_variable(environ: dict[str, str], words: str) -> None:
    from kdns.config import env_overrides

    with pytest.raises(ConfigError) as error:
        env_overrides(environ)
    assert str(error.value) == words


def test_env_override_values_are_validated() -> None:
    from kdns.config import env_overrides

    with pytest.raises(ConfigError, match="ttl: 9999 is not a whole number"):
        Config().with_overrides(**env_overrides({"KDNS_TTL": "9999"}))

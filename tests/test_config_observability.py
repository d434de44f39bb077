"""The logging and metrics keys of the config file: logging.format, logging.query_log,
logging.consolidate, dns.metrics_coredns_names (and their flat aliases log_format, query_log,
log_consolidate, metrics_coredns_names) — defaults, the file, KDNS_* variables, and one-line
errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdns.config import Config, ConfigError, env_overrides, load_config

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "kdns.yaml"


def test_defaults_match_the_shipped_file() -> None:
    config = Config()
    assert (config.logging.format, config.logging.query_log) == ("text", False)
    assert (config.logging.consolidate, config.dns.metrics_coredns_names) == (10.0, False)
    shipped = yaml.safe_load(SHIPPED.read_text())
    for path in ("logging.format", "logging.query_log", "logging.consolidate"):
        section, key = path.split(".")
        assert shipped[section][key] == config.get(path), path
    assert shipped["dns"]["metrics_coredns_names"] is False
    assert load_config(str(SHIPPED)).logging.query_log is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("query_log: text\n", {"query_log": "text"}),
        ("query_log: json\nlog_format: json\n", {"query_log": "json", "log_format": "json"}),
        ("query_log: false\n", {"query_log": False}),
        ("query_log: 'off'\n", {"query_log": False}),
        ("log_consolidate: 0\n", {"log_consolidate": 0}),
        ("log_consolidate: 2.5\n", {"log_consolidate": 2.5}),
        ("metrics_coredns_names: true\n", {"metrics_coredns_names": True}),
        (
            "logging:\n  format: json\n  query_log: text\n",
            {"log_format": "json", "query_log": "text"},
        ),
    ],
)
def test_good_values(tmp_path: Path, text: str, expected: dict[str, object]) -> None:
    path = tmp_path / "kdns.yaml"
    path.write_text(text)
    config = load_config(str(path))
    for key, value in expected.items():
        assert config.get(key) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("log_format: xml\n", ":1: log_format: must be one of text, json (got 'xml')"),
        (
            "ttl: 5\nquery_log: yes-please\n",
            ":2: query_log: must be one of false, text, json (got 'yes-please')",
        ),
        ("query_log: true\n", ":1: query_log: must be one of false, text, json (got True)"),
        (
            "log_consolidate: -1\n",
            ":1: log_consolidate: must be a number of seconds in 0-3600 (got -1)",
        ),
        (
            "log_consolidate: soon\n",
            ":1: log_consolidate: must be a number of seconds in 0-3600 (got 'soon')",
        ),
        (
            "metrics_coredns_names: 1\n",
            ":1: metrics_coredns_names: must be true or false (got 1)",
        ),
        (
            "logging:\n  consolidate: 1\n  format: xml\n",
            ":3: logging.format: must be one of text, json (got 'xml')",
        ),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "kdns.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}{message}"


def test_environment_variables() -> None:
    overrides = env_overrides(
        {
            "KDNS_METRICS_COREDNS_NAMES": "true",
            "KDNS_QUERY_LOG": "json",
            "KDNS_LOG_FORMAT": "json",
            "KDNS_LOG_CONSOLIDATE": "1.5",
        }
    )
    config = Config().with_overrides(**overrides)
    assert (config.dns.metrics_coredns_names, config.logging.query_log) == (True, "json")
    assert (config.logging.format, config.logging.consolidate) == ("json", 1.5)
    quiet = Config().with_overrides(**env_overrides({"KDNS_LOGGING_QUERY_LOG": "false"}))
    assert quiet.logging.query_log is False
    with pytest.raises(ConfigError, match="KDNS_METRICS_COREDNS_NAMES"):
        env_overrides({"KDNS_METRICS_COREDNS_NAMES": "maybe"})

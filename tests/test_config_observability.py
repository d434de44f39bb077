"""The logging and metrics keys of the config file: log_format, query_log, log_consolidate,
metrics_coredns_names — defaults, the file, KDNS_* variables, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdns.config import Config, ConfigError, env_overrides, load_config

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "kdns.yaml"


def test_defaults_match_the_shipped_file() -> None:
    config = Config()
    assert (config.log_format, config.query_log) == ("text", False)
    assert (config.log_consolidate, config.metrics_coredns_names) == (10.0, False)
    shipped = yaml.safe_load(SHIPPED.read_text())
    for key in ("log_format", "query_log", "log_consolidate", "metrics_coredns_names"):
        assert shipped[key] == getattr(config, key), key
    assert load_config(str(SHIPPED)).query_log is False


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
    ],
)
def test_good_values(tmp_path: Path, text: str, expected: dict[str, object]) -> None:
    path = tmp_path / "kdns.yaml"
    path.write_text(text)
    config = load_config(str(path))
    for key, value in expected.items():
        assert getattr(config, key) == value


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
    assert (config.metrics_coredns_names, config.query_log) == (True, "json")
    assert (config.log_format, config.log_consolidate) == ("json", 1.5)
    assert Config().with_overrides(**env_overrides({"KDNS_QUERY_LOG": "false"})).query_log is False
    with pytest.raises(ConfigError, match="KDNS_METRICS_COREDNS_NAMES"):
        env_overrides({"KDNS_METRICS_COREDNS_NAMES": "maybe"})

"""The config file model: defaults, YAML loading, and validation that names the key at fault.

Contract:
- Every key has a default, so no file is needed (`Config()` is a working configuration).
- `load_config` returns a `Config` or raises `ConfigError` whose text is one line naming the
  file, the line (where YAML knows it), the key and what is allowed. Nothing half-applied.
- `Config.with_overrides` applies command-line flags on top of the file (flags win).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml

POD_MODES = ("insecure", "verified", "disabled")
DEFAULT_ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
_ZONE = re.compile(r"^(?!-)[a-z0-9-_]{1,63}(?<!-)(\.(?!-)[a-z0-9-_]{1,63}(?<!-))*$")


class ConfigError(ValueError):
    """A configuration that cannot be used; the text is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Config:
    # Zones kdns is authoritative for. Forward zones get the Service schema; reverse zones
    # (in-addr.arpa, ip6.arpa or narrower) get PTRs. The first forward zone is the primary one:
    # PTR targets use it, as CoreDNS does.
    zones: tuple[str, ...] = DEFAULT_ZONES
    ttl: int = 5  # CoreDNS's default; range 0-3600 as CoreDNS's `ttl` option
    pods: str = "insecure"  # the Kubernetes conformance tests need pod A records
    dns_addr: str = "0.0.0.0:53"
    manifests: tuple[str, ...] = ()
    # The live cluster, when no manifests are given: a kubeconfig file (else $KUBECONFIG, else
    # the in-cluster service account) and, optionally, one of its contexts.
    kubeconfig: str = ""
    context: str = ""
    # Probes and metrics, on the ports CoreDNS's manifests use.
    health_addr: str = "0.0.0.0:8080"
    ready_addr: str = "0.0.0.0:8181"
    metrics_addr: str = "0.0.0.0:9153"
    source: str = field(default="", compare=False)  # the file this came from, for messages

    @property
    def forward_zones(self) -> tuple[str, ...]:
        return tuple(z for z in self.zones if not is_reverse_zone(z))

    @property
    def reverse_zones(self) -> tuple[str, ...]:
        return tuple(z for z in self.zones if is_reverse_zone(z))

    def with_overrides(self, **overrides: Any) -> Config:
        given = {k: v for k, v in overrides.items() if v is not None}
        return validate(replace(self, **given), where="command line")


def is_reverse_zone(zone: str) -> bool:
    return zone in ("in-addr.arpa", "ip6.arpa") or zone.endswith((".in-addr.arpa", ".ip6.arpa"))


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `HOST` or `:PORT` → (host, port); raises ValueError."""
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number in 0-65535")
    return host, int(port)


def validate(config: Config, where: str) -> Config:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {message}")

    zones = []
    for zone in config.zones:
        if not isinstance(zone, str):
            raise fail("zones", f"{zone!r} is not a domain name")
        name = zone.strip().rstrip(".").lower()
        if not _ZONE.match(name):
            raise fail("zones", f"{zone!r} is not a domain name")
        if name in zones:
            raise fail("zones", f"{zone!r} is listed twice")
        zones.append(name)
    if not zones:
        raise fail("zones", "at least one zone is needed")
    if (
        isinstance(config.ttl, bool)
        or not isinstance(config.ttl, int)
        or not 0 <= config.ttl <= 3600
    ):
        raise fail("ttl", f"{config.ttl!r} is not a whole number of seconds in 0-3600")
    if config.pods not in POD_MODES:
        raise fail("pods", f"{config.pods!r} is not one of {', '.join(POD_MODES)}")
    for key in ("dns_addr", "health_addr", "ready_addr", "metrics_addr"):
        value = getattr(config, key)
        if not isinstance(value, str):
            raise fail(key, f"{value!r} is not HOST:PORT")
        try:
            parse_hostport(value)
        except ValueError as e:
            raise fail(key, f"{e} (expected HOST:PORT, e.g. 0.0.0.0:53 or [::]:53)") from None
    for key in ("kubeconfig", "context"):
        if not isinstance(getattr(config, key), str):
            raise fail(key, f"{getattr(config, key)!r} is not a string")
    return replace(config, zones=tuple(zones), manifests=tuple(config.manifests))


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        if "'\\t'" in problem:
            problem = "a tab character is used for indentation; YAML allows only spaces"
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    if data is None:
        return Config(source=path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config file must be a mapping of keys to values")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.value in lines:
                # PyYAML keeps the last of two equal keys; an operator means one of them.
                raise ConfigError(
                    f"{path}:{line}: {key_node.value}: given twice (first on line "
                    f"{lines[key_node.value]})"
                )
            lines[key_node.value] = line
    known = {f.name for f in fields(Config)} - {"source"}
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}:{lines.get(key, 1)}"
        if key not in known:
            raise ConfigError(
                f"{where}: {key}: unknown key (known keys: {', '.join(sorted(known))})"
            )
        if key in ("zones", "manifests"):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                raise ConfigError(f"{where}: {key}: expected a list")
            value = tuple(value)
        values[key] = value
    config = Config(source=path, **values)
    first = next(iter(values), None)
    try:
        return validate(config, where=path)
    except ConfigError as e:
        # Put the line of the key at fault into the message.
        text_e = str(e)
        key = text_e[len(path) + 2 :].split(":", 1)[0]
        line = lines.get(key, lines.get(first, 1) if first else 1)
        raise ConfigError(f"{path}:{line}:{text_e[len(path) + 1 :]}") from None

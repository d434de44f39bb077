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
PROXY_MODES = ("none", "userspace")  # what `kdns serve` relays itself (README: userspace proxy)
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
    # Forwarding: names outside the zones go to `upstreams` (IP[:PORT], up to 15); None means
    # the nameservers of `resolv_conf`, and an empty list means no forwarding (REFUSED).
    upstreams: tuple[str, ...] | None = None
    resolv_conf: str = "/etc/resolv.conf"
    stub_domains: tuple[tuple[str, tuple[str, ...]], ...] = ()  # domain → its own servers
    kube_dns_configmap: str = ""  # a kube-dns ConfigMap: stubDomains, upstreamNameservers
    max_concurrent: int = 1000
    forward_timeout: float = 2.0
    # The upstream cache (cluster answers are never cached there).
    cache_success: int = 9984
    cache_denial: int = 9984
    cache_max_ttl: int = 30
    cache_max_denial_ttl: int = 30
    serve_stale: float = 0.0  # seconds past expiry an answer may be served when upstreams fail
    autopath: bool = False  # answer a pod's search path server-side (needs pods watched)
    # Observability (kdns/logs.py, kdns/dns/querylog.py, kdns/metrics.py).
    log_format: str = "text"  # text | json
    query_log: bool | str = False  # false | text (CoreDNS's log line) | json
    log_consolidate: float = 10.0  # seconds per summary of repeated errors; 0 = log every one
    metrics_coredns_names: bool = False  # also export every metric under its coredns_ name
    # userspace: relay Services from loopback VIPs (no privileges) and answer those VIPs in DNS.
    proxy: str = "none"
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
    for key in ("kubeconfig", "context", "resolv_conf", "kube_dns_configmap"):
        if not isinstance(getattr(config, key), str):
            raise fail(key, f"{getattr(config, key)!r} is not a string")
    if config.upstreams is not None:
        if len(config.upstreams) > 15:
            raise fail("upstreams", "at most 15 upstreams (as CoreDNS's forward)")
        for value in config.upstreams:
            _check_server(fail, "upstreams", value)
    stubs = []
    for domain, servers in config.stub_domains:
        name = str(domain).strip().rstrip(".").lower()
        if not _ZONE.match(name):
            raise fail("stub_domains", f"{domain!r} is not a domain name")
        if not servers:
            raise fail("stub_domains", f"{domain!r} needs at least one server")
        for value in servers:
            _check_server(fail, f"stub_domains.{name}", value)
        stubs.append((name, tuple(str(v) for v in servers)))
    for key, low, high in (
        ("max_concurrent", 1, 1_000_000),
        ("cache_success", 0, 10_000_000),
        ("cache_denial", 0, 10_000_000),
        ("cache_max_ttl", 0, 86400),
        ("cache_max_denial_ttl", 0, 86400),
    ):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(key, f"{value!r} is not a whole number in {low}-{high}")
    for key, low, high in (("forward_timeout", 0.05, 60.0), ("serve_stale", 0.0, 604800.0)):
        value = getattr(config, key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise fail(key, f"{value!r} is not a number of seconds in {low:g}-{high:g}")
    if not isinstance(config.autopath, bool):
        raise fail("autopath", f"{config.autopath!r} is not true or false")
    query_log = _observability(config, fail)
    if config.proxy not in PROXY_MODES:
        raise fail("proxy", f"{config.proxy!r} is not one of {', '.join(PROXY_MODES)}")
    return replace(
        config,
        query_log=query_log,
        zones=tuple(zones),
        manifests=tuple(config.manifests),
        upstreams=None if config.upstreams is None else tuple(str(v) for v in config.upstreams),
        stub_domains=tuple(stubs),
    )


def _observability(config: Config, fail: Any) -> bool | str:
    """Check the logging and metrics keys; returns `query_log` normalised (False, text, json)."""
    if config.log_format not in ("text", "json"):
        raise fail("log_format", f"{config.log_format!r} is not one of text, json")
    query_log = config.query_log
    if isinstance(query_log, str) and query_log.lower() in ("false", "off", "no", "0", ""):
        query_log = False
    if query_log is not False and query_log not in ("text", "json"):
        raise fail("query_log", f"{config.query_log!r} is not one of false, text, json")
    value = config.log_consolidate
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise fail("log_consolidate", f"{value!r} is not a number of seconds in 0-3600")
    if not isinstance(config.metrics_coredns_names, bool):
        raise fail(
            "metrics_coredns_names", f"{config.metrics_coredns_names!r} is not true or false"
        )
    return query_log


def _check_server(fail: Any, key: str, value: Any) -> None:
    try:
        parse_hostport(str(value))
    except ValueError as e:
        raise fail(key, f"{value!r}: {e} (expected IP or IP:PORT)") from None


# --- KDNS_* environment variables ----------------------------------------------------------------

_LISTS = ("zones", "manifests", "upstreams")


def env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """`KDNS_TTL=30`, `KDNS_UPSTREAMS="1.1.1.1 8.8.8.8"`: one key each, for containers whose
    config file is baked in. Variables that name no key are ignored; a bad value raises
    ConfigError naming the variable."""
    types = {f.name: f.type for f in fields(Config)}
    out: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith("KDNS_"):
            continue
        key = name[5:].lower()
        if key not in types or key in ("source", "stub_domains"):
            # Not ours: Kubernetes injects KDNS_SERVICE_HOST, KDNS_PORT, … into every pod of a
            # namespace holding a Service named "kdns" (service links), and tools set their own.
            continue
        if key in _LISTS:
            out[key] = tuple(text.replace(",", " ").split())
        elif str(types[key]) == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"${name}: {text!r} is not true or false")
            out[key] = text.lower() in ("true", "1", "yes")
        elif "int" in str(types[key]) or "float" in str(types[key]):
            try:
                out[key] = int(text) if "int" in str(types[key]) else float(text)
            except ValueError:
                raise ConfigError(f"${name}: {text!r} is not a number") from None
        else:
            out[key] = text
    return out


# --- kube-dns's ConfigMap ------------------------------------------------------------------------


def load_kube_dns_configmap(
    path: str,
) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...] | None]:
    """(stub domains, upstream nameservers or None) from a kube-dns ConfigMap manifest.

    kube-dns keeps both as JSON strings in `data` (kubernetes/dns pkg/dns/config):
    `stubDomains: '{"acme.local": ["1.2.3.4"]}'`, `upstreamNameservers: '["8.8.8.8"]'`."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the kube-dns ConfigMap: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {e}") from None
    if not isinstance(document, dict) or document.get("kind") != "ConfigMap":
        raise ConfigError(f"{path}: kind: expected a ConfigMap")
    data = document.get("data") or {}
    stubs: list[tuple[str, tuple[str, ...]]] = []
    upstreams: tuple[str, ...] | None = None
    for field_name in ("stubDomains", "upstreamNameservers"):
        raw = data.get(field_name)
        if raw is None:
            continue
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as e:
            raise ConfigError(f"{path}: data.{field_name}: not valid JSON: {e}") from None
        if field_name == "stubDomains":
            if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
                raise ConfigError(f"{path}: data.stubDomains: expected {{domain: [IP, ...]}}")
            stubs.extend((str(k), tuple(str(x) for x in v)) for k, v in value.items())
        else:
            if not isinstance(value, list):
                raise ConfigError(f"{path}: data.upstreamNameservers: expected [IP, ...]")
            upstreams = tuple(str(x) for x in value)
    return tuple(stubs), upstreams


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
        if key == "upstreams" and value is None:
            pass  # null: the nameservers of resolv_conf
        elif key in _LISTS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                raise ConfigError(f"{where}: {key}: expected a list")
            value = tuple(value)
        if key == "stub_domains":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: stub_domains: expected {{domain: [IP[:PORT], ...]}}")
            value = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in value.items())
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

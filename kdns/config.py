"""The config file model: defaults, YAML loading, and validation that names the key at fault.

Contract:
- Every key has a default, so no file is needed (`Config()` is a working configuration).
- `load_config` returns a `Config` or raises `ConfigError` whose text is one line naming the
  file, the line (where YAML knows it), the key and what is allowed. Nothing half-applied.
- Every key is checked for its type and its range or allowed values; a message names the key,
  what is allowed and what was given: `kdns.yaml:3: pods: must be one of insecure, verified,
  disabled (got 'maybe')`.
- `apply_env` applies `KDNS_<KEY>` environment variables on top of the file, one key each; a bad
  value names the variable. `Config.with_overrides` applies command-line flags on top of both.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml

POD_MODES = ("insecure", "verified", "disabled")
LOG_FORMATS = ("text", "json")  # log_format, and query_log when on
PROXY_COMMAND_MODES = ("iptables", "nftables", "ipvs", "userspace")  # `kdns proxy --mode`
PROXY_MODES = ("none", "userspace")  # what `kdns serve` relays itself (README: userspace proxy)
LOADBALANCE = ("round_robin", "off")  # CoreDNS's `loadbalance` policy, or no rotation
DEFAULT_ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
_ZONE = re.compile(r"^(?!-)[a-z0-9-_]{1,63}(?<!-)(\.(?!-)[a-z0-9-_]{1,63}(?<!-))*$")


class ConfigError(ValueError):
    """A configuration that cannot be used; the text is one line for the operator.

    `key` is the config key at fault, when there is one (the file loader adds its line)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


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
    # round_robin: rotate A, AAAA and SRV RRsets per answer (CoreDNS's `loadbalance`); off.
    loadbalance: str = "round_robin"
    # Observability (kdns/logs.py, kdns/dns/querylog.py, kdns/metrics.py).
    log_format: str = "text"  # text | json
    query_log: bool | str = False  # false | text (CoreDNS's log line) | json
    log_consolidate: float = 10.0  # seconds per summary of repeated errors; 0 = log every one
    metrics_coredns_names: bool = False  # also export the CoreDNS ones under coredns_ names
    # userspace: relay Services from loopback VIPs (no privileges) and answer those VIPs in DNS.
    proxy: str = "none"
    # `kdns proxy`, a minimal kube-proxy (README "Service proxy"); its flags override these.
    proxy_mode: str = "iptables"
    node_name: str = ""  # "" = $NODE_NAME (the downward API), else the host name
    cluster_cidrs: tuple[str, ...] = ()  # pod CIDRs, one per family: others are masqueraded
    nodeport_addresses: tuple[str, ...] = ()  # CIDRs; () = NodePorts on every local address
    min_sync_period: float = 1.0  # at most one sync per period (kube-proxy's default)
    sync_period: float = 30.0  # a sync and a canary check at least this often
    masquerade_all: bool = False
    ipvs_scheduler: str = "rr"
    healthz_addr: str = "0.0.0.0:10256"  # kube-proxy's /healthz and /livez
    proxy_metrics_addr: str = "127.0.0.1:10249"  # kube-proxy's metrics port
    # Lifecycle. On SIGTERM /ready turns 503 at once and DNS keeps answering for `lameduck`
    # seconds, so the EndpointSlice drops this pod before it stops (CoreDNS's `health { lameduck
    # 5s }`, the kubernetes manifests' value).
    lameduck: float = 5.0
    # Seconds between checks of the config file (and the kube-dns ConfigMap it names) for a
    # change; 0 turns the check off (SIGHUP and SIGUSR1 still reload).
    reload_interval: float = 2.0
    source: str = field(default="", compare=False)  # the file this came from, for messages

    @property
    def forward_zones(self) -> tuple[str, ...]:
        return tuple(z for z in self.zones if not is_reverse_zone(z))

    @property
    def reverse_zones(self) -> tuple[str, ...]:
        return tuple(z for z in self.zones if is_reverse_zone(z))

    def with_overrides(self, where: str = "command line", **overrides: Any) -> Config:
        given = {k: v for k, v in overrides.items() if v is not None}
        return validate(replace(self, **given), where=where)


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
    """`config` normalised (zones lower-cased, lists as tuples), or ConfigError naming the key."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {message}", key=key)

    def whole(key: str, low: int, high: int, unit: str = "") -> None:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(key, f"must be a whole number{unit} in {low}-{high} (got {value!r})")

    def seconds(key: str, low: float, high: float) -> None:
        value = getattr(config, key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise fail(key, f"must be a number of seconds in {low:g}-{high:g} (got {value!r})")

    def listed(key: str, what: str) -> tuple[Any, ...]:
        value = getattr(config, key)
        if isinstance(value, str) or not isinstance(value, tuple | list):
            raise fail(key, f"must be a list of {what} (got {value!r})")
        return tuple(value)

    zones: list[str] = []
    for zone in listed("zones", "domain names"):
        name = zone.strip().rstrip(".").lower() if isinstance(zone, str) else ""
        if not _ZONE.match(name):
            raise fail("zones", f"must be a list of domain names (got {zone!r})")
        if name in zones:
            raise fail("zones", f"{zone!r} is listed twice")
        zones.append(name)
    if not zones:
        raise fail("zones", "at least one zone is needed (got [])")
    whole("ttl", 0, 3600, " of seconds")  # CoreDNS's `ttl` range
    if config.pods not in POD_MODES:
        raise fail("pods", f"must be one of {', '.join(POD_MODES)} (got {config.pods!r})")
    for key in (
        "dns_addr",
        "health_addr",
        "ready_addr",
        "metrics_addr",
        "healthz_addr",
        "proxy_metrics_addr",
    ):
        value = getattr(config, key)
        if not isinstance(value, str):
            raise fail(key, f"must be HOST:PORT, e.g. 0.0.0.0:53 or [::]:53 (got {value!r})")
        try:
            parse_hostport(value)
        except ValueError as e:
            raise fail(key, f"{e} (expected HOST:PORT, e.g. 0.0.0.0:53 or [::]:53)") from None
    for value in listed("manifests", "file or folder paths"):
        if not isinstance(value, str) or not value:
            raise fail("manifests", f"must be a list of file or folder paths (got {value!r})")
    for key in ("kubeconfig", "context", "resolv_conf", "kube_dns_configmap", "node_name"):
        if not isinstance(getattr(config, key), str):
            raise fail(key, f"must be a string (got {getattr(config, key)!r})")
    if config.upstreams is not None:
        upstreams = listed("upstreams", "IP[:PORT] (or null for resolv_conf's)")
        if len(upstreams) > 15:
            raise fail(
                "upstreams", f"at most 15 upstreams, as CoreDNS's forward (got {len(upstreams)})"
            )
        for value in upstreams:
            _check_server(fail, "upstreams", value)
    stubs = []
    for entry in listed("stub_domains", "domain: [IP[:PORT], ...]"):
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise fail("stub_domains", f"must be a mapping of domain to servers (got {entry!r})")
        domain, servers = entry
        name = domain.strip().rstrip(".").lower() if isinstance(domain, str) else ""
        if not _ZONE.match(name):
            raise fail("stub_domains", f"must map domain names to servers (got {domain!r})")
        if isinstance(servers, str) or not isinstance(servers, tuple | list) or not servers:
            raise fail(f"stub_domains.{name}", f"must be a list of IP[:PORT] (got {servers!r})")
        for value in servers:
            _check_server(fail, f"stub_domains.{name}", value)
        stubs.append((name, tuple(servers)))
    whole("max_concurrent", 1, 1_000_000)
    whole("cache_success", 0, 10_000_000, " of entries")
    whole("cache_denial", 0, 10_000_000, " of entries")
    whole("cache_max_ttl", 0, 86400, " of seconds")
    whole("cache_max_denial_ttl", 0, 86400, " of seconds")
    seconds("forward_timeout", 0.05, 60.0)
    seconds("serve_stale", 0.0, 604800.0)  # RFC 8767 §5 suggests 1-3 days; a week at most
    # Beyond terminationGracePeriodSeconds (30 s by default) the kubelet kills the pod anyway.
    seconds("lameduck", 0.0, 3600.0)
    seconds("reload_interval", 0.0, 86400.0)
    if not isinstance(config.autopath, bool):
        raise fail("autopath", f"must be true or false (got {config.autopath!r})")
    if config.loadbalance not in LOADBALANCE:
        raise fail(
            "loadbalance",
            f"must be one of {', '.join(LOADBALANCE)} (got {config.loadbalance!r})",
        )
    if config.proxy not in PROXY_MODES:
        raise fail("proxy", f"must be one of {', '.join(PROXY_MODES)} (got {config.proxy!r})")
    # The proxy.
    if config.proxy_mode not in PROXY_COMMAND_MODES:
        raise fail(
            "proxy_mode",
            f"must be one of {', '.join(PROXY_COMMAND_MODES)} (got {config.proxy_mode!r})",
        )
    for key in ("cluster_cidrs", "nodeport_addresses"):
        families: list[int] = []
        for value in listed(key, "CIDRs"):
            try:
                families.append(ipaddress.ip_network(value, strict=False).version)
            except (TypeError, ValueError):
                raise fail(
                    key, f"must be a list of CIDRs, e.g. 10.244.0.0/16 (got {value!r})"
                ) from None
        if key == "cluster_cidrs" and len(families) != len(set(families)):
            raise fail(key, f"at most one CIDR per IP family (got {list(config.cluster_cidrs)!r})")
    seconds("min_sync_period", 0.0, 3600.0)
    seconds("sync_period", 0.1, 86400.0)
    if not isinstance(config.masquerade_all, bool):
        raise fail("masquerade_all", f"must be true or false (got {config.masquerade_all!r})")
    if not isinstance(config.ipvs_scheduler, str) or not config.ipvs_scheduler.isalnum():
        raise fail(
            "ipvs_scheduler",
            f"must be an IPVS scheduler name, e.g. rr (got {config.ipvs_scheduler!r})",
        )
    # Observability.
    if config.log_format not in LOG_FORMATS:
        raise fail("log_format", f"must be one of text, json (got {config.log_format!r})")
    query_log = config.query_log
    if isinstance(query_log, str) and query_log.strip().lower() in (*_FALSE, ""):
        query_log = False  # KDNS_QUERY_LOG=off, or `query_log: "false"` quoted
    if query_log is not False and query_log not in LOG_FORMATS:
        raise fail("query_log", f"must be one of false, text, json (got {config.query_log!r})")
    seconds("log_consolidate", 0.0, 3600.0)
    if not isinstance(config.metrics_coredns_names, bool):
        raise fail(
            "metrics_coredns_names",
            f"must be true or false (got {config.metrics_coredns_names!r})",
        )
    return replace(
        config,
        query_log=query_log,
        zones=tuple(zones),
        manifests=tuple(config.manifests),
        cluster_cidrs=tuple(config.cluster_cidrs),
        nodeport_addresses=tuple(config.nodeport_addresses),
        upstreams=None if config.upstreams is None else tuple(config.upstreams),
        stub_domains=tuple(stubs),
    )


def _check_server(fail: Any, key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise fail(key, f"must be IP or IP:PORT (got {value!r})")
    try:
        parse_hostport(value)
    except ValueError as e:
        raise fail(key, f"{value!r}: {e} (expected IP or IP:PORT)") from None


# --- KDNS_* environment variables ----------------------------------------------------------------

_LISTS = ("zones", "manifests", "upstreams", "cluster_cidrs", "nodeport_addresses")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _env_keys() -> dict[str, str]:
    """Each key an environment variable may set, with the kind of text it takes."""
    kinds = {}
    for f in fields(Config):
        if f.name == "source":
            continue
        hint = str(f.type)
        if f.name in _LISTS:
            kinds[f.name] = "list"
        elif hint == "bool":
            kinds[f.name] = "bool"
        elif hint == "int":
            kinds[f.name] = "int"
        elif hint == "float":
            kinds[f.name] = "float"
        elif hint == "str":
            kinds[f.name] = "str"
        else:
            kinds[f.name] = "yaml"  # structured keys (stub_domains, …): the file's syntax
    return kinds


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`KDNS_TTL=30`, `KDNS_UPSTREAMS="1.1.1.1 8.8.8.8"`, `KDNS_STUB_DOMAINS="{acme.local:
    [10.0.0.10]}"`: one key each, for containers whose config file is baked in. Lists are
    separated by spaces or commas; structured keys take the file's YAML syntax. Variables that
    name no key are ignored; a value that cannot be read raises ConfigError naming the
    variable (its range is checked by `apply_env`)."""
    kinds = _env_keys()
    out: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith("KDNS_"):
            continue
        key = name[5:].lower()
        kind = kinds.get(key)
        if kind is None:
            # Not ours: Kubernetes injects KDNS_SERVICE_HOST, KDNS_PORT, … into every pod of a
            # namespace holding a Service named "kdns" (service links), and tools set their own.
            continue
        if kind == "list":
            out[key] = tuple(text.replace(",", " ").split())
        elif kind == "bool":
            if text.strip().lower() not in _TRUE + _FALSE:
                raise ConfigError(f"${name}: must be true or false (got {text!r})", key=key)
            out[key] = text.strip().lower() in _TRUE
        elif kind in ("int", "float"):
            try:
                out[key] = int(text) if kind == "int" else float(text)
            except ValueError:
                raise ConfigError(
                    f"${name}: must be a {'whole ' if kind == 'int' else ''}number (got {text!r})",
                    key=key,
                ) from None
        elif kind == "str":
            out[key] = text
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as e:
                problem = getattr(e, "problem", None) or "not valid YAML"
                raise ConfigError(f"${name}: YAML syntax error: {problem}", key=key) from None
            out[key] = _from_yaml(key, value, f"${name}")
    return out


def apply_env(config: Config, environ: Mapping[str, str]) -> Config:
    """`config` with the `KDNS_*` variables of `environ` applied, each validated on its own so
    a bad value names its variable: `$KDNS_TTL: ttl: must be … (got 9999)`."""
    names = {name[5:].lower(): name for name in environ if name.startswith("KDNS_")}
    for key, value in env_overrides(environ).items():
        config = validate(replace(config, **{key: value}), where=f"${names[key]}")
    return config


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
        values[key] = _from_yaml(key, value, where)
    try:
        return validate(Config(source=path, **values), where=path)
    except ConfigError as e:
        # Put the line of the key at fault into the message: "path: key: …" → "path:N: key: …".
        line = lines.get((e.key or "").split(".")[0], 1)
        raise ConfigError(f"{path}:{line}{str(e)[len(path) :]}", key=e.key) from None


def key_line(path: str, key: str) -> int | None:
    """The line of the top-level `key` in the YAML file at `path`, or None (for messages about
    a key whose value was valid on its own, such as a source change refused on reload)."""
    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.compose(f.read(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if key_node.value == key:
                return int(key_node.start_mark.line) + 1
    return None


def _from_yaml(key: str, value: Any, where: str) -> Any:
    """A value as YAML gives it → the shape `Config` holds (lists as tuples, mappings as pairs);
    anything else is left for `validate` to reject with the allowed values."""
    if key == "upstreams" and value is None:
        return None  # null: the nameservers of resolv_conf
    if key in _LISTS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list (got {value!r})", key=key)
        return tuple(value)
    if key == "stub_domains":
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: stub_domains: expected {{domain: [IP[:PORT], ...]}} (got {value!r})",
                key=key,
            )
        return tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in value.items())
    return value

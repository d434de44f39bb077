"""The config model: sections of keys with defaults, YAML loading, KDNS_* variables, and
validation that names the key at fault.

Contract:
- `Config` holds one frozen section per concern: `dns` (what `kdns serve` answers and where it
  listens), `forward` (upstreams), `cache` (the upstream cache), `hosts` (CoreDNS's hosts plugin),
  `kubernetes` (the source of cluster state), `proxy` (`kdns proxy`), `node` (this node, for
  the proxy) and `logging`. Every key has a default, so no file is needed (`Config()` is a
  working configuration).
- A key's name is its path, `section.field` (`dns.ttl`); command-line flags have that path as
  their argparse destination, so any front end (flags, a Corefile reader) sets keys by path. The
  flat names of earlier files (`ttl`, `dns_addr`, `proxy_mode`, ...) stay valid as aliases: each
  names exactly one path (`ALIASES`). A file may mix both spellings; one key given twice is an
  error.
- `load_config` returns a `Config` or raises `ConfigError` whose text is one line naming the
  file, the line, the key as the file spells it, what is allowed and what was given:
  `kdns.yaml:3: pods: must be one of insecure, verified, disabled (got 'maybe')`. Nothing is
  half-applied.
- `apply_env` applies `KDNS_<KEY>` variables (`KDNS_TTL`, or `KDNS_DNS_TTL` for `dns.ttl`) on
  top of the file, one key each; a bad value names the variable. `Config.with_overrides`
  applies keys given by path or alias (the flags) on top of both.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml
from dnslib import QTYPE

from kdns import labelselector

POD_MODES = ("insecure", "verified", "disabled")
LOG_FORMATS = ("text", "json")  # logging.format, and logging.query_log when on
PROXY_COMMAND_MODES = ("iptables", "nftables", "ipvs", "userspace")  # `kdns proxy --mode`
PROXY_MODES = ("none", "userspace")  # what `kdns serve` relays itself (README: userspace proxy)
FORWARD_POLICIES = ("random", "round_robin", "sequential")  # CoreDNS's forward `policy`
LOADBALANCE_MODES = ("round_robin", "off")  # CoreDNS's loadbalance plugin: rotate A/AAAA or not
DEFAULT_ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
_ZONE = re.compile(r"^(?!-)[a-z0-9-_]{1,63}(?<!-)(\.(?!-)[a-z0-9-_]{1,63}(?<!-))*$")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # an RFC 1123 label
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A configuration that cannot be used; the text is one line for the operator.

    `key` is the key at fault as it was spelled (`ttl` or `dns.ttl`), when there is one;
    `problem` is the text after the key (what is allowed, what was given)."""

    def __init__(self, message: str, key: str | None = None, problem: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.problem = problem or message


class Invalid(ValueError):
    """A value a key cannot take. `subkey` narrows the key (`.acme.local` of a stub domain)."""

    def __init__(self, message: str, subkey: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.subkey = subkey


# --- checks: a value as given → the value Config holds, or Invalid --------------------------------

Check = Callable[[Any], Any]


def _whole(low: int, high: int, unit: str = "") -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Invalid(f"must be a whole number{unit} in {low}-{high} (got {value!r})")
        return value

    return check


def _seconds(low: float, high: float) -> Check:
    def check(value: Any) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            raise Invalid(f"must be a number of seconds in {low:g}-{high:g} (got {value!r})")
        return value

    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> Any:
        if value not in choices:
            raise Invalid(f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false (got {value!r})")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string (got {value!r})")
    return value


def _hostport(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be HOST:PORT, e.g. 0.0.0.0:53 or [::]:53 (got {value!r})")
    try:
        parse_hostport(value)
    except ValueError as e:
        raise Invalid(f"{e} (expected HOST:PORT, e.g. 0.0.0.0:53 or [::]:53)") from None
    return value


def _listed(value: Any, what: str) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, tuple | list):
        raise Invalid(f"must be a list of {what} (got {value!r})")
    return tuple(value)


def _zones(value: Any) -> tuple[str, ...]:
    zones: list[str] = []
    for zone in _listed(value, "domain names"):
        name = zone.strip().rstrip(".").lower() if isinstance(zone, str) else ""
        if not _ZONE.match(name):
            raise Invalid(f"must be a list of domain names (got {zone!r})")
        if name in zones:
            raise Invalid(f"{zone!r} is listed twice")
        zones.append(name)
    if not zones:
        raise Invalid("at least one zone is needed (got [])")
    return tuple(zones)


def _namespaces(value: Any) -> tuple[str, ...]:
    names = _listed(value, "namespace names")
    for name in names:
        if not isinstance(name, str) or not _NAMESPACE.fullmatch(name):
            raise Invalid(f"must be a list of namespace names (got {name!r})")
    return tuple(dict.fromkeys(names))


def _label_selector(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a label selector such as app=web,tier in (a,b) (got {value!r})")
    try:
        labelselector.parse(value)
    except labelselector.SelectorError as e:
        raise Invalid(f"not a label selector: {e}") from None
    return value


def _paths(value: Any) -> tuple[str, ...]:
    paths = _listed(value, "file or folder paths")
    for path in paths:
        if not isinstance(path, str) or not path:
            raise Invalid(f"must be a list of file or folder paths (got {path!r})")
    return paths


def _server(value: Any, subkey: str = "") -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be IP or IP:PORT (got {value!r})", subkey)
    try:
        # tls://: DNS over TLS (RFC 7858), as CoreDNS's forward spells it.
        parse_hostport(value.removeprefix("tls://").removeprefix("dns://"))
    except ValueError as e:
        raise Invalid(f"{value!r}: {e} (expected IP or IP:PORT)", subkey) from None
    return value


def _upstreams(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None  # the nameservers of forward.resolv_conf
    servers = _listed(value, "IP[:PORT] (or null for resolv_conf's)")
    if len(servers) > 15:
        raise Invalid(f"at most 15 upstreams, as CoreDNS's forward (got {len(servers)})")
    return tuple(_server(s) for s in servers)


def _stub_domains(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    stubs = []
    for entry in _listed(value, "domain: [IP[:PORT], ...]"):
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise Invalid(f"must be a mapping of domain to servers (got {entry!r})")
        domain, servers = entry
        name = domain.strip().rstrip(".").lower() if isinstance(domain, str) else ""
        if not _ZONE.match(name):
            raise Invalid(f"must map domain names to servers (got {domain!r})")
        if isinstance(servers, str) or not isinstance(servers, tuple | list) or not servers:
            raise Invalid(f"must be a list of IP[:PORT] (got {servers!r})", f".{name}")
        stubs.append((name, tuple(_server(s, f".{name}") for s in servers)))
    return tuple(stubs)


def _cidrs(one_per_family: bool) -> Check:
    def check(value: Any) -> tuple[str, ...]:
        cidrs = _listed(value, "CIDRs")
        families = []
        for cidr in cidrs:
            try:
                families.append(ipaddress.ip_network(cidr, strict=False).version)
            except (TypeError, ValueError):
                raise Invalid(
                    f"{cidr!r} is not a CIDR (expected a list of CIDRs, e.g. 10.244.0.0/16)"
                ) from None
        if one_per_family and len(families) != len(set(families)):
            raise Invalid(f"at most one CIDR per IP family (got {list(cidrs)!r})")
        return cidrs

    return check


def _addresses(value: Any) -> tuple[str, ...]:
    addresses = _listed(value, "IP addresses")
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except (TypeError, ValueError):
            raise Invalid(
                f"{address!r} is not an IP address (expected e.g. [169.254.20.10])"
            ) from None
    return addresses


def _scheduler(value: Any) -> str:
    if not isinstance(value, str) or not value.isalnum():
        raise Invalid(f"must be an IPVS scheduler name, e.g. rr (got {value!r})")
    return value


def _query_log(value: Any) -> bool | str:
    if isinstance(value, str) and value.strip().lower() in (*_FALSE, ""):
        return False  # KDNS_QUERY_LOG=off, or `query_log: "false"` quoted
    if value is not False and value not in LOG_FORMATS:
        raise Invalid(f"must be one of false, text, json (got {value!r})")
    return value


# --- plugin rules: hosts, template, rewrite (CoreDNS's plugins of those names) -----------------

RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
REWRITE_MATCHES = ("exact", "prefix", "suffix", "substring", "regex")
REWRITE_ANSWERS = ("", "auto", "name")
# What a template's answer lines may use of CoreDNS's Go template data (plugin/template README).
TEMPLATE_FIELD = re.compile(
    r"\{\{\s*(\.Name|\.Zone|\.Class|\.Type|index \.Match \d+|\.Group\.\w+)\s*\}\}"
)
_RR_TYPE = re.compile(r"^[A-Z][A-Z0-9]*$")


def _plugin_zones(allow_empty: bool) -> Check:
    """Zones a plugin answers: domain names, "." for every name."""

    def check(value: Any) -> tuple[str, ...]:
        zones: list[str] = []
        for zone in _listed(value, "domain names (. for every name)"):
            name = zone.strip().lower() if isinstance(zone, str) else ""
            name = name if name == "." else name.rstrip(".")
            if name != "." and not _ZONE.match(name):
                raise Invalid(f"must be a list of domain names, . for every name (got {zone!r})")
            if name not in zones:
                zones.append(name)
        if not zones and not allow_empty:
            raise Invalid("at least one zone is needed (. for every name)")
        return tuple(zones)

    return check


def _host_entries(value: Any) -> tuple[str, ...]:
    entries = _listed(value, "hosts-file lines (IP NAME...)")
    for entry in entries:
        parts = entry.split() if isinstance(entry, str) else []
        try:
            ipaddress.ip_address(parts[0].split("%")[0] if parts else "")  # fe80::1%eth0 too
        except ValueError:
            raise Invalid(f"must be hosts-file lines, IP NAME... (got {entry!r})") from None
        if len(parts) < 2:
            raise Invalid(f"{entry!r}: a hosts line names at least one host after its IP")
    return entries


def _regex(text: Any, subkey: str) -> str:
    if not isinstance(text, str) or not text:
        raise Invalid(f"must be a regular expression (got {text!r})", subkey)
    try:
        re.compile(text)
    except re.error as e:
        raise Invalid(f"{text!r} is not a regular expression: {e}", subkey) from None
    return text


def _strings(value: Any, subkey: str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"must be a list of {what} (got {value!r})", subkey)
    return tuple(value)


def _text(value: Any, subkey: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string (got {value!r})", subkey)
    return value


def _fields(entry: Any, allowed: tuple[str, ...], subkey: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise Invalid(f"must be a mapping with keys {', '.join(allowed)} (got {entry!r})", subkey)
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise Invalid(f"unknown key {unknown[0]!r} (known: {', '.join(allowed)})", subkey)
    return entry


@dataclass(frozen=True, slots=True)
class TemplateRule:
    """One `template CLASS TYPE [ZONES]` of CoreDNS: for questions of that class and type in
    `zones` whose name matches one of `match`, the answer is `rcode` with the zone-file lines
    `answer`, `authority`, `additional` (`{{ .Name }}`, `{{ index .Match 1 }}`... filled in)."""

    qclass: str = "ANY"
    qtype: str = "ANY"
    zones: tuple[str, ...] = (".",)
    match: tuple[str, ...] = (".*",)
    answer: tuple[str, ...] = ()
    authority: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    rcode: str = "NOERROR"
    fallthrough: tuple[str, ...] = ()  # where a regex miss goes on ("." = everywhere)
    where: str = ""  # the Corefile line it came from, for `kdns explain`

    def to_yaml(self) -> dict[str, Any]:
        return {
            "class": self.qclass,
            "type": self.qtype,
            "zones": list(self.zones),
            "match": list(self.match),
            "answer": list(self.answer),
            "authority": list(self.authority),
            "additional": list(self.additional),
            "rcode": self.rcode,
            "fallthrough": list(self.fallthrough),
            "where": self.where,
        }


TEMPLATE_KEYS = tuple(TemplateRule().to_yaml())


def _template_lines(value: Any, subkey: str) -> tuple[str, ...]:
    lines = _strings(value, subkey, "zone-file lines")
    for line in lines:
        for expression in re.findall(r"\{\{.*?\}\}", line):
            if not TEMPLATE_FIELD.fullmatch(expression):
                raise Invalid(
                    f"{expression} is not supported (use .Name, .Zone, .Class, .Type, "
                    "index .Match N or .Group.NAME)",
                    subkey,
                )
    return lines


def _rules(value: Any, what: str, read: Callable[[Any, str], Any], kind: type) -> tuple[Any, ...]:
    """A list of rules, each read by `read`; a bad one is named by its place: `rule 2, rcode`."""
    rules = []
    for i, entry in enumerate(_listed(value or (), what)):
        if isinstance(entry, kind):
            rules.append(entry)
            continue
        try:
            rules.append(read(entry, ""))
        except Invalid as e:
            place = f"rule {i + 1}" + (f", {e.subkey.lstrip('.')}" if e.subkey else "")
            raise Invalid(f"{place}: {e.message}") from None
    return tuple(rules)


def _templates(value: Any) -> tuple[TemplateRule, ...]:
    return _rules(value, "template rules", _template, TemplateRule)


def _zones_of(given: dict[str, Any], key: str, default: list[str], at: str) -> tuple[str, ...]:
    try:
        return _plugin_zones(key == "fallthrough")(given.get(key, default))
    except Invalid as e:
        raise Invalid(e.message, f"{at}.{key}") from None


def _template(entry: Any, at: str) -> TemplateRule:
    given = _fields(entry, TEMPLATE_KEYS, at)
    qclass = str(given.get("class", "ANY")).upper()
    if qclass not in ("IN", "ANY"):
        raise Invalid(f"must be IN or ANY (got {qclass!r})", f"{at}.class")
    qtype = str(given.get("type", "ANY")).upper()
    if not _RR_TYPE.match(qtype) or (qtype != "ANY" and qtype not in QTYPE.reverse):
        raise Invalid(f"must be a record type such as A or ANY (got {qtype!r})", f"{at}.type")
    rcode = str(given.get("rcode", "NOERROR")).upper()
    if rcode not in RCODES:
        raise Invalid(f"must be one of {', '.join(RCODES)} (got {rcode!r})", f"{at}.rcode")
    zones = _zones_of(given, "zones", ["."], at)
    fallthrough = _zones_of(given, "fallthrough", [], at)
    match = _strings(given.get("match", [".*"]), f"{at}.match", "regular expressions")
    return TemplateRule(
        qclass,
        qtype,
        zones,
        tuple(_regex(m, f"{at}.match") for m in match),
        *(_template_lines(given.get(k, []), f"{at}.{k}") for k in TEMPLATE_KEYS[4:7]),
        rcode,
        fallthrough,
        _text(given.get("where", ""), f"{at}.where"),
    )


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """One `rewrite [continue|stop] name [MATCH] FROM TO [answer auto|name RE TO]` of CoreDNS.
    Regex replacements name groups as CoreDNS does: `{1}`."""

    match: str = "exact"
    source: str = ""  # FROM
    target: str = ""  # TO
    stop: bool = True
    answer: str = ""  # "", auto, or name (answer names matching answer_from → answer_to)
    answer_from: str = ""
    answer_to: str = ""
    where: str = ""  # the Corefile line it came from, for `kdns explain`

    def to_yaml(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "from": self.source,
            "to": self.target,
            "stop": self.stop,
            "answer": self.answer,
            "answer_from": self.answer_from,
            "answer_to": self.answer_to,
            "where": self.where,
        }


REWRITE_KEYS = tuple(RewriteRule().to_yaml())


def _rewrites(value: Any) -> tuple[RewriteRule, ...]:
    return _rules(value, "rewrite rules", _rewrite, RewriteRule)


def _rewrite(entry: Any, at: str) -> RewriteRule:
    given = _fields(entry, REWRITE_KEYS, at)
    match = given.get("match", "exact")
    if match not in REWRITE_MATCHES:
        raise Invalid(f"must be one of {', '.join(REWRITE_MATCHES)} (got {match!r})", f"{at}.match")
    for k in ("from", "to"):
        if not isinstance(given.get(k), str) or not given[k]:
            raise Invalid(f"must be a name (got {given.get(k)!r})", f"{at}.{k}")
    if match == "regex":
        _regex(given["from"], f"{at}.from")
    answer = given.get("answer", "") or ""
    if answer not in REWRITE_ANSWERS:
        raise Invalid(f"must be auto or name (got {answer!r})", f"{at}.answer")
    answer_from, answer_to = given.get("answer_from", ""), given.get("answer_to", "")
    if answer == "name":
        _regex(answer_from, f"{at}.answer_from")
        if not isinstance(answer_to, str) or not answer_to:
            raise Invalid(f"must be a name (got {answer_to!r})", f"{at}.answer_to")
    stop = given.get("stop", True)
    if not isinstance(stop, bool):
        raise Invalid(f"must be true or false (got {stop!r})", f"{at}.stop")
    where = _text(given.get("where", ""), f"{at}.where")
    return RewriteRule(
        match, given["from"], given["to"], stop, answer, answer_from, answer_to, where
    )


_SYSCTL_MAX = 2**31 - 1  # the kernel's int sysctls


def _key(default: Any, check: Check, alias: str = "", shape: str = "scalar") -> Any:
    """A section field: its default, its check, its flat alias (the key's name in files written
    before the sections; a new key needs none), and how YAML and KDNS_*
    variables spell it: `scalar`, `list`, `mapping` (domain to servers) or `yaml` (a variable
    takes the file's syntax)."""
    return field(default=default, metadata={"check": check, "alias": alias, "shape": shape})


# --- the sections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsSection:
    """What `kdns serve` answers, and where it listens."""

    # Zones kdns is authoritative for. Forward zones get the Service schema; reverse zones
    # (in-addr.arpa, ip6.arpa or narrower) get PTRs. The first forward zone is the primary one:
    # PTR targets use it, as CoreDNS does.
    zones: tuple[str, ...] = _key(DEFAULT_ZONES, _zones, "zones", "list")
    ttl: int = _key(5, _whole(0, 3600, " of seconds"), "ttl")  # CoreDNS's default and range
    pods: str = _key("insecure", _one_of(POD_MODES), "pods")  # conformance needs pod A records
    autopath: bool = _key(False, _boolean, "autopath")  # a pod's search path, server-side
    # Rotate the A/AAAA records of an answer per query (CoreDNS's loadbalance plugin).
    loadbalance: str = _key("round_robin", _one_of(LOADBALANCE_MODES), "loadbalance")
    addr: str = _key("0.0.0.0:53", _hostport, "dns_addr")
    # Probes and metrics, on the ports CoreDNS's manifests use.
    health_addr: str = _key("0.0.0.0:8080", _hostport, "health_addr")
    ready_addr: str = _key("0.0.0.0:8181", _hostport, "ready_addr")
    metrics_addr: str = _key("0.0.0.0:9153", _hostport, "metrics_addr")
    metrics_coredns_names: bool = _key(False, _boolean, "metrics_coredns_names")
    # Lifecycle. On SIGTERM /ready turns 503 at once and DNS keeps answering for `lameduck`
    # seconds, so the EndpointSlice drops this pod before it stops (CoreDNS's `health { lameduck
    # 5s }`). Beyond terminationGracePeriodSeconds (30 s by default) the kubelet kills it anyway.
    lameduck: float = _key(5.0, _seconds(0.0, 3600.0), "lameduck")
    # Seconds between checks of the config file (and the kube-dns ConfigMap it names) for a
    # change; 0 turns the check off (SIGHUP and SIGUSR1 still reload).
    reload_interval: float = _key(2.0, _seconds(0.0, 86400.0), "reload_interval")
    # userspace: relay Services from loopback VIPs (no privileges) and answer those VIPs.
    proxy: str = _key("none", _one_of(PROXY_MODES), "proxy")
    # CoreDNS's kubernetes options that change the schema: endpoint names from their Pods'
    # names (when they have no hostname); no endpoint records at all (headless names and
    # endpoint names get NXDOMAIN); NXDOMAIN for a ClusterIP Service with no ready endpoint.
    endpoint_pod_names: bool = _key(False, _boolean)
    noendpoints: bool = _key(False, _boolean)
    ignore_empty_service: bool = _key(False, _boolean)
    # CoreDNS's kubernetes `fallthrough [ZONES]`: names in these cluster zones that do not
    # exist go to the upstreams instead of NXDOMAIN ("." = every zone). PTRs for addresses no
    # Service owns go there whenever there are upstreams.
    fallthrough: tuple[str, ...] = _key((), _plugin_zones(True), shape="list")
    # CoreDNS's kubernetes `multicluster ZONES` (KEP-1645): these zones (normally
    # clusterset.local, served even when `zones` leaves them out) answer ServiceImports
    # instead of Services.
    multicluster: tuple[str, ...] = _key((), _plugin_zones(True), shape="list")
    # CoreDNS's k8s_external: outside zones where `svc.ns.ZONE` gives a Service's LoadBalancer
    # ingress IPs and externalIPs, with SOA and NS at the apex and the nameserver under
    # `external_apex` (`ns1.dns.ZONE`), answered with `external_ttl`.
    external_zones: tuple[str, ...] = _key((), _plugin_zones(True), shape="list")
    external_apex: str = _key("dns", _string)
    external_ttl: int = _key(5, _whole(0, 3600, " of seconds"))
    # CoreDNS's template and rewrite plugins (kdns/dns/template.py, kdns/dns/rewrite.py).
    templates: tuple[TemplateRule, ...] = _key((), _templates, shape="yaml")
    rewrites: tuple[RewriteRule, ...] = _key((), _rewrites, shape="yaml")

    @property
    def forward_zones(self) -> tuple[str, ...]:
        return tuple(z for z in self.zones if not is_reverse_zone(z))

    @property
    def reverse_zones(self) -> tuple[str, ...]:
        return tuple(z for z in self.zones if is_reverse_zone(z))


@dataclass(frozen=True, slots=True)
class ForwardSection:
    """Where names outside the zones go."""

    # IP[:PORT], up to 15; None means the nameservers of `resolv_conf`, () means no forwarding.
    upstreams: tuple[str, ...] | None = _key(None, _upstreams, "upstreams", "list")
    resolv_conf: str = _key("/etc/resolv.conf", _string, "resolv_conf")
    stub_domains: tuple[tuple[str, tuple[str, ...]], ...] = _key(
        (), _stub_domains, "stub_domains", "mapping"
    )  # domain → its own servers
    kube_dns_configmap: str = _key("", _string, "kube_dns_configmap")  # kube-dns's stubDomains
    max_concurrent: int = _key(1000, _whole(1, 1_000_000), "max_concurrent")
    timeout: float = _key(2.0, _seconds(0.05, 60.0), "forward_timeout")  # per upstream
    # CoreDNS's forward options: the order upstreams are tried in; TCP for every exchange;
    # names that are not forwarded (they get SERVFAIL, unless a stub domain takes them).
    policy: str = _key("random", _one_of(FORWARD_POLICIES))
    # tls:// upstreams (DNS over TLS): the name their certificate must hold ("" = their
    # address; CoreDNS's tls_servername), a CA file ("" = the system's) and a client
    # certificate and key (CoreDNS's `tls CERT KEY CA`); seconds an idle connection is reused.
    tls_servername: str = _key("", _string)
    tls_ca: str = _key("", _string)
    tls_cert: str = _key("", _string)
    tls_key: str = _key("", _string)
    expire: float = _key(10.0, _seconds(0.0, 3600.0))
    force_tcp: bool = _key(False, _boolean)
    except_zones: tuple[str, ...] = _key((), _plugin_zones(True), shape="list")
    # CoreDNS's forward `max_fails` (failed exchanges in a row before an upstream is down and
    # tried last; 0 = never down) and `health_check` (seconds between `. IN NS` probes of a
    # down upstream, until it answers).
    max_fails: int = _key(2, _whole(0, 1000))
    health_check: float = _key(0.5, _seconds(0.05, 3600.0))


@dataclass(frozen=True, slots=True)
class CacheSection:
    """The upstream cache (cluster answers are never cached there), and the answer cache's bound."""

    success: int = _key(9984, _whole(0, 10_000_000, " of entries"), "cache_success")
    denial: int = _key(9984, _whole(0, 10_000_000, " of entries"), "cache_denial")
    # Memory bounds in bytes (estimated per entry), so a flood of distinct names cannot push the
    # process past its memory limit: the upstream cache (success and denial together), and the
    # answer cache of encoded cluster answers. The oldest entries go first.
    max_bytes: int = _key(16 << 20, _whole(1 << 16, 1 << 40, " of bytes"))
    answer_max_bytes: int = _key(32 << 20, _whole(1 << 16, 1 << 40, " of bytes"))
    max_ttl: int = _key(30, _whole(0, 86400, " of seconds"), "cache_max_ttl")
    max_denial_ttl: int = _key(30, _whole(0, 86400, " of seconds"), "cache_max_denial_ttl")
    # Seconds past expiry an answer may be served when upstreams fail; RFC 8767 §5 suggests
    # 1-3 days, a week at most.
    serve_stale: float = _key(0.0, _seconds(0.0, 604800.0), "serve_stale")
    # CoreDNS's `disable success|denial ZONES`: answers of that kind for names in these zones
    # are never cached ("." = every name); denial covers NXDOMAIN, NODATA and SERVFAIL.
    disable_success: tuple[str, ...] = _key((), _plugin_zones(True), shape="list")
    disable_denial: tuple[str, ...] = _key((), _plugin_zones(True), shape="list")
    # CoreDNS's cache `prefetch AMOUNT [DURATION [PERCENTAGE%]]`: an answer asked `prefetch`
    # times (0 = off) within `prefetch_duration` seconds is refreshed from upstream in the
    # background when it is served with less than `prefetch_percentage` % of its TTL left.
    prefetch: int = _key(0, _whole(0, 1_000_000))
    prefetch_duration: float = _key(60.0, _seconds(1.0, 86400.0))
    prefetch_percentage: int = _key(10, _whole(0, 100, " of percent"))


@dataclass(frozen=True, slots=True)
class HostsSection:
    """CoreDNS's hosts plugin: names from a hosts file and inline lines (kdns/dns/hosts.py)."""

    file: str = _key("", _string)  # "" = none (the plugin is on when file or entries are set)
    entries: tuple[str, ...] = _key((), _host_entries, shape="list")  # "IP NAME..." lines
    zones: tuple[str, ...] = _key((".",), _plugin_zones(False), shape="list")
    ttl: int = _key(3600, _whole(0, 2_147_483_647, " of seconds"))  # CoreDNS's default
    reload: float = _key(5.0, _seconds(0.0, 86400.0))  # seconds between checks of `file`
    no_reverse: bool = _key(False, _boolean)
    fallthrough: tuple[str, ...] = _key((), _plugin_zones(True), shape="list")

    @property
    def enabled(self) -> bool:
        return bool(self.file or self.entries)


@dataclass(frozen=True, slots=True)
class KubernetesSection:
    """The source of cluster state: manifest files, else the live cluster."""

    manifests: tuple[str, ...] = _key((), _paths, "manifests", "list")
    # A kubeconfig file (else $KUBECONFIG, else the in-cluster service account) and, optionally,
    # one of its contexts.
    kubeconfig: str = _key("", _string, "kubeconfig")
    context: str = _key("", _string, "context")
    # CoreDNS's kubernetes `namespaces` and `labels`: serve only the objects in these namespaces
    # ([] = every one; names in others get NXDOMAIN) and only the Services these labels select
    # ("" = every one; sent to the API server as labelSelector). Fixed at start.
    namespaces: tuple[str, ...] = _key((), _namespaces, shape="list")
    labels: str = _key("", _label_selector)


@dataclass(frozen=True, slots=True)
class ProxySection:
    """`kdns proxy`, a minimal kube-proxy (README "Service proxy")."""

    mode: str = _key("iptables", _one_of(PROXY_COMMAND_MODES), "proxy_mode")
    min_sync_period: float = _key(1.0, _seconds(0.0, 3600.0), "min_sync_period")  # kube-proxy's
    sync_period: float = _key(30.0, _seconds(0.1, 86400.0), "sync_period")  # and a canary check
    masquerade_all: bool = _key(False, _boolean, "masquerade_all")
    ipvs_scheduler: str = _key("rr", _scheduler, "ipvs_scheduler")
    healthz_addr: str = _key("0.0.0.0:10256", _hostport, "healthz_addr")  # kube-proxy's ports
    metrics_addr: str = _key("127.0.0.1:10249", _hostport, "proxy_metrics_addr")
    # kube-proxy's conntrack settings, by its flags' names (seconds where it takes durations);
    # 0 leaves the sysctl alone. nf_conntrack_max = max(per core x CPUs, min), only raised.
    conntrack_max_per_core: int = _key(32768, _whole(0, _SYSCTL_MAX))
    conntrack_min: int = _key(131072, _whole(0, _SYSCTL_MAX))
    conntrack_tcp_timeout_established: int = _key(86400, _whole(0, _SYSCTL_MAX, " of seconds"))
    conntrack_tcp_timeout_close_wait: int = _key(3600, _whole(0, _SYSCTL_MAX, " of seconds"))
    conntrack_tcp_be_liberal: bool = _key(False, _boolean)
    conntrack_udp_timeout: int = _key(0, _whole(0, _SYSCTL_MAX, " of seconds"))
    conntrack_udp_timeout_stream: int = _key(0, _whole(0, _SYSCTL_MAX, " of seconds"))


@dataclass(frozen=True, slots=True)
class NodeSection:
    """This node, as the proxy sees it."""

    name: str = _key("", _string, "node_name")  # "" = $NODE_NAME (downward API), else hostname
    # Pod CIDRs, one per family: traffic from outside them is masqueraded.
    cluster_cidrs: tuple[str, ...] = _key((), _cidrs(True), "cluster_cidrs", "list")
    # CIDRs choosing the node addresses NodePorts are served on; () = every local address.
    nodeport_addresses: tuple[str, ...] = _key((), _cidrs(False), "nodeport_addresses", "list")
    # Node-local DNS (`kdns proxy --dns`): the addresses the proxy also answers DNS on, port 53,
    # from its own store (() = no DNS). NodeLocal DNSCache's link-local 169.254.20.10 is the
    # flag's default; the kube-dns ClusterIP may be one of them (taken over on this node).
    dns: tuple[str, ...] = _key((), _addresses, "node_dns", "list")
    # Where the node DNS forwards what is not a cluster name: None = forward.upstreams (and so,
    # by default, the node's resolv.conf); the forward section's stub domains apply as well.
    dns_upstreams: tuple[str, ...] | None = _key(None, _upstreams, "node_dns_upstreams", "list")
    # Autopath for the node's own pods (`--dns-autopath`): the node DNS watches the Pods with
    # spec.nodeName = this node, the only pods that ask it, and answers their search path
    # server-side as `dns.autopath` does for `kdns serve`. Off by default: the Pods watch needs
    # RBAC (list/watch pods) the proxy's role does not have. `dns.autopath` does not turn it on.
    dns_autopath: bool = _key(False, _boolean)
    # Seconds past expiry the node DNS may serve a cached outside answer while every upstream
    # fails (RFC 8767 serve-stale; `cache.serve_stale` for the node DNS, which it replaces): on
    # by default (an hour, CoreDNS's serve_stale default) because a node DNS whose central
    # upstream is gone should keep pods' outside names working; 0 turns it off.
    dns_serve_stale: float = _key(3600.0, _seconds(0.0, 604800.0), "node_dns_serve_stale")


@dataclass(frozen=True, slots=True)
class LoggingSection:
    """Log lines and the query log (kdns/logs.py, kdns/dns/querylog.py)."""

    format: str = _key("text", _one_of(LOG_FORMATS), "log_format")
    query_log: bool | str = _key(False, _query_log, "query_log", "yaml")  # false | text | json
    # Seconds per summary of repeated errors; 0 = log every one.
    consolidate: float = _key(10.0, _seconds(0.0, 3600.0), "log_consolidate")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config: one section per concern (module docstring), and the file it came
    from. Keys are read as `config.dns.ttl`; `get` and `with_overrides` take paths or aliases."""

    dns: DnsSection = field(default_factory=DnsSection)
    forward: ForwardSection = field(default_factory=ForwardSection)
    cache: CacheSection = field(default_factory=CacheSection)
    hosts: HostsSection = field(default_factory=HostsSection)
    kubernetes: KubernetesSection = field(default_factory=KubernetesSection)
    proxy: ProxySection = field(default_factory=ProxySection)
    node: NodeSection = field(default_factory=NodeSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    source: str = field(default="", compare=False)  # the file this came from, for messages
    # Files and globs the source imports (a Corefile's `import` lines): a reload watches them too.
    imports: tuple[str, ...] = field(default=(), compare=False)

    def get(self, key: str) -> Any:
        """The value of `key`, by path or alias (`dns.ttl` or `ttl`); KeyError if none."""
        path = path_of(key)
        if path is None:
            raise KeyError(key)
        section, name = path.split(".")
        return getattr(getattr(self, section), name)

    def with_overrides(self, where: str = "command line", **keys: Any) -> Config:
        """This config with `keys` (paths or aliases; None means not given) set and checked:
        a bad one raises ConfigError `"{where}: {key}: {problem}"`."""
        config = self
        for spelled, value in keys.items():
            if value is not None:
                config = _set(config, spelled, value, where)
        return config


@dataclass(frozen=True, slots=True)
class Key:
    """One config key: its path, its flat alias, how it is checked and spelled, its default."""

    path: str
    alias: str
    check: Check
    shape: str
    default: Any


def _keys() -> dict[str, Key]:
    keys = {}
    default = Config()
    for section in fields(default):
        if section.name in ("source", "imports"):
            continue
        for f in fields(getattr(default, section.name)):
            path = f"{section.name}.{f.name}"
            meta = f.metadata
            keys[path] = Key(path, meta["alias"], meta["check"], meta["shape"], f.default)
    return keys


KEYS: dict[str, Key] = _keys()
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(path.split(".")[0] for path in KEYS))
ALIASES: dict[str, str] = {key.alias: path for path, key in KEYS.items() if key.alias}
# Every name a key answers to: its path, its alias, and `section_field` (KDNS_DNS_TTL).
_NAMES: dict[str, str] = {
    **{path: path for path in KEYS},
    **{path.replace(".", "_"): path for path in KEYS},
    **ALIASES,
}
assert len(ALIASES) == len({k.alias for k in KEYS.values() if k.alias}), "an alias names one key"
assert all(_NAMES[path.replace(".", "_")] == path for path in KEYS), (
    "an alias spells another key's section_field"
)


def path_of(name: str) -> str | None:
    """The path of the key `name` spells (`ttl`, `dns.ttl`, `dns_ttl` → `dns.ttl`), or None."""
    return _NAMES.get(name)


def _set(config: Config, spelled: str, value: Any, where: str) -> Config:
    path = path_of(spelled)
    if path is None:
        raise ConfigError(f"{where}: {spelled}: unknown key", key=spelled, problem="unknown key")
    key = KEYS[path]
    try:
        value = key.check(value)
    except Invalid as e:
        name = spelled + e.subkey
        raise ConfigError(f"{where}: {name}: {e.message}", key=name, problem=e.message) from None
    section, field_name = path.split(".")
    return replace(config, **{section: replace(getattr(config, section), **{field_name: value})})


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


# --- KDNS_* environment variables ----------------------------------------------------------------


def _env_text(key: Key, name: str, text: str) -> Any:
    """The text of variable `name` → the value YAML would give (checked later by `_set`)."""
    if key.shape == "list":
        return tuple(text.replace(",", " ").split())
    default = key.default
    if key.shape in ("mapping", "yaml"):
        return _env_yaml(key, name, text)
    if isinstance(default, bool):
        if text.strip().lower() not in _TRUE + _FALSE:
            raise ConfigError(f"${name}: must be true or false (got {text!r})", key=key.path)
        return text.strip().lower() in _TRUE
    if isinstance(default, int | float):
        try:
            return int(text) if isinstance(default, int) else float(text)
        except ValueError:
            whole = "whole " if isinstance(default, int) else ""
            raise ConfigError(
                f"${name}: must be a {whole}number (got {text!r})", key=key.path
            ) from None
    return text


def _env_yaml(key: Key, name: str, text: str) -> Any:
    """Structured keys (stub_domains, query_log) take the file's syntax."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ConfigError(f"${name}: YAML syntax error: {problem}", key=key.path) from None
    return value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`KDNS_TTL=30`, `KDNS_DNS_TTL=30`, `KDNS_UPSTREAMS="1.1.1.1 8.8.8.8"`,
    `KDNS_STUB_DOMAINS="{acme.local: [10.0.0.10]}"`: one key each (by alias or by
    `SECTION_FIELD`), for containers whose config file is baked in. Lists are separated by
    spaces or commas; structured keys take the file's YAML syntax. The result maps each key as
    the variable spells it (`ttl`, `dns_ttl`) to its value. Variables that name no key are
    ignored; a value that cannot be read raises ConfigError naming the variable (its range is
    checked by `apply_env`)."""
    out: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith("KDNS_"):
            continue
        spelled = name[5:].lower()
        path = path_of(spelled)
        if path is None:
            # Not ours: Kubernetes injects KDNS_SERVICE_HOST, KDNS_PORT, … into every pod of a
            # namespace holding a Service named "kdns" (service links), and tools set their own.
            continue
        value = _env_text(KEYS[path], name, text)
        out[spelled] = _from_yaml(KEYS[path], spelled, value, f"${name}")
    return out


def apply_env(config: Config, environ: Mapping[str, str]) -> Config:
    """`config` with the `KDNS_*` variables of `environ` applied, each checked on its own so
    a bad value names its variable: `$KDNS_TTL: ttl: must be … (got 9999)`."""
    names = {name[5:].lower(): name for name in environ if name.startswith("KDNS_")}
    for spelled, value in env_overrides(environ).items():
        config = _set(config, spelled, value, f"${names[spelled]}")
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


# --- the config file -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Given:
    """One key as a file gives it: its spelling (`ttl` or `dns.ttl`), line and YAML value."""

    spelled: str
    line: int
    value: Any


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        # YAML 1.2 §5.2: a config file is UTF-8. Name the line of the first bad byte, so a
        # reload that meets such a file is refused like any other bad config (found by fuzzing).
        with open(path, "rb") as f:
            line = f.read()[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x})"
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        if "'\\t'" in problem:
            problem = "a tab character is used for indentation; YAML allows only spaces"
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return Config(source=path)  # empty, comments only, or an empty document
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:1: the config file must be a mapping of keys to values")
    config = Config(source=path)
    for key_path, given in _given(path, node).items():
        where = f"{path}:{given.line}"
        value = _from_yaml(KEYS[key_path], given.spelled, given.value, where)
        config = _set(config, given.spelled, value, where)
    return config


def _given(path: str, node: yaml.MappingNode) -> dict[str, Given]:
    """Every key the file sets, by path; raises ConfigError for an unknown or repeated key."""
    out: dict[str, Given] = {}
    spellings: dict[str, int] = {}  # a spelling given twice: PyYAML would keep the last one
    for key_node, value_node in _entries(path, node, ""):
        spelled, line = key_node.value, key_node.start_mark.line + 1
        if spelled in spellings:
            raise ConfigError(
                f"{path}:{line}: {spelled}: given twice (first on line {spellings[spelled]})",
                key=spelled,
            )
        spellings[spelled] = line
        key_path = path_of(spelled) if "." in spelled else ALIASES.get(spelled)
        if key_path is None:
            known = f"sections {', '.join(SECTIONS)}; flat keys {', '.join(sorted(ALIASES))}"
            raise ConfigError(f"{path}:{line}: {spelled}: unknown key (known keys: {known})")
        if key_path in out:
            first = out[key_path]
            raise ConfigError(
                f"{path}:{line}: {spelled}: given twice (first on line {first.line} as "
                f"{first.spelled})",
                key=spelled,
            )
        value = yaml.load(yaml.serialize(value_node), Loader=yaml.SafeLoader)
        out[key_path] = Given(spelled, line, value)
    return out


def _entries(
    path: str, node: yaml.MappingNode, prefix: str
) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
    """The (key, value) nodes of the file, a section's keys spelled `section.field`. A
    top-level `proxy` that is a mapping is the proxy section; anything else there is the flat
    `proxy` key (`dns.proxy`, what `kdns serve` relays)."""
    out = []
    sections: dict[str, int] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value)
        is_section = name in SECTIONS and (
            name != "proxy" or isinstance(value_node, yaml.MappingNode)
        )
        if not prefix and is_section:
            line = key_node.start_mark.line + 1
            if name in sections:
                raise ConfigError(
                    f"{path}:{line}: {name}: given twice (first on line {sections[name]})"
                )
            sections[name] = line
            if not isinstance(value_node, yaml.MappingNode):
                raise ConfigError(
                    f"{path}:{line}: {name}: must be a mapping of the section's keys "
                    f"(got {yaml.safe_load(yaml.serialize(value_node))!r})",
                    key=name,
                )
            out.extend(_entries(path, value_node, f"{name}."))
            continue
        spelled = yaml.ScalarNode("tag:yaml.org,2002:str", prefix + name, key_node.start_mark)
        out.append((spelled, value_node))
    return out


def locate(source: str, path: str) -> tuple[str, str]:
    """(where, key) for a message about the key at `path` in the file `source`, spelled as the
    file spells it: (`kdns.yaml:3`, `dns_addr`), or (`kdns.yaml`, alias) when the file does not
    set it (a flag or a variable did). Used for a value that was valid on its own but cannot be
    used now, such as a source change refused on reload."""
    alias = KEYS[path].alias or path
    if not source:
        return "config", alias
    try:
        with open(source, encoding="utf-8") as f:
            node = yaml.compose(f.read(), Loader=yaml.SafeLoader)
        if isinstance(node, yaml.MappingNode):
            for key_path, given in _given(source, node).items():
                if key_path == path:
                    return f"{source}:{given.line}", given.spelled
    except (OSError, yaml.YAMLError, ConfigError):
        pass
    return source, alias


def _from_yaml(key: Key, spelled: str, value: Any, where: str) -> Any:
    """A value as YAML gives it → the shape `Config` holds (lists as tuples, mappings as pairs);
    anything else is left for the key's check to reject with the allowed values."""
    if key.shape == "list":
        if value is None and key.default is None:
            return None  # upstreams: null, the nameservers of resolv_conf
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: {spelled}: expected a list (got {value!r})", key=spelled)
        return tuple(value)
    if key.shape == "mapping":
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: {spelled}: expected {{domain: [IP[:PORT], ...]}} (got {value!r})",
                key=spelled,
            )
        return tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in value.items())
    return value

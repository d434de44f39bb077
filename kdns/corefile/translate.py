"""Server blocks → kdns config keys, with one line for every directive kdns does not follow.

Contract (pure):
- `translate(blocks, source)` returns a `Translation`: the config keys the Corefile sets (by
  path, `dns.ttl`), each with the file:line it came from, and `notes`, one per directive or
  option that kdns does not carry out as CoreDNS would.
- A note is `refused` when following the Corefile without it would change answers (a
  `namespaces` filter, a stub domain inside a cluster zone, `rewrite type`, …): the caller
  stops with exit 2. `hosts`, `template` and `rewrite name` become the `hosts` section and
  the `dns.templates` and `dns.rewrites` rules (in the order written). The others are harmless
  (`errors`, `loop`, `reload`, `debug`, `whoami`, timing knobs kdns keeps fixed) and are
  printed as accepted.
- Values are passed on as the Corefile gives them, converted to kdns's units (Go durations to
  seconds); their ranges are checked by the config model, which names the line.
- Where a Corefile leaves something out, the key takes CoreDNS's behaviour rather than kdns's
  default: no `pods` option is `pods disabled`, no `cache` caches nothing, no `health
  { lameduck }` is no lameduck, no `reload` is no polling, no `loadbalance` keeps the order.
- `CorefileError` (lexer) for what CoreDNS itself refuses to start with: a zone served twice,
  a plugin used twice in a block where CoreDNS allows one, a malformed server block key.

Which block does what: the block holding `kubernetes` gives the cluster zones; `forward .` in a
block for the root zone gives the upstreams; `forward` in a block for any other zone (or
`forward ZONE ...` in the root block) gives a stub domain, as CoreDNS's longest-zone dispatch
does. kdns has one listener, one cache, one health endpoint: a key set by two blocks must agree.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from kdns.config import KEYS, Invalid
from kdns.corefile.lexer import Token
from kdns.corefile.parser import Directive, ServerBlock

REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")

# Directives that change no answer: accepted, and said so.
HARMLESS = {
    "errors": "kdns logs errors on its own",
    "loop": "kdns refuses, at start, an upstream that would forward back to it",
    "debug": "kdns logs failures without it",
    "whoami": "only answers names no other plugin of the block handles",
    "pprof": "kdns has no profiling endpoint",
    "trace": "kdns does not export traces",
    "dnstap": "kdns does not export dnstap",
    "cancel": "kdns bounds every upstream exchange itself",
    "timeouts": "kdns keeps its own connection timeouts",
    "metadata": "kdns has no plugin that reads metadata",
    "multisocket": "kdns uses one socket per protocol",
    "root": "kdns reads no zone files",
}

# Where a Corefile says nothing, CoreDNS's defaults (plugin READMEs).
DEFAULT_HEALTH = ":8080"
DEFAULT_READY = ":8181"
DEFAULT_PROMETHEUS = "localhost:9153"
DEFAULT_RELOAD = 30.0
CACHE_MAX_TTL, CACHE_MAX_DENIAL_TTL = 3600, 1800
SERVE_STALE = 3600.0
DNS_PORT = 53

# Plugins CoreDNS allows once per server block ("can only be used once per Server Block").
ONCE = ("kubernetes", "cache", "hosts", "errors", "prometheus", "loop", "ready")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # the config key, by its path (`dns.ttl`, `forward.upstreams`, …)
    value: Any
    where: str  # FILE:LINE of the directive or option that set it
    directive: str  # that directive or option (`ttl`, `forward`), for messages


@dataclass(frozen=True, slots=True)
class Note:
    where: str
    directive: str
    text: str
    refused: bool

    def __str__(self) -> str:
        verdict = "not supported" if self.refused else "accepted"
        return f"{self.where}: {self.directive}: {verdict}: {self.text}"


@dataclass(frozen=True, slots=True)
class Translation:
    settings: tuple[Setting, ...]
    notes: tuple[Note, ...]

    @property
    def refused(self) -> tuple[Note, ...]:
        return tuple(n for n in self.notes if n.refused)

    def values(self) -> dict[str, Any]:
        return {s.key: s.value for s in self.settings}


def seconds(token: Token, what: str) -> float:
    """A Go duration (`5s`, `1m30s`, `500ms`) in seconds; a bare number is seconds too, as
    several plugins (cache, reload's older syntax) accept."""
    text = token.text
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise token.error(f"{what}: {text!r} is not a duration (e.g. 5s, 1m, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def whole(token: Token, what: str) -> int:
    if not token.text.isdigit():
        raise token.error(f"{what}: {token.text!r} is not a whole number")
    return int(token.text)


def normalize_zone(token: Token) -> str:
    """A zone as kdns keeps it: lower case, no trailing dot, "" for the root. A CIDR becomes
    its reverse zone, when the prefix ends on a label boundary (CoreDNS's `10.0.0.0/24`)."""
    text = token.text.lower()
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise token.error(f"{token.text!r} is neither a zone nor a CIDR") from None
        step = 8 if net.version == 4 else 4
        if net.prefixlen % step:
            raise token.error(
                f"{token.text}: only CIDRs on a label boundary (/{step * 1}, /{step * 2}, …) "
                "are supported as reverse zones"
            )
        labels = net.network_address.reverse_pointer.split(".")
        host_labels = (net.max_prefixlen - net.prefixlen) // step
        return ".".join(labels[host_labels:])
    return "" if text == "." else text.rstrip(".")


def is_reverse(zone: str) -> bool:
    return zone in REVERSE_ZONES or zone.endswith(tuple("." + z for z in REVERSE_ZONES))


def within(name: str, zone: str) -> bool:
    return zone == "" or name == zone or name.endswith("." + zone)


@dataclass(frozen=True, slots=True)
class Key:
    zone: str
    port: int
    token: Token


def block_key(token: Token) -> Key:
    """`[dns://]ZONE[:PORT]` → Key; other schemes (tls://, https://, grpc://, quic://) are
    refused by the caller through `scheme`."""
    text = token.text
    scheme, _, rest = text.rpartition("://")
    if scheme and scheme.lower() != "dns":
        raise token.error(
            f"{text}: only plain DNS server blocks are supported (not {scheme}://); "
            "kdns serves DNS over UDP and TCP"
        )
    zone, port = rest, DNS_PORT
    if rest.count(":") == 1 and not rest.startswith("["):
        zone, _, port_text = rest.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise token.error(f"{text}: the port must be a number in 1-65535")
        port = int(port_text)
    zone_token = Token(zone or ".", token.file, token.line)
    return Key(normalize_zone(zone_token), port, token)


@dataclass
class _State:
    settings: dict[str, Setting] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    stubs: dict[str, tuple[tuple[str, ...], Token]] = field(default_factory=dict)
    stub_files: dict[str, tuple[str, Token]] = field(default_factory=dict)  # forward . FILE
    cluster_zones: tuple[str, ...] = ()
    block_zones: tuple[str, ...] = ()  # the zones of every server block
    templates: list[tuple[dict[str, Any], Token]] = field(default_factory=list)
    rewrites: list[tuple[dict[str, Any], Token]] = field(default_factory=list)

    def set(self, key: str, value: Any, token: Token) -> None:
        old = self.settings.get(key)
        if old is not None and old.value != value:
            self.refuse(
                token,
                f"kdns has one {key} for every server block, and {old.where} sets "
                f"{old.value!r} (here {value!r})",
            )
            return
        if old is None:
            self.settings[key] = Setting(key, value, token.where, token.text)

    def accept(self, token: Token, text: str, directive: str = "") -> None:
        self.notes.append(Note(token.where, directive or token.text, text, False))

    def refuse(self, token: Token, text: str, directive: str = "") -> None:
        self.notes.append(Note(token.where, directive or token.text, text, True))


def translate(blocks: tuple[ServerBlock, ...], source: str) -> Translation:
    """The translation of the server blocks read from the Corefile `source`."""
    state = _State()
    keys = [[block_key(k) for k in block.keys] for block in blocks]
    _check_keys(keys, state)
    state.block_zones = tuple(k.zone for block_keys in keys for k in block_keys)
    for block in blocks:
        _check_once(block)
    main = _main_block(blocks, keys, source, state)
    for block, block_keys in zip(blocks, keys, strict=True):
        zones = [k.zone for k in block_keys]
        for directive in block.directives:
            _directive(directive, zones, block is main, state)
    _absent(blocks, state)
    _stub_domains(state)
    _rules(state)
    return Translation(tuple(state.settings.values()), tuple(state.notes))


def _main_block(
    blocks: tuple[ServerBlock, ...], keys: list[list[Key]], source: str, state: _State
) -> ServerBlock:
    """The block whose `kubernetes` gives the cluster zones; a second one is refused."""
    holders = [
        (block, [k.zone for k in block_keys])
        for block, block_keys in zip(blocks, keys, strict=True)
        if any(d.name.text == "kubernetes" for d in block.directives)
    ]
    if not holders:
        first = blocks[0].keys[0] if blocks else Token("", source, 1)
        raise first.error("no server block has a kubernetes directive: nothing for kdns to serve")
    main, zones = holders[0]
    _cluster_zones(next(d for d in main.directives if d.name.text == "kubernetes"), zones, state)
    for extra, _ in holders[1:]:
        directive = next(d for d in extra.directives if d.name.text == "kubernetes")
        state.refuse(directive.name, "kdns serves one kubernetes zone set; a second block has one")
    return main


def _check_keys(keys: list[list[Key]], state: _State) -> None:
    seen: dict[tuple[str, int], Key] = {}
    ports: dict[int, Key] = {}
    for block_keys in keys:
        for key in block_keys:
            if (key.zone, key.port) in seen:
                first = seen[key.zone, key.port]
                raise key.token.error(
                    f"{key.token.text}: zone {key.zone or '.'} port {key.port} is already "
                    f"served by the block on line {first.token.line}"
                )
            seen[key.zone, key.port] = key
            ports.setdefault(key.port, key)
    if len(ports) > 1:
        first, *others = ports.values()
        for other in others:
            state.refuse(
                other.token,
                f"kdns listens on one port, and line {first.token.line} uses {first.port}",
                directive="server block",
            )
    first = next(iter(ports.values()), None)
    if first is not None:
        state.set("dns.addr", f"0.0.0.0:{first.port}", first.token)


def _check_once(block: ServerBlock) -> None:
    seen: dict[str, Directive] = {}
    for directive in block.directives:
        name = directive.name.text
        if name in ONCE and name in seen:
            raise directive.name.error(
                f"{name} can only be used once per server block (first on line "
                f"{seen[name].name.line})"
            )
        seen[name] = directive


def _options(directive: Directive) -> tuple[Directive, ...]:
    return directive.block or ()


def _cluster_zones(directive: Directive, zones: list[str], state: _State) -> None:
    """The zones of `kubernetes [ZONES]`, else of its block: kdns's `zones`."""
    plugin_zones = [normalize_zone(a) for a in directive.args] or zones
    for zone, token in zip(plugin_zones, directive.args, strict=False):
        if not any(within(zone, z) for z in zones):
            # CoreDNS never hands this block a name there, so it never answers it.
            state.refuse(token, f"zone {token.text} is outside the block's zones", "kubernetes")
    plugin_zones = [z for z in plugin_zones if any(within(z, b) for b in zones)]
    if "" in plugin_zones:
        state.refuse(directive.name, "kdns cannot be authoritative for the root zone")
        plugin_zones = [z for z in plugin_zones if z]
    state.cluster_zones = tuple(dict.fromkeys(plugin_zones))
    state.set("dns.zones", state.cluster_zones, directive.name)


def _directive(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    name = directive.name.text
    handler = _HANDLERS.get(name)
    if handler is not None:
        handler(directive, zones, main, state)
    elif name == "template" and not _shadowed(directive, zones, state):
        _template(directive, zones, state)
    elif name == "template":
        state.accept(
            directive.name,
            "never reached: a server block of its own serves each of its zones",
        )
    elif name in HARMLESS:
        state.accept(directive.name, HARMLESS[name])
        for option in _options(directive):
            state.accept(option.name, "ignored with its directive", directive=name)
    else:
        state.refuse(directive.name, "kdns does not have this plugin yet, and it changes answers")


def _shadowed(directive: Directive, zones: list[str], state: _State) -> bool:
    """Whether every zone of `template CLASS TYPE ZONES...` has a more specific server block,
    which CoreDNS picks instead of this one (longest zone wins), so the template never runs.
    AKS's documented way to lift its default NXDOMAIN templates is exactly such a block."""
    targets = [normalize_zone(a) for a in directive.args[2:]]
    if not targets:
        return False
    for target in targets:
        here = max((len(z) for z in zones if within(target, z)), default=-1)
        if not any(within(target, z) and len(z) > here for z in state.block_zones):
            return False
    return True


# --- kubernetes --------------------------------------------------------------------------------


def _kubernetes(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    if not main:
        return  # a second kubernetes block: refused in translate()
    pods = "disabled"  # CoreDNS's default when `pods` is not given
    where = directive.name
    for option in _options(directive):
        word, args = option.name.text, option.args
        if word == "pods":
            if len(args) != 1:
                raise option.name.error("pods takes one of insecure, verified, disabled")
            pods, where = args[0].text, option.name
        elif word == "ttl":
            if len(args) != 1:
                raise option.name.error("ttl takes one number of seconds")
            state.set("dns.ttl", whole(args[0], "kubernetes ttl"), option.name)
        elif word == "fallthrough":
            _kubernetes_fallthrough(option, state)
        elif word == "kubeconfig":
            if not 1 <= len(args) <= 2:
                raise option.name.error("kubeconfig takes a file and, optionally, a context")
            state.set("kubernetes.kubeconfig", args[0].text, option.name)
            if len(args) == 2:
                state.set("kubernetes.context", args[1].text, option.name)
        elif word == "startup_timeout":
            state.accept(
                option.name,
                "kdns answers SERVFAIL for cluster names until its first full list, however long",
                directive="kubernetes startup_timeout",
            )
        elif word in ("endpoint_pod_names", "noendpoints") and not args:
            state.set(f"dns.{word}", True, option.name)
        elif word == "ignore" and [a.text for a in args] == ["empty_service"]:
            state.set("dns.ignore_empty_service", True, option.name)
        elif word == "namespaces" and args:
            names = tuple(a.text for a in args)
            state.set("kubernetes.namespaces", names, option.name)
        elif word == "labels" and args:
            # CoreDNS joins the arguments into one selector (`labels app in (a, b)`).
            state.set("kubernetes.labels", " ".join(a.text for a in args), option.name)
        elif word == "multicluster":
            _multicluster(option, state)
        elif word in (
            "namespace_labels",
            "endpoint_pod_names",
            "noendpoints",
            "ignore",
            "endpoint",
        ):
            state.refuse(option.name, "not supported yet", directive=f"kubernetes {word}")
        else:
            state.refuse(option.name, "unknown option", directive=f"kubernetes {word}")
    state.set("dns.pods", pods, where)


def _multicluster(option: Directive, state: _State) -> None:
    """`multicluster ZONES` (CoreDNS 1.12.2): each must be a zone of the kubernetes block;
    none given leaves it off, as CoreDNS does."""
    zones = []
    for arg in option.args:
        zone = normalize_zone(arg)
        if zone not in state.cluster_zones:
            raise arg.error(f"multicluster zone {arg.text!r} is not a zone of the kubernetes block")
        zones.append(zone)
    if zones:
        state.set("dns.multicluster", tuple(zones), option.name)


def _kubernetes_fallthrough(option: Directive, state: _State) -> None:
    """`fallthrough [ZONES]` (every zone when none): forward zones become `dns.fallthrough`."""
    zones = [normalize_zone(a) for a in option.args] or list(state.cluster_zones)
    forward = [z for z in zones if not is_reverse(z)]
    if forward:
        state.set("dns.fallthrough", tuple(z or "." for z in forward), option.name)
    if len(forward) < len(zones):
        # kdns sends a PTR question for an address no Service owns upstream (when there is one),
        # which is what `fallthrough in-addr.arpa ip6.arpa` does in every distro's Corefile.
        state.accept(
            option.name,
            "PTR questions for addresses no Service owns are forwarded",
            directive="kubernetes fallthrough",
        )


# --- forward -----------------------------------------------------------------------------------


def _forward(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    if len(directive.args) < 2:
        raise directive.name.error("forward needs a zone and at least one destination")
    source, *destinations = directive.args
    targets = zones if source.text == "." else [normalize_zone(source)]
    servers, resolv_conf = _destinations(directive, destinations, state)
    if servers is None and resolv_conf is None:
        return
    for zone in targets:
        if zone == "":
            if "forward.upstreams" in state.settings or "forward.resolv_conf" in state.settings:
                state.refuse(directive.name, "a second forward for the root zone")
                return
            if resolv_conf is not None:
                state.set("forward.resolv_conf", resolv_conf, directive.name)
                state.set("forward.upstreams", None, directive.name)
            else:
                state.set("forward.upstreams", tuple(servers or ()), directive.name)
        elif zone in state.stubs or zone in state.stub_files:
            state.refuse(directive.name, f"a second forward for {zone}")
        elif resolv_conf is not None:
            state.stub_files[zone] = (resolv_conf, directive.name)
        else:
            state.stubs[zone] = (tuple(servers or ()), directive.name)
    _forward_options(directive, "" in targets, state)


def _destinations(
    directive: Directive, destinations: list[Token], state: _State
) -> tuple[list[str] | None, str | None]:
    """(servers, resolv.conf path): addresses, or a file whose nameservers CoreDNS reads."""
    servers: list[str] = []
    files: list[str] = []
    for token in destinations:
        text = token.text
        scheme, sep, rest = text.partition("://")
        tls = False
        if sep:
            if scheme.lower() not in ("dns", "tls"):
                state.refuse(token, f"{scheme}:// upstreams are not supported yet", "forward")
                return None, None
            tls, text = scheme.lower() == "tls", rest
        if tls and not _is_address(text):
            raise token.error(f"{token.text}: a tls:// upstream is an IP[:PORT]")
        if _is_address(text):
            servers.append(f"tls://{text}" if tls else text)
        else:
            files.append(text)
    if files and (servers or len(files) > 1):
        state.refuse(directive.name, "kdns takes either addresses or one resolv.conf file")
        return None, None
    if len(servers) > 15:
        raise directive.name.error("forward takes at most 15 destinations")
    return (None, files[0]) if files else (servers, None)


def _is_address(text: str) -> bool:
    host = text
    if text.startswith("["):
        host = text[1 : text.find("]")]
    elif text.count(":") == 1:
        host = text.split(":")[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _forward_options(directive: Directive, root: bool, state: _State) -> None:
    for option in _options(directive):
        word, args = option.name.text, option.args
        label = f"forward {word}"
        if word == "max_concurrent":
            if len(args) != 1:
                raise option.name.error("max_concurrent takes one number")
            state.set("forward.max_concurrent", whole(args[0], label), option.name)
        elif word == "policy":
            if len(args) != 1 or args[0].text not in ("random", "round_robin", "sequential"):
                raise option.name.error("policy takes one of random, round_robin, sequential")
            state.set("forward.policy", args[0].text, option.name)
        elif word == "force_tcp" and not args:
            state.set("forward.force_tcp", True, option.name)
        elif word == "except" and args and root:
            zones = tuple(normalize_zone(a) or "." for a in args)
            state.set("forward.except_zones", zones, option.name)
        elif word == "except" and args:
            state.refuse(option.name, "kdns follows except only in the root zone's forward", label)
        elif word == "tls_servername" and len(args) == 1:
            state.set("forward.tls_servername", args[0].text, option.name)
        elif word == "tls" and len(args) <= 3:
            # CoreDNS's pkg/tls: CA; CERT KEY; or CERT KEY CA (none: the system's CAs).
            files = [a.text for a in args]
            ca = files[0] if len(files) == 1 else files[2] if len(files) == 3 else ""
            for key, value in (("tls_ca", ca), ("tls_cert", files[0] if len(files) > 1 else "")):
                if value:
                    state.set(f"forward.{key}", value, option.name)
            if len(files) > 1:
                state.set("forward.tls_key", files[1], option.name)
        elif word == "expire" and len(args) == 1:
            state.set("forward.expire", seconds(args[0], label), option.name)
        elif word == "max_fails" and len(args) == 1:
            state.set("forward.max_fails", whole(args[0], label), option.name)
        elif word == "health_check" and args:
            state.set("forward.health_check", seconds(args[0], label), option.name)
            if len(args) > 1:
                # no_rec / domain FQDN: kdns's probe is always `. IN NS` with RD set; any reply
                # marks the upstream up, so the probe's question changes nothing else.
                state.accept(option.name, "kdns probes with `. IN NS`, recursion desired", label)
        elif word == "prefer_udp":
            # A transport knob: the same upstreams give the same answers.
            state.accept(option.name, _PREFER_UDP, label)
        elif word == "failfast_all_unhealthy_upstreams":
            state.accept(option.name, "kdns tries unhealthy upstreams last, then fails", label)
        else:  # force_tcp, except, tls, tls_servername, next, unknown words
            state.refuse(option.name, "not supported yet", label)


_PREFER_UDP = "kdns asks over UDP and retries over TCP when the answer is truncated"


def _stub_domains(state: _State) -> None:
    root = state.settings.get("forward.resolv_conf")
    for zone, (path, token) in state.stub_files.items():
        if root is not None and path == root.value:
            # AKS's documented way to lift its NXDOMAIN templates: a block for the zone that
            # forwards to the same resolv.conf as the root block.
            state.accept(token, f"{zone} goes to the default upstreams, as other names do")
        else:
            state.refuse(token, "a stub domain's servers must be addresses (or the root's file)")
    stubs: dict[str, tuple[str, ...]] = {}
    first: Token | None = None
    for zone, (servers, token) in state.stubs.items():
        if any(within(zone, z) for z in state.cluster_zones):
            state.refuse(token, f"kdns answers every name under {zone} from the cluster")
            continue
        stubs[zone] = servers
        first = token if first is None or token.line < first.line else first
    if first is not None:
        value = tuple(stubs.items())
        state.settings["forward.stub_domains"] = Setting(
            "forward.stub_domains", value, first.where, "forward"
        )


# --- cache -------------------------------------------------------------------------------------


def _cache(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    args = list(directive.args)
    max_ttl, denial_ttl = CACHE_MAX_TTL, CACHE_MAX_DENIAL_TTL
    if args and args[0].text.isdigit():
        max_ttl = denial_ttl = whole(args.pop(0), "cache")
    cache_zones = [normalize_zone(a) for a in args]
    if cache_zones and "" not in cache_zones and not set(zones) <= set(cache_zones):
        state.refuse(directive.name, "kdns caches every forwarded name, not only some zones")
    disabled: dict[str, list[str]] = {"success": [], "denial": []}
    for option in _options(directive):
        word, opts = option.name.text, option.args
        label = f"cache {word}"
        if word in ("success", "denial"):
            if not 1 <= len(opts) <= 3:
                raise option.name.error(f"{word} takes CAPACITY [TTL [MINTTL]]")
            state.set(f"cache.{word}", whole(opts[0], label), option.name)
            if len(opts) >= 2:
                if word == "success":
                    max_ttl = whole(opts[1], label)
                else:
                    denial_ttl = whole(opts[1], label)
            if len(opts) == 3:
                state.accept(option.name, "kdns keeps an answer for its own TTL, no minimum", label)
        elif word == "serve_stale":
            stale = seconds(opts[0], label) if opts else SERVE_STALE
            state.set("cache.serve_stale", stale, option.name)
            if len(opts) < 2 or opts[1].text != "verify":
                state.accept(
                    option.name,
                    "kdns serves a stale answer only once the upstreams fail (verify)",
                    label,
                )
        elif word == "disable":
            _cache_disable(option, zones, disabled, state)
        elif word == "prefetch":
            _cache_prefetch(option, state)
        elif word == "servfail":
            state.accept(option.name, "kdns keeps a SERVFAIL for 5 s", label)
        else:  # keepttl, unknown words
            state.refuse(option.name, "not supported yet", label)
    state.set("cache.max_ttl", max_ttl, directive.name)
    state.set("cache.max_denial_ttl", denial_ttl, directive.name)
    for kind, kind_zones in disabled.items():
        if kind_zones:
            value = tuple(dict.fromkeys(kind_zones))
            state.set(f"cache.disable_{kind}", value, directive.name)


def _cache_prefetch(option: Directive, state: _State) -> None:
    """CoreDNS's `prefetch AMOUNT [DURATION [PERCENTAGE%]]` (defaults 1m and 10%; the
    percentage must fall in 10-90, as its setup checks)."""
    opts = option.args
    if not 1 <= len(opts) <= 3:
        raise option.name.error("prefetch takes AMOUNT [DURATION [PERCENTAGE%]]")
    state.set("cache.prefetch", whole(opts[0], "cache prefetch"), option.name)
    if len(opts) > 1:
        duration = seconds(opts[1], "cache prefetch")
        state.set("cache.prefetch_duration", duration, option.name)
    if len(opts) > 2:
        text = opts[2].text
        if not (text.endswith("%") and text[:-1].isdigit() and 10 <= int(text[:-1]) <= 90):
            raise opts[2].error(f"cache prefetch: {text!r} is not a percentage in 10%-90%")
        state.set("cache.prefetch_percentage", int(text[:-1]), option.name)


def _cache_disable(
    option: Directive, block_zones: list[str], disabled: dict[str, list[str]], state: _State
) -> None:
    """`disable success|denial [ZONES]` (the block's zones when none, plugin/cache/setup.go)."""
    if not option.args or option.args[0].text not in ("success", "denial"):
        raise option.name.error("disable takes success or denial, then zones")
    zones = [normalize_zone(a) for a in option.args[1:]] or block_zones
    through = state.settings.get("dns.fallthrough")
    falls = through is not None and any(
        within(f, z) or within(z, f) for f in through.value for z in zones
    )
    if not falls and all(any(within(z, c) for c in state.cluster_zones) for z in zones):
        # kubeadm's default: cluster answers are never cached, because kdns answers them from
        # its store, which is always current.
        state.accept(option.name, "kdns never caches cluster answers", "cache disable")
        return
    # Forwarded names there (a stub domain, names that fall through): answers of that kind
    # are passed on uncached.
    disabled[option.args[0].text] += [z or "." for z in zones]


# --- hosts, template, rewrite ------------------------------------------------------------------


def _plugin_zones(args: tuple[Token, ...] | list[Token], zones: list[str]) -> list[str]:
    """A plugin's zones (its arguments, else its block's), as the config spells them: "." for
    the root. CoreDNS hands a block only names in its zones, so a zone beyond them is cut."""
    given = [normalize_zone(a) for a in args] or zones
    inside = [z for z in given if any(within(z, b) for b in zones)]
    return list(dict.fromkeys(z or "." for z in inside))


def _fallthrough(option: Directive) -> list[str]:
    """`fallthrough` alone: every name; with zones: those."""
    return [normalize_zone(a) or "." for a in option.args] or ["."]


def _hosts(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    """`hosts [FILE [ZONES]] { IP NAME... | ttl | reload | no_reverse | fallthrough }`: CoreDNS
    reads /etc/hosts when no file is named, inline lines or not (plugin/hosts/setup.go)."""
    args = directive.args
    name = directive.name
    state.set("hosts.file", args[0].text if args else "/etc/hosts", name)
    state.set("hosts.zones", tuple(_plugin_zones(args[1:], zones)), name)
    entries: list[str] = []
    for option in _options(directive):
        word, opts = option.name.text, option.args
        label = f"hosts {word}"
        if word == "ttl" and len(opts) == 1:
            state.set("hosts.ttl", whole(opts[0], label), option.name)
        elif word == "reload" and len(opts) == 1:
            state.set("hosts.reload", seconds(opts[0], label), option.name)
        elif word == "no_reverse" and not opts:
            state.set("hosts.no_reverse", True, option.name)
        elif word == "fallthrough":
            state.set("hosts.fallthrough", tuple(_fallthrough(option)), option.name)
        elif _is_ip(word):
            if not opts:
                raise option.name.error(f"hosts: {word}: a line names at least one host")
            entries.append(" ".join((word, *option.values)))
        else:
            raise option.name.error(f"hosts: unknown option {word!r} or wrong arguments")
    if entries:
        state.set("hosts.entries", tuple(entries), name)


def _k8s_external(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    """`k8s_external [ZONES] { apex APEX; ttl TTL }`: it reads the kubernetes plugin of its own
    block, so kdns takes it in the block that has kubernetes (plugin/k8s_external/setup.go)."""
    name = directive.name
    if not main:
        state.refuse(name, "kdns serves k8s_external beside the kubernetes plugin's block only")
        return
    external = [z for z in _plugin_zones(directive.args, zones) if z != "."]
    if not external:
        raise name.error("k8s_external: kdns cannot be authoritative for the root zone")
    state.set("dns.external_zones", tuple(external), name)
    for option in _options(directive):
        word, opts = option.name.text, option.args
        if word == "apex" and len(opts) == 1:
            apex = opts[0].text.lower().strip(".")
            if not apex or "." in apex:
                raise option.name.error("k8s_external apex: one DNS label")
            state.set("dns.external_apex", apex, option.name)
        elif word == "ttl" and len(opts) == 1:
            ttl = whole(opts[0], "k8s_external ttl")
            if ttl > 3600:
                raise option.name.error("k8s_external ttl: at most 3600 seconds")
            state.set("dns.external_ttl", ttl, option.name)
        else:
            state.refuse(option.name, "unknown option", directive=f"k8s_external {word}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True


def _template(directive: Directive, zones: list[str], state: _State) -> None:
    """`template CLASS TYPE [ZONES] { match, answer, authority, additional, rcode,
    fallthrough }`, one rule per directive, in the order written (plugin/template/setup.go)."""
    args = directive.args
    if len(args) < 2:
        raise directive.name.error("template takes a class, a type and, optionally, zones")
    qclass, qtype = args[0].text.upper(), args[1].text.upper()
    if qclass not in ("IN", "ANY"):
        state.refuse(args[0], "kdns answers only class IN", "template")
        return
    rule: dict[str, Any] = {"class": qclass, "type": qtype}
    rule["zones"] = _plugin_zones(args[2:], zones)
    lists: dict[str, list[str]] = {"match": [], "answer": [], "authority": [], "additional": []}
    for option in _options(directive):
        word, values = option.name.text, list(option.values)
        if word in lists and values:
            lists[word] += values
        elif word == "rcode" and len(values) == 1:
            rule["rcode"] = values[0].upper()
        elif word == "fallthrough":
            rule["fallthrough"] = _fallthrough(option)
        elif word == "upstream":
            state.accept(option.name, "deprecated in CoreDNS; ignored", "template upstream")
        else:
            raise option.name.error(f"template: unknown option {word!r} or missing arguments")
    rule.update({k: v for k, v in lists.items() if v})
    rule["where"] = directive.name.where
    state.templates.append((rule, directive.name))


REWRITE_MATCHES = ("exact", "prefix", "suffix", "substring", "regex")


def _rewrite(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    """`rewrite [continue|stop] name [MATCH] FROM TO [answer auto|name RE TO]`, or the block
    form `rewrite [continue|stop] { name ... / answer name ... }` (plugin/rewrite/setup.go)."""
    if "" not in zones:
        state.refuse(
            directive.name, "kdns rewrites in the root block only (its rules see every name)"
        )
        return
    args = list(directive.args)
    stop = True
    if args and args[0].text in ("continue", "stop"):
        stop = args.pop(0).text == "stop"
    if directive.block is not None:
        if args:
            raise directive.name.error("rewrite: a rule block takes no rule on its own line")
        lines = [[o.name, *o.args] for o in directive.block]
        words = [t for line in lines for t in line]  # `name ...` then `answer ...`: one rule
        args = words
    if not args or args[0].text != "name":
        what = args[0].text if args else "nothing"
        state.refuse(directive.name, f"only `rewrite name` is supported (here {what})")
        return
    rule = _rewrite_rule(directive, args[1:], state)
    if rule is not None:
        rule.update(stop=stop, where=directive.name.where)
        state.rewrites.append((rule, directive.name))


def _rewrite_rule(directive: Directive, args: list[Token], state: _State) -> dict[str, Any] | None:
    words = [a.text for a in args]
    match = "exact"
    if words and words[0] in REWRITE_MATCHES and len(words) >= 3:
        match = words.pop(0)
    if len(words) < 2:
        raise directive.name.error("rewrite name takes FROM and TO")
    rule: dict[str, Any] = {"match": match, "from": words[0], "to": words[1]}
    rest = words[2:]
    if not rest:
        return rule
    if rest[0] != "answer" or len(rest) < 2:
        raise directive.name.error(f"rewrite name: {rest[0]!r}: expected `answer auto|name`")
    if rest[1:] == ["auto"]:
        rule["answer"] = "auto"
    elif rest[1] == "name" and len(rest) == 4:
        rule.update(answer="name", answer_from=rest[2], answer_to=rest[3])
    elif rest[1] == "value":
        state.refuse(directive.name, "`answer value` is not supported yet", "rewrite")
        return None
    else:
        raise directive.name.error("rewrite name: answer takes auto, or name FROM TO")
    return rule


def _rules(state: _State) -> None:
    """Templates and rewrites are one key each, a list of rules in the order written."""
    for key, rules in (("dns.templates", state.templates), ("dns.rewrites", state.rewrites)):
        for rule, token in rules:
            try:
                KEYS[key].check([rule])  # each rule on its own, so the error names its line
            except Invalid as e:
                problem = e.message.removeprefix("rule 1, ").removeprefix("rule 1: ")
                raise token.error(f"{token.text}: {problem}") from None
        if rules:
            first = rules[0][1]
            value = tuple(rule for rule, _ in rules)
            state.settings[key] = Setting(key, value, first.where, first.text)


# --- the rest ----------------------------------------------------------------------------------


def _hostport(token: Token | None, default: str) -> str:
    """CoreDNS's listen address (`:9153`, `localhost:9153`, `0.0.0.0:9153`) as kdns spells it."""
    text = token.text if token is not None else default
    host, _, port = text.rpartition(":")
    if host in ("", "*"):
        host = "0.0.0.0"
    elif host == "localhost":
        host = "127.0.0.1"
    return f"{host}:{port}"


def _health(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    state.set("dns.health_addr", _hostport(_first(directive), DEFAULT_HEALTH), directive.name)
    for option in _options(directive):
        if option.name.text == "lameduck" and len(option.args) == 1:
            state.set("dns.lameduck", seconds(option.args[0], "health lameduck"), option.name)
        else:
            raise option.name.error(f"health: unknown option {option.name.text!r}")


def _ready(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    state.set("dns.ready_addr", _hostport(_first(directive), DEFAULT_READY), directive.name)


def _prometheus(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    state.set("dns.metrics_addr", _hostport(_first(directive), DEFAULT_PROMETHEUS), directive.name)
    # Dashboards and alerts written for CoreDNS read coredns_* names.
    state.set("dns.metrics_coredns_names", True, directive.name)


def _log(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    state.set("logging.query_log", "text", directive.name)
    if directive.args or directive.block:
        state.accept(
            directive.name, "kdns logs every query in CoreDNS's common log format, for all names"
        )


def _reload(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    interval = seconds(directive.args[0], "reload") if directive.args else DEFAULT_RELOAD
    state.set("dns.reload_interval", interval, directive.name)


def _loadbalance(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    if directive.values not in ((), ("round_robin",)):
        state.refuse(directive.name, "only round_robin is supported")
        return
    state.set("dns.loadbalance", "round_robin", directive.name)


def _autopath(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    if directive.values != ("@kubernetes",):
        state.refuse(directive.name, "only `autopath @kubernetes` is supported")
        return
    state.set("dns.autopath", True, directive.name)


def _bind(directive: Directive, zones: list[str], main: bool, state: _State) -> None:
    if len(directive.args) != 1 or directive.block or not _is_address(directive.args[0].text):
        state.refuse(directive.name, "kdns listens on one address: give one IP")
        return
    port = state.settings["dns.addr"].value.rpartition(":")[2]
    host = directive.args[0].text
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    old = state.settings["dns.addr"]
    if old.value.startswith("0.0.0.0:"):
        state.settings["dns.addr"] = Setting("dns.addr", address, directive.where, "bind")
    else:
        state.set("dns.addr", address, directive.name)


def _first(directive: Directive) -> Token | None:
    return directive.args[0] if directive.args else None


_HANDLERS = {
    "kubernetes": _kubernetes,
    "forward": _forward,
    "cache": _cache,
    "health": _health,
    "ready": _ready,
    "prometheus": _prometheus,
    "log": _log,
    "reload": _reload,
    "loadbalance": _loadbalance,
    "autopath": _autopath,
    "bind": _bind,
    "hosts": _hosts,
    "rewrite": _rewrite,
    "k8s_external": _k8s_external,
}


def _absent(blocks: tuple[ServerBlock, ...], state: _State) -> None:
    """What CoreDNS does when a directive is missing, where kdns's default differs."""
    used = {d.name.text for b in blocks for d in b.directives}
    where = blocks[0].keys[0]
    if "cache" not in used:
        state.set("cache.max_ttl", 0, where)
        state.set("cache.max_denial_ttl", 0, where)
    if "dns.lameduck" not in state.settings:
        state.set("dns.lameduck", 0.0, where)  # CoreDNS stops at once without `health { lameduck }`
    if "reload" not in used:
        state.set("dns.reload_interval", 0.0, where)
    if "loadbalance" not in used:
        state.set("dns.loadbalance", "off", where)
    if "forward.upstreams" not in state.settings:
        state.set("forward.upstreams", (), where)  # nothing forwards the other names

"""Upstreams and the forwarder's config: what `forward`, `stubDomains` and resolv.conf say.

- `Upstream`: one upstream resolver (address, port, `tls://` for DNS over TLS, RFC 7858).
- `ForwardConfig`: everything a `Forwarder` (kdns/dns/forward.py) is built from — upstreams,
  stub domains, timeouts, CoreDNS's forward options (`policy`, `force_tcp`, `except`,
  `max_concurrent`, `max_fails`, `health_check`, the `tls` ones) and the upstream cache's
  section; frozen, so a reload builds a new one.
- `parse_upstreams(values, where)`: `IP`, `IP:PORT`, `[V6]:PORT`, `tls://…` strings →
  Upstreams; a bad one raises ValueError naming `where` and the value.
- `resolv_conf_nameservers(path)`, `resolv_conf_search(path)`: a resolv.conf's `nameserver`
  lines (at most 15) and `search` domains; an unreadable file gives ().
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from kdns.config import CacheSection


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53
    tls: bool = False  # DNS over TLS (RFC 7858), CoreDNS's `tls://IP`
    # The hash of the three, computed once: every forwarded miss looks its upstream up in
    # several dicts (health, metric names), and a dataclass hashes a fresh tuple per lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.host, self.port, self.tls)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"tls://{address}" if self.tls else address

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    upstreams: tuple[Upstream, ...] = ()
    stub_domains: tuple[tuple[str, tuple[Upstream, ...]], ...] = ()
    timeout: float = 2.0  # per upstream attempt
    budget: float = 5.0  # for the whole question, every upstream included
    max_concurrent: int = 1000
    max_fails: int = 2
    health_check: float = 0.5
    cache: CacheSection = field(default_factory=CacheSection)  # sizes, TTL caps, serve_stale
    servfail_ttl: int = 5
    stale_ttl: int = 30  # the TTL of a stale answer (RFC 8767 §4 suggests 30 s)
    # CoreDNS's forward options: the order upstreams are tried in (random, round_robin,
    # sequential); TCP for every exchange; names under `except_zones` are not forwarded.
    policy: str = "random"
    force_tcp: bool = False
    except_zones: tuple[str, ...] = ()
    # `tls://` upstreams: the name their certificate must hold (CoreDNS's `tls_servername`;
    # "" = their address), `tls CERT KEY CA`, and how long an idle connection is reused.
    tls_servername: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    expire: float = 10.0


def parse_upstreams(values: Iterable[str], where: str) -> tuple[Upstream, ...]:
    """`IP`, `IP:PORT` or `[V6]:PORT` strings → Upstreams; ValueError names the bad one. A
    `tls://` prefix is DNS over TLS, on port 853 unless given (RFC 7858 §3.1)."""
    from kdns.config import parse_hostport

    out = []
    for value in values:
        text = str(value)
        tls = text.lower().startswith("tls://")
        text = text[len("tls://") :] if tls else text.removeprefix("dns://")
        try:
            host, port = parse_hostport(text, 853 if tls else 53)
        except ValueError as e:
            raise ValueError(f"{where}: {value!r}: {e}") from None
        out.append(Upstream(host, port or (853 if tls else 53), tls))
    return tuple(out)


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> tuple[Upstream, ...]:
    """The `nameserver` lines of a resolv.conf (CoreDNS: `forward . /etc/resolv.conf`)."""
    servers = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1].split("%", 1)[0])
    except OSError:
        return ()
    return parse_upstreams(servers[:15], path)


def resolv_conf_search(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The `search` domains of a resolv.conf: autopath tries them after the cluster's own."""
    domains: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("search", "domain"):
                    domains = [d.rstrip(".").lower() for d in parts[1:]]
    except OSError:
        return ()
    return tuple(domains)

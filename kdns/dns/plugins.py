"""The plugins a Corefile puts before the cluster zones: rewrite, template and hosts, in
CoreDNS's plugin order (plugin.cfg: rewrite, autopath, cache, template, hosts, …, kubernetes,
forward).

Contract (pure):
- `Plugins.from_config(config, hosts_file_text)` is None when the config has none of them, so
  the handler's path for everything else stays as it was (one `is None` test on a cache miss).
- `rewrite(qname)` is the rewrite run (kdns/dns/rewrite.py) or None; `answer(qname, qtype)`
  is the first of template and hosts that answers (`PluginAnswer`, with the plugin's name for
  metrics), or None: the question goes on to the cluster zones, then the upstreams.
- `load_hosts_file(text)` serves the hosts file's new text (the inline lines kept), from the
  next question on; `hosts_file_text` is the text served, so the caller re-reads the file and
  loads it only when it changed (CoreDNS's hosts `reload`).
- `renamed(query, response, revert, ra)` is `response` (to the renamed question) re-encoded for
  the client's question, record owners renamed by `revert` — CoreDNS's rewrite always restores
  the question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dnslib import RR, DNSLabel, DNSRecord

from kdns.config import Config, HostsSection
from kdns.dns import wire
from kdns.dns.hosts import Hosts, parse_hosts
from kdns.dns.rewrite import Rewriter, Rewritten
from kdns.dns.template import Templates
from kdns.dns.wire import Query


@dataclass(frozen=True, slots=True)
class PluginAnswer:
    plugin: str  # "template" or "hosts"
    rcode: int
    answer: list[RR]
    authority: list[RR]
    additional: list[RR]
    origin: str = ""  # for people: the rule or file behind it (kdns explain)


class Plugins:
    def __init__(
        self,
        rewriter: Rewriter | None,
        templates: Templates | None,
        hosts: HostsSection | None,
        hosts_file_text: str = "",
    ) -> None:
        self.rewriter = rewriter
        self.templates = templates
        self.hosts_config = hosts
        self.hosts: Hosts | None = None
        self.hosts_file_text = ""
        self.hosts_origin = _hosts_origin(hosts) if hosts is not None else ""
        self.load_hosts_file(hosts_file_text)

    @classmethod
    def from_config(cls, config: Config, hosts_file_text: str = "") -> Plugins | None:
        dns = config.dns
        if not (dns.rewrites or dns.templates or config.hosts.enabled):
            return None
        return cls(
            Rewriter(dns.rewrites) if dns.rewrites else None,
            Templates(dns.templates) if dns.templates else None,
            config.hosts if config.hosts.enabled else None,
            hosts_file_text,
        )

    def load_hosts_file(self, text: str) -> None:
        if self.hosts_config is None:
            return
        # CoreDNS searches its inline lines first, then the file's.
        table = parse_hosts("\n".join(self.hosts_config.entries))
        self.hosts = Hosts(self.hosts_config, parse_hosts(text, table))
        self.hosts_file_text = text

    def rewrite(self, qname: str) -> Rewritten | None:
        return self.rewriter.rewrite(qname) if self.rewriter is not None else None

    def answer(self, qname: str, qtype: int) -> PluginAnswer | None:
        if self.templates is not None:
            found = self.templates.answer(qname, qtype)
            if found is not None:
                where = found.rule.where if found.rule is not None else ""
                origin = f"the template at {where}" if where else "a template rule (dns.templates)"
                return PluginAnswer(
                    "template",
                    found.rcode,
                    found.answer,
                    found.authority,
                    found.additional,
                    origin,
                )
        if self.hosts is not None:
            hit = self.hosts.answer(qname, qtype)
            if hit is not None:
                return PluginAnswer("hosts", hit.rcode, hit.answer, [], [], self.hosts_origin)
        return None


def _hosts_origin(config: HostsSection) -> str:
    sources = [f"the hosts file {config.file}"] if config.file else []
    if config.entries:
        sources.append("the inline hosts lines (hosts.entries)")
    return "hosts: " + " and ".join(sources)


def renamed(
    query: Query, response: bytes, revert: Callable[[str], str], recursion_available: bool
) -> bytes:
    """`response` for the client's `query`: its question, answer owners renamed back."""
    found = DNSRecord.parse(response)
    for rr in (*found.rr, *found.auth, *found.ar):
        rr.rname = DNSLabel(revert(str(rr.rname).lower().rstrip(".")) + ".")
    return wire.encode(
        query,
        found.header.rcode,
        found.rr,
        found.auth,
        [rr for rr in found.ar if rr.rtype != wire.OPT],
        authoritative=bool(found.header.aa),
        recursion_available=recursion_available,
    )

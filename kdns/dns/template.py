"""CoreDNS's template plugin, for its common uses: a fixed answer, or an rcode (NXDOMAIN), for
the names a regular expression matches.

Contract (pure):
- `Templates(rules, ttl)` compiles the rules (`kdns.config.TemplateRule`); `answer(qname,
  qtype)` (lower case, no trailing dot) returns a `TemplateAnswer` or None: the question goes
  on to the next handler. The rules are tried in order, as CoreDNS's `ServeDNS` does
  (plugin/template/template.go):
  - a rule whose zones, class or type do not take the question is skipped;
  - a rule that does, and whose regexes one matches (against the name with its trailing dot),
    answers: its rcode, and its answer/authority/additional lines as zone-file text with
    `{{ .Name }}`, `{{ .Zone }}`, `{{ .Class }}`, `{{ .Type }}`, `{{ index .Match N }}` and
    `{{ .Group.NAME }}` filled in;
  - a rule whose regexes all miss skips to the next rule in its `fallthrough` zones, and
    otherwise answers SERVFAIL.
- A line that is not a record once filled in answers SERVFAIL, as CoreDNS does when its
  template output does not parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, RR, DNSError

from kdns.config import TEMPLATE_FIELD, TemplateRule


@dataclass(frozen=True, slots=True)
class TemplateAnswer:
    rcode: int
    answer: list[RR]
    authority: list[RR]
    additional: list[RR]
    rule: TemplateRule | None = None  # the rule that answered (for explain)


def _within(name: str, zones: tuple[str, ...]) -> str | None:
    """The longest zone of `zones` holding `name` ("." for the root), else None."""
    best = None
    for zone in zones:
        holds = zone == "." or name == zone or name.endswith("." + zone)
        if holds and (best is None or best == "." or len(zone) > len(best)):
            best = zone
    return best


@dataclass(frozen=True, slots=True)
class _Rule:
    rule: TemplateRule
    regexes: tuple[re.Pattern[str], ...]
    qtype: int | None  # None: any type


class Templates:
    def __init__(self, rules: tuple[TemplateRule, ...]) -> None:
        self.rules = tuple(
            _Rule(r, tuple(re.compile(m) for m in r.match), _qtype(r.qtype)) for r in rules
        )
        self.zones = tuple(z for r in rules for z in r.zones)

    def answer(self, qname: str, qtype: int) -> TemplateAnswer | None:
        if _within(qname, self.zones) is None:
            return None
        fqdn = qname + "."
        for compiled in self.rules:
            rule = compiled.rule
            zone = _within(qname, rule.zones)
            if zone is None:
                continue
            if compiled.qtype is not None and qtype not in (compiled.qtype, QTYPE.ANY):
                continue
            match = next((m for r in compiled.regexes if (m := r.search(fqdn))), None)
            if match is None:
                if _within(qname, rule.fallthrough) is not None:
                    continue
                return TemplateAnswer(RCODE.SERVFAIL, [], [], [], rule)
            return _render(rule, match, fqdn, zone, qtype)
        return None


def _qtype(name: str) -> int | None:
    if name == "ANY":
        return None
    return int(getattr(QTYPE, name))


def _render(
    rule: TemplateRule, match: re.Match[str], fqdn: str, zone: str, qtype: int
) -> TemplateAnswer:
    values = {
        ".Name": fqdn,
        ".Zone": "." if zone == "." else zone + ".",
        ".Class": "IN",
        ".Type": QTYPE.get(qtype),
    }
    groups = (match.group(0), *match.groups())
    named = match.groupdict()

    def fill(found: re.Match[str]) -> str:
        expression = found.group(1)
        if expression.startswith("index .Match "):
            index = int(expression.rsplit(" ", 1)[1])
            return (groups[index] or "") if index < len(groups) else ""
        if expression.startswith(".Group."):
            return named.get(expression[len(".Group.") :]) or ""
        return values[expression]

    try:
        sections = [
            [rr for line in lines for rr in RR.fromZone(TEMPLATE_FIELD.sub(fill, line))]
            for lines in (rule.answer, rule.authority, rule.additional)
        ]
    except (DNSError, ValueError, IndexError):
        return TemplateAnswer(RCODE.SERVFAIL, [], [], [], rule)
    return TemplateAnswer(getattr(RCODE, rule.rcode), *sections, rule)

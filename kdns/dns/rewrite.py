"""CoreDNS's `rewrite name`: the question's name is renamed before it is answered, and the
answer is renamed back.

Contract (pure):
- `Rewriter(rules)` compiles the rules (`kdns.config.RewriteRule`). `rewrite(qname)` (lower
  case, no trailing dot) returns None when no rule matches, else a `Rewritten`: the name to
  answer (`name`, lower case, no trailing dot; "" when the result is not a valid name, which
  CoreDNS answers SERVFAIL) and `revert(owner)`, which renames an answer record's owner back.
- Rules run in order on the name as the rules before them left it; a matching `stop` rule
  (the default) ends the run, a `continue` rule lets the next rules see its result
  (plugin/rewrite/rewrite.go).
- Matching is CoreDNS's, on the fully qualified name: `exact` and `suffix` compare whole
  names or a name's end (FROM and TO are taken as fully qualified), `prefix` and `substring`
  the text as written (substring replaces the first occurrence), `regex` searches the name
  with its trailing dot and builds TO from `{0}`, `{1}`… (the match and its groups).
- Answers: an exact rule, and a rule with `answer auto`, rename records owned by the name it
  produced back to the name it was given (auto also undoes a prefix/suffix/substring edit);
  `answer name RE TO` renames every owner RE matches. The question is always the client's own
  (the caller answers under the name asked).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kdns.config import RewriteRule

_GROUP = re.compile(r"\{(\d+)\}")


def _fqdn(name: str) -> str:
    return name.lower() if name.endswith(".") else name.lower() + "."


def _fill(template: str, match: re.Match[str]) -> str:
    groups = (match.group(0), *match.groups())

    def group(found: re.Match[str]) -> str:
        index = int(found.group(1))
        return (groups[index] or "") if index < len(groups) else ""

    return _GROUP.sub(group, template)


def _valid(fqdn: str) -> bool:
    labels = fqdn[:-1].split(".")
    return len(fqdn) <= 254 and all(0 < len(label) <= 63 for label in labels)


@dataclass(frozen=True, slots=True)
class Rewritten:
    name: str
    revert: Callable[[str], str]
    rules: tuple[RewriteRule, ...] = ()  # the rules that matched, in order (for explain)


class _Rule:
    def __init__(self, rule: RewriteRule) -> None:
        self.rule = rule
        exact_like = rule.match in ("exact", "suffix")
        self.source = _fqdn(rule.source) if exact_like else rule.source.lower()
        self.target = _fqdn(rule.target) if exact_like else rule.target.lower()
        self.regex = re.compile(rule.source) if rule.match == "regex" else None
        self.answer_regex = re.compile(rule.answer_from) if rule.answer == "name" else None

    def apply(self, fqdn: str) -> str | None:
        """The renamed name (fully qualified), or None when this rule does not match."""
        source, target, match = self.source, self.target, self.rule.match
        if match == "exact":
            return target if fqdn == source else None
        if match == "prefix":
            return target + fqdn[len(source) :] if fqdn.startswith(source) else None
        if match == "suffix":
            return fqdn[: -len(source)] + target if fqdn.endswith(source) else None
        if match == "substring":
            return fqdn.replace(source, target, 1) if source in fqdn else None
        assert self.regex is not None
        found = self.regex.search(fqdn)
        return _fqdn(_fill(self.rule.target, found)) if found else None

    def reverter(self, given: str, produced: str) -> Callable[[str], str]:
        """What renames an answer owner back, for a run that turned `given` into `produced`."""
        rule = self.rule
        if self.answer_regex is not None:
            pattern, template = self.answer_regex, rule.answer_to

            def by_name(owner: str) -> str:
                found = pattern.search(owner)
                return _fqdn(_fill(template, found)) if found else owner

            return by_name
        if rule.match == "exact" or (rule.answer == "auto" and rule.match == "regex"):
            return lambda owner: given if owner == produced else owner
        if rule.answer != "auto":
            return lambda owner: owner
        source, target = self.source, self.target
        if rule.match == "prefix":
            return lambda o: source + o[len(target) :] if o.startswith(target) else o
        if rule.match == "suffix":
            return lambda o: o[: -len(target)] + source if o.endswith(target) else o
        return lambda o: o.replace(target, source, 1)


class Rewriter:
    def __init__(self, rules: tuple[RewriteRule, ...]) -> None:
        self.rules = tuple(_Rule(r) for r in rules)

    def rewrite(self, qname: str) -> Rewritten | None:
        fqdn = _fqdn(qname)
        reverters = []
        applied = []
        for rule in self.rules:
            produced = rule.apply(fqdn)
            if produced is None:
                continue
            applied.append(rule.rule)
            reverters.append(rule.reverter(fqdn, produced))
            fqdn = produced
            if rule.rule.stop:
                break
        if not reverters:
            return None

        def revert(owner: str) -> str:
            owner = _fqdn(owner)
            for undo in reversed(reverters):
                owner = undo(owner)
            return owner.rstrip(".")

        return Rewritten(fqdn.rstrip(".") if _valid(fqdn) else "", revert, tuple(applied))

"""Kubernetes label selectors in their text form (`app=web,tier in (a,b),!canary`).

Contract (pure):
- `parse(text)` returns a `Selector` or raises `SelectorError` naming the requirement at fault.
  The syntax is the API server's `labelSelector` parameter (apimachinery `labels.Parse`):
  requirements joined by commas, each one of `KEY`, `!KEY`, `KEY=V`, `KEY==V`, `KEY!=V`,
  `KEY in (V,...)`, `KEY notin (V,...)`, `KEY>N`, `KEY<N`. The empty text selects everything.
- `Selector.matches(labels)` is true when every requirement holds, as the API server decides:
  `!=` and `notin` also hold for an object without the label; `in`, `=`, `>` and `<` need it.
- `str(selector)` is the text to send as `labelSelector`, so the API server and kdns (manifests)
  select the same objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# A label value, or the name part of a key: at most 63 characters (Kubernetes "Labels and
# Selectors", syntax and character set).
_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<absent>[^\s=!<>(),]+)"
    r"|(?P<key>[^\s=!<>(),]+)\s*(?:(?P<op>==|=|!=|<|>)\s*(?P<value>[^\s=!<>(),]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)


class SelectorError(ValueError):
    """A selector the API server would refuse; the text names the requirement."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # exists, !, =, !=, in, notin, <, >
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        op = self.operator
        if op == "exists":
            return present
        if op == "!":
            return not present
        if op in ("=", "in"):
            return present and value in self.values
        if op in ("!=", "notin"):
            return not present or value not in self.values
        # `<` and `>` compare whole numbers; a label that is no number fails (apimachinery).
        if not present or not re.fullmatch(r"-?\d+", value):
            return False
        bound = int(self.values[0])
        return int(value) < bound if op == "<" else int(value) > bound

    def __str__(self) -> str:
        op = self.operator
        if op == "exists":
            return self.key
        if op == "!":
            return f"!{self.key}"
        if op in ("in", "notin"):
            return f"{self.key} {op} ({','.join(self.values)})"
        return f"{self.key}{op}{self.values[0]}"


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def parse(text: str) -> Selector:
    return Selector(tuple(_requirement(part) for part in _split(text)))


def _split(text: str) -> list[str]:
    """The requirements: commas separate them, except inside a set's parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"{text!r}: unbalanced parentheses")
    parts.append("".join(current))
    return [] if not text.strip() else parts


def _requirement(part: str) -> Requirement:
    found = _REQUIREMENT.match(part)
    if found is None:
        raise SelectorError(f"{part.strip()!r}: expected KEY, !KEY, KEY=V, KEY!=V, KEY in (V,...)")
    if found["not"]:
        return Requirement(_key(found["absent"]), "!")
    key = _key(found["key"])
    if found["op"]:
        op = "=" if found["op"] == "==" else found["op"]
        value = found["value"]
        if op in ("<", ">") and not re.fullmatch(r"-?\d+", value):
            raise SelectorError(f"{part.strip()!r}: {op} takes a whole number")
        return Requirement(key, op, (_value(value, part),))
    if found["setop"]:
        values = [v.strip() for v in found["values"].split(",")]
        if values == [""]:
            raise SelectorError(f"{part.strip()!r}: a set needs at least one value")
        return Requirement(key, found["setop"], tuple(_value(v, part) for v in values))
    return Requirement(key, "exists")


def _key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if (slash and not _PREFIX.match(prefix)) or not _NAME.match(name):
        raise SelectorError(f"{key!r} is not a label key (e.g. app or example.com/tier)")
    return key


def _value(value: str, part: str) -> str:
    if value and not _NAME.match(value):
        raise SelectorError(f"{part.strip()!r}: {value!r} is not a label value")
    return value

"""Block-style YAML as `kubectl get -o yaml` and `yaml.dump` write it → plain data, without libyaml.

Most manifest files use a small part of YAML: block mappings and sequences (the "indentless"
`- ` under a key too), plain scalars on one line, single-quoted and simple double-quoted
strings, `{}` and `[]`, whole-line comments. This module reads exactly that part, line by
line, about three times as fast as building libyaml's nodes and constructing from them (0.43
against 1.3 CPU-s for 10k Services and their EndpointSlices), and gives up on anything else.

Contract:
- `read(text)` yields `(index, obj, line, marks)` per YAML document of `text`: `index` as
  libyaml counts documents (an explicit empty document counts, an implicit one does not),
  `obj` the plain data PyYAML's safe loader builds from it (the same tag resolution: `80` is
  an int, `true` a bool, `'80'` a str; a repeated key keeps its last value), `line` the
  1-based line of its first field, and `marks` the lines a `kind: List` needs: for every
  mapping holding an `items` key, id(mapping) → that key's line, and for every `items` list,
  id(list) → each item's line.
- It raises `OutsideSubset` as soon as the text leaves the subset (anchors, aliases, tags,
  block or multi-line scalars, flow collections other than `{}`/`[]`, escapes in
  double-quoted strings, trailing comments, tabs or any character outside printable ASCII,
  `...`, a root that is not a mapping, indentation YAML would refuse, merge keys). The
  documents yielded before are then to be discarded and the whole text read with libyaml,
  which also reports any syntax error: whatever this module accepts, libyaml reads to the
  same data.
- Pure: no I/O. Two module-wide caches (a line's meaning, a scalar's value) are bounded and
  hold immutable values; each update is one dict assignment, so a read in another thread (a
  reload runs in a worker thread) sees an entry whole or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml


class OutsideSubset(Exception):
    """The text uses YAML this reader does not handle: read it with libyaml instead."""


# A plain scalar on one line that can be read only one way in block context: it starts with
# no indicator character (a "-" only before a letter, digit or ".", so never "- " or "---"),
# and holds no ": ", no " #", no flow brackets, no quote and no trailing space.
_PLAIN = (
    r"(?:[A-Za-z0-9_./=+~^$()<]|-(?=[A-Za-z0-9_./]))"
    r"(?:[A-Za-z0-9_./=+~^$()<>@,;?*!&|%-]|:(?=[^ ])| +(?=[^ #]))*"
)
# One line: its indent, a "- " prefix, then either "key:" with an optional value, or (after
# "- ") a scalar item, or a whole-line comment (every group None but the indent). The key is
# what comes before the first ": " (or a final ":"), and is checked to be a plain scalar when
# it is first met, as values are.
_LINE = re.compile(r"( *)(?:#.*|(- +)?(?:([^:# ][^:]*):(?: +(.*))?|(.+)))")
_PLAIN_RE = re.compile(_PLAIN)
_SINGLE_RE = re.compile(r"'((?:[^']|'')*)'")
_DOUBLE_RE = re.compile(r'"([^"\\]*)"')
# Control characters (tabs and "\r" among them) and, checked apart, non-ASCII ones: libyaml
# has rules for each (and reports where they are), so such a text goes to it.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
# libyaml refuses a simple key longer than 1024 characters.
_MAX_KEY = 1000

_STR = "tag:yaml.org,2002:str"
# The tags a plain scalar may resolve to here; a merge key ("<<") or "=" sends the text to
# libyaml, whose constructor has rules for them.
_CONSTRUCTED = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "timestamp")
)
_IMPLICIT = yaml.SafeLoader.yaml_implicit_resolvers
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_MISSING = object()
_known: dict[str, Any] = {}  # scalar text → its value (immutable values only), bounded
_MAX_KNOWN = 8192
_MAPPING, _SEQUENCE, _ITEMS = 0, 1, 2  # what a collection is (sequences are true)


def read(text: str) -> Iterator[tuple[int, dict[Any, Any], int, dict[int, Any]]]:
    """The documents of `text` (see the module contract); raises OutsideSubset.

    One long loop on purpose: it runs once per line (over half a million for 10k Services),
    and a function call per line would cost a fifth of its time. What a line says is
    `_parse_line`'s; here is only where it goes.
    """
    if not text.isascii() or _CONTROL.search(text):
        raise OutsideSubset
    index = 0
    explicit = False  # the current document began with "---"
    root: dict[Any, Any] | None = None
    first_line = 0
    marks: dict[int, Any] = {}
    # The open collections, innermost last: (column, collection, _MAPPING/_SEQUENCE/_ITEMS). A
    # mapping's column is its keys', a sequence's its "-"s'. The innermost is kept in locals.
    stack: list[tuple[int, Any, int]] = []
    top_col, top, what = -1, None, _MAPPING
    # The mapping and key of a "key:" without a value, and the key's column: the next line
    # may open a block under it, else the value stays null.
    pending: tuple[dict[Any, Any], Any, int] | None = None
    parsed = _parsed
    lineno = 0
    for piece in _pieces(text):
        for line in piece.split("\n"):
            lineno += 1
            entry = parsed.get(line)
            if entry is None:
                entry = _parse_line(line)
            form, col, dash, name, scalar = entry
            if form < _KEY_VALUE:
                if form == _NOTHING:
                    continue
                # "---": a new document.
                if root is not None:
                    yield index, root, first_line, marks
                    index += 1
                elif explicit:
                    index += 1  # "---" then nothing: libyaml gives a null document
                explicit = True
                root, marks, stack, pending = None, {}, [], None
                continue
            if root is None:
                if col or dash or form == _ITEM:
                    raise OutsideSubset  # the root is no block mapping at column 0
                root = {}
                first_line = lineno
                top_col, top, what = 0, root, _MAPPING
                stack.append((top_col, top, what))
            if pending is not None:
                above, key, key_col = pending
                pending = None
                if dash and col >= key_col:
                    # A sequence under the key (at the key's column too: YAML's indentless one).
                    top_col, top, what = col, [], _SEQUENCE
                    above[key] = top
                    if key == "items":
                        marks[id(top)] = []
                        what = _ITEMS
                    stack.append((top_col, top, what))
                elif col > key_col:
                    top_col, top, what = col, {}, _MAPPING
                    above[key] = top
                    stack.append((top_col, top, what))
            # Close what this line is outside of; a sequence ends at a line of its column
            # that is no "- " item.
            while top_col > col or (what and top_col == col and not dash):
                stack.pop()
                if not stack:
                    raise OutsideSubset
                top_col, top, what = stack[-1]
            if top_col != col:
                raise OutsideSubset  # indented unlike its siblings (or a multi-line scalar)
            if what:
                # An item of the sequence: a scalar, or the first key of a mapping.
                if what == _ITEMS:
                    marks[id(top)].append(lineno)
                if form == _ITEM:
                    top.append(scalar)
                    continue
                col += dash
                top_col, top, what = col, {}, _MAPPING
                stack[-1][1].append(top)
                stack.append((top_col, top, what))
            elif dash or form == _ITEM:
                raise OutsideSubset  # an item in a mapping
            if form == _KEY_VALUE:
                top[name] = scalar
            else:
                top[name] = None
                pending = (top, name, col)
            if name == "items":
                marks[id(top)] = lineno
    if root is not None:
        yield index, root, first_line, marks


# What a line is: nothing (empty, a comment), "---", "key: value", "key:", "- scalar".
_NOTHING, _MARKER, _KEY_VALUE, _KEY, _ITEM = range(5)
# A line's text → (form, column, length of its "- " prefix, key, value). Manifests repeat most
# of their lines ("    protocol: TCP", "  - name: http"), and what a line says does not
# depend on the lines around it: it is read once. Bounded; only immutable values are kept.
_parsed: dict[str, tuple[int, int, int, Any, Any]] = {
    "": (_NOTHING, 0, 0, None, None),
    "---": (_MARKER, 0, 0, None, None),
}
_MAX_PARSED = 8192
_MAX_PARSED_LINE = 120


def _parse_line(line: str) -> tuple[int, int, int, Any, Any]:
    """What one line says (see `_parsed`); raises OutsideSubset."""
    found = _LINE.fullmatch(line)
    if found is None:
        raise OutsideSubset  # not reached: any line but "" matches, at worst as an item
    indent, dash, key, value, item = found.groups()
    col = len(indent)
    dash_len = len(dash) if dash else 0
    if key is None:
        if item is None:
            return (_NOTHING, col, 0, None, None)  # a comment
        if dash is None:
            raise OutsideSubset  # a scalar where a key belongs
        entry: tuple[int, int, int, Any, Any] = (_ITEM, col, dash_len, None, _value(item))
    else:
        if len(key) > _MAX_KEY or key in ("{}", "[]"):
            raise OutsideSubset  # libyaml refuses a key this long; a mapping is no key
        name = _value(key)
        if value:
            entry = (_KEY_VALUE, col, dash_len, name, _value(value))
        else:
            entry = (_KEY, col, dash_len, name, None)
    if (
        entry[4].__class__ in _IMMUTABLE
        and len(line) <= _MAX_PARSED_LINE
        and len(_parsed) < _MAX_PARSED
    ):
        _parsed[line] = entry
    return entry


_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _pieces(text: str) -> Iterator[str]:
    """`text` in slices that end at line breaks (each dropped): a list of every line of a 10 MB
    file would hold half a million strings at once (40 MB)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + _SLICE)
        if end < 0:
            end = len(text)
        yield text[start:end]
        start = end + 1


_SLICE = 1 << 16  # characters


def _value(text: str) -> Any:
    """The value of a scalar's text (or of `{}`/`[]`), as PyYAML's safe loader makes it."""
    known = _known.get(text, _MISSING)
    if known is not _MISSING:
        return known
    first = text[0]
    if first == "'":
        match = _SINGLE_RE.fullmatch(text)
        if match is None:
            raise OutsideSubset
        value: Any = match[1].replace("''", "'")
    elif first == '"':
        match = _DOUBLE_RE.fullmatch(text)
        if match is None:
            raise OutsideSubset
        value = match[1]
    elif text == "{}":
        return {}  # a new one each time, as PyYAML builds it
    elif text == "[]":
        return []
    elif _PLAIN_RE.fullmatch(text) is None:
        raise OutsideSubset
    else:
        tag = _resolve(text)
        if tag == _STR:
            value = text
        elif tag in _CONSTRUCTED:
            try:
                value = _CONSTRUCTOR.yaml_constructors[tag](
                    _CONSTRUCTOR, yaml.ScalarNode(tag, text)
                )
            except Exception:  # e.g. month 13: libyaml reads the text again and reports it
                raise OutsideSubset from None
            if tag == _TIMESTAMP:
                return value  # a datetime is not shared between documents
        else:
            raise OutsideSubset
    if len(text) <= 16 and len(_known) < _MAX_KNOWN:
        _known[text] = value
    return value


def _resolve(text: str) -> str:
    """PyYAML's implicit tag of a plain scalar."""
    if text.count(".") > 1:
        # No implicit type (int, float, timestamp, bool, null) has two dots: IP addresses and
        # versions are strings without trying a regex.
        return _STR
    for tag, regexp in _IMPLICIT.get(text[0], ()):
        if regexp.match(text):
            return tag
    return _STR


_TIMESTAMP = "tag:yaml.org,2002:timestamp"

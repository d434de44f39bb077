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
from itertools import chain
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

    Each document is read by `_document` from one iterator of numbered lines, which goes on
    where the previous document stopped (after its "---").
    """
    if not text.isascii() or _CONTROL.search(text):
        raise OutsideSubset
    lines = enumerate(chain.from_iterable(piece.split("\n") for piece in _pieces(text)), 1)
    index = 0
    explicit = False  # the current document began with "---"
    more = True
    while more:
        root, first_line, marks, more = _document(lines)
        if root is not None:
            yield index, root, first_line, marks
            index += 1
        elif explicit and more:
            index += 1  # "---" then nothing: libyaml gives a null document
        explicit = True


# A document as `_document` reads it: (root, first line, marks, whether another follows).
_Document = tuple[dict[Any, Any] | None, int, dict[int, Any], bool]


def _document(lines: Iterator[tuple[int, str]]) -> _Document:
    """One document from `lines`: (its root mapping, None without a field; the line of its first
    field; its marks; whether a "---" ended it, so that another document follows).

    One loop on purpose: it runs once per line (over half a million for 10k Services), and a
    function call per line would cost a fifth of its time. What a line says is `_parse_line`'s;
    here is only where it goes. Only the steps a few lines take are functions (closing blocks
    is not: many lines do, and a call there cost 4% more).
    """
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
    for lineno, line in lines:
        form, col, dash, name, scalar = parsed.get(line) or _parse_line(line)
        if form < _KEY_VALUE:
            if form == _NOTHING:
                continue
            return root, first_line, marks, True  # "---": a new document
        if root is None:
            root, first_line = _open_root(form, col, dash, stack), lineno
            top_col, top, what = stack[-1]
        if pending is not None:
            if _open_under(pending, col, dash, stack, marks):
                top_col, top, what = stack[-1]
            pending = None
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
            top_col, top, what = _open_item_mapping(stack, col)
        elif dash or form == _ITEM:
            raise OutsideSubset  # an item in a mapping
        if form == _KEY_VALUE:
            top[name] = scalar
        else:
            top[name] = None
            pending = (top, name, col)
        if name == "items":
            marks[id(top)] = lineno
    return root, first_line, marks, False


def _open_root(form: int, col: int, dash: int, stack: list[tuple[int, Any, int]]) -> dict[Any, Any]:
    """The root mapping a document's first field opens, pushed on `stack`."""
    if col or dash or form == _ITEM:
        raise OutsideSubset  # the root is no block mapping at column 0
    root: dict[Any, Any] = {}
    stack.append((0, root, _MAPPING))
    return root


def _open_item_mapping(stack: list[tuple[int, Any, int]], col: int) -> tuple[int, Any, int]:
    """A mapping as the next item of the innermost sequence, its keys at `col` (after the
    "- "), pushed on `stack` and returned as the innermost."""
    mapping: dict[Any, Any] = {}
    stack[-1][1].append(mapping)
    top = (col, mapping, _MAPPING)
    stack.append(top)
    return top


def _open_under(
    pending: tuple[dict[Any, Any], Any, int],
    col: int,
    dash: int,
    stack: list[tuple[int, Any, int]],
    marks: dict[int, Any],
) -> bool:
    """Open the block a line at `col` starts under the pending "key:", pushed on `stack`;
    False when the line is no block under it (the key's value stays null)."""
    above, key, key_col = pending
    if dash and col >= key_col:
        # A sequence under the key (at the key's column too: YAML's indentless one).
        sequence: list[Any] = []
        above[key] = sequence
        if key == "items":
            marks[id(sequence)] = []
            stack.append((col, sequence, _ITEMS))
        else:
            stack.append((col, sequence, _SEQUENCE))
        return True
    if col > key_col:
        mapping: dict[Any, Any] = {}
        above[key] = mapping
        stack.append((col, mapping, _MAPPING))
        return True
    return False


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
        end = text.find("\n", start + SLICE)
        if end < 0:
            end = len(text)
        yield text[start:end]
        start = end + 1


SLICE = 1 << 16  # characters split off at a time: lines and places do not depend on it


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

"""YAML or JSON text → Kubernetes objects as plain data, with lines only when they are asked for.

`sources/manifests.py` turns the objects into the slim model; this module only reads text.

Contract:
- `read_documents(text, file)` is the lean read: each object as plain data (dict, list, str, …)
  with its first line and its place in the file (`Document.at`), and no field lines. Parse
  trees are dropped document by document, so memory holds one YAML document's tree at a time.
  It yields Documents and ManifestErrors (a non-object, a List whose items are no list) in file
  order, and raises `yaml.YAMLError` (or RecursionError, past Python's recursion limit) on a
  syntax error; `syntax_error` turns that into the one error of the file.
- `read_block_documents(text, file)` is the same read for the plain block YAML that
  `kubectl get -o yaml` writes, without libyaml (sources/blockyaml.py); it raises
  `OutsideSubset` for other text, and the caller reads it again with `read_documents`.
- `field_lines_at(text, file, places)` reads the text again, for the few objects that failed to
  convert, and gives each place the line of every field under it (`Document.lines`).
- `parse_text(text, file)` does both at once for every object (tests, `kdns check` of a file).
- A `kind: List` (as `kubectl get -o yaml` writes) gives one object per item, recursively; the
  API's typed lists (ServiceList) leave kind and apiVersion out of their items, and get them
  from the list's kind. Empty documents give nothing.
- A file whose name ends in .json may indent with tabs (JSON allows it, YAML does not).
- `Loader` is the YAML loader every read uses: PyYAML's safe loader, on libyaml when PyYAML
  was built with it.
- Pure: no I/O at all.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kdns.sources import blockyaml


class _FastResolveLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, with the common case of tag resolution answered without a regex.

    Most scalars of a manifest are plain strings whose first character starts no implicit type
    (names, labels, "TCP"): PyYAML's resolver would look that character up and find nothing.
    Every other scalar (numbers, booleans, null, "~", …) still goes through PyYAML's resolver.
    """

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        # libyaml's composer calls this for every node, so the common answers come first.
        if kind is _ScalarNode:
            if not implicit[0]:
                return _STR  # quoted, or tagged "!": PyYAML's default scalar tag
            if value and value[0] not in _RESOLVED_FIRST:
                return _STR
            # Keys like "name" and "type" and values like "80" or "true" come again and again.
            tag = _resolved.get(value)
            if tag is None:
                if value.count(".") > 1:
                    # No implicit type (int, float, timestamp, bool, null, merge) has two
                    # dots: IP addresses and version strings are strings without a regex.
                    return _STR
                tag = super().resolve(kind, value, implicit)
                if len(_resolved) < _MAX_RESOLVED and len(value) <= 16:
                    _resolved[value] = tag
            return tag
        # Without path resolvers (asserted below) a collection's tag is the default one.
        return _SEQ if kind is _SequenceNode else _MAP

    # libyaml's composer calls these two around every node; only path resolvers need them, and
    # the safe loader has none. Builtins that take the same arguments and do nothing of note
    # cost less per call than a Python method (over a million calls for 10k Services).
    descend_resolver = slice  # (parent, index) -> an unused slice
    ascend_resolver = tuple  # () -> the empty tuple


def _construct_timestamp(loader: Any, node: yaml.ScalarNode) -> Any:
    """PyYAML's timestamp, with an impossible date (2001-13-01) a YAML error, not a ValueError.

    The resolver takes anything shaped like a date for one; datetime then refuses month 13."""
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except (ValueError, OverflowError) as exc:
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.value!r} is not a valid timestamp ({exc})", node.start_mark
        ) from None


_FastResolveLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)

_ScalarNode = yaml.ScalarNode
_SequenceNode = yaml.SequenceNode
_MappingNode = yaml.MappingNode
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
# The first characters PyYAML's safe resolver has a pattern for; a None key would mean "any
# character", and path resolvers would depend on the place: the safe loader has neither.
_RESOLVED_FIRST = frozenset(k for k in _FastResolveLoader.yaml_implicit_resolvers if k)
_resolved: dict[str, str] = {}  # a plain scalar → its tag, bounded
_MAX_RESOLVED = 4096
assert None not in _FastResolveLoader.yaml_implicit_resolvers
assert not _FastResolveLoader.yaml_path_resolvers

# The loader every read here uses: libyaml's when PyYAML has it, as it parses several times
# faster than the pure-Python parser; tests swap in yaml.SafeLoader to check both parsers'
# error messages.
Loader: type = _FastResolveLoader

# Recording the line of every field costs one dict entry per field; a YAML alias bomb expands
# exponentially, so stop recording (lines fall back to the parent) past this many fields.
_MAX_RECORDED_FIELDS = 200_000

NESTED_TOO_DEEPLY = "invalid YAML: nested too deeply"
_TAB_MESSAGE = "a tab character is used for indentation; YAML allows only spaces"


@dataclass(frozen=True, slots=True)
class ManifestError:
    """One bad file or object. Not an exception: readers collect them."""

    file: str
    line: int | None
    obj: str  # "Service default/redis", or "" when the file itself is the problem
    field: str  # "spec.clusterIP", or ""
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.obj, self.field, self.message) if part)


@dataclass(frozen=True, slots=True)
class Document:
    """One Kubernetes object of a file (a `kind: List` gives one per item)."""

    obj: dict[str, Any]
    file: str
    line: int  # the object's first line
    # Field path, spelled as ModelError spells it → line; empty from the lean read.
    lines: Mapping[str, int]
    # The index of its YAML document in the file, then its index in each enclosing List.
    at: tuple[int, ...] = ()

    def line_of(self, field: str) -> int:
        """The line of `field`, or of its deepest parent present in the file."""
        return line_of(self.lines, field, self.line)


def line_of(lines: Mapping[str, int], field: str, default: int) -> int:
    """The line of `field` in `lines`, or of its deepest parent there, or `default`."""
    path = field
    while path:
        line = lines.get(path)
        if line is not None:
            return line
        # Cut the last ".key" or "[i]"; a label key with dots (kubernetes.io/service-name) is
        # recorded whole, so it matches before any cut.
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            break
        path = path[:cut]
    return default


def short(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters, without building the whole of it first: YAML
    aliases can make a small file hold a structure whose repr would not fit in memory."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit]


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxstring = _SHORT.maxother = 200


def yaml_text(text: str, file: str) -> str:
    """The text as the YAML parser gets it: a .json file's tabs become spaces."""
    if file.lower().endswith(".json"):
        # JSON allows tabs as whitespace and never inside strings (they are escaped as \t),
        # while YAML forbids them in indentation: spaces keep every line number.
        return text.replace("\t", " ")
    return text


# --- reading -----------------------------------------------------------------------------------


def read_documents(text: str, file: str) -> Iterator[Document | ManifestError]:
    """The lean read (see the module contract); `text` is already `yaml_text`."""
    loader = Loader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            made: dict[int, Any] = {}
            obj = _construct(loader, node, made)
            if _SHARED in made:
                _check_aliasing(node)
            yield from _flatten(node, obj, file, (index,), marks=False)
            index += 1
    finally:
        loader.dispose()


def read_block_documents(text: str, file: str) -> Iterator[Document | ManifestError]:
    """The lean read's fast path: for a text in `sources/blockyaml.py`'s subset, the same
    Documents and errors as `read_documents`, without libyaml.

    Raises OutsideSubset for any other text, possibly after yielding some documents: the
    caller then drops those and reads the text with `read_documents`.
    """
    for index, obj, line, marks in blockyaml.read(text):
        yield from _flatten_plain(obj, line, marks, file, (index,))


def _flatten_plain(
    obj: Any,
    line: int,
    marks: Mapping[int, Any],
    file: str,
    at: tuple[int, ...],
    item_kind: tuple[str, Any] | None = None,
) -> Iterator[Document | ManifestError]:
    """`_flatten` for plain data whose lines are `blockyaml.read`'s marks."""
    if obj is None:
        return
    if not isinstance(obj, dict):
        yield ManifestError(file, line, "", "", f"expected a Kubernetes object, got {short(obj)}")
        return
    items_line = marks.get(id(obj), line)  # before the copy below, which has another id
    if item_kind is not None and "kind" not in obj:
        obj = {"kind": item_kind[0], "apiVersion": item_kind[1], **obj}
    kind = obj.get("kind")
    if not _is_list(kind, obj):
        yield Document(obj, file, line, {}, at)
        return
    items = obj.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        yield ManifestError(file, items_line, kind, "items", "expected a list")
        return
    inner = None if kind == "List" else (kind[: -len("List")], obj.get("apiVersion"))
    lines = marks.get(id(items))
    if not isinstance(lines, list) or len(lines) != len(items):
        lines = [line] * len(items)  # `items: []`: nothing to place
    for i, (item_line, item) in enumerate(zip(lines, items, strict=True)):
        yield from _flatten_plain(item, item_line, marks, file, (*at, i), item_kind=inner)


def parse_text(text: str, file: str) -> tuple[list[Document], list[ManifestError]]:
    """Every object of `text` with each field's line; on a syntax error no object and one error.

    `file` only names the text in errors (and a name ending in .json allows tab indentation).
    """
    text = yaml_text(text, file)
    docs: list[Document] = []
    errors: list[ManifestError] = []
    try:
        loader = Loader(text)
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                obj = loader.construct_document(node)
                _check_aliasing(node)
                for found in _flatten(node, obj, file, (index,), marks=True):
                    (docs if isinstance(found, Document) else errors).append(found)  # type: ignore[arg-type]
                index += 1
        finally:
            loader.dispose()
    except (yaml.YAMLError, RecursionError) as exc:
        return [], [syntax_error(exc, text, file)]
    return docs, errors


def field_lines_at(
    text: str, places: Iterable[tuple[int, ...]]
) -> dict[tuple[int, ...], dict[str, int]]:
    """Field lines of the objects at `places` (`Document.at`) of a text that parsed before.

    Only nodes are built, nothing is constructed, and each document's tree is dropped before
    the next is read.
    """
    wanted: dict[int, list[tuple[int, ...]]] = {}
    for at in places:
        wanted.setdefault(at[0], []).append(at)
    found: dict[tuple[int, ...], dict[str, int]] = {}
    loader = Loader(text)
    try:
        index = 0
        while wanted and index <= max(wanted) and loader.check_node():
            node = loader.get_node()
            for at in wanted.get(index, ()):
                item = _item_node(node, at[1:])
                if item is not None:
                    found[at] = _field_lines(item)
            index += 1
    except (yaml.YAMLError, RecursionError):
        pass  # the text parsed before; without lines, errors name the object's first line
    finally:
        loader.dispose()
    return found


def _item_node(node: yaml.Node, path: tuple[int, ...]) -> yaml.Node | None:
    for i in path:
        items = _items_node(node)
        if items is None or not 0 <= i < len(items.value):
            return None
        node = items.value[i]
    return node


def _items_node(node: yaml.Node) -> yaml.SequenceNode | None:
    """The node of a List's items: of the last `items` key, as the last one is what YAML loads."""
    if not isinstance(node, yaml.MappingNode):
        return None
    found = None
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.tag == _STR and key.value == "items":
            found = value
    return found if isinstance(found, yaml.SequenceNode) else None


def _construct(loader: Any, node: yaml.Node, made: dict[int, Any]) -> Any:
    """Plain data from a node tree: plain maps, sequences and strings by hand, the rest by PyYAML.

    PyYAML's constructor spends most of its time on bookkeeping a manifest never needs (a
    generator per mapping, a state stack). `made` maps each collection node already built to
    its value, so an alias is the same object (as PyYAML makes it), and an alias of a
    collection inside itself is no endless loop.
    """
    cls = node.__class__
    tag = node.tag
    if cls is _ScalarNode:
        if tag == _STR:
            return node.value
        if tag in _PLAIN_SCALARS:
            return _plain_scalar(loader, node)
    elif cls is _MappingNode and tag == _MAP:
        done = made.get(id(node))
        if done is not None:
            made[_SHARED] = True
            return done
        mapping: dict[Any, Any] = {}
        made[id(node)] = mapping
        for key_node, value_node in node.value:
            if key_node.__class__ is _ScalarNode and key_node.tag == _STR:
                key = key_node.value
            elif key_node.tag in _SPECIAL_KEYS:
                # A merge key (`<<: *base`): PyYAML's rules flatten the whole mapping.
                del made[id(node)]
                return _by_pyyaml(loader, node, made)
            else:
                key = _construct(loader, key_node, made)
                if isinstance(key, (list, dict)):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "found unhashable key",
                        key_node.start_mark,
                    )
            if value_node.__class__ is _ScalarNode and value_node.tag == _STR:
                mapping[key] = value_node.value
            else:
                mapping[key] = _construct(loader, value_node, made)
        return mapping
    elif cls is _SequenceNode and tag == _SEQ:
        done = made.get(id(node))
        if done is not None:
            made[_SHARED] = True
            return done
        sequence: list[Any] = []
        made[id(node)] = sequence
        for item in node.value:
            if item.__class__ is _ScalarNode and item.tag == _STR:
                sequence.append(item.value)
            else:
                sequence.append(_construct(loader, item, made))
        return sequence
    return _by_pyyaml(loader, node, made)


def _plain_scalar(loader: Any, node: yaml.ScalarNode) -> Any:
    """A null, bool, int, float or timestamp, as PyYAML constructs it.

    The constructors are pure functions of tag and text, and manifests repeat the same few
    (ports, `true`): short texts' values are kept, except timestamps (mutable-looking
    datetimes that differ by tzinfo object identity are not worth sharing).
    """
    tag = node.tag
    known = _scalars.get((tag, node.value), _scalars)
    if known is not _scalars:
        return known
    value = loader.yaml_constructors[tag](loader, node)
    if tag != _TIMESTAMP and len(node.value) <= 16 and len(_scalars) < _MAX_RESOLVED:
        _scalars[(tag, node.value)] = value
    return value


_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_scalars: dict[tuple[str, str], Any] = {}  # (tag, plain text) → its value, bounded


def _by_pyyaml(loader: Any, node: yaml.Node, made: dict[int, Any]) -> Any:
    """Timestamps, !!set, !!binary, merge keys, unknown tags (an error): PyYAML's own rules."""
    made[_SHARED] = True  # PyYAML shares what it builds for aliases too
    done = made.get(id(node))
    if done is not None:
        return done
    value = loader.construct_document(node)
    if isinstance(node, yaml.CollectionNode):
        made[id(node)] = value
    return value


_SHARED = -1  # a key of `made` (no id is negative): some value was built once and used twice
# Values an alias may add to a document: go-yaml, which kubectl reads manifests with, refuses
# "excessive aliasing" too (a billion laughs); a real manifest uses a few anchors at most.
MAX_ALIASED_VALUES = 1_000_000


def _check_aliasing(root: yaml.Node) -> None:
    """Raise if aliases make the document more than MAX_ALIASED_VALUES values bigger than its
    nodes: a small file whose data (and any repr of it) would not fit in memory."""
    sizes: dict[int, int] = {}
    expanded = _expanded_size(root, sizes)
    if expanded - len(sizes) > MAX_ALIASED_VALUES:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the document holds more than {MAX_ALIASED_VALUES:,} values once its aliases are "
            "expanded (excessive aliasing)",
            root.start_mark,
        )


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded (a cycle counts once)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # entered: an alias of it inside itself counts as one value
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


# Scalar tags whose constructor is a plain function of the node (not a generator).
_PLAIN_SCALARS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "timestamp")
)
_SPECIAL_KEYS = frozenset({"tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})


def _flatten(
    node: yaml.Node,
    obj: Any,
    file: str,
    at: tuple[int, ...],
    *,
    marks: bool,
    item_kind: tuple[str, Any] | None = None,
) -> Iterator[Document | ManifestError]:
    """`obj` as a Document, or the items of a list object, recursively."""
    line = node.start_mark.line + 1
    if obj is None:
        return  # an empty document: `---` twice, or a file of comments
    if not isinstance(obj, dict):
        yield ManifestError(file, line, "", "", f"expected a Kubernetes object, got {short(obj)}")
        return
    if item_kind is not None and "kind" not in obj:
        # The API's typed lists (ServiceList from `kubectl get --raw`) leave kind and apiVersion
        # out of their items; `kubectl get -o yaml` fills them in.
        obj = {"kind": item_kind[0], "apiVersion": item_kind[1], **obj}
    kind = obj.get("kind")
    if not _is_list(kind, obj):
        yield Document(obj, file, line, _field_lines(node) if marks else {}, at)
        return
    items = obj.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        lines = _field_lines(node)
        yield ManifestError(file, lines.get("items", line), kind, "items", "expected a list")
        return
    inner = None if kind == "List" else (kind[: -len("List")], obj.get("apiVersion"))
    items_node = _items_node(node)
    if items_node is None or len(items_node.value) != len(items):
        # The items came through a merge key (`<<: *other`): no node of their own to read
        # lines from, so each item is placed at the list's line (and `at` says so with -1).
        for item in items:
            yield from _flatten(node, item, file, (*at, -1), marks=False, item_kind=inner)
        return
    for i, (item_node, item) in enumerate(zip(items_node.value, items, strict=True)):
        yield from _flatten(item_node, item, file, (*at, i), marks=marks, item_kind=inner)


def _is_list(kind: Any, obj: Mapping[str, Any]) -> bool:
    return kind == "List" or (isinstance(kind, str) and kind.endswith("List") and "items" in obj)


def _field_lines(root: yaml.Node) -> dict[str, int]:
    """Field path → 1-based line, for every mapping value and sequence item under `root`.

    A mapping value gets the line of its key: for `spec:` followed by an indented block that
    is the line a reader looks for. Paths are spelled as model.ModelError spells them. A node
    reached again through an alias is not entered again: its fields are where its anchor is,
    and an alias inside itself (`&a {b: *a}`) would otherwise give paths without end.
    """
    lines: dict[str, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack and len(lines) < _MAX_RECORDED_FIELDS:
        node, path = stack.pop()
        if id(node) in entered:
            continue
        entered.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                child = f"{path}.{key_node.value}" if path else key_node.value
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for i, item_node in enumerate(node.value):
                child = f"{path}[{i}]"
                lines[child] = item_node.start_mark.line + 1
                stack.append((item_node, child))
    return lines


# --- syntax errors -----------------------------------------------------------------------------


def syntax_error(exc: BaseException, text: str, file: str) -> ManifestError:
    """The one error of a file that does not parse; `text` is the `yaml_text` that failed."""
    if isinstance(exc, RecursionError):
        return ManifestError(file, None, "", "", NESTED_TOO_DEEPLY)
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    if file.lower().endswith(".json"):
        # The YAML parser's message for broken JSON is about YAML; json's is about JSON.
        try:
            json.loads(text)
        except json.JSONDecodeError as jexc:
            return ManifestError(file, jexc.lineno, "", "", f"invalid JSON: {jexc.msg}")
        except RecursionError:
            pass
    lines = text.splitlines()
    # The parsers report a tab in the indentation in several ways ("cannot start any token",
    # "violates indentation", a block mapping that ends early), at the tab's line or at the
    # start of the construct: a tab in either line's indentation is the cause.
    for mark in (problem_mark, context_mark):
        if mark is not None and 0 <= mark.line < len(lines):
            line = lines[mark.line]
            if "\t" in line[: len(line) - len(line.lstrip(" \t"))]:
                return ManifestError(file, mark.line + 1, "", "", _TAB_MESSAGE)
    if isinstance(exc, yaml.reader.ReaderError):
        # A control character. The reader reports its offset, in characters from PyYAML and in
        # UTF-8 bytes from libyaml; the first occurrence of the character is the one reported.
        at = text.find(chr(exc.character)) if isinstance(exc.character, int) else -1
        line = text.count("\n", 0, at) + 1 if at >= 0 else None
        return ManifestError(file, line, "", "", f"invalid YAML: {str(exc).splitlines()[0]}")
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}"
    last = text.count("\n") + 1  # the line after a final line break is where the stream ends
    if (
        context
        and context_mark is not None
        and (problem_mark is None or context_mark.line != problem_mark.line)
    ):
        message += f" ({context} started on line {min(context_mark.line + 1, last)})"
    # At the end of a file without a final line break, libyaml marks the line after it.
    line = min(problem_mark.line + 1, last) if problem_mark else None
    return ManifestError(file, line, "", "", message)

"""kdns.sources.blockyaml: plain block YAML without libyaml reads as PyYAML reads it, or gives up.

Every text the fast reader accepts must give the data PyYAML's safe loader gives (and the
documents, lines and places the node-based reader gives); every text outside its subset must
make it give up, so that the libyaml reader (and its error messages) takes over.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdns.sources import blockyaml, documents
from kdns.sources.blockyaml import OutsideSubset
from kdns.sources.manifests import read_objects

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Text in the subset → the documents PyYAML loads from it (the expectation is also checked
# against PyYAML, so the table says what the YAML means and PyYAML agrees).
ACCEPTED: dict[str, tuple[str, list[Any]]] = {
    "kubectl-service": (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: prod\n"
        "  resourceVersion: '1000'\n  labels:\n    app.kubernetes.io/name: web\n"
        "spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - name: http\n    port: 80\n"
        "    protocol: TCP\n    targetPort: 8080\n  selector:\n    app: web\n"
        "status:\n  loadBalancer: {}\n",
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "web",
                    "namespace": "prod",
                    "resourceVersion": "1000",
                    "labels": {"app.kubernetes.io/name": "web"},
                },
                "spec": {
                    "clusterIP": "10.96.0.10",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                    "selector": {"app": "web"},
                },
                "status": {"loadBalancer": {}},
            }
        ],
    ),
    # Sequences indented under their key, and "indentless" at the key's column.
    "sequences-both-ways": (
        "a:\n  - 1\n  - x: 2\n    y: []\nb:\n- c\n- d: {}\n  e:\n  - f\n  g: h\ni: j\n",
        [{"a": [1, {"x": 2, "y": []}], "b": ["c", {"d": {}, "e": ["f"], "g": "h"}], "i": "j"}],
    ),
    "deeper-indents": (
        "a:\n    b:\n        c: 1\n    d:\n    -   e: 2\n        f: 3\n",
        [{"a": {"b": {"c": 1}, "d": [{"e": 2, "f": 3}]}}],
    ),
    "empty-values-are-null": (
        "a:\nb:   \nc: ~\nd: null\ne:\n  - x\nf:\n",
        [{"a": None, "b": None, "c": None, "d": None, "e": ["x"], "f": None}],
    ),
    "scalars-resolve-as-yaml-1.1": (
        "i: 80\nh: 0x1F\no: 017\ns: '80'\nd: \"80\"\nb: true\nB: on\nn: no\nf: 1.5\n"
        "e: 1e5\ninf: .inf\nip: 10.96.0.1\nv: 1.2.3\nt: 2001-12-14\nsex: 1:30\n"
        "neg: -1\nword: -x\n",
        [
            {
                "i": 80,
                "h": 31,
                "o": 15,
                "s": "80",
                "d": "80",
                "b": True,
                "B": True,
                "n": False,
                "f": 1.5,
                "e": "1e5",
                "inf": float("inf"),
                "ip": "10.96.0.1",
                "v": "1.2.3",
                "t": datetime.date(2001, 12, 14),
                "sex": 90,
                "neg": -1,
                "word": "-x",
            }
        ],
    ),
    "keys-of-other-types-and-quoted-keys": (
        "2: two\ntrue: t\n~: n\n'quoted key': q\n\"dq\": r\n",
        [{2: "two", True: "t", None: "n", "quoted key": "q", "dq": "r"}],
    ),
    "quotes-colons-and-spaces-inside": (
        "a: 'it''s: #1'\nb: \"x: y # z\"\nc: http://x:80/p?q=1&r\nd: two words\n"
        "e: fd00::1\nf: a,b;c!d*e|f>g%h@i\n",
        [
            {
                "a": "it's: #1",
                "b": "x: y # z",
                "c": "http://x:80/p?q=1&r",
                "d": "two words",
                "e": "fd00::1",
                "f": "a,b;c!d*e|f>g%h@i",
            }
        ],
    ),
    "comments-on-their-own-lines": (
        "# a Service\na: 1\n  # indented anyhow\nb:\n# between a key and its block\n  c: 2\n",
        [{"a": 1, "b": {"c": 2}}],
    ),
    "a-repeated-key-keeps-its-last-value": ("a: 1\nb: 2\na: 3\n", [{"a": 3, "b": 2}]),
    # Empty documents: an explicit one ("---" then nothing) counts, comments alone do not.
    "documents": (
        "# header\n---\na: 1\n---\n---\n# only a comment\n---\nb: 2\n---\n",
        [{"a": 1}, None, None, {"b": 2}, None],
    ),
}


@pytest.mark.parametrize(("text", "expected"), ACCEPTED.values(), ids=list(ACCEPTED))
def test_accepted_text_reads_as_pyyaml_reads_it(text: str, expected: list[Any]) -> None:
    assert list(yaml.load_all(text, Loader=LOADER)) == expected
    read = list(blockyaml.read(text))
    assert [obj for _, obj, _, _ in read] == [doc for doc in expected if doc is not None]
    # The documents' places in the file: as libyaml counts them (nulls included).
    assert [index for index, _, _, _ in read] == [
        i for i, doc in enumerate(expected) if doc is not None
    ]


# Text outside the subset: the fast reader gives up (libyaml reads it, or reports the error).
OUTSIDE = {
    "anchor-and-alias": "a: &x 1\nb: *x\n",
    "merge-key": "base: {}\nc:\n  <<: {}\n",
    "tag": "a: !!str 80\n",
    "block-scalar": "a: |\n  text\n",
    "folded-scalar": "a: >\n  text\n",
    "flow-mapping": "a: {b: 1}\n",
    "flow-sequence": "a: [1, 2]\n",
    "multi-line-plain": "a: one\n  two\n",
    "plain-on-the-next-line": "a:\n  value\n",
    "trailing-comment": "a: 1 # one\n",
    "escape-in-double-quotes": 'a: "x\\ty"\n',
    "multi-line-quotes": "a: 'one\n  two'\n",
    "tab": "a:\n\tb: 1\n",
    "non-ascii": "a: café\n",
    "control-character": "a: \x07\n",
    "document-end-marker": "a: 1\n...\n",
    "marker-with-content": "--- a: 1\n",
    "directive": "%YAML 1.1\n---\na: 1\n",
    "root-sequence": "- a\n- b\n",
    "root-scalar": "just text\n",
    "root-indented": "  a: 1\n",
    "sibling-indented-more": "a:\n  b: 1\n   c: 2\n",
    "sibling-indented-less": "a:\n    b: 1\n  c: 2\n",
    "item-in-a-mapping": "a: 1\n- b\n",
    "nested-sequence-item": "a:\n- - b\n",
    "empty-item": "a:\n-\n  b: 1\n",
    "value-after-value": "a: b: c\n",
    "unterminated-quote": "a: 'b\n",
    "text-after-quote": "a: 'b' c\n",
    "value-key": "=: x\n",
    "impossible-date": "a: 2001-13-01\n",
    "key-too-long": "k" * 1100 + ": v\n",
    "mapping-as-key": "{}: v\n",
    "spaces-only-line": "a: 1\n   \nb: 2\n",
    "dash-only-value": "a: -\n",
    "indicator-first": "a: @x\n",
}


@pytest.mark.parametrize("text", OUTSIDE.values(), ids=list(OUTSIDE))
def test_text_outside_the_subset_makes_it_give_up(text: str) -> None:
    with pytest.raises(OutsideSubset):
        list(blockyaml.read(text))


# A List as `kubectl get -o yaml` writes it, a typed list without kinds in its items, a List
# inside a List, a non-object item and items that are no list: the same Documents (objects,
# lines, places) and errors as the node-based reader gives.
LISTS = {
    "kubectl-list": "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n"
    "  metadata:\n    name: a\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: b\n"
    "kind: List\nmetadata:\n  resourceVersion: ''\n",
    "typed-list": "kind: ServiceList\napiVersion: v1\nitems:\n  - metadata:\n      name: a\n"
    "  - metadata:\n      name: b\n",
    "list-in-list": "kind: List\nitems:\n- kind: List\n  items:\n  - kind: Service\n"
    "    metadata:\n      name: inner\n- kind: Namespace\n  metadata:\n    name: n\n",
    "non-object-item": "a: 1\n---\nkind: List\nitems:\n- 42\n- kind: Namespace\n",
    "items-no-list": "kind: List\nmetadata: {}\nitems:\n  a: 1\n",
    "items-scalar": "kind: List\nitems: x\n",
    "empty-items": "kind: List\nitems: []\n---\nkind: List\nitems:\n",
}


@pytest.mark.parametrize("text", LISTS.values(), ids=list(LISTS))
def test_lists_give_the_documents_the_node_reader_gives(text: str) -> None:
    assert list(documents.read_block_documents(text, "x.yaml")) == list(
        documents.read_documents(text, "x.yaml")
    )


def test_a_document_outside_the_subset_after_others_gives_the_libyaml_result() -> None:
    # The fast reader yields the first object, then gives up at the anchor: read_objects must
    # drop what it had and read the whole text with libyaml (one object each, not two).
    text = (
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: &n b\n  labels: {x: *n}\n"
    )
    with pytest.raises(OutsideSubset):
        list(documents.read_block_documents(text, "x.yaml"))
    entries, errors = read_objects(text, "x.yaml")
    assert errors == []
    assert [e.key for e in entries] == [("", "a"), ("", "b")]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        # A field error: its line is found by reading the file again, as for any file.
        (
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n"
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n"
            "  ports:\n  - port: 80\n  - port: http\n",
            "x.yaml:13: Service default/web: spec.ports[1].port: expected an integer, got 'http'",
        ),
        # A syntax error: the fast reader gives up, libyaml reports it.
        (
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: b: c\n",
            "x.yaml:5: invalid YAML: mapping values are not allowed in this context",
        ),
    ],
    ids=["field", "syntax"],
)
def test_errors_name_the_line(text: str, error: str) -> None:
    entries, errors = read_objects(text, "x.yaml")
    messages = [str(e) for e in errors] + [str(e.error) for e in entries if e.error]
    assert messages == [error]


# --- what it accepts, libyaml reads the same ---------------------------------------------------

# Words that stay inside the subset, and words that leave it (or are YAML errors); lines are
# mostly well indented (a step of two from the line before), so that many texts are accepted
# and compared, and some are not.
_GOOD = ["a", "name", "80", "-1", "true", "no", "~", "null", "1.5", "1e5", ".inf", "0x1F",
         "1:30", "10.0.0.1", "fd00::1", "2001-12-14", "x y", "a:b", "'q''s'", "'x: #y'", '"d"',
         "{}", "[]", "items", "kind"]  # fmt: skip
_BAD = ["<<", "=", "-", "#c", "a #b", "&x", "*x", "!t", "|", ">", "[a]", "{a: 1}", "'", '"a\\"',
        " ", "---", "...", "a: b", "2001-13-01"]  # fmt: skip
_WORD = st.sampled_from(_GOOD * 8 + _BAD)
_LINES = st.lists(
    st.tuples(
        st.sampled_from([-4, -2, 0, 0, 0, 0, 2, 2, 3]),  # indent, from the line before's
        st.sampled_from(["", "", "", "", "- ", "- ", "-  "]),
        st.one_of(st.none(), _WORD, _WORD, _WORD),  # key (None: a scalar line)
        st.one_of(st.just(""), _WORD, _WORD),  # value ("" after a key: a block may follow)
    ),
    min_size=1,
    max_size=14,
)


def _text(lines: list[tuple[int, str, Any, str]]) -> str:
    out, indent = [], 0
    for step, dash, key, value in lines:
        if not out:  # a root mapping, or the text is refused at once
            dash, key = "", key or "a"
        indent = max(0, indent + step) if out else 0
        if key is None:
            out.append(" " * indent + dash + (value or "x"))
        else:
            out.append(" " * indent + dash + key + ":" + (" " + value if value else ""))
    return "\n".join(out) + "\n"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LINES)
def test_whatever_it_accepts_libyaml_reads_the_same(lines: list[tuple[int, str, Any, str]]) -> None:
    text = _text(lines)
    try:
        read = [(index, obj) for index, obj, _, _ in blockyaml.read(text)]
    except OutsideSubset:
        return
    loaded = list(yaml.load_all(text, Loader=LOADER))
    assert read == [(i, doc) for i, doc in enumerate(loaded) if doc is not None]


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, width=32),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
)
_DATA = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text("abcxyz-./", min_size=1, max_size=6), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(st.text("abk.-/", min_size=1, max_size=5), _DATA, max_size=4),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from([2, 4]),
)
def test_dumped_block_yaml_reads_back(docs: list[dict[str, Any]], indent: int) -> None:
    # yaml.dump's block style, as kubectl and scripts write manifests: what the fast reader
    # accepts of it reads back to the data dumped.
    text = yaml.safe_dump_all(docs, default_flow_style=False, indent=indent, width=10**6)
    try:
        read = [obj for _, obj, _, _ in blockyaml.read(text)]
    except OutsideSubset:
        return
    assert read == [doc for doc in yaml.safe_load_all(text) if doc is not None] == docs


def test_lines_past_the_first_slice_of_a_big_text() -> None:
    # Long texts are split into lines a slice at a time: lines and places stay those of the
    # node-based reader however the slices fall.
    one = "kind: List\nitems:\n- kind: Namespace\n  metadata:\n    name: n{i}\n- 7\n---\n"
    text = "".join(one.format(i=i) for i in range(6000))
    assert len(text) > 3 * blockyaml.SLICE
    fast = list(documents.read_block_documents(text, "x.yaml"))
    assert fast == list(documents.read_documents(text, "x.yaml"))
    assert str(fast[-1]) == f"x.yaml:{6 + 7 * 5999}: expected a Kubernetes object, got 7"


# Whole files through read_objects: the same entries and errors (file:line: object: field:
# message) whether the fast reader reads them or libyaml does.
FILES = {
    "services-and-slices": "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n"
    "  namespace: prod\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - name: http\n"
    "    port: 80\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n"
    "  name: web-1\n  namespace: prod\n  labels:\n    kubernetes.io/service-name: web\n"
    "addressType: IPv4\nendpoints:\n- addresses:\n  - 10.1.0.1\n  conditions:\n    ready: true\n"
    "ports:\n- name: http\n  port: 8080\n",
    "field-errors": "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n"
    "  clusterIP: 10.96.0.300\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
    "metadata:\n  name: s\n  labels:\n    kubernetes.io/service-name: web\n"
    "addressType: IPv4\nendpoints:\n- addresses: []\n",
    "kind-errors": "apiVersion: v1\nkind: Servce\nmetadata:\n  name: a\n---\nkind: Service\n"
    "metadata:\n  name: b\n---\napiVersion: v2\nkind: Service\n---\napiVersion: apps/v1\n"
    "kind: Deployment\nmetadata: {}\n",
    "list-with-errors": "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n"
    "  kind: Service\n  metadata:\n    name: a\n  spec:\n    ports:\n    - port: 0\n- 42\n"
    "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: Bad_Name\n",
    "duplicates": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n"
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n",
}


@pytest.mark.parametrize("text", FILES.values(), ids=list(FILES))
def test_read_objects_is_the_same_through_either_reader(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdns.sources import manifests

    fast = read_objects(text, "x.yaml")
    list(blockyaml.read(text))  # the fast reader did read it (no OutsideSubset)

    def outside(text: str, file: str) -> Any:
        raise OutsideSubset

    monkeypatch.setattr(manifests, "read_block_documents", outside)
    assert read_objects(text, "x.yaml") == fast
    assert fast[0]  # objects were read (and some carry errors)

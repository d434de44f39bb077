"""kdns.corefile lexer, expand and parser: Corefile text → server blocks, as CoreDNS reads it.

Each case is a Corefile and the blocks it gives, written one line per key or directive:
`KEYS` then `  LINE name args...`, nested options indented further; errors name file:line.
"""

from __future__ import annotations

import pytest

from kdns.corefile.expand import expand, substitute_env
from kdns.corefile.lexer import CorefileError, Token, tokenize
from kdns.corefile.parser import Directive, ServerBlock, parse


def outline(blocks: tuple[ServerBlock, ...]) -> str:
    out: list[str] = []

    def lines(directives: tuple[Directive, ...], indent: str) -> None:
        for d in directives:
            out.append(f"{indent}{d.name.line} {' '.join((d.name.text, *d.values))}")
            if d.block is not None:
                lines(d.block, indent + "  ")

    for block in blocks:
        out.append(" ".join(k.text for k in block.keys))
        lines(block.directives, "  ")
    return "\n".join(out)


def read_blocks(text: str, files: dict[str, str] | None = None, env: dict[str, str] | None = None):
    files = files or {}

    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[path]

    def glob(pattern: str) -> list[str]:
        import fnmatch

        return [p for p in files if fnmatch.fnmatchcase(p, pattern)]

    return parse(expand(tokenize(text, "/etc/coredns/Corefile"), env or {}, read, glob))


# --- tokens --------------------------------------------------------------------------------------

TOKENS = [
    ("plain words", "a b\tc\n d", [("a", 1), ("b", 1), ("c", 1), ("d", 2)]),
    ("comment line", "# all of it\na", [("a", 2)]),
    ("comment glued to a word", "a#b c\nd", [("a", 1), ("d", 2)]),
    ("quoted with spaces", 'match "a b"', [("match", 1), ("a b", 1)]),
    ("escaped quote", r'x "say \"hi\""', [("x", 1), ('say "hi"', 1)]),
    ("other backslashes stay", r'm "^a\.b$"', [("m", 1), (r"^a\.b$", 1)]),
    ("empty quoted token", 'a ""', [("a", 1), ("", 1)]),
    ("a quote inside a word is literal", 'a"b', [('a"b', 1)]),
    ("a quoted # is no comment", 'a "#b"', [("a", 1), ("#b", 1)]),
    ("carriage returns and a BOM", "\ufeffa\r\nb\r\n", [("a", 1), ("b", 2)]),
    ("quoted across lines", 'a "x\ny"\nb', [("a", 1), ("x\ny", 1), ("b", 3)]),
]


@pytest.mark.parametrize(
    "text, expected", [(t, e) for _, t, e in TOKENS], ids=[c[0] for c in TOKENS]
)
def test_tokens(text: str, expected: list[tuple[str, int]]) -> None:
    assert [(t.text, t.line) for t in tokenize(text, "F")] == expected


def test_first_token_of_a_line_is_marked_even_after_a_multiline_quote() -> None:
    tokens = tokenize('a "x\ny" z\nb c', "F")
    assert [(t.text, t.starts_line) for t in tokens] == [
        ("a", True),
        ("x\ny", False),
        ("z", False),  # still the line of the quoted token's end
        ("b", True),
        ("c", False),
    ]


def test_unterminated_quote_names_where_it_opened() -> None:
    with pytest.raises(CorefileError, match=r"^F:2: unterminated quoted string"):
        tokenize('a\nb "c\nd\n', "F")


# --- environment ---------------------------------------------------------------------------------

ENV = [
    ("{$DOMAIN}", "cluster.local"),
    ("{%DOMAIN%}", "cluster.local"),
    ("pre.{$DOMAIN}.post", "pre.cluster.local.post"),
    ("{$UNSET}", ""),
    ("{$DOMAIN", "{$DOMAIN"),  # no closing brace: stays as typed
    ("%{CLUSTER_DOMAIN}%", "%{CLUSTER_DOMAIN}%"),  # k3s's own placeholder is not CoreDNS's
    (":{$PORT}", ":1053"),
]


@pytest.mark.parametrize("text, expected", ENV)
def test_environment_substitution(text: str, expected: str) -> None:
    assert substitute_env(text, {"DOMAIN": "cluster.local", "PORT": "1053"}) == expected


# --- blocks --------------------------------------------------------------------------------------

BLOCKS = [
    (
        "kubeadm's shape",
        """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
}
""",
        """\
.:53
  2 errors
  3 health
    4 lameduck 5s
  6 kubernetes cluster.local in-addr.arpa ip6.arpa
    7 pods insecure
    8 fallthrough in-addr.arpa ip6.arpa
  10 forward . /etc/resolv.conf""",
    ),
    (
        "several keys, a trailing comma continues on the next line",
        "a.example b.example:53,\n  c.example {\n  forward . 10.0.0.1\n}\n",
        "a.example b.example:53 c.example\n  3 forward . 10.0.0.1",
    ),
    (
        "several blocks, one without a body",
        ".:53 {\n  errors\n}\nexample.org {\n}\n",
        ".:53\n  2 errors\nexample.org",
    ),
    (
        "a block without braces takes the rest of the file",
        ".:1053\nerrors\nwhoami\n",
        ".:1053\n  2 errors\n  3 whoami",
    ),
    (
        "nested blocks in a plugin block",
        ".:53 {\n  rewrite stop {\n    name regex (.*)\\.a {1}.b\n    answer name (.*)\\.b {1}.a\n  }\n}\n",
        ".:53\n  2 rewrite stop\n    3 name regex (.*)\\.a {1}.b\n    4 answer name (.*)\\.b {1}.a",
    ),
    (
        "quoted arguments keep their spaces",
        '.:53 {\n  template ANY ANY x {\n    answer "{{ .Name }} 60 IN A 192.0.2.1"\n  }\n}\n',
        ".:53\n  2 template ANY ANY x\n    3 answer {{ .Name }} 60 IN A 192.0.2.1",
    ),
    (
        "comments anywhere",
        "# header\n.:53 { # open\n  errors # why\n  # whole line\n  log\n}\n",
        ".:53\n  3 errors\n  5 log",
    ),
]


@pytest.mark.parametrize(
    "text, expected", [(t, e) for _, t, e in BLOCKS], ids=[c[0] for c in BLOCKS]
)
def test_blocks(text: str, expected: str) -> None:
    assert outline(read_blocks(text)) == expected


# --- imports and snippets ------------------------------------------------------------------------

IMPORTS = [
    (
        "a snippet, imported in two blocks",
        "(common) {\n  errors\n  cache 30\n}\na.example {\n  import common\n}\nb.example {\n  import common\n  log\n}\n",
        {},
        "a.example\n  2 errors\n  3 cache 30\nb.example\n  2 errors\n  3 cache 30\n  10 log",
    ),
    (
        "k3s: a glob inside the block and one after it, in name order",
        ".:53 {\n  errors\n  import /etc/coredns/custom/*.override\n}\nimport /etc/coredns/custom/*.server\n",
        {
            "/etc/coredns/custom/b.override": "log\n",
            "/etc/coredns/custom/a.override": "loadbalance\n",
            "/etc/coredns/custom/x.server": "x.example:53 {\n  forward . 10.0.0.1\n}\n",
        },
        ".:53\n  2 errors\n  1 loadbalance\n  1 log\nx.example:53\n  2 forward . 10.0.0.1",
    ),
    (
        "a glob that matches nothing adds nothing",
        ".:53 {\n  import /etc/coredns/custom/*.override\n  errors\n}\nimport /etc/coredns/custom/*.server\n",
        {},
        ".:53\n  3 errors",
    ),
    (
        "a relative path is relative to the importing file",
        ".:53 {\n  import extra.conf\n}\n",
        {"/etc/coredns/extra.conf": "reload 10s\n"},
        ".:53\n  1 reload 10s",
    ),
    (
        "an imported file imports a snippet defined before it",
        "(s) {\n  loop\n}\n.:53 {\n  import a.conf\n}\n",
        {"/etc/coredns/a.conf": "import s\nerrors\n"},
        ".:53\n  2 loop\n  2 errors",
    ),
    (
        "environment in keys, arguments and an import's path",
        ".:{$PORT} {\n  import {$DIR}/x.conf\n  kubernetes {$DOMAIN}\n}\n",
        {"/srv/x.conf": "forward . {$UPSTREAM}\n"},
        ".:1053\n  1 forward . 10.1.1.1\n  3 kubernetes cluster.local",
    ),
]


@pytest.mark.parametrize(
    "text, files, expected",
    [(t, f, e) for _, t, f, e in IMPORTS],
    ids=[c[0] for c in IMPORTS],
)
def test_imports(text: str, files: dict[str, str], expected: str) -> None:
    env = {"PORT": "1053", "DIR": "/srv", "DOMAIN": "cluster.local", "UPSTREAM": "10.1.1.1"}
    assert outline(read_blocks(text, files, env)) == expected


def test_imported_tokens_name_their_own_file() -> None:
    blocks = read_blocks(".:53 {\n  import x.conf\n}\n", {"/etc/coredns/x.conf": "\n\nlog\n"})
    assert blocks[0].directives[0].where == "/etc/coredns/x.conf:3"


# --- errors --------------------------------------------------------------------------------------

ERRORS = [
    (
        "unknown directive",
        ".:53 {\n  errors\n  kuberentes cluster.local\n}\n",
        {},
        "Corefile:3: unknown directive 'kuberentes' (not a CoreDNS plugin)",
    ),
    (
        "block never closed",
        ".:53 {\n  kubernetes {\n    pods insecure\n  }\n",
        {},
        "Corefile:1: this block has no closing '}'",
    ),
    (
        "plugin block never closed",
        ".:53 {\n  kubernetes {\n    pods insecure\n",
        {},
        "Corefile:2: kubernetes: this block has no closing '}'",
    ),
    ("stray closing brace", ".:53 {\n  errors\n}\n}\n", {}, "Corefile:4: '}' closes no block"),
    (
        "closing brace after arguments",
        ".:53 {\n  errors }\n",
        {},
        "Corefile:2: '}' must stand on a line of its own",
    ),
    (
        "trailing comma then brace",
        "a.example, {\n}\n",
        {},
        "Corefile:1: expected another zone after the trailing ','",
    ),
    (
        "missing import",
        ".:53 {\n  import nope.conf\n}\n",
        {},
        "Corefile:2: import nope.conf: cannot read /etc/coredns/nope.conf: No such file or directory",
    ),
    (
        "import without argument",
        ".:53 {\n  import\n  errors\n}\n",
        {},
        "Corefile:2: import takes one argument: a snippet name, a file or a glob",
    ),
    (
        "import with two arguments",
        ".:53 {\n  import a b\n}\n",
        {},
        "Corefile:2: import takes one argument: a snippet name, a file or a glob",
    ),
    (
        "glob with two stars",
        ".:53 {\n  import /x/*/*.conf\n}\n",
        {},
        "Corefile:2: import /x/*/*.conf: a pattern may hold at most one '*' and one '?', and no '['",
    ),
    (
        "snippet defined twice",
        "(a) {\n}\n(a) {\n}\n",
        {},
        "Corefile:3: snippet 'a' is defined twice",
    ),
    (
        "snippet without braces",
        "(a)\n.:53 {\n}\n",
        {},
        "Corefile:1: snippet (a): expected '{' after its name",
    ),
    (
        "import cycle",
        ".:53 {\n  import a.conf\n}\n",
        {"/etc/coredns/a.conf": "import a.conf\n"},
        "a.conf:1: import a.conf: /etc/coredns/a.conf imports itself (an import cycle)",
    ),
    (
        "a snippet importing itself",
        "(a) {\n  import a\n}\n.:53 {\n  import a\n}\n",
        {},
        "Corefile:2: import a: the snippet imports itself",
    ),
]


@pytest.mark.parametrize(
    "text, files, message", [(t, f, m) for _, t, f, m in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_errors_name_file_and_line(text: str, files: dict[str, str], message: str) -> None:
    with pytest.raises(CorefileError) as caught:
        read_blocks(text, files)
    assert str(caught.value).endswith(message)
    assert str(caught.value).startswith("/etc/coredns/")


def test_brace_only_when_unquoted() -> None:
    tokens = tokenize('.:53 {\n  x "{"\n}\n', "F")
    assert [t.is_brace("{") for t in tokens] == [False, True, False, False, False]
    assert Token("{", "F", 1, quoted=True).is_brace("{") is False


def test_imported_files_and_globs_are_listed_for_the_reload_watch() -> None:
    files = {"/etc/coredns/a.conf": "import /srv/*.server\n", "/srv/x.server": "y {\n}\n"}
    imported: list[str] = []

    def read(path: str) -> str:
        return files[path]

    def glob(pattern: str) -> list[str]:
        return ["/srv/x.server"] if pattern == "/srv/*.server" else []

    text = "(s) {\n}\n.:53 {\n  import s\n  import a.conf\n  import /etc/coredns/custom/*.override\n}\n"
    expand(tokenize(text, "/etc/coredns/Corefile"), {}, read, glob, imported)
    assert imported == ["/etc/coredns/a.conf", "/srv/*.server", "/etc/coredns/custom/*.override"]

"""Property test: whatever a Corefile holds, reading it gives a translation or one CorefileError
naming a line of a file that exists — never another exception.

Inputs are built from Corefile pieces (braces, quotes, comments, directives, options, imports,
environment references) so that most of them get past the lexer. Runs are derandomised and keep
no example database, so a failure is reproducible as is.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kdns.corefile.expand import expand
from kdns.corefile.lexer import CorefileError, tokenize
from kdns.corefile.parser import parse
from kdns.corefile.translate import translate

FUZZ = settings(max_examples=500, derandomize=True, database=None, deadline=None)

PIECES = [
    "{",
    "}",
    "\n",
    " ",
    '"',
    '\\"',
    "#",
    ",",
    ".:53",
    "example.org:1053",
    "10.0.0.0/8",
    "tls://.:853",
    "kubernetes",
    "cluster.local",
    "in-addr.arpa",
    "forward",
    ".",
    "10.0.0.1",
    "/etc/resolv.conf",
    "cache",
    "30",
    "success",
    "denial",
    "disable",
    "serve_stale",
    "1h",
    "health",
    "lameduck",
    "5s",
    "ready",
    "prometheus",
    ":9153",
    "pods",
    "insecure",
    "ttl",
    "fallthrough",
    "namespaces",
    "log",
    "errors",
    "reload",
    "loadbalance",
    "autopath",
    "@kubernetes",
    "bind",
    "::1",
    "hosts",
    "rewrite",
    "template",
    "import",
    "(snip)",
    "snip",
    "*.server",
    "{$X}",
    "{%Y%}",
    "policy",
    "max_concurrent",
    "-1",
    "99999999999",
    "x",
]
FILES = {"/c/a.server": "a.example {\n forward . 10.0.0.1\n}\n", "/c/b.conf": "import b.conf\n"}


def read(path: str) -> str:
    if path not in FILES:
        raise FileNotFoundError(2, "No such file or directory")
    return FILES[path]


def glob(pattern: str) -> list[str]:
    regex = re.escape(pattern).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return sorted(p for p in FILES if re.fullmatch(regex, p))


WORDS = st.sampled_from(PIECES)
ARGS = st.lists(WORDS, max_size=4).map(" ".join)
OPTION = st.tuples(WORDS, ARGS).map(lambda t: f"    {t[0]} {t[1]}\n")
LINE = st.tuples(
    st.sampled_from(
        ["kubernetes", "forward", "cache", "health", "log", "errors", "hosts", "import", "bind"]
    ),
    ARGS,
    st.none() | st.lists(OPTION, max_size=3).map("".join),
).map(lambda t: f"  {t[0]} {t[1]}" + (f" {{\n{t[2]}  }}\n" if t[2] is not None else "\n"))
BLOCK = st.tuples(
    st.sampled_from([".:53", "example.org", "cluster.local", "(snip)", ".:1053", "10.0.0.0/8"]),
    st.lists(LINE, max_size=6).map("".join),
).map(lambda t: f"{t[0]} {{\n{t[1]}}}\n")
# A root block holding `kubernetes`, so most shapes get as far as the translation.
MAIN = st.lists(LINE, max_size=8).map(
    lambda lines: ".:53 {\n  kubernetes\n" + "".join(lines) + "}\n"
)
# Well-formed shapes, then the same with a few pieces dropped in anywhere.
CORE = st.tuples(MAIN, st.lists(BLOCK, max_size=2)).map(lambda t: t[0] + "".join(t[1]))
NOISY = st.tuples(CORE, st.lists(st.tuples(st.integers(0, 10_000), WORDS), max_size=3)).map(
    lambda t: _insert(*t)
)


def _insert(text: str, pieces: list[tuple[int, str]]) -> str:
    for at, piece in pieces:
        at %= len(text) + 1
        text = f"{text[:at]} {piece} {text[at:]}"
    return text


@FUZZ
@given(CORE | NOISY | st.lists(WORDS, max_size=60).map(" ".join))
def test_any_corefile_reads_or_fails_with_one_line(text: str) -> None:
    try:
        translation = translate(
            parse(expand(tokenize(text, "/c/Corefile"), {"X": "1"}, read, glob)), "/c/Corefile"
        )
    except CorefileError as e:
        assert e.file in ("/c/Corefile", *FILES)
        assert 1 <= e.line <= max(text.count("\n"), 3) + 1
        assert "\n" not in str(e)
        return
    for note in translation.notes:
        assert re.match(r"^/c/[^:]+:\d+: ", str(note))

"""`import` and snippets, and environment substitution: tokens → the tokens CoreDNS parses.

Contract (pure: the only I/O is through the `read` and `glob` functions the caller passes):
- `{$NAME}` and `{%NAME%}` inside any token (quoted ones too) become the value of NAME in
  `environ`, or "" when it is unset, as Caddy's `replaceEnvVars` does; a reference without its
  closing brace stays as typed.
- `(name) { ... }` at the top level defines a snippet: its tokens, kept for later. It must be
  defined before it is imported, and only once.
- `import PATTERN`, as the first token of a line at any depth, is replaced by the snippet
  named PATTERN, else by the tokens of the file PATTERN (relative to the importing file's
  folder), else by those of every file the glob PATTERN matches, in name order. A glob that
  matches nothing adds nothing (k3s imports `/etc/coredns/custom/*.server`, which is usually
  empty); a plain file that does not exist is an error. A pattern may hold at most one `*` and
  one `?`, and no `[`, as CoreDNS allows.
- Imported tokens are expanded in turn; an import that leads back to a file or snippet being
  expanded is an error naming the import's line.
- Every error is a `CorefileError` naming the file and line of the token at fault.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import replace

from kdns.corefile.lexer import Token, tokenize

Reader = Callable[[str], str]  # path → text; raises OSError
Globber = Callable[[str], list[str]]  # pattern → matching paths

_ENV = (re.compile(r"\{%([^%{}]+)%\}"), re.compile(r"\{\$([^{}]+)\}"))
MAX_DEPTH = 32  # imports within imports; deeper is surely a cycle through a glob


def substitute_env(text: str, environ: Mapping[str, str]) -> str:
    for pattern in _ENV:
        text = pattern.sub(lambda m: environ.get(m.group(1), ""), text)
    return text


def expand(
    tokens: list[Token],
    environ: Mapping[str, str],
    read: Reader,
    glob: Globber,
    imported: list[str] | None = None,
) -> list[Token]:
    """The tokens of a Corefile with its snippets taken out and its imports spliced in. The
    files and globs imported (absolute, in order) are appended to `imported` when given: a
    reload watches them too."""
    tokens = [replace(t, text=substitute_env(t.text, environ)) for t in tokens]
    expander = _Expander(environ, read, glob)
    out = expander.run(tokens, (tokens[0].file,) if tokens else ())
    if imported is not None:
        imported.extend(dict.fromkeys(expander.imported))
    return out


class _Expander:
    def __init__(self, environ: Mapping[str, str], read: Reader, glob: Globber) -> None:
        self.environ = environ
        self.read = read
        self.glob = glob
        self.snippets: dict[str, list[Token]] = {}
        self.imported: list[str] = []

    def run(self, tokens: list[Token], stack: tuple[str, ...]) -> list[Token]:
        out: list[Token] = []
        depth, i = 0, 0
        while i < len(tokens):
            token = tokens[i]
            if token.starts_line and not token.quoted and token.text == "import":
                i = self._import(tokens, i, stack, out)
                continue
            if depth == 0 and token.starts_line and _is_snippet(token):
                i = self._define(tokens, i)
                continue
            if token.is_brace("{"):
                depth += 1
            elif token.is_brace("}"):
                depth = max(depth - 1, 0)  # a stray `}` is the parser's to report
            out.append(token)
            i += 1
        return out

    def _define(self, tokens: list[Token], i: int) -> int:
        """Take the snippet `(name) { ... }` starting at `tokens[i]`; the index past it."""
        key = tokens[i]
        name = key.text[1:-1]
        if name in self.snippets:
            raise key.error(f"snippet {name!r} is defined twice")
        if i + 1 >= len(tokens) or not tokens[i + 1].is_brace("{"):
            raise key.error(f"snippet {key.text}: expected '{{' after its name")
        depth, j = 1, i + 2
        while j < len(tokens) and depth:
            depth += tokens[j].is_brace("{") - tokens[j].is_brace("}")
            j += 1
        if depth:
            raise key.error(f"snippet {key.text}: no '}}' closes it")
        self.snippets[name] = tokens[i + 2 : j - 1]
        return j

    def _import(self, tokens: list[Token], i: int, stack: tuple[str, ...], out: list[Token]) -> int:
        """Splice in what `import PATTERN` at `tokens[i]` names; the index past the statement."""
        keyword = tokens[i]
        args = []
        j = i + 1
        while j < len(tokens) and not tokens[j].starts_line:
            args.append(tokens[j])
            j += 1
        if len(args) != 1 or not args[0].text:
            raise keyword.error("import takes one argument: a snippet name, a file or a glob")
        pattern = args[0].text
        if len(stack) >= MAX_DEPTH:
            raise keyword.error(f"import {pattern}: imports nested more than {MAX_DEPTH} deep")
        if pattern in self.snippets:
            if "snippet:" + pattern in stack:
                raise keyword.error(f"import {pattern}: the snippet imports itself")
            body = [
                replace(t, starts_line=t.starts_line or k == 0)
                for k, t in enumerate(self.snippets[pattern])
            ]
            out.extend(self.run(body, (*stack, "snippet:" + pattern)))
            return j
        for path in self._paths(keyword, pattern):
            if path in stack:
                raise keyword.error(f"import {pattern}: {path} imports itself (an import cycle)")
            try:
                text = self.read(path)
            except OSError as e:
                raise keyword.error(f"import {pattern}: cannot read {path}: {e.strerror}") from None
            imported = tokenize(text, path)
            imported = [replace(t, text=substitute_env(t.text, self.environ)) for t in imported]
            out.extend(self.run(imported, (*stack, path)))
        return j

    def _paths(self, keyword: Token, pattern: str) -> list[str]:
        if not posixpath.isabs(pattern):
            pattern = posixpath.join(posixpath.dirname(keyword.file), pattern)
        if "[" in pattern or pattern.count("*") > 1 or pattern.count("?") > 1:
            raise keyword.error(
                f"import {pattern}: a pattern may hold at most one '*' and one '?', and no '['"
            )
        self.imported.append(pattern)
        if "*" in pattern or "?" in pattern:
            return sorted(self.glob(pattern))
        return [pattern]


def _is_snippet(token: Token) -> bool:
    return (
        not token.quoted and len(token.text) > 2 and token.text[0] == "(" and token.text[-1] == ")"
    )

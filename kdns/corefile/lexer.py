"""Corefile text → tokens, as CoreDNS's Caddyfile lexer splits it.

Contract (pure; no I/O):
- Whitespace separates tokens. A leading byte-order mark and every `\\r` are dropped.
- An unquoted `#` comments out the rest of the line, even in the middle of a word (`a#b` is
  the token `a`), as Caddy's lexer does.
- `"` opens a quoted token only at the start of a token; the token may span lines and ends at
  the next unescaped `"`. Inside it only `\\"` is an escape; any other backslash stays as typed.
  `""` is an empty token. An unterminated quote is a `CorefileError` naming where it opened.
- Every token keeps its file, the line it starts on, the line it ends on, whether it was
  quoted, and whether it is the first token of its line (which is how the parser tells a
  directive from its arguments).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdns.config import ConfigError


class CorefileError(ConfigError):
    """A Corefile that cannot be read; the text is one line `FILE:LINE: problem`. A config
    error like any other, so a reload that meets one keeps the last good config."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        super().__init__(f"{file}:{line}: {problem}", problem=problem)
        self.file = file
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    file: str
    line: int
    end_line: int = 0  # the line a quoted token spanning lines ends on (0: same as `line`)
    quoted: bool = False
    starts_line: bool = False  # the first token on its line: a directive (or a block's key)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def last_line(self) -> int:
        return self.end_line or self.line

    def is_brace(self, brace: str) -> bool:
        """`{` or `}` standing alone and unquoted opens or closes a block."""
        return not self.quoted and self.text == brace

    def error(self, problem: str) -> CorefileError:
        return CorefileError(self.file, self.line, problem)


def tokenize(text: str, file: str) -> list[Token]:
    """The tokens of `text` (the contents of `file`), in order."""
    text = text.removeprefix("\ufeff").replace("\r", "")
    tokens: list[Token] = []
    line, i, n = 1, 0, len(text)
    previous_line = 0  # the last line a token ended on
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif ch == '"':
            start = line
            i, value, line = _quoted(text, i + 1, line, file)
            tokens.append(
                Token(value, file, start, line if line != start else 0, True, start > previous_line)
            )
            previous_line = line
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] != "#":
                j += 1
            tokens.append(Token(text[i:j], file, line, 0, False, line > previous_line))
            previous_line = line
            i = j
            if i < n and text[i] == "#":  # a comment glued to the word ends it
                i = text.find("\n", i)
                i = n if i < 0 else i
    return tokens


def _quoted(text: str, i: int, line: int, file: str) -> tuple[int, str, int]:
    """Read a quoted token's body from `text[i]` (just past the opening quote): (the index past
    the closing quote, the value, the line the token ends on)."""
    out: list[str] = []
    start, n = line, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] == '"':
            out.append('"')
            i += 2
            continue
        if ch == '"':
            return i + 1, "".join(out), line
        if ch == "\n":
            line += 1
        out.append(ch)
        i += 1
    raise CorefileError(file, start, 'unterminated quoted string (no closing ")')

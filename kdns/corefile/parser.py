"""Tokens → server blocks, as CoreDNS's Caddyfile parser groups them.

Contract (pure):
- A server block is one or more keys, then `{`, its directives, `}`. Keys are separated by
  whitespace or a trailing comma (a comma lets the next key sit on the next line); a block
  without `{` takes the rest of the file, as Caddy's parser does.
- A directive is the first token of a line; its arguments are the tokens after it on that line;
  `{` at the end of the line opens its nested block, whose lines are directives in turn (the
  options of a plugin: `pods insecure`, `lameduck 5s`). Nesting is counted, so a plugin block
  may hold blocks of its own.
- A directive that is not one of CoreDNS's plugins, a `}` with no `{` to close, a block left
  open at the end of the file, and a block with no keys are errors naming the file and line.
- Every key, directive and argument keeps its Token, so whatever reads the blocks can name
  the line behind each setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdns.corefile.lexer import Token

# The plugins of CoreDNS's plugin.cfg (v1.12–1.14), in the order CoreDNS runs them. A name
# outside this list is a typo or an external plugin kdns cannot know.
PLUGINS = (
    "root",
    "metadata",
    "geoip",
    "cancel",
    "tls",
    "quic",
    "timeouts",
    "multisocket",
    "reload",
    "nsid",
    "bufsize",
    "bind",
    "debug",
    "trace",
    "ready",
    "health",
    "pprof",
    "prometheus",
    "errors",
    "log",
    "dnstap",
    "local",
    "dns64",
    "acl",
    "any",
    "chaos",
    "loadbalance",
    "tsig",
    "cache",
    "rewrite",
    "header",
    "dnssec",
    "autopath",
    "minimal",
    "template",
    "transfer",
    "hosts",
    "route53",
    "azure",
    "clouddns",
    "k8s_external",
    "kubernetes",
    "file",
    "auto",
    "secondary",
    "etcd",
    "loop",
    "forward",
    "grpc",
    "erratic",
    "whoami",
    "on",
    "sign",
    "view",
    "nomad",
)


@dataclass(frozen=True, slots=True)
class Directive:
    """One line of a block: `name args...`, with the lines of its own `{ }` block if any."""

    name: Token
    args: tuple[Token, ...] = ()
    block: tuple[Directive, ...] | None = None

    @property
    def where(self) -> str:
        return self.name.where

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(a.text for a in self.args)


@dataclass(frozen=True, slots=True)
class ServerBlock:
    keys: tuple[Token, ...]
    directives: tuple[Directive, ...]


def parse(tokens: list[Token]) -> tuple[ServerBlock, ...]:
    """The server blocks of an expanded token list (kdns/corefile/expand.py)."""
    blocks = []
    i = 0
    while i < len(tokens):
        start = tokens[i]
        keys, i = _keys(tokens, i)
        if not keys:
            raise start.error("a server block needs a zone, e.g. '.:53'")
        if i < len(tokens) and tokens[i].is_brace("{"):
            opening = tokens[i]
            lines, i = _lines(tokens, i + 1, top=True)
            if i >= len(tokens):
                raise opening.error("this block has no closing '}'")
            i += 1  # past the block's `}`
        else:
            lines, i = _lines(tokens, i, top=True)  # no brace: the rest of the file
            if i < len(tokens):
                raise tokens[i].error("'}' closes no block")
        blocks.append(ServerBlock(tuple(keys), tuple(lines)))
    return tuple(blocks)


def _keys(tokens: list[Token], i: int) -> tuple[list[Token], int]:
    """The keys of the block starting at `tokens[i]`, and the index of the token after them."""
    first = tokens[i]
    if first.is_brace("}"):
        raise first.error("'}' closes no block")
    keys: list[Token] = []
    another = False
    while i < len(tokens):
        token = tokens[i]
        if token.is_brace("{"):
            if another:
                raise token.error("expected another zone after the trailing ','")
            break
        if keys and not another and token.starts_line:
            break
        text = token.text
        another = text.endswith(",")
        if another:
            text = text[:-1]
        if text:
            keys.append(Token(text, token.file, token.line, token.end_line, token.quoted))
        i += 1
    if another:
        raise tokens[i - 1].error("expected another zone after the trailing ','")
    return keys, i


def _lines(tokens: list[Token], i: int, top: bool) -> tuple[list[Directive], int]:
    """Directives from `tokens[i]` up to the `}` that closes their block (its index), or the end."""
    out: list[Directive] = []
    while i < len(tokens):
        token = tokens[i]
        if token.is_brace("}"):
            return out, i
        if token.is_brace("{"):
            raise token.error("'{' must end the line of the directive or zone it belongs to")
        if top and token.text not in PLUGINS:
            raise token.error(f"unknown directive {token.text!r} (not a CoreDNS plugin)")
        args: list[Token] = []
        i += 1
        while i < len(tokens) and not tokens[i].starts_line:
            if tokens[i].is_brace("}"):
                raise tokens[i].error("'}' must stand on a line of its own")
            if tokens[i].is_brace("{"):
                break
            args.append(tokens[i])
            i += 1
        block = None
        if i < len(tokens) and tokens[i].is_brace("{"):
            opening = tokens[i]
            inner, i = _lines(tokens, i + 1, top=False)
            if i >= len(tokens):
                raise opening.error(f"{token.text}: this block has no closing '}}'")
            i += 1
            block = tuple(inner)
        out.append(Directive(token, tuple(args), block))
    return out, i

"""Reading a CoreDNS Corefile into kdns's config model (`kdns serve --corefile`).

Four steps, each its own module:

- `lexer`: text → tokens, each carrying its file and line (pure).
- `expand`: `import` of files, globs and snippets, and `{$VAR}` environment substitution
  (pure, given a function that reads a file and one that expands a glob).
- `parser`: tokens → server blocks: keys, directives, arguments and nested blocks (pure).
- `translate`: server blocks → kdns config keys, with one line per directive kdns does not
  support (pure); `load` reads the files and applies the keys to a `Config`.

Errors name the file and line of the token at fault: `Corefile:7: ...`.
"""

"""A Corefile on disk → a `Translation` → a `Config` (`kdns serve --corefile`, `kdns check`).

Contract:
- `read_corefile(path, environ)` reads the file and whatever it imports, and returns the
  `Translation` (kdns/corefile/translate.py); a Corefile CoreDNS would refuse raises
  `CorefileError` naming the file and line. The file functions can be replaced (`read`,
  `glob`), so tests map `/etc/coredns/...` onto their data.
- `corefile_config(translation, path)` is the `Config` the translation's keys give, on top of
  the defaults, with `source` the Corefile and `imports` the files and globs it imported (a
  reload watches them). A value the config model rejects raises `ConfigError` naming the
  Corefile line and the directive: `Corefile:10: ttl: must be ... (kdns key dns.ttl)`.
- `load_corefile(path, environ)` is both, and raises `CorefileRefused` (a `ConfigError` with
  one line per refused directive) when following the Corefile would change answers.
- `render_yaml(translation)` is the kdns config file saying the same (`kdns check
  --corefile`): sections and keys in the config model's order, each with the Corefile line it
  came from, then every note as a comment. Loading that file gives the same `Config`.
- Reading only: the Corefile is re-read on every reload like any config file.
"""

from __future__ import annotations

import glob as globbing
from collections.abc import Mapping
from typing import Any

import yaml

from kdns.config import KEYS, SECTIONS, Config, ConfigError
from kdns.corefile.expand import Globber, Reader, expand
from kdns.corefile.lexer import CorefileError, tokenize
from kdns.corefile.parser import parse
from kdns.corefile.translate import Note, Translation, translate


class CorefileRefused(ConfigError):
    """A Corefile kdns can read but would not answer as CoreDNS does: one line per directive."""

    def __init__(self, notes: tuple[Note, ...]) -> None:
        self.lines = [str(n) for n in notes]
        super().__init__("; ".join(self.lines))


def read_text(path: str) -> str:
    """A Corefile or an imported file as text; bytes that are not UTF-8 are one error naming
    the line (CoreDNS reads bytes, but every name and address in a Corefile is ASCII)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CorefileError(path, line, f"not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def read_corefile(
    path: str,
    environ: Mapping[str, str],
    read: Reader = read_text,
    glob: Globber = globbing.glob,
    imported: list[str] | None = None,
) -> Translation:
    try:
        text = read(path)
    except OSError as e:
        raise CorefileError(path, 1, f"cannot read the Corefile: {e.strerror}") from None
    tokens = expand(tokenize(text, path), environ, read, glob, imported)
    return translate(parse(tokens), path)


def corefile_config(translation: Translation, path: str, imports: tuple[str, ...] = ()) -> Config:
    config = Config(source=path, imports=imports)
    for setting in translation.settings:
        try:
            config = config.with_overrides(**{setting.key: setting.value})
        except ConfigError as e:
            raise ConfigError(
                f"{setting.where}: {setting.directive}: {e.problem} (kdns key {setting.key})",
                key=setting.key,
                problem=e.problem,
            ) from None
    return config


def load_corefile(path: str, environ: Mapping[str, str]) -> tuple[Config, Translation]:
    """The config a Corefile gives, and its translation (for the accepted notes)."""
    imported: list[str] = []
    translation = read_corefile(path, environ, imported=imported)
    if translation.refused:
        raise CorefileRefused(translation.refused)
    return corefile_config(translation, path, tuple(imported)), translation


def render_yaml(translation: Translation, source: str) -> str:
    by_key = {s.key: s for s in translation.settings}
    lines = [f"# The kdns config that {source} gives (kdns check --corefile)."]
    for section in SECTIONS:
        paths = [p for p in KEYS if p.startswith(section + ".") and p in by_key]
        if not paths:
            continue
        lines.append(f"{section}:")
        for path in paths:
            setting = by_key[path]
            value = _flow(_plain(path, setting.value))
            lines.append(f"  {path.split('.', 1)[1]}: {value}  # {setting.where}")
    lines += [f"# {note}" for note in translation.notes]
    return "\n".join(lines) + "\n"


def _plain(path: str, value: Any) -> Any:
    """A config value as YAML spells it: tuples as lists, stub domains as a mapping."""
    if path == "forward.stub_domains":
        return {zone: list(servers) for zone, servers in value}
    if isinstance(value, tuple):
        return list(value)
    return value


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()

"""A Corefile on disk → a `Translation` → a `Config` (`kdns serve --corefile`, `kdns check`).

Contract:
- `read_corefile(path, environ)` reads the file and whatever it imports, and returns the
  `Translation` (kdns/corefile/translate.py); a Corefile CoreDNS would refuse raises
  `CorefileError` naming the file and line. The file functions can be replaced (`read`,
  `glob`), so tests map `/etc/coredns/...` onto their data.
- `corefile_config(translation, base)` applies the translation's keys to `base`, each checked
  by the config model; a bad value raises `ConfigError` naming the Corefile line it came from.
- Reading only: the Corefile is re-read on every reload like any config file.
"""

from __future__ import annotations

import glob as globbing
from collections.abc import Mapping

from kdns.config import Config
from kdns.corefile.expand import Globber, Reader, expand
from kdns.corefile.lexer import CorefileError, tokenize
from kdns.corefile.parser import parse
from kdns.corefile.translate import Translation, translate


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_corefile(
    path: str,
    environ: Mapping[str, str],
    read: Reader = read_text,
    glob: Globber = globbing.glob,
) -> Translation:
    try:
        text = read(path)
    except OSError as e:
        raise CorefileError(path, 1, f"cannot read the Corefile: {e.strerror}") from None
    return translate(parse(expand(tokenize(text, path), environ, read, glob)), path)


def corefile_config(translation: Translation, base: Config) -> Config:
    config = base
    for setting in translation.settings:
        config = config.with_overrides(where=setting.where, **{setting.key: setting.value})
    return config

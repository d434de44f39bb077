"""Fuzz targets: bytes in, an AssertionError (or any other exception) out when kdns misbehaves.

Each target is a plain function of one input, so the same code runs under atheris
(`tests/fuzz/run.py`, coverage-guided, not in CI) and in the test suite, which replays the
committed corpus (`tests/fuzz/test_corpus.py`). What each one asserts:

- `packet_udp`: the input is one datagram; `Handler.handle` answers it (bytes with the client's
  ID, QR set, readable by dnspython as a whole message, within the UDP limit) or drops it (no
  full header, or QR already set), never takes its internal-error path, and answers the same
  way twice (the answer cache agrees with the slow path). The properties are those of
  tests/dns/test_fuzz.py's `check`, which this calls.
- `packet_tcp`: the input is a TCP byte stream; it is cut into DNS messages by their two-byte
  length prefix (RFC 1035 §4.2.2), as the server's reader does, and each message must pass the
  same checks (without the UDP size limit).
- `manifest`: the input is a manifest file (YAML, or JSON when it starts with "{" or "["); the
  lean reader (`ManifestReader`) must return, never raise, and every error must name the file
  and a line inside it; and it must give exactly the objects and the errors of the reader that
  records every field's line (`parse_text` + `convert`): lines found by reading a file again
  are the lines the full read finds, and the hand-written construction of plain data is
  PyYAML's.
- `config`: the input is a config file; `load_config` returns a Config or raises ConfigError
  whose message starts with the file's path and, when it names a line, a line in the file.
"""

from __future__ import annotations

import os
import re
import tempfile

from kdns.config import ConfigError, load_config
from kdns.sources.documents import NESTED_TOO_DEEPLY, ManifestError, parse_text
from kdns.sources.manifests import ManifestReader, convert
from tests.dns.test_fuzz import check

_WORK = tempfile.mkdtemp(prefix="kdns-fuzz-")


def packet_udp(data: bytes) -> None:
    check(data, True)


def packet_tcp(data: bytes) -> None:
    for message in tcp_messages(data):
        check(message, False)


def tcp_messages(stream: bytes) -> list[bytes]:
    """The complete messages of a TCP stream, each after its two-byte length (RFC 1035 §4.2.2);
    an incomplete last message is left unread, as the server leaves it until more arrives."""
    messages = []
    at = 0
    while len(stream) - at >= 2:
        size = int.from_bytes(stream[at : at + 2])
        if len(stream) - at - 2 < size:
            break
        messages.append(stream[at + 2 : at + 2 + size])
        at += 2 + size
    return messages


def manifest(data: bytes) -> None:
    name = "m.json" if data[:1] in (b"{", b"[") else "m.yaml"
    path = _write(name, data)
    lines = _lines(data)
    found, errors = ManifestReader().load([path])
    for error in errors:
        assert error.file == path, error
        assert error.line is None or 1 <= error.line <= lines, f"line out of the file: {error}"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    docs, full_errors = parse_text(text, path)
    if any(e.message == NESTED_TOO_DEEPLY for e in [*errors, *full_errors]):
        return  # each reader recurses to its own depth per level of nesting
    full_set, convert_errors = convert(docs)
    full = sorted([*full_errors, *convert_errors], key=lambda e: (e.file, e.line or 0))
    assert found == full_set
    if _refused(errors) and _refused(full):
        # A file with two YAML errors in one document (an unknown tag, an impossible date): the
        # readers build values in different orders, so each may name the other one.
        return
    assert [str(e) for e in errors] == [str(e) for e in full]


def _refused(errors: list[ManifestError]) -> bool:
    """The whole file refused by one YAML error (no object was read)."""
    return len(errors) == 1 and errors[0].message.startswith("invalid YAML")


def config(data: bytes) -> None:
    path = _write("kdns.yaml", data)
    lines = _lines(data)
    try:
        load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(path), message
        line = re.match(re.escape(path) + r":(\d+)", message)
        assert line is None or 1 <= int(line.group(1)) <= lines, message


def _lines(data: bytes) -> int:
    """How many lines an editor shows (a last line without a line break counts)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1


def _write(name: str, data: bytes) -> str:
    path = os.path.join(_WORK, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


TARGETS = {
    "packet_udp": packet_udp,
    "packet_tcp": packet_tcp,
    "manifest": manifest,
    "config": config,
}

"""The query log: one line per answered query, in CoreDNS's `log` plugin format or as JSON.

Contract:
- `QueryLog(format)` is a `DnsServer.query_log`: each call writes one line to the `kdns.query`
  logger at INFO (kdns/logs.py sends it to stderr as it is).
- `text` is CoreDNS's common log format (plugin/log README), so grep-based runbooks keep working:
  `[INFO] {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}"
  {rcode} {>rflags} {rsize} {duration}`, e.g.
  `[INFO] 127.0.0.1:55555 - 1234 "A IN example.org. udp 29 false 512" NOERROR qr,aa,rd 97
  0.000123s` (an IPv6 remote in brackets).
- `json` has the same fields by name — time, remote, port, id, type, class, name, proto, size,
  do, bufsize, rcode, rflags, rsize, duration (seconds, a number) — one object per line.
- As CoreDNS: the name is lower-case with its final dot, bufsize is the EDNS size the client
  advertised (at least 512; 512 without EDNS) over UDP and 65535 over TCP, rcode is the response
  code's name, rflags the response's header flags. A field of a query too malformed to read is
  "-" (CoreDNS's empty value).
- `fields` and `text_line` are pure.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from dnslib import CLASS, QTYPE

from kdns.dns import wire
from kdns.dns.stats import LABELS

QUERY_FORMATS = ("text", "json")
EMPTY = "-"
TCP_BUFSIZE = 65535  # miekg/dns MaxMsgSize: CoreDNS's bufsize for TCP

# Header flag bits in the order CoreDNS prints them (plugin/pkg/replacer flagsToString).
_FLAGS = (
    (0x8000, "qr"),
    (0x0400, "aa"),
    (0x0200, "tc"),
    (0x0100, "rd"),
    (0x0080, "ra"),
    (0x0040, "z"),
    (0x0020, "ad"),
    (0x0010, "cd"),
)


def rflags(response: bytes) -> str:
    if len(response) < 4:
        return EMPTY
    flags = int.from_bytes(response[2:4])
    return ",".join(name for bit, name in _FLAGS if flags & bit)


def type_name(qtype: int) -> str:
    # RFC 3597 §5 spelling for a type without a mnemonic.
    return str(QTYPE.get(qtype, f"TYPE{qtype}"))


def class_name(qclass: int) -> str:
    return str(CLASS.get(qclass, f"CLASS{qclass}"))


def duration_text(seconds: float) -> str:
    # Go's strconv.FormatFloat(d.Seconds(), 'f', -1, 64): no exponent; durations are in ns.
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return (text or "0") + "s"


def fields(
    addr: tuple[str, int],
    proto: str,
    data: bytes,
    response: bytes,
    rcode: str,
    seconds: float,
) -> dict[str, Any]:
    """The log plugin's fields for one query and its response."""
    query = wire.parse_query(data)
    out: dict[str, Any] = {
        "remote": addr[0],
        "port": addr[1],
        "id": int.from_bytes(data[:2]) if len(data) >= 2 else EMPTY,
        "type": EMPTY,
        "class": EMPTY,
        "name": EMPTY,
        "proto": proto,
        "size": len(data),
        "do": EMPTY,
        "bufsize": EMPTY,
        "rcode": rcode,
        "rflags": rflags(response),
        "rsize": len(response),
        "duration": seconds,
    }
    if isinstance(query, wire.Query):
        out["type"] = type_name(query.qtype)
        out["class"] = class_name(query.qclass)
        out["name"] = query.qname + "." if query.labels else "."
        out["do"] = query.do
        if proto == "tcp":
            out["bufsize"] = TCP_BUFSIZE
        else:
            out["bufsize"] = max(query.payload, wire.CLASSIC_UDP_PAYLOAD) if query.edns else 512
    return out


def text_line(f: dict[str, Any]) -> str:
    remote = f"[{f['remote']}]" if ":" in f["remote"] else f["remote"]
    do = str(f["do"]).lower() if isinstance(f["do"], bool) else f["do"]
    return (
        f"[INFO] {remote}:{f['port']} - {f['id']} "
        f'"{f["type"]} {f["class"]} {f["name"]} {f["proto"]} {f["size"]} {do} {f["bufsize"]}" '
        f"{f['rcode']} {f['rflags']} {f['rsize']} {duration_text(f['duration'])}"
    )


class QueryLog:
    """The server's `query_log` callable for one format."""

    def __init__(self, log_format: str, logger: logging.Logger | None = None) -> None:
        if log_format not in QUERY_FORMATS:
            raise ValueError(f"query log format {log_format!r} is not one of text, json")
        self.json = log_format == "json"
        self.log = logger or logging.getLogger("kdns.query")

    def __call__(
        self,
        addr: tuple[str, int],
        proto: str,
        data: bytes,
        response: bytes,
        label: int,
        seconds: float,
    ) -> None:
        f = fields(addr, proto, data, response, LABELS.labels[label].rcode, seconds)
        if self.json:
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            line = json.dumps({"time": now, "level": "info", **f}, ensure_ascii=False)
        else:
            line = text_line(f)
        self.log.info(line)

"""Names and addresses in wire form, memoised: what a large answer needs per endpoint.

A 500-endpoint headless Service's SRV answer names 500 targets (each one's labels, for the glue
record's owner, and its uncompressed wire form, RFC 2782) and 500 addresses (their octets).
They are made here, for the resolver's records in wire parts (`pack.Rec`), and kept across
rebuilds: a rollout keeps most endpoint names and addresses from one change to the next. The
names and addresses that are new (a rollout of every pod) are made together, a pass over all of
them per step instead of a Python call per name.

Contract: `name_parts(name)` is the name's labels — the dot-separated parts, latin-1 encoded,
empty ones dropped — and its wire form (each label with its length, then the root), None when a
label is over 63 octets or the name over 255 (RFC 1035 §2.3.4); `names_parts` is `name_parts`
of each of a list. `address_bytes(ip)` is a canonical IPv4 or IPv6 address's octets;
`addresses_bytes` of each of a list. Pure: no I/O. The memos are plain dicts, bounded in
entries (the oldest go first), read and written on the trio thread only (the resolver's,
docs/architecture.md §6); at the bound they hold a few MiB.
"""

from __future__ import annotations

import ipaddress
from itertools import islice

from kdns.dns import pack

MEMO_BOUND = 32768  # names, and addresses, kept
MAX_LABEL = 63  # octets (RFC 1035 §2.3.4)
MAX_NAME = 255  # octets on the wire with the root label (RFC 1035 §3.1)
_LENGTH = tuple(bytes((n,)) for n in range(256))  # a label's length octet, by length

Parts = tuple[tuple[bytes, ...], bytes | None]
_names: dict[str, Parts] = {}
_addresses: dict[str, bytes] = {}


def labels(name: str) -> tuple[bytes, ...]:
    """`name`'s labels, latin-1 encoded, empty ones (the root's) dropped."""
    return tuple(label for label in name.encode("latin-1").split(b".") if label)


def _room(memo: dict[str, object], new: int = 0) -> None:
    """Forget the oldest entries of `memo` so that `new` more fit under `MEMO_BOUND`: a few at
    a time, never the whole memo at once (freeing 32,768 entries in one go held the GIL for
    milliseconds)."""
    excess = len(memo) + new - MEMO_BOUND
    if excess > 0:
        for key in list(islice(memo, excess)):
            del memo[key]


def name_parts(name: str) -> Parts:
    """`name`'s labels and wire form (the module docstring), from the memo of the name without
    its first label, which every endpoint of a Service shares."""
    parts = _names.get(name)
    if parts is not None:
        return parts
    first, _, rest = name.partition(".")
    if not rest or not first:
        own = labels(name)  # one label, or an empty one that `labels` drops
        parts = own, pack.name_wire(own)
    else:
        head = first.encode("latin-1")
        rest_labels, rest_wire = name_parts(rest)
        size = len(head) + 1 + len(rest_wire) if rest_wire is not None else MAX_NAME + 1
        wire = _LENGTH[len(head)] + head + rest_wire if rest_wire is not None else None
        parts = (head, *rest_labels), wire if len(head) <= MAX_LABEL and size <= MAX_NAME else None
    _room(_names, 1)  # type: ignore[arg-type]
    _names[name] = parts
    return parts


def names_parts(names: list[str]) -> list[Parts]:
    """`name_parts` of each name; those not in the memo, when they share one parent (the new
    endpoint names of one Service), made together: one encode of all their first labels."""
    found = [_names.get(name) for name in names]
    missing = [i for i, parts in enumerate(found) if parts is None]
    if not missing:
        return found  # type: ignore[return-value]
    cut = [names[i].partition(".") for i in missing]
    firsts = [first for first, _, _ in cut]
    rest = cut[0][2]
    if "" in firsts or any(r != rest for _, _, r in cut) or "\0" in "".join(firsts):
        return [name_parts(name) for name in names]
    rest_labels, rest_wire = name_parts(rest)
    # Joined by a NUL, which none of them holds (checked above).
    heads = "\0".join(firsts).encode("latin-1").split(b"\0")
    for i, head in zip(missing, heads, strict=True):
        fits = (
            rest_wire is not None
            and len(head) <= MAX_LABEL
            and len(head) + 1 + len(rest_wire) <= MAX_NAME
        )
        wire = _LENGTH[len(head)] + head + rest_wire if fits else None  # type: ignore[operator]
        found[i] = _names[names[i]] = ((head, *rest_labels), wire)
    _room(_names)  # type: ignore[arg-type]
    return found  # type: ignore[return-value]


def address_bytes(ip: str) -> bytes:
    """An A or AAAA record's rdata: the address's octets (the model holds canonical text)."""
    packed = _addresses.get(ip)
    if packed is None:
        v6 = ":" in ip
        packed = ipaddress.IPv6Address(ip).packed if v6 else bytes(map(int, ip.split(".")))
        _room(_addresses, 1)  # type: ignore[arg-type]
        _addresses[ip] = packed
    return packed


def addresses_bytes(ips: list[str]) -> list[bytes]:
    """`address_bytes` of each address; IPv4 addresses not in the memo converted together (one
    split and one `bytes` of all their octets)."""
    found = [_addresses.get(ip) for ip in ips]
    missing = [i for i, packed in enumerate(found) if packed is None]
    if not missing:
        return found  # type: ignore[return-value]
    new = [ips[i] for i in missing]
    if ":" in "".join(new):
        return [address_bytes(ip) for ip in ips]
    octets = bytes(map(int, ".".join(new).split(".")))
    for n, i in enumerate(missing):
        found[i] = _addresses[ips[i]] = octets[4 * n : 4 * n + 4]
    _room(_addresses)  # type: ignore[arg-type]
    return found  # type: ignore[return-value]

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
docs/architecture.md §6); at the bound they hold about 4 MiB. `memoised()` lists what they hold,
oldest first; `clear_memos()` empties them (each name and address is made again when asked).
"""

from __future__ import annotations

import ipaddress
from itertools import islice
from typing import Any

from kdns.dns import pack

MEMO_BOUND = 8192  # names, and addresses, kept: about 4 MiB in all at the bound
MAX_LABEL = 63  # octets (RFC 1035 §2.3.4)
MAX_NAME = 255  # octets on the wire with the root label (RFC 1035 §3.1)
_LENGTH = tuple(bytes((n,)) for n in range(256))  # a label's length octet, by length

Parts = tuple[tuple[bytes, ...], bytes | None]
_names: dict[str, Parts] = {}
_addresses: dict[str, bytes] = {}


def labels(name: str) -> tuple[bytes, ...]:
    """`name`'s labels, latin-1 encoded, empty ones (the root's) dropped."""
    return tuple(label for label in name.encode("latin-1").split(b".") if label)


def memoised() -> tuple[list[str], list[str]]:
    """The names and the addresses the memos hold, each oldest first (the first to go)."""
    return list(_names), list(_addresses)


def clear_memos() -> None:
    """Forget every memoised name and address (on the trio thread, as every memo write)."""
    _names.clear()
    _addresses.clear()


def _room(memo: dict[str, object], new: int = 0) -> None:
    """Forget the oldest entries of `memo` so that `new` more fit under `MEMO_BOUND`: a few at
    a time, never the whole memo at once (freeing 32,768 names in one go took 6-8 ms, all of
    it holding the GIL)."""
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
    """`name_parts` of each name; those not in the memo, when each is one label below one
    parent (the new endpoint names of one Service), made together: the labels cut off the
    parent, and encoded, by one `replace`, `encode` and `split` of all of them joined."""
    found = list(map(_names.get, names))
    if None not in found:
        return found  # type: ignore[return-value]
    new = [name for name, parts in zip(names, found, strict=True) if parts is None]
    made = _below_one_parent(new)
    if made is None:
        return [name_parts(name) for name in names]
    _names.update(zip(new, made, strict=True))
    _room(_names)  # type: ignore[arg-type]
    return _filled(found, made)


def _below_one_parent(names: list[str]) -> list[Parts] | None:
    """`name_parts` of each of `names` when every one is a single non-empty label below the
    parent of the first (None otherwise, or when a NUL, the separator here, is in one)."""
    first, _, parent = names[0].partition(".")
    joined = "\0".join(names)
    tail = "." + parent
    if not first or not parent or "\0" in "".join(names) or not joined.endswith(tail):
        return None
    # Each name's parent, with the separator after it, cut off at once: a name that does not
    # end with the parent keeps a dot, and the count of cuts tells it too.
    cut = joined[: -len(tail)]
    if cut.count(tail + "\0") != len(names) - 1:
        return None
    heads_text = cut.replace(tail + "\0", "\0")
    if "." in heads_text:
        return None
    heads = heads_text.encode("latin-1").split(b"\0")
    if b"" in heads:
        return None
    parent_labels, parent_wire = name_parts(parent)
    longest = max(map(len, heads))
    if parent_wire is None or longest > MAX_LABEL or longest + 1 + len(parent_wire) > MAX_NAME:
        return None  # one of them too long: each its own way
    return [((head, *parent_labels), _LENGTH[len(head)] + head + parent_wire) for head in heads]


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
    found = list(map(_addresses.get, ips))
    if None not in found:
        return found  # type: ignore[return-value]
    new = [ip for ip, packed in zip(ips, found, strict=True) if packed is None]
    if ":" in "".join(new):
        return [address_bytes(ip) for ip in ips]
    octets = bytes(map(int, ".".join(new).split(".")))
    made = [octets[i : i + 4] for i in range(0, len(octets), 4)]
    _addresses.update(zip(new, made, strict=True))
    _room(_addresses)  # type: ignore[arg-type]
    return _filled(found, made)


def _filled(found: list[Any], made: list[Any]) -> list[Any]:
    """`found` (memo hits, None where the memo had nothing) with its gaps filled, in order, from
    `made` (what was made for them together)."""
    if len(made) == len(found):
        return made
    fresh = iter(made)
    return [got if got is not None else next(fresh) for got in found]

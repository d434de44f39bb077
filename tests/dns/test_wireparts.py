"""wireparts.py: names and addresses in wire form, each as RFC 1035 writes it, whether made one
at a time or together, from the memo or not."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdns.dns import wireparts
from kdns.dns.wireparts import address_bytes, addresses_bytes, name_parts, names_parts


@pytest.fixture(autouse=True)
def empty_memos() -> Iterator[None]:
    wireparts.clear_memos()
    yield
    wireparts.clear_memos()


def wire(*labels: bytes) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


@pytest.mark.parametrize(
    ("name", "labels", "encoded"),
    [
        (
            "web-0.hl.big.svc.cluster.local",
            (b"web-0", b"hl", b"big", b"svc", b"cluster", b"local"),
            wire(b"web-0", b"hl", b"big", b"svc", b"cluster", b"local"),
        ),
        ("local", (b"local",), wire(b"local")),
        ("a..b", (b"a", b"b"), wire(b"a", b"b")),  # an empty label is dropped
        ("a.b.", (b"a", b"b"), wire(b"a", b"b")),  # so is the root's
        ("x" * 63 + ".svc", (b"x" * 63, b"svc"), wire(b"x" * 63, b"svc")),
        ("x" * 64 + ".svc", (b"x" * 64, b"svc"), None),  # RFC 1035 §2.3.4: 63 octets at most
        # 255 octets on the wire with the root is the most a name may take (RFC 1035 §3.1).
        (
            ".".join(["y" * 63] * 3 + ["z" * 61]),
            (b"y" * 63,) * 3 + (b"z" * 61,),
            wire(*(b"y" * 63,) * 3, b"z" * 61),
        ),
        (".".join(["y" * 63] * 3 + ["z" * 62]), (b"y" * 63,) * 3 + (b"z" * 62,), None),
    ],
)
def test_a_names_labels_and_wire_form(
    name: str, labels: tuple[bytes, ...], encoded: bytes | None
) -> None:
    assert name_parts(name) == (labels, encoded)
    assert name_parts(name) == (labels, encoded)  # from the memo
    wireparts.clear_memos()
    assert names_parts([name, "other." + name]) == [(labels, encoded), name_parts("other." + name)]


LABEL = st.sampled_from(
    ["10-1-0-1", "web-0", "x" * 63, "x" * 64, "", "hl", "svc", "cluster", "a\0b", "y" * 62]
)
NAME = st.lists(LABEL, min_size=1, max_size=6).map(".".join)
PARENT = st.sampled_from(["hl.big.svc.cluster.local", "y" * 63 + ".z", "y" * 63 + "." + "z" * 125])


@settings(max_examples=300, deadline=None)
@given(st.lists(NAME, max_size=8), st.lists(LABEL, min_size=1, max_size=8), PARENT)
def test_names_made_together_are_those_made_one_at_a_time(
    names: list[str], heads: list[str], parent: str
) -> None:
    # A rollout's new names are one label below one parent: made together. Anything else
    # falls back to one at a time; either way the same parts.
    for batch in ([f"{head}.{parent}" for head in heads], [f"{n}.{parent}" for n in names] + names):
        together = names_parts(batch)
        wireparts.clear_memos()
        assert together == [name_parts(name) for name in batch]
        wireparts.clear_memos()


@pytest.mark.parametrize(
    "heads",
    [
        ["10-1-0-1", "10-1-0-2", "web-0"],  # a rollout's new endpoints: made together
        ["10-1-0-1", "x" * 64, "web-0"],  # one label too long: no wire form for that one
        ["10-1-0-1", "a.b", "web-0"],  # a Pod's name with a dot: two labels
        ["10-1-0-1", "", "web-0"],  # an empty label
    ],
)
def test_a_rollouts_names_made_together_are_those_made_one_at_a_time(heads: list[str]) -> None:
    old = "old.hl.big.svc.cluster.local"
    names = [old, *(f"{head}.hl.big.svc.cluster.local" for head in heads)]
    name_parts(old)  # in the memo already: the rest are new
    together = names_parts(names)
    wireparts.clear_memos()
    assert together == [name_parts(name) for name in names]
    assert (together[2][1] is None) == (heads[1] == "x" * 64)


@pytest.mark.parametrize(
    "ip", ["10.1.2.3", "0.0.0.0", "255.255.255.255", "fd00::1", "::ffff:10.0.0.1"]
)
def test_an_addresss_octets(ip: str) -> None:
    packed = ipaddress.ip_address(ip).packed
    assert address_bytes(ip) == packed
    wireparts.clear_memos()
    assert addresses_bytes([ip, "10.9.9.9"]) == [packed, bytes([10, 9, 9, 9])]
    assert addresses_bytes([ip]) == [packed]  # from the memo


def test_the_memos_keep_at_most_their_bound_dropping_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wireparts, "MEMO_BOUND", 8)
    addresses_bytes([f"10.0.0.{i}" for i in range(6)])
    addresses_bytes([f"10.0.1.{i}" for i in range(4)])
    assert wireparts.memoised()[1] == [f"10.0.0.{i}" for i in range(2, 6)] + [
        f"10.0.1.{i}" for i in range(4)
    ]
    names_parts([f"n{i}.svc" for i in range(10)])
    names = wireparts.memoised()[0]
    assert len(names) == 8 and "n9.svc" in names
    assert name_parts("n0.svc") == ((b"n0", b"svc"), wire(b"n0", b"svc"))  # made again
    assert len(wireparts.memoised()[0]) == 8

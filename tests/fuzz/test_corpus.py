"""Replay the committed fuzz corpus through every target, without atheris.

Each file under tests/fuzz/corpus/TARGET is one input the target must pass (see
tests/fuzz/targets.py for what that asserts: a malformed packet is answered FORMERR or dropped,
never an internal error; a bad manifest or config is the project's error naming the file and a
line in it). The seeds were written by hand; inputs worth keeping from fuzz runs are added here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted((t, p) for t in TARGETS for p in (CORPUS / t).iterdir())


def test_every_target_has_seeds() -> None:
    assert {t for t, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())

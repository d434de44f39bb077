"""The Reflector's backoff: 0.8 s doubling to 30 s, jittered, reset after 2 minutes healthy."""

from __future__ import annotations

import pytest

from kdns.sources.kube import Backoff


def delays(backoff: Backoff, times: list[float]) -> list[float]:
    return [round(backoff.failure(t), 3) for t in times]


def test_doubles_from_0_8_to_30_without_jitter() -> None:
    backoff = Backoff(rng=lambda: 0.0)
    got = delays(backoff, [float(i) for i in range(9)])
    assert got == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]


def test_jitter_stretches_each_delay_by_up_to_a_fifth() -> None:
    backoff = Backoff(rng=lambda: 1.0)
    assert delays(backoff, [0.0, 1.0, 2.0]) == [0.96, 1.92, 3.84]


@pytest.mark.parametrize(
    ("gap", "expected"),
    [
        (119.9, 3.2),  # still within two minutes of the last failure: keep growing
        (120.0, 0.8),  # two minutes without a failure: start over
    ],
)
def test_resets_after_two_minutes_without_failure(gap: float, expected: float) -> None:
    backoff = Backoff(rng=lambda: 0.0)
    backoff.failure(0.0)
    backoff.failure(1.0)
    assert backoff.failure(1.0 + gap) == pytest.approx(expected)


def test_failures_every_30_seconds_never_reset() -> None:
    backoff = Backoff(rng=lambda: 0.0)
    now, got = 0.0, []
    for _ in range(12):
        delay = backoff.failure(now)
        got.append(delay)
        now += delay
    assert got[-1] == 30.0

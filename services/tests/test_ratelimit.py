"""Sliding-window arithmetic that runs outside Redis."""

from __future__ import annotations

import pytest

from apex.common.ratelimit import retry_after_seconds


@pytest.mark.parametrize(
    ("micros", "seconds"),
    [(0, 1), (1, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2), (59_500_000, 60), (-5, 1)],
)
def test_retry_after_rounds_up_to_whole_seconds_and_is_at_least_one(
    micros: int, seconds: int
) -> None:
    assert retry_after_seconds(micros) == seconds

"""``backoff_delay``: doubles per attempt up to the cap, jitter only ever shortens it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sse_batcher._backoff import backoff_delay


def test_doubles_from_initial_up_to_the_cap_without_jitter() -> None:
    delays = [backoff_delay(n, initial=0.1, maximum=1.0, jitter=0.0) for n in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert backoff_delay(3, initial=1.0, jitter=1.0, rng=lambda: 0.0) == 8.0
    assert backoff_delay(3, initial=1.0, jitter=1.0, rng=lambda: 0.999) < 0.01


@given(
    attempt=st.integers(min_value=-5, max_value=10_000),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    draw=st.floats(min_value=0.0, max_value=0.999999),
)
def test_never_negative_never_above_the_cap(attempt: int, jitter: float, draw: float) -> None:
    delay = backoff_delay(attempt, initial=0.05, maximum=2.0, jitter=jitter, rng=lambda: draw)
    ceiling = min(2.0, 0.05 * 2.0 ** min(max(attempt, 0), 62))
    assert ceiling * (1 - jitter) - 1e-12 <= delay <= ceiling

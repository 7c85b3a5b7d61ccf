"""``backoff_delay``: exponential backoff with jitter, the one formula every retry loop uses.

The journal writer, the sinks, the Redis tail and the remote publisher all retry a
failing dependency; each waits ``initial · 2^attempt`` (capped at ``maximum``) times
a random factor, so that clients sharing a failing dependency do not retry in step
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["backoff_delay"]

_MAX_EXPONENT = 62  # 2**62 is still exact as a float; attempts beyond add nothing


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float = math.inf,
    jitter: float = 0.5,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Args:
        attempt: retries made so far.
        initial: the delay before the first retry, without jitter.
        maximum: the cap before jitter.
        jitter: the share of the delay that is random: the delay is multiplied by a
            factor uniform in ``[1 - jitter, 1]`` (1.0: "full jitter").
        rng: uniform numbers in ``[0, 1)`` (tests pass their own).
    """
    ceiling = min(maximum, initial * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    return ceiling * (1.0 - jitter * rng())

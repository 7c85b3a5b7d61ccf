"""Waiting for a condition with a deadline: the one poll helper the tests share.

Await an event where the code under test offers one; poll only state that another
process, thread or server changes (a stored row, a counter behind HTTP), and always
with a deadline that fails the test with what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["wait_until", "wait_until_sync"]


async def wait_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    within: float = 10.0,
    *,
    what: str = "the condition",
    interval: float = 0.005,
) -> None:
    """Check ``condition()`` (sync or async) every ``interval`` s; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await anyio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], bool],
    within: float = 10.0,
    *,
    what: str = "the condition",
    interval: float = 0.005,
) -> None:
    """The same from a thread or plain synchronous test."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(interval)

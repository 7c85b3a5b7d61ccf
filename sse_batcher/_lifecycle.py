"""One lifecycle for every resource: open once, close once, clean up when start fails.

anyio's :class:`~anyio.AsyncContextManagerMixin` turns one generator into
``__aenter__``/``__aexit__``, so a failure half-way through start unwinds whatever the
generator had entered before it (connections, task groups), by construction. This
base adds the rules the mixin leaves to each class, written once here:

- a resource opens once: entering it again, open or closed, raises
  :class:`~sse_batcher.BatcherClosed` naming it (httpx's ``ClientState`` rule);
- its methods can ask :meth:`Resource._require_open` for the same clear error when
  they are called outside the ``async with`` block;
- :attr:`Resource.lifecycle` says where it is (UNOPENED → OPENING → OPEN → CLOSED).

A subclass writes one ``@asynccontextmanager`` method, :meth:`Resource._lifespan`:
set up, enter its task group, ``yield``, and let the ``finally`` of each ``async with``
tear down. Closing twice cannot happen: the mixin refuses a second ``__aexit__``, and
the resource is CLOSED after the first whatever it raised.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from enum import Enum
from typing import Self, final

from anyio import AsyncContextManagerMixin

from sse_batcher._exceptions import BatcherClosed

__all__ = ["Lifecycle", "Resource"]


class Lifecycle(Enum):
    """Where a resource is in its one life."""

    UNOPENED = "unopened"
    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


class Resource(AsyncContextManagerMixin):
    """Base of every resource that owns connections or background tasks."""

    _lifecycle: Lifecycle = Lifecycle.UNOPENED

    @property
    def lifecycle(self) -> Lifecycle:
        """UNOPENED until entered, OPEN inside ``async with``, CLOSED for good after."""
        return self._lifecycle

    @property
    def is_open(self) -> bool:
        """True between a successful start and the beginning of close."""
        return self._lifecycle is Lifecycle.OPEN

    def _describe(self) -> str:
        """How errors name this resource (override to add a path or a URL)."""
        return type(self).__name__

    def _require_open(self) -> None:
        """Raise the one clear error for a resource used outside its ``async with``."""
        if self._lifecycle is not Lifecycle.OPEN:
            raise BatcherClosed(
                f"{self._describe()} is {self._lifecycle.value}; use it inside `async with`"
            )

    @final
    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        if self._lifecycle is not Lifecycle.UNOPENED:
            raise BatcherClosed(
                f"{self._describe()} is {self._lifecycle.value}; "
                "it cannot be reopened, create a new one"
            )
        self._lifecycle = Lifecycle.OPENING  # a second, concurrent enter is refused too
        try:
            async with self._lifespan():
                self._lifecycle = Lifecycle.OPEN
                yield self
        finally:
            self._lifecycle = Lifecycle.CLOSED

    @abstractmethod
    def _lifespan(self) -> AbstractAsyncContextManager[None]:
        """Set up, ``yield`` while open, tear down (an ``@asynccontextmanager``)."""

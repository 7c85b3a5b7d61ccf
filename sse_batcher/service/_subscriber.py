"""One open stream as the hub sees it: filter, bounded buffer, hand-off state, send path.

A stream is consumed one of two ways:

- **pull** (``Hub.subscribe``): an async iterator takes the buffer as one chunk;
  the hub wakes it with a reusable ``asyncio.Event``.
- **push** (``Hub.attach``, what ``GET /events`` uses): while the stream is live
  and has nothing pending (``ready``), the hub writes each message batch straight
  into the stream's ASGI ``send`` from its own loop iteration (:func:`send_now`),
  so the bytes reach the socket with no task wake-up per subscriber. The stream's
  own task only runs when there is something a loop iteration cannot finish: a
  send that has to wait for the socket (``pending``), the end of the stream, or
  the client going away. Meanwhile new messages wait in the bounded buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any

import anyio

from sse_batcher.batching._events import Event, Position
from sse_batcher.service._channels import ChannelFilter

__all__ = ["HEARTBEAT_MESSAGE", "FilterKey", "Item", "Send", "Subscriber", "body", "send_now"]

HEARTBEAT_MESSAGE = b":\n\n"

Item = tuple[Position | None, bytes]
# (types, sources, channel patterns): subscribers with equal filters share one group,
# and the hub's channel index finds the groups an event's channel concerns.
FilterKey = tuple[frozenset[str] | None, frozenset[str] | None, frozenset[str]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def body(chunk: bytes, *, more: bool = True) -> dict[str, Any]:
    """The ASGI message carrying ``chunk`` of a streamed response body."""
    return {"type": "http.response.body", "body": chunk, "more_body": more}


class _Rest:
    """The rest of a coroutine that suspended outside any task, for a task to await.

    It hands what the coroutine yielded (an asyncio future, or None for a bare
    checkpoint) to the awaiting task and forwards what the task sends or throws
    back in: what ``yield from`` does, from the coroutine's second step on.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                value = yield yielded
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coro.send(value)
                except StopIteration:
                    return

    def close(self) -> None:
        """Abandon it (the stream ends): the coroutine unwinds where it waited."""
        self._coro.close()


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


def send_now(send: Send, message: dict[str, Any]) -> _Rest | None:
    """Run ``send(message)`` up to its first suspension, in the caller's iteration.

    Returns None when it finished without waiting (uvicorn: the bytes are in the
    transport, which tries the socket at once), else what is left, for the
    stream's task to await. uvicorn's ``send`` suspends only when the transport is
    over its high-water mark; another server's may always suspend, which is
    correct, only slower. Middleware in the stream's send path must not depend on
    which task runs it (Starlette's own does not).
    """
    coro = send(message)
    if not isinstance(coro, Coroutine):
        coro = _awaited(coro)  # another kind of awaitable: run it the same way
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return _Rest(coro, yielded)


class Subscriber:
    """One open stream: its filter, bounded buffer and hand-off state.

    Args:
        key: the (types, sources, channel patterns) filter; None matches everything.
        replaying: buffer overflow discards the buffer (the replay reads again)
            instead of disconnecting.
        send: the ASGI send of a push stream; None for a pull stream.
    """

    __slots__ = (
        "channels",
        "clears",
        "ended",
        "error",
        "floor",
        "heartbeat_due",
        "items",
        "key",
        "last_sent",
        "pending",
        "ready",
        "replaying",
        "scope",
        "send",
        "slow",
        "waiter",
    )

    def __init__(self, key: FilterKey, *, replaying: bool, send: Send | None = None) -> None:
        self.key = key
        self.channels = ChannelFilter(key[2])
        self.items: list[Item] = []
        self.replaying = replaying
        self.clears = 0  # buffer discards while replaying: the replay must read again
        self.floor: Position | None = None  # drop live items at or below (already replayed)
        # One reusable event per pull subscriber, plain asyncio (the service runs on
        # asyncio): a fresh anyio.Event and a cancel scope per wait cost ~20-40 µs
        # per subscriber per message, which is most of a 1,000-subscriber fan-out.
        self.waiter = asyncio.Event()
        self.last_sent = time.monotonic()
        self.heartbeat_due = False  # pull: set by the hub's heartbeat task when idle
        self.ended = False  # hub closing or tail restarted: finish what is buffered, then end
        self.slow = False  # disconnected for overflowing its buffer
        self.send = send
        self.ready = False  # push: live, nothing pending: the hub may write directly
        self.pending: _Rest | None = None  # push: a send the hub started that must wait
        self.scope: anyio.CancelScope | None = None  # push: what the stream's task waits in
        self.error: BaseException | None = None  # push: the send path failed

    def matches(self, event: Event) -> bool:
        types, sources, _ = self.key
        return (
            (types is None or event.type in types)
            and (sources is None or event.source in sources)
            and self.channels(event.channel)
        )

    def wake(self) -> None:
        """New items are buffered. A push stream that is not ready is busy and looks
        at its buffer before it waits again, so only a pull stream needs waking."""
        if self.send is None:
            self.waiter.set()

    def interrupt(self) -> None:
        """The stream's task must act: the stream ended, or a send has to wait."""
        self.ready = False
        if self.send is None:
            self.waiter.set()
        elif self.scope is not None:
            self.scope.cancel()

    def write(self, chunk: bytes, now: float) -> None:
        """Push ``chunk`` from the caller's loop iteration (push streams, when ready)."""
        self.last_sent = now
        assert self.send is not None
        try:
            rest = send_now(self.send, body(chunk))
        except Exception as exc:  # the server's send failed: the stream's task reports it
            self.error = exc
            self.interrupt()
            return
        if rest is not None:
            self.pending = rest
            self.interrupt()

    def after_floor(self, items: list[Item]) -> list[bytes]:
        """The messages of ``items`` the replay has not sent; clears the floor once
        past it (the tail is ordered: everything after the first newer one is new)."""
        floor = self.floor
        kept: list[bytes] = []
        for position, message in items:
            if position is not None and floor is not None:
                if position <= floor:
                    continue
                floor = None
            kept.append(message)
        self.floor = floor
        return kept

    def take(self) -> bytes:
        """Everything buffered as one chunk, minus what the replay already sent."""
        items, self.items = self.items, []
        if self.floor is None:
            if len(items) == 1:
                return items[0][1]
            return b"".join(message for _, message in items)
        return b"".join(self.after_floor(items))

    async def pull(self, catching_up: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """A pull stream: the catch-up chunks, then the buffer as it fills, heartbeats
        when idle, until the stream ends."""
        async for chunk in catching_up:
            yield chunk
        waiter = self.waiter
        while True:
            if self.items:
                chunk = self.take()
                if chunk:
                    self.last_sent = time.monotonic()
                    yield chunk
                continue
            if self.ended or self.slow:
                return
            if self.heartbeat_due:
                self.heartbeat_due = False
                self.last_sent = time.monotonic()
                yield HEARTBEAT_MESSAGE
                continue
            # No await between the checks above and this wait, and every waker runs
            # on this loop: a wake cannot fall between them and be lost.
            waiter.clear()
            await waiter.wait()

"""``EventStream``: the ``GET /events`` response, one task per stream and none per message.

sse-starlette's ``EventSourceResponse`` runs four tasks per stream (the body
iterator, pings, a shutdown listener, a disconnect listener) in a task group, and
each message climbs a chain of wake-ups: the hub sets an event, the iterator task
wakes, passes the chunk up through its generators and a cancel scope per send.
At 1,000 subscribers that chain, not the socket, was most of the fan-out time.

This response keeps sse-starlette's headers (``Cache-Control: no-store``,
``X-Accel-Buffering: no``, ``text/event-stream``; not ``Connection``, which is
hop-by-hop) and its wire format (every chunk is what ``ensure_bytes`` makes of
it: the hub's encoded messages as they are, control lines from
``ServerSentEvent``), but its one task (the request's own) only::

    send the head, retry:, catch up (reset, replay)      ─ interruptible
    loop:  finish a pending send, send what is buffered ─┐ interruptible
           ready: the hub writes live messages and       │
           heartbeats directly; wait for the disconnect ─┘
    ended (shutdown, tail restart) ─► send what is buffered, end the body
    slow (buffer overflow)         ─► end the body (the client resumes by id)
    disconnected                   ─► return

Server shutdown is seen once for the whole app (``wait_for_server_exit``), which
ends every stream through the hub.
"""

from __future__ import annotations

import time
from contextlib import aclosing

import anyio
from sse_starlette.event import ServerSentEvent, ensure_bytes
from sse_starlette.sse import EventSourceResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sse_batcher._exceptions import BatcherClosed, QueueFull
from sse_batcher.service._hub import Hub
from sse_batcher.service._replay import OnReset
from sse_batcher.service._subscriber import Subscriber, body, send_now

__all__ = ["EventStream", "wait_for_server_exit"]

SEP = "\n"


async def wait_for_server_exit() -> None:
    """Return when the ASGI server starts to shut down (uvicorn), as sse-starlette sees
    it: its patch of uvicorn's exit handler and its one watcher per event loop."""
    await EventSourceResponse._listen_for_exit_signal()


class EventStream(Response):
    """An SSE response fed by the hub.

    Args:
        hub: the open hub.
        cursor: the client's last event id; None: live only.
        types: event types to deliver; None: all.
        sources: sources to deliver; None: all.
        channels: channel patterns to deliver (already checked against the grant);
            None: every channel.
        on_reset: where to continue when the cursor cannot be served.
        retry_ms: the ``retry:`` reconnection delay sent first.
        grace: seconds an ending stream may take to send what it holds and its
            final chunk; a socket that does not take them by then is closed.
        expires: when the credential expires (``time.time()``): the stream ends
            then with a ``: credential expired`` line; None: never.
        closing: set once the server shuts down: a stream opened after that gets
            the "shutting down" hint and ends at once.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: Hub,
        *,
        cursor: str | None,
        types: list[str] | None,
        sources: list[str] | None,
        channels: frozenset[str] | None = None,
        on_reset: OnReset,
        retry_ms: int,
        grace: float,
        expires: float | None = None,
        closing: anyio.Event | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._hub = hub
        self._cursor = cursor
        self._types = types
        self._sources = sources
        self._channels = channels
        self._on_reset = on_reset
        self._retry_ms = retry_ms
        self._grace = grace
        self._expires = expires
        self._closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if scope.get("method") == "HEAD":  # headers only: an endless body would never end
            await send(body(b"", more=False))
            return
        try:
            if self._closing is not None and self._closing.is_set():
                raise BatcherClosed("the server is shutting down")
            async with self._hub.attach(
                send,
                after_cursor=self._cursor,
                types=self._types,
                sources=self._sources,
                channels=self._channels,
                on_reset=self._on_reset,
            ) as sub:
                await self._stream(sub, send, receive)
        except (QueueFull, BatcherClosed) as exc:
            # 200 with a long retry hint, then close: a non-200 status would stop a
            # browser's EventSource for good.
            reason = "too many subscribers" if isinstance(exc, QueueFull) else "shutting down"
            hint = ServerSentEvent(
                comment=f"{reason}; try again later", retry=self._retry_ms * 10, sep=SEP
            )
            await send(body(ensure_bytes(hint, SEP), more=False))

    async def _stream(self, sub: Subscriber, send: Send, receive: Receive) -> None:
        retry = ServerSentEvent(retry=self._retry_ms, sep=SEP)
        await send(body(ensure_bytes(retry, SEP)))
        left = None if self._expires is None else self._expires - time.time()
        with anyio.move_on_after(left) as expiry:
            if await self._run(sub, send, receive):
                return  # the client went away: nothing more to send
        sub.ready = False  # the hub no longer writes; this task ends the body
        if sub.error is not None:
            raise sub.error
        ending = b""
        expired = expiry.cancelled_caught and not (sub.ended or sub.slow)
        if expired:  # the client reconnects with a fresh token and resumes by id
            ending = ensure_bytes(ServerSentEvent(comment="credential expired", sep=SEP), SEP)
        with anyio.move_on_after(self._grace):
            if sub.slow or expired:  # what it held is dropped: the client resumes by id
                if sub.pending is not None:
                    sub.pending.close()
                    sub.pending = None
            else:
                await self._flush(sub, send)
            await send(body(ending, more=False))
        # Not sent in time: returning without the final chunk makes the server close
        # the connection, so a stuck client does not hold it.

    async def _run(self, sub: Subscriber, send: Send, receive: Receive) -> bool:
        """Catch up, then live until the stream ends (False) or the client goes (True)."""
        with anyio.CancelScope() as scope:  # the hub cancels it to end the stream
            sub.scope = scope
            async with aclosing(self._hub.catch_up(sub, self._cursor, self._on_reset)) as chunks:
                async for chunk in chunks:
                    await send(body(chunk))
        sub.scope = None
        while not (sub.ended or sub.slow or sub.error):
            with anyio.CancelScope() as scope:
                sub.scope = scope
                if await self._live(sub, send, receive):
                    return True
            sub.scope = None
        return False

    async def _live(self, sub: Subscriber, send: Send, receive: Receive) -> bool:
        """Send what is pending, then hand the stream to the hub and wait for the
        client to go away (True) or the hub to interrupt (cancelled)."""
        await self._flush(sub, send)
        if sub.ended or sub.slow or sub.error:
            return False
        # No await between the flush and this line: the hub sees an empty buffer.
        sub.ready = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                sub.ready = False
                return True

    @staticmethod
    async def _flush(sub: Subscriber, send: Send) -> None:
        """Finish the send the hub started, then send the buffer until it is empty."""
        while True:
            if sub.pending is not None:
                rest, sub.pending = sub.pending, None
                await rest
            if not sub.items:
                return
            chunk = sub.take()
            if chunk:
                sub.last_sent = time.monotonic()
                sub.pending = send_now(send, body(chunk))

"""The base of ``RemotePublisher`` and ``AsyncRemotePublisher``: one set of arguments."""

from __future__ import annotations

import os
from typing import Generic, TypeVar

from sse_batcher.publishing._core import PublisherCore
from sse_batcher.publishing._model import IN_SENDER, PublisherConfig, PublisherStats

__all__ = ["PublisherFrontEnd"]

_TransportT = TypeVar("_TransportT")


class PublisherFrontEnd(Generic[_TransportT]):
    """The base of ``RemotePublisher`` and ``AsyncRemotePublisher``: one set of arguments.

    ``__init__`` validates the arguments into ``self._config``, keeps the transport
    (an ``httpx.BaseTransport`` or an ``httpx.AsyncBaseTransport``, by front end),
    then calls :meth:`_setup`, where the front end makes ``self._core``. The
    arguments are documented on the front ends.
    """

    _core: PublisherCore

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        source: str | None = None,
        channel: str | None = None,
        max_batch_size: int = 10,
        flush_interval: float = 2.0,
        spool_after: float | None = 30.0,
        spool: bool = True,
        spool_path: str | os.PathLike[str] | None = None,
        max_buffer_events: int = 10_000,
        timeout: float = 10.0,
        max_backoff: float = 30.0,
        transport: _TransportT | None = None,
    ) -> None:
        self._config = PublisherConfig(
            url=url,
            token=token,
            source=source,
            channel=channel,
            max_batch_size=max_batch_size,
            flush_interval=flush_interval,
            spool_after=spool_after,
            spool=spool,
            spool_path=spool_path,
            max_buffer_events=max_buffer_events,
            timeout=timeout,
            max_backoff=max_backoff,
        )
        self._transport = transport
        self._setup()

    def _setup(self) -> None:
        """Make ``self._core`` and whatever the front end's sender needs (end of ``__init__``)."""
        raise NotImplementedError

    def stats(self) -> PublisherStats:
        """A snapshot of the counters."""
        return self._core.stats()

    @property
    def spool_path(self) -> str | None:
        """The spool file in use (None without a spool)."""
        return self._core.spool_file

    def _spill_here(self) -> None:
        """Move memory to the spool in the caller's thread, marked as the sender."""
        # Marked as the sender: publish() drops what the spill itself logs (a logging
        # handler on this publisher would otherwise feed it back into the buffer).
        token = IN_SENDER.set(True)
        try:
            self._core.spill()
        finally:
            IN_SENDER.reset(token)

"""A spec-faithful Server-Sent Events parser, for tests that must not trust a library.

It follows the WHATWG "Interpreting an event stream" algorithm step by step:
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

- the stream is UTF-8, decoded with replacement characters; one leading BOM is skipped;
- lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF at the start
  of the next are one line end);
- a line starting with ``:`` is a comment; ``field:value`` drops one leading space of
  the value; a line without ``:`` is a field with an empty value;
- ``data`` lines are joined with LF; ``event`` sets the type (default ``message``);
  ``id`` sets the last event id unless the value contains NUL (then it is ignored) and
  it persists across events; ``retry`` is used only when it is all ASCII digits;
- a blank line dispatches the event; an event with an empty data buffer is not
  dispatched; a trailing event without its blank line is discarded at end of stream.

Incremental: ``feed(chunk)`` returns the events completed by that chunk.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

__all__ = ["SSEMessage", "SSEParser", "parse_stream"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched event as a browser's ``MessageEvent`` would carry it."""

    type: str
    data: str
    last_event_id: str


@dataclass(slots=True)
class SSEParser:
    """Incremental parser; ``feed`` bytes, read ``retry`` and ``comments`` as side data."""

    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _pending: str = ""
    _started: bool = False
    _skip_lf: bool = False
    _data: list[str] = field(default_factory=list)
    _event_type: str = ""
    _last_id: str = ""

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """Consume bytes; return the events whose terminating blank line arrived."""
        text = self._decoder.decode(chunk)
        return self._feed_text(text)

    def close(self) -> list[SSEMessage]:
        """End of stream: flush the decoder; an unterminated event is discarded."""
        out = self._feed_text(self._decoder.decode(b"", final=True))
        self._pending = ""
        self._data = []
        self._event_type = ""
        return out

    def _feed_text(self, text: str) -> list[SSEMessage]:
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        out: list[SSEMessage] = []
        buffer = self._pending + text
        start = 0
        for match in _LINE_END.finditer(buffer):
            if self._skip_lf and match.start() == start == 0 and buffer[0] == "\n":
                # The LF of a CRLF whose CR ended the previous chunk's last line.
                self._skip_lf = False
                start = match.end()
                continue
            # A CR at the very end of the buffer may be the first half of a CRLF.
            self._skip_lf = match.group() == "\r" and match.end() == len(buffer)
            message = self._line(buffer[start : match.start()])
            start = match.end()
            if message is not None:
                out.append(message)
        if start < len(buffer):
            self._skip_lf = False
        self._pending = buffer[start:]
        return out

    def _line(self, line: str) -> SSEMessage | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry":
            if value and all("0" <= c <= "9" for c in value):
                self.retry = int(value)
        # Any other field name is ignored.
        return None

    def _dispatch(self) -> SSEMessage | None:
        data, event_type = self._data, self._event_type
        self._data, self._event_type = [], ""
        if not data:
            return None
        return SSEMessage(event_type or "message", "\n".join(data), self._last_id)


def parse_stream(raw: bytes, *, chunk_size: int | None = None) -> list[SSEMessage]:
    """Parse a complete stream (optionally fed in chunks of ``chunk_size`` bytes)."""
    parser = SSEParser()
    if chunk_size is None:
        out = parser.feed(raw)
    else:
        out = []
        for i in range(0, len(raw), chunk_size):
            out.extend(parser.feed(raw[i : i + chunk_size]))
    return out + parser.close()

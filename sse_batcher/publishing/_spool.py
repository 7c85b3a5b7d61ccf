"""The publisher's spool: events waiting on disk while the server is unreachable.

Layout, next to each other::

    spool-<hash>.jsonl          append-only, one wire event (compact JSON) per line
    spool-<hash>.jsonl.offset   byte offset of the first line the server has not
                                acknowledged (20 ASCII digits and a newline)

Writes append whole lines and fsync before they count as spooled; a torn last line
(a crash mid-write) is cut off when the file is opened again, so an event is either
in the spool completely or still in memory. The offset only moves after the server
acknowledged the lines before it, and the file is truncated only once every line
is acknowledged. A crash between an acknowledgement and the offset write makes the
next process send those lines again: every line carries the event's ``uid``, and
the server stores a uid it saw in the last ten minutes only once.

One process owns a spool file at a time (``flock``). When the file is owned by
another live process, the next free slot (``spool-<hash>-2.jsonl``, ...) is used,
and a process that later takes a slot with lines in it sends them first.

Not thread-safe: the publisher core serialises every call.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, one process per spool
    fcntl = None  # type: ignore[assignment]

__all__ = ["MAX_SLOTS", "Spool", "default_spool_path"]

MAX_SLOTS = 64
_CHUNK = 1 << 16
_OFFSET_WIDTH = 20
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "sse_batcher"


def default_spool_path(url: str, source: str | None) -> Path:
    """Where a publisher spools by default: the user's cache dir, named by url and source.

    Args:
        url: the server's base url.
        source: the publisher's explicit source; None (the hostname-pid default) names
            the file by host name instead, so a restarted process finds its spool.
    """
    key = f"{url.rstrip('/')}\0{source if source is not None else socket.gethostname()}"
    name = f"spool-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
    directory = _cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(directory, os.W_OK):
            raise PermissionError(str(directory))
    except OSError:
        uid = getattr(os, "getuid", lambda: 0)()
        directory = Path(tempfile.gettempdir()) / f"sse_batcher-{uid}"
    return directory / name


def _slot_path(path: Path, slot: int) -> Path:
    return path if slot == 1 else path.with_name(f"{path.stem}-{slot}{path.suffix}")


class Spool:
    """An append-only JSON-lines file with an acknowledged offset (see the module doc).

    Args:
        path: the preferred file; a busy file moves to the next free slot.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.requested_path = Path(path)
        self.path = self.requested_path
        self.pending = 0  # lines not yet acknowledged
        self._fd = -1
        self._offset_fd = -1
        self._offset = 0
        self._size = 0

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def open(self) -> None:
        """Take the first free slot, repair a torn tail and count the pending lines."""
        if self.is_open:
            return
        self.requested_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for slot in range(1, MAX_SLOTS + 1):
            candidate = _slot_path(self.requested_path, slot)
            fd = self._lock(candidate)
            if fd >= 0:
                break
        else:
            raise OSError(f"all {MAX_SLOTS} spool slots of {self.requested_path} are in use")
        self.path = candidate
        try:
            self._offset_fd = os.open(
                f"{candidate}.offset", os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600
            )
            self._fd = fd
            self._size = self._repair_tail()
            self._offset = self._read_offset()
            self.pending = self._count_lines(self._offset, self._size)
        except BaseException:
            self._fd = -1
            os.close(fd)
            if self._offset_fd >= 0:
                os.close(self._offset_fd)
                self._offset_fd = -1
            raise

    @staticmethod
    def _lock(path: Path) -> int:
        """An fd of ``path`` holding its exclusive lock, or -1 when another process has it."""
        for _ in range(5):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | _O_CLOEXEC, 0o600)
            if fcntl is None:
                return fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return -1
            # The owner may have unlinked the file between our open and our lock
            # (it removes empty spools on close): then we hold a lock on a dead inode.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        return -1

    def _repair_tail(self) -> int:
        size = os.fstat(self._fd).st_size
        end = size
        while end > 0:
            start = max(0, end - _CHUNK)
            chunk = os.pread(self._fd, end - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        if end != size:
            # A torn line from a crash mid-write: it was never reported as spooled.
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        return end

    def _read_offset(self) -> int:
        raw = os.pread(self._offset_fd, _OFFSET_WIDTH + 1, 0).strip()
        try:
            offset = int(raw) if raw else 0
        except ValueError:
            offset = 0
        if offset > self._size or offset < 0:
            # The file was truncated after a full acknowledgement and the process died
            # before resetting the offset; or the offset file is damaged: resend all
            # (the server drops uids it already stored).
            offset = 0
        if offset > 0 and os.pread(self._fd, 1, offset - 1) != b"\n":
            offset = 0
        return offset

    def _count_lines(self, start: int, end: int) -> int:
        count = 0
        position = start
        while position < end:
            chunk = os.pread(self._fd, min(_CHUNK, end - position), position)
            if not chunk:
                break
            count += chunk.count(b"\n")
            position += len(chunk)
        return count

    def append(self, lines: Sequence[bytes]) -> None:
        """Append ``lines`` (each one JSON document without a newline) and fsync.

        On failure (disk full) the file is cut back to its previous length and the
        error propagates: the caller keeps the events in memory.
        """
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        before = self._size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, before)
            except OSError:
                pass
            raise
        self._size = before + len(data)
        self.pending += len(lines)

    def read(self, count: int) -> list[bytes]:
        """The first ``count`` unacknowledged lines (fewer when fewer are pending)."""
        lines: list[bytes] = []
        position = self._offset
        rest = b""
        while len(lines) < count and position < self._size:
            chunk = os.pread(self._fd, min(_CHUNK, self._size - position), position)
            if not chunk:
                break
            position += len(chunk)
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            lines.extend(parts)
        return lines[:count]

    def ack(self, count: int) -> None:
        """Mark the first ``count`` pending lines as acknowledged by the server."""
        count = min(count, self.pending)
        if count <= 0:
            return
        position = self._offset
        found = 0
        while found < count:
            chunk = os.pread(self._fd, min(_CHUNK, self._size - position), position)
            if not chunk:
                break
            index = -1
            while found < count:
                index = chunk.find(b"\n", index + 1)
                if index < 0:
                    break
                found += 1
            position += index + 1 if found == count else len(chunk)
        self.pending -= count
        if self.pending == 0:
            # Everything in the file is acknowledged: start over. Truncate first, so a
            # crash before the offset reset leaves offset > size, which open() repairs.
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._size = 0
            position = 0
        self._offset = position
        # No fsync: a lost offset update only resends lines the server de-duplicates.
        os.pwrite(self._offset_fd, b"%0*d\n" % (_OFFSET_WIDTH, position), 0)

    def close(self) -> None:
        """Release the slot; remove the files when nothing is pending."""
        if not self.is_open:
            return
        try:
            if self.pending == 0:
                for name in (f"{self.path}.offset", str(self.path)):
                    try:
                        os.unlink(name)
                    except FileNotFoundError:
                        pass
        finally:
            os.close(self._offset_fd)
            os.close(self._fd)
            self._fd = self._offset_fd = -1

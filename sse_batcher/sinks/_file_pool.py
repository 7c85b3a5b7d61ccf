"""A bounded, thread-safe pool of append-only file descriptors (for :class:`ArchiveSink`).

At most ``max_open`` descriptors are open; opening one more closes the least
recently used first. When the process runs out of descriptors anyway (EMFILE,
ENFILE: other parts of the process hold them), the pool closes a quarter of its
own, lowers its cap for a minute, and retries instead of failing.

The archive's writer thread appends through the pool while its maintenance thread
compresses closed files; a path being compressed is *claimed*, and opening a
claimed path waits until the claim is released. Every descriptor operation runs
under one lock, so no thread writes to a descriptor another has closed.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["FilePool"]

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
_CAP_RESTORE_AFTER = 60.0  # seconds without EMFILE before the pool may grow back


@dataclass(slots=True)
class _Handle:
    fd: int
    size: int  # bytes in the file as far as this pool knows (for rollback)
    day: int | None  # UTC day number the file belongs to, for rollover


class FilePool:
    """LRU pool of ``O_APPEND`` descriptors, keyed by path.

    Args:
        max_open: most descriptors open at once (at least 1).
    """

    def __init__(self, max_open: int) -> None:
        self.max_open = max(1, max_open)
        self._cap = self.max_open
        self._cap_restore_at = 0.0
        self._handles: OrderedDict[str, _Handle] = OrderedDict()
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._claimed: set[str] = set()
        self._closed = False
        self.peak_open = 0
        self.opens = 0
        self.evictions = 0
        self.emfile_retries = 0

    @property
    def open_count(self) -> int:
        """Descriptors open right now."""
        return len(self._handles)

    def append(self, path: str, data: bytes, day: int | None = None) -> int:
        """Append ``data`` to ``path`` in one write call; return the size before it.

        Creates the file and its directories when missing.
        """
        with self._lock:
            handle = self._handles.get(path)
            if handle is None:
                while path in self._claimed:
                    self._released.wait()
                handle = self._open(path, day)
            else:
                self._handles.move_to_end(path)
            before = handle.size
            view = memoryview(data)
            while view:
                # Regular files take the whole buffer in one call; loop for safety.
                written = os.write(handle.fd, view)
                view = view[written:]
            handle.size += len(data)
            return before

    def truncate(self, path: str, size: int) -> None:
        """Cut ``path`` back to ``size`` bytes (undo a partial batch)."""
        with self._lock:
            handle = self._handles.get(path)
            if handle is not None:
                os.ftruncate(handle.fd, size)
                handle.size = size
            else:
                os.truncate(path, size)

    def close_days_before(self, day: int) -> int:
        """Close the descriptors of files that belong to days before ``day``."""
        with self._lock:
            stale = [p for p, h in self._handles.items() if h.day is not None and h.day < day]
            for path in stale:
                self._close(path)
            return len(stale)

    def close_all(self) -> None:
        """Close every descriptor; later appends raise (the pool is closed)."""
        with self._lock:
            self._closed = True
            for path in list(self._handles):
                self._close(path)

    def claim(self, path: str) -> bool:
        """Reserve a closed path for maintenance; False if it is open (in use)."""
        with self._lock:
            if path in self._handles or path in self._claimed:
                return False
            self._claimed.add(path)
            return True

    def release(self, path: str) -> None:
        """End a claim; writers waiting for the path go on."""
        with self._lock:
            self._claimed.discard(path)
            self._released.notify_all()

    def _open(self, path: str, day: int | None) -> _Handle:
        if self._closed:
            raise OSError(errno.EBADF, "the archive's file pool is closed", path)
        if self._cap < self.max_open and time.monotonic() >= self._cap_restore_at:
            self._cap = self.max_open
        while len(self._handles) >= self._cap:
            self._evict_oldest()
        missing_dir_retries = 3
        while True:
            try:
                fd = os.open(path, _OPEN_FLAGS, 0o644)
                break
            except FileNotFoundError:
                # The directory is new (or maintenance just removed it as empty).
                if missing_dir_retries == 0:
                    raise
                missing_dir_retries -= 1
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS or not self._handles:
                    raise
                # Out of descriptors: give back a quarter of ours and stay smaller a while.
                self.emfile_retries += 1
                for _ in range(max(1, len(self._handles) // 4)):
                    self._evict_oldest()
                self._cap = max(1, len(self._handles))
                self._cap_restore_at = time.monotonic() + _CAP_RESTORE_AFTER
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        handle = _Handle(fd, size, day)
        self._handles[path] = handle
        self.opens += 1
        self.peak_open = max(self.peak_open, len(self._handles))
        return handle

    def _evict_oldest(self) -> None:
        path = next(iter(self._handles))
        self._close(path)
        self.evictions += 1

    def _close(self, path: str) -> None:
        handle = self._handles.pop(path)
        try:
            os.close(handle.fd)
        except OSError:  # nothing useful to do: the data was written with write(2)
            pass

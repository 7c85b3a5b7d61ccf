"""Wake when any process writes the SQLite file's WAL: Linux inotify, through ctypes.

The tail of a journal shared by several processes polls the newest id every 2 ms
while rows arrive. Between bursts, polling on a timer would cost an idle worker
1-4 % of a core (each wake-up of the event loop costs 30-200 µs on a shared VM),
so instead it waits on an inotify descriptor that becomes readable when any
process writes to ``<db>-wal`` (every commit does), and then polls closely again.

Not on Linux, or when inotify is unavailable: :func:`open_wal_watch` returns None
and the tail keeps a slower timer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["WalWatch", "open_wal_watch"]

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class WalWatch:
    """An inotify descriptor watching one WAL file; readable after each write to it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def drain(self) -> None:
        """Consume the queued notifications (their content does not matter)."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_wal_watch(database: str) -> WalWatch | None:
    """Watch ``<database>-wal`` (it exists while a WAL connection is open); None if impossible."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(database + "-wal"), _IN_MODIFY) < 0:
        os.close(fd)
        return None
    return WalWatch(fd)

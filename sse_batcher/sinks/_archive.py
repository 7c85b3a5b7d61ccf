"""ArchiveSink: every stored event also kept as JSON-lines files per day and category.

Layout (default ``partition="{date}/{source}.jsonl"``)::

    DIR/2026-11-23/thumbnail_worker.jsonl     one envelope per line, in journal order
    DIR/2026-11-23/error.jsonl                error events, also (see is_error_event)
    DIR/2026-11-22/thumbnail_worker.jsonl.gz  days before today, compressed
    (days older than retention_days deleted)

Each ``write(batch)`` makes one hop to a worker thread, which groups the batch by
target file and appends each group with one ``write(2)`` (error files first). If a
group fails, the groups already appended in that call are truncated back, so the
runner's retry of the same batch neither loses nor duplicates lines. Descriptors
come from a bounded LRU :class:`FilePool`. A maintenance task (its own thread hop)
closes past days' files when the UTC day changes by the injected clock, gzips them
and applies retention; it also runs once at start and every ``maintenance_interval``.
"""

from __future__ import annotations

import datetime
import gzip
import logging
import os
import re
import shutil
import string
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskStatus

from sse_batcher._exceptions import ConfigError
from sse_batcher._lifecycle import Resource
from sse_batcher.batching._events import StoredEvent
from sse_batcher.batching._sink import is_error_event
from sse_batcher.sinks._file_pool import FilePool

__all__ = ["ArchiveSink"]

_log = logging.getLogger("sse_batcher.archive")

_FIELDS = frozenset({"date", "source", "type"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_COMPONENT = 120  # bytes per sanitised name, well under NAME_MAX (255)
_PATH_CACHE_LIMIT = 8192
_DAY = 86400
_EPOCH = datetime.date(1970, 1, 1)


def sanitize(value: str) -> str:
    """Make a source or type usable as one path component that stays in its directory.

    Anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_`` (so no ``/``),
    and a leading dot gets a ``_`` before it (so no ``..``, no hidden files).
    """
    safe = _UNSAFE.sub("_", value)
    if not safe or safe.startswith("."):
        safe = "_" + safe
    return safe[:_MAX_COMPONENT]


def _day_name(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * _DAY))


def _check_template(label: str, template: str) -> tuple[str, ...]:
    """Validate a path template; return the fields it uses in order."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{label} {template!r}: {exc}") from None
    fields = tuple(name for _, name, _, _ in parsed if name is not None)
    for _, name, spec, conversion in parsed:
        if name is not None and (name not in _FIELDS or spec or conversion):
            raise ConfigError(f"{label} {template!r}: only {{date}}, {{source}}, {{type}} allowed")
    sample = template.format(date="2000-01-01", source="s", type="t")
    parts = sample.split("/")
    if sample.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in sample:
        raise ConfigError(f"{label} {template!r} must be a relative path without '..' or '//'")
    return fields


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex that matches the paths ``template`` produces, capturing the date."""
    out: list[str] = []
    seen_date = False
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if name == "date":
            out.append(r"\d{4}-\d{2}-\d{2}" if seen_date else r"(?P<date>\d{4}-\d{2}-\d{2})")
            seen_date = True
        elif name is not None:
            out.append(r"[^/]+")
    return re.compile("".join(out))


class ArchiveSink(Resource):
    """Appends each stored event's JSON envelope to files per day and category.

    Args:
        directory: root of the archive; created when missing.
        partition: relative path template per event; fields ``{date}`` (UTC date of
            the event's ts, YYYY-MM-DD), ``{source}``, ``{type}`` (both sanitised).
        error_partition: where error events (see :func:`is_error_event`) also go.
        max_open_files: most file descriptors the sink keeps open (LRU).
        retention_days: delete files of days older than today minus this many days
            (None keeps everything). Needs ``{date}`` in the templates.
        compress_after_close: gzip a day's files once the day is over.
        clock: wall clock in Unix seconds (injectable for tests); decides the day.
        maintenance_interval: seconds between maintenance passes besides rollover.
        name: the sink's name in stats and logs.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        partition: str = "{date}/{source}.jsonl",
        error_partition: str = "{date}/error.jsonl",
        max_open_files: int = 64,
        retention_days: int | None = None,
        compress_after_close: bool = True,
        clock: Callable[[], float] = time.time,
        maintenance_interval: float = 60.0,
        name: str = "archive",
    ) -> None:
        fields = _check_template("partition", partition)
        error_fields = _check_template("error_partition", error_partition)
        if "type" in error_fields or "source" in error_fields:
            raise ConfigError("error_partition may only use {date}")
        if max_open_files < 1:
            raise ConfigError("max_open_files must be >= 1")
        if retention_days is not None and (
            retention_days < 0 or "date" not in fields or "date" not in error_fields
        ):
            raise ConfigError("retention_days must be >= 0 and the partitions must use {date}")
        self._name = name
        self._root = os.path.abspath(os.fspath(directory))
        self._partition = partition
        self._error_partition = error_partition
        self._use_type = "type" in fields
        # Only templates with {date} say which day a file belongs to.
        self._patterns = [_template_regex(t) for t in (partition, error_partition) if "{date}" in t]
        self._retention_days = retention_days
        self._compress = compress_after_close
        self._clock = clock
        self._interval = maintenance_interval
        self._pool = FilePool(max_open_files)
        self._paths: dict[tuple[int, str, str], str] = {}
        self._error_paths: dict[int, str] = {}
        self._today: int | None = None
        self._write_lock = anyio.Lock()
        self._maintain_now = anyio.Event()
        self._stopping = False
        self.counters: dict[str, int] = dict.fromkeys(
            ("bytes_written", "lines_written", "error_lines", "write_calls", "rollovers"), 0
        )
        self.counters.update(compressed=0, deleted=0, maintenance_passes=0, maintenance_errors=0)
        self._write_cpu = 0.0  # CPU seconds the writer thread spent in successful writes

    @property
    def name(self) -> str:
        """The sink's name in stats and logs."""
        return self._name

    @property
    def directory(self) -> str:
        """The archive's root directory (absolute)."""
        return self._root

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(partial(os.makedirs, self._root, exist_ok=True))
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._maintenance_loop)
                yield
                self._stopping = True  # makes a running maintenance pass stop between files
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._pool.close_all)

    async def write(self, events: Sequence[StoredEvent]) -> None:
        """Append a batch: one thread hop, one write call per target file.

        Raises OSError when the files cannot be written; nothing of the batch stays
        behind then, so writing the same batch again is safe.
        """
        self._require_open()
        if not events:
            return
        async with self._write_lock:
            rolled = await anyio.to_thread.run_sync(self._write_sync, events)
        if rolled:
            self._maintain_now.set()

    def stats(self) -> dict[str, Any]:
        """files_open, peak_open, opens, evictions, emfile_retries, bytes_written,
        lines_written, error_lines, write_calls, rollovers, compressed, deleted,
        maintenance_passes, maintenance_errors, write_cpu_ms (writer thread CPU time)."""
        pool = self._pool
        return {
            "files_open": pool.open_count,
            "peak_open": pool.peak_open,
            "opens": pool.opens,
            "evictions": pool.evictions,
            "emfile_retries": pool.emfile_retries,
            **self.counters,
            "write_cpu_ms": round(self._write_cpu * 1000, 3),
        }

    # -- worker thread -------------------------------------------------------------

    def _write_sync(self, events: Sequence[StoredEvent]) -> bool:
        cpu_started = time.thread_time()
        today = int(self._clock() // _DAY)
        rolled = False
        if today != self._today:
            rolled = self._today is not None and today > self._today
            if rolled:
                self.counters["rollovers"] += 1
                self._pool.close_days_before(today)
            self._today = today
        groups: dict[str, list[bytes]] = {}
        errors: dict[str, list[bytes]] = {}
        days: dict[str, int] = {}
        for stored in events:
            event = stored.event
            day = int(event.ts // _DAY)
            line = stored.envelope_json()
            path = self._path_for(day, event.source, event.type)
            group = groups.get(path)
            if group is None:
                group = groups[path] = []
                days[path] = day
            group.append(line)
            if is_error_event(event):
                error_path = self._error_path_for(day)
                if error_path != path:
                    group = errors.get(error_path)
                    if group is None:
                        group = errors[error_path] = []
                        days[error_path] = day
                    group.append(line)
        done: list[tuple[str, int]] = []
        nbytes = nlines = 0
        try:
            # Error files first: if the disk fills up mid-batch they are the ones written.
            for grouped in (errors, groups):
                for path, lines in grouped.items():
                    lines.append(b"")  # so the join ends the last line too
                    data = b"\n".join(lines)
                    done.append((path, self._pool.append(path, data, days[path])))
                    nbytes += len(data)
                    nlines += len(lines) - 1
        except BaseException:
            for path, size in done:
                try:
                    self._pool.truncate(path, size)
                except OSError as exc:
                    _log.error("archive: could not undo partial batch in %s: %s", path, exc)
            raise
        self.counters["bytes_written"] += nbytes
        self.counters["lines_written"] += nlines
        self.counters["error_lines"] += sum(len(lines) - 1 for lines in errors.values())
        self.counters["write_calls"] += 1
        self._write_cpu += time.thread_time() - cpu_started
        return rolled

    def _path_for(self, day: int, source: str, type: str) -> str:
        key = (day, source, type if self._use_type else "")
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) >= _PATH_CACHE_LIMIT:
                self._paths.clear()
            relative = self._partition.format(
                date=_day_name(day), source=sanitize(source), type=sanitize(type)
            )
            path = self._paths[key] = self._inside(relative)
        return path

    def _error_path_for(self, day: int) -> str:
        path = self._error_paths.get(day)
        if path is None:
            if len(self._error_paths) >= _PATH_CACHE_LIMIT:
                self._error_paths.clear()
            relative = self._error_partition.format(date=_day_name(day))
            path = self._error_paths[day] = self._inside(relative)
        return path

    def _inside(self, relative: str) -> str:
        path = os.path.normpath(os.path.join(self._root, relative))
        if not path.startswith(self._root + os.sep):  # defence in depth; sanitize() suffices
            raise ConfigError(f"archive path {relative!r} escapes {self._root}")
        return path

    # -- maintenance ---------------------------------------------------------------

    async def _maintenance_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            try:
                await anyio.to_thread.run_sync(self._maintain_sync)
                self.counters["maintenance_passes"] += 1
            except Exception as exc:  # must not end the task group (it spans the owner)
                self.counters["maintenance_errors"] += 1
                _log.warning("archive maintenance failed (will try again): %r", exc)
            with anyio.move_on_after(self._interval):
                await self._maintain_now.wait()
            self._maintain_now = anyio.Event()

    def _day_of(self, relative: str) -> int | None:
        """The UTC day number of an archive file, None if it is not one of ours."""
        for pattern in self._patterns:
            match = pattern.fullmatch(relative)
            if match is not None:
                try:
                    return (datetime.date.fromisoformat(match["date"]) - _EPOCH).days
                except ValueError:
                    return None
        return None

    def _maintain_sync(self) -> None:
        """Close past days' files, gzip them, delete days past retention."""
        today = int(self._clock() // _DAY)
        if not self._compress and self._retention_days is None:
            return
        self._pool.close_days_before(today)
        cutoff = None if self._retention_days is None else today - self._retention_days
        touched_dirs: set[str] = set()
        for dirpath, _, filenames in os.walk(self._root):
            for filename in filenames:
                if self._stopping:
                    return
                path = os.path.join(dirpath, filename)
                relative = os.path.relpath(path, self._root)
                if relative.endswith(".gz.part"):
                    # Left by a compression that was interrupted (passes never overlap);
                    # the .jsonl it came from is still there and is compressed again.
                    day = self._day_of(relative.removesuffix(".gz.part"))
                    if day is not None and day < today:
                        os.unlink(path)
                        touched_dirs.add(dirpath)
                    continue
                plain = relative.removesuffix(".gz")
                day = self._day_of(plain)
                if day is None or day >= today:
                    continue
                if cutoff is not None and day < cutoff:
                    if self._remove(path):
                        touched_dirs.add(dirpath)
                elif self._compress and plain == relative:
                    self._gzip(path)
        for dirpath in sorted(touched_dirs, key=len, reverse=True):
            while dirpath != self._root and dirpath.startswith(self._root):
                try:
                    os.rmdir(dirpath)  # only succeeds when empty
                except OSError:
                    break
                dirpath = os.path.dirname(dirpath)

    def _remove(self, path: str) -> bool:
        if not self._pool.claim(path):
            return False
        try:
            os.unlink(path)
        finally:
            self._pool.release(path)
        self.counters["deleted"] += 1
        return True

    def _gzip(self, path: str) -> None:
        if not self._pool.claim(path):
            return  # open: a late event is being written; compressed on a later pass
        try:
            target = path + ".gz"
            part = target + ".part"
            with open(path, "rb") as src, gzip.open(part, "wb", compresslevel=6) as out:
                shutil.copyfileobj(src, out, 2**20)
            if os.path.exists(target):
                # Late events for a day already compressed: a gzip file may hold several
                # members, and readers (gzip, zcat) read them all in sequence.
                with open(target, "ab") as dst, open(part, "rb") as extra:
                    shutil.copyfileobj(extra, dst, 2**20)
                os.unlink(part)
            else:
                os.replace(part, target)
            os.unlink(path)
        finally:
            self._pool.release(path)
        self.counters["compressed"] += 1

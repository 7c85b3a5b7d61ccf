"""Benchmarks for sse_batcher: ``python -m bench [--quick] [--only NAME]`` (``make bench``).

Every scenario module exposes ``run(quick: bool) -> list[dict]``; each dict is one
table row ``{"scenario", "metric", "value", "unit", "target", "met"}`` plus an
optional ``"note"`` (what a number means, or what limits a missed target).
Baselines are measured in the same run and targets are ratios where the machine
matters, because the machines are shared and noisy.

This module holds what the scenarios share: rows, percentiles, subprocess
servers on loopback, CPU and memory of a server's process tree, descriptor limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "ROOT",
    "MemoryPeak",
    "Server",
    "free_port",
    "http_json",
    "machine_info",
    "percentile",
    "raise_nofile",
    "row",
    "rss_kb",
    "run_json",
    "tmpdir",
    "tree_cpu_seconds",
    "tree_memory_kb",
    "tree_pids",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 30.0


def row(
    scenario: str,
    metric: str,
    value: float,
    unit: str,
    target: str = "-",
    met: bool = True,
    note: str = "",
) -> dict[str, Any]:
    """One table row (``met`` is True for informational rows without a target)."""
    result: dict[str, Any] = {
        "scenario": scenario,
        "metric": metric,
        "value": round(float(value), 3) if abs(value) < 100 else round(float(value), 1),
        "unit": unit,
        "target": target,
        "met": bool(met),
    }
    if note:
        result["note"] = note
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank of a non-empty sequence."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, Python, OS and the date, for results.json."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 1024 / 1024
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard
    limit); children inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's master and its worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as stat:
            parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants
    (/proc/PID/stat utime + stime of each)."""
    ticks = 0
    for member in tree_pids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over ``pid`` and its descendants (/proc/PID/smaps_rollup).
    PSS shares each page among the processes mapping it, so a master and its worker
    sharing code count it once; the RSS sum counts it in each."""
    rss = pss = 0
    for member in tree_pids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


class MemoryPeak:
    """Samples :func:`tree_memory_kb` of ``pid`` in a thread every ``interval`` seconds
    while the block runs; ``rss_kb`` and ``pss_kb`` are the highest seen."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.rss_kb = self.pss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            rss, pss = tree_memory_kb(self.pid)
            self.rss_kb, self.pss_kb = max(self.rss_kb, rss), max(self.pss_kb, pss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A small blocking JSON request (setup and checks only, never the measured path)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


class Server:
    """A server subprocess on a free loopback port, ready once ``ready_path`` answers 200.

    Args:
        argv: the command after ``python``, with ``{port}`` where the port goes.
        ready_path: polled with GET until it answers 200.
        python: False when ``argv`` is a whole command of its own (nginx, node).
    """

    def __init__(
        self, argv: Sequence[str], *, ready_path: str = "/health", python: bool = True
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        prefix = [sys.executable] if python else []
        self._argv = [*prefix, *(a.replace("{port}", str(self.port)) for a in argv)]
        self._ready_path = ready_path
        self._output: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")[-4000:]

    def __enter__(self) -> Self:
        self._output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self._argv, stdout=self._output, stderr=subprocess.STDOUT, cwd=ROOT
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(OSError):
                status, _ = http_json("GET", self.url + self._ready_path, timeout=2.0)
                if status == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server not ready in {START_TIMEOUT} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout``); returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._output is not None:
            self._output.close()
            self._output = None


def run_json(argv: Sequence[str], timeout: float) -> Any:
    """Run ``python argv…`` to completion and parse the last stdout line as JSON."""
    completed = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:3])} exited with {completed.returncode}:\n{completed.stderr[-3000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def tmpdir(prefix: str) -> Iterator[str]:
    """A temporary directory removed on exit (journals, result files)."""
    with tempfile.TemporaryDirectory(prefix=f"sse-bench-{prefix}-") as path:
        yield path

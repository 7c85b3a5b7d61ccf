"""The peers of ``make bench PEERS=1``: nginx + nchan and better-sse beside ``serve``.

Each peer runs as a server subprocess on a free loopback port with the same
routes as ``sse-batcher serve``: ``POST /events`` publishes, ``GET /events``
(``Accept: text/event-stream``) subscribes to the one channel, ``GET /health``
answers 200 once it is up.

- ``nchan``: Debian's ``nginx`` with ``libnginx-mod-nchan`` loaded from Debian's
  module path, our ``nchan.conf`` in a temporary prefix, foreground, one worker
  (plus its master, whose CPU and memory are counted too). nchan publishes one
  message per request, so its producer sends one event per POST, pipelined.
- ``better-sse``: ``node better_sse_server.mjs`` (one ``Channel``), the npm package
  installed by ``bench/peers/install`` into the gitignored ``node_modules`` here.

``bench/peers/install`` installs both (``make bench PEERS=1`` runs it first);
:func:`missing` says what is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

from .. import Server
from .. import row as plain_row

__all__ = [
    "KINDS",
    "NAMES",
    "count_endpoint",
    "missing",
    "row",
    "server",
    "subscribers",
]

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("nchan", "better-sse")
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
NODE_SCRIPT = os.path.join(HERE, "better_sse_server.mjs")
BETTER_SSE = os.path.join(HERE, "node_modules", "better-sse", "package.json")
# Column order and headings of the side-by-side table.
NAMES = {
    "sse_batcher": "sse-batcher serve",
    "sse_batcher_10ms": "sse-batcher --window-ms 10",
    "nchan": "nginx + nchan",
    "better-sse": "better-sse",
    "naive": "naive sse-starlette",
}


def row(
    scenario: str,
    server: str,
    measure: str,
    value: float,
    unit: str,
    target: str = "-",
    met: bool = True,
    note: str = "",
) -> dict[str, Any]:
    """A table row for one server (a key of :data:`NAMES`), placed in the side-by-side
    table's ``measure`` line and ``server`` column."""
    result = plain_row(scenario, f"{NAMES[server]} {measure}", value, unit, target, met, note)
    result["server"] = server
    result["measure"] = measure
    return result


def _nginx() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"  # not on a user's PATH
    return found


def missing() -> list[str]:
    """What ``bench/peers/install`` would still have to install (empty: ready)."""
    gaps = []
    if _nginx() is None:
        gaps.append("nginx (Debian package nginx)")
    if not os.path.exists(NCHAN_MODULE):
        gaps.append(f"{NCHAN_MODULE} (Debian package libnginx-mod-nchan)")
    if shutil.which("node") is None:
        gaps.append("node (Debian package nodejs, v20 or later)")
    if not os.path.exists(BETTER_SSE):
        gaps.append("better-sse (npm, run bench/peers/install)")
    return gaps


def count_endpoint(kind: str) -> tuple[str, str]:
    """Where a server reports its subscriber count: (path, dotted JSON key)."""
    if kind == "nchan":
        return "/channel", "subscribers"
    if kind == "better-sse":
        return "/stats", "subscribers"
    return "/stats", "hub.subscribers"


def subscribers(kind: str, url: str) -> int:
    """The server's own count of connected subscribers."""
    path, key = count_endpoint(kind)
    # nchan answers channel info in the format the Accept header asks for.
    request = urllib.request.Request(url + path, headers={"Accept": "text/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        value: Any = json.loads(response.read())
    for part in key.split("."):
        value = value[part]
    return int(value)


@contextlib.contextmanager
def server(kind: str, directory: str, *, heartbeat: float = 15.0) -> Iterator[Server]:
    """Start one peer (``nchan`` or ``better-sse``); stopped on exit."""
    gaps = missing()
    if gaps:
        raise RuntimeError(f"peers not installed (run bench/peers/install): {', '.join(gaps)}")
    if kind == "better-sse":
        node = shutil.which("node") or "node"
        with Server([node, NODE_SCRIPT, "{port}", f"{heartbeat:g}"], python=False) as peer:
            yield peer
        return
    if kind != "nchan":
        raise ValueError(f"unknown peer {kind!r}")
    prefix = os.path.join(directory, f"nginx-{os.getpid()}-{len(os.listdir(directory))}")
    os.makedirs(prefix)
    if os.geteuid() == 0:
        # The worker drops to "nobody"; it only needs to read what is in memory.
        os.chmod(prefix, 0o755)
    peer = Server(
        [
            _nginx() or "nginx",
            *("-p", prefix, "-c", os.path.join(prefix, "nginx.conf")),
            *("-e", os.path.join(prefix, "error.log")),
        ],
        python=False,
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = 65536 if hard == resource.RLIM_INFINITY else hard
    with open(os.path.join(HERE, "nchan.conf")) as template:
        config = template.read()
    for name, value in {
        "module": NCHAN_MODULE,
        "prefix": prefix,
        "port": str(peer.port),
        "nofile": str(nofile),
        "connections": str(max(1024, nofile - 100)),
        "heartbeat": f"{max(1, round(heartbeat))}",
    }.items():
        config = config.replace("{" + name + "}", value)
    with open(os.path.join(prefix, "nginx.conf"), "w") as out:
        out.write(config)
    with peer:
        yield peer

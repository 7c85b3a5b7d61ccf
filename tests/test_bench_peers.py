"""``make bench PEERS=1`` cannot rot: nginx + nchan and better-sse in their smallest runs.

The peer runs need ``bench/peers/install`` to have been run (Debian's nginx and
libnginx-mod-nchan, node and better-sse in bench/peers/node_modules); without
them they skip, unless ``BENCH_PEERS=1`` asks for them, when a missing peer
fails. Sizes are tiny, so no number is asserted beyond what every run must
show: every subscriber got every event in order, every stream held, counted by
the server and sent heartbeats. The wire formats the load generator meets only
with the peers (a stream without chunked encoding, ``id:`` without a space) are
checked on every run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import connections, fanout, latency, peers
from bench.__main__ import side_by_side
from bench.raw_client import Subscriber, message_fields

ROOT = Path(__file__).resolve().parent.parent


def need_peers() -> None:
    gaps = peers.missing()
    if not gaps:
        return
    message = f"peers not installed (run bench/peers/install): {', '.join(gaps)}"
    if os.environ.get("BENCH_PEERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.parametrize("kind", peers.KINDS)
def test_fanout_smallest_peer(tmp_path: Path, kind: str) -> None:
    need_peers()
    result = fanout.measure(kind, 10, 0.5, str(tmp_path))
    assert result["posted"] > 0
    assert result["complete"] == result["subscribers"] == 10
    assert result["rss_kb"] >= result["pss_kb"] > 0


@pytest.mark.parametrize("kind", peers.KINDS)
def test_latency_smallest_peer(tmp_path: Path, kind: str) -> None:
    need_peers()
    result = latency.measure_published(kind, 10, 1.0, str(tmp_path))
    assert result["expected"] > 0
    assert result["received"] == result["expected"]
    assert result["finished"] == 10
    assert all(0 <= ms < 5000 for ms in result["ms"])


@pytest.mark.parametrize("kind", peers.KINDS)
def test_connections_smallest_peer(kind: str) -> None:
    need_peers()
    result = connections.measure(kind, 50)
    assert result["connected"] == result["subscribers_seen"] == result["alive"] == 50
    assert result["with_heartbeat"] == 50
    (rss0, pss0), (rss1, pss1) = result["tree_before_kb"], result["tree_peak_kb"]
    assert rss1 >= rss0 > 0
    assert pss1 >= pss0 > 0


def test_install_says_what_is_missing(tmp_path: Path) -> None:
    """With nginx and nchan present but no node on PATH, the script fails and says so."""
    need_peers()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "dirname", "id", "nginx"):
        found = shutil.which(tool) or f"/usr/sbin/{tool}"
        (bin_dir / tool).symlink_to(found)
    completed = subprocess.run(
        ["sh", str(ROOT / "bench" / "peers" / "install")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(bin_dir)},
    )
    assert completed.returncode == 1
    assert "node is missing" in completed.stderr


def test_subscriber_reads_nchan_and_better_sse_streams() -> None:
    """nchan: no chunked encoding, ids of its own; better-sse: "id:1" without a space.
    Order and completeness come from the producer's ``job_id`` in the data."""
    nchan_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n"
    nchan_body = b"".join(
        b'id: 1796:%d\nevent: T\ndata: {"type":"T","data":{"job_id":%d}}\n\n' % (i, i)
        for i in range(5)
    )
    better_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    better_body = b"".join(
        b"%x\r\n%s\r\n" % (len(m), m)
        for m in (
            b'event:T\nid:%d\ndata:{"id":"%d","data":{"job_id":%d}}\n\n' % (i, i, i)
            for i in range(7, 10)
        )
    )

    async def feed() -> list[tuple[int, int | None, int | None]]:
        seen = []
        for head, body in ((nchan_head, nchan_body), (better_head, better_body)):
            sub = Subscriber(number="job_id", keep_messages=True)
            # Split reads anywhere, as TCP may: one byte at a time through the body.
            sub.data_received(head)
            for i in range(len(body)):
                sub.data_received(body[i : i + 1])
            assert sub.connected.done() and sub.connected.exception() is None
            seen.append((sub.count, sub.first_id, sub.last_id))
            fields = message_fields(sub.messages[-1][1])
            assert fields["event"] == "T" and "job_id" in fields["data"]
        return seen

    assert asyncio.run(feed()) == [(5, 0, 4), (3, 7, 9)]


def test_side_by_side_table_has_a_column_per_server() -> None:
    rows = [
        peers.row("fan-out", "sse_batcher", "deliveries/s", 400_000.0, "events/s"),
        peers.row("fan-out", "nchan", "deliveries/s", 300_000.0, "events/s", "all", False, "lost"),
        peers.row("fan-out", "nchan", "server CPU per delivery", 1.5, "µs"),
    ]
    text = side_by_side(rows)
    header, _, first, second, *_ = text.splitlines()
    assert "sse-batcher serve" in header and "nginx + nchan" in header
    assert "400,000" in first and "300,000 NOT met" in first
    assert "1.50" in second
    assert "lost" in text
    assert "| nginx + nchan |" in side_by_side(rows, markdown=True)

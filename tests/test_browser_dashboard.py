"""The dashboard (``GET /``) in headless Chromium against ``python -m sse_batcher serve``.

Run as a script to refresh the README screenshot with realistic traffic (bursts from
three workers for about a minute, so the chart is full)::

    .venv/bin/python -m tests.test_browser_dashboard docs/dashboard.png
"""

from __future__ import annotations

import itertools
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import ARTIFACTS, chromium, collect_page_errors
from tests.servers import ServerProcess

VIEWPORT = {"width": 1360, "height": 860}


def post(base_url: str, events: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{base_url}/events", json=events, timeout=10)
    response.raise_for_status()
    assert response.json()["accepted"] == len(events), response.text


def jobs(source: str, type_: str, ids: range) -> list[dict[str, Any]]:
    return [{"type": type_, "source": source, "data": {"job_id": f"{source}-{i}"}} for i in ids]


@pytest.mark.browser
def test_dashboard_shows_channels_and_filters_by_channel(tmp_path: Path) -> None:
    def on(channel: str, n: int) -> dict[str, Any]:
        return {"type": "PING", "source": "w", "channel": channel, "data": {"n": n}}

    with ServerProcess(["--db", str(tmp_path / "e.db")]) as server, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        errors = collect_page_errors(page)
        page.goto(server.url + "/")
        page.wait_for_selector("#conn[data-status='open']")
        post(server.url, [on("user.1.jobs", 1), on("user.2.jobs", 2)])
        first = page.locator(".feed-row[data-channel='user.2.jobs']")
        first.wait_for()
        assert "user.2.jobs" in first.locator(".chan").inner_text()
        assert page.locator(".feed-row[data-channel='user.1.jobs']").count() == 1

        page.fill("#channel-filter", "user.1.*")
        page.press("#channel-filter", "Enter")
        page.wait_for_selector("#conn[data-status='open']")
        page.wait_for_function("document.querySelectorAll('.feed-row').length === 0")
        # user.2 first: it would show before user.1 if the filter let it through
        post(server.url, [on("user.2.jobs", 3), on("user.1.jobs", 4)])
        page.wait_for_function(
            "[...document.querySelectorAll('.feed-row')].some(r => r.title.includes('4'))"
        )
        channels = page.eval_on_selector_all(
            ".feed-row", "rows => rows.map(r => r.dataset.channel)"
        )
        assert channels == ["user.1.jobs"]
        assert errors == []


@pytest.mark.browser
def test_dashboard_shows_batches_and_switches_a_worker_to_single_events(tmp_path: Path) -> None:
    with (
        ServerProcess(["--db", str(tmp_path / "e.db"), "--durable-ingest"]) as server,
        chromium() as browser,
    ):
        page = browser.new_page(viewport=VIEWPORT)
        errors = collect_page_errors(page)
        page.goto(server.url + "/")
        page.wait_for_selector("#conn[data-status='open']")

        # a burst from each of two workers: one batch message each, badges of 5 and 4
        post(
            server.url,
            jobs("thumbnails", "JOB_STARTED", range(5)) + jobs("overlays", "JOB_STARTED", range(4)),
        )
        thumbs = page.locator(".feed-row.batch[data-source='thumbnails']")
        thumbs.locator(".badge").wait_for()
        assert thumbs.locator(".badge").inner_text() == "\N{MULTIPLICATION SIGN}5"
        assert thumbs.get_attribute("data-type") == "JOBS_BATCH_STARTED"
        page.locator(".feed-row.batch[data-source='overlays'] .badge").wait_for()
        assert (
            page.locator(".feed-row.batch[data-source='overlays'] .badge").inner_text()
            == "\N{MULTIPLICATION SIGN}4"
        )

        # expanding a batch lists its members
        thumbs.locator("summary").click()
        expect(thumbs.locator(".members li")).to_have_count(5)  # rendered on the toggle event
        assert "thumbnails-4" in thumbs.locator(".members li").nth(4).inner_text()

        # the worker rows arrive with the next poll; switch batching off for "overlays"
        toggle = page.locator("input[data-worker='overlays']")
        toggle.wait_for(state="attached")
        assert toggle.is_checked()
        with page.expect_response(
            lambda r: r.request.method == "PATCH" and r.url.endswith("/workers/overlays")
        ) as patched:
            page.locator("tr[data-worker='overlays'] .switch").click()
        assert patched.value.status == 200
        expect(toggle).not_to_be_checked()
        workers = {w["name"]: w for w in httpx.get(f"{server.url}/workers").json()["workers"]}
        assert workers["overlays"]["batching"] is False
        assert workers["thumbnails"]["batching"] is True

        # now its burst arrives as single events, the other worker's still as a batch
        post(
            server.url,
            jobs("overlays", "JOB_COMPLETED", range(4))
            + jobs("thumbnails", "JOB_COMPLETED", range(5)),
        )
        singles = page.locator(
            ".feed-row.single[data-source='overlays'][data-type='JOB_COMPLETED']"
        )
        page.wait_for_function(
            "document.querySelectorAll(\".feed-row.single[data-source='overlays']"
            "[data-type='JOB_COMPLETED']\").length === 4"
        )
        assert singles.locator(".badge").count() == 0
        page.locator(".feed-row.batch[data-type='JOBS_BATCH_COMPLETED'] .badge").wait_for()
        assert page.locator(".feed-row.batch[data-source='overlays']").count() == 1

        # totals from /stats: 18 events in, 2 + 4 + 1 = 7 messages out, 61.1% saved
        page.wait_for_function("document.getElementById('kpi-in').textContent === '18'")
        page.wait_for_function("document.getElementById('kpi-out').textContent === '7'")
        assert page.locator("#kpi-saved").inner_text() == "61.1%"
        assert page.locator("tr[data-worker='overlays'] .wmode").inner_text() == "one by one"

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert errors == []


@pytest.mark.browser
def test_dashboard_shows_a_notice_when_the_stream_resets(tmp_path: Path) -> None:
    # A cursor from another journal (other epoch) cannot be served: the page says so.
    with (
        ServerProcess(["--db", str(tmp_path / "e.db")]) as server,
        chromium() as browser,
    ):
        page = browser.new_page(viewport=VIEWPORT)
        page.route(
            "**/events",
            lambda route: route.continue_(url=route.request.url + "?last_event_id=feedface.99"),
        )
        page.goto(server.url + "/")
        page.wait_for_selector("#reset-notice:not([hidden])")
        assert "Could not resume" in page.locator("#reset-text").inner_text()
        assert page.locator("#conn").get_attribute("data-status") == "open"


def readme_screenshot(path: Path, seconds: float = 62.0) -> None:
    """Three workers posting bursts for ``seconds``, then a screenshot of the page."""
    rng = random.Random(7)
    job = itertools.count(4100)
    workers = [("thumbnail-worker", "thumb"), ("overlay-worker", "ovl"), ("scheduler", "cap")]
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(["--db", f"{tmp}/e.db"]) as server,
        chromium() as browser,
    ):
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(server.url + "/")
        page.wait_for_selector("#conn[data-status='open']")
        httpx.patch(f"{server.url}/workers/scheduler", json={"batching": False})
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            events: list[dict[str, Any]] = []
            for source, prefix in workers:
                ids = [f"{prefix}-{next(job)}" for _ in range(rng.choice([0, 1, 3, 4, 6, 9]))]
                if source == "scheduler":
                    ids = ids[:2]
                events += [
                    {
                        "type": "JOB_STARTED",
                        "source": source,
                        "data": {"job_id": i, "camera": rng.randint(1, 8)},
                    }
                    for i in ids
                ]
                events += [
                    {
                        "type": "JOB_COMPLETED",
                        "source": source,
                        "data": {"job_id": i, "ms": rng.randint(90, 900)},
                    }
                    for i in ids[:-1]
                ]
                if ids and rng.random() < 0.08:
                    events.append(
                        {
                            "type": "JOB_FAILED",
                            "source": source,
                            "data": {"job_id": ids[-1], "error": "ffmpeg exited with status 1"},
                        }
                    )
            if rng.random() < 0.3:
                events.append(
                    {
                        "type": "LOG_INFO",
                        "source": "overlay-worker",
                        "data": {
                            "message": f"Rendering overlay for camera {rng.randint(1, 8)}",
                            "level": "info",
                        },
                    }
                )
            if events:
                post(server.url, events)
            page.wait_for_timeout(rng.uniform(300, 900))  # pacing of the traffic, not a sync
        page.locator("details.feed-row").nth(1).locator("summary").click()
        page.wait_for_timeout(400)  # let the chevron's rotation finish before the shot
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))


if __name__ == "__main__":
    readme_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))

"""The operator's routes: sources and the batching switch, counters, health, dashboard.

All but ``/health`` and the dashboard page need the admin capability. ``/health``
answers anyone (load balancers probe it) but shows its reasons and numbers only
to the admin: they name sources and paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from sse_batcher._exceptions import InvalidEvent
from sse_batcher.batching._batcher import SSEEventBatcher
from sse_batcher.batching._journal import Journal
from sse_batcher.service._auth import AuthGate
from sse_batcher.service._hub import Hub
from sse_batcher.service._responses import error, json_response

if TYPE_CHECKING:
    from sse_batcher.service._metrics import StatsRegistry

__all__ = ["OperatorRoutes"]

STATIC_DIR = Path(__file__).parent.parent / "static"
HEALTH_TIMEOUT = 5.0


class OperatorRoutes:
    """``/workers``, ``PATCH /workers/{name}``, ``/stats``, ``/metrics``, ``/health``, ``/``.

    Args:
        sections: the ``/stats`` sections (name to counters), read on each request.
    """

    def __init__(
        self,
        batcher: SSEEventBatcher,
        journal: Journal,
        hub: Hub,
        gate: AuthGate,
        sections: Callable[[], dict[str, dict[str, Any]]],
    ) -> None:
        self.batcher = batcher
        self.journal = journal
        self.hub = hub
        self.gate = gate
        self.stats_sections = sections
        self.registry: StatsRegistry | None = None  # made on the first scrape

    async def workers(self, request: Request) -> Response:
        grant = self.gate.require(request, "admin")
        if isinstance(grant, Response):
            return grant
        return json_response({"workers": [w.as_dict() for w in self.batcher.workers()]})

    async def patch_worker(self, request: Request) -> Response:
        grant = self.gate.require(request, "admin")
        if isinstance(grant, Response):
            return grant
        name = request.path_params["name"]
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return error(400, f"the body is not valid JSON: {exc}")
        if not isinstance(body, dict) or set(body) != {"batching"}:
            return error(400, 'the body must be {"batching": true|false}')
        if not isinstance(body["batching"], bool):
            return error(400, "batching must be true or false")
        try:
            self.batcher.set_batching(name, body["batching"])
        except InvalidEvent as exc:
            return error(400, f"invalid worker name: {exc}")
        return json_response({"name": name, "batching": self.batcher.batching_enabled(name)})

    async def stats(self, request: Request) -> Response:
        grant = self.gate.require(request, "admin")
        if isinstance(grant, Response):
            return grant
        return json_response(self.stats_sections())

    async def metrics(self, request: Request) -> Response:
        grant = self.gate.require(request, "admin")
        if isinstance(grant, Response):
            return grant
        # prometheus-client is the [metrics] extra: imported on the first scrape, so an
        # app without it loads nothing of it and still serves everything else.
        try:
            from sse_batcher.service._metrics import CONTENT_TYPE, StatsRegistry
        except ModuleNotFoundError as exc:
            return error(501, f"GET /metrics needs {exc.name}: pip install 'sse_batcher[metrics]'")
        if self.registry is None:
            self.registry = StatsRegistry(self.stats_sections)
        return Response(self.registry.render(), media_type=CONTENT_TYPE)

    async def health(self, request: Request) -> Response:
        # Open to all (load balancers probe it), but the reasons and counts are the
        # operator's: without the admin capability only the status is shown.
        grant = self.gate.authenticate(request)
        details = not isinstance(grant, Response) and grant.admin
        problem = await self._health_problem()
        if problem is not None:
            return error(503, problem if details else "unhealthy")
        if not details:
            return json_response({"status": "ok"})
        return json_response(
            {"status": "ok", "subscribers": self.hub.subscriber_count, "epoch": self.journal.epoch}
        )

    async def _health_problem(self) -> str | None:
        try:
            with anyio.fail_after(HEALTH_TIMEOUT):
                await self.journal.ping()
        except TimeoutError:
            return f"journal did not answer within {HEALTH_TIMEOUT:g} s"
        except Exception as exc:  # any failure is a reason to report, not to crash
            return f"journal unavailable: {exc}"
        if not self.batcher.running:
            return "batcher is not running"
        if not self.batcher.write_healthy:
            # The journal may answer reads while every write fails (e.g. a full disk).
            pending = self.batcher.stats().dead_letter_pending
            return f"journal writes are failing; {pending} events dead-lettered"
        return None

    async def dashboard(self, request: Request) -> Response:
        page = STATIC_DIR / "dashboard.html"
        if not page.is_file():
            return error(404, "the dashboard is not installed (sse_batcher/static/dashboard.html)")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

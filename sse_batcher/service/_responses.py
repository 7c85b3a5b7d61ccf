"""Responses shared by the routes: JSON answers and errors (the SSE stream: ``_response``)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["NOT_STARTED", "error", "json_http_error", "json_response"]

NOT_STARTED = (
    "the sse_batcher service was never started: its app is mounted in a host app whose "
    "lifespan does not enter it (Starlette does not run a mounted app's lifespan). "
    "Enter it in the host's lifespan: `async with service: yield` (see docs/embedding.md)"
)


def json_response(content: Any, status_code: int = 200, **headers: str) -> Response:
    """A JSON response encoded with orjson."""
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers or None,
    )


def error(status_code: int, message: str, **headers: str) -> Response:
    return json_response({"error": message}, status_code, **headers)


async def json_http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 (any ``HTTPException``) as JSON, like every other error we send."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail, **(exc.headers or {}))

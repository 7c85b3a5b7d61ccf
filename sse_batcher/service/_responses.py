"""JSON answers shared by the routes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["error", "json_http_error", "json_response"]


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

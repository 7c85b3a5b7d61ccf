"""Bearer-token checks for the HTTP routes.

Two tokens, two roles: the publish token guards ingest and the worker switch; the
subscribe token guards reading (the stream and its history). The publish token
also grants reading; a subscribe token never grants publishing. Browsers'
``EventSource`` cannot set headers, so readers may pass ``?token=`` instead.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from sse_batcher._exceptions import ConfigError

__all__ = ["TokenGate"]

_UNAUTHORIZED = b'{"error":"missing bearer token (Authorization: Bearer <token>)"}'
_FORBIDDEN = b'{"error":"invalid token"}'


def _check_token(name: str, value: str | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or value != value.strip():
        raise ConfigError(f"{name} must be a non-empty string without surrounding spaces")
    return value.encode()


def _presented(request: Request, *, allow_query: bool) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    if allow_query:
        return request.query_params.get("token") or None
    return None


class TokenGate:
    """Decides whether a request may publish or subscribe.

    Args:
        token: required to publish (``POST /events``, ``PATCH /workers/*``); None: open.
        subscribe_token: required to read (``GET /events``, history); None: open.
    """

    def __init__(self, token: str | None, subscribe_token: str | None) -> None:
        self._publish = _check_token("token", token)
        self._subscribe = _check_token("subscribe_token", subscribe_token)

    def publisher(self, request: Request) -> Response | None:
        """None when the request may publish, else the 401/403 response to send."""
        if self._publish is None:
            return None
        return self._verdict(_presented(request, allow_query=False), (self._publish,))

    def subscriber(self, request: Request) -> Response | None:
        """None when the request may read the stream, else the 401/403 response."""
        if self._subscribe is None:
            return None
        accepted = (self._subscribe,) if self._publish is None else (self._subscribe, self._publish)
        return self._verdict(_presented(request, allow_query=True), accepted)

    @staticmethod
    def _verdict(presented: str | None, accepted: tuple[bytes, ...]) -> Response | None:
        if presented is None:
            return Response(
                _UNAUTHORIZED,
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        given = presented.encode()
        # Compare against every accepted token (no early exit): constant time per token.
        results = [hmac.compare_digest(given, expected) for expected in accepted]
        if any(results):
            return None
        return Response(_FORBIDDEN, status_code=403, media_type="application/json")

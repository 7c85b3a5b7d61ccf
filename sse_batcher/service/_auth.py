"""Who may do what: credentials resolve to a :class:`Grant`; routes check the grant.

A request's credential is looked for in ``Authorization: Bearer``, then the
``sse_batcher_token`` cookie, then (reading routes only: a browser's
``EventSource`` cannot set headers) ``?token=``. Each configured verifier is
asked in turn; the first that recognises the credential gives the grant. A
request without a credential gets the *open* grant: the capabilities no
configured credential protects, or those opened on purpose. A credential that
no verifier recognises is refused (403) even on an open route, so a typo is
noticed rather than silently treated as anonymous (unless no credential source
is configured at all: then there is nothing to check it against).

Static tokens (``serve --token / --subscribe-token / --admin-token``)::

    --token            publish "*" + subscribe "*" (+ admin while no --admin-token)
    --subscribe-token  subscribe "*"
    --admin-token      admin + publish "*" + subscribe "*"

More credential sources (e.g. signed tokens) are more :class:`Verifier` objects.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from starlette.requests import Request
from starlette.responses import Response

from sse_batcher._exceptions import ConfigError, InvalidCredential
from sse_batcher.service._channels import covers

__all__ = [
    "ALL",
    "COOKIE",
    "AuthGate",
    "Capability",
    "Grant",
    "StaticTokens",
    "Verifier",
    "check_token",
    "exposure_warnings",
    "open_grant",
]

logger = logging.getLogger("sse_batcher.auth")

ALL = ("*",)
COOKIE = "sse_batcher_token"
Capability = Literal["publish", "subscribe", "admin"]
CAPABILITIES: tuple[Capability, ...] = ("publish", "subscribe", "admin")
# RFC 6750 b64token characters are a subset; any visible ASCII is accepted so
# existing random tokens keep working, but nothing a header could not carry.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one credential allows.

    Attributes:
        subscribe: channel patterns it may read (``"*"``: every channel).
        publish: channel patterns it may publish to.
        admin: the operator routes (workers, stats, metrics, health details).
        identity: who the credential names (None: anonymous); limits per identity
            use it.
        expires: Unix time after which the credential is no longer valid (a signed
            token's ``exp``); an open stream ends then. None: never.
    """

    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    admin: bool = False
    identity: str | None = None
    expires: float | None = None

    def allows(self, capability: Capability, channel: str | None = None) -> bool:
        """Whether this grant covers ``capability``: on ``channel`` (a channel or a
        pattern) for publish and subscribe, on some channel when it is None."""
        if capability == "admin":
            return self.admin
        patterns = self.subscribe if capability == "subscribe" else self.publish
        if channel is None:
            return bool(patterns)
        return any(covers(p, channel) for p in patterns)

    def union(self, other: Grant) -> Grant:
        """Everything either grant allows (a credential adds to the open grant)."""
        return Grant(
            subscribe=_merge(self.subscribe, other.subscribe),
            publish=_merge(self.publish, other.publish),
            admin=self.admin or other.admin,
            identity=other.identity if other.identity is not None else self.identity,
            expires=other.expires if other.expires is not None else self.expires,
        )


def _merge(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*a, *b)))


class Verifier(Protocol):
    """A credential source: the grant for a presented credential, or None if unknown."""

    def verify(self, credential: str) -> Grant | None: ...

    def can_grant(self) -> Grant:
        """The most this verifier may ever grant (decides what stays open)."""
        ...


def check_token(name: str, value: str | None) -> str | None:
    """``value`` when usable as a bearer token, None when unset.

    Raises:
        ConfigError: empty, or characters an HTTP header cannot carry as-is.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _TOKEN_CHARS.fullmatch(value):
        raise ConfigError(
            f"{name} must be a non-empty string of visible ASCII characters "
            "(no spaces, no non-ASCII: HTTP headers cannot carry them reliably)"
        )
    return value


class StaticTokens:
    """Fixed bearer tokens, each with its grant; compared in constant time.

    Args:
        token: publish and subscribe on every channel; admin too when there is
            no ``admin_token``.
        subscribe_token: subscribe on every channel.
        admin_token: everything.
    """

    def __init__(
        self,
        token: str | None = None,
        subscribe_token: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        configured = {
            # Until an admin token is set, the publish token is the operator's token.
            "token": (
                check_token("token", token),
                Grant(ALL, ALL, admin=admin_token is None, identity="token"),
            ),
            "subscribe_token": (
                check_token("subscribe_token", subscribe_token),
                Grant(ALL, identity="subscribe_token"),
            ),
            "admin_token": (
                check_token("admin_token", admin_token),
                Grant(ALL, ALL, admin=True, identity="admin_token"),
            ),
        }
        values = [v for v, _ in configured.values() if v is not None]
        if len(set(values)) != len(values):
            raise ConfigError("token, subscribe_token and admin_token must differ")
        self._tokens = [(v.encode(), g) for v, g in configured.values() if v is not None]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def verify(self, credential: str) -> Grant | None:
        given = credential.encode("utf-8", "surrogateescape")
        found = None
        # Every token is compared (no early exit) and each comparison is constant time.
        for expected, grant in self._tokens:
            if hmac.compare_digest(given, expected):
                found = grant
        return found

    def can_grant(self) -> Grant:
        grant = Grant()
        for _, each in self._tokens:
            grant = grant.union(each)
        return Grant(grant.subscribe, grant.publish, grant.admin)


def open_grant(verifiers: Iterable[Verifier], opened: Collection[Capability] = ()) -> Grant:
    """What a request without a credential may do.

    A capability is open when no configured verifier can grant it (nothing to
    protect it with), or when it is opened on purpose (``opened``; e.g. a public
    read-only feed with ``("subscribe",)``).
    """
    protected = Grant()
    for verifier in verifiers:
        protected = protected.union(verifier.can_grant())
    unknown = set(opened) - set(CAPABILITIES)
    if unknown:
        raise ConfigError(f"cannot open {sorted(unknown)}; capabilities: {CAPABILITIES}")
    return Grant(
        subscribe=ALL if "subscribe" in opened or not protected.subscribe else (),
        publish=ALL if "publish" in opened or not protected.publish else (),
        admin="admin" in opened or not protected.admin,
    )


_WHAT = {
    "publish": "publish events (POST /events)",
    "subscribe": "read the stream and its history (GET /events, /events/history)",
    "admin": "read sources, counters and health details, and switch batching "
    "(/workers, PATCH /workers/*, /stats, /metrics)",
}
_HOW = {
    "publish": "--token or --admin-token",
    "subscribe": "--subscribe-token, --token or --admin-token",
    "admin": "--admin-token or --token",
}


def exposure_warnings(anonymous: Grant, opened: Collection[Capability] = ()) -> list[str]:
    """One line per capability anyone may use without a credential."""
    lines = []
    for capability in CAPABILITIES:
        if anonymous.allows(capability):
            why = "opened on purpose" if capability in opened else f"set {_HOW[capability]}"
            lines.append(f"OPEN: anyone who reaches this server can {_WHAT[capability]} ({why})")
    return lines


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    import orjson

    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class AuthGate:
    """Resolves a request's credential to a :class:`Grant` and checks capabilities.

    Args:
        verifiers: credential sources, asked in order; the first match wins.
        opened: capabilities open to requests without a credential even when a
            verifier could protect them.
    """

    def __init__(self, verifiers: Sequence[Verifier], opened: Collection[Capability] = ()) -> None:
        self.verifiers = tuple(v for v in verifiers if v)
        self.opened = frozenset(opened)
        self.anonymous = open_grant(self.verifiers, self.opened)
        self.counters = {"unauthenticated": 0, "invalid_credentials": 0, "forbidden": 0}

    def credential(self, request: Request, *, allow_query: bool = False) -> str | None:
        """The presented credential: bearer header, then cookie, then ``?token=``."""
        found = _bearer(request) or request.cookies.get(COOKIE) or None
        if found is None and allow_query:
            found = request.query_params.get("token") or None
        return found

    def authenticate(self, request: Request, *, allow_query: bool = False) -> Grant | Response:
        """The request's grant (the open grant plus its credential's), or a 403."""
        if not self.verifiers:  # nothing configured: everything is open, nothing to check
            return self.anonymous
        credential = self.credential(request, allow_query=allow_query)
        if credential is None:
            return self.anonymous
        for verifier in self.verifiers:
            try:
                grant = verifier.verify(credential)
            except InvalidCredential as exc:
                # A token meant for this server that does not hold: 401, so the client
                # knows to get a fresh one (RFC 6750 3.1 "invalid_token").
                self.counters["invalid_credentials"] += 1
                return _json_error(
                    401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
            if grant is not None:
                return self.anonymous.union(grant)
        self.counters["invalid_credentials"] += 1
        return _json_error(403, "invalid token")

    def require(
        self,
        request: Request,
        capability: Capability,
        *,
        channel: str | None = None,
        allow_query: bool = False,
    ) -> Grant | Response:
        """The grant when it allows ``capability``, else the 401/403 to send."""
        grant = self.authenticate(request, allow_query=allow_query)
        if isinstance(grant, Response) or grant.allows(capability, channel):
            return grant
        if grant.identity is None:
            self.counters["unauthenticated"] += 1
            where = "Authorization: Bearer <token>" + (" or ?token=" if allow_query else "")
            return _json_error(
                401, f"{capability} needs a token ({where})", {"WWW-Authenticate": "Bearer"}
            )
        self.counters["forbidden"] += 1
        return _json_error(403, f"this token does not allow {capability}")

"""The ``serve`` options, shared by ``serve`` and ``demo``, and the settings they fill.

Every option also reads an ``SSE_BATCHER_<NAME>`` environment variable
(``--window-ms`` ← ``SSE_BATCHER_WINDOW_MS``); the command line wins. A bad value,
from either place, is reported in one line naming where it came from (exit status 2).

Adding a flag is one field (in :class:`~sse_batcher.ServiceSettings` when it shapes
the service, in :class:`ServerSettings` when it shapes the process) and one
``Option(...)`` line in :data:`OPTIONS`: :func:`server_options` adds it to both
commands and :meth:`ServerSettings.from_params` routes its value to its field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

import click

from sse_batcher.service._settings import ServiceSettings

__all__ = ["ENV_PREFIX", "OPTIONS", "Option", "ServerSettings", "server_options"]

ENV_PREFIX = "SSE_BATCHER_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
F = TypeVar("F", bound=Callable[..., Any])


# -- value checks (each raises ValueError with the reason) ------------------------------


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def number_in(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise ValueError(f"must be a positive number, got {text}")
    return value


def text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def secret(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError("must be non-empty, without surrounding spaces")
    return value


def origin(value: str) -> str:
    value = value.strip()
    if value != "*" and not value.startswith(("http://", "https://")):
        raise ValueError(f"an origin looks like https://example.com (or *), got {value!r}")
    return value.rstrip("/")


def redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected redis://, rediss:// or unix:// URL, got {value!r}")
    return value


def log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.lower()


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]  # generic in click >= 8.3's stubs only
else:
    _ParamType = click.ParamType


class Checked(_ParamType):
    """A click type around a check function; errors name the flag or the variable."""

    # A repeatable option reads its variable as a comma-separated list.
    envvar_list_splitter = ","

    def __init__(self, check: Callable[[str], Any], name: str = "value") -> None:
        self.check = check
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, already of the right type
        try:
            return self.check(value)
        except ValueError as exc:
            where = param.opts[0] if param is not None and param.opts else self.name
            if (
                ctx is not None
                and param is not None
                and param.name is not None
                and ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT
                and isinstance(param, click.Option)
                and isinstance(param.envvar, str)
            ):
                where = param.envvar
            raise click.UsageError(f"{where}: {exc}", ctx) from None


@dataclass(frozen=True, slots=True)
class Option:
    """One ``serve`` flag: its check, default and help; the field it fills is its name."""

    flag: str
    check: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    switch: bool = False  # a flag without a value (env: true/false)
    repeat: bool = False  # may be given several times (env: comma-separated)

    @property
    def name(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def _strict_switch(self, ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        # click reads a flag's variable leniently (an unknown word means "unset");
        # a typo in a deployment's environment should stop it instead.
        source = ctx.get_parameter_source(self.name)
        raw = os.environ.get(self.env)
        if raw and source is not click.core.ParameterSource.COMMANDLINE:
            try:
                return boolean(raw)
            except ValueError as exc:
                raise click.UsageError(f"{self.env}: {exc}", ctx) from None
        return value

    def decorator(self, default: Any) -> Callable[[F], F]:
        extra: dict[str, Any] = {"type": Checked(self.check, self.flag)}
        if self.switch:
            extra = {"is_flag": True, "callback": self._strict_switch}
        elif self.repeat:
            extra.update(multiple=True)
        return click.option(
            self.flag,
            self.name,
            default=default,
            envvar=self.env,
            show_envvar=True,
            show_default=default not in (None, (), False),
            metavar=self.metavar,
            help=self.help,
            **extra,
        )


OPTIONS = (
    Option("--host", text, "127.0.0.1", "Interface to listen on.", "HOST"),
    Option("--port", int_in(1, 65535), 8000, "TCP port to listen on.", "PORT"),
    Option("--db", text, "sse_events.db", "SQLite journal file.", "PATH"),
    Option("--window-ms", int_in(10, 60_000), 500, "Batching window in milliseconds.", "MS"),
    Option("--max-batch", int_in(1, 10_000), 10, "Members at which a batch flushes at once.", "N"),
    Option(
        "--token",
        secret,
        None,
        "Bearer token required to publish (POST /events, PATCH /workers).",
        "TOKEN",
    ),
    Option(
        "--subscribe-token",
        secret,
        None,
        "Bearer token (or ?token=) required to read streams.",
        "TOKEN",
    ),
    Option(
        "--jwt-secret",
        secret,
        None,
        "Accept JWTs signed with this HMAC secret (HS256/384/512, 32+ bytes); their "
        "sse_batcher claim grants channels.",
        "SECRET",
    ),
    Option(
        "--jwt-public-key",
        text,
        None,
        "Accept JWTs signed with the private key of this PEM public key (RSA, EC, Ed25519).",
        "FILE",
    ),
    Option("--jwt-audience", text, None, "JWTs must carry this aud.", "AUD"),
    Option("--jwt-issuer", text, None, "JWTs must carry this iss.", "ISS"),
    Option("--cors-origin", origin, (), "Allowed CORS origin; repeatable.", "ORIGIN", repeat=True),
    Option("--max-subscribers", int_in(1, 1_000_000), 10_000, "Open streams allowed.", "N"),
    Option("--heartbeat", positive_float, 15.0, "Seconds between idle heartbeats.", "SECONDS"),
    Option(
        "--send-timeout",
        positive_float,
        30.0,
        "Seconds a client may leave sent data unread (or unacknowledged) before the "
        "kernel drops its connection.",
        "SECONDS",
    ),
    Option("--retention-days", positive_float, 10.0, "Days the journal keeps events.", "DAYS"),
    Option("--redis-url", redis_url, None, "Use a Redis Stream journal instead of SQLite.", "URL"),
    Option("--redis-prefix", text, "sse_batcher", "Key prefix in Redis.", "PREFIX"),
    Option("--archive", text, None, "Also archive events as JSON lines under DIR.", "DIR"),
    Option(
        "--durable-ingest",
        boolean,
        False,
        "Answer POST /events only once the events are committed.",
        switch=True,
    ),
    Option(
        "--dead-letter",
        text,
        None,
        "JSON-lines file for batches the journal refused; re-appended when it recovers "
        "and at the next start (default: beside --db, or <redis-prefix>-dead-letter.jsonl).",
        "PATH",
    ),
    Option("--log-level", log_level, "info", f"One of {', '.join(LOG_LEVELS)}.", "LEVEL"),
    Option(
        "--workers",
        int_in(1, 64),
        1,
        "Processes serving one socket and one journal (SQLite file or Redis); "
        "each runs the whole service.",
        "N",
    ),
)


def server_options(**defaults: Any) -> Callable[[F], F]:
    """Decorate a click command with every ``serve`` option.

    Args:
        defaults: per-command defaults by field name (``demo`` logs less and uses a
            temporary database unless ``--db`` is given).
    """

    def decorate(command: F) -> F:
        for option in reversed(OPTIONS):
            command = option.decorator(defaults.get(option.name, option.default))(command)
        return command

    return decorate


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """The process around the service: where uvicorn listens and how it logs."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    send_timeout: float = 30.0
    workers: int = 1
    service: ServiceSettings = field(default_factory=ServiceSettings)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ServerSettings:
        """Route each option's value to its field (the server's or the service's)."""
        own = {f.name for f in fields(cls)} - {"service"}
        service_fields = {f.name for f in fields(ServiceSettings)}
        for name in params:
            if name not in own and name not in service_fields:
                raise TypeError(f"option {name!r} has no settings field")
        return cls(
            **{name: params[name] for name in own if name in params},
            service=ServiceSettings(
                **{name: params[name] for name in service_fields if name in params}
            ),
        )

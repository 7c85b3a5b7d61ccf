"""uvicorn's logging with credentials taken out of the access log.

A browser may pass its token as ``?token=`` (an ``EventSource`` cannot set headers),
and uvicorn's access log prints every request's path with its query: the token
would be in every log line and every log shipper. The access log's records pass
through :class:`RedactTokens` first, in the server and in each ``--workers`` child
(the filter is named in the logging configuration, which children rebuild).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

__all__ = ["RedactTokens", "log_config"]

_TOKEN = re.compile(r"([?&]token=)[^&#\s]*", re.IGNORECASE)
REDACTED = r"\1[redacted]"


class RedactTokens(logging.Filter):
    """Replaces the value of every ``token=`` query parameter in a record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(
                _TOKEN.sub(REDACTED, a) if isinstance(a, str) and "token=" in a.lower() else a
                for a in args
            )
        elif isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = _TOKEN.sub(REDACTED, record.msg)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with :class:`RedactTokens` on both logs."""
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactTokens"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    return config

"""JSON logs, one object per line, with the component, (when set) the request id and, inside a traced
span, its `trace_id` and `span_id` (so a log search leads to the trace and back).

No line carries a credential: query parameters named like tokens, passwords or secrets, bearer
credentials and anything shaped like a JWT are replaced by `[redacted]` in the finished line,
whoever logged it (our access log, aiohttp, a library's exception text).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time

from .tracing import current_ids

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# `token=`, `access_token=`, `password=`… up to the next separator (of a query string, or of the JSON text).
_SECRET_PARAM = re.compile(r"(?i)(\b[\w.-]*(?:token|ticket|password|passwd|secret)=)[^&;\s\"'\\#]+")
_BEARER = re.compile(r"(?i)(\bbearer\s+)[\w.~+/=-]+")
_JWT = re.compile(r"\beyJ[\w-]{2,}\.[\w-]{2,}\.[\w-]+")


# What each pattern needs to find in ASCII text, lower-cased: most lines have none of it, and the patterns (each
# tried at every word of the line) cost more than the rest of the line's formatting.
_SECRET_NAMES = ("token=", "ticket=", "password=", "passwd=", "secret=")


def redact(text: str) -> str:
    """`text` without the credentials it may carry (query tokens, bearer credentials, JWTs)."""
    if not text.isascii():  # case-insensitive matching also folds a few non-ASCII letters: let the patterns judge
        return _redact(text)
    lower = text.lower()
    if "=" in text and any(name in lower for name in _SECRET_NAMES):
        text = _SECRET_PARAM.sub(r"\1[redacted]", text)
    if "bearer" in lower:
        text = _BEARER.sub(r"\1[redacted]", text)
    return _JWT.sub("[redacted]", text) if "eyJ" in text else text


def _redact(text: str) -> str:
    text = _SECRET_PARAM.sub(r"\1[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _JWT.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component
        # The last second formatted, and how: a busy process logs many lines per second (one tuple, so that
        # threads formatting at once never pair a second with another's text).
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached, stamp = self._second
        if second != cached:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, stamp)
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id.get():
            entry["request_id"] = rid
        if ids := current_ids():
            entry["trace_id"], entry["span_id"] = ids
        # Structured fields passed with `extra={...}`.
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def configure_logging(component: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

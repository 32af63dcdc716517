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


def redact(text: str) -> str:
    """`text` without the credentials it may carry (query tokens, bearer credentials, JWTs)."""
    text = _SECRET_PARAM.sub(r"\1[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _JWT.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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

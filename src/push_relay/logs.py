"""Logging set-up and the keyed token hash that keeps device tokens out of logs."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")

# Fields that a push log line carries as `extra`; the JSON formatter emits them as keys.
PUSH_FIELDS = (
    "push_type",
    "app",
    "outcome",
    "reason",
    "upstream_status",
    "duration_ms",
    "session",
    "token_hash",
    "detail",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in PUSH_FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-01-31 12:00:00,123 INFO logger: message`, with the date formatted once a second
    (strftime per line is a measurable part of the per-push cost)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
        return f"{self._stamp},{int(record.msecs):03d}"


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would print every request a second time
    logging.getLogger("uvicorn.access").disabled = True


class TokenHasher:
    """Keyed hash of device tokens: correlates pushes to one device without revealing it.

    With no configured key, a random per-process key is used; configure `[server]
    log_hash_key` so hashes stay comparable across restarts and workers.
    """

    def __init__(self, key: str | None = None) -> None:
        self._key = key.encode() if key else os.urandom(32)

    def __call__(self, token: str) -> str:
        return hmac.digest(self._key, token.encode(), hashlib.sha256)[:8].hex()

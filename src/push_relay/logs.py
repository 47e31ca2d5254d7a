"""Logging set-up and the keyed token hash that keeps device tokens out of logs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
MAX_VALUE_CHARS = 64  # what a request-derived value may take of a log line

# Everything `str.splitlines` (and so many log tools) treats as the end of a line.
_LINE_BREAKS = {c: f"\\x{c:02x}" for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85)}
_LINE_BREAKS |= {0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`value` fit for a text log line: control characters, non-ASCII, `\\` and `"` escaped
    (`\\x0a`, `\\u2028`), then cut to `limit` characters, never inside an escape.

    Whatever a request holds, it cannot start a line of its own or forge a field.
    """
    if value.isascii() and value.isprintable() and "\\" not in value and '"' not in value:
        return value[:limit]  # the common case: three C-level scans, no copy when short
    out: list[str] = []
    size = 0
    for char in value:
        code = ord(char)
        if 0x20 <= code < 0x7F and char not in '\\"':
            piece = char
        elif code < 0x100:
            piece = f"\\x{code:02x}"
        elif code < 0x10000:
            piece = f"\\u{code:04x}"
        else:
            piece = f"\\U{code:08x}"
        size += len(piece)
        if size > limit:
            break
        out.append(piece)
    return "".join(out)


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
        # ASCII only: U+2028, U+2029 and U+0085 would otherwise end the line for many readers
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """`2026-01-31 12:00:00,123 INFO logger: message`, with the date formatted once a second
    (strftime per line is a measurable part of the per-push cost)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # a second wall behind `escape`: no message, whatever it quotes, breaks the line
        # (a traceback is added after this, on lines of its own, as usual)
        line = super().formatMessage(record)
        return line if line.isprintable() else line.translate(_LINE_BREAKS)

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
        return f"{self._stamp},{int((created - second) * 1000):03d}"

    def line(self, levelname: str, name: str, message: str) -> str:
        """What `format` makes of a record without exception info, logged now."""
        return f"{self._time(time.time())} {levelname} {name}: {message}"


class LoopBatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines logged during one event-loop iteration with one write.

    Under load many pushes finish in the same iteration; a write and flush per line was a
    measurable share of the per-push cost. Warnings and errors, and lines logged outside an
    event loop, are written at once; `logging.shutdown` flushes what is left at exit.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or not self._schedule():
            self.flush()

    def write_line(self, levelno: int, line: str) -> None:
        """Queue an already formatted line, as `emit` does with a record's."""
        self._lines.append(line)
        if levelno >= logging.WARNING or not self._schedule():
            self.flush()

    def _schedule(self) -> bool:
        if self._scheduled:
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        loop.call_soon(self.flush)
        self._scheduled = True
        return True

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # a closed or broken stderr must not break the relay
            pass


_structured = False
_root = logging.getLogger()


def structured() -> bool:
    """True when log lines are JSON, so callers attach their fields as `extra`."""
    return _structured


def direct_text_handler(logger: logging.Logger) -> tuple[LoopBatchingHandler, TextFormatter] | None:
    """The handler a line of `logger` ends up in, when `setup` installed the only one (text).

    Lets the per-push line skip the LogRecord machinery: a measurable share of the relay's
    CPU per push. Anything else attached (a test's log capture, filters) takes the normal path.
    """
    handlers = _root.handlers
    if len(handlers) != 1 or logger.handlers or logger.filters or not logger.propagate:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if type(handler) is not LoopBatchingHandler or type(formatter) is not TextFormatter:
        return None
    if handler.filters or _root.filters:
        return None
    return handler, formatter


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr in the chosen format."""
    global _structured
    _structured = fmt == "json"
    # the relay is one thread per process: don't look these up for every record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopBatchingHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # HPACK codecs log every header at debug level: bearer tokens, JWTs and device-token paths
    for name in ("hpack", "h2", "jh2"):
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
    # uvicorn's access log would print every request a second time
    logging.getLogger("uvicorn.access").disabled = True


class KeyedDigest:
    """Keyed BLAKE2b of a string: stands for a token or an address without revealing it.

    BLAKE2b with a key spends a whole compression on the key block; the keyed state is built
    once and copied per value, which halves the cost of each hash.
    """

    def __init__(self, key: bytes, digest_size: int = 16) -> None:
        self.key = key
        self._keyed = hashlib.blake2b(key=key[:64], digest_size=digest_size)

    def __call__(self, value: str) -> bytes:
        h = self._keyed.copy()
        h.update(value.encode())
        return h.digest()


class TokenHasher:
    """Keyed hash of device tokens: correlates pushes to one device without revealing it.

    The hash is keyed BLAKE2b (a MAC by design, three times cheaper than HMAC-SHA256 here),
    8 bytes in hex, keyed with the SHA-256 of `[server] log_hash_key`. With no configured key,
    a random per-process key is used; configure one so hashes stay comparable across
    restarts and workers, and so an operator can compute the hash of a token they know.
    """

    def __init__(self, key: str | None = None) -> None:
        secret = hashlib.sha256(key.encode()).digest() if key else os.urandom(32)
        self._digest = KeyedDigest(secret, digest_size=8)

    def __call__(self, token: str) -> str:
        return self._digest(token).hex()

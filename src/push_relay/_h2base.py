"""What the HTTP/2 client's modules share: its errors and its response type."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "H2ConnectionError",
    "H2Error",
    "H2Response",
    "H2StreamResetError",
    "H2TimeoutError",
    "NotSent",
]


@dataclass(frozen=True, slots=True)
class H2Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class H2Error(Exception):
    """Base of the HTTP/2 client's errors."""


class H2ConnectionError(H2Error):
    """Could not connect, or the connection died while this request was on the wire."""


class H2TimeoutError(H2Error):
    """The request's own timeout passed; only its stream was reset."""


class H2StreamResetError(H2Error):
    """The server reset this request's stream."""


class NotSent(Exception):  # a signal to retry, not an error for callers
    """The request never reached the server: the client retries it on a new connection."""

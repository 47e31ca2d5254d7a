"""The HTTP/2 client's errors and its response type (re-exported by `push_relay.http2`).

H2Error
├── H2ConnectionError       could not connect, or the connection died while this request was
│                           on the wire (requests that never reached the wire are retried)
├── H2TimeoutError          this request's timeout passed; only its stream was reset
├── H2StreamResetError      the server reset this request's stream
├── H2ResponseTooLargeError the response body passed the bound; only its stream was reset
└── H2InvalidHeaderError    a request field is malformed (RFC 9113 §8.2.1); nothing was sent

`NotSent` and `MaybeSent` are signals between the connection and the client, never raised to
callers.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class H2ResponseTooLargeError(H2Error):
    """The response body passed the client's bound; the client reset the stream."""


class H2InvalidHeaderError(H2Error):
    """A request header field is malformed (RFC 9113 §8.2.1); no byte of it was sent."""


class NotSent(Exception):  # a signal to retry, not an error for callers
    """The request never reached the server: the client retries it on a new connection."""


class MaybeSent(NotSent):
    """On the wire when the server went away without answering: at its idle close, after its
    GOAWAY, or with a GOAWAY carrying an error.

    The server most likely never handed the request on; the client sends it once more (a
    duplicate push is harmless, a lost one is not) and raises `error` if that fails too.
    """

    def __init__(self, error: H2ConnectionError) -> None:
        super().__init__()
        self.error = error

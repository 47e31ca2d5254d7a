"""What the HTTP/2 client builds on: the `jh2` state machine set up for a client, and the
client's errors.

`jh2` is an API-compatible fork of `h2` with a compiled HPACK codec: on one connection with
256 concurrent streams against nginx it costs about 30 % less CPU per request than `h2`
(bench/h2_clients.py). It ships no type information, hence the ignores below.
"""

from __future__ import annotations

from typing import Any

import jh2.config as h2_config  # type: ignore[import-untyped]
import jh2.connection as h2_connection  # type: ignore[import-untyped]
import jh2.errors as h2_errors  # type: ignore[import-untyped]
import jh2.events as h2_events  # type: ignore[import-untyped]
import jh2.exceptions as h2_exceptions  # type: ignore[import-untyped]
import jh2.settings as h2_settings  # type: ignore[import-untyped]

__all__ = [
    "CANCEL",
    "NO_ERROR",
    "RECEIVE_WINDOW",
    "REFUSED_STREAM",
    "H2ConnectionError",
    "H2Error",
    "H2State",
    "H2StreamResetError",
    "H2TimeoutError",
    "NotSent",
    "h2_events",
    "h2_exceptions",
    "h2_settings",
]

RECEIVE_WINDOW = 16 * 1024 * 1024  # our receive window: a response never waits for us
NO_ERROR = h2_errors.ErrorCodes.NO_ERROR
REFUSED_STREAM = h2_errors.ErrorCodes.REFUSED_STREAM
CANCEL = h2_errors.ErrorCodes.CANCEL
_RECV_GOAWAY = h2_connection.ConnectionInputs.RECV_GOAWAY
_CLIENT_OPEN = h2_connection.ConnectionState.CLIENT_OPEN

_CONFIG = h2_config.H2Configuration(
    client_side=True,
    header_encoding="utf-8",
    # Header validation is a large part of h2's cost per request. Our requests are built
    # correctly (lower-case names), and of a response we only read :status and a few headers.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
)


class _GracefulClose(h2_connection.H2ConnectionStateMachine):  # type: ignore[misc]
    """Stays open when a GOAWAY arrives, so the streams it names can still complete.

    h2 refuses every frame after a GOAWAY (python-hyper/h2#1181), also the rest of the very
    read that carried it, but RFC 9113 §6.8 lets streams up to its last_stream_id finish.
    `_h2conn.H2Connection` opens no new stream after a GOAWAY and closes once those are done.
    """

    def process_input(self, input_: Any) -> Any:
        if input_ is _RECV_GOAWAY and self.state is _CLIENT_OPEN:
            return []
        return super().process_input(input_)


class H2State(h2_connection.H2Connection):  # type: ignore[misc]  # untyped base
    """h2's state machine, without its O(open streams) count on every new stream.

    h2 counts open streams by scanning all of them (and pruning closed ones) each time a stream
    is opened; with hundreds in flight that scan dominated the client's CPU. The peer's limit
    is enforced by `_h2conn.H2Connection` itself, so here the scan only runs to prune, once the
    table has doubled, which keeps it O(1) per request.
    """

    prune_at = 256

    def __init__(self) -> None:
        super().__init__(_CONFIG)
        self.state_machine = _GracefulClose()

    @property
    def open_outbound_streams(self) -> int:
        if len(self.streams) >= self.prune_at:
            self.prune_at = max(256, 2 * super().open_outbound_streams)
        return 0  # never above the peer's limit: the connection waits for a free stream first


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

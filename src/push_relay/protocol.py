"""The server protocol: uvicorn's httptools protocol with deadlines and limits for what a
client sends before the app sees a request (contract §12 "Front-end limits").

This module is the only code that touches uvicorn's internals; `pyproject.toml` pins uvicorn
to the releases its tests prove.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from push_relay.address import Listener
from push_relay.config import ServerConfig


def _closing_answer(status: bytes, text: bytes, cors_any: bool = False) -> bytes:
    # with `cors_origins = ["*"]` every answer grants any origin (contract §10), these too; a
    # restricted list needs the request's Origin, which a refused head may never have sent
    cors = b"access-control-allow-origin: *\r\n" if cors_any else b""
    return (
        b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\n%s"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, cors, len(text), text)
    )


class _Answers:
    """The answers the protocol writes itself, before or instead of the app."""

    def __init__(self, cors_any: bool) -> None:
        self.header_timeout = _closing_answer(
            b"408 Request Timeout", b"Request header timed out", cors_any
        )
        self.body_timeout = _closing_answer(
            b"408 Request Timeout", b"Request body timed out", cors_any
        )
        self.head_too_large = _closing_answer(
            b"431 Request Header Fields Too Large", b"Request header fields too large", cors_any
        )
        self.too_many_connections = _closing_answer(
            b"503 Service Unavailable", b"Too many connections", cors_any
        )


_ANSWERS = {cors_any: _Answers(cors_any) for cors_any in (True, False)}


class CorsPolicy(Protocol):
    """Whether every origin may read an answer: the app's, which a reload may change."""

    cors_any: bool


class _AnyOrigin:
    cors_any = True


LINGER_SECS = 2.0  # how long a refused client may go on sending before it is cut off


class SlowClientProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus deadlines and size limits for a request's head.

    uvicorn only times out idle keep-alive connections; a client that opens a connection and
    never sends (or trickles) its headers or body would hold it for ever. The header clock
    starts when the connection opens or a request's first byte arrives; when the headers are
    complete the body clock starts; when the body is complete the request is the app's.
    One timer serves both phases (it is moved lazily), so a request that arrives in one
    packet costs one timer, not two plus a timeout in the app.

    httptools buffers a header line until it is complete, so the head is bounded before the
    parser sees it: while a head is being read, at most `max_header_bytes` of it are fed, and
    a head not complete by then is answered 431 (as is field number `max_headers` + 1).
    A connection accepted beyond `max_connections` is answered 503 at once; uvicorn's own
    `limit_concurrency` would refuse every request while over the limit instead (the admin
    listener's too), with a warning line per refusal. This class is the only code that
    touches uvicorn's internals.
    """

    header_timeout = 10.0
    body_timeout = 10.0
    max_header_bytes = 16_384
    max_headers = 100
    max_connections = 10_000
    admin: Listener | None = None  # its connections are not counted against the limit
    cors: CorsPolicy = _AnyOrigin()
    # open admin connections; `slow_client_protocol` gives each configured class its own
    admin_open: ClassVar[list[int]] = [0]
    _on_admin = False
    _idle_grace = 0.0  # set when the worker retires (see `shutdown`)
    _draining = False
    _timer: asyncio.TimerHandle | None = None
    _deadline = 0.0
    # what a timed-out request is told, an `_Answers` field; empty: nothing begun, just close
    _answer = ""
    _head_room = 0  # head bytes the current request may still send; -1: its head is complete
    _completed_in_feed = False  # a request ended inside the read being parsed
    _unmetered = False  # the current head began in a read not metered as a head
    _refused = False
    _late_answer = b""  # a refusal waiting for the answers owed to earlier requests

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_room = self.max_header_bytes
        if self.admin is not None and self.admin.accepted(self.server):
            self._on_admin = True  # never refused, and not counted against the public limit
            self.admin_open[0] += 1
        elif len(self.connections) - self.admin_open[0] > self.max_connections:
            self._close_with(self._answers.too_many_connections)
            return
        self._arm(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        room = self._head_room
        if self._refused:
            return
        self._completed_in_feed = False
        if room < 0 or len(data) <= room:  # a body, or a head still within its limit
            if room >= 0:
                self._head_room = room - len(data)
            super().data_received(data)
            return
        # this read would take the head past its limit: feed only what the head may use
        self._head_room = 0
        if room:
            super().data_received(data[:room])
        if self._refused or self.transport.is_closing():
            return
        if self._head_room == 0:  # the head did not end within its limit
            self._refuse(self._answers.head_too_large)
            return
        self.data_received(data[room:])  # the head ended: the rest is its body and beyond

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # pipelined behind the previous request in one read: `data_received` did not meter
        # the start of this head, so `on_headers_complete` measures it from the parser
        self._unmetered = self._completed_in_feed
        self._answer = "header_timeout"
        if self._timer is None:
            self._arm(self.header_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.max_headers:  # uvicorn collects them in `headers`
            self._refuse(self._answers.head_too_large)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._unmetered and self._parsed_head_size() > self.max_header_bytes:
            self._refuse(self._answers.head_too_large)
            return
        self._head_room = -1
        self._answer = "body_timeout"
        self._deadline = self.loop.time() + self.body_timeout
        if self._timer is None or self._timer.when() > self._deadline:
            self._disarm()
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        super().on_headers_complete()
        if self._draining:
            self.cycle.keep_alive = False  # the answer says `Connection: close`

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._completed_in_feed = True
        self._head_room = self.max_header_bytes
        self._answer = ""
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        if self._late_answer and not self._answers_owed():
            self._close_with(self._late_answer)

    def _parsed_head_size(self) -> int:
        """A lower bound of the head's size: `GET <url> HTTP/1.1` and `name:value` lines."""
        size = len(self.url) + 16
        for name, value in self.headers:
            size += len(name) + len(value) + 3
        return size

    @property
    def _answers(self) -> _Answers:
        """The answers as the app's CORS setting now says (read only when answering)."""
        return _ANSWERS[self.cors.cors_any]

    def _refuse(self, answer: bytes) -> None:
        """Answer without the app and close; the parser's remaining callbacks are ignored.

        Requests pipelined before this one are answered first, in order."""
        self._refused = True
        self._disarm()
        if self._answers_owed():
            self._late_answer = answer
        else:
            self._close_with(answer)

    def _answers_owed(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _close_with(self, answer: bytes) -> None:
        """Answer, then close once the client has read it: closing a socket with unread
        input resets the connection, and the client could lose the answer. So the write side
        is shut, and what still comes in is dropped until the client closes or
        `LINGER_SECS` pass (a lingering close)."""
        self._refused = True
        if self.transport.is_closing():
            return
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._disarm()
        self._timer = self.loop.call_later(LINGER_SECS, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._on_admin:
            self.admin_open[0] -= 1
            self._on_admin = False
        super().connection_lost(exc)

    def keep_idle_for(self, seconds: float) -> None:
        """Let `shutdown` give a connection between two requests `seconds` to bring one."""
        self._idle_grace = seconds

    def shutdown(self) -> None:
        """Drain this connection; when a successor serves, without resetting a request the
        client is sending.

        uvicorn closes a connection between two requests at once, so a client that has just
        sent its next request on it (an HTTP/1.1 race) sees a reset, not an answer. That is
        fine when the relay stops, not when a reload replaces this worker: then the client
        gets `_idle_grace` seconds for that request, whose answer says `Connection: close`;
        a connection idle for that long is closed, as the keep-alive timeout would.
        """
        if not self._idle_grace:
            super().shutdown()
            return
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self._idle_grace, self.timeout_keep_alive_handler
            )
        else:
            self.cycle.keep_alive = False

    def _arm(self, timeout: float) -> None:
        self._deadline = self.loop.time() + timeout
        self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        remaining = self._deadline - self.loop.time()
        if remaining > 0:  # the body phase moved the deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._timer = None
        if self.transport.is_closing():
            return
        if self._answer:
            self.transport.write(getattr(self._answers, self._answer))
        self.transport.close()


def slow_client_protocol(
    server: ServerConfig, admin: Listener | None, cors: CorsPolicy
) -> type[SlowClientProtocol]:
    return type(
        "SlowClientProtocol",
        (SlowClientProtocol,),
        {
            "header_timeout": server.header_timeout_secs,
            "body_timeout": server.body_timeout_secs,
            "max_header_bytes": server.max_header_bytes,
            "max_headers": server.max_headers,
            "max_connections": server.max_connections,
            "admin": admin,
            "admin_open": [0],
            "cors": cors,
        },
    )

"""One client HTTP/2 connection as an asyncio protocol: the engine under `push_relay.http2`.

Streams are futures keyed by stream id; the protocol feeds received bytes to the HTTP/2 state
machine (`_h2base.H2State`) and settles the futures. Everything here runs on the event loop,
so no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from push_relay._h2base import (
    CANCEL,
    NO_ERROR,
    RECEIVE_WINDOW,
    REFUSED_STREAM,
    H2ConnectionError,
    H2State,
    H2StreamResetError,
    H2TimeoutError,
    NotSent,
    h2_events,
    h2_exceptions,
    h2_settings,
)


class _Stream:
    __slots__ = ("body", "chunks", "future", "headers", "sent", "status", "timer")

    def __init__(self, future: asyncio.Future[tuple[int, dict[str, str], bytes]]) -> None:
        self.future = future
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.body: bytes | None = None  # request body still (partly) unsent
        self.sent = 0
        self.timer: asyncio.TimerHandle | None = None


class H2Connection(asyncio.Protocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        scheme: str,
        authority: str,
        ping_interval: float,
    ) -> None:
        self.loop = loop
        self.h2 = H2State()
        self.ready: asyncio.Future[None] = loop.create_future()  # peer's SETTINGS arrived
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.pseudo = [(":scheme", scheme), (":authority", authority)]
        self.streams: dict[int, _Stream] = {}
        self.blocked: set[int] = set()  # streams whose body waits for flow-control window
        self.waiters: deque[asyncio.Future[None]] = deque()  # requests waiting for a stream
        self.reserved = 0  # stream slots handed to woken waiters that have not used them yet
        self.limit = 100  # the peer's SETTINGS_MAX_CONCURRENT_STREAMS, once known
        self.closing = False
        self.goaway_id: int | None = None
        self.wire_id = 0  # highest stream id handed to the transport
        self.flush_pending = False
        self.ping_interval = ping_interval
        self.last_seen = loop.time()
        self.ping_out = False
        self.ping_timer: asyncio.TimerHandle | None = None
        self.dispatch: dict[type[h2_events.Event], Callable[[Any], None]] = {
            h2_events.ResponseReceived: self._on_response,
            h2_events.DataReceived: self._on_data,
            h2_events.StreamEnded: self._on_end,
            h2_events.StreamReset: self._on_reset,
            h2_events.WindowUpdated: self._on_window,
            h2_events.RemoteSettingsChanged: self._on_settings,
            h2_events.ConnectionTerminated: self._on_goaway,
            h2_events.PingAckReceived: self._on_ping_ack,
        }

    @property
    def usable(self) -> bool:
        return not self.closing and self.goaway_id is None

    # -- requests ---------------------------------------------------------------------------

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, deadline: float
    ) -> tuple[int, dict[str, str], bytes]:
        if not self.usable:
            raise NotSent
        if self.waiters or len(self.streams) + self.reserved >= self.limit:
            await self._wait_for_stream(deadline)
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(
                stream_id, [(":method", method), *self.pseudo, (":path", path), *headers], not body
            )
        except h2_exceptions.ProtocolError:  # stream ids used up, or the connection is closed
            self.goaway_id = self.wire_id
            raise NotSent from None
        future: asyncio.Future[tuple[int, dict[str, str], bytes]] = self.loop.create_future()
        stream = self.streams[stream_id] = _Stream(future)
        if body:
            stream.body = body
            self._send_body(stream_id, stream)
        stream.timer = self.loop.call_at(deadline, self._on_timeout, stream_id)
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)
        try:
            return await future
        except asyncio.CancelledError:
            if self.streams.get(stream_id) is stream:
                self._on_timeout(stream_id)  # the caller gave up: reset the stream all the same
            raise

    async def _wait_for_stream(self, deadline: float) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(waiter)
        timer = self.loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled() or waiter.exception() is not None:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            else:  # woken, then cancelled before taking the stream: pass it on
                self.reserved -= 1
                self._release()
            raise
        finally:
            timer.cancel()
        self.reserved -= 1
        if not self.usable:
            raise NotSent

    def _release(self) -> None:
        """A stream slot became free: wake the next waiter, or finish a draining connection."""
        while self.waiters and len(self.streams) + self.reserved < self.limit:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.reserved += 1
                waiter.set_result(None)
        if self.goaway_id is not None and not self.streams and not self.closing:
            self._close_transport()

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        body = stream.body
        assert body is not None
        sent = stream.sent
        while sent < len(body):
            size = min(
                self.h2.local_flow_control_window(stream_id),
                self.h2.max_outbound_frame_size,
                len(body) - sent,
            )
            if size <= 0:
                stream.sent = sent
                self.blocked.add(stream_id)
                return
            self.h2.send_data(stream_id, body[sent : sent + size], sent + size == len(body))
            sent += size
        stream.body = None
        self.blocked.discard(stream_id)

    def _on_timeout(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.blocked.discard(stream_id)
        if not stream.future.done():
            stream.future.set_exception(H2TimeoutError(f"no response on stream {stream_id}"))
        if not self.closing:
            with contextlib.suppress(h2_exceptions.ProtocolError):  # already closed in h2
                self.h2.reset_stream(stream_id, CANCEL)
            self.flush()
        self._release()

    def flush(self) -> None:
        """Hand everything h2 has queued to the transport in one write."""
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closing:
            self.transport.write(data)
        self.wire_id = self.h2.highest_outbound_stream_id

    # -- protocol callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = transport = cast(asyncio.Transport, transport)
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() != "h2":
            self._fail_ready(H2ConnectionError("the server did not agree to HTTP/2"))
            transport.abort()
            return
        self.h2.initiate_connection()
        self.h2.update_settings({h2_settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.update_settings({h2_settings.SettingCodes.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW})
        self.h2.increment_flow_control_window(RECEIVE_WINDOW - 65535)
        self.flush()
        self.ping_timer = self.loop.call_later(self.ping_interval, self._on_ping_timer)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        try:
            events = self.h2.receive_data(data)
            dispatch = self.dispatch
            for event in events:
                handler = dispatch.get(type(event))
                if handler is not None:
                    handler(event)
        except (h2_exceptions.ProtocolError, ValueError) as err:  # also bad UTF-8, bad :status
            self._fail_all(H2ConnectionError(f"HTTP/2 protocol error: {err}"))
            self.flush()
            self.abort()
            return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.ready.done():
            self._fail_ready(H2ConnectionError("connection closed during the handshake"))
        self._fail_all(H2ConnectionError("connection lost"))
        if self.ping_timer is not None:
            self.ping_timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)

    # -- h2 events --------------------------------------------------------------------------

    def _on_response(self, event: h2_events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        headers: list[tuple[str, str]] = event.headers or []  # str: see header_encoding
        for name, value in headers:
            if name == ":status":
                stream.status = int(value)
            else:
                stream.headers[name] = value

    def _on_data(self, event: h2_events.DataReceived) -> None:
        stream_id: int = event.stream_id
        stream = self.streams.get(stream_id)
        if stream is not None and event.data:
            stream.chunks.append(event.data)
        self.h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)

    def _on_end(self, event: h2_events.StreamEnded) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is None:
            return
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.body is not None:
            self.blocked.discard(event.stream_id)
        if not stream.future.done():
            stream.future.set_result((stream.status, stream.headers, b"".join(stream.chunks)))
        self._release()

    def _on_reset(self, event: h2_events.StreamReset) -> None:
        stream_id: int = event.stream_id
        if event.error_code == REFUSED_STREAM:  # RFC 9113 §8.7: the server did not process it
            self._fail(stream_id, NotSent())
        else:
            code = _code_name(event.error_code)
            self._fail(stream_id, H2StreamResetError(f"stream {stream_id} reset: {code}"))
        self._release()

    def _on_window(self, event: h2_events.WindowUpdated) -> None:
        for stream_id in list(self.blocked):
            stream = self.streams.get(stream_id)
            if stream is None:
                self.blocked.discard(stream_id)
            else:
                self._send_body(stream_id, stream)

    def _on_settings(self, event: h2_events.RemoteSettingsChanged) -> None:
        self.limit = self.h2.remote_settings.max_concurrent_streams
        if not self.ready.done():
            self.ready.set_result(None)
        self._release()

    def _on_goaway(self, event: h2_events.ConnectionTerminated) -> None:
        last = event.last_stream_id or 0
        self.goaway_id = last if self.goaway_id is None else min(last, self.goaway_id)
        for stream_id in [s for s in self.streams if s > last]:
            self._fail(stream_id, NotSent())
        self._fail_waiters()
        if event.error_code == NO_ERROR and self.streams:
            return  # graceful: the streams it names may still complete (_GracefulClose)
        code = _code_name(event.error_code)
        self._fail_all(H2ConnectionError(f"server closed the connection (GOAWAY {code})"))
        self._close_transport()

    def _on_ping_ack(self, event: h2_events.PingAckReceived) -> None:
        self.ping_out = False

    # -- keep-alive and closing -------------------------------------------------------------

    def _on_ping_timer(self) -> None:
        if self.closing:
            return
        idle = self.loop.time() - self.last_seen
        delay = self.ping_interval - idle
        if delay <= 0:
            if self.ping_out:  # a whole interval without an answer: the peer is gone
                self._fail_all(H2ConnectionError("the server stopped answering PINGs"))
                self.abort()
                return
            self.ping_out = True
            self.h2.ping(b"pushrely")
            self.flush()
            delay = self.ping_interval
        self.ping_timer = self.loop.call_later(delay, self._on_ping_timer)

    async def close(self) -> None:
        if not self.closing and self.transport is not None:
            self._fail_all(H2ConnectionError("the client was closed"))
            with contextlib.suppress(h2_exceptions.ProtocolError):  # already closed in h2
                self.h2.close_connection()
            self._close_transport()
        if self.transport is not None and not self.lost.done():
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self.lost)
            except TimeoutError:
                self.transport.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _close_transport(self) -> None:
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _fail_ready(self, error: H2ConnectionError) -> None:
        self.ready.set_exception(error)
        self.ready.exception()  # the connecting side may be gone already; never warn about it

    def _fail(self, stream_id: int, error: Exception) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.blocked.discard(stream_id)
        if stream.timer is not None:
            stream.timer.cancel()
        if not stream.future.done():
            stream.future.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        """Streams on the wire fail with `error`; those never flushed are retried."""
        for stream_id in list(self.streams):
            self._fail(stream_id, error if stream_id <= self.wire_id else NotSent())
        self._fail_waiters()

    def _fail_waiters(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(NotSent())


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(H2TimeoutError("no free stream before the request's timeout"))


def _code_name(code: object) -> str:
    return getattr(code, "name", str(code))

"""One client HTTP/2 connection as an asyncio protocol: the engine under `push_relay.http2`.

A request is a `Stream` whose future the caller awaits; no task, no coroutine per request.
Outgoing frames collect in a list written with one `transport.write` per loop iteration.
Received frames are dispatched by type (`_h2recv.Receiver`). Everything runs on the event
loop, so no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from push_relay import _h2frames as f
from push_relay._h2base import H2ConnectionError, H2Response, H2TimeoutError, NotSent
from push_relay._h2recv import Receiver, Stream


class H2Connection(Receiver):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        scheme: str,
        authority: str,
        ping_interval: float,
    ) -> None:
        super().__init__(loop)
        self.ready: asyncio.Future[None] = loop.create_future()  # peer's SETTINGS arrived
        self.lost: asyncio.Future[None] = loop.create_future()
        self.pseudo = (
            (b":scheme", scheme.encode(), False),
            (b":authority", authority.encode(), False),
        )
        self.waiters: deque[asyncio.Future[None]] = deque()  # requests waiting for a stream
        self.reserved = 0  # stream slots handed to woken waiters that have not used them yet
        self.wire_id = 0  # highest stream id handed to the transport
        self.flush_pending = False
        self.ping_interval = ping_interval
        self.last_seen = loop.time()
        self.ping_timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return not self.closing and self.goaway_id is None

    @property
    def full(self) -> bool:
        """A new request has to wait for a stream (the peer's concurrency limit)."""
        return bool(self.waiters) or len(self.streams) + self.reserved >= self.limit

    # -- requests ---------------------------------------------------------------------------

    def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, deadline: float
    ) -> Stream:
        """Open a stream for the request; the caller awaits `stream.future`."""
        if not self.usable:
            raise NotSent
        stream_id = self.next_id
        if stream_id > f.MAX_STREAM_ID:  # ids used up: the next request opens a new connection
            self.goaway_id = self.wire_id
            self.release()  # closes this one once its streams are done
            raise NotSent
        self.next_id = stream_id + 2
        codec = self.codec
        field = codec.field
        fields = [field(":method", method), *self.pseudo, field(":path", path)]
        fields += [field(name, value) for name, value in headers]
        block = codec.encode(fields)
        stream = Stream(stream_id, self.loop.create_future(), self.peer_window)
        self.streams[stream_id] = stream
        self.queue(*f.headers_frames(stream_id, block, not body, self.max_frame))
        if body:
            stream.body = body
            self.send_body(stream)
        stream.timer = self.loop.call_at(deadline, self.on_timeout, stream_id)
        return stream

    def cancel(self, stream: Stream) -> None:
        """The caller gave up waiting: reset the stream all the same."""
        if self.streams.get(stream.id) is stream:
            self.on_timeout(stream.id)

    async def wait_for_stream(self, deadline: float) -> None:
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
                self.release()
            raise
        finally:
            timer.cancel()
        self.reserved -= 1
        if not self.usable:
            raise NotSent

    def release(self) -> None:
        """A stream slot became free: wake the next waiter, or finish a draining connection."""
        while self.waiters and len(self.streams) + self.reserved < self.limit:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.reserved += 1
                waiter.set_result(None)
        if self.goaway_id is not None and not self.streams and not self.closing:
            self.close_transport()

    def complete(self, stream: Stream) -> None:
        del self.streams[stream.id]
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.body is not None:  # answered before the whole body went out: stop sending
            self.blocked.pop(stream.id, None)
            self.queue(f.rst_stream(stream.id, f.CANCEL))
        if not stream.future.done():
            body = b"".join(stream.chunks)
            stream.future.set_result(H2Response(stream.status, stream.headers, body))
        self.release()

    def on_timeout(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.blocked.pop(stream_id, None)
        if not stream.future.done():
            stream.future.set_exception(H2TimeoutError(f"no response on stream {stream_id}"))
        if not self.closing:
            self.queue(f.rst_stream(stream_id, f.CANCEL))
        self.release()

    # -- writing ----------------------------------------------------------------------------

    def queue(self, *frames: bytes) -> None:
        self.out += frames
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand everything queued to the transport in one write."""
        self.flush_pending = False
        out = self.out
        if not out:
            return
        self.out = []
        if self.transport is not None and not self.closing:
            self.transport.write(b"".join(out))
            self.wire_id = self.next_id - 2

    # -- protocol callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = transport = cast(asyncio.Transport, transport)
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() != "h2":
            self.fail_ready(H2ConnectionError("the server did not agree to HTTP/2"))
            transport.abort()
            return
        self.queue(f.PREFACE)
        self.flush()
        self.ping_timer = self.loop.call_later(self.ping_interval, self.on_ping_timer)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        try:
            self.receive(data)
        except f.FrameError as err:
            self.fail_all(H2ConnectionError(f"HTTP/2 protocol error: {err}"))
            self.queue(f.goaway(0, err.code))
            self.close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.ready.done():
            self.fail_ready(H2ConnectionError("connection closed during the handshake"))
        self.fail_all(H2ConnectionError("connection lost"))
        if self.ping_timer is not None:
            self.ping_timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)

    def on_settings_applied(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        self.release()

    def on_goaway_received(self, last_stream_id: int, code: int) -> None:
        last = last_stream_id
        self.goaway_id = last if self.goaway_id is None else min(last, self.goaway_id)
        for stream_id in [s for s in self.streams if s > last]:
            self.fail(stream_id, NotSent())
        self.fail_waiters()
        if code == f.NO_ERROR and self.streams:
            return  # graceful: the streams it names may still complete (RFC 9113 §6.8)
        name = f.ERROR_NAMES.get(code, str(code))
        self.fail_all(H2ConnectionError(f"server closed the connection (GOAWAY {name})"))
        self.close_transport()

    # -- keep-alive and closing -------------------------------------------------------------

    def on_ping_timer(self) -> None:
        if self.closing:
            return
        idle = self.loop.time() - self.last_seen
        delay = self.ping_interval - idle
        if delay <= 0:
            if self.ping_out:  # a whole interval without an answer: the peer is gone
                self.fail_all(H2ConnectionError("the server stopped answering PINGs"))
                self.abort()
                return
            self.ping_out = True
            self.queue(f.ping(b"pushrely"))
            delay = self.ping_interval
        self.ping_timer = self.loop.call_later(delay, self.on_ping_timer)

    async def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.fail_all(H2ConnectionError("the client was closed"))
            self.queue(f.goaway(0, f.NO_ERROR))
            self.close_transport()
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

    def close_transport(self) -> None:
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def fail_ready(self, error: H2ConnectionError) -> None:
        self.ready.set_exception(error)
        self.ready.exception()  # the connecting side may be gone already; never warn about it

    def fail(self, stream_id: int, error: Exception) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.blocked.pop(stream_id, None)
        if stream.timer is not None:
            stream.timer.cancel()
        if not stream.future.done():
            stream.future.set_exception(error)

    def fail_all(self, error: Exception) -> None:
        """Streams on the wire fail with `error`; those never flushed are retried."""
        for stream_id in list(self.streams):
            self.fail(stream_id, error if stream_id <= self.wire_id else NotSent())
        self.fail_waiters()

    def fail_waiters(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(NotSent())


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(H2TimeoutError("no free stream before the request's timeout"))

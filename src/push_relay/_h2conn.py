"""One client HTTP/2 connection as an asyncio protocol: the engine under `push_relay.http2`.

`H2State` (its base) keeps the streams and handles the server's frames without I/O; this
class adds the transport, the timers and the wait for a free stream. A request is a `Stream`
whose future the caller awaits: no task, no coroutine per request. Whatever changed the state
ends in `settle`, which hands queued frames to the transport with one `write` per loop
iteration, gives freed stream slots to waiting requests and closes a drained connection.
Everything runs on the event loop, so no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from push_relay import _h2frames as f
from push_relay._h2errors import H2ConnectionError, H2InvalidHeaderError, H2TimeoutError, NotSent
from push_relay._h2state import H2State
from push_relay._h2stream import Stream

# A request opened on a connection with no stream open that received nothing for this long
# may meet the server's idle close (its idle timer runs exactly then; nghttpx closes without
# GOAWAY, and servers' timers fire up to 100 ms early): if the connection then ends without a
# byte, the request is sent once more. Real idle timeouts are seconds or minutes; the bound
# only keeps a connection that just answered (a crash under load) out of the rule.
IDLE_SECS = 0.1
# Bytes the transport may buffer beyond its high-water mark while writing is paused: new
# requests wait meanwhile, so only frames answering the server add up; past this the server
# is not reading and the connection is given up.
MAX_PAUSED_GROWTH = 8 * 1024 * 1024


class H2Connection(H2State, asyncio.Protocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        scheme: str,
        authority: str,
        ping_interval: float,
        max_stream_id: int = f.MAX_STREAM_ID,
    ) -> None:
        super().__init__(loop, scheme, authority, max_stream_id)
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.waiters: deque[asyncio.Future[None]] = deque()  # requests waiting for a stream
        self.reserved = 0  # stream slots handed to woken waiters that have not used them yet
        self.flush_pending = False
        self.paused: int | None = None  # the write buffer's size when the transport paused us
        self.ping_interval = ping_interval
        self.last_seen = loop.time()
        self.after_idle = False  # requests went out after an idle spell; nothing came since
        self.ping_timer: asyncio.TimerHandle | None = None

    @property
    def full(self) -> bool:
        """A new request has to wait for a stream (the peer's limit, or a full transport)."""
        return bool(self.waiters) or not self.has_slot

    @property
    def has_slot(self) -> bool:
        """A stream may be opened now: within the peer's limit, and the transport writes."""
        return self.paused is None and len(self.streams) + self.reserved < self.limit

    # -- requests ---------------------------------------------------------------------------

    def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, deadline: float
    ) -> Stream:
        """Open a stream for the request; the caller awaits `stream.future`."""
        try:
            stream = self.open_stream(method, path, headers, body)
        except (NotSent, H2InvalidHeaderError):
            self.settle()  # the slot this request may have been woken for goes on
            raise
        stream.timer = self.loop.call_at(deadline, self.on_timeout, stream.id)
        if len(self.streams) == 1 and self.loop.time() - self.last_seen >= IDLE_SECS:
            self.after_idle = True
        self.schedule_flush()
        return stream

    def cancel(self, stream: Stream) -> None:
        """The caller gave up waiting: reset the stream all the same."""
        if self.streams.get(stream.id) is stream:
            self.on_timeout(stream.id)

    def on_timeout(self, stream_id: int) -> None:
        self.reset(stream_id, H2TimeoutError(f"no response on stream {stream_id}"))
        self.settle()

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
                self.settle()
            raise
        finally:
            timer.cancel()
        self.reserved -= 1
        if not self.usable:
            raise NotSent

    def settle(self) -> None:
        """Write what was queued (soon), wake or fail waiters, close a drained connection."""
        if self.out:
            self.schedule_flush()
        if self.waiters:
            self.release()
        if self.goaway_id is not None and not self.streams and not self.closing:
            self.close_transport()

    def schedule_flush(self) -> None:
        """Write the queued frames once, at the end of this loop iteration."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def release(self) -> None:
        """Free stream slots go to waiting requests; on a closing connection they move on."""
        if not self.usable:
            self.fail_waiters()
            return
        while self.waiters and self.has_slot:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.reserved += 1
                waiter.set_result(None)

    def fail_waiters(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(NotSent())

    # -- writing ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand everything queued to the transport in one write."""
        self.flush_pending = False
        out = self.out
        if not out:
            return
        self.out = []
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(b"".join(out))
            self.wire_id = self.next_id - 2
            paused = self.paused
            if paused is not None and transport.get_write_buffer_size() > (
                paused + MAX_PAUSED_GROWTH
            ):
                self.fail_all(H2ConnectionError("the server stopped reading"))
                self.abort()

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.paused = self.transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        self.paused = None
        self.settle()

    # -- protocol callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = transport = cast(asyncio.Transport, transport)
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() != "h2":
            self.fail_ready(H2ConnectionError("the server did not agree to HTTP/2"))
            transport.abort()
            return
        self.out.append(f.PREFACE)
        self.flush()
        self.ping_timer = self.loop.call_later(self.ping_interval, self.on_ping_timer)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        self.after_idle = False
        try:
            self.receive(data)
        except f.FrameError as err:
            self.fail_connection(err)
        self.settle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.ready.done():
            self.fail_ready(H2ConnectionError("connection closed during the handshake"))
        # Streams the server left unanswered while it was going away (after its GOAWAY or a
        # limit of 0: a graceful reload, e.g. Apache's mod_http2 closing proxied streams) or
        # at its idle close are sent once more on a new connection: a wake-up sent twice is
        # harmless, a lost one is not. Any other lost connection fails its streams.
        resend = self.after_idle or self.goaway_id is not None
        self.fail_all(H2ConnectionError("connection lost"), resend)
        self.fail_waiters()
        if self.ping_timer is not None:
            self.ping_timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)

    def fail_connection(self, err: f.FrameError) -> None:
        if err.by_peer:  # the server went away with an error: a wake-up sent twice is harmless
            self.fail_all(H2ConnectionError(str(err)), resend=True)
        else:
            self.fail_all(H2ConnectionError(f"HTTP/2 protocol error: {err}"))
            self.out.append(f.goaway(0, err.code))
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
            self.out.append(f.ping(b"pushrely"))
            self.settle()
            delay = self.ping_interval
        self.ping_timer = self.loop.call_later(delay, self.on_ping_timer)

    async def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.fail_all(H2ConnectionError("the client was closed"))
            self.fail_waiters()
            self.out.append(f.goaway(0, f.NO_ERROR))
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


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(H2TimeoutError("no free stream before the request's timeout"))

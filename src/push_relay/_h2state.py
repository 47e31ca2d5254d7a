"""What one client HTTP/2 connection knows, and how the server's frames change it.

`H2State` holds the streams, both directions' flow-control windows and the peer's settings;
`receive` parses the server's bytes (RFC 9113 §4.1), one handler per frame type, and
`open_stream` encodes a request. It does no I/O: frames to send collect in `out`, answers and
errors go straight to each stream's future. `_h2conn.H2Connection` adds the transport, the
timers and the waiting for a free stream; this class never calls into it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from push_relay import _h2frames as f
from push_relay._h2errors import (
    H2ConnectionError,
    H2Response,
    H2ResponseTooLargeError,
    H2StreamResetError,
    MaybeSent,
    NotSent,
)
from push_relay._h2stream import Stream

_HALF_WINDOW = f.RECEIVE_WINDOW // 2  # acknowledge received data once this much is unacked
# Our own cap on open streams, whatever the server allows: bounds the requests (and bodies)
# one connection holds in memory; more wait for a stream.
MAX_OPEN_STREAMS = 1000


class H2State:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, scheme: str, authority: str, max_stream_id: int
    ) -> None:
        self.loop = loop
        self.codec = f.HeaderCodec()
        f.check_field(":authority", authority)
        self.pseudo = (
            (b":scheme", scheme.encode(), False),
            (b":authority", authority.encode(), False),
        )
        self.ready: asyncio.Future[None] = loop.create_future()  # peer's SETTINGS arrived
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, None] = {}  # streams whose body waits for window, in order
        self.out: list[bytes] = []  # frames not yet handed to the transport
        self.next_id = 1
        self.max_id = max_stream_id  # the last stream id this connection may use
        self.wire_id = 0  # highest stream id handed to the transport
        self.closing = False
        self.goaway_id: int | None = None  # set: no new streams (GOAWAY, ids used up, limit 0)
        self.limit = MAX_OPEN_STREAMS  # the peer's SETTINGS_MAX_CONCURRENT_STREAMS, capped
        self.send_window = f.DEFAULT_WINDOW  # connection-level, ours to spend
        self.peer_window = f.DEFAULT_WINDOW  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = f.DEFAULT_FRAME_SIZE  # the peer's SETTINGS_MAX_FRAME_SIZE
        self.recv_window = f.RECEIVE_WINDOW  # connection-level, what the peer may still send
        self.settled = False  # the peer's first frame (SETTINGS) arrived
        self.ping_out = False
        self.buffer = b""
        self.continuation: tuple[int, int, list[bytes], int] | None = None  # id, flags, parts, size
        self.handlers: dict[int, Callable[[int, int, bytes], None]] = {
            f.DATA: self.on_data,
            f.HEADERS: self.on_headers,
            f.PRIORITY: _ignore,
            f.RST_STREAM: self.on_rst_stream,
            f.SETTINGS: self.on_settings,
            f.PUSH_PROMISE: self.on_push_promise,
            f.PING: self.on_ping,
            f.GOAWAY: self.on_goaway,
            f.WINDOW_UPDATE: self.on_window_update,
            f.CONTINUATION: self.on_continuation,
        }

    @property
    def usable(self) -> bool:
        return not self.closing and self.goaway_id is None

    # -- streams ----------------------------------------------------------------------------

    def open_stream(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> Stream:
        """Queue the request's frames; `NotSent` if this connection takes no new stream."""
        if not self.usable:
            raise NotSent
        field = self.codec.field  # raises H2InvalidHeaderError before anything changes
        fields = [field(":method", method), *self.pseudo, field(":path", path)]
        fields += [field(name, value) for name, value in headers]
        stream_id = self.next_id
        self.next_id = stream_id + 2
        if self.next_id > self.max_id:  # the last id: drain, a new connection takes over
            self.goaway_id = stream_id
        block = self.codec.encode(fields)
        stream = Stream(stream_id, self.loop.create_future(), self.peer_window)
        self.streams[stream_id] = stream
        self.out += f.headers_frames(stream_id, block, not body, self.max_frame)
        if body:
            stream.body = body
            self.send_body(stream)
        return stream

    def complete(self, stream: Stream) -> None:
        del self.streams[stream.id]
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.body is not None:  # answered before the whole body went out: stop sending
            self.blocked.pop(stream.id, None)
            self.out.append(f.rst_stream(stream.id, f.CANCEL))
        if not stream.future.done():
            body = b"".join(stream.chunks)
            stream.future.set_result(H2Response(stream.status, stream.headers, body))

    def reset(self, stream_id: int, error: Exception) -> None:
        """We give up on the stream: fail it and tell the server (RST_STREAM CANCEL)."""
        if stream_id in self.streams:
            self.fail(stream_id, error)
            if not self.closing:
                self.out.append(f.rst_stream(stream_id, f.CANCEL))

    def fail(self, stream_id: int, error: Exception) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.blocked.pop(stream_id, None)
        if stream.timer is not None:
            stream.timer.cancel()
        if not stream.future.done():
            stream.future.set_exception(error)

    def fail_all(self, error: H2ConnectionError, resend: bool = False) -> None:
        """Streams on the wire fail with `error` (`MaybeSent` if `resend`); unsent ones retry."""
        for stream_id in list(self.streams):
            on_wire = stream_id <= self.wire_id
            self.fail(stream_id, (MaybeSent(error) if resend else error) if on_wire else NotSent())

    # -- receiving --------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Handle every complete frame in `data`; keep the rest for the next read."""
        if self.buffer:
            data = self.buffer + data
        pos, end = 0, len(data)
        unpack, handlers = f.HEADER.unpack_from, self.handlers
        while end - pos >= 9 and not self.closing:
            high, low, frame_type, flags, stream_id = unpack(data, pos)
            length = high << 8 | low
            if length > f.DEFAULT_FRAME_SIZE:
                raise f.FrameError(f.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            stop = pos + 9 + length
            if stop > end:
                break
            payload = data[pos + 9 : stop]
            pos = stop
            if self.continuation is not None and frame_type != f.CONTINUATION:
                raise f.FrameError(f.PROTOCOL_ERROR, "header block interrupted")
            if not self.settled and frame_type != f.SETTINGS:
                raise f.FrameError(f.PROTOCOL_ERROR, "the server did not start with SETTINGS")
            handler = handlers.get(frame_type)
            if handler is not None:  # unknown frame types are ignored (RFC 9113 §4.1)
                handler(flags, stream_id & f.MAX_STREAM_ID, payload)
        self.buffer = data[pos:] if pos < end and not self.closing else b""

    def known(self, stream_id: int, frame: str) -> Stream | None:
        """The open stream, or None for one that is closed; an idle stream is an error."""
        if stream_id == 0:
            raise f.FrameError(f.PROTOCOL_ERROR, f"{frame} on stream 0")
        stream = self.streams.get(stream_id)
        if stream is None and (stream_id >= self.next_id or not stream_id & 1):
            raise f.FrameError(f.PROTOCOL_ERROR, f"{frame} on idle stream {stream_id}")
        return stream

    def on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.known(stream_id, "DATA")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < _HALF_WINDOW:
            if self.recv_window < 0:
                raise f.FrameError(f.FLOW_CONTROL_ERROR, "more data than the window allows")
            self.out.append(f.window_update(0, f.RECEIVE_WINDOW - self.recv_window))
            self.recv_window = f.RECEIVE_WINDOW
        if stream is None:
            return  # a stream we reset or gave up on; its data still counted above
        if not stream.status:
            raise f.FrameError(f.PROTOCOL_ERROR, f"DATA before the response on {stream_id}")
        if flags & f.PADDED:
            payload = f.unpad(flags, payload)
        if payload:
            stream.received += len(payload)
            if stream.received > f.MAX_BODY:  # stop collecting; later DATA is dropped above
                error = H2ResponseTooLargeError(f"response body over {f.MAX_BODY} bytes")
                self.reset(stream_id, error)
                return
            stream.chunks.append(payload)
        if flags & f.END_STREAM:
            self.complete(stream)
            return
        stream.recv_window -= size
        if stream.recv_window < _HALF_WINDOW:
            if stream.recv_window < 0:
                raise f.FrameError(f.FLOW_CONTROL_ERROR, f"stream {stream_id} window exceeded")
            self.out.append(f.window_update(stream_id, f.RECEIVE_WINDOW - stream.recv_window))
            stream.recv_window = f.RECEIVE_WINDOW

    def on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise f.FrameError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & (f.PADDED | f.PRIORITY_FLAG):
            payload = f.unpad(flags, payload, bool(flags & f.PRIORITY_FLAG))
        if flags & f.END_HEADERS:
            self.on_header_block(flags, stream_id, payload)
        else:
            self.continuation = (stream_id, flags, [payload], len(payload))

    def on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != stream_id:
            raise f.FrameError(f.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        _, first_flags, fragments, size = self.continuation
        size += len(payload)
        if size > f.MAX_HEADER_LIST:
            raise f.FrameError(f.PROTOCOL_ERROR, "response header block too large")
        if len(fragments) > f.MAX_CONTINUATIONS:
            raise f.FrameError(f.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        fragments.append(payload)
        if flags & f.END_HEADERS:
            self.continuation = None
            self.on_header_block(first_flags, stream_id, b"".join(fragments))
        else:
            self.continuation = (stream_id, first_flags, fragments, size)

    def on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        fields = self.codec.decode(block)  # always: keeps the HPACK tables in step
        stream = self.known(stream_id, "HEADERS")
        if stream is None:
            return
        if not stream.status:
            status = f.response_status(fields, stream_id)
            if status < 200:  # informational (1xx): the real response follows
                if flags & f.END_STREAM:
                    raise f.FrameError(f.PROTOCOL_ERROR, f"1xx ending stream {stream_id}")
                return
            stream.headers = f.response_headers(fields)
            stream.status = status
        elif not flags & f.END_STREAM:
            raise f.FrameError(f.PROTOCOL_ERROR, f"trailers without END_STREAM on {stream_id}")
        if flags & f.END_STREAM:
            self.complete(stream)

    def on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        code = f.u32(payload, "RST_STREAM")
        if self.known(stream_id, "RST_STREAM") is None:
            return
        if code == f.REFUSED_STREAM:  # RFC 9113 §8.7: the server did not process it
            self.fail(stream_id, NotSent())
        else:
            name = f.ERROR_NAMES.get(code, str(code))
            self.fail(stream_id, H2StreamResetError(f"stream {stream_id} reset: {name}"))

    def on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise f.FrameError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise f.FrameError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        for setting, value in f.settings_fields(payload):
            self.apply_setting(setting, value)
        self.settled = True
        self.out.append(f.SETTINGS_ACK)
        if not self.ready.done():
            self.ready.set_result(None)

    def apply_setting(self, setting: int, value: int) -> None:
        if setting == f.MAX_CONCURRENT_STREAMS:
            self.limit = min(value, MAX_OPEN_STREAMS)
            if value == 0 and self.goaway_id is None:  # no new stream, ever: like a GOAWAY
                self.goaway_id = f.MAX_STREAM_ID  # open streams may still finish
        elif setting == f.INITIAL_WINDOW_SIZE:
            if value > f.MAX_WINDOW:
                raise f.FrameError(f.FLOW_CONTROL_ERROR, f"initial window of {value}")
            delta, self.peer_window = value - self.peer_window, value
            for stream in self.streams.values():  # RFC 9113 §6.9.2: open streams change too
                stream.send_window += delta
                if stream.send_window > f.MAX_WINDOW:
                    raise f.FrameError(f.FLOW_CONTROL_ERROR, "stream window overflow")
            if delta > 0:
                self.resume()
        elif setting == f.MAX_FRAME_SIZE:
            if not f.DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                raise f.FrameError(f.PROTOCOL_ERROR, f"max frame size of {value}")
            self.max_frame = value
        elif setting == f.HEADER_TABLE_SIZE:
            self.codec.peer_table_size(value)
        elif setting == f.ENABLE_PUSH and value != 0:
            raise f.FrameError(f.PROTOCOL_ERROR, "a server may not enable push")

    def on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise f.FrameError(f.PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")

    def on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise f.FrameError(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise f.FrameError(f.FRAME_SIZE_ERROR, f"PING frame of {len(payload)} bytes")
        if flags & f.ACK:
            self.ping_out = False
        else:
            self.out.append(f.ping(payload, f.ACK))

    def on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise f.FrameError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        last, code = f.goaway_fields(payload)
        self.goaway_id = last if self.goaway_id is None else min(last, self.goaway_id)
        for later in [s for s in self.streams if s > last]:
            self.fail(later, NotSent())
        if code != f.NO_ERROR:  # a graceful one lets the streams it names finish (§6.8)
            name = f.ERROR_NAMES.get(code, str(code))
            raise f.FrameError(code, f"server closed the connection (GOAWAY {name})", by_peer=True)

    def on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        increment = f.u32(payload, "WINDOW_UPDATE") & f.MAX_WINDOW
        if not increment:
            raise f.FrameError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if stream_id == 0:
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise f.FrameError(f.FLOW_CONTROL_ERROR, "connection window overflow")
            self.resume()
            return
        stream = self.known(stream_id, "WINDOW_UPDATE")
        if stream is None:
            return
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            raise f.FrameError(f.FLOW_CONTROL_ERROR, f"stream {stream_id} window overflow")
        if stream_id in self.blocked:
            self.send_body(stream)

    # -- sending bodies within the peer's windows -------------------------------------------

    def send_body(self, stream: Stream) -> None:
        """Queue as much of the stream's body as the windows allow; the rest waits."""
        body = stream.body
        assert body is not None
        sent, total = stream.sent, len(body)
        while sent < total:
            size = min(self.send_window, stream.send_window, self.max_frame, total - sent)
            if size <= 0:
                stream.sent = sent
                self.blocked[stream.id] = None
                return
            end = sent + size
            flags = f.END_STREAM if end == total else 0
            chunk = body if size == total else body[sent:end]
            self.out += (f.frame_header(size, f.DATA, flags, stream.id), chunk)
            self.send_window -= size
            stream.send_window -= size
            sent = end
        stream.body = None
        self.blocked.pop(stream.id, None)

    def resume(self) -> None:
        """Window opened: blocked bodies continue, oldest first."""
        for stream_id in list(self.blocked):
            if self.send_window <= 0:
                return
            stream = self.streams.get(stream_id)
            if stream is None:
                del self.blocked[stream_id]
            else:
                self.send_body(stream)


def _ignore(flags: int, stream_id: int, payload: bytes) -> None:
    """PRIORITY frames: we have no use for the server's prioritisation."""

"""The receiving half of a client HTTP/2 connection: frames in, stream state and flow control.

`Receiver` parses what the server sends (RFC 9113 §4.1), one handler per frame type, and keeps
what the frames change: the streams' responses, both directions' flow-control windows, the
peer's settings. What to do with a finished or failed stream is the connection's business
(`_h2conn.H2Connection` implements the hooks at the end of the class).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from push_relay import _h2frames as f
from push_relay._h2base import H2Response, H2StreamResetError, NotSent

_HALF_WINDOW = f.RECEIVE_WINDOW // 2  # acknowledge received data once this much is unacked


class Stream:
    __slots__ = (
        "body",
        "chunks",
        "future",
        "headers",
        "id",
        "recv_window",
        "send_window",
        "sent",
        "status",
        "timer",
    )

    def __init__(self, stream_id: int, future: asyncio.Future[H2Response], window: int) -> None:
        self.id = stream_id
        self.future = future
        self.status = 0  # until the final (non-1xx) response headers arrive
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.body: bytes | None = None  # request body still (partly) unsent
        self.sent = 0
        self.send_window = window
        self.recv_window = f.RECEIVE_WINDOW
        self.timer: asyncio.TimerHandle | None = None


class Receiver(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.codec = f.HeaderCodec()
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, None] = {}  # streams whose body waits for window, in order
        self.out: list[bytes] = []  # frames not yet handed to the transport
        self.next_id = 1
        self.closing = False
        self.goaway_id: int | None = None
        self.limit = f.MAX_STREAM_ID  # the peer's SETTINGS_MAX_CONCURRENT_STREAMS
        self.send_window = f.DEFAULT_WINDOW  # connection-level, ours to spend
        self.peer_window = f.DEFAULT_WINDOW  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = f.DEFAULT_FRAME_SIZE  # the peer's SETTINGS_MAX_FRAME_SIZE
        self.recv_window = f.RECEIVE_WINDOW  # connection-level, what the peer may still send
        self.settled = False  # the peer's first frame (SETTINGS) arrived
        self.ping_out = False
        self.buffer = b""
        self.continuation: tuple[int, int, list[bytes]] | None = None  # id, flags, fragments
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

    # -- frame handlers ---------------------------------------------------------------------

    def on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.known(stream_id, "DATA")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < _HALF_WINDOW:
            if self.recv_window < 0:
                raise f.FrameError(f.FLOW_CONTROL_ERROR, "more data than the window allows")
            self.queue(f.window_update(0, f.RECEIVE_WINDOW - self.recv_window))
            self.recv_window = f.RECEIVE_WINDOW
        if stream is None:
            return  # a stream we reset or gave up on; its data still counted above
        if not stream.status:
            raise f.FrameError(f.PROTOCOL_ERROR, f"DATA before the response on {stream_id}")
        if flags & f.PADDED:
            payload = f.unpad(flags, payload)
        if payload:
            stream.chunks.append(payload)
        if flags & f.END_STREAM:
            self.complete(stream)
            return
        stream.recv_window -= size
        if stream.recv_window < _HALF_WINDOW:
            if stream.recv_window < 0:
                raise f.FrameError(f.FLOW_CONTROL_ERROR, f"stream {stream_id} window exceeded")
            self.queue(f.window_update(stream_id, f.RECEIVE_WINDOW - stream.recv_window))
            stream.recv_window = f.RECEIVE_WINDOW

    def on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise f.FrameError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & (f.PADDED | f.PRIORITY_FLAG):
            payload = f.unpad(flags, payload, bool(flags & f.PRIORITY_FLAG))
        if flags & f.END_HEADERS:
            self.on_header_block(flags, stream_id, payload)
        else:
            self.continuation = (stream_id, flags, [payload])

    def on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != stream_id:
            raise f.FrameError(f.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        _, first_flags, fragments = self.continuation
        fragments.append(payload)
        if sum(map(len, fragments)) > f.MAX_HEADER_LIST:
            raise f.FrameError(f.PROTOCOL_ERROR, "response header block too large")
        if flags & f.END_HEADERS:
            self.continuation = None
            self.on_header_block(first_flags, stream_id, b"".join(fragments))

    def on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        fields = self.codec.decode(block)  # always: keeps the HPACK tables in step
        stream = self.known(stream_id, "HEADERS")
        if stream is None:
            return
        if not stream.status:
            if not fields or fields[0][0] != b":status" or not fields[0][1].isdigit():
                raise f.FrameError(f.PROTOCOL_ERROR, f"response without :status on {stream_id}")
            status = int(fields[0][1])
            if status < 200:  # informational (1xx): the real response follows
                if flags & f.END_STREAM:
                    raise f.FrameError(f.PROTOCOL_ERROR, f"1xx ending stream {stream_id}")
                return
            try:
                stream.headers = {n.decode(): v.decode() for n, v, _ in fields if n[:1] != b":"}
            except UnicodeDecodeError:
                raise f.FrameError(f.PROTOCOL_ERROR, "response header not UTF-8") from None
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
        self.release()

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
        self.queue(f.SETTINGS_ACK)
        self.on_settings_applied()

    def apply_setting(self, setting: int, value: int) -> None:
        if setting == f.MAX_CONCURRENT_STREAMS:
            self.limit = value
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
            self.queue(f.ping(payload, f.ACK))

    def on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise f.FrameError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        last, code = f.goaway_fields(payload)
        self.on_goaway_received(last, code)

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

    # -- outbound flow control --------------------------------------------------------------

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
            self.queue(f.frame_header(size, f.DATA, flags, stream.id), chunk)
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

    # -- hooks, implemented by the connection -----------------------------------------------

    def queue(self, *frames: bytes) -> None:
        raise NotImplementedError

    def complete(self, stream: Stream) -> None:
        raise NotImplementedError

    def fail(self, stream_id: int, error: Exception) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def on_settings_applied(self) -> None:
        raise NotImplementedError

    def on_goaway_received(self, last_stream_id: int, code: int) -> None:
        raise NotImplementedError


def _ignore(flags: int, stream_id: int, payload: bytes) -> None:
    """PRIORITY frames: we have no use for the server's prioritisation."""

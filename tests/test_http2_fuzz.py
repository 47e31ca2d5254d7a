"""Arbitrary server bytes into one HTTP/2 connection: answers or clean errors, nothing else.

Each example drives a connection (`_h2conn.H2Connection`) over an in-memory transport: the
server's SETTINGS, a few requests (some waiting for a stream), then frames drawn by
hypothesis (valid header blocks among them, so responses do complete) or raw bytes, in
arbitrary cuts; then the connection ends. Whatever the bytes, no exception escapes the
protocol callbacks, no table grows past its bound, and every request and waiter is resolved
with a response, an `H2Error` or the retry signal.
"""

from __future__ import annotations

import asyncio
import struct

import hpack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from push_relay import _h2frames as f
from push_relay._h2conn import MAX_PAUSED_GROWTH, H2Connection
from push_relay._h2errors import H2ConnectionError, H2Error, H2Response, NotSent


class MemoryTransport(asyncio.Transport):
    """Collects what the client writes; closing ends the connection as a socket would."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: H2Connection) -> None:
        super().__init__()
        self.loop, self.protocol = loop, protocol
        self.written = bytearray()
        self.buffered = 0  # what `get_write_buffer_size` reports
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "a write after close"
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">L", len(payload))[1:]
        + bytes([frame_type, flags])
        + (struct.pack(">L", stream_id) + payload)
    )


def settings_frame(values: dict[int, int]) -> bytes:
    payload = b"".join(struct.pack(">HL", k, v) for k, v in values.items())
    return frame(f.SETTINGS, 0, 0, payload)


_ENCODER_STATUS = st.sampled_from(["100", "200", "204", "400", "500", "abc", ""])
_HEADER_BLOCK = st.tuples(
    _ENCODER_STATUS, st.lists(st.tuples(st.sampled_from(["x-a", "apns-id", ":path"]), st.text()))
)
_STREAM_ID = st.sampled_from([0, 1, 3, 5, 7, 2, 99]) | st.integers(0, 2**32 - 1)
_FLAGS = st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0x2D]) | st.integers(0, 255)
_PAYLOAD = st.binary(max_size=64) | st.sampled_from(
    [bytes(4), bytes(8), b"\x00\x00\x00\x01", b"\x7f\xff\xff\xff", bytes(16_384), bytes(17_000)]
)


@st.composite
def frames(draw: st.DrawFn) -> list[tuple[int, int, int, bytes | tuple[str, list[object]]]]:
    """Frames of any type (known ones more often), some HEADERS with a decodable block."""
    out: list[tuple[int, int, int, bytes | tuple[str, list[object]]]] = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):  # a well-formed response, so that requests do complete
            stream_id = draw(st.sampled_from([1, 3, 5, 7, 9]))
            out.append((f.HEADERS, f.END_HEADERS, stream_id, ("200", [])))
            out.append((f.DATA, f.END_STREAM, stream_id, draw(_PAYLOAD)))
            continue
        frame_type = draw(st.integers(0, 9) | st.integers(10, 255))
        payload: bytes | tuple[str, list[object]] = draw(_PAYLOAD)
        if frame_type in (f.HEADERS, f.CONTINUATION) and draw(st.booleans()):
            status, fields = draw(_HEADER_BLOCK)
            payload = (status, list(fields))
        out.append((frame_type, draw(_FLAGS), draw(_STREAM_ID), payload))
    return out


def encode(
    encoder: hpack.Encoder, spec: list[tuple[int, int, int, bytes | tuple[str, list[object]]]]
) -> bytes:
    data = b""
    for frame_type, flags, stream_id, payload in spec:
        if isinstance(payload, tuple):
            status, fields = payload
            payload = bytes(encoder.encode([(":status", status), *fields]))
        data += frame(frame_type, flags, stream_id, payload[:16_384])
    return data


@st.composite
def server_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    return encode(hpack.Encoder(), draw(frames()))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(0, 4),
    window=st.sampled_from([0, 10, 65_535, 2**31 - 1]),
    bodies=st.lists(st.sampled_from([b"", b"x" * 20, bytes(70_000)]), min_size=1, max_size=5),
    settings_first=st.sampled_from([True, True, True, False]),
    data=server_bytes(),
    cuts=st.lists(st.integers(1, 50), max_size=6),
)
def test_any_server_bytes_end_in_answers_or_clean_errors(
    limit: int,
    window: int,
    bodies: list[bytes],
    settings_first: bool,
    data: bytes,
    cuts: list[int],
) -> None:
    loop = asyncio.new_event_loop()
    try:
        _drive(loop, limit, window, bodies, settings_first, data, cuts)
    finally:
        loop.close()


def _drive(
    loop: asyncio.AbstractEventLoop,
    limit: int,
    window: int,
    bodies: list[bytes],
    settings_first: bool,
    data: bytes,
    cuts: list[int],
) -> None:
    conn = H2Connection(loop, "https", "push.example", ping_interval=30)
    transport = MemoryTransport(loop, conn)
    conn.connection_made(transport)
    if settings_first:
        values = {f.MAX_CONCURRENT_STREAMS: limit, f.INITIAL_WINDOW_SIZE: window}
        conn.data_received(settings_frame(values))
    deadline = loop.time() + 3600  # no request times out during the example
    streams, waiters = [], []
    for body in bodies:
        if not conn.usable:
            break
        if conn.full:
            waiters.append(loop.create_task(conn.wait_for_stream(deadline)))
        else:
            streams.append(conn.request("POST", "/3/device/abc", [("x-a", "b")], body, deadline))
    loop.run_until_complete(asyncio.sleep(0))  # flushes; waiters start waiting
    for piece in _cut(data, cuts):
        conn.data_received(piece)
        _check_bounds(conn, len(streams))
    loop.run_until_complete(asyncio.sleep(0))
    if not transport.closed:
        transport.close()  # the server goes away
    loop.run_until_complete(asyncio.wait(waiters, timeout=1) if waiters else asyncio.sleep(0))
    assert ({}, {}, 0) == (conn.streams, conn.blocked, len(conn.waiters))
    for stream in streams:
        assert stream.future.done()
        error = stream.future.exception()
        assert error is None or isinstance(error, H2Error | NotSent), repr(error)
        if error is None:
            assert isinstance(stream.future.result(), H2Response)
        event(f"request: {type(error).__name__ if error else 'answered'}")
    for waiter in waiters:
        assert waiter.done()
        assert waiter.exception() is None or isinstance(waiter.exception(), H2Error | NotSent)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start : start + cut])
        start += cut
    return [*pieces, data[start:]]


def _check_bounds(conn: H2Connection, opened: int) -> None:
    assert len(conn.streams) <= opened
    assert set(conn.blocked) <= set(conn.streams)
    assert len(conn.buffer) < 9 + f.DEFAULT_FRAME_SIZE
    assert len(conn.codec.seen) <= 1024
    if conn.continuation is not None:
        assert len(conn.continuation[2]) <= f.MAX_CONTINUATIONS + 1
    for stream in conn.streams.values():
        assert sum(map(len, stream.chunks)) <= f.MAX_BODY
        assert not stream.future.done()


def test_a_server_that_stops_reading_but_keeps_sending_is_given_up() -> None:
    """Answers to its PINGs would pile up unread: past the bound the connection is dropped."""
    loop = asyncio.new_event_loop()
    try:
        conn = H2Connection(loop, "https", "push.example", ping_interval=30)
        transport = MemoryTransport(loop, conn)
        conn.connection_made(transport)
        conn.data_received(settings_frame({}))
        pending = conn.request("GET", "/", [], b"", loop.time() + 3600)
        loop.run_until_complete(asyncio.sleep(0))
        transport.buffered = 70_000
        conn.pause_writing()
        assert conn.full  # new requests wait while the transport is full
        transport.buffered += MAX_PAUSED_GROWTH + 17  # the PING answers it never read
        conn.data_received(frame(f.PING, 0, 0, b"12345678"))
        loop.run_until_complete(asyncio.sleep(0))
        assert transport.closed
        assert isinstance(pending.future.exception(), H2ConnectionError)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()

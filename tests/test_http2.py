"""The shared HTTP/2 client against the HTTP/2 simulator server, over TLS on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from push_relay import tls
from push_relay.http2 import H2Client, H2ConnectionError, H2StreamResetError, H2TimeoutError
from push_relay.testing.ca import TestCA
from push_relay.testing.h2server import H2Drop, H2Reply, H2Request, H2Reset, H2SimServer

REFUSED_STREAM = 0x7
INTERNAL_ERROR = 0x2


async def echo(request: H2Request) -> H2Reply:
    return H2Reply(200, [("x-path", request.path)], request.body)


@pytest.fixture
def h2_context() -> ssl.SSLContext:
    return tls.client_context(["h2"])


@pytest.fixture
async def server(test_ca: TestCA) -> AsyncIterator[H2SimServer]:
    sim = H2SimServer(echo, test_ca)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def client(server: H2SimServer, h2_context: ssl.SSLContext) -> AsyncIterator[H2Client]:
    h2 = H2Client(server.url, h2_context)
    yield h2
    await h2.aclose()


async def test_request_and_response(client: H2Client) -> None:
    response = await client.request("POST", "/echo", [("content-type", "text/plain")], b"hi")
    assert 200 == response.status
    assert b"hi" == response.body
    assert "/echo" == response.headers["x-path"]


async def test_200_concurrent_requests_share_one_connection(
    server: H2SimServer, client: H2Client
) -> None:
    async def slow_echo(request: H2Request) -> H2Reply:
        await asyncio.sleep(0.3)  # keeps every stream open at the same time, even on a busy machine
        return await echo(request)

    server.handler = slow_echo
    responses = await asyncio.gather(*(client.request("GET", f"/{i}", []) for i in range(200)))
    assert [f"/{i}" for i in range(200)] == [r.headers["x-path"] for r in responses]
    assert 1 == client.connections_opened
    assert 1 == server.connections_accepted
    assert 200 == server.max_streams_seen


async def test_peer_max_concurrent_streams_is_respected(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def slow(request: H2Request) -> H2Reply:
        await asyncio.sleep(0.01)
        return H2Reply(204)

    sim = H2SimServer(slow, test_ca, max_concurrent_streams=5)
    await sim.start()
    client = H2Client(sim.url, h2_context)
    try:
        responses = await asyncio.gather(*(client.request("GET", "/", []) for _ in range(40)))
    finally:
        await client.aclose()
        await sim.stop()
    assert [204] * 40 == [r.status for r in responses]
    assert 5 == sim.max_streams_seen
    assert 1 == sim.connections_accepted


async def test_bodies_larger_than_the_flow_control_window(
    server: H2SimServer, client: H2Client
) -> None:
    async def digest(request: H2Request) -> H2Reply:
        return H2Reply(200, body=hashlib.sha256(request.body).digest())

    server.handler = digest
    body = bytes(range(256)) * 4096  # 1 MiB: 16 times the initial 64 KiB window
    response = await client.request("POST", "/big", [], body)
    assert hashlib.sha256(body).digest() == response.body


async def test_timeout_resets_only_its_own_stream(server: H2SimServer, client: H2Client) -> None:
    reset_seen = asyncio.Event()

    async def handler(request: H2Request) -> H2Reply:
        if request.path == "/slow":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                reset_seen.set()  # the server saw RST_STREAM for this stream
                raise
        await asyncio.sleep(0.05)
        return H2Reply(200)

    server.handler = handler
    slow = client.request("GET", "/slow", [], timeout=0.02)
    fast = [client.request("GET", "/fast", [], timeout=5) for _ in range(10)]
    results = await asyncio.gather(slow, *fast, return_exceptions=True)
    assert isinstance(results[0], H2TimeoutError)
    assert [200] * 10 == [r.status for r in results[1:]]  # type: ignore[union-attr]
    await asyncio.wait_for(reset_seen.wait(), 1)
    assert 200 == (await client.request("GET", "/after", [])).status
    assert 1 == client.connections_opened


@pytest.mark.parametrize(
    "delay",
    [
        pytest.param(0.0, id="answers-in-the-same-read-as-goaway"),
        pytest.param(0.02, id="answers-after-goaway"),
    ],
)
async def test_goaway_in_flight_streams_finish_later_ones_are_retried(
    server: H2SimServer, client: H2Client, delay: float
) -> None:
    async def slow_echo(request: H2Request) -> H2Reply:
        await asyncio.sleep(delay)
        return await echo(request)

    server.handler = slow_echo
    server.goaway_after(10)
    responses = await asyncio.gather(*(client.request("GET", f"/{i}", []) for i in range(45)))
    assert [200] * 45 == [r.status for r in responses]
    assert 5 == client.connections_opened  # 10 streams per connection
    # streams above GOAWAY's last_stream_id were never processed: nothing was sent twice
    assert sorted(f"/{i}" for i in range(45)) == sorted(r.path for r in server.requests)


async def test_request_on_the_wire_fails_when_the_connection_drops(
    server: H2SimServer, client: H2Client
) -> None:
    async def handler(request: H2Request) -> H2Reply | H2Drop:
        if request.path == "/drop":
            await asyncio.sleep(0.02)  # lets the other request reach the server too
            return H2Drop()
        await asyncio.sleep(1)
        return H2Reply(200)

    server.handler = handler
    results = await asyncio.gather(
        client.request("GET", "/drop", []),
        client.request("GET", "/other", []),
        return_exceptions=True,
    )
    assert [H2ConnectionError, H2ConnectionError] == [type(r) for r in results]
    server.handler = echo
    assert 200 == (await client.request("GET", "/next", [])).status
    assert 2 == client.connections_opened


async def test_idle_connection_dropped_by_server_reconnects_transparently(
    server: H2SimServer, client: H2Client
) -> None:
    assert 200 == (await client.request("GET", "/first", [])).status
    server.drop_connections()
    await asyncio.sleep(0.01)
    assert 200 == (await client.request("GET", "/second", [])).status
    assert 2 == client.connections_opened


async def test_requests_never_sent_are_retried_on_a_new_connection(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    """With one stream allowed, queued requests have not reached the wire when it drops."""

    async def handler(request: H2Request) -> H2Reply | H2Drop:
        if request.path == "/drop":
            await asyncio.sleep(0.02)
            return H2Drop()
        return await echo(request)

    sim = H2SimServer(handler, test_ca, max_concurrent_streams=1)
    await sim.start()
    client = H2Client(sim.url, h2_context)
    try:
        await client.request("GET", "/warm-up", [])  # learns the 1-stream limit
        results = await asyncio.gather(
            client.request("GET", "/drop", []),
            *(client.request("GET", f"/queued-{i}", []) for i in range(3)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
        await sim.stop()
    assert isinstance(results[0], H2ConnectionError)
    assert [200, 200, 200] == [r.status for r in results[1:]]  # type: ignore[union-attr]
    assert ["/queued-0", "/queued-1", "/queued-2"] == [
        r.path for r in sim.requests if r.path.startswith("/queued")
    ]
    assert 2 == client.connections_opened


async def test_refused_stream_is_retried_other_resets_fail(
    server: H2SimServer, client: H2Client
) -> None:
    refused: list[str] = []

    async def handler(request: H2Request) -> H2Reply | H2Reset:
        if request.path == "/refused-once" and not refused:
            refused.append(request.path)
            return H2Reset(REFUSED_STREAM)  # RFC 9113 §8.7: safe to retry
        if request.path == "/broken":
            return H2Reset(INTERNAL_ERROR)
        return H2Reply(200)

    server.handler = handler
    assert 200 == (await client.request("GET", "/refused-once", [])).status
    assert ["/refused-once", "/refused-once"] == [r.path for r in server.requests]
    with pytest.raises(H2StreamResetError, match="INTERNAL_ERROR"):
        await client.request("GET", "/broken", [])
    assert 200 == (await client.request("GET", "/after", [])).status
    assert 1 == client.connections_opened


async def test_connection_refused(h2_context: ssl.SSLContext) -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    client = H2Client(f"https://127.0.0.1:{port}", h2_context)
    with pytest.raises(H2ConnectionError, match="cannot connect"):
        await client.request("GET", "/", [])
    await client.aclose()


async def test_server_without_h2_alpn_is_a_connection_error(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    listener = await asyncio.start_server(
        accept, "127.0.0.1", 0, ssl=test_ca.server_context(["http/1.1"])
    )
    port = listener.sockets[0].getsockname()[1]
    client = H2Client(f"https://127.0.0.1:{port}", h2_context)
    try:
        with pytest.raises(H2ConnectionError, match="HTTP/2"):
            await client.request("GET", "/", [])
    finally:
        await client.aclose()
        listener.close()
        await listener.wait_closed()


async def test_idle_connection_is_kept_alive_with_pings(
    server: H2SimServer, h2_context: ssl.SSLContext
) -> None:
    client = H2Client(server.url, h2_context, ping_interval=0.02)
    try:
        await client.request("GET", "/", [])
        await asyncio.sleep(0.15)
        assert server.pings_received >= 2
        assert 200 == (await client.request("GET", "/", [])).status
        assert 1 == client.connections_opened
    finally:
        await client.aclose()


async def test_a_peer_that_stops_answering_pings_is_replaced(
    server: H2SimServer, h2_context: ssl.SSLContext
) -> None:
    client = H2Client(server.url, h2_context, ping_interval=0.02)
    try:
        await client.request("GET", "/", [])
        server.stall_connections()
        await asyncio.sleep(0.15)  # a PING goes unanswered for a whole interval
        assert 200 == (await client.request("GET", "/", [], timeout=2)).status
        assert 2 == client.connections_opened
    finally:
        await client.aclose()


async def test_aclose_fails_pending_requests_and_refuses_new_ones(
    server: H2SimServer, client: H2Client
) -> None:
    async def never(request: H2Request) -> H2Reply:
        await asyncio.sleep(10)
        return H2Reply(200)

    server.handler = never
    pending = asyncio.ensure_future(client.request("GET", "/", []))
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(H2ConnectionError):
        await pending
    with pytest.raises(H2ConnectionError, match="closed"):
        await client.request("GET", "/", [])


# -- the framing layer against a scripted peer ------------------------------------------------
#
# The simulator above runs h2's state machine, which never pads, splits header blocks, sends
# unknown frame types or breaks the protocol. `RawPeer` speaks raw frames (hyperframe + hpack,
# an implementation independent of the client's) so each case below can be written exactly.

Respond = Callable[["RawConnection", int, dict[str, str], bytes], Awaitable[None]]


class RawConnection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: RawPeer
    ) -> None:
        self.reader, self.writer, self.peer = reader, writer, peer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.received: list[Frame] = []  # every frame from the client, in order
        self.blocks: list[bytes] = []  # every request header block, as sent
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()

    def send(self, *frames: Frame | bytes) -> None:
        for frame in frames:
            self.writer.write(frame if isinstance(frame, bytes) else frame.serialize())

    def block(self, headers: list[tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(headers))

    async def run(self) -> None:
        try:
            assert b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" == await self.reader.readexactly(24)
            self.send(SettingsFrame(0, settings=self.peer.settings))
            fragments: list[bytes] = []
            bodies: dict[int, bytes] = {}
            requests: dict[int, dict[str, str]] = {}
            ended: set[int] = set()  # END_STREAM seen, maybe before the header block ended
            while True:
                frame, length = Frame.parse_frame_header(
                    memoryview(await self.reader.readexactly(9))
                )
                frame.parse_body(memoryview(await self.reader.readexactly(length)))
                self.received.append(frame)
                sid, flags = frame.stream_id, frame.flags
                if isinstance(frame, SettingsFrame) and "ACK" not in flags:
                    self.send(SettingsFrame(0, flags=["ACK"]))
                elif isinstance(frame, HeadersFrame | ContinuationFrame):
                    bodies.setdefault(sid, b"")
                    fragments.append(frame.data)
                    if "END_HEADERS" in flags:
                        self.blocks.append(b"".join(fragments))
                        fields = self.decoder.decode(self.blocks[-1], raw=False)
                        requests[sid] = {str(n): str(v) for n, v in fields}
                        fragments = []
                elif isinstance(frame, DataFrame):
                    bodies[sid] += frame.data
                if "END_STREAM" in flags and isinstance(frame, HeadersFrame | DataFrame):
                    ended.add(sid)
                if sid in ended and sid in requests:
                    ended.discard(sid)
                    task = asyncio.create_task(
                        self.peer.respond(self, sid, requests[sid], bodies[sid])
                    )
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        except (asyncio.IncompleteReadError, OSError):  # the client closed (also TLS errors)
            pass
        finally:
            self.writer.close()
            self.done.set()


class RawPeer:
    """A TLS HTTP/2 server on 127.0.0.1 whose answers are raw frames written by `respond`."""

    def __init__(self, ca: TestCA, respond: Respond, settings: dict[int, int] | None = None):
        self.ca, self.respond = ca, respond
        self.settings = settings or {}
        self.connections: list[RawConnection] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(
            self.accept, "127.0.0.1", 0, ssl=self.ca.server_context(["h2"])
        )
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for connection in self.connections:
            connection.writer.close()
            for task in list(connection.tasks):
                task.cancel()
            await asyncio.wait_for(connection.done.wait(), 1)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = RawConnection(reader, writer, self)
        self.connections.append(connection)
        await connection.run()

    def frames(self, kind: type[Frame]) -> list[Frame]:
        return [f for c in self.connections for f in c.received if isinstance(f, kind)]


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as bytes (hyperframe would write an extension frame's length as 0)."""
    header = len(payload).to_bytes(3, "big") + bytes([frame_type, flags])
    return header + stream_id.to_bytes(4, "big") + payload


async def answer(conn: RawConnection, stream_id: int, body: bytes = b"ok") -> None:
    conn.send(
        HeadersFrame(stream_id, conn.block([(":status", "200")]), flags=["END_HEADERS"]),
        DataFrame(stream_id, body, flags=["END_STREAM"]),
    )


async def test_padding_priority_and_unknown_frames_are_handled(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        block = conn.block([(":status", "201"), ("apns-id", "abc")])
        conn.send(
            PriorityFrame(sid, depends_on=0, stream_weight=16),
            HeadersFrame(
                sid,
                block,
                flags=["END_HEADERS", "PADDED", "PRIORITY"],
                pad_length=7,
                depends_on=0,
                stream_weight=200,
            ),
            raw_frame(0xEE, 0x5, sid, b"an extension the client does not know"),
            DataFrame(sid, b"hello ", flags=["PADDED"], pad_length=30),
            DataFrame(sid, b"world", flags=["END_STREAM", "PADDED"], pad_length=0),
        )

    async with RawPeer(test_ca, respond) as url:
        client = H2Client(url, h2_context)
        response = await client.request("POST", "/x", [], b"body")
        await client.aclose()
    assert (201, "abc", b"hello world") == (
        response.status,
        response.headers["apns-id"],
        response.body,
    )


async def test_response_headers_over_continuation_after_a_1xx_with_trailers(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        block = conn.block([(":status", "200"), ("x-long", "v" * 40_000)])
        conn.send(
            HeadersFrame(sid, conn.block([(":status", "100")]), flags=["END_HEADERS"]),
            HeadersFrame(sid, block[:10]),
            ContinuationFrame(sid, block[10:16_000]),
            ContinuationFrame(sid, block[16_000:32_000]),
            ContinuationFrame(sid, block[32_000:], flags=["END_HEADERS"]),
            DataFrame(sid, b"body"),
            HeadersFrame(
                sid, conn.block([("x-trailer", "t")]), flags=["END_HEADERS", "END_STREAM"]
            ),
        )

    async with RawPeer(test_ca, respond) as url:
        client = H2Client(url, h2_context)
        response = await client.request("GET", "/", [])
        await client.aclose()
    assert (200, 40_000, b"body") == (
        response.status,
        len(response.headers["x-long"]),
        response.body,
    )


async def test_large_request_headers_are_sent_with_continuation_frames(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    seen: list[dict[str, str]] = []

    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        seen.append(headers)
        await answer(conn, sid)

    value = "".join(chr(ord("a") + i % 26) for i in range(40_000))
    peer = RawPeer(test_ca, respond)
    async with peer as url:
        client = H2Client(url, h2_context)
        assert 200 == (await client.request("GET", "/big", [("x-big", value)])).status
        await client.aclose()
    assert value == seen[0]["x-big"]
    headers_frame = peer.frames(HeadersFrame)[0]
    assert "END_HEADERS" not in headers_frame.flags  # the block continues
    assert 16_384 == len(headers_frame.data)
    assert "END_HEADERS" in peer.frames(ContinuationFrame)[-1].flags


async def test_peer_pings_are_answered_with_their_payload(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        conn.send(PingFrame(0, b"12345678"))
        await asyncio.sleep(0.05)  # the client's answer arrives before the response goes out
        await answer(conn, sid)

    peer = RawPeer(test_ca, respond)
    async with peer as url:
        client = H2Client(url, h2_context)
        assert 200 == (await client.request("GET", "/", [])).status
        await client.aclose()
    pings = [(p.opaque_data, "ACK" in p.flags) for p in peer.frames(PingFrame)]
    assert [(b"12345678", True)] == pings


async def test_body_waits_for_the_window_and_follows_initial_window_changes(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    """The stream window starts at 100 bytes; a SETTINGS raising it releases the rest."""
    received: list[bytes] = []

    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        received.append(body)
        await answer(conn, sid, body)

    peer = RawPeer(test_ca, respond, {SettingsFrame.INITIAL_WINDOW_SIZE: 100})
    async with peer as url:
        client = H2Client(url, h2_context)
        pending = asyncio.ensure_future(client.request("POST", "/", [], bytes(1000)))
        await asyncio.sleep(0.1)
        assert [100] == [len(d.data) for d in peer.frames(DataFrame)]  # blocked after 100
        peer.connections[0].send(SettingsFrame(0, {SettingsFrame.INITIAL_WINDOW_SIZE: 2000}))
        response = await pending
        await client.aclose()
    assert [100, 900] == [len(d.data) for d in peer.frames(DataFrame)]
    assert bytes(1000) == response.body == received[0]


async def test_peer_max_frame_size_bounds_data_frames(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        await answer(conn, sid, str(len(body)).encode())

    settings = {SettingsFrame.MAX_FRAME_SIZE: 20_000, SettingsFrame.INITIAL_WINDOW_SIZE: 10**6}
    peer = RawPeer(test_ca, respond, settings)
    async with peer as url:
        client = H2Client(url, h2_context)
        response = await client.request("POST", "/", [], bytes(50_000))
        await client.aclose()
    assert b"50000" == response.body
    assert [20_000, 20_000, 10_000] == [len(d.data) for d in peer.frames(DataFrame)]


async def test_repeated_headers_are_indexed_and_a_zero_table_is_honoured(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        assert "bearer token-1234567890" == headers["authorization"]
        await answer(conn, sid)

    headers = [("authorization", "bearer token-1234567890"), ("apns-topic", "ch.threema.iapp")]
    sizes: dict[int, list[int]] = {}
    for table_size in (4096, 0):
        peer = RawPeer(test_ca, respond, {SettingsFrame.HEADER_TABLE_SIZE: table_size})
        async with peer as url:
            client = H2Client(url, h2_context)
            for _ in range(3):
                assert 200 == (await client.request("POST", "/3/device/a", headers)).status
            await client.aclose()
        blocks = peer.connections[0].blocks
        sizes[table_size] = [len(b) for b in blocks]
        if table_size == 0:
            assert 0x20 == blocks[0][0]  # HPACK dynamic table size update to 0 comes first
    first, second, third = sizes[4096]
    assert third < second <= first and third <= 8  # from the third on, one byte per field
    assert sizes[0][2] > sizes[4096][2]  # no table, nothing indexed


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param(lambda sid: [raw_frame(0x0, 0, 0, b"x")], 0x1, id="data-on-stream-0"),
        pytest.param(lambda sid: [PushPromiseFrame(sid, promised_stream_id=2)], 0x1, id="push"),
        pytest.param(
            lambda sid: [HeadersFrame(sid, b"\xff\xff\xff", flags=["END_HEADERS"])],
            0x9,
            id="bad-hpack",
        ),
        pytest.param(lambda sid: [DataFrame(sid, b"body before headers")], 0x1, id="data-first"),
        pytest.param(lambda sid: [WindowUpdateFrame(0, 2**31 - 1)], 0x3, id="window-overflow"),
        pytest.param(
            lambda sid: [HeadersFrame(sid, b""), PingFrame(0, b"12345678")],
            0x1,
            id="continuation-missing",
        ),
        pytest.param(lambda sid: [RstStreamFrame(sid + 2)], 0x1, id="reset-of-an-idle-stream"),
        pytest.param(lambda sid: [raw_frame(0x6, 0, 0, b"abc")], 0x6, id="short-ping"),
        pytest.param(  # ":status: 100" as an HPACK literal, on a HEADERS that ends the stream
            lambda sid: [HeadersFrame(sid, b"\x08\x03100", flags=["END_HEADERS", "END_STREAM"])],
            0x1,
            id="1xx-ending-the-stream",
        ),
    ],
)
async def test_protocol_errors_close_the_connection_with_goaway(
    test_ca: TestCA,
    h2_context: ssl.SSLContext,
    frames: Callable[[int], list[Frame | bytes]],
    code: int,
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        if headers[":path"] == "/bad":
            conn.send(*frames(sid))
        else:
            await answer(conn, sid)

    peer = RawPeer(test_ca, respond)
    async with peer as url:
        client = H2Client(url, h2_context)
        with pytest.raises(H2ConnectionError, match="protocol error"):
            await client.request("GET", "/bad", [])
        assert 200 == (await client.request("GET", "/next", [])).status
        await client.aclose()
        await asyncio.sleep(0.01)
    assert code == peer.frames(GoAwayFrame)[0].error_code
    assert 2 == len(peer.connections)


async def test_oversized_response_header_list_is_refused(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        block = conn.block([(":status", "200")] + [(f"x-{i}", "v" * 9000) for i in range(9)])
        parts = [block[i : i + 16_000] for i in range(0, len(block), 16_000)]
        conn.send(HeadersFrame(sid, parts[0], flags=["END_STREAM"]))
        conn.send(*(ContinuationFrame(sid, p) for p in parts[1:-1]))
        conn.send(ContinuationFrame(sid, parts[-1], flags=["END_HEADERS"]))

    async with RawPeer(test_ca, respond) as url:
        client = H2Client(url, h2_context)
        with pytest.raises(H2ConnectionError, match="too large"):
            await client.request("GET", "/", [])
        await client.aclose()


async def test_goaway_with_an_error_fails_requests_in_flight(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        conn.send(GoAwayFrame(0, last_stream_id=sid, error_code=0xB))

    async with RawPeer(test_ca, respond) as url:
        client = H2Client(url, h2_context)
        with pytest.raises(H2ConnectionError, match="GOAWAY ENHANCE_YOUR_CALM"):
            await client.request("GET", "/", [])
        await client.aclose()

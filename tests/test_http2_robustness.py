"""The HTTP/2 client against servers that race, stall, flood or misbehave, on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from h2_raw_peer import RawConnection, RawPeer, answer
from push_relay import _h2conn, tls
from push_relay.http2 import (
    H2Client,
    H2ConnectionError,
    H2InvalidHeaderError,
    H2ResponseTooLargeError,
    H2TimeoutError,
)
from push_relay.testing.ca import TestCA
from push_relay.testing.h2server import H2Reply, H2Request, H2SimServer

CANCEL = 0x8


@pytest.fixture
def h2_context() -> ssl.SSLContext:
    return tls.client_context(["h2"])


# -- the two races seen against real servers ------------------------------------------------


async def test_request_to_an_idle_connection_closed_without_a_word_is_sent_once_more(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    """A server closing an idle connection (no GOAWAY) as a request arrives: it is resent."""

    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        if conn.index == 0 and headers[":path"] == "/after-idle":
            conn.writer.close()  # nothing answered, no GOAWAY: the idle close of nghttpx
        else:
            await answer(conn, sid)

    peer = RawPeer(test_ca, respond)
    async with peer as url:
        client = H2Client(url, h2_context)
        assert 200 == (await client.request("GET", "/first", [])).status
        await asyncio.sleep(_h2conn.IDLE_SECS + 0.1)
        assert 200 == (await client.request("GET", "/after-idle", [])).status
        await client.aclose()
    assert [["/first", "/after-idle"], ["/after-idle"]] == [c.paths for c in peer.connections]


async def test_a_request_is_resent_at_most_once(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        if headers[":path"] == "/never":
            conn.writer.close()
        else:
            await answer(conn, sid)

    peer = RawPeer(test_ca, respond)
    async with peer as url:
        client = H2Client(url, h2_context)
        assert 200 == (await client.request("GET", "/first", [])).status
        await asyncio.sleep(_h2conn.IDLE_SECS + 0.1)
        with pytest.raises(H2ConnectionError, match="connection lost"):
            await client.request("GET", "/never", [])
        await client.aclose()
    assert [["/first", "/never"], ["/never"]] == [c.paths for c in peer.connections]


@pytest.mark.parametrize("error_code", [0x0, 0xB], ids=["graceful", "enhance-your-calm"])
async def test_requests_a_server_leaves_unanswered_as_it_goes_away_are_sent_once_more(
    test_ca: TestCA, h2_context: ssl.SSLContext, error_code: int
) -> None:
    """A server that names the streams in its GOAWAY (so they may have been read), then closes
    without answering them (Apache's mod_http2 on a graceful reload): each is sent again."""

    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        if conn.index == 0:
            if sid == 3:  # both requests are on the wire
                conn.send(GoAwayFrame(0, last_stream_id=3, error_code=error_code))
                await asyncio.sleep(0.01)
                conn.writer.close()
        else:
            await answer(conn, sid)

    peer = RawPeer(test_ca, respond)
    async with peer as url:
        client = H2Client(url, h2_context)
        responses = await asyncio.gather(*(client.request("GET", f"/{i}", []) for i in range(2)))
        await client.aclose()
    assert [200, 200] == [r.status for r in responses]
    assert [["/0", "/1"], ["/0", "/1"]] == [sorted(c.paths) for c in peer.connections]


async def test_zero_concurrent_streams_sends_waiting_requests_to_a_new_connection(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS = 0 without GOAWAY: the connection is draining."""

    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        if conn.index == 0:
            conn.send(SettingsFrame(0, {SettingsFrame.MAX_CONCURRENT_STREAMS: 0}))
            await asyncio.sleep(0.05)
        await answer(conn, sid)

    peer = RawPeer(test_ca, respond, {SettingsFrame.MAX_CONCURRENT_STREAMS: 1})
    async with peer as url:
        client = H2Client(url, h2_context)
        requests = (client.request("GET", f"/{i}", [], timeout=5) for i in range(5))
        responses = await asyncio.gather(*requests)
        await asyncio.wait_for(peer.connections[0].done.wait(), 2)  # the client closed it
        await client.aclose()
    assert [200] * 5 == [r.status for r in responses]
    assert [["/0"], ["/1", "/2", "/3", "/4"]] == [c.paths for c in peer.connections]
    assert 2 == client.connections_opened


# -- stream ids, bounds ---------------------------------------------------------------------


@pytest.fixture
async def slow_server(test_ca: TestCA) -> AsyncIterator[H2SimServer]:
    async def slow(request: H2Request) -> H2Reply:
        await asyncio.sleep(0.05)
        return H2Reply(200, [("x-path", request.path)])

    sim = H2SimServer(slow, test_ca)
    await sim.start()
    yield sim
    await sim.stop()


async def test_used_up_stream_ids_hand_over_to_a_new_connection_without_a_failure(
    slow_server: H2SimServer, h2_context: ssl.SSLContext
) -> None:
    client = H2Client(slow_server.url, h2_context, max_stream_id=9)  # 5 streams a connection
    try:
        responses = await asyncio.gather(*(client.request("GET", f"/{i}", []) for i in range(23)))
        later = [(await client.request("GET", f"/later-{i}", [])).status for i in range(6)]
    finally:
        await client.aclose()
    assert [f"/{i}" for i in range(23)] == [r.headers["x-path"] for r in responses]
    assert [200] * 6 == later
    assert 29 == len(slow_server.requests)  # each sent once
    assert 6 == client.connections_opened  # 29 requests, 5 per connection
    assert 1 <= slow_server.max_streams_seen <= 5


async def test_a_response_body_over_64_kib_fails_that_request_alone(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    async def respond(conn: RawConnection, sid: int, headers: dict[str, str], body: bytes) -> None:
        size = int(headers[":path"][1:])
        conn.send(HeadersFrame(sid, conn.block([(":status", "200")]), flags=["END_HEADERS"]))
        for start in range(0, size, 16_000):
            conn.send(DataFrame(sid, bytes(min(16_000, size - start))))
        conn.send(DataFrame(sid, b"", flags=["END_STREAM"]))

    peer = RawPeer(test_ca, respond)
    async with peer as url:
        client = H2Client(url, h2_context)
        with pytest.raises(H2ResponseTooLargeError, match="65536"):
            await client.request("GET", "/65537", [])
        exact = await client.request("GET", "/65536", [])
        await client.aclose()
    assert 65536 == len(exact.body)
    assert [(1, CANCEL)] == [(f.stream_id, f.error_code) for f in peer.frames(RstStreamFrame)]
    assert 1 == len(peer.connections)


# -- RFC 9113 §8.2.1: malformed request fields never leave the client ----------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("x-evil", "a\r\nx-injected: 1", id="crlf-in-value"),
        pytest.param("x-evil", "a\nb", id="lf-in-value"),
        pytest.param("x-evil", "a\0b", id="nul-in-value"),
        pytest.param("apns-topic", "com.example.app ", id="trailing-space"),
        pytest.param("apns-topic", "\tcom.example.app", id="leading-tab"),
        pytest.param("X-Upper", "v", id="uppercase-name"),
        pytest.param("x name", "v", id="space-in-name"),
        pytest.param("x:name", "v", id="colon-in-name"),
        pytest.param(":status", "200", id="response-pseudo-header"),
        pytest.param("", "v", id="empty-name"),
        pytest.param("x-é", "v", id="non-ascii-name"),
        pytest.param(":path", "/a\r\nb", id="crlf-in-path"),
    ],
)
async def test_a_malformed_field_fails_its_request_before_anything_is_sent(
    slow_server: H2SimServer, h2_context: ssl.SSLContext, name: str, value: str
) -> None:
    client = H2Client(slow_server.url, h2_context)
    path, headers = (value, []) if name == ":path" else ("/bad", [(name, value)])
    try:
        results = await asyncio.gather(
            *(client.request("GET", f"/good-{i}", []) for i in range(10)),
            client.request("GET", path, headers),
            *(client.request("GET", f"/good-{i}", []) for i in range(10, 20)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    assert isinstance(results[10], H2InvalidHeaderError)
    assert [200] * 20 == [r.status for r in results if not isinstance(r, BaseException)]
    assert 20 == len(slow_server.requests)  # nothing of the bad one reached the server
    assert 1 == client.connections_opened


async def test_a_malformed_field_frees_the_stream_it_waited_for(
    test_ca: TestCA, h2_context: ssl.SSLContext
) -> None:
    """With one stream allowed, the requests queued behind a malformed one still go out."""

    async def slow(request: H2Request) -> H2Reply:
        await asyncio.sleep(0.02)
        return H2Reply(204)

    sim = H2SimServer(slow, test_ca, max_concurrent_streams=1)
    await sim.start()
    client = H2Client(sim.url, h2_context)
    try:
        await client.request("GET", "/warm-up", [])  # learns the 1-stream limit
        results = await asyncio.gather(
            client.request("GET", "/0", []),
            client.request("GET", "/bad", [("x", "\n")]),
            *(client.request("GET", f"/{i}", [], timeout=5) for i in range(1, 4)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
        await sim.stop()
    assert isinstance(results[1], H2InvalidHeaderError)
    assert [204] * 4 == [r.status for r in results if not isinstance(r, BaseException)]


# -- write back-pressure ----------------------------------------------------------------------


async def test_a_server_that_stops_reading_bounds_memory_and_requests_time_out() -> None:
    """Once the transport pauses the client, new requests wait instead of piling up.

    Plaintext h2c: behind TLS, the server's `pause_reading` stops only the TLS layer's
    delivery, not its reading from the socket, so the client would never be paused.
    """
    stalled, finished = asyncio.Event(), asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(24)
        big = {SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}
        writer.write(SettingsFrame(0, settings=big).serialize())
        writer.write(bytes.fromhex("000004080000000000") + (2**31 - 1 - 65_535).to_bytes(4))
        writer.write(SettingsFrame(0, flags=["ACK"]).serialize())
        writer.transport.pause_reading()  # from now on the client's bytes pile up
        stalled.set()
        await finished.wait()
        writer.close()

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = H2Client(f"http://127.0.0.1:{port}", None)
    body = bytes(256 * 1024)  # 100 of them outgrow the socket buffers
    try:
        first = [
            asyncio.ensure_future(client.request("POST", "/", [], body, timeout=3))
            for _ in range(100)
        ]
        conn = await _paused_connection(client)
        buffered = conn.transport.get_write_buffer_size()  # type: ignore[union-attr]
        second = [
            asyncio.ensure_future(client.request("POST", "/", [], body, timeout=1))
            for _ in range(100)
        ]
        await asyncio.sleep(0.2)
        assert 100 == len(conn.waiters)  # not queued: they wait for the transport
        assert buffered == conn.transport.get_write_buffer_size()  # type: ignore[union-attr]
        results = await asyncio.gather(*first, *second, return_exceptions=True)
        assert [H2TimeoutError] * 200 == [type(r) for r in results]
        assert ({}, 0) == (conn.streams, len(conn.waiters))
    finally:
        finished.set()
        await client.aclose()
        listener.close()
        await listener.wait_closed()
    assert stalled.is_set()


async def _paused_connection(client: H2Client) -> _h2conn.H2Connection:
    async with asyncio.timeout(5):
        while True:
            conn = client._conn  # the test watches the connection's own bookkeeping
            if conn is not None and conn.paused is not None:
                return conn
            await asyncio.sleep(0.01)

"""The HTTP/2 client's framing against a scripted raw-frame peer, over TLS on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

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

from h2_raw_peer import RawConnection, RawPeer, answer, raw_frame
from push_relay import tls
from push_relay.http2 import H2Client, H2ConnectionError
from push_relay.testing.ca import TestCA


@pytest.fixture
def h2_context() -> ssl.SSLContext:
    return tls.client_context(["h2"])


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
        pytest.param(
            lambda sid: [HeadersFrame(sid, b"")] + [ContinuationFrame(sid, b"")] * 10_000,
            0xB,  # ENHANCE_YOUR_CALM: a flood of empty frames, not a big header block
            id="continuation-flood",
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

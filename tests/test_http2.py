"""The shared HTTP/2 client against the HTTP/2 simulator server, over TLS on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator

import pytest

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

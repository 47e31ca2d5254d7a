"""`[server]` front-end limits (contract §12): the size of a request's head, its number of
header fields, connections per worker, and the admin listener.

Requests are written byte by byte on raw connections, so the head's size is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from push_relay.testing.ports import free_port
from push_relay.testing.relay import RelayStarter, RunningRelay

BODY = b"token=t&session=s&version=3"
NOT_OK = b"Push not successful"
TOO_LARGE = b"Request header fields too large"


def push_head(size: int, *, body: bytes = BODY, fields: int = 0) -> bytes:
    """A /push request whose head (request line to blank line, CRLFs counted) is exactly
    `size` bytes, with `fields` extra header fields before the padding one."""
    start = (
        b"POST /push HTTP/1.1\r\nHost: relay\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n" % len(body)
    )
    start += b"".join(b"X-F%d: v\r\n" % i for i in range(fields))
    pad = size - len(start) - len(b"X-Pad: \r\n\r\n")
    assert pad >= 0
    head = start + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"
    assert size == len(head)
    return head


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return await asyncio.open_connection(parts.hostname, parts.port)


async def exchange(relay: RunningRelay, data: bytes, chunk: int = 0) -> bytes:
    """Send `data` (in pieces of `chunk` bytes when given) and read until the relay closes."""
    reader, writer = await connect(relay.url)
    try:
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        for piece in pieces:
            if writer.is_closing():
                break
            writer.write(piece)
            try:
                await writer.drain()
            except ConnectionError:
                break
        if not writer.is_closing():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# -- max_header_bytes ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1000, 7], ids=["one-write", "1000-byte-writes", "7-bytes"])
async def test_head_of_exactly_max_header_bytes_is_served(
    start_relay: RelayStarter, chunk: int
) -> None:
    async with start_relay("[server]\nmax_header_bytes = 2000\n") as relay:
        answer = await exchange(relay, push_head(2000) + BODY, chunk)
    assert (400, NOT_OK) == status_and_body(answer)  # validated; no backend configured


@pytest.mark.parametrize("chunk", [0, 1000, 7], ids=["one-write", "1000-byte-writes", "7-bytes"])
async def test_head_one_byte_over_is_431_and_closed(start_relay: RelayStarter, chunk: int) -> None:
    async with start_relay("[server]\nmax_header_bytes = 2000\n") as relay:
        answer = await exchange(relay, push_head(2001) + BODY, chunk)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"content-type: text/plain; charset=utf-8\r\n" in answer
    assert b"connection: close\r\n" in answer
    assert (431, TOO_LARGE) == status_and_body(answer)


@pytest.mark.parametrize(
    ("origins", "grant"),
    [('["*"]', b"access-control-allow-origin: *\r\n"), ('["https://web.example"]', None)],
    ids=["any-origin", "restricted"],
)
async def test_the_431_grants_cors_like_every_push_answer(
    start_relay: RelayStarter, origins: str, grant: bytes | None
) -> None:
    """With `cors_origins = ["*"]` a browser may read the 431 too; a restricted list grants
    nothing to a head whose Origin was never read."""
    config = f"[server]\nmax_header_bytes = 2000\ncors_origins = {origins}\n"
    async with start_relay(config) as relay:
        answer = await exchange(relay, push_head(2001) + BODY)
    assert (431, TOO_LARGE) == status_and_body(answer)
    head = answer.partition(b"\r\n\r\n")[0] + b"\r\n"
    if grant is None:
        assert b"access-control-allow-origin" not in head
    else:
        assert grant in head


async def test_body_bytes_never_count(start_relay: RelayStarter) -> None:
    """A 2000-byte head with a 4000-byte body in the same write is within a 2000-byte limit."""
    body = BODY + b"&affiliation=" + b"a" * (4000 - len(BODY) - 13)
    async with start_relay("[server]\nmax_header_bytes = 2000\n") as relay:
        answer = await exchange(relay, push_head(2000, body=body) + body)
    assert (400, NOT_OK) == status_and_body(answer)


async def test_every_request_on_a_kept_alive_connection_gets_the_whole_limit(
    start_relay: RelayStarter,
) -> None:
    async with start_relay("[server]\nmax_header_bytes = 2000\n") as relay:
        reader, writer = await connect(relay.url)
        for _ in range(5):  # 5 x 2000 bytes of head on one connection
            writer.write(push_head(2000) + BODY)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ")
            assert NOT_OK == await reader.readexactly(len(NOT_OK))
        writer.close()


async def test_a_pipelined_head_over_the_limit_is_431(start_relay: RelayStarter) -> None:
    """The second request follows the first's body in the same write."""
    async with start_relay("[server]\nmax_header_bytes = 2000\n") as relay:
        answer = await exchange(relay, push_head(500) + BODY + push_head(3000) + BODY)
    first, _, rest = answer.partition(NOT_OK)
    assert first.startswith(b"HTTP/1.1 400 ")
    assert rest.startswith(b"HTTP/1.1 431 ")


async def test_pipelined_heads_within_the_limit_are_all_served(start_relay: RelayStarter) -> None:
    async with start_relay("[server]\nmax_header_bytes = 2000\n") as relay:
        reader, writer = await connect(relay.url)
        writer.write((push_head(2000) + BODY) * 3)  # one write: heads 2 and 3 follow bodies
        answers = [await asyncio.wait_for(reader.readuntil(NOT_OK), 10) for _ in range(3)]
        writer.close()
    assert all(answer.startswith(b"HTTP/1.1 400 ") for answer in answers)


async def test_default_limit_is_16_kib(relay: RunningRelay) -> None:
    assert (400, NOT_OK) == status_and_body(await exchange(relay, push_head(16384) + BODY))
    assert (431, TOO_LARGE) == status_and_body(await exchange(relay, push_head(16385) + BODY))


# -- max_headers -----------------------------------------------------------------------------


async def test_header_fields_beyond_max_headers_are_431(start_relay: RelayStarter) -> None:
    # the request's own fields are Host, Content-Type, Content-Length and X-Pad
    async with start_relay("[server]\nmax_headers = 10\n") as relay:
        at_limit = await exchange(relay, push_head(1000, fields=6) + BODY)
        over = await exchange(relay, push_head(1000, fields=7) + BODY)
    assert (400, NOT_OK) == status_and_body(at_limit)
    assert (431, TOO_LARGE) == status_and_body(over)


async def test_default_is_100_header_fields(relay: RunningRelay) -> None:
    assert (400, NOT_OK) == status_and_body(
        await exchange(relay, push_head(3000, fields=96) + BODY)
    )
    over = await exchange(relay, push_head(3000, fields=97) + BODY)
    assert (431, TOO_LARGE) == status_and_body(over)


# -- max_connections -------------------------------------------------------------------------


async def test_a_connection_beyond_max_connections_is_answered_503_and_closed(
    start_relay: RelayStarter,
) -> None:
    async with start_relay("[server]\nmax_connections = 3\n") as relay:
        held = [await connect(relay.url) for _ in range(3)]
        for _, writer in held:  # each one is served
            writer.write(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
        for reader, _ in held:
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        reader, writer = await connect(relay.url)
        refused = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert (503, b"Too many connections") == status_and_body(refused)
        for reader, writer in held:  # the earlier connections are untouched
            await reader.readuntil(b"ok")
            writer.write(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
            writer.close()
        await asyncio.sleep(0.1)  # the server notices the closes
        assert 200 == (await relay.request("GET", "/health")).status


async def test_admin_connections_do_not_use_up_the_public_limit(
    start_relay: RelayStarter,
) -> None:
    """A scraper holding admin connections neither is refused nor crowds out push clients."""
    admin = f"127.0.0.1:{free_port()}"
    config = f'[server]\nmax_connections = 2\nadmin_listen = "{admin}"\n'
    async with start_relay(config) as relay:
        admin_held = [await connect(f"http://{admin}") for _ in range(3)]
        public_held = [await connect(relay.url) for _ in range(2)]
        for reader, writer in [*admin_held, *public_held]:
            writer.write(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        reader, writer = await connect(relay.url)  # the third public one is over the limit
        refused = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert (503, b"Too many connections") == status_and_body(refused)
        for _, writer in [*admin_held, *public_held]:
            writer.close()


# -- admin_listen ----------------------------------------------------------------------------


@pytest.fixture
async def admin_relay(start_relay: RelayStarter) -> AsyncIterator[tuple[RunningRelay, str]]:
    admin = f"127.0.0.1:{free_port()}"
    async with start_relay(f'[server]\nadmin_listen = "{admin}"\n') as relay:
        yield relay, f"http://{admin}"


async def test_admin_listener_splits_the_endpoints(
    admin_relay: tuple[RunningRelay, str],
) -> None:
    relay, admin = admin_relay
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession() as session:

        async def status(method: str, url: str) -> int:
            async with session.request(method, url, data=BODY, headers=form) as answer:
                await answer.read()
                return answer.status

        public = {p: await status(m, relay.url + p) for m, p in ENDPOINTS}
        on_admin = {p: await status(m, admin + p) for m, p in ENDPOINTS}
    assert {"/push": 400, "/health": 200, "/ready": 404, "/metrics": 404} == public
    assert {"/push": 404, "/health": 200, "/ready": 200, "/metrics": 200} == on_admin


ENDPOINTS = [("POST", "/push"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")]


async def test_without_admin_listen_everything_is_on_the_one_listener(
    relay: RunningRelay,
) -> None:
    assert 200 == (await relay.request("GET", "/metrics")).status
    assert 200 == (await relay.request("GET", "/ready")).status

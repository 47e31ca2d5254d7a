"""The relay's asyncio HTTP/2 client: one multiplexed connection per push-service origin.

Off-the-shelf async HTTP/2 clients cost several times more CPU per request than the relay can
afford, so this is a minimal client of its own (RFC 9113): `_h2frames` builds and parses
frames, `_h2state` is one connection's state and frame handling, `_h2conn` its asyncio
protocol, `_h2errors` the errors drawn below. A request is a future on a stream (no task per
request), writes are batched into one `transport.write` per loop iteration, and the
connection is opened lazily, shared by every request, and replaced transparently when the
server sends GOAWAY, stops taking streams or the connection dies.

H2Error
├── H2ConnectionError       could not connect, or the connection died while this request was
│                           on the wire (requests that never reached the wire are retried)
├── H2TimeoutError          this request's timeout passed; only its stream was reset
├── H2StreamResetError      the server reset this request's stream
├── H2ResponseTooLargeError the response body passed 64 KiB; only its stream was reset
└── H2InvalidHeaderError    a request field is malformed (RFC 9113 §8.2.1); nothing was sent
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from push_relay import _h2frames
from push_relay._h2conn import H2Connection
from push_relay._h2errors import (
    H2ConnectionError,
    H2Error,
    H2InvalidHeaderError,
    H2Response,
    H2ResponseTooLargeError,
    H2StreamResetError,
    H2TimeoutError,
    MaybeSent,
    NotSent,
)

__all__ = [
    "MAX_RESPONSE_BYTES",
    "H2Client",
    "H2ConnectionError",
    "H2Error",
    "H2InvalidHeaderError",
    "H2Response",
    "H2ResponseTooLargeError",
    "H2StreamResetError",
    "H2TimeoutError",
]

# The largest response body accepted (push services answer a few hundred bytes); the relay's
# HTTP/1.1 upstreams are held to the same bound (`backends/_body.py`).
MAX_RESPONSE_BYTES = _h2frames.MAX_BODY

# A request that never reached the wire is retried on a fresh connection, within its timeout
# and at most this often (a burst larger than what a server allows per connection before its
# GOAWAY spreads over several connections; the bound stops a server that refuses everything).
_MAX_ATTEMPTS = 16


class H2Client:
    """Requests to one origin over one HTTP/2 connection, opened on first use.

    `ssl_context` must offer ALPN `h2`; None speaks plaintext h2c with prior knowledge (tests).
    Request header names must be lower-case, as HTTP/2 requires; a malformed field fails its
    request with `H2InvalidHeaderError` before anything is sent. `max_stream_id` lets tests
    reach stream-id exhaustion (a connection then drains and the next one takes over).
    """

    def __init__(
        self,
        origin: str,
        ssl_context: ssl.SSLContext | None,
        *,
        connect_timeout: float = 10.0,
        ping_interval: float = 30.0,
        max_stream_id: int = _h2frames.MAX_STREAM_ID,
    ) -> None:
        url = urlsplit(origin)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.origin = origin
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._scheme = url.scheme
        self._authority = url.netloc
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._max_stream_id = max_stream_id
        self._conn: H2Connection | None = None
        self._connecting: asyncio.Task[H2Connection] | None = None
        self._closed = False
        self._open_connections: set[H2Connection] = set()
        self.connections_opened = 0

    def __repr__(self) -> str:
        return f"H2Client({self.origin!r}, connections_opened={self.connections_opened})"

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        timeout: float = 10.0,  # noqa: ASYNC109  # per request, resets only this stream
    ) -> H2Response:
        """Send one request and wait for its whole response, at most `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        resent = False
        for _ in range(_MAX_ATTEMPTS):
            conn = self._conn
            if conn is None or not conn.usable:
                conn = await self._connection(deadline)
            try:
                if conn.full:
                    await conn.wait_for_stream(deadline)
                stream = conn.request(method, path, headers, body, deadline)
                try:
                    return await stream.future  # the only suspension on the fast path
                except asyncio.CancelledError:
                    conn.cancel(stream)
                    raise
            except MaybeSent as lost:
                if resent:
                    raise H2ConnectionError(f"{self.origin}: {lost.error}") from None
                resent = True  # most likely unread by a server going away
            except NotSent:
                continue  # the server never saw it: safe to send on the next connection
        raise H2ConnectionError(f"{self.origin}: connection closed before the request was sent")

    async def aclose(self) -> None:
        """Close the connection; requests still waiting fail with `H2ConnectionError`."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._conn = None
        for conn in list(self._open_connections):  # also those draining after a GOAWAY
            await conn.close()

    async def _connection(self, deadline: float) -> H2Connection:
        """The usable connection, opening one (once, for all callers) when there is none."""
        if self._closed:
            raise H2ConnectionError(f"{self.origin}: client is closed")
        task = self._connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._opened)
            self._connecting = task
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            raise H2TimeoutError(f"{self.origin}: timed out waiting for a connection") from None

    def _opened(self, task: asyncio.Task[H2Connection]) -> None:
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return  # the waiters got the error; the next request tries again
        conn = self._conn = task.result()
        self._open_connections.add(conn)
        conn.lost.add_done_callback(lambda _: self._open_connections.discard(conn))

    async def _open(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        conn = H2Connection(
            loop, self._scheme, self._authority, self._ping_interval, self._max_stream_id
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
                await conn.ready
        except TimeoutError:
            conn.abort()
            raise H2ConnectionError(f"{self.origin}: timed out connecting") from None
        except OSError as err:  # refused, unreachable, TLS failure
            conn.abort()
            raise H2ConnectionError(f"{self.origin}: cannot connect: {_describe(err)}") from None
        except BaseException:
            conn.abort()
            raise
        self.connections_opened += 1
        return conn


def _describe(err: OSError) -> str:
    if isinstance(err, ssl.SSLError):
        return err.reason or str(err)
    return err.strerror or str(err) or type(err).__name__

"""An HTTP/2 server over TLS on 127.0.0.1 for push-service simulators (FCM, APNs).

    async def handler(request: H2Request) -> H2Reply | H2Drop: ...

    server = H2SimServer(handler, ca, max_concurrent_streams=1000)
    url = await server.start()      # "https://127.0.0.1:<port>" (ALPN h2)
    server.requests                 # every H2Request received, in order
    server.connections_accepted     # TCP connections accepted so far
    server.max_streams_seen         # most streams open at once on one connection
    server.pings_received           # PING frames from clients (keep-alive)
    server.goaway_after(5)          # each connection: GOAWAY after its 5th request (graceful:
                                    # requests up to it are answered, later ones ignored)
    server.drop_connections()       # abort every open connection now
    server.stall_connections()      # stop reading from them (a hung peer)
    await server.stop()

Handlers run concurrently, one task per request; an `H2Reply` may ask for a `delay` before it
is sent, returning `H2Drop()` aborts the connection while the request is on the wire, and
`H2Reset(code)` resets only the request's stream (e.g. 7, REFUSED_STREAM: "not processed").
With `ca=None` the server speaks plaintext h2c (prior knowledge).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from push_relay.testing.ca import TestCA

log = logging.getLogger("push_relay.simulator")


@dataclass(frozen=True, slots=True)
class H2Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names, pseudo-headers excluded
    body: bytes
    connection_id: int
    stream_id: int = 0


@dataclass(frozen=True, slots=True)
class H2Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before answering (a slow upstream)


@dataclass(frozen=True, slots=True)
class H2Drop:
    """Abort the connection instead of answering."""


@dataclass(frozen=True, slots=True)
class H2Reset:
    """Reset the request's stream with this HTTP/2 error code instead of answering."""

    error_code: int


Handler = Callable[[H2Request], Awaitable[H2Reply | H2Drop | H2Reset]]


class H2SimServer:
    def __init__(
        self, handler: Handler, ca: TestCA | None, *, max_concurrent_streams: int = 1000
    ) -> None:
        self.handler = handler
        self.ca = ca
        self.max_concurrent_streams = max_concurrent_streams
        self.requests: list[H2Request] = []
        self.connections_accepted = 0
        self.max_streams_seen = 0
        self.pings_received = 0
        self.goaway_after_streams: int | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> str:
        loop = asyncio.get_running_loop()
        ssl_context = self.ca.server_context(["h2"]) if self.ca else None
        self._server = await loop.create_server(
            lambda: _ServerConnection(self, next(self._ids)), "127.0.0.1", port, ssl=ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop_connections()
        for _ in range(3):  # lets aborted transports and cancelled handlers finish
            await asyncio.sleep(0)

    def goaway_after(self, n_streams: int | None) -> None:
        """From now on every connection sends GOAWAY after its `n_streams`-th request."""
        self.goaway_after_streams = n_streams

    def drop_connections(self) -> None:
        for connection in list(self._connections):
            connection.abort()

    def stall_connections(self) -> None:
        """Stop reading from every open connection: a peer that hangs without closing."""
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.pause_reading()

    @property
    def open_connections(self) -> int:
        return len(self._connections)


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: H2SimServer, connection_id: int) -> None:
        self.server = server
        self.id = connection_id
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, tuple[dict[str, str], list[bytes]]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.accepted = 0
        self.last_stream_id: int | None = None  # set once GOAWAY went out
        self.window_open = asyncio.Event()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections_accepted += 1
        self.server._connections.add(self)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams
            },
        )
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.abort()
            return
        for event in events:
            self.handle(event)
        self.flush()

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id or 0
            if stream_id in self.pending:
                self.pending[stream_id][1].append(event.data or b"")
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.on_complete(event.stream_id or 0)
        elif isinstance(event, h2.events.StreamReset):
            self.pending.pop(event.stream_id or 0, None)
            task = self.tasks.pop(event.stream_id or 0, None)
            if task is not None:
                task.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_open.set()
        elif isinstance(event, h2.events.PingReceived):
            self.server.pings_received += 1  # h2 has already queued the ACK
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id or 0
        if self.last_stream_id is not None and stream_id > self.last_stream_id:
            return  # after GOAWAY: ignored, as RFC 9113 §6.8 allows
        headers: list[tuple[str, str]] = event.headers or []  # type: ignore[assignment]
        self.pending[stream_id] = (dict(headers), [])
        self.accepted += 1
        limit = self.server.goaway_after_streams
        if limit is not None and self.accepted >= limit:
            self.send_goaway(stream_id)

    def on_complete(self, stream_id: int) -> None:
        entry = self.pending.pop(stream_id, None)
        if entry is None:
            return
        headers, chunks = entry
        request = H2Request(
            method=headers.get(":method", ""),
            path=headers.get(":path", ""),
            headers={k: v for k, v in headers.items() if not k.startswith(":")},
            body=b"".join(chunks),
            connection_id=self.id,
            stream_id=stream_id,
        )
        self.server.requests.append(request)
        self.tasks[stream_id] = asyncio.get_running_loop().create_task(
            self.answer(stream_id, request)
        )
        self.server.max_streams_seen = max(self.server.max_streams_seen, len(self.tasks))

    async def answer(self, stream_id: int, request: H2Request) -> None:
        try:
            reply = await self.server.handler(request)
            if isinstance(reply, H2Drop):
                self.abort()
                return
            if isinstance(reply, H2Reset):
                self.h2.reset_stream(stream_id, reply.error_code)
                self.flush()
                return
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if self.closed:
                return
            headers = [(":status", str(reply.status)), *reply.headers]
            headers.append(("content-length", str(len(reply.body))))
            self.h2.send_headers(stream_id, headers, end_stream=not reply.body)
            await self.send_body(stream_id, reply.body)
            self.flush()
        except h2.exceptions.ProtocolError:
            pass  # the client reset the stream or went away meanwhile
        except Exception:  # a simulator bug: answer like a broken server, and say why
            log.exception("simulator handler failed for %s", request.path)
            self.abort()
        finally:
            self.tasks.pop(stream_id, None)
            if self.last_stream_id is not None and not self.tasks and not self.pending:
                self.close()

    async def send_body(self, stream_id: int, body: bytes) -> None:
        sent = 0
        while sent < len(body) and not self.closed:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                self.flush()
                self.window_open.clear()
                await self.window_open.wait()
                continue
            chunk = body[sent : sent + window]
            sent += len(chunk)
            self.h2.send_data(stream_id, chunk, end_stream=sent == len(body))

    def send_goaway(self, last_stream_id: int) -> None:
        # written by hand: h2 would refuse to answer the streams it names after its own GOAWAY
        self.last_stream_id = last_stream_id
        self.flush()
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0)
        if self.transport is not None:
            self.transport.write(frame.serialize())

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.flush()
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.window_open.set()
        self.server._connections.discard(self)
        for task in self.tasks.values():
            task.cancel()

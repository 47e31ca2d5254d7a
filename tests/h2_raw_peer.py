"""A scripted HTTP/2 server for the client's tests: raw frames, written exactly.

The HTTP/2 simulator runs h2's state machine, which never pads, splits header blocks, sends
unknown frame types or breaks the protocol. `RawPeer` speaks raw frames (hyperframe + hpack,
an implementation independent of the client's) so each test case can be written exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    SettingsFrame,
)

from push_relay.testing.ca import TestCA

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
        self.paths: list[str] = []  # every request's :path, in order
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.index = len(peer.connections)  # 0 for the first connection the peer accepted

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
                        self.paths.append(requests[sid][":path"])
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

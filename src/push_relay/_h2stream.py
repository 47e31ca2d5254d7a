"""One request on a client HTTP/2 connection: its future, its response so far, its windows."""

from __future__ import annotations

import asyncio

from push_relay import _h2frames as f
from push_relay._h2errors import H2Response


class Stream:
    __slots__ = (
        "body",
        "chunks",
        "future",
        "headers",
        "id",
        "received",
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
        self.received = 0  # response body bytes, bounded by `f.MAX_BODY`
        self.body: bytes | None = None  # request body still (partly) unsent
        self.sent = 0
        self.send_window = window
        self.recv_window = f.RECEIVE_WINDOW
        self.timer: asyncio.TimerHandle | None = None

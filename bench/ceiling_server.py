"""The Python ceiling: the least a uvloop + httptools HTTP/1.1 server can do per request.

It parses each request and answers `204 No Content` without routing, validation or any
upstream call, so its throughput bounds what any Python relay on this machine can reach.
With `--uvicorn` it serves a three-line ASGI app through uvicorn instead (the relay's server
stack, minus the relay).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, cast

import httptools
import uvloop

RESPONSE = b"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\r\n"


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(RESPONSE)


async def _serve_raw(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def _asgi_204(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvicorn", action="store_true", help="serve through uvicorn")
    args = parser.parse_args()
    if args.uvicorn:
        import uvicorn

        uvicorn.run(
            _asgi_204,
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
        )
    else:
        uvloop.run(_serve_raw(args.port))


if __name__ == "__main__":
    main()

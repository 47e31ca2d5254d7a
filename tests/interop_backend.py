"""The HTTP/1.1 back end behind the interop servers: answers like APNs and FCM, echoes a digest.

Run as its own process (`python interop_backend.py PORT`) so that it does not share the test's
event loop or GIL with the client under test. Every answer carries `x-body-length` and
`x-body-sha256` of the request body as the back end received it (after the front server
re-framed it, often as chunked), which is how the tests prove a large body arrived intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid

FCM_PATH = "/v1/projects/p/messages:send"
FCM_ANSWER = json.dumps({"name": "projects/p/messages/1"}).encode()
APNS_PREFIX = "/3/device/"


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers, if any
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return await reader.readexactly(int(headers.get("content-length", "0")))


def _answer(method: str, path: str, body: bytes) -> bytes:
    extra = f"x-body-length: {len(body)}\r\nx-body-sha256: {hashlib.sha256(body).hexdigest()}\r\n"
    if method == "POST" and path.startswith(APNS_PREFIX):
        head = f"HTTP/1.1 200 OK\r\napns-id: {uuid.uuid4()}\r\n{extra}content-length: 0\r\n\r\n"
        return head.encode()
    if method == "POST" and path == FCM_PATH:
        head = (
            f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(FCM_ANSWER)}\r\n\r\n"
        )
        return head.encode() + FCM_ANSWER
    return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while request_line := await reader.readline():
            method, path, _ = request_line.decode("latin-1").split(" ", 2)
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await _read_body(reader, headers)
            writer.write(_answer(method, path, body))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass  # the front server closed or reset this keep-alive connection
    finally:
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1])))

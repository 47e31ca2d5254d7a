"""Bounded reading of HTTP/1.1 upstream answers (push services, token endpoints, InfluxDB).

Every answer the relay expects is a few hundred bytes; a larger one is refused as a transport
failure, so a broken or hostile upstream cannot make a worker buffer an unbounded body.
"""

from __future__ import annotations

import aiohttp

from push_relay.http2 import MAX_RESPONSE_BYTES


class ResponseTooLarge(aiohttp.ClientPayloadError):
    """The upstream's answer exceeded `MAX_RESPONSE_BYTES`; a transport error like any other."""


async def read_body(response: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """The whole body of `response`, or `ResponseTooLarge` once it passes `limit` bytes."""
    length = response.content_length
    if length is not None and length > limit:
        raise ResponseTooLarge(f"answer of {length} bytes exceeds {limit}")
    if length is not None and "Content-Encoding" not in response.headers:
        return await response.read()  # the common case: a small, declared, plain body
    # chunked or compressed: count what is decoded, and stop reading one byte past the bound
    body = bytearray()
    while chunk := await response.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise ResponseTooLarge(f"answer exceeds {limit} bytes")
    return bytes(body)

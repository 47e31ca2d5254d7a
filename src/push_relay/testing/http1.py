"""Base for HTTP/1.1 simulators (OAuth token endpoints, HMS, the Threema Gateway, ...)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Handler

from push_relay.testing.ca import TestCA

log = logging.getLogger("push_relay.simulator")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes


class HttpSimulator:
    """An aiohttp server on 127.0.0.1 (TLS when given a CA) that records every request.

    Subclasses add routes in `routes()`; handlers call `await self.record(request)` first.
    `answer_padding` appends that many spaces to every answer's body (still valid JSON), and
    `answer_chunked` sends answers without a Content-Length, as a broken or hostile service
    might.
    """

    def __init__(self, ca: TestCA | None = None) -> None:
        self.ca = ca
        self.answer_padding = 0
        self.answer_chunked = False
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        scheme = "https" if self.ca else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def record(self, request: web.Request) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        self.requests.append(recorded)
        return recorded

    def requests_to(self, path_part: str) -> list[RecordedRequest]:
        return [r for r in self.requests if path_part in r.path]

    async def start(self, port: int = 0) -> str:
        app = web.Application(client_max_size=1 << 20, middlewares=[self._shape_answer])
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        ssl_context = self.ca.server_context() if self.ca else None
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        # the runner's public view of its bound sockets; under uvloop `site._server` is not
        # an `asyncio.Server`
        self.port = self._runner.addresses[0][1]
        return self.url

    @web.middleware
    async def _shape_answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response):
            if self.answer_padding:
                body = response.body if isinstance(response.body, bytes) else b""
                response.body = body + b" " * self.answer_padding
            if self.answer_chunked:
                response.enable_chunked_encoding()
        return response

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HttpSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

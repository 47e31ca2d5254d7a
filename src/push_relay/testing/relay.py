"""Run the real relay in-process on a loopback port, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from push_relay.app import PushRelayApp
from push_relay.backends import Clients
from push_relay.config import Config
from push_relay.runtime import Runtime
from push_relay.server import EmbeddedServer, serve_async

FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    text: str


@dataclass
class RunningRelay:
    app: PushRelayApp
    server: EmbeddedServer
    url: str
    session: aiohttp.ClientSession

    @property
    def runtime(self) -> Runtime:
        assert self.app.runtime is not None
        return self.app.runtime

    async def push(
        self,
        params: Mapping[str, str] | str | bytes,
        *,
        content_type: str | None = FORM,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """POST /push with a form body (a mapping is urlencoded in order)."""
        body = urlencode(params) if isinstance(params, Mapping) else params
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return await self.request("POST", "/push", body=body, headers=all_headers)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: str | bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        data = body.encode() if isinstance(body, str) else body
        skip = {"Content-Type"} if headers is None or "Content-Type" not in headers else set()
        async with self.session.request(
            method,
            self.url + path,
            data=data,
            headers=dict(headers or {}),
            skip_auto_headers=skip,
        ) as response:
            text = await response.text(errors="replace")
            return Answer(
                response.status, {k.lower(): v for k, v in response.headers.items()}, text
            )


# what the tests' `start_relay` fixture is: `async with start_relay(toml, clients=...) as relay:`
RelayStarter = Callable[..., AbstractAsyncContextManager[RunningRelay]]


@asynccontextmanager
async def running_relay(
    config: Config, clients: Clients | None = None
) -> AsyncIterator[RunningRelay]:
    """Serve `config` on 127.0.0.1 (a free port) until the block exits, then shut down."""

    async def start_runtime(cfg: Config) -> Runtime:
        return await Runtime.start(cfg, clients)

    app = PushRelayApp(config, runtime_factory=start_runtime)
    server = await serve_async(app, "127.0.0.1", 0)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        try:
            yield RunningRelay(app, server, f"http://127.0.0.1:{port}", session)
        finally:
            server.should_exit = True
            if server.task is not None:
                await server.task

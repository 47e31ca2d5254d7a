"""Serving the ASGI app with uvicorn (httptools parser, uvloop event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Generator

import uvicorn

from push_relay.app import PushRelayApp
from push_relay.config import Config

log = logging.getLogger("push_relay")


class ListenAddressError(ValueError):
    pass


def parse_listen(value: str) -> tuple[str, int]:
    """`IP:PORT` (IPv6 in brackets: `[::1]:3000`) into host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenAddressError(f"invalid listen address {value!r}: expected IP:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ListenAddressError(
                f"invalid listen address {value!r}: {host!r} is not an IP address"
            ) from None
    return host, int(port_text)


def uvicorn_config(app: PushRelayApp, host: str, port: int) -> uvicorn.Config:
    server = app.config.server
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=max(5, int(server.header_timeout_secs)),
        timeout_graceful_shutdown=int(server.shutdown_grace_secs) + 1,
    )


def serve(config: Config, host: str, port: int) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the process exit status."""
    import uvloop

    app = PushRelayApp(config)
    server = uvicorn.Server(uvicorn_config(app, host, port))
    uvloop.run(server.serve())
    return 0 if server.started else 1


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host (sandbox, tests)."""

    task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_async(app: PushRelayApp, host: str, port: int) -> EmbeddedServer:
    """Start serving in the running loop; stop with `server.should_exit = True`."""
    server = EmbeddedServer(uvicorn_config(app, host, port))
    task = asyncio.get_running_loop().create_task(server.serve())
    server.task = task
    # uvicorn offers no start-up event; poll, and surface a failed start-up (port taken)
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"cannot listen on {host}:{port}")
        await asyncio.sleep(0.01)
    return server

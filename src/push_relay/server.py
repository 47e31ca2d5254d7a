"""Serving the ASGI app with uvicorn (httptools parser, uvloop event loop).

Lifecycle of one worker: start-up (lifespan builds the runtime) → serve → on SIGTERM/SIGINT:
`/ready` turns 503, the listening socket closes, requests in flight (retry waits included) finish
and are answered within `[server] shutdown_grace_secs`, the runtime stops (InfluxDB flushed,
connections closed), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Generator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from push_relay.address import ListenAddressError, parse_listen
from push_relay.app import PushRelayApp

__all__ = ["EmbeddedServer", "ListenAddressError", "RelayServer", "parse_listen", "serve"]

log = logging.getLogger("push_relay")

_TIMEOUT_BODY = b"Request header timed out"
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for a request's headers.

    uvicorn only times out idle keep-alive connections; a client that opens a connection and
    never sends (or trickles) its headers would hold it for ever. The clock starts when the
    connection opens or a request's first byte arrives, and stops when the headers are
    complete; the body has its own timeout in the app.
    """

    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._request_begun = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._request_begun:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def header_timeout_protocol(timeout: float) -> type[HeaderTimeoutProtocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": timeout})


def uvicorn_config(app: PushRelayApp, host: str, port: int) -> uvicorn.Config:
    server = app.config.server
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=header_timeout_protocol(server.header_timeout_secs),
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # nothing reads the client address; skip X-Forwarded-* per request
        timeout_keep_alive=5,
        timeout_graceful_shutdown=max(1, round(server.shutdown_grace_secs)),
    )


class RelayServer(uvicorn.Server):
    """A uvicorn server that drains on SIGTERM/SIGINT and then returns normally (exit 0).

    uvicorn's own handling re-raises the signal after shutdown, so the process would die of
    SIGTERM instead of exiting 0; a second SIGINT still forces the exit.
    """

    def __init__(self, config: uvicorn.Config, app: PushRelayApp) -> None:
        super().__init__(config)
        self.app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything built so far (modules, config, backends) lives for the whole process:
        # keep it out of the collector's full passes, which otherwise stall the loop for
        # 15-20 ms under load (measured with bench/run.py).
        gc.collect()
        gc.freeze()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        log.info("received %s: draining", sig.name)
        self.app.start_draining()
        self.should_exit = True


def serve(app: PushRelayApp, host: str, port: int, sock: socket.socket | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the process exit status.

    `sock` is a listening socket bound by the supervisor (`--workers N`).
    """
    import uvloop

    server = RelayServer(uvicorn_config(app, host, port), app)
    try:
        uvloop.run(server.serve(sockets=None if sock is None else [sock]))
    except SystemExit:  # uvicorn's way of saying the lifespan start-up failed
        return 1
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

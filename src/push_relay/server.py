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


def _timeout_answer(text: bytes) -> bytes:
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(text), text)
    )


HEADER_TIMEOUT_ANSWER = _timeout_answer(b"Request header timed out")
BODY_TIMEOUT_ANSWER = _timeout_answer(b"Request body timed out")


class SlowClientProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus deadlines for a request's headers and its body.

    uvicorn only times out idle keep-alive connections; a client that opens a connection and
    never sends (or trickles) its headers or body would hold it for ever. The header clock
    starts when the connection opens or a request's first byte arrives; when the headers are
    complete the body clock starts; when the body is complete the request is the app's.
    One timer serves both phases (it is moved lazily), so a request that arrives in one
    packet costs one timer, not two plus a timeout in the app.
    """

    header_timeout = 10.0
    body_timeout = 10.0
    _timer: asyncio.TimerHandle | None = None
    _deadline = 0.0
    _answer = b""  # what a timed-out request is told; empty: nothing begun, just close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._answer = HEADER_TIMEOUT_ANSWER
        if self._timer is None:
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._answer = BODY_TIMEOUT_ANSWER
        self._deadline = self.loop.time() + self.body_timeout
        if self._timer is None or self._timer.when() > self._deadline:
            self._disarm()
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._answer = b""
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, timeout: float) -> None:
        self._deadline = self.loop.time() + timeout
        self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        remaining = self._deadline - self.loop.time()
        if remaining > 0:  # the body phase moved the deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._timer = None
        if self.transport.is_closing():
            return
        if self._answer:
            self.transport.write(self._answer)
        self.transport.close()


def slow_client_protocol(header_timeout: float, body_timeout: float) -> type[SlowClientProtocol]:
    return type(
        "SlowClientProtocol",
        (SlowClientProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


def uvicorn_config(app: PushRelayApp, host: str, port: int) -> uvicorn.Config:
    server = app.config.server
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=slow_client_protocol(server.header_timeout_secs, server.body_timeout_secs),
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # the client address matters only to [limits], which trusts X-Forwarded-For from its
        # own trusted_proxies alone; skip uvicorn's per-request X-Forwarded-* handling
        proxy_headers=False,
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

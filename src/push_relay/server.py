"""Serving the ASGI app with uvicorn (httptools parser, uvloop event loop).

Lifecycle of one worker: start-up (lifespan builds the runtime) → serve → on SIGTERM/SIGINT:
`/ready` turns 503, the listening socket closes, requests in flight (retry waits included) finish
and are answered within `[server] shutdown_grace_secs`, the runtime stops (InfluxDB flushed,
connections closed), and the process exits 0. On SIGHUP the config is reloaded
(`push_relay.reload`); a worker of `--workers N` leaves SIGHUP to its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable, Generator

import uvicorn

from push_relay.address import ListenAddressError, listening_sockets, parse_listen
from push_relay.app import PushRelayApp
from push_relay.protocol import SlowClientProtocol, slow_client_protocol
from push_relay.reload import Reloader
from push_relay.rollout import RETIRE_SIGNAL

__all__ = ["EmbeddedServer", "ListenAddressError", "RelayServer", "parse_listen", "serve"]

log = logging.getLogger("push_relay")


# a worker replaced by a reload: how long a connection between two requests stays open for
# the request its client may be sending right now
RETIRE_IDLE_SECS = 1.0


def uvicorn_config(app: PushRelayApp, host: str, port: int) -> uvicorn.Config:
    server = app.config.server
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=slow_client_protocol(server, app.admin, app),
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
    SIGTERM instead of exiting 0; a second SIGINT still forces the exit. `RETIRE_SIGNAL`
    drains as SIGTERM does, but keeps connections between two requests open a moment for a
    request already on its way (a reload's successor serves the socket).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        app: PushRelayApp,
        *,
        reloader: Reloader | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.app = app
        self.reloader = reloader
        self.on_started = on_started
        self.retiring = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, RETIRE_SIGNAL):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self.reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self.reloader.request)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, RETIRE_SIGNAL, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.retiring:
            for connection in self.server_state.connections:
                if isinstance(connection, SlowClientProtocol):
                    connection.keep_idle_for(RETIRE_IDLE_SECS)
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()
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
        self.retiring = self.retiring or sig == RETIRE_SIGNAL
        self.app.start_draining()
        self.should_exit = True


def serve(
    app: PushRelayApp,
    host: str,
    port: int,
    sock: socket.socket | None = None,
    admin_sock: socket.socket | None = None,
    *,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the process exit status.

    `sock` and `admin_sock` are listening sockets bound by the supervisor (`--workers N`),
    which also handles SIGHUP and wants `on_started` called once the worker serves; alone,
    the process reloads its config on SIGHUP.
    """
    import uvloop

    try:
        sockets, app.admin = listening_sockets(app.server, host, port, sock, admin_sock)
    except OSError as err:  # `bind` names the address
        log.error("%s", err.strerror or err)
        return 1
    reloader = Reloader(app) if sock is None else None
    config = uvicorn_config(app, host, port)
    server = RelayServer(config, app, reloader=reloader, on_started=on_started)
    try:
        uvloop.run(server.serve(sockets=sockets))
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
    sockets, app.admin = listening_sockets(app.server, host, port)
    server = EmbeddedServer(uvicorn_config(app, host, port))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=sockets))
    server.task = task
    # uvicorn offers no start-up event; poll, and surface a failed start-up (port taken)
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"cannot listen on {host}:{port}")
        await asyncio.sleep(0.01)
    return server

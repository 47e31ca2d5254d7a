"""The relay as a real child process (`push-relay -c FILE -l ADDR ...`), and a slow gateway.

For tests of what only a real process shows: signals, exit status, worker processes, logs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from push_relay.testing.ca import TestCA
from push_relay.testing.gateway_sim import GatewaySimulator, write_key_file
from push_relay.testing.ports import free_port

GATEWAY_IDENTITY = "*3MAPUSH"
RECIPIENT = "ECHOECHO"


@dataclass
class RelayProcess:
    """A running `push-relay`; its stderr (the log) goes to `log_file`."""

    process: subprocess.Popen[bytes]
    url: str
    log_file: Path

    @classmethod
    async def start(
        cls, config: Path, *args: str, env: dict[str, str] | None = None
    ) -> RelayProcess:
        address = f"127.0.0.1:{free_port()}"
        log_file = config.with_suffix(".log")
        # spawning returns at once; the child runs on its own while we await its health
        with log_file.open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "push_relay", "-c", str(config), "-l", address, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        relay = cls(process, f"http://{address}", log_file)
        await relay._wait_healthy()
        return relay

    async def _wait_healthy(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"push-relay exited early:\n{self.logs()}")
                try:
                    async with session.get(self.url + "/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"push-relay did not become healthy:\n{self.logs()}")

    def send_signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """The exit status (negative: killed by that signal)."""
        return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def stop(self) -> int:
        """SIGTERM and wait for the exit status; kill only if it does not come."""
        if self.process.poll() is None:
            self.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout=30)
        finally:
            self.kill()

    def kill(self) -> None:
        """Last resort after a failed test: this process only, by its PID."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class SlowGateway(GatewaySimulator):
    """The gateway simulator answering `send_e2e` only after `delay` seconds, or, between
    `hold()` and `release()`, not before `release()`: tests that need pushes in flight hold
    them there instead of hoping a delay is long enough."""

    def __init__(
        self, ca: TestCA, *, delay: float, identity: str, secret: str, public_key: bytes
    ) -> None:
        super().__init__(ca, identity=identity, secret=secret, identity_public_key=public_key)
        self.delay = delay
        self.arrived = 0  # requests received, answered or not
        self.keep_alive = True
        self._arrival = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()

    def hold(self) -> None:
        """From now on, requests are not answered until `release()`."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def wait_arrived(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Until `count` requests have arrived (and are being delayed)."""
        async with asyncio.timeout(timeout):
            while self.arrived < count:
                self._arrival.clear()
                await self._arrival.wait()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/send_e2e", self._slow_send)]

    async def _slow_send(self, request: web.Request) -> web.Response:
        self.arrived += 1
        self._arrival.set()
        await self._released.wait()
        await asyncio.sleep(self.delay)
        response = await self._send_e2e(request)
        if not self.keep_alive:
            response.force_close()
        return response


@dataclass
class GatewayRig:
    """A gateway simulator, the relay's `[threema_gateway]` section for it, and a recipient."""

    simulator: SlowGateway
    section: str
    recipient_key: str
    secret: str = field(repr=False)

    def push(self, session: str = "websession", identity: str = RECIPIENT) -> dict[str, str]:
        return {
            "type": "threema-gateway",
            "identity": identity,
            "public_key": self.recipient_key,
            "session": session,
            "version": "3",
        }


async def start_gateway(ca: TestCA, workdir: Path, *, delay: float = 0.0) -> GatewayRig:
    key_file = workdir / "gateway.key"
    key = write_key_file(key_file)
    secret = "gateway-secret-" + os.urandom(8).hex()
    simulator = SlowGateway(
        ca,
        delay=delay,
        identity=GATEWAY_IDENTITY,
        secret=secret,
        public_key=bytes(key.public_key),
    )
    recipient_key = simulator.add_recipient(RECIPIENT)
    await simulator.start()
    return GatewayRig(simulator, simulator.config_toml(key_file), recipient_key, secret)

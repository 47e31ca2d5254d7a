"""Shared fixtures: a test CA trusted through SSL_CERT_FILE, a running relay, a gateway, and
every simulated push service with a relay in front of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from push_relay import config, sandbox
from push_relay.backends import Clients
from push_relay.sandbox import SandboxPart
from push_relay.testing.ca import TestCA
from push_relay.testing.process import GatewayRig, start_gateway
from push_relay.testing.redis_server import RedisServer
from push_relay.testing.relay import RelayStarter, RunningRelay, running_relay


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(autouse=True)
def trust_test_ca(test_ca: TestCA, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The relay's outgoing TLS trusts the simulators' CA, as an operator would configure."""
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.ca_file))
    yield


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def start_relay(write_config: Callable[[str], Path]) -> RelayStarter:
    """`async with start_relay(toml_text, clients=...) as relay:` runs the real server."""

    def start(
        text: str = "[server]\n", clients: Clients | None = None
    ) -> AbstractAsyncContextManager[RunningRelay]:
        return running_relay(config.load(write_config(text)), clients)

    return start


@pytest.fixture
async def relay(start_relay: RelayStarter) -> AsyncIterator[RunningRelay]:
    """A relay with no backend configured."""
    async with start_relay() as running:
        yield running


@pytest.fixture
async def gateway(test_ca: TestCA, tmp_path: Path) -> AsyncIterator[GatewayRig]:
    """A Threema Gateway simulator (answering at once) and the relay's section for it."""
    rig = await start_gateway(test_ca, tmp_path)
    yield rig
    await rig.simulator.stop()


@pytest.fixture
async def simulated_services(test_ca: TestCA, tmp_path: Path) -> AsyncIterator[list[SandboxPart]]:
    """Every push service that has a simulator, set up as `push-relay sandbox` does."""
    parts: list[SandboxPart] = []
    try:
        for start in sandbox.starters():
            parts.append(await start(test_ca, tmp_path))
        yield parts
    finally:
        for part in parts:
            await part.stop()


@pytest.fixture
async def relay_with_services(
    start_relay: RelayStarter, simulated_services: list[SandboxPart]
) -> AsyncIterator[tuple[RunningRelay, list[dict[str, str]]]]:
    """A relay configured for every simulated service, and each service's examples as fields."""
    toml = "".join(part.config_toml for part in simulated_services) or "[server]\n"
    examples = [
        dict(parse_qsl(body, keep_blank_values=True))
        for part in simulated_services
        for body in part.delivered
    ]
    async with start_relay(toml, clients=Clients(backoff_base=0.001)) as relay:
        yield relay, examples


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, nothing persisted, stopped by PID."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()

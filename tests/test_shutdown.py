"""Graceful shutdown: SIGTERM stops accepting, answers every push in flight, exits 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from helpers import wait_until
from push_relay.testing.ca import TestCA
from push_relay.testing.process import GatewayRig, RelayProcess, start_gateway
from push_relay.testing.relay import RelayStarter

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
IN_FLIGHT = 20


@pytest.fixture
async def slow_gateway(test_ca: TestCA, tmp_path: Path) -> AsyncIterator[GatewayRig]:
    """A gateway that holds every push until the test releases it."""
    rig = await start_gateway(test_ca, tmp_path)
    rig.simulator.hold()
    yield rig
    rig.simulator.release()
    await rig.simulator.stop()


async def refuses_connections(url: str) -> bool:
    """Whether the relay has stopped listening: a connection is refused, or reset when it
    reached the backlog of the socket being closed."""
    address = urlsplit(url)
    try:
        _, writer = await asyncio.open_connection(address.hostname, address.port)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    writer.close()
    return False


async def push(session: aiohttp.ClientSession, url: str, form: dict[str, str]) -> int:
    async with session.post(url + "/push", data=form, headers=FORM) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_signal_during_slow_pushes_answers_all_of_them_and_exits_0(
    slow_gateway: GatewayRig, tmp_path: Path, sig: signal.Signals
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(f"[server]\nshutdown_grace_secs = 15\n\n{slow_gateway.section}")
    relay = await RelayProcess.start(config)
    try:
        async with aiohttp.ClientSession() as session:
            pushes = [
                asyncio.create_task(push(session, relay.url, slow_gateway.push(f"session{i}")))
                for i in range(IN_FLIGHT)
            ]
            await slow_gateway.simulator.wait_arrived(IN_FLIGHT)
            relay.send_signal(sig)
            await wait_until(lambda: refuses_connections(relay.url), "stopped accepting")
            with pytest.raises(aiohttp.ClientConnectionError):
                await push(session, relay.url, slow_gateway.push("too-late"))

            slow_gateway.simulator.release()
            statuses = await asyncio.gather(*pushes)

        assert [204] * IN_FLIGHT == statuses
        assert IN_FLIGHT == len(slow_gateway.simulator.deliveries)
        assert 0 == await relay.wait()
        assert "Traceback" not in relay.logs()
    finally:
        relay.kill()


async def test_pushes_slower_than_the_grace_period_get_503_and_do_not_hold_the_exit(
    test_ca: TestCA, tmp_path: Path
) -> None:
    rig = await start_gateway(test_ca, tmp_path)
    rig.simulator.hold()  # the push never gets its answer while the relay shuts down
    config = tmp_path / "relay.toml"
    config.write_text(f"[server]\nshutdown_grace_secs = 1\n\n{rig.section}")
    relay = await RelayProcess.start(config)
    try:
        async with aiohttp.ClientSession() as session:
            stuck = asyncio.create_task(push(session, relay.url, rig.push()))
            await rig.simulator.wait_arrived(1)
            relay.send_signal(signal.SIGTERM)
            assert 0 == await relay.wait(timeout=30)
            assert 503 == await stuck
    finally:
        relay.kill()
        rig.simulator.release()
        await rig.simulator.stop()


async def test_embedded_server_stop_lets_in_flight_pushes_finish(
    test_ca: TestCA, tmp_path: Path, start_relay: RelayStarter
) -> None:
    """The in-process lifecycle (tests, sandbox) drains the same way."""
    rig = await start_gateway(test_ca, tmp_path)
    rig.simulator.hold()
    try:
        async with start_relay(rig.section) as relay:
            pushes = [asyncio.create_task(relay.push(rig.push(f"s{i}"))) for i in range(5)]
            await rig.simulator.wait_arrived(5)
            relay.server.should_exit = True
            await wait_until(lambda: refuses_connections(relay.url), "stopped accepting")
            rig.simulator.release()
            answers = await asyncio.gather(*pushes)
            assert [204] * 5 == [answer.status for answer in answers]
        assert relay.app.draining
    finally:
        await rig.simulator.stop()

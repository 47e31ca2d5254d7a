"""Graceful shutdown: SIGTERM stops accepting, answers every push in flight, exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from push_relay.testing.ca import TestCA
from push_relay.testing.process import GatewayRig, RelayProcess, start_gateway
from push_relay.testing.relay import RelayStarter

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
IN_FLIGHT = 20


@pytest.fixture
async def slow_gateway(test_ca: TestCA, tmp_path: Path) -> AsyncIterator[GatewayRig]:
    rig = await start_gateway(test_ca, tmp_path, delay=1.0)
    yield rig
    await rig.simulator.stop()


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
            await asyncio.sleep(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):
                await push(session, relay.url, slow_gateway.push("too-late"))

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
    rig = await start_gateway(test_ca, tmp_path, delay=4.0)
    config = tmp_path / "relay.toml"
    config.write_text(f"[server]\nshutdown_grace_secs = 1\n\n{rig.section}")
    relay = await RelayProcess.start(config)
    try:
        async with aiohttp.ClientSession() as session:
            stuck = asyncio.create_task(push(session, relay.url, rig.push()))
            await rig.simulator.wait_arrived(1)
            started = time.monotonic()
            relay.send_signal(signal.SIGTERM)
            assert 0 == await relay.wait(timeout=15)
            assert time.monotonic() - started < 3.5
            assert 503 == await stuck
    finally:
        relay.kill()
        await rig.simulator.stop()


async def test_embedded_server_stop_lets_in_flight_pushes_finish(
    test_ca: TestCA, tmp_path: Path, start_relay: RelayStarter
) -> None:
    """The in-process lifecycle (tests, sandbox) drains the same way."""
    rig = await start_gateway(test_ca, tmp_path, delay=0.5)
    try:
        async with start_relay(rig.section) as relay:
            pushes = [asyncio.create_task(relay.push(rig.push(f"s{i}"))) for i in range(5)]
            await rig.simulator.wait_arrived(5)
            relay.server.should_exit = True
            answers = await asyncio.gather(*pushes)
            assert [204] * 5 == [answer.status for answer in answers]
        assert relay.app.draining
    finally:
        await rig.simulator.stop()

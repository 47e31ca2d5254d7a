"""Answers of HTTP/1.1 upstreams are bounded: past 64 KiB the request fails as a transport error.

Each service's simulator pads its answers (still valid JSON) or sends them chunked; below the
bound everything works, above it the relay answers as for a lost connection and stays healthy.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from push_relay.backends import Clients
from push_relay.backends._body import MAX_RESPONSE_BYTES, ResponseTooLarge, read_body
from push_relay.testing.ca import TestCA
from push_relay.testing.fcm_sim import FcmSimulator, device_token
from push_relay.testing.gateway_sim import GatewaySimulator, write_key_file
from push_relay.testing.hms_sim import HmsSimulator
from push_relay.testing.http1 import HttpSimulator
from push_relay.testing.relay import RelayStarter

NOT_OK = "Push not successful"
HMS_APP = "104455555"
HMS_SECRET = "hms-secret"
OVER = MAX_RESPONSE_BYTES + 1  # padding that pushes any answer past the bound


@pytest.fixture
async def hms(test_ca: TestCA) -> AsyncIterator[HmsSimulator]:
    sim = HmsSimulator(test_ca)
    sim.add_app(HMS_APP, HMS_SECRET)
    await sim.start()
    yield sim
    await sim.stop()


def hms_push() -> dict[str, str]:
    return {"type": "hms", "appid": HMS_APP, "token": "tok", "session": "s", "version": "3"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_hms_answers_up_to_the_bound_work(
    start_relay: RelayStarter, hms: HmsSimulator, chunked: bool
) -> None:
    hms.answer_padding = MAX_RESPONSE_BYTES - 200  # every answer body is < 200 bytes
    hms.answer_chunked = chunked
    async with start_relay(hms.config_toml(HMS_APP)) as relay:
        assert 204 == (await relay.push(hms_push())).status


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_hms_push_answer_past_the_bound_is_a_transport_error(
    start_relay: RelayStarter, hms: HmsSimulator, chunked: bool
) -> None:
    async with start_relay(hms.config_toml(HMS_APP)) as relay:
        assert 204 == (await relay.push(hms_push())).status  # the token is now cached
        hms.answer_padding, hms.answer_chunked = OVER, chunked
        answer = await relay.push(hms_push())
        assert (400, NOT_OK) == (answer.status, answer.text)  # a failed send, as §11 says
        hms.answer_padding = 0
        assert 204 == (await relay.push(hms_push())).status


async def test_hms_token_answer_past_the_bound_is_500(
    start_relay: RelayStarter, hms: HmsSimulator
) -> None:
    hms.answer_padding = OVER
    async with start_relay(hms.config_toml(HMS_APP)) as relay:
        answer = await relay.push(hms_push())
    assert (500, NOT_OK) == (answer.status, answer.text)
    assert [] == hms.requests_to("messages:send")


async def test_fcm_token_answer_past_the_bound_is_500(
    start_relay: RelayStarter, test_ca: TestCA
) -> None:
    sim = FcmSimulator(test_ca)
    await sim.start()
    try:
        sim.oauth.answer_padding = OVER
        async with start_relay(sim.config_toml(max_retries=0)) as relay:
            push = {"type": "fcm", "token": device_token("one"), "session": "s", "version": "3"}
            refused = await relay.push(push)
            sim.oauth.answer_padding = 0
            delivered = await relay.push(push)
    finally:
        await sim.stop()
    assert (500, NOT_OK) == (refused.status, refused.text)
    assert 204 == delivered.status


async def test_gateway_answer_past_the_bound_is_a_transport_error(
    start_relay: RelayStarter, test_ca: TestCA, tmp_path: Path
) -> None:
    key_file = tmp_path / "gateway.key"
    key = write_key_file(key_file)
    sim = GatewaySimulator(
        test_ca, identity="*3MAPUSH", secret="gw", identity_public_key=bytes(key.public_key)
    )
    public_key = sim.add_recipient("ECHOECHO")
    await sim.start()
    push = {
        "type": "threema-gateway",
        "identity": "ECHOECHO",
        "public_key": public_key,
        "session": "s",
        "version": "3",
    }
    try:
        async with start_relay(sim.config_toml(key_file)) as relay:
            sim.answer_padding = OVER
            refused = await relay.push(push)
            sim.answer_padding = 0
            delivered = await relay.push(push)
    finally:
        await sim.stop()
    assert (400, NOT_OK) == (refused.status, refused.text)
    assert 204 == delivered.status


class _Bomb(HttpSimulator):
    """Answers 10 MiB of zeros, gzip-compressed to a few KiB."""

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/bomb", self._bomb)]

    async def _bomb(self, request: web.Request) -> web.Response:
        body = gzip.compress(bytes(10 << 20))
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def test_a_compressed_answer_is_bounded_after_decoding() -> None:
    """InfluxDB and every other HTTP/1.1 upstream read through the same bounded reader."""
    async with _Bomb() as bomb:
        clients = Clients()
        try:
            async with clients.http.get(f"{bomb.url}/bomb") as response:
                assert response.content_length is not None
                assert response.content_length < MAX_RESPONSE_BYTES
                with pytest.raises(ResponseTooLarge):
                    await read_body(response)
        finally:
            await clients.aclose()


async def test_the_bounded_reader_is_an_aiohttp_transport_error() -> None:
    """Every backend already maps `aiohttp.ClientError` to its transport-failure answer."""
    assert issubclass(ResponseTooLarge, aiohttp.ClientError)

"""`/health` (liveness) and `/ready` (every configured backend can authenticate)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import pytest

from push_relay.testing.ca import TestCA
from push_relay.testing.hms_sim import HmsSimulator
from push_relay.testing.process import GatewayRig
from push_relay.testing.relay import RelayStarter, RunningRelay

APP = "104455555"
SECRET = "hms-client-secret-for-health"


@pytest.fixture
async def hms(test_ca: TestCA) -> AsyncIterator[HmsSimulator]:
    simulator = HmsSimulator(test_ca)
    simulator.add_app(APP, SECRET)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def ready(relay: RunningRelay) -> tuple[int, dict[str, object]]:
    answer = await relay.request("GET", "/ready")
    assert "application/json" == answer.headers["content-type"]
    return answer.status, json.loads(answer.text)


async def test_health_answers_ok_and_names_the_worker(relay: RunningRelay) -> None:
    answer = await relay.request("GET", "/health")
    assert (200, "ok") == (answer.status, answer.text)
    assert "text/plain" == answer.headers["content-type"]
    assert str(os.getpid()) == answer.headers["x-push-relay-worker"]


async def test_ready_without_backends_is_ready(relay: RunningRelay) -> None:
    assert (200, {"ready": True, "backends": {}}) == await ready(relay)


async def test_ready_names_every_configured_backend(
    start_relay: RelayStarter, gateway: GatewayRig, hms: HmsSimulator
) -> None:
    async with start_relay(gateway.section + hms.config_toml(APP)) as relay:
        status, body = await ready(relay)
    assert 200 == status
    assert {
        "ready": True,
        "backends": {
            "threemagateway": {"ok": True, "detail": "key loaded for *3MAPUSH"},
            f"hms:{APP}": {"ok": True, "detail": "access token available"},
        },
    } == body


async def test_ready_is_503_when_a_backends_credentials_fail(
    start_relay: RelayStarter, gateway: GatewayRig, hms: HmsSimulator
) -> None:
    async with start_relay(gateway.section + hms.config_toml(APP, secret="wrong-secret")) as relay:
        status, body = await ready(relay)
        again = await ready(relay)
    assert 503 == status
    assert False is body["ready"]
    backends = body["backends"]
    assert isinstance(backends, dict)
    assert True is backends["threemagateway"]["ok"]
    assert False is backends[f"hms:{APP}"]["ok"]
    assert "wrong-secret" not in json.dumps(body)
    assert body == again[1]
    assert 1 == hms.token_requests  # the second /ready used the cached result


async def test_ready_is_bounded_when_the_token_endpoint_hangs(
    test_ca: TestCA, start_relay: RelayStarter
) -> None:
    slow = HmsSimulator(test_ca, token_delay=3.0)
    slow.add_app(APP, SECRET)
    await slow.start()
    try:
        async with start_relay(slow.config_toml(APP)) as relay:
            status, body = await ready(relay)
            token_requests = slow.token_requests
    finally:
        await slow.stop()
    assert 503 == status
    assert {f"hms:{APP}": {"ok": False, "detail": "check timed out after 2 s"}} == body["backends"]
    assert 1 == token_requests  # the check asked, and /ready did not wait for the answer


async def test_ready_flips_to_503_as_soon_as_draining_starts(
    start_relay: RelayStarter, gateway: GatewayRig
) -> None:
    async with start_relay(gateway.section) as relay:
        assert 200 == (await ready(relay))[0]
        gateway.simulator.delay = 0.3
        relay.app.start_draining()  # what SIGTERM does first
        status, body = await ready(relay)
        health = await relay.request("GET", "/health")
        push = await relay.push(gateway.push())
    assert 503 == status
    assert False is body["ready"]
    assert {"threemagateway": {"ok": True, "detail": "key loaded for *3MAPUSH"}} == body["backends"]
    assert 200 == health.status  # alive, just not taking new work from the load balancer
    assert 204 == push.status  # a push that still reaches it is relayed

"""APNs through the real front end, against the simulated APNs over HTTP/2 and TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import REGISTRY

from helpers import FakeClock, answer_sandbox_examples, wait_until
from push_relay import config
from push_relay.backends import Clients, Verdict
from push_relay.backends.apns import TOKEN_LIFETIME, ApnsBackend, classify
from push_relay.errors import ConfigError, FailureKind, PushFailed
from push_relay.http2 import H2Client
from push_relay.request import ApnsTarget, PushRequest
from push_relay.testing import apns_sim
from push_relay.testing.apns_auth import ApnsKey, generate_key
from push_relay.testing.apns_sim import DROP, ApnsSimulator, Step
from push_relay.testing.ca import TestCA
from push_relay.testing.relay import RelayStarter, RunningRelay

DEVICE = "0123456789abcdef" * 4
OTHER_DEVICE = "fedcba9876543210" * 4
START = 1_800_000_000.25
ALERT_BODY = (
    '{"aps":{"alert":{"body":"Threema Web Wakeup"},"sound":"default","mutable-content":1},'
    '"3mw":{"wcs":"123deadbeef","wca":"aff","wct":1800000000,"wcv":3}}'
)
VOIP_BODY = (
    '{"aps":{"content-available":1,"mutable-content":0},'
    '"3mw":{"wcs":"123deadbeef","wct":1800000000,"wcv":3}}'
)


def apns_push(token: str = DEVICE, **extra: str) -> dict[str, str]:
    params = {
        "type": "apns",
        "token": token,
        "session": "123deadbeef",
        "version": "3",
        "bundleid": "com.example.app",
        "endpoint": "p",
    }
    params.update(extra)
    return params


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def apns_key(tmp_path: Path) -> ApnsKey:
    return generate_key(tmp_path, key_id="ABC123DEFG", team_id="TEAM123456")


@pytest.fixture
async def production(
    test_ca: TestCA, apns_key: ApnsKey, clock: FakeClock
) -> AsyncIterator[ApnsSimulator]:
    sim = ApnsSimulator(test_ca, apns_key, clock=clock)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def sandbox(
    test_ca: TestCA, apns_key: ApnsKey, clock: FakeClock
) -> AsyncIterator[ApnsSimulator]:
    sim = ApnsSimulator(test_ca, apns_key, clock=clock)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def relay(
    start_relay: RelayStarter,
    apns_key: ApnsKey,
    production: ApnsSimulator,
    sandbox: ApnsSimulator,
    clock: FakeClock,
) -> AsyncIterator[RunningRelay]:
    toml = apns_key.config_toml(production.url, sandbox.url)
    async with start_relay(toml, clients=Clients(clock=clock)) as running:
        yield running


def backend_of(relay: RunningRelay) -> ApnsBackend:
    backend = relay.runtime.relay.backends[ApnsTarget]
    assert isinstance(backend, ApnsBackend)
    return backend


def app_headers(headers: dict[str, str]) -> dict[str, str]:
    """The request's own headers: neither pseudo-headers nor the authorization."""
    return {k: v for k, v in headers.items() if not k.startswith(":") and k != "authorization"}


# -- requests ---------------------------------------------------------------------------------


async def test_alert_push_has_exact_headers_and_body(
    relay: RunningRelay, production: ApnsSimulator, sandbox: ApnsSimulator
) -> None:
    answer = await relay.push(apns_push(affiliation="aff"))

    assert 204 == answer.status
    assert "" == answer.text
    [request] = production.requests
    assert f"/3/device/{DEVICE}" == request.path
    assert {
        "apns-topic": "com.example.app",
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": str(1_800_000_000 + 90),
    } == app_headers(request.headers)
    assert request.headers["authorization"].startswith("bearer ey")
    assert ALERT_BODY.encode() == request.body
    assert [] == sandbox.requests


async def test_voip_push_with_ttl_zero_and_collapse_key(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    push = apns_push(bundleid="com.example.app.voip", ttl="0", collapse_key="abc")

    answer = await relay.push(push)

    assert 204 == answer.status
    [request] = production.requests
    assert {
        "apns-topic": "com.example.app.voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-expiration": "0",
        "apns-collapse-id": "relay.abc",
    } == app_headers(request.headers)
    assert VOIP_BODY.encode() == request.body


async def test_empty_affiliation_and_collapse_key_are_sent(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    answer = await relay.push(apns_push(affiliation="", collapse_key="", ttl="+7"))

    assert 204 == answer.status
    [request] = production.requests
    assert "relay." == request.headers["apns-collapse-id"]
    assert str(1_800_000_000 + 7) == request.headers["apns-expiration"]
    assert {"wcs": "123deadbeef", "wca": "", "wct": 1_800_000_000, "wcv": 3} == (
        request.payload or {}
    )["3mw"]


async def test_endpoint_selects_sandbox_or_production(
    relay: RunningRelay, production: ApnsSimulator, sandbox: ApnsSimulator
) -> None:
    assert 204 == (await relay.push(apns_push(endpoint="s"))).status
    assert 204 == (await relay.push(apns_push(OTHER_DEVICE, endpoint="p"))).status
    assert 204 == (await relay.push(apns_push(endpoint="s"))).status

    assert [DEVICE, DEVICE] == [r.device_token for r in sandbox.requests]
    assert [OTHER_DEVICE] == [r.device_token for r in production.requests]
    assert 1 == sandbox.connections_accepted
    assert 1 == production.connections_accepted


async def test_payload_limit_is_larger_for_voip(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    """A control character is 3 bytes in the form and 6 in JSON: 4 kB of JSON from 2 kB."""
    session = "\x01" * 700

    alert = await relay.push(apns_push(session=session))
    voip = await relay.push(apns_push(session=session, bundleid="com.example.app.voip"))

    assert 502 == alert.status
    assert 204 == voip.status
    assert [(413, "PayloadTooLarge"), (200, None)] == [
        (r.status, r.reason) for r in production.requests
    ]


# -- outcomes ---------------------------------------------------------------------------------


def reply(reason: str) -> bytes:
    return json.dumps({"reason": reason}).encode()


CLASSIFY = [
    pytest.param(200, b"", None, "delivered", id="200-delivered"),
    pytest.param(400, reply("BadDeviceToken"), FailureKind.CLIENT, "bad_token", id="400-bad-token"),
    pytest.param(410, reply("ExpiredToken"), FailureKind.CLIENT, "bad_token", id="410-expired"),
    pytest.param(
        410,
        b'{"reason":"Unregistered","timestamp":1800000000000}',
        FailureKind.CLIENT,
        "unregistered",
        id="410-unregistered",
    ),
    pytest.param(
        403,
        reply("BadEnvironmentKeyIdInToken"),
        FailureKind.CLIENT,
        "bad_environment",
        id="403-bad-environment-key",
    ),
    pytest.param(
        403, reply("UnrelatedKeyIdInToken"), FailureKind.CLIENT, "bad_topic", id="403-unrelated-key"
    ),
    pytest.param(
        400, reply("BadExpirationDate"), FailureKind.CLIENT, "bad_expiration", id="400-expiration"
    ),
    pytest.param(400, reply("BadTopic"), FailureKind.CLIENT, "bad_topic", id="400-bad-topic"),
    pytest.param(
        400,
        reply("DeviceTokenNotForTopic"),
        FailureKind.CLIENT,
        "bad_topic",
        id="400-token-not-for-topic",
    ),
    pytest.param(
        400, reply("TopicDisallowed"), FailureKind.CLIENT, "bad_topic", id="400-topic-disallowed"
    ),
    pytest.param(
        400, reply("MissingTopic"), FailureKind.UPSTREAM, "upstream_refused", id="400-missing-topic"
    ),
    pytest.param(
        400, reply("BadCollapseId"), FailureKind.UPSTREAM, "upstream_refused", id="400-collapse-id"
    ),
    pytest.param(
        403,
        reply("ExpiredProviderToken"),
        FailureKind.UPSTREAM,
        "auth_rejected",
        id="403-expired-provider-token",
    ),
    pytest.param(
        403,
        reply("InvalidProviderToken"),
        FailureKind.UPSTREAM,
        "auth_rejected",
        id="403-invalid-provider-token",
    ),
    pytest.param(
        405, reply("MethodNotAllowed"), FailureKind.UPSTREAM, "upstream_refused", id="405"
    ),
    pytest.param(
        413, reply("PayloadTooLarge"), FailureKind.UPSTREAM, "upstream_refused", id="413-too-large"
    ),
    pytest.param(
        429, reply("TooManyRequests"), FailureKind.UPSTREAM, "rate_limited", id="429-too-many"
    ),
    pytest.param(
        429,
        reply("TooManyProviderTokenUpdates"),
        FailureKind.UPSTREAM,
        "rate_limited",
        id="429-token-updates",
    ),
    pytest.param(
        500,
        reply("InternalServerError"),
        FailureKind.UPSTREAM,
        "upstream_unavailable",
        id="500-internal",
    ),
    pytest.param(
        503,
        reply("ServiceUnavailable"),
        FailureKind.UPSTREAM,
        "upstream_unavailable",
        id="503-unavailable",
    ),
    pytest.param(
        502,
        b"<html>bad gateway</html>",
        FailureKind.UPSTREAM,
        "upstream_unavailable",
        id="502-not-json",
    ),
    pytest.param(
        400,
        b'["BadDeviceToken"]',
        FailureKind.UPSTREAM,
        "upstream_refused",
        id="400-body-not-an-object",
    ),
    pytest.param(418, b"", FailureKind.UPSTREAM, "upstream_refused", id="418-empty-body"),
]


@pytest.mark.parametrize(("status", "body", "kind", "reason"), CLASSIFY)
def test_classify(status: int, body: bytes, kind: FailureKind | None, reason: str) -> None:
    verdict = classify(status, {"apns-id": "ID-1"}, body)

    assert (kind, reason) == (verdict.kind, verdict.reason)
    assert "apns-id=ID-1" in verdict.detail


def test_classify_keeps_apns_reason_and_id_for_the_log() -> None:
    assert Verdict(FailureKind.CLIENT, "unregistered", "reason=Unregistered apns-id=A") == classify(
        410, {"apns-id": "A"}, b'{"reason":"Unregistered","timestamp":1}'
    )


def test_only_an_expired_provider_token_asks_for_a_new_one() -> None:
    expired = classify(403, {}, b'{"reason":"ExpiredProviderToken"}')
    invalid = classify(403, {}, b'{"reason":"InvalidProviderToken"}')

    assert (True, False) == (expired.renew_auth, invalid.renew_auth)
    assert "reason=ExpiredProviderToken apns-id=-" == expired.detail


REASONS = [
    pytest.param(reason, status, id=f"{reason}-{status}")
    for reason, status in [
        ("BadDeviceToken", 400),
        ("ExpiredToken", 400),
        ("Unregistered", 400),
        ("BadEnvironmentKeyIdInToken", 400),
        ("UnrelatedKeyIdInToken", 400),
        ("BadExpirationDate", 400),
        ("BadTopic", 400),
        ("DeviceTokenNotForTopic", 400),
        ("TopicDisallowed", 400),
        ("MissingTopic", 502),
        ("BadCertificate", 502),
        ("Forbidden", 502),
        ("PayloadTooLarge", 502),
        ("TooManyRequests", 502),
        ("InternalServerError", 502),
        ("ServiceUnavailable", 502),
        ("Shutdown", 502),
    ]
]


@pytest.mark.parametrize(("reason", "expected"), REASONS)
async def test_apns_reason_maps_to_status(
    relay: RunningRelay, production: ApnsSimulator, reason: str, expected: int
) -> None:
    production.script.set(DEVICE, Step(reason=reason))

    answer = await relay.push(apns_push())

    assert expected == answer.status
    assert "Push not successful" == answer.text
    assert [reason] == [r.reason for r in production.requests]


async def test_malformed_device_token_is_refused_by_apns(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    answer = await relay.push(apns_push("asdf"))

    assert 400 == answer.status
    assert [(400, "BadDeviceToken")] == [(r.status, r.reason) for r in production.requests]


async def test_failure_log_names_reason_and_apns_id_but_no_secrets(
    relay: RunningRelay, production: ApnsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    production.script.set(DEVICE, Step(reason="Unregistered"))

    with caplog.at_level(logging.INFO):
        answer = await relay.push(apns_push())

    assert 400 == answer.status
    [request] = production.requests
    jwt_value = request.headers["authorization"].removeprefix("bearer ")
    line = next(r.getMessage() for r in caplog.records if r.name == "push_relay.push")
    assert "reason=unregistered" in line
    assert "reason=Unregistered" in line
    assert f"apns-id={request.apns_id}" in line
    assert DEVICE not in caplog.text
    assert jwt_value not in caplog.text


# -- provider token ---------------------------------------------------------------------------


def claims_of(authorization: str, key: ApnsKey) -> tuple[dict[str, object], dict[str, object]]:
    token = authorization.removeprefix("bearer ")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token, key.public_key(), algorithms=["ES256"], options={"verify_iat": False}
    )
    return header, claims


async def test_provider_token_is_reused_then_renewed_after_55_minutes(
    relay: RunningRelay, production: ApnsSimulator, apns_key: ApnsKey, clock: FakeClock
) -> None:
    for _ in range(3):
        assert 204 == (await relay.push(apns_push())).status
    clock.advance(54 * 60)
    assert 204 == (await relay.push(apns_push())).status
    clock.advance(60 + 1)
    assert 204 == (await relay.push(apns_push())).status

    tokens = [r.headers["authorization"] for r in production.requests]
    assert 1 == len(set(tokens[:4]))
    assert tokens[4] != tokens[0]
    header, claims = claims_of(tokens[0], apns_key)
    assert {"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"} == header
    assert {"iss": "TEAM123456", "iat": 1_800_000_000} == claims
    assert {"iss": "TEAM123456", "iat": 1_800_000_000 + 55 * 60 + 1} == claims_of(
        tokens[4], apns_key
    )[1]
    assert 1 == production.tokens.updates


async def test_expired_provider_token_is_renewed_once_and_retried(
    relay: RunningRelay, production: ApnsSimulator, clock: FakeClock
) -> None:
    """APNs' clock runs ahead: it finds a 30-minute-old token expired."""
    assert 204 == (await relay.push(apns_push())).status
    clock.advance(30 * 60)
    production.tokens.clock = lambda: clock.now + 31 * 60

    answer = await relay.push(apns_push())

    assert 204 == answer.status
    assert [200, 403, 200] == [r.status for r in production.requests]
    first, expired, retried = (r.headers["authorization"] for r in production.requests)
    assert first == expired != retried


async def test_expired_provider_token_younger_than_20_minutes_is_not_renewed(
    relay: RunningRelay, production: ApnsSimulator, clock: FakeClock
) -> None:
    """Renewing it would only earn TooManyProviderTokenUpdates: the push fails with 502."""
    assert 204 == (await relay.push(apns_push())).status
    clock.advance(10 * 60)
    production.tokens.clock = lambda: clock.now + 61 * 60

    answer = await relay.push(apns_push())

    assert 502 == answer.status
    assert [200, 403] == [r.status for r in production.requests]
    assert 0 == production.tokens.updates


async def test_simulator_refuses_a_token_signed_by_another_key(
    start_relay: RelayStarter,
    production: ApnsSimulator,
    tmp_path: Path,
    clock: FakeClock,
) -> None:
    other = generate_key(tmp_path, key_id="ABC123DEFG", team_id="TEAM123456")
    toml = other.config_toml(production.url, production.url)

    async with start_relay(toml, clients=Clients(clock=clock)) as relay:
        answer = await relay.push(apns_push())

    assert 502 == answer.status
    assert [(403, "InvalidProviderToken")] == [(r.status, r.reason) for r in production.requests]


async def test_a_second_relay_with_its_own_token_is_refused_within_20_minutes(
    start_relay: RelayStarter,
    relay: RunningRelay,
    apns_key: ApnsKey,
    production: ApnsSimulator,
    sandbox: ApnsSimulator,
    clock: FakeClock,
) -> None:
    """Why tokens are never renewed early: APNs answers TooManyProviderTokenUpdates."""
    assert 204 == (await relay.push(apns_push())).status
    clock.advance(19 * 60)
    toml = apns_key.config_toml(production.url, sandbox.url)

    async with start_relay(toml, clients=Clients(clock=clock)) as second:
        answer = await second.push(apns_push())

    assert 502 == answer.status
    assert [(200, None), (429, "TooManyProviderTokenUpdates")] == [
        (r.status, r.reason) for r in production.requests
    ]


def auth_refreshes(result: str) -> float:
    labels = {"backend": "apns", "result": result}
    return REGISTRY.get_sample_value("push_relay_auth_refreshes_total", labels) or 0.0


async def test_signing_a_provider_token_is_counted_once_per_token(
    relay: RunningRelay, clock: FakeClock
) -> None:
    before = auth_refreshes("ok")

    for _ in range(3):
        assert 204 == (await relay.push(apns_push())).status
    clock.advance(TOKEN_LIFETIME)
    assert 204 == (await relay.push(apns_push())).status

    assert 2 == auth_refreshes("ok") - before


async def test_ready_reports_apns_and_signs_a_token(relay: RunningRelay) -> None:
    answer = await relay.request("GET", "/ready")

    assert 200 == answer.status
    assert {"ok": True, "detail": "provider token signed"} == json.loads(answer.text)["backends"][
        "apns"
    ]


# -- connections ------------------------------------------------------------------------------


async def test_200_concurrent_pushes_share_one_connection(
    start_relay: RelayStarter, test_ca: TestCA, apns_key: ApnsKey, clock: FakeClock
) -> None:
    sim = ApnsSimulator(test_ca, apns_key, clock=clock, max_concurrent_streams=100)
    await sim.start()
    all_in = asyncio.Event()
    sim.script.set(DEVICE, Step(until=all_in))  # held until every stream APNs allows is in use
    toml = apns_key.config_toml(sim.url, sim.url)
    try:
        async with (
            start_relay(toml, clients=Clients(clock=clock)) as relay,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client,
        ):

            async def push() -> int:
                body = urlencode(apns_push())
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                async with client.post(relay.url + "/push", data=body, headers=headers) as r:
                    return r.status

            pushes = asyncio.gather(*(push() for _ in range(200)))
            await wait_until(lambda: 100 <= sim.server.max_streams_seen, "100 streams at once")
            all_in.set()
            statuses = await pushes
            opened = backend_of(relay).connections_opened
    finally:
        await sim.stop()

    assert [204] * 200 == statuses
    assert 200 == len(sim.requests)
    assert 1 == sim.connections_accepted
    assert 1 == opened
    # all the streams APNs allows were in use at once; the other 100 pushes waited for one
    assert 100 == sim.server.max_streams_seen


@pytest.mark.parametrize(
    "bundle_id",
    [
        pytest.param("com.example.app\r\nx-evil: 1", id="crlf"),
        pytest.param("com.example.app\0", id="nul"),
        pytest.param("com.example.app ", id="trailing-space"),
    ],
)
async def test_a_malformed_header_fails_one_push_and_spares_the_connection(
    start_relay: RelayStarter, test_ca: TestCA, apns_key: ApnsKey, clock: FakeClock, bundle_id: str
) -> None:
    """The HTTP/2 client's own check, behind the front end's: 500, nothing sent, and the
    100 pushes sharing the connection with it are delivered on that one connection."""
    sim = ApnsSimulator(test_ca, apns_key, clock=clock, max_concurrent_streams=100)
    await sim.start()
    sim.script.set(DEVICE, Step(delay=0.3))
    toml = apns_key.config_toml(sim.url, sim.url)
    bad = PushRequest(ApnsTarget(DEVICE, bundle_id, "p"), "123deadbeef", 3, None, 30, None)
    try:
        async with start_relay(toml, clients=Clients(clock=clock)) as relay:

            async def send_bad() -> PushFailed:
                await asyncio.sleep(0.05)  # while the good pushes are on the wire
                with pytest.raises(PushFailed) as failed:
                    await backend_of(relay).send(bad)
                return failed.value

            failure, *answers = await asyncio.gather(
                send_bad(), *(relay.push(apns_push()) for _ in range(100))
            )
            opened = backend_of(relay).connections_opened
    finally:
        await sim.stop()

    assert (500, "invalid_header") == (failure.status, failure.reason)
    assert [204] * 100 == [a.status for a in answers]
    assert 100 == len(sim.requests)
    assert (1, 1) == (sim.connections_accepted, opened)


async def test_pushes_continue_on_a_new_connection_after_goaway(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    production.goaway_after(3)

    statuses = [(await relay.push(apns_push())).status for _ in range(7)]

    assert [204] * 7 == statuses
    assert 3 == production.connections_accepted
    assert 3 == backend_of(relay).connections_opened


async def test_concurrent_pushes_survive_goaway(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    production.goaway_after(5)

    answers = await asyncio.gather(*(relay.push(apns_push()) for _ in range(20)))

    assert [204] * 20 == [a.status for a in answers]
    assert 20 == len([r for r in production.requests if r.status == 200])


async def test_push_in_flight_on_a_dropped_connection_fails_then_next_reconnects(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    production.script.set(DEVICE, DROP, Step())

    dropped = await relay.push(apns_push())
    after = await relay.push(apns_push())

    assert 502 == dropped.status
    assert 204 == after.status
    assert 2 == production.connections_accepted


async def test_idle_connection_dropped_by_apns_is_reopened(
    relay: RunningRelay, production: ApnsSimulator
) -> None:
    assert 204 == (await relay.push(apns_push())).status
    production.drop_connections()

    answer = await relay.push(apns_push())

    assert 204 == answer.status
    assert 2 == production.connections_accepted


async def test_unreachable_apns_is_an_upstream_failure(
    start_relay: RelayStarter, apns_key: ApnsKey, clock: FakeClock
) -> None:
    toml = apns_key.config_toml("https://127.0.0.1:9", "https://127.0.0.1:9")

    async with start_relay(toml, clients=Clients(clock=clock)) as relay:
        answer = await relay.push(apns_push())

    assert 502 == answer.status


# -- the simulator on its own ------------------------------------------------------------------


def provider_token(key: ApnsKey, iat: int, kid: str | None = None) -> str:
    claims = {"iss": key.team_id, "iat": iat}
    return jwt.encode(claims, key.pem, algorithm="ES256", headers={"kid": kid or key.key_id})


def direct_request(
    key: ApnsKey, **changes: str | None
) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """A valid APNs request, with `changes` applied (None removes a header)."""
    fields: dict[str, str | None] = {
        "method": "POST",
        "path": f"/3/device/{DEVICE}",
        "body": '{"aps":{"content-available":1}}',
        "authorization": f"bearer {provider_token(key, 1_800_000_000)}",
        "apns-topic": "com.example.app",
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": "0",
    }
    fields.update(changes)
    method, path, body = (fields.pop(k) or "" for k in ("method", "path", "body"))
    headers = [(k, v) for k, v in fields.items() if v is not None]
    return method, path, headers, body.encode()


REFUSALS = [
    pytest.param({}, 200, None, id="valid"),
    pytest.param({"method": "GET"}, 405, "MethodNotAllowed", id="get"),
    pytest.param({"path": "/3/push/x"}, 404, "BadPath", id="bad-path"),
    pytest.param({"authorization": None}, 403, "MissingProviderToken", id="no-token"),
    pytest.param({"authorization": "bearer x.y.z"}, 403, "InvalidProviderToken", id="junk-token"),
    pytest.param({"apns-topic": None}, 400, "MissingTopic", id="no-topic"),
    pytest.param({"apns-push-type": "email"}, 400, "InvalidPushType", id="push-type"),
    pytest.param({"apns-priority": "7"}, 400, "BadPriority", id="priority"),
    pytest.param({"apns-expiration": "soon"}, 400, "BadExpirationDate", id="expiration"),
    pytest.param({"apns-collapse-id": "c" * 65}, 400, "BadCollapseId", id="collapse-id-65"),
    pytest.param({"apns-collapse-id": "c" * 64}, 200, None, id="collapse-id-64"),
    pytest.param({"path": "/3/device/abc"}, 400, "BadDeviceToken", id="short-device-token"),
    pytest.param({"path": "/3/device/"}, 400, "MissingDeviceToken", id="no-device-token"),
    pytest.param({"body": ""}, 400, "PayloadEmpty", id="empty-payload"),
    pytest.param({"body": "[1]"}, 400, "BadPayload", id="payload-not-an-object"),
    pytest.param({"body": "{" + " " * 4094 + "}"}, 200, None, id="payload-4096"),
    pytest.param({"body": "{" + " " * 4095 + "}"}, 413, "PayloadTooLarge", id="payload-4097"),
    pytest.param(
        {"body": "{" + " " * 5118 + "}", "apns-push-type": "voip"}, 200, None, id="voip-5120"
    ),
    pytest.param(
        {"body": "{" + " " * 5119 + "}", "apns-push-type": "voip"},
        413,
        "PayloadTooLarge",
        id="voip-5121",
    ),
]


@pytest.mark.parametrize(("changes", "status", "reason"), REFUSALS)
async def test_simulator_refuses_what_apns_refuses(
    production: ApnsSimulator,
    apns_key: ApnsKey,
    test_ca: TestCA,
    changes: dict[str, str | None],
    status: int,
    reason: str | None,
) -> None:
    method, path, headers, body = direct_request(apns_key, **changes)
    client = H2Client(production.url, test_ca.client_context(["h2"]))
    try:
        response = await client.request(method, path, headers, body)
    finally:
        await client.aclose()

    assert status == response.status
    assert response.headers["apns-id"]
    if reason is None:
        assert b"" == response.body
    else:
        assert {"reason": reason} == json.loads(response.body)


async def test_simulator_checks_token_age_key_id_and_update_rate(
    production: ApnsSimulator, apns_key: ApnsKey, test_ca: TestCA, clock: FakeClock
) -> None:
    client = H2Client(production.url, test_ca.client_context(["h2"]))

    async def send(token: str) -> tuple[int, str]:
        _, path, headers, body = direct_request(apns_key, authorization=f"bearer {token}")
        response = await client.request("POST", path, headers, body)
        return response.status, json.loads(response.body or b"{}").get("reason", "")

    try:
        first = provider_token(apns_key, 1_800_000_000)
        answers = [
            await send(provider_token(apns_key, 1_800_000_000, kid="OTHERKEYID")),
            await send(provider_token(apns_key, 1_800_000_000 + 120)),  # from the future
            await send(first),
            await send(provider_token(apns_key, 1_800_000_000)),  # a second token, too soon
        ]
        clock.advance(20 * 60)
        answers.append(await send(provider_token(apns_key, 1_800_000_000 + 20 * 60)))
        clock.advance(60 * 60 + 1 - 20 * 60)
        answers.append(await send(provider_token(apns_key, 1_800_000_000 + 20 * 60)))
        answers.append(await send(first))  # now older than an hour
    finally:
        await client.aclose()

    assert [
        (403, "InvalidProviderToken"),
        (403, "InvalidProviderToken"),
        (200, ""),
        (429, "TooManyProviderTokenUpdates"),
        (200, ""),
        (200, ""),
        (403, "ExpiredProviderToken"),
    ] == answers


async def test_unregistered_answer_carries_a_timestamp_in_milliseconds(
    production: ApnsSimulator, apns_key: ApnsKey, test_ca: TestCA
) -> None:
    production.script.set(DEVICE, Step(reason="Unregistered"))
    method, path, headers, body = direct_request(apns_key)
    client = H2Client(production.url, test_ca.client_context(["h2"]))
    try:
        response = await client.request(method, path, headers, body)
    finally:
        await client.aclose()

    assert 410 == response.status
    assert {"reason": "Unregistered", "timestamp": 1_800_000_000_250} == json.loads(response.body)


# -- sandbox ----------------------------------------------------------------------------------


async def test_sandbox_example_is_delivered_and_logged(
    start_relay: RelayStarter, test_ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="push_relay.sandbox")
    part, answers = await answer_sandbox_examples(
        start_relay, apns_sim.sandbox_part, test_ca, tmp_path
    )

    assert [
        "type=apns&token=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        "&session=123deadbeef&version=3&bundleid=com.example.app&endpoint=s"
    ] == [example.body for example in part.examples]
    assert [204] == [a.status for a in answers]
    [line] = [r.getMessage() for r in caplog.records if r.name == "push_relay.sandbox"]
    assert line.startswith("APNs device 01234567… (com.example.app, alert) shows")
    assert '"Threema Web Wakeup"; 3mw={"wcs":"123deadbeef","wct":' in line


# -- configuration ----------------------------------------------------------------------------


def _rsa_pem() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ec_pem(curve: ec.EllipticCurve, form: serialization.PrivateFormat) -> bytes:
    return ec.generate_private_key(curve).private_bytes(
        serialization.Encoding.PEM, form, serialization.NoEncryption()
    )


BAD_KEYS = [
    pytest.param(lambda: b"", id="empty"),
    pytest.param(lambda: b"not a key\n", id="not-pem"),
    pytest.param(
        lambda: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", id="garbage"
    ),
    pytest.param(_rsa_pem, id="rsa"),
    pytest.param(lambda: _ec_pem(ec.SECP384R1(), serialization.PrivateFormat.PKCS8), id="p384"),
    pytest.param(
        lambda: _ec_pem(ec.SECP256R1(), serialization.PrivateFormat.TraditionalOpenSSL),
        id="sec1-not-pkcs8",
    ),
]


def check_config(config_file: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "push_relay", "check-config", "-c", str(config_file)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def write_apns_config(tmp_path: Path, keyfile: Path) -> Path:
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[apns]\nkeyfile = "{keyfile}"\nkey_id = "ABC123DEFG"\nteam_id = "TEAM123456"\n'
    )
    return config_file


@pytest.mark.parametrize("make_pem", BAD_KEYS)
def test_bad_key_file_is_a_config_error_naming_the_file(
    tmp_path: Path, make_pem: Callable[[], bytes]
) -> None:
    keyfile = tmp_path / "AuthKey_BAD.p8"
    keyfile.write_bytes(make_pem())

    with pytest.raises(ConfigError) as caught:
        config.load(write_apns_config(tmp_path, keyfile))

    assert "apns.keyfile" == caught.value.key
    assert str(keyfile) in str(caught.value)


def test_check_config_exits_2_naming_a_bad_key_file(tmp_path: Path) -> None:
    keyfile = tmp_path / "AuthKey_BAD.p8"
    keyfile.write_bytes(_ec_pem(ec.SECP384R1(), serialization.PrivateFormat.PKCS8))

    result = check_config(write_apns_config(tmp_path, keyfile))

    assert 2 == result.returncode
    [line] = result.stderr.splitlines()
    assert str(keyfile) in line
    assert "apns.keyfile" in line


def test_backend_refuses_a_bad_key_naming_the_file() -> None:
    cfg = config.ApnsConfig(
        keyfile="keys/AuthKey_X.p8", signing_key=b"junk", key_id="K", team_id="T"
    )

    with pytest.raises(ConfigError, match=r"keys/AuthKey_X\.p8"):
        ApnsBackend(cfg, Clients())


def test_good_key_file_passes_check_config(apns_key: ApnsKey, tmp_path: Path) -> None:
    result = check_config(write_apns_config(tmp_path, apns_key.path))

    assert 0 == result.returncode, result.stderr
    assert "apns: key ABC123DEFG, team TEAM123456" in result.stdout
    assert "PRIVATE KEY" not in result.stdout + result.stderr


async def test_plain_http_endpoint_speaks_h2c_never_tls(
    start_relay: RelayStarter, apns_key: ApnsKey, clock: FakeClock
) -> None:
    """`http://` means plaintext HTTP/2 with prior knowledge, as for FCM; https:// means TLS."""
    plain = ApnsSimulator(None, apns_key, clock=clock)
    url = await plain.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        async with start_relay(apns_key.config_toml(url, url), clients=Clients(clock=clock)) as r:
            answer = await r.push(apns_push())
    finally:
        await plain.stop()
    assert 204 == answer.status
    assert 1 == len(plain.deliveries)

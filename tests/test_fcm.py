"""`type=fcm` through the real front end against the FCM + Google OAuth simulator over TLS
(contract §4 and §11)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
from prometheus_client import REGISTRY

from helpers import FakeClock, closed_port_url, wait_until
from push_relay import tls
from push_relay.auth import Token
from push_relay.backends import Clients, Verdict
from push_relay.backends.fcm import backoff, classify, retry_after, token_key
from push_relay.errors import FailureKind
from push_relay.http2 import H2Client, H2Response
from push_relay.testing import fcm_sim
from push_relay.testing.ca import TestCA
from push_relay.testing.fcm_sim import FcmSimulator, Step, device_token, quota_exceeded
from push_relay.testing.google_oauth import ServiceAccount, generate_service_account
from push_relay.testing.relay import RelayStarter, RunningRelay

NOW = 1_700_000_000.0
NOT_OK = "Push not successful"
DEVICE = device_token("phone")
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture(scope="session")
def account() -> ServiceAccount:
    return generate_service_account("relay-test")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def sim(
    test_ca: TestCA, account: ServiceAccount, clock: FakeClock
) -> AsyncIterator[FcmSimulator]:
    simulator = FcmSimulator(test_ca, account, clock=clock)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
def clients(clock: FakeClock) -> Clients:
    return Clients(clock=clock, backoff_base=0.001)


@pytest.fixture
async def relay(
    start_relay: RelayStarter, sim: FcmSimulator, clients: Clients
) -> AsyncIterator[RunningRelay]:
    async with start_relay(sim.config_toml(max_retries=3), clients=clients) as running:
        yield running


def form(token: str = DEVICE, **extra: str) -> dict[str, str]:
    return {"type": "fcm", "token": token, "session": "123deadbeef", "version": "3", **extra}


def retries_total() -> float:
    value = REGISTRY.get_sample_value("push_relay_upstream_retries_total", {"backend": "fcm"})
    return value or 0.0


# -- classify: every row of §4, pure -----------------------------------------------------------


def fcm_error(status: int, name: str, code: str | None = None) -> bytes:
    error: dict[str, object] = {"code": status, "message": "m", "status": name}
    if code:
        error["details"] = [{"@type": "t", "errorCode": code}]
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        pytest.param(
            200, {}, b'{"name":"projects/p/messages/1"}', Verdict(None, "delivered"), id="200-ok"
        ),
        pytest.param(
            200,
            {},
            b'{"message_id":1}',
            Verdict(FailureKind.INTERNAL, "bad_response", "200 body has no message name"),
            id="200-without-name",
        ),
        pytest.param(
            200,
            {},
            b"<html>",
            Verdict(FailureKind.INTERNAL, "bad_response", "200 body has no message name"),
            id="200-not-json",
        ),
        pytest.param(
            204,
            {},
            b"",
            Verdict(FailureKind.INTERNAL, "bad_response", "204 body has no message name"),
            id="204-empty",
        ),
        pytest.param(
            400,
            {},
            fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            Verdict(FailureKind.CLIENT, "bad_request", "400 INVALID_ARGUMENT/INVALID_ARGUMENT"),
            id="400-invalid-argument",
        ),
        pytest.param(
            401,
            {},
            fcm_error(401, "UNAUTHENTICATED"),
            Verdict(FailureKind.CLIENT, "unauthorized", "401 UNAUTHENTICATED", renew_auth=True),
            id="401-unauthenticated",
        ),
        pytest.param(
            402, {}, b"", Verdict(FailureKind.CLIENT, "bad_request", "402"), id="402-client"
        ),
        pytest.param(
            404,
            {},
            fcm_error(404, "NOT_FOUND", "UNREGISTERED"),
            Verdict(FailureKind.CLIENT, "bad_token", "404 NOT_FOUND/UNREGISTERED"),
            id="404-unregistered",
        ),
        pytest.param(
            403,
            {},
            fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
            Verdict(
                FailureKind.UPSTREAM, "upstream_refused", "403 PERMISSION_DENIED/SENDER_ID_MISMATCH"
            ),
            id="403-sender-id-mismatch",
        ),
        pytest.param(
            418, {}, b"", Verdict(FailureKind.UPSTREAM, "upstream_refused", "418"), id="418-other"
        ),
        pytest.param(
            301, {}, b"", Verdict(FailureKind.UPSTREAM, "upstream_refused", "301"), id="301-other"
        ),
        pytest.param(
            429,
            {"retry-after": "7"},
            fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
            Verdict(
                FailureKind.UPSTREAM,
                "rate_limited",
                "429 RESOURCE_EXHAUSTED/QUOTA_EXCEEDED",
                retry=True,
                retry_after=7.0,
            ),
            id="429-retry-after",
        ),
        pytest.param(
            500,
            {},
            fcm_error(500, "INTERNAL"),
            Verdict(FailureKind.UPSTREAM, "upstream_unavailable", "500 INTERNAL", retry=True),
            id="500-retried",
        ),
        pytest.param(
            503,
            {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
            b"",
            Verdict(
                FailureKind.UPSTREAM, "upstream_unavailable", "503", retry=True, retry_after=60.0
            ),
            id="503-http-date-retry-after",
        ),
    ],
)
def test_classify(status: int, headers: dict[str, str], body: bytes, expected: Verdict) -> None:
    assert expected == classify(status, headers, body)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(" 120 ", 120.0, id="seconds-trimmed"),
        pytest.param("Fri, 31 Dec 1999 23:59:59 GMT", 60.0, id="http-date"),
        pytest.param("1.5", 60.0, id="fraction-unparsable"),
        pytest.param("-1", 60.0, id="negative-unparsable"),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    headers = {} if value is None else {"retry-after": value}
    assert expected == retry_after(headers)


def test_backoff_is_2_to_the_n_with_8_percent_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(6):
        waits = [backoff(attempt, rng) for _ in range(500)]
        assert 0.92 * 2**attempt <= min(waits)
        assert max(waits) < 1.08 * 2**attempt
        assert max(waits) - min(waits) > 0.1 * 2**attempt  # really jittered


# -- the exact request ------------------------------------------------------------------------


async def test_delivered_with_the_exact_json_body(relay: RunningRelay, sim: FcmSimulator) -> None:
    answer = await relay.push(form(collapse_key="wakeup", ttl="120"))
    assert (204, "") == (answer.status, answer.text)
    [request] = sim.requests
    assert "/v1/projects/relay-test/messages:send" == request.path
    expected = (
        '{"message":{"token":"' + DEVICE + '",'
        '"data":{"wcs":"123deadbeef","wct":"1700000000","wcv":"3"},'
        '"android":{"collapse_key":"relay.wakeup","priority":"HIGH","ttl":"120s"}}}'
    )
    assert expected.encode() == request.body
    assert request.headers["content-type"].startswith("application/json")
    assert [DEVICE] == [d.token for d in sim.deliveries]


async def test_defaults_affiliation_and_gcm_alias(relay: RunningRelay, sim: FcmSimulator) -> None:
    answer = await relay.push(
        {"type": "gcm", "token": DEVICE, "session": "s", "version": "7", "affiliation": ""}
    )
    assert 204 == answer.status
    message = json.loads(sim.requests[0].body)["message"]
    # wca present (even empty) when given; no collapse_key; ttl defaults to 90 s
    assert {"wcs": "s", "wca": "", "wct": "1700000000", "wcv": "7"} == message["data"]
    assert {"priority": "HIGH", "ttl": "90s"} == message["android"]


async def test_ttl_zero_and_empty_collapse_key(relay: RunningRelay, sim: FcmSimulator) -> None:
    assert 204 == (await relay.push(form(ttl="0", collapse_key=""))).status
    android = json.loads(sim.requests[0].body)["message"]["android"]
    assert {"collapse_key": "relay.", "priority": "HIGH", "ttl": "0s"} == android


# -- OAuth ------------------------------------------------------------------------------------


async def test_assertion_is_an_rs256_jwt_bearer_grant(
    relay: RunningRelay, sim: FcmSimulator, account: ServiceAccount
) -> None:
    assert 204 == (await relay.push(form())).status
    [grant] = sim.oauth.grants
    assert grant.claims is not None and grant.header is not None
    assert {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": sim.oauth.token_uri,
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    } == grant.claims
    assert ("RS256", account.private_key_id) == (grant.header["alg"], grant.header["kid"])
    form_body = sim.oauth.requests[0].body.decode()
    assert form_body.startswith("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")


async def test_token_is_cached_and_renewed_a_minute_before_expiry(
    relay: RunningRelay, sim: FcmSimulator, clock: FakeClock
) -> None:
    for _ in range(3):
        assert 204 == (await relay.push(form())).status
    assert 1 == sim.token_requests
    clock.now = NOW + 3599 - 61  # Google's tokens live 3599 s
    assert 204 == (await relay.push(form())).status
    assert 1 == sim.token_requests
    clock.now = NOW + 3599 - 59
    assert 204 == (await relay.push(form())).status
    assert 2 == sim.token_requests


async def test_50_concurrent_pushes_share_one_token_request(
    relay: RunningRelay, sim: FcmSimulator
) -> None:
    sim.oauth.delay = 0.05  # every push arrives while the token is being fetched
    answers = await asyncio.gather(*(relay.push(form()) for _ in range(50)))
    assert [204] * 50 == [a.status for a in answers]
    assert 1 == sim.token_requests
    assert 50 == len(sim.deliveries)


async def test_token_endpoint_failure_is_500_and_logged_once_per_reason(
    relay: RunningRelay,
    sim: FcmSimulator,
    caplog: pytest.LogCaptureFixture,
    account: ServiceAccount,
) -> None:
    sim.oauth.failure = (503, {"error": "backend_error"})
    sim.oauth.delay = 0.02
    with caplog.at_level(logging.INFO):
        answers = await asyncio.gather(*(relay.push(form()) for _ in range(5)))
        answers.append(await relay.push(form()))  # a second fetch, failing the same way
    assert [(500, NOT_OK)] * 6 == [(a.status, a.text) for a in answers]
    assert 2 == sim.token_requests
    assert [] == sim.requests
    errors = [r.getMessage() for r in caplog.records if r.name == "push_relay.backends.fcm"]
    assert ["fcm: cannot obtain an access token: token endpoint answered 503 (backend_error)"] == [
        e for e in errors if "cannot obtain" in e
    ]
    secret_line = account.private_key_pem.splitlines()[1]
    assert not [r for r in caplog.records if secret_line in r.getMessage()]


async def test_unknown_service_account_is_refused_like_google_and_answers_500(
    start_relay: RelayStarter, test_ca: TestCA, clients: Clients, clock: FakeClock
) -> None:
    registered, other = generate_service_account("relay-test"), generate_service_account("x")
    sim = FcmSimulator(test_ca, registered, clock=clock)
    sim.account = other  # the relay signs with a key the token endpoint does not know
    await sim.start()
    try:
        async with start_relay(sim.config_toml(), clients=clients) as relay:
            answer = await relay.push(form())
            ready = await relay.request("GET", "/ready")
    finally:
        await sim.stop()
    assert 500 == answer.status
    assert [400, 400] == [g.status for g in sim.oauth.grants]  # the push's, then /ready's
    assert 503 == ready.status
    assert "token endpoint answered 400 (invalid_grant)" in ready.text


async def test_token_endpoint_unreachable_is_500(
    start_relay: RelayStarter, sim: FcmSimulator, clients: Clients
) -> None:
    await sim.oauth.stop()
    async with start_relay(sim.config_toml(), clients=clients) as relay:
        answer = await relay.push(form())
    assert (500, NOT_OK) == (answer.status, answer.text)


async def test_revoked_token_is_401_then_a_new_token_is_fetched(
    relay: RunningRelay, sim: FcmSimulator
) -> None:
    assert 204 == (await relay.push(form())).status
    sim.oauth.revoke_tokens()
    assert 400 == (await relay.push(form())).status  # 401 answers 400, as the original
    assert 204 == (await relay.push(form())).status
    assert 2 == sim.token_requests
    assert [200, 401, 200] == [r.status for r in sim.requests]


async def test_ready_when_a_token_can_be_obtained(relay: RunningRelay) -> None:
    answer = await relay.request("GET", "/ready")
    assert 200 == answer.status
    assert {"ok": True, "detail": "access token available"} == json.loads(answer.text)["backends"][
        "fcm"
    ]


# -- outcomes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "status"),
    [
        pytest.param(fcm_sim.UNREGISTERED, 400, id="404-unregistered-400"),
        pytest.param(Step(402, "PAYMENT_REQUIRED", "m"), 400, id="402-400"),
        pytest.param(fcm_sim.SENDER_ID_MISMATCH, 502, id="403-sender-id-mismatch-502"),
        pytest.param(Step(418, "UNKNOWN", "teapot"), 502, id="418-502"),
        pytest.param(fcm_sim.BAD_SUCCESS_BODY, 500, id="invalid-success-body-500"),
        pytest.param(fcm_sim.DROP, 400, id="connection-dropped-400"),
    ],
)
async def test_answers_that_are_not_retried(
    relay: RunningRelay, sim: FcmSimulator, step: Step, status: int
) -> None:
    sim.script.set(DEVICE, step)
    answer = await relay.push(form())
    assert (status, NOT_OK) == (answer.status, answer.text)
    assert 1 == len(sim.requests)


async def test_invalid_message_is_400_from_fcm(relay: RunningRelay, sim: FcmSimulator) -> None:
    answer = await relay.push(form(token=""))  # accepted by the relay, refused by FCM
    assert (400, NOT_OK) == (answer.status, answer.text)
    [request] = sim.requests
    assert 400 == request.status


async def test_persistent_503_makes_max_retries_plus_one_requests(
    relay: RunningRelay, sim: FcmSimulator
) -> None:
    sim.script.set(DEVICE, fcm_sim.UNAVAILABLE)
    before = retries_total()
    answer = await relay.push(form())
    assert (502, NOT_OK) == (answer.status, answer.text)
    assert 4 == len(sim.requests)  # max_retries = 3
    assert 3 == retries_total() - before


async def test_503s_then_success_resends_identical_bytes(
    relay: RunningRelay, sim: FcmSimulator, clock: FakeClock
) -> None:
    sim.script.set(DEVICE, fcm_sim.UNAVAILABLE, fcm_sim.INTERNAL, fcm_sim.DELIVER)
    sim.server.handler = advancing(sim, clock)  # time passes between requests
    answer = await relay.push(form())
    assert 204 == answer.status
    assert [503, 500, 200] == [r.status for r in sim.requests]
    assert 1 == len({r.body for r in sim.requests})  # same bytes, same wct


def advancing(sim: FcmSimulator, clock: FakeClock):  # type: ignore[no-untyped-def]
    """The simulator's handler, moving the shared clock on by 1 s per request."""
    handler = sim.server.handler

    async def handle(request):  # type: ignore[no-untyped-def]
        clock.now += 1
        return await handler(request)

    return handle


async def test_429_with_retry_after_is_retried(relay: RunningRelay, sim: FcmSimulator) -> None:
    sim.script.set(DEVICE, quota_exceeded("40"), fcm_sim.DELIVER)
    started = time.perf_counter()
    answer = await relay.push(form())
    assert 204 == answer.status
    assert [429, 200] == [r.status for r in sim.requests]
    assert time.perf_counter() - started >= 0.040  # 40 s at the tests' 1 ms per second


@pytest.mark.parametrize(
    ("retry_after", "ttl", "expected", "requests"),
    [
        pytest.param("5", "5", 204, 2, id="retry-after-5-fits-ttl-5"),
        pytest.param("5", "4", 502, 1, id="retry-after-5-passes-ttl-4"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", "60", 204, 2, id="http-date-60-fits"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", "59", 502, 1, id="http-date-60-passes"),
    ],
)
async def test_retry_after_wait_is_capped_by_the_ttl(
    relay: RunningRelay,
    sim: FcmSimulator,
    retry_after: str,
    ttl: str,
    expected: int,
    requests: int,
) -> None:
    sim.script.set(DEVICE, Step(503, "UNAVAILABLE", "m", retry_after=retry_after), Step())
    answer = await relay.push(form(ttl=ttl))
    assert expected == answer.status
    assert requests == len(sim.requests)


async def test_backoff_stops_before_passing_the_ttl(
    start_relay: RelayStarter, sim: FcmSimulator, clients: Clients
) -> None:
    """Waits of 1, 2, 4 s: with ttl 5 the third (ending at 7 s) is not waited for."""
    sim.script.set(DEVICE, fcm_sim.UNAVAILABLE)
    async with start_relay(sim.config_toml(max_retries=10), clients=clients) as relay:
        answer = await relay.push(form(ttl="5"))
    assert (502, NOT_OK) == (answer.status, answer.text)
    assert 3 == len(sim.requests)


async def test_ttl_zero_is_never_retried(relay: RunningRelay, sim: FcmSimulator) -> None:
    sim.script.set(DEVICE, fcm_sim.UNAVAILABLE)
    assert 502 == (await relay.push(form(ttl="0"))).status
    assert 1 == len(sim.requests)


async def test_connection_refused_is_400(
    start_relay: RelayStarter, sim: FcmSimulator, clients: Clients
) -> None:
    toml = sim.config_toml(endpoint=closed_port_url())
    async with start_relay(toml, clients=clients) as relay:
        answer = await relay.push(form())
    assert (400, NOT_OK) == (answer.status, answer.text)
    assert 1 == sim.token_requests  # the token was fine; the push could not be sent


async def test_a_token_unfit_for_a_header_fails_the_push_before_anything_is_sent(
    relay: RunningRelay, sim: FcmSimulator, clients: Clients
) -> None:
    """The HTTP/2 client refuses the malformed field (RFC 9113 §8.2.1): 500, nothing sent."""

    async def broken_endpoint_token() -> Token:
        return Token("ya29.x\r\nx-evil: 1", refresh_at=NOW + 3600, issued_at=NOW)

    assert relay.app.config.fcm is not None
    await clients.tokens.get(token_key(relay.app.config.fcm), broken_endpoint_token)
    answer = await relay.push(form())
    assert (500, NOT_OK) == (answer.status, answer.text)
    assert [] == sim.requests


async def test_100_concurrent_pushes_use_one_tls_connection(
    relay: RunningRelay, sim: FcmSimulator
) -> None:
    all_in = asyncio.Event()
    sim.script.set(DEVICE, Step(until=all_in))  # held until all 100 are in flight together
    pushes = asyncio.gather(*(relay.push(form()) for _ in range(100)))
    await wait_until(lambda: 100 <= sim.server.max_streams_seen, "100 streams open at once")
    all_in.set()
    answers = await pushes
    assert [204] * 100 == [a.status for a in answers]
    assert 100 == len(sim.requests)
    assert 1 == sim.server.connections_accepted
    assert 100 == sim.server.max_streams_seen
    assert 1 == sim.token_requests


async def test_goaway_and_dropped_connections_are_transparent(
    relay: RunningRelay, sim: FcmSimulator
) -> None:
    sim.server.goaway_after(7)
    answers = await asyncio.gather(*(relay.push(form()) for _ in range(20)))
    assert [204] * 20 == [a.status for a in answers]
    sim.server.drop_connections()
    assert 204 == (await relay.push(form())).status
    assert 21 == len(sim.deliveries)


# -- the simulator refuses what Google refuses -------------------------------------------------


def assertion(account: ServiceAccount, token_uri: str, **claims: object) -> str:
    payload = {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        **claims,
    }
    return jwt.encode(payload, account.private_key_pem, algorithm="RS256")


async def grant(sim: FcmSimulator, jwt_assertion: str) -> tuple[int, dict[str, object]]:
    form_body = {"grant_type": GRANT, "assertion": jwt_assertion}
    connector = aiohttp.TCPConnector(ssl=tls.client_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(sim.oauth.token_uri, data=form_body) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        pytest.param({}, None, id="valid"),
        pytest.param({"aud": "https://elsewhere/token"}, "invalid_grant", id="wrong-audience"),
        pytest.param(
            {"scope": "https://www.googleapis.com/auth/cloud"}, "invalid_scope", id="scope"
        ),
        pytest.param({"exp": int(NOW) + 7200}, "invalid_grant", id="lifetime-over-an-hour"),
        pytest.param(
            {"iat": int(NOW) - 7200, "exp": int(NOW) - 3600}, "invalid_grant", id="expired"
        ),
        pytest.param({"iss": "someone@else.iam"}, "invalid_grant", id="unknown-account"),
    ],
)
async def test_token_endpoint_checks_the_assertion(
    sim: FcmSimulator, account: ServiceAccount, claims: dict[str, object], error: str | None
) -> None:
    status, body = await grant(sim, assertion(account, sim.oauth.token_uri, **claims))
    if error is None:
        assert 200 == status
        assert {"access_token", "expires_in", "token_type"} == set(body)
    else:
        assert (400, error) == (status, body["error"])


async def test_token_endpoint_checks_the_signature(
    sim: FcmSimulator, account: ServiceAccount
) -> None:
    impostor = generate_service_account("relay-test")  # same e-mail, another key
    status, body = await grant(sim, assertion(impostor, sim.oauth.token_uri))
    assert (400, "invalid_grant", "Invalid JWT Signature.") == (
        status,
        body["error"],
        body["error_description"],
    )


def message(**overrides: object) -> bytes:
    android = {"priority": "HIGH", "ttl": "90s"}
    body: dict[str, object] = {"token": DEVICE, "data": {"wcs": "s"}, "android": android}
    body.update(overrides)
    return json.dumps({"message": body}).encode()


@pytest.mark.parametrize(
    ("body", "status", "error_status"),
    [
        pytest.param(message(), 200, None, id="valid"),
        pytest.param(message(data={"wct": 1}), 400, "INVALID_ARGUMENT", id="data-not-string"),
        pytest.param(message(data={"from": "x"}), 400, "INVALID_ARGUMENT", id="reserved-key"),
        pytest.param(message(android={"ttl": "90"}), 400, "INVALID_ARGUMENT", id="ttl-unit"),
        pytest.param(
            message(android={"priority": "URGENT"}), 400, "INVALID_ARGUMENT", id="priority"
        ),
        pytest.param(message(token="not-a-token"), 400, "INVALID_ARGUMENT", id="bad-token"),
        pytest.param(message(topic="news"), 400, "INVALID_ARGUMENT", id="two-targets"),
        pytest.param(message(colour="red"), 400, "INVALID_ARGUMENT", id="unknown-field"),
        pytest.param(b"{not json", 400, "INVALID_ARGUMENT", id="not-json"),
    ],
)
async def test_messages_send_validates_like_fcm(
    sim: FcmSimulator, account: ServiceAccount, body: bytes, status: int, error_status: str | None
) -> None:
    _, token = await grant(sim, assertion(account, sim.oauth.token_uri))
    answer = await send_direct(sim, body, f"Bearer {token['access_token']}")
    assert status == answer.status
    if error_status is not None:
        error = json.loads(answer.body)["error"]
        assert (status, error_status) == (error["code"], error["status"])


@pytest.mark.parametrize(
    ("authorization", "project", "status", "error_status"),
    [
        pytest.param(None, "relay-test", 401, "UNAUTHENTICATED", id="no-bearer"),
        pytest.param("Bearer ya29.forged", "relay-test", 401, "UNAUTHENTICATED", id="forged"),
        pytest.param("valid", "other-project", 403, "PERMISSION_DENIED", id="other-project"),
    ],
)
async def test_messages_send_checks_bearer_and_project(
    sim: FcmSimulator,
    account: ServiceAccount,
    authorization: str | None,
    project: str,
    status: int,
    error_status: str,
) -> None:
    if authorization == "valid":
        _, token = await grant(sim, assertion(account, sim.oauth.token_uri))
        authorization = f"Bearer {token['access_token']}"
    answer = await send_direct(sim, message(), authorization, project)
    assert (status, error_status) == (answer.status, json.loads(answer.body)["error"]["status"])


async def send_direct(
    sim: FcmSimulator, body: bytes, authorization: str | None, project: str = "relay-test"
) -> H2Response:
    client = H2Client(sim.url, tls.client_context(["h2"]))
    headers = [("content-type", "application/json")]
    if authorization is not None:
        headers.append(("authorization", authorization))
    try:
        return await client.request("POST", f"/v1/projects/{project}/messages:send", headers, body)
    finally:
        await client.aclose()

"""`type=hms` through the real front end against the Push Kit simulator over TLS (contract §7)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from helpers import FakeClock, answer_sandbox_examples, closed_port_url
from push_relay.backends import Clients
from push_relay.backends.hms import classify
from push_relay.errors import FailureKind
from push_relay.testing import hms_sim
from push_relay.testing.ca import TestCA
from push_relay.testing.hms_sim import HmsReply, HmsSimulator, TokenReply
from push_relay.testing.relay import RelayStarter

APP = "104455555"
CLIENT_ID = "104455555"
SECRET = "s3cr3t-client-secret-for-tests"
DEVICE = "IQAAAACy0kYkAAAAvmOBnDEVICETOKEN"
NOW = 1_700_000_000.0
NOT_OK = "Push not successful"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def sim(test_ca: TestCA, clock: FakeClock) -> AsyncIterator[HmsSimulator]:
    simulator = HmsSimulator(test_ca, clock=clock)
    simulator.add_app(CLIENT_ID, SECRET)
    await simulator.start()
    yield simulator
    await simulator.stop()


def hms_section(
    login: str,
    push: str | None = None,
    *,
    app: str = APP,
    client_id: str = CLIENT_ID,
    secret: str = SECRET,
    high_priority: bool | None = None,
) -> str:
    lines = [
        f"[hms.{app}]",
        f'client_id = "{client_id}"',
        f'client_secret = "{secret}"',
        f'login_endpoint = "{login}"',
        f'push_endpoint = "{push or login}"',
    ]
    if high_priority is not None:
        lines.append(f"high_priority = {str(high_priority).lower()}")
    return "\n".join(lines) + "\n"


def form(token: str = DEVICE, app: str = APP, **extra: str) -> dict[str, str]:
    params = {"type": "hms", "appid": app, "token": token, "session": "123deadbeef", "version": "3"}
    params.update(extra)
    return params


def auth_refreshes(result: str) -> float:
    labels = {"backend": "hms", "result": result}
    return REGISTRY.get_sample_value("push_relay_auth_refreshes_total", labels) or 0.0


# -- validation ------------------------------------------------------------------------------


HMS = f"type=hms&appid={APP}"
MISSING = "Missing parameters"
INVALID = "Invalid parameters"


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        pytest.param("type=hms&token=t&session=s&version=3", 400, MISSING, id="appid-missing"),
        pytest.param(f"{HMS}&session=s&version=3", 400, MISSING, id="token-missing"),
        pytest.param(f"{HMS}&token=t&version=3", 400, MISSING, id="session-missing"),
        pytest.param(f"{HMS}&token=t&session=s", 400, MISSING, id="version-missing"),
        pytest.param(f"{HMS}&token=t&session=s&version=65536", 400, INVALID, id="version-too-big"),
        pytest.param(f"{HMS}&token=t&session=s&version=3&ttl=-1", 400, INVALID, id="ttl-negative"),
        pytest.param(f"{HMS}&token=t&session=s&version=3&ttl=4294967296", 400, INVALID, id="ttl"),
        pytest.param("type=hms&appid=x&token=t&session=s&version=3", 400, NOT_OK, id="unknown-app"),
        pytest.param(f"{HMS}&token=t&session=s&version=3", 204, "", id="valid"),
        pytest.param(f"{HMS}&token=t&session=&version=%203%20", 204, "", id="empty-session"),
    ],
)
async def test_validation(
    start_relay: RelayStarter, sim: HmsSimulator, body: str, status: int, text: str
) -> None:
    async with start_relay(hms_section(sim.url)) as relay:
        answer = await relay.push(body)
    assert (status, text) == (answer.status, answer.text)
    if status != 204:
        assert [] == sim.requests_to("messages:send")


async def test_unknown_app_id_sends_nothing(start_relay: RelayStarter, sim: HmsSimulator) -> None:
    async with start_relay(hms_section(sim.url)) as relay:
        answer = await relay.push(form(app="999"))
    assert (400, NOT_OK) == (answer.status, answer.text)
    assert [] == sim.requests


# -- what is sent ----------------------------------------------------------------------------


async def test_message_is_exactly_the_contract_json(
    start_relay: RelayStarter, sim: HmsSimulator, clock: FakeClock
) -> None:
    async with start_relay(hms_section(sim.url), clients=Clients(clock=clock)) as relay:
        answer = await relay.push(form(collapse_key="ignored", affiliation="aff"))
    assert 204 == answer.status
    [request] = sim.requests_to("messages:send")
    assert f"/v1/{CLIENT_ID}/messages:send" == request.path
    assert request.headers["content-type"].startswith("application/json")
    data = '{"wcs":"123deadbeef","wca":"aff","wct":1700000000,"wcv":3}'
    expected = {
        "message": {
            "data": data,
            "android": {"urgency": "NORMAL", "ttl": "90s"},
            "token": [DEVICE],
        }
    }
    assert expected == json.loads(request.body)
    assert list(expected["message"]) == list(json.loads(request.body)["message"])
    [delivery] = sim.deliveries
    assert data == delivery.data


async def test_high_priority_uses_voip_category_and_ttl_zero(
    start_relay: RelayStarter, sim: HmsSimulator, clock: FakeClock
) -> None:
    section = hms_section(sim.url, high_priority=True)
    async with start_relay(section, clients=Clients(clock=clock)) as relay:
        answer = await relay.push(form(ttl="0", affiliation=""))
    assert 204 == answer.status
    [body] = sim.push_bodies()
    assert {"urgency": "HIGH", "category": "VOIP", "ttl": "0s"} == body["message"]["android"]
    data = json.loads(body["message"]["data"])
    assert {"wcs": "123deadbeef", "wca": "", "wct": 1700000000, "wcv": 3} == data


async def test_token_request_form_and_bearer(start_relay: RelayStarter, sim: HmsSimulator) -> None:
    async with start_relay(hms_section(sim.url)) as relay:
        assert 204 == (await relay.push(form())).status
    [token_request] = sim.requests_to("/oauth2/v3/token")
    fields = dict(pair.split("=", 1) for pair in token_request.body.decode().split("&"))
    expected = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    assert expected == fields
    [push] = sim.requests_to("messages:send")
    assert push.headers["authorization"].startswith("Bearer CgB6e3x9")


async def test_empty_token_is_sent_and_refused_by_push_kit(
    start_relay: RelayStarter, sim: HmsSimulator
) -> None:
    async with start_relay(hms_section(sim.url)) as relay:
        answer = await relay.push(form(token=""))
    assert (400, NOT_OK) == (answer.status, answer.text)
    assert [[""]] == [body["message"]["token"] for body in sim.push_bodies()]


# -- status and result-code mapping ----------------------------------------------------------

MAPPING = [
    pytest.param(hms_sim.SUCCESS, 204, id="80000000-success"),
    pytest.param(hms_sim.PARTIAL_SUCCESS, 400, id="80100000-some-tokens-invalid"),
    pytest.param(hms_sim.ALL_TOKENS_INVALID, 400, id="80300007-all-tokens-invalid"),
    pytest.param(hms_sim.INTERNAL_ERROR, 502, id="81000001-internal-error"),
    pytest.param(hms_sim.AUTH_ERROR, 502, id="80200001-auth-error"),
    pytest.param(hms_sim.TOKEN_EXPIRED, 502, id="80200003-token-expired"),
    pytest.param(HmsReply(code="80300008", msg="Message too long"), 500, id="other-code"),
    pytest.param(HmsReply(status=400, code="80100003", msg="Illegal payload"), 400, id="http-400"),
    pytest.param(hms_sim.http_error(500), 502, id="http-500"),
    pytest.param(hms_sim.http_error(502), 502, id="http-502"),
    pytest.param(hms_sim.http_error(503), 502, id="http-503"),
    pytest.param(HmsReply(status=401, code="80200003", msg="expired"), 500, id="http-401"),
    pytest.param(hms_sim.http_error(404), 500, id="http-404"),
    pytest.param(hms_sim.GARBAGE, 500, id="200-unparsable"),
    pytest.param(HmsReply(raw=b'{"code":"80000000","msg":"Success"}'), 500, id="200-no-id"),
    pytest.param(HmsReply(raw=b'{"code":80000000,"msg":"","requestId":""}'), 500, id="int"),
    pytest.param(HmsReply(raw=b'["80000000"]'), 500, id="200-json-array"),
]


@pytest.mark.parametrize(("reply", "status"), MAPPING)
async def test_status_mapping(
    start_relay: RelayStarter, sim: HmsSimulator, reply: HmsReply, status: int
) -> None:
    sim.script.set(DEVICE, reply)
    async with start_relay(hms_section(sim.url)) as relay:
        answer = await relay.push(form())
    assert status == answer.status
    assert ("" if status == 204 else NOT_OK) == answer.text


def result(code: str, msg: object = "m") -> bytes:
    return json.dumps({"code": code, "msg": msg, "requestId": "1"}).encode()


CLASSIFY = [
    pytest.param(200, result("80000000"), None, "delivered", False, id="200-80000000-ok"),
    pytest.param(
        200, result("80100000"), FailureKind.CLIENT, "invalid_token", False, id="200-80100000"
    ),
    pytest.param(
        200, result("80300007"), FailureKind.CLIENT, "invalid_token", False, id="200-80300007"
    ),
    pytest.param(
        200, result("81000001"), FailureKind.UPSTREAM, "upstream_error", False, id="200-81000001"
    ),
    pytest.param(
        200,
        result("80200001"),
        FailureKind.UPSTREAM,
        "auth_rejected",
        True,
        id="200-80200001-renews-token",
    ),
    pytest.param(
        200,
        result("80200003"),
        FailureKind.UPSTREAM,
        "auth_rejected",
        True,
        id="200-80200003-renews-token",
    ),
    pytest.param(
        200, result("80100003"), FailureKind.INTERNAL, "unexpected_code", False, id="200-other"
    ),
    pytest.param(
        200,
        result("80000000", 1),
        FailureKind.INTERNAL,
        "bad_response",
        False,
        id="200-msg-not-string",
    ),
    pytest.param(200, b"\xff\xfe", FailureKind.INTERNAL, "bad_response", False, id="200-not-utf8"),
    pytest.param(200, b"", FailureKind.INTERNAL, "bad_response", False, id="200-empty"),
    pytest.param(400, b"", FailureKind.CLIENT, "bad_request", False, id="400-bad-request"),
    pytest.param(401, b"", FailureKind.INTERNAL, "unexpected_status", True, id="401-renews-token"),
    pytest.param(403, b"", FailureKind.INTERNAL, "unexpected_status", False, id="403"),
    pytest.param(429, b"", FailureKind.INTERNAL, "unexpected_status", False, id="429"),
    pytest.param(500, b"", FailureKind.UPSTREAM, "upstream_error", False, id="500"),
    pytest.param(502, b"", FailureKind.UPSTREAM, "upstream_error", False, id="502"),
    pytest.param(
        503, b"", FailureKind.UPSTREAM, "upstream_unavailable", False, id="503-unavailable"
    ),
    pytest.param(504, b"", FailureKind.INTERNAL, "unexpected_status", False, id="504"),
]


@pytest.mark.parametrize(("status", "body", "kind", "reason", "renew"), CLASSIFY)
def test_classify(
    status: int, body: bytes, kind: FailureKind | None, reason: str, renew: bool
) -> None:
    verdict = classify(status, {}, body)
    assert (kind, reason, renew) == (verdict.kind, verdict.reason, verdict.renew_auth)


def test_classify_quotes_only_the_result_code() -> None:
    """Huawei's `msg` can list device tokens: the detail for the log is the code alone."""
    body = json.dumps({"code": "80100000", "msg": '{"illegal_tokens":["tok"]}', "requestId": "1"})
    assert "code 80100000" == classify(200, {}, body.encode()).detail


# -- access tokens ---------------------------------------------------------------------------


async def test_token_is_cached_until_180_s_before_expiry(
    start_relay: RelayStarter, sim: HmsSimulator, clock: FakeClock
) -> None:
    async with start_relay(hms_section(sim.url), clients=Clients(clock=clock)) as relay:
        assert 204 == (await relay.push(form())).status
        clock.now = NOW + 3600 - 180 - 1
        assert 204 == (await relay.push(form())).status
        assert 1 == sim.token_requests
        clock.now = NOW + 3600 - 180
        assert 204 == (await relay.push(form())).status
        assert 2 == sim.token_requests
    bearers = [r.headers["authorization"] for r in sim.requests_to("messages:send")]
    assert bearers[0] == bearers[1] != bearers[2]


@pytest.mark.parametrize("expires_in", [180, 100, 1])
async def test_short_lived_token_is_not_reused(
    start_relay: RelayStarter, sim: HmsSimulator, clock: FakeClock, expires_in: int
) -> None:
    sim.expires_in = expires_in  # the clock stands still: Push Kit still accepts each token
    async with start_relay(hms_section(sim.url), clients=Clients(clock=clock)) as relay:
        for _ in range(3):
            assert 204 == (await relay.push(form())).status
    assert 3 == sim.token_requests


async def test_token_living_181_s_is_reused_for_one_second(
    start_relay: RelayStarter, sim: HmsSimulator, clock: FakeClock
) -> None:
    sim.expires_in = 181
    async with start_relay(hms_section(sim.url), clients=Clients(clock=clock)) as relay:
        assert 204 == (await relay.push(form())).status
        clock.now = NOW + 0.5
        assert 204 == (await relay.push(form())).status
        assert 1 == sim.token_requests
        clock.now = NOW + 1
        assert 204 == (await relay.push(form())).status
    assert 2 == sim.token_requests


async def test_concurrent_pushes_share_one_token_request(
    start_relay: RelayStarter, sim: HmsSimulator
) -> None:
    sim.token_delay = 0.2  # every push arrives while the first token request is in flight
    async with start_relay(hms_section(sim.url)) as relay:
        answers = await asyncio.gather(*(relay.push(form(token=f"tok{i}")) for i in range(50)))
    assert [204] * 50 == [a.status for a in answers]
    assert 1 == sim.token_requests
    assert 50 == len(sim.deliveries)


@pytest.mark.parametrize(
    "reply", [hms_sim.AUTH_ERROR, hms_sim.TOKEN_EXPIRED], ids=["80200001", "80200003"]
)
async def test_auth_codes_clear_the_token(
    start_relay: RelayStarter, sim: HmsSimulator, reply: HmsReply
) -> None:
    sim.script.set(DEVICE, reply, hms_sim.SUCCESS)
    async with start_relay(hms_section(sim.url)) as relay:
        assert 502 == (await relay.push(form())).status
        assert 204 == (await relay.push(form())).status
    assert 2 == sim.token_requests
    first, second = (r.headers["authorization"] for r in sim.requests_to("messages:send"))
    assert first != second


async def test_other_failures_keep_the_token(start_relay: RelayStarter, sim: HmsSimulator) -> None:
    sim.script.set(DEVICE, hms_sim.INTERNAL_ERROR, hms_sim.ALL_TOKENS_INVALID, hms_sim.SUCCESS)
    async with start_relay(hms_section(sim.url)) as relay:
        statuses = [(await relay.push(form())).status for _ in range(3)]
    assert [502, 400, 204] == statuses
    assert 1 == sim.token_requests


async def test_token_revoked_by_push_kit_answers_500_then_recovers(
    start_relay: RelayStarter, sim: HmsSimulator
) -> None:
    """Push Kit refuses an unknown bearer with HTTP 401 (code 80200003)."""
    async with start_relay(hms_section(sim.url)) as relay:
        assert 204 == (await relay.push(form())).status
        sim.revoke_tokens()
        assert 500 == (await relay.push(form())).status
        assert 204 == (await relay.push(form())).status
    assert 2 == sim.token_requests


async def test_token_expired_at_push_kit_is_not_reused(
    start_relay: RelayStarter, sim: HmsSimulator, clock: FakeClock
) -> None:
    """Push Kit's clock ran past the token's expiry (HTTP 401, 80200003): the next push
    fetches a new token although the relay's own clock says the old one is still good."""
    sim_clock = FakeClock(NOW)
    sim.clock = sim_clock
    async with start_relay(hms_section(sim.url), clients=Clients(clock=clock)) as relay:
        assert 204 == (await relay.push(form())).status
        sim_clock.now = NOW + 3600
        assert 500 == (await relay.push(form())).status
        assert 204 == (await relay.push(form())).status
    assert 2 == sim.token_requests


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(TokenReply(503, b'{"error":1203}'), id="503"),
        pytest.param(TokenReply(200, b'{"expires_in":3600}'), id="no-access-token"),
        pytest.param(TokenReply(200, b'{"access_token":"a"}'), id="no-expires-in"),
        pytest.param(TokenReply(200, b'{"access_token":"a","expires_in":"9"}'), id="text"),
        pytest.param(TokenReply(200, b'{"access_token":"a","expires_in":9.5}'), id="float"),
        pytest.param(TokenReply(200, b"not json"), id="not-json"),
    ],
)
async def test_token_endpoint_failures_answer_500(
    start_relay: RelayStarter, sim: HmsSimulator, reply: TokenReply
) -> None:
    sim.token_script.set(CLIENT_ID, reply)
    errors_before = auth_refreshes("error")
    async with start_relay(hms_section(sim.url)) as relay:
        answer = await relay.push(form())
    assert (500, NOT_OK) == (answer.status, answer.text)
    assert [] == sim.requests_to("messages:send")
    assert errors_before + 1 == auth_refreshes("error")


async def test_wrong_client_secret_answers_500_and_is_retried_next_push(
    start_relay: RelayStarter, sim: HmsSimulator
) -> None:
    async with start_relay(hms_section(sim.url, secret="wrong")) as relay:
        assert 500 == (await relay.push(form())).status
        sim.add_app(CLIENT_ID, "wrong")  # the operator fixed it at Huawei's end
        assert 204 == (await relay.push(form())).status
    assert 2 == sim.token_requests


async def test_token_transport_error_answers_500(
    start_relay: RelayStarter, sim: HmsSimulator
) -> None:
    async with start_relay(hms_section(closed_port_url(), sim.url)) as relay:
        answer = await relay.push(form())
    assert (500, NOT_OK) == (answer.status, answer.text)


async def test_send_transport_error_answers_400(
    start_relay: RelayStarter, sim: HmsSimulator
) -> None:
    async with start_relay(hms_section(sim.url, closed_port_url())) as relay:
        answer = await relay.push(form())
    assert (400, NOT_OK) == (answer.status, answer.text)
    assert 1 == sim.token_requests


async def test_each_app_has_its_own_credentials(
    start_relay: RelayStarter, sim: HmsSimulator
) -> None:
    sim.add_app("200", "other-secret")
    config = hms_section(sim.url) + hms_section(
        sim.url, app="two", client_id="200", secret="other-secret"
    )
    async with start_relay(config) as relay:
        assert 204 == (await relay.push(form())).status
        assert 204 == (await relay.push(form(app="two"))).status
    assert [CLIENT_ID, "200"] == [d.client_id for d in sim.deliveries]
    assert 2 == sim.token_requests


# -- readiness, logs -------------------------------------------------------------------------


async def test_ready_reports_each_app(start_relay: RelayStarter, sim: HmsSimulator) -> None:
    config = hms_section(sim.url) + hms_section(sim.url, app="bad", client_id="nope")
    async with start_relay(config) as relay:
        answer = await relay.request("GET", "/ready")
    assert 503 == answer.status
    backends = json.loads(answer.text)["backends"]
    assert True is backends[f"hms:{APP}"]["ok"]
    assert False is backends["hms:bad"]["ok"]


async def test_secrets_and_tokens_stay_out_of_logs(
    start_relay: RelayStarter, sim: HmsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    sim.script.set(DEVICE, hms_sim.PARTIAL_SUCCESS)  # Huawei's msg lists the device token
    caplog.set_level(logging.DEBUG)
    async with start_relay(hms_section(sim.url)) as relay:
        assert 400 == (await relay.push(form())).status
    [push] = sim.requests_to("messages:send")
    access_token = push.headers["authorization"].removeprefix("Bearer ")
    for secret in (DEVICE, SECRET, access_token):
        assert secret not in caplog.text
    assert "80100000" in caplog.text


async def test_sandbox_example_answers_204(
    start_relay: RelayStarter, test_ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="push_relay.sandbox")
    part, answers = await answer_sandbox_examples(
        start_relay, hms_sim.sandbox_part, test_ca, tmp_path
    )
    [example] = part.examples
    assert example.body.startswith("type=hms&appid=123456&token=")  # the seed README's app id
    assert [204] == [a.status for a in answers]
    assert '"wcs":"123deadbeef"' in caplog.text


# -- the simulator itself behaves like Push Kit -----------------------------------------------


async def sim_post(
    test_ca: TestCA, url: str, data: str | bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    connector = aiohttp.TCPConnector(ssl=test_ca.client_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, data=data, headers=headers) as response,
    ):
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize(
    ("form_body", "error"),
    [
        pytest.param(f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret=x", 1101),
        pytest.param(f"grant_type=client_credentials&client_id=1&client_secret={SECRET}", 1101),
        pytest.param(f"grant_type=password&client_id={CLIENT_ID}&client_secret={SECRET}", 1102),
    ],
    ids=["bad-secret", "unknown-client", "bad-grant"],
)
async def test_simulated_token_endpoint_refuses_bad_credentials(
    sim: HmsSimulator, test_ca: TestCA, form_body: str, error: int
) -> None:
    content_type = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = await sim_post(test_ca, f"{sim.url}/oauth2/v3/token", form_body, content_type)
    assert (400, error) == (status, body["error"])
    assert {"error", "sub_error", "error_description"} == set(body)


GOOD = {"data": "{}", "android": {"urgency": "NORMAL", "ttl": "90s"}, "token": ["t"]}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({**GOOD, "data": {"wcs": "s"}}, id="data-not-string"),
        pytest.param({**GOOD, "token": []}, id="no-token"),
        pytest.param({**GOOD, "token": "t"}, id="token-not-list"),
        pytest.param({**GOOD, "android": {"urgency": "URGENT"}}, id="bad-urgency"),
        pytest.param({**GOOD, "android": {"urgency": "NORMAL", "category": "VOIP"}}, id="voip"),
        pytest.param({**GOOD, "android": {"ttl": 90}}, id="ttl-number"),
        pytest.param({**GOOD, "android": {"ttl": "90"}}, id="ttl-no-unit"),
        pytest.param({**GOOD, "tokens": ["t"]}, id="unknown-field"),
    ],
)
async def test_simulated_push_kit_refuses_malformed_messages(
    start_relay: RelayStarter, sim: HmsSimulator, test_ca: TestCA, message: dict[str, object]
) -> None:
    async with start_relay(hms_section(sim.url)) as relay:
        assert 204 == (await relay.push(form())).status  # obtains a valid access token
    bearer = sim.requests_to("messages:send")[0].headers["authorization"]
    headers = {"Authorization": bearer, "Content-Type": "application/json"}
    url = f"{sim.url}/v1/{CLIENT_ID}/messages:send"
    status, body = await sim_post(test_ca, url, json.dumps({"message": message}), headers)
    assert (400, "80100003") == (status, body["code"])


async def test_simulated_push_kit_refuses_unknown_bearer(
    sim: HmsSimulator, test_ca: TestCA
) -> None:
    headers = {"Authorization": "Bearer forged", "Content-Type": "application/json"}
    url = f"{sim.url}/v1/{CLIENT_ID}/messages:send"
    status, body = await sim_post(test_ca, url, json.dumps({"message": GOOD}), headers)
    assert (401, "80200003") == (status, body["code"])

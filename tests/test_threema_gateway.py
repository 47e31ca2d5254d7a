"""`type=threema-gateway` through the real front end against the gateway simulator (contract §6).

The simulator plays the recipient's phone too: it decrypts every box, so these tests assert on
exactly what the phone would read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
import nacl.utils
import pytest
from nacl.public import Box, PrivateKey

from helpers import answer_sandbox_examples, closed_port_url
from push_relay import config
from push_relay.backends import Clients
from push_relay.backends.threema_gateway import classify
from push_relay.errors import ConfigError, FailureKind
from push_relay.testing import gateway_sim
from push_relay.testing.ca import TestCA
from push_relay.testing.gateway_sim import GatewaySimulator, write_key_file
from push_relay.testing.relay import RelayStarter

IDENTITY = "*3MAPUSH"
SECRET = "gateway-api-secret-for-tests"
RECIPIENT = "ECHOECHO"
NOW = 1_700_000_000.0
NOT_OK = "Push not successful"
MISSING = "Missing parameters"
INVALID = "Invalid parameters"


@pytest.fixture
def relay_key(tmp_path: Path) -> tuple[Path, PrivateKey]:
    path = tmp_path / "gateway.key"
    return path, write_key_file(path)


@pytest.fixture
async def sim(
    test_ca: TestCA, relay_key: tuple[Path, PrivateKey]
) -> AsyncIterator[GatewaySimulator]:
    simulator = GatewaySimulator(
        test_ca,
        identity=IDENTITY,
        secret=SECRET,
        identity_public_key=bytes(relay_key[1].public_key),
    )
    simulator.add_recipient(RECIPIENT)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
def section(relay_key: tuple[Path, PrivateKey]) -> Callable[..., str]:
    def make(base_url: str, *, secret: str = SECRET, identity: str = IDENTITY) -> str:
        return (
            "[threema_gateway]\n"
            f'base_url = "{base_url}"\n'
            f'identity = "{identity}"\n'
            f'secret = "{secret}"\n'
            f'private_key_file = "{relay_key[0]}"\n'
        )

    return make


def recipient_key(sim: GatewaySimulator, identity: str = RECIPIENT) -> str:
    return bytes(sim.recipients[identity].public_key).hex()


def form(sim: GatewaySimulator, **extra: str) -> dict[str, str]:
    params = {
        "type": "threema-gateway",
        "identity": RECIPIENT,
        "public_key": recipient_key(sim),
        "session": "123deadbeef",
        "version": "3",
    }
    params.update(extra)
    return params


# -- round trip ------------------------------------------------------------------------------


async def test_phone_decrypts_exactly_the_payload(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    clients = Clients(clock=lambda: NOW)
    async with start_relay(section(sim.url), clients=clients) as relay:
        answer = await relay.push(form(sim, affiliation="aff", ttl="0", collapse_key="ignored"))
    assert (204, "") == (answer.status, answer.text)
    [delivery] = sim.deliveries
    expected = b'\xfe{"wcs":"123deadbeef","wca":"aff","wct":1700000000,"wcv":3}\x01'
    assert expected == delivery.plaintext
    assert {"wcs": "123deadbeef", "wca": "aff", "wct": 1700000000, "wcv": 3} == delivery.payload
    assert (IDENTITY, RECIPIENT) == (delivery.sender, delivery.recipient)


async def test_form_fields_and_headers(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    async with start_relay(section(sim.url)) as relay:
        assert 204 == (await relay.push(form(sim))).status
    [request] = sim.requests
    assert "/send_e2e" == request.path
    assert "application/json" == request.headers["accept"]
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    fields = parse_qsl(request.body.decode(), strict_parsing=True)
    names = ["secret", "from", "to", "noPush", "noDeliveryReceipts", "nonce", "box"]
    assert names == [name for name, _ in fields]
    values = dict(fields)
    assert [SECRET, IDENTITY, RECIPIENT, "1", "1"] == [values[n] for n in names[:5]]
    assert 48 == len(values["nonce"])
    assert values["nonce"] == values["nonce"].lower()
    assert values["box"] == values["box"].lower()


async def test_every_push_gets_a_fresh_nonce(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    async with start_relay(section(sim.url)) as relay:
        for _ in range(3):
            assert 204 == (await relay.push(form(sim))).status
    nonces = {dict(parse_qsl(r.body.decode()))["nonce"] for r in sim.requests}
    assert 3 == len(nonces)


async def test_uppercase_public_key_is_accepted(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    async with start_relay(section(sim.url)) as relay:
        answer = await relay.push(form(sim, public_key=recipient_key(sim).upper()))
    assert 204 == answer.status
    assert 1 == len(sim.deliveries)


async def test_box_for_another_key_is_unreadable_by_the_phone(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    """The simulator catches a box the phone cannot open (the real gateway would take it)."""
    other = bytes(PrivateKey.generate().public_key).hex()
    async with start_relay(section(sim.url)) as relay:
        answer = await relay.push(form(sim, public_key=other))
    assert 502 == answer.status
    assert [] == sim.deliveries
    assert 1 == len(sim.undeliverable)


async def test_all_zero_public_key_is_refused_before_sending(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    async with start_relay(section(sim.url)) as relay:
        answer = await relay.push(form(sim, public_key="00" * 32))
    assert (400, NOT_OK) == (answer.status, answer.text)
    assert [] == sim.requests


# -- validation ------------------------------------------------------------------------------

KEY = "ab" * 32
GW = "type=threema-gateway&session=s&version=3"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        pytest.param(f"{GW}&public_key={KEY}", MISSING, id="identity-missing"),
        pytest.param(f"{GW}&identity=ECHOECH&public_key={KEY}", INVALID, id="identity-7"),
        pytest.param(f"{GW}&identity=ECHOECHOX&public_key={KEY}", INVALID, id="identity-9"),
        pytest.param(f"{GW}&identity=*3MAPUSH&public_key={KEY}", INVALID, id="identity-star"),
        pytest.param(f"{GW}&identity=%C3%A4ABCDE&public_key={KEY}", INVALID, id="identity-utf8"),
        pytest.param(f"{GW}&identity=*BAD", INVALID, id="identity-before-public-key"),
        pytest.param(f"{GW}&identity=ECHOECHO", MISSING, id="public-key-missing"),
        pytest.param(f"{GW}&identity=ECHOECHO&public_key=abcd", INVALID, id="public-key-short"),
        pytest.param(f"{GW}&identity=ECHOECHO&public_key={KEY}00", INVALID, id="public-key-long"),
        pytest.param(f"{GW}&identity=ECHOECHO&public_key={'zz' * 32}", INVALID, id="not-hex"),
        pytest.param(f"{GW}&identity=ECHOECHO&public_key=+{KEY[1:]}", INVALID, id="key-sign"),
        pytest.param(
            f"identity=ECHOECHO&public_key={KEY}&type=threema-gateway", MISSING, id="no-s"
        ),
        pytest.param(f"{GW}&identity=ECHOECHO&public_key={KEY}&ttl=x", INVALID, id="bad-ttl"),
    ],
)
async def test_validation(
    start_relay: RelayStarter,
    sim: GatewaySimulator,
    section: Callable[..., str],
    body: str,
    text: str,
) -> None:
    async with start_relay(section(sim.url)) as relay:
        answer = await relay.push(body)
    assert (400, text) == (answer.status, answer.text)
    assert [] == sim.requests


# -- status mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "status"),
    [
        pytest.param(400, 502, id="400-invalid-recipient"),
        pytest.param(401, 502, id="401-bad-credentials"),
        pytest.param(402, 502, id="402-no-credits"),
        pytest.param(413, 502, id="413-too-long"),
        pytest.param(404, 500, id="404"),
        pytest.param(500, 500, id="500"),
        pytest.param(503, 500, id="503"),
    ],
)
async def test_status_mapping(
    start_relay: RelayStarter,
    sim: GatewaySimulator,
    section: Callable[..., str],
    upstream: int,
    status: int,
) -> None:
    sim.script.set(RECIPIENT, upstream)
    async with start_relay(section(sim.url)) as relay:
        answer = await relay.push(form(sim))
    assert (status, NOT_OK) == (answer.status, answer.text)


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        pytest.param(200, None, "delivered", id="200-delivered"),
        pytest.param(400, FailureKind.UPSTREAM, "invalid_recipient", id="400-invalid-recipient"),
        pytest.param(401, FailureKind.UPSTREAM, "bad_credentials", id="401-bad-credentials"),
        pytest.param(402, FailureKind.UPSTREAM, "no_credits", id="402-no-credits"),
        pytest.param(413, FailureKind.UPSTREAM, "message_too_long", id="413-message-too-long"),
        pytest.param(201, FailureKind.INTERNAL, "unexpected_status", id="201-unexpected"),
        pytest.param(404, FailureKind.INTERNAL, "unexpected_status", id="404-unexpected"),
        pytest.param(500, FailureKind.INTERNAL, "unexpected_status", id="500-unexpected"),
        pytest.param(502, FailureKind.INTERNAL, "unexpected_status", id="502-unexpected"),
    ],
)
def test_classify(status: int, kind: FailureKind | None, reason: str) -> None:
    verdict = classify(status, {}, b"" if status != 200 else b"0123456789abcdef")
    assert (kind, reason) == (verdict.kind, verdict.reason)
    assert ("" if status == 200 else f"gateway answered {status}") == verdict.detail


async def test_wrong_secret_is_refused_by_the_gateway(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    async with start_relay(section(sim.url, secret="wrong")) as relay:
        answer = await relay.push(form(sim))
    assert 502 == answer.status
    assert [] == sim.deliveries


async def test_unknown_recipient_is_refused_by_the_gateway(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    async with start_relay(section(sim.url)) as relay:
        answer = await relay.push(form(sim, identity="UNKNOWN1"))
    assert 502 == answer.status


async def test_running_out_of_credits(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    sim.credits = 1
    async with start_relay(section(sim.url)) as relay:
        statuses = [(await relay.push(form(sim))).status for _ in range(2)]
    assert [204, 502] == statuses


async def test_transport_error_answers_400(
    start_relay: RelayStarter, section: Callable[..., str]
) -> None:
    async with start_relay(section(closed_port_url())) as relay:
        answer = await relay.push(f"{GW}&identity={RECIPIENT}&public_key={KEY}")
    assert (400, NOT_OK) == (answer.status, answer.text)


# -- key file, readiness, secrecy ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("ab" * 32 + "\n", "must start with 'private:'", id="no-prefix"),
        pytest.param("private:" + "zz" * 32, "not valid hex", id="bad-hex"),
        pytest.param("private:" + "ab" * 31, "64 hex characters", id="short"),
        pytest.param("private:" + "ab" * 33, "64 hex characters", id="long"),
        pytest.param("private:" + "ab" * 32 + "\n\n", "64 hex characters", id="two-newlines"),
        pytest.param("", "must start with 'private:'", id="empty"),
    ],
)
def test_bad_key_file_is_a_startup_error_naming_the_file(
    tmp_path: Path, content: str, problem: str
) -> None:
    key_file = tmp_path / "bad.key"
    key_file.write_text(content)
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[threema_gateway]\nbase_url = "https://127.0.0.1:1"\nidentity = "*3MAPUSH"\n'
        f'secret = "x"\nprivate_key_file = "{key_file}"\n'
    )
    with pytest.raises(ConfigError) as raised:
        config.load(config_file)
    message = str(raised.value)
    assert str(key_file) in message
    assert problem in message
    assert "\n" not in message


def test_missing_key_file_is_a_startup_error(tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[threema_gateway]\nbase_url = "https://127.0.0.1:1"\nidentity = "*3MAPUSH"\n'
        'secret = "x"\nprivate_key_file = "nowhere.key"\n'
    )
    with pytest.raises(ConfigError, match=r"nowhere\.key"):
        config.load(config_file)


async def test_ready_reports_the_gateway(
    start_relay: RelayStarter, sim: GatewaySimulator, section: Callable[..., str]
) -> None:
    async with start_relay(section(sim.url)) as relay:
        answer = await relay.request("GET", "/ready")
    assert 200 == answer.status
    assert True is json.loads(answer.text)["backends"]["threemagateway"]["ok"]


async def test_secret_and_key_stay_out_of_logs_and_reprs(
    start_relay: RelayStarter,
    sim: GatewaySimulator,
    section: Callable[..., str],
    relay_key: tuple[Path, PrivateKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_relay(section(sim.url)) as relay:
        assert 204 == (await relay.push(form(sim))).status
        sim.script.set(RECIPIENT, 500)
        assert 500 == (await relay.push(form(sim))).status
        backend_repr = repr(relay.runtime.relay.backends)
        config_repr = repr(relay.runtime.config)
    key_hex = bytes(relay_key[1]).hex()
    for text in (caplog.text, backend_repr, config_repr):
        assert SECRET not in text
        assert key_hex not in text


async def test_sandbox_example_answers_204(
    start_relay: RelayStarter, test_ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="push_relay.sandbox")
    part, answers = await answer_sandbox_examples(
        start_relay, gateway_sim.sandbox_part, test_ca, tmp_path
    )
    [example] = part.examples
    assert "&identity=ECHOECHO&public_key=" in example.body
    assert [204] == [a.status for a in answers]
    assert '"wcs":"123deadbeef"' in caplog.text


# -- the simulated phone checks what it decrypts ---------------------------------------------


async def post_box(
    test_ca: TestCA, sim: GatewaySimulator, relay_key: PrivateKey, plaintext: bytes, **extra: str
) -> int:
    box = Box(relay_key, sim.recipients[RECIPIENT].public_key)
    nonce = nacl.utils.random(Box.NONCE_SIZE)
    fields = {
        "secret": SECRET,
        "from": IDENTITY,
        "to": RECIPIENT,
        "nonce": nonce.hex(),
        "box": box.encrypt(plaintext, nonce).ciphertext.hex(),
    }
    fields.update(extra)
    connector = aiohttp.TCPConnector(ssl=test_ca.client_context())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{sim.url}/send_e2e", data=fields) as response,
    ):
        return response.status


@pytest.mark.parametrize(
    ("plaintext", "extra", "status"),
    [
        pytest.param(b'\xfe{"wcs":"s","wct":1,"wcv":3}\x01', {}, 200, id="good"),
        pytest.param(b'\xfe{"wcs":"s"}\x03\x03\x03', {}, 200, id="longer-padding"),
        pytest.param(b'\x01{"wcs":"s"}\x01', {}, 400, id="wrong-type"),
        pytest.param(b'\xfe{"wcs":"s"}', {}, 400, id="no-padding"),
        pytest.param(b'\xfe{"wcs":"s"}\x02\x01', {}, 400, id="bad-padding"),
        pytest.param(b"\xfe{wcs}\x01", {}, 400, id="not-json"),
        pytest.param(b"\xfe[1]\x01", {}, 400, id="not-object"),
        pytest.param(b"\xfe{}\x01", {"secret": "wrong"}, 401, id="bad-secret"),
        pytest.param(b"\xfe{}\x01", {"from": "*OTHERID"}, 401, id="bad-from"),
        pytest.param(b"\xfe{}\x01", {"to": "NOBODY00"}, 400, id="unknown-recipient"),
        pytest.param(b"\xfe{}\x01", {"nonce": "ab"}, 400, id="short-nonce"),
        pytest.param(b"\xfe" + b" " * 7000 + b"{}\x01", {}, 413, id="too-long"),
    ],
)
async def test_simulated_gateway_and_phone(
    sim: GatewaySimulator,
    test_ca: TestCA,
    relay_key: tuple[Path, PrivateKey],
    plaintext: bytes,
    extra: dict[str, str],
    status: int,
) -> None:
    assert status == await post_box(test_ca, sim, relay_key[1], plaintext, **extra)
    assert (1 if status == 200 else 0) == len(sim.deliveries)

"""Logs: one line per push, structured on request, never a token, secret or key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from push_relay import logs
from push_relay.testing.apns_auth import generate_key
from push_relay.testing.apns_sim import ApnsSimulator
from push_relay.testing.apns_sim import Step as ApnsStep
from push_relay.testing.ca import TestCA
from push_relay.testing.fcm_sim import UNREGISTERED, FcmSimulator, device_token
from push_relay.testing.hms_sim import ALL_TOKENS_INVALID, HmsReply, HmsSimulator
from push_relay.testing.process import GatewayRig, RelayProcess
from push_relay.testing.relay import RelayStarter

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
APP = "104455555"
SECRET = "hms-client-secret-never-logged"
HASH_KEY = "log-hash-key-never-logged"
DEVICES = ["dEvIcEtOkEn-ok-0123456789abcdef", "dEvIcEtOkEn-bad-0123456789abcdef"]
SESSION = "0123456789abcdefSESSIONTAIL"


def token_hash(token: str) -> str:
    key = hashlib.sha256(HASH_KEY.encode()).digest()
    return hashlib.blake2b(token.encode(), key=key, digest_size=8).hexdigest()


@pytest.fixture
async def hms(test_ca: TestCA) -> AsyncIterator[HmsSimulator]:
    simulator = HmsSimulator(test_ca)
    simulator.add_app(APP, SECRET)
    await simulator.start()
    yield simulator
    await simulator.stop()


def config_text(hms: HmsSimulator, gateway: GatewayRig) -> str:
    return f'[server]\nlog_hash_key = "{HASH_KEY}"\n\n{gateway.section}\n' + hms.config_toml(APP)


async def run_pushes(
    config: Path, gateway: GatewayRig, *args: str, env: dict[str, str] | None = None
) -> str:
    """Start the relay, send an HMS push that works, one the device refuses and a gateway
    push, stop it with SIGTERM and return everything it logged."""
    relay = await RelayProcess.start(config, *args, env=env)
    try:
        async with aiohttp.ClientSession() as session:
            for token in DEVICES:
                form = {"type": "hms", "appid": APP, "token": token}
                form |= {"session": SESSION, "version": "3"}
                async with session.post(relay.url + "/push", data=form, headers=FORM) as answer:
                    await answer.read()
            push = gateway.push(SESSION)
            async with session.post(relay.url + "/push", data=push, headers=FORM) as answer:
                assert 204 == answer.status
        assert 0 == await relay.stop()
    finally:
        relay.kill()
    return relay.logs()


def secrets_of(hms: HmsSimulator, gateway: GatewayRig, config: Path) -> list[str]:
    access_tokens = [
        r.headers["authorization"].removeprefix("Bearer ")
        for r in hms.requests_to("/messages:send")
    ]
    key_file = config.parent / "gateway.key"
    gateway_key = key_file.read_text().strip().removeprefix("private:")
    assert access_tokens and gateway_key
    return [*DEVICES, SECRET, HASH_KEY, gateway.secret, gateway_key, *access_tokens]


async def test_json_logs_have_one_line_per_push_and_no_secret(
    hms: HmsSimulator, gateway: GatewayRig, tmp_path: Path
) -> None:
    hms.script.set(DEVICES[1], ALL_TOKENS_INVALID)
    config = tmp_path / "relay.toml"
    config.write_text(config_text(hms, gateway))

    logs = await run_pushes(config, gateway, "--log-format", "json", "--workers", "2")

    for secret in secrets_of(hms, gateway, config):
        assert secret not in logs
    entries = [json.loads(line) for line in logs.splitlines()]  # every line is JSON
    pushes = [e for e in entries if e["logger"] == "push_relay.push"]
    assert [
        ("hms", 204, "delivered", token_hash(DEVICES[0])),
        ("hms", 400, "invalid_token", token_hash(DEVICES[1])),
        ("threemagateway", 204, "delivered", token_hash("ECHOECHO")),
    ] == [(e["push_type"], e["outcome"], e["reason"], e["token_hash"]) for e in pushes]
    for entry in pushes:
        assert SESSION[:10] == entry["session"]
        assert "info" == entry["level"]
        assert isinstance(entry["duration_ms"], float)
    assert 200 == pushes[1]["upstream_status"]  # Push Kit's HTTP status for a refused token
    assert APP == pushes[0]["app"]


async def test_log_level_from_environment_hides_push_lines(
    hms: HmsSimulator, gateway: GatewayRig, tmp_path: Path
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(config_text(hms, gateway))

    quiet = await run_pushes(config, gateway, env={"LOG_LEVEL": "warning"})
    loud = await run_pushes(config, gateway, "--log-level", "info", env={"LOG_LEVEL": "warning"})

    assert "push type=" not in quiet
    assert 3 == loud.count(" push type=")
    assert f"session={SESSION[:10]} device={token_hash(DEVICES[0])}" in loud
    assert SESSION not in loud  # only the session's first 10 characters


async def test_upstream_detail_never_carries_the_device_token(
    start_relay: RelayStarter,
    hms: HmsSimulator,
    gateway: GatewayRig,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Huawei lists refused tokens in its answer; the relay logs only hashes, at any level."""
    hms.script.set(DEVICES[1], ALL_TOKENS_INVALID)
    form = {"type": "hms", "appid": APP, "token": DEVICES[1], "session": SESSION, "version": "3"}
    caplog.set_level(logging.DEBUG)
    async with start_relay(config_text(hms, gateway)) as relay:
        answers = await asyncio.gather(*(relay.push(form) for _ in range(3)))
    assert [400] * 3 == [answer.status for answer in answers]
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert 3 == text.count(f"device={token_hash(DEVICES[1])}")
    assert DEVICES[1] not in text
    assert SECRET not in text


async def test_failures_that_are_not_the_clients_are_warnings_even_at_warning_level(
    start_relay: RelayStarter, gateway: GatewayRig, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.simulator.add_recipient("BROKEN11")
    gateway.simulator.script.set("BROKEN11", 500)
    caplog.set_level(logging.WARNING)
    async with start_relay(gateway.section) as relay:
        assert 204 == (await relay.push(gateway.push())).status
        assert 500 == (await relay.push(gateway.push(identity="BROKEN11"))).status
    pushes = [r for r in caplog.records if r.name == "push_relay.push"]
    assert [logging.WARNING] == [record.levelno for record in pushes]
    assert "outcome=500 reason=unexpected_status upstream_status=500" in pushes[0].getMessage()


def test_unknown_log_level_in_the_environment_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[server]\n")
    result = subprocess.run(
        [sys.executable, "-m", "push_relay", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "LOG_LEVEL": "verbose"},
        timeout=30,
    )
    assert 2 == result.returncode
    expected = "push-relay: LOG_LEVEL must be one of debug, info, warning, error, not 'verbose'\n"
    assert expected == result.stderr


def pem_lines(pem: str | bytes) -> list[str]:
    text = pem.decode() if isinstance(pem, bytes) else pem
    return [line for line in text.splitlines() if line and not line.startswith("-----")]


async def test_fcm_and_apns_credentials_never_reach_the_logs_even_at_debug(
    test_ca: TestCA, tmp_path: Path
) -> None:
    fcm = FcmSimulator(test_ca)
    apns_key = generate_key(tmp_path)
    apns = ApnsSimulator(test_ca, apns_key)
    await fcm.start()
    await apns.start()
    fcm_tokens = [device_token("log-ok"), device_token("log-gone")]
    apns_tokens = ["ab" * 32, "cd" * 32]
    fcm.script.set(fcm_tokens[1], UNREGISTERED)
    apns.script.set(apns_tokens[1], ApnsStep(reason="Unregistered"))
    config = tmp_path / "relay.toml"
    config.write_text(fcm.config_toml() + apns_key.config_toml(apns.url, apns.url))
    relay = await RelayProcess.start(config, "--workers", "2", "--log-level", "debug")
    forms = [{"type": "fcm", "token": token} for token in fcm_tokens]
    forms += [
        {"type": "apns", "token": token, "bundleid": "ch.threema.iapp", "endpoint": "s"}
        for token in apns_tokens
    ]
    try:
        async with aiohttp.ClientSession() as session:
            for form in forms:
                data = form | {"session": SESSION, "version": "3"}
                async with session.post(relay.url + "/push", data=data, headers=FORM) as answer:
                    await answer.read()
        assert 0 == await relay.stop()
    finally:
        relay.kill()
        await fcm.stop()
        await apns.stop()
    logs = relay.logs()

    headers = [r.headers for r in fcm.requests] + [r.headers for r in apns.requests]
    bearer = [h["authorization"].split(" ")[-1] for h in headers]
    secrets = [*fcm_tokens, *apns_tokens, *bearer]
    secrets += pem_lines(fcm.account.private_key_pem) + pem_lines(apns_key.pem)
    assert len(bearer) == 4
    for secret in secrets:
        assert secret not in logs
    assert 4 == logs.count(" push type=")
    assert "outcome=400 reason=unregistered" in logs.lower()


# -- escaping: no request (or upstream) can write a line of its own ----------------------------

HOSTILE_CHARS = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u2028", "\u2029"]
HOSTILE = [f"a{char}FORGED" for char in HOSTILE_CHARS] + ["A" * 10240, "\n" * 10240]


@pytest.mark.parametrize(
    "value",
    HOSTILE,
    ids=[f"{ord(c):#06x}" for c in HOSTILE_CHARS]
    + [
        "10k-letters",
        "10k-newlines",
    ],
)
def test_escape_keeps_a_value_on_its_line_and_within_64_characters(value: str) -> None:
    escaped = logs.escape(value)
    assert len(escaped) <= logs.MAX_VALUE_CHARS
    assert escaped.isascii() and escaped.isprintable()
    assert [escaped] == escaped.splitlines()
    if len(value) < 20:
        code = ord(value[1])
        mark = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        assert f"a{mark}FORGED" == escaped


def test_escape_marks_backslash_and_quote_and_never_cuts_an_escape() -> None:
    assert "a\\x5cb\\x22c" == logs.escape('a\\b"c')
    assert "é" * 0 + "\\xe9" * 16 == logs.escape("é" * 100)  # 16 * 4 = 64 characters
    assert "ab" == logs.escape("ab\u2028", limit=7)  # `\u2028` would need 6 more


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_hostile_values_never_start_a_log_line(
    hms: HmsSimulator, gateway: GatewayRig, tmp_path: Path, fmt: str
) -> None:
    """Session, app id and the upstream's own words carry every C0 control, DEL, U+0085,
    U+2028/U+2029 and long values (10 KiB from the upstream); each push makes one line."""
    config = tmp_path / "relay.toml"
    config.write_text(config_text(hms, gateway))
    relay = await RelayProcess.start(config, "--log-format", fmt)
    pushes = 0
    try:
        async with aiohttp.ClientSession() as session:
            for value in HOSTILE:
                # a request body holds at most 4 KiB; the upstream's answer carries 10 KiB
                field = value[:600]  # two of them, percent-encoded, fit
                hms.script.set(field, HmsReply(code=value))
                forms = [
                    {"type": "hms", "appid": field, "token": "t", "session": "s", "version": "3"},
                    {"type": "hms", "appid": APP, "token": field, "session": field},
                ]
                forms[1]["version"] = "3"
                for form in forms:
                    async with session.post(relay.url + "/push", data=form, headers=FORM) as r:
                        assert r.status in (400, 500)
                        pushes += 1
        assert 0 == await relay.stop()
    finally:
        relay.kill()
    lines = relay.log_file.read_bytes().decode().split("\n")[:-1]
    assert all(line.isascii() and line.isprintable() for line in lines)
    assert not any("FORGED" in line.split(" ", 1)[0] for line in lines)
    if fmt == "json":
        entries = [json.loads(line) for line in lines]
        push_lines = [e for e in entries if e["logger"] == "push_relay.push"]
        assert all(len(e.get("app", "")) <= 64 and len(e["session"]) <= 10 for e in push_lines)
    else:
        assert all(line[:4].isdigit() for line in lines)  # each starts with its timestamp
        push_lines = [line for line in lines if " push type=" in line]
        assert all(len(line) < 400 for line in push_lines)
    assert pushes == len(push_lines)

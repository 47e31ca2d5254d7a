"""The relay tried as an attacker would (contract §12): no request can hurt other users' pushes,
the logs, or the process.

Each attack runs against the real front end; the APNs simulator stands in for Apple and counts
the connections the relay opened to it, so a request that broke the shared connection shows.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from push_relay import logs
from push_relay.testing.apns_auth import ApnsKey, generate_key
from push_relay.testing.apns_sim import ApnsSimulator
from push_relay.testing.ca import TestCA
from push_relay.testing.ports import free_port
from push_relay.testing.relay import FORM, RelayStarter, RunningRelay

DEVICE = "0123456789abcdef" * 4
NOT_OK = "Push not successful"
INVALID = "Invalid parameters"


def apns_push(**extra: str) -> dict[str, str]:
    params = {
        "type": "apns",
        "token": DEVICE,
        "session": "123deadbeef",
        "version": "3",
        "bundleid": "com.example.app",
        "endpoint": "p",
    }
    return params | extra


@pytest.fixture
def apns_key(tmp_path: Path) -> ApnsKey:
    return generate_key(tmp_path)


@pytest.fixture
async def apns(test_ca: TestCA, apns_key: ApnsKey) -> AsyncIterator[ApnsSimulator]:
    sim = ApnsSimulator(test_ca, apns_key)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def relay(
    start_relay: RelayStarter, apns: ApnsSimulator, apns_key: ApnsKey
) -> AsyncIterator[RunningRelay]:
    async with start_relay(apns_key.config_toml(apns.url, apns.url)) as running:
        yield running


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """What the relay's text log format makes of every record, as an operator would read it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines_start_with_a_timestamp(text: str) -> bool:
    return all(line[:4].isdigit() and line[4] == "-" for line in text.splitlines())


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Write `data` on a fresh connection and read until the relay closes it."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        try:
            await writer.drain()
            writer.write_eof()
        except ConnectionError:  # the relay answered and closed while we were still writing
            pass
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


# -- upstream-bound values: one bad request must not break everyone's pushes -----------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"bundleid": "com.example.app\r\nx-evil: 1"}, id="bundleid-crlf"),
        pytest.param({"bundleid": "com.example.app\x00"}, id="bundleid-nul"),
        pytest.param({"bundleid": "com.example.app "}, id="bundleid-trailing-space"),
        pytest.param({"token": DEVICE + "\r\n"}, id="token-crlf"),
        pytest.param({"token": DEVICE + " HTTP/1.1"}, id="token-space"),
        pytest.param({"token": "../../3/device/" + DEVICE}, id="token-path-traversal"),
        pytest.param({"collapse_key": "k\nx-evil: 1"}, id="collapse-key-lf"),
        pytest.param({"collapse_key": "k\x00"}, id="collapse-key-nul"),
    ],
)
async def test_a_bad_value_among_100_good_pushes_fails_alone(
    relay: RunningRelay, apns: ApnsSimulator, bad: dict[str, str]
) -> None:
    apns.answer_delay = 0.2  # every push is on the wire while the bad one arrives
    good = [relay.push(apns_push(session=f"s{i}")) for i in range(100)]
    answers = await asyncio.gather(relay.push(apns_push(**bad)), *good)

    assert (400, INVALID) == (answers[0].status, answers[0].text)
    assert [204] * 100 == [answer.status for answer in answers[1:]]
    assert 100 == len(apns.deliveries)  # the bad one was never sent
    assert 1 == apns.connections_accepted


# -- logs ------------------------------------------------------------------------------------


async def test_log_injection_through_appid_stays_on_its_line(
    start_relay: RelayStarter, text_log: io.StringIO
) -> None:
    form = {"type": "hms", "appid": "x\n2026-01-01 00:00:00,000 ERROR push_relay: FORGED"}
    form |= {"token": "t", "session": "s\u2028FORGED", "version": "3"}
    async with start_relay() as relay:
        answer = await relay.push(form)
    assert 400 == answer.status
    written = text_log.getvalue()
    assert "app=x\\x0a2026-01-01 00:00:00,000 ERROR" in written
    assert "FORGED" in written
    assert lines_start_with_a_timestamp(written)
    assert not any(line.startswith("2026-01-01") for line in written.splitlines())


# -- front-end limits ------------------------------------------------------------------------


async def test_a_1_mib_header_is_refused_431_without_being_read(relay: RunningRelay) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: r\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer = await raw_exchange(relay.url, request)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert answer.endswith(b"Request header fields too large")
    assert 200 == (await relay.request("GET", "/health")).status


async def test_10000_header_fields_are_refused_431(relay: RunningRelay) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(10_000))
    answer = await raw_exchange(
        relay.url, b"GET /health HTTP/1.1\r\nHost: r\r\n" + fields + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert 200 == (await relay.request("GET", "/health")).status


async def test_many_connections_beyond_max_connections_are_refused_and_the_relay_recovers(
    start_relay: RelayStarter,
) -> None:
    async with start_relay("[server]\nmax_connections = 50\n") as relay:
        parts = urlsplit(relay.url)
        assert parts.hostname is not None and parts.port is not None
        opened = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(80)]
        answers = [
            await asyncio.wait_for(reader.read(), 10) for reader, _ in opened[50:]
        ]  # the 30 beyond the limit are answered at once; the first 50 stay open
        for _, writer in opened:
            writer.close()
        await asyncio.sleep(0.2)
        after = await relay.request("GET", "/health")
    assert [b"Too many connections"] * 30 == [a.partition(b"\r\n\r\n")[2] for a in answers]
    assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers)
    assert 200 == after.status


async def test_metrics_and_ready_are_not_public_with_an_admin_listener(
    start_relay: RelayStarter,
) -> None:
    admin = f"127.0.0.1:{free_port()}"
    async with start_relay(f'[server]\nadmin_listen = "{admin}"\n') as relay:
        public = [(await relay.request("GET", p)).status for p in ("/metrics", "/ready")]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{admin}/metrics") as answer,
        ):
            private = answer.status
    assert [404, 404] == public
    assert 200 == private


# -- origins ---------------------------------------------------------------------------------


async def test_a_foreign_origin_sends_nothing(
    start_relay: RelayStarter, apns: ApnsSimulator, apns_key: ApnsKey
) -> None:
    toml = '[server]\ncors_origins = ["https://web.threema.ch"]\n'
    toml += apns_key.config_toml(apns.url, apns.url)
    async with start_relay(toml) as relay:
        foreign = await relay.push(apns_push(), headers={"Origin": "https://evil.example"})
        own = await relay.push(apns_push(), headers={"Origin": "https://web.threema.ch"})
    assert (403, "Origin not allowed") == (foreign.status, foreign.text)
    assert 204 == own.status
    assert 1 == len(apns.requests)


# -- anything at all -------------------------------------------------------------------------

FIELDS = ["type", "token", "session", "version", "bundleid", "endpoint", "collapse_key", "ttl"]
APNS_VALUES = ["apns", DEVICE, "com.example.app", "p", "s", "3", "90", "", "x.voip"]
any_text = st.text(max_size=30)
field_values = st.one_of(st.sampled_from(APNS_VALUES), any_text)
form_bodies = st.one_of(
    # a valid push with some of its fields replaced: many reach the simulator
    st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=3).map(
        lambda form: urlencode(apns_push() | form, quote_via=quote)
    ),
    st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=9).map(
        lambda form: urlencode({"type": "apns", **form}, quote_via=quote)
    ),
    st.text(max_size=100).map(lambda text: quote(text, safe="&=%+")),
)
# header names the HTTP grammar allows (a token), and any visible value; framing headers
# (Content-Length, Transfer-Encoding, ...) are the client's own and left alone
header_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~",
    min_size=1,
    max_size=20,
).filter(
    lambda n: (
        n.lower()
        not in {"content-length", "transfer-encoding", "connection", "expect", "upgrade", "host"}
    )
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60
).map(str.strip)
forwarded_for = st.one_of(
    st.none(),
    st.lists(st.one_of(st.ip_addresses().map(str), header_values), max_size=4).map(", ".join),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=form_bodies,
    headers=st.dictionaries(header_names, header_values, max_size=8),
    xff=forwarded_for,
    origin=st.none() | header_values,
)
async def test_no_request_makes_a_5xx_a_traceback_a_stray_log_line_or_a_new_connection(
    relay: RunningRelay,
    apns: ApnsSimulator,
    text_log: io.StringIO,
    caplog: pytest.LogCaptureFixture,
    body: str,
    headers: dict[str, str],
    xff: str | None,
    origin: str | None,
) -> None:
    sent = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    if xff is not None:
        sent["X-Forwarded-For"] = xff
    if origin is not None:
        sent["Origin"] = origin
    refusals_before = len([r for r in apns.requests if r.status != 200])
    answer = await relay.push(body, content_type=FORM, headers=sent)

    if answer.status == 502:
        # APNs itself refused the push for a reason the contract maps to 502 (an empty
        # token: MissingDeviceToken); the relay failed at nothing
        assert refusals_before + 1 == len([r for r in apns.requests if r.status != 200])
    else:
        assert answer.status < 500, answer
    event(f"answered {answer.status}")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in text_log.getvalue()
    assert lines_start_with_a_timestamp(text_log.getvalue())
    assert apns.connections_accepted <= 1

"""Rate limits (`[limits]`, contract §12): GCRA per device target and per client address,
counted in-process or in a real `redis-server` shared by workers and instances.

Refill is driven by a fake clock (`Clients(rate_clock=...)`), so nothing sleeps for a limit.
The Redis tests start their own `redis-server` on a free loopback port (files in the test's
directory, nothing persisted) and stop, freeze or restart it by its PID.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from helpers import FakeClock
from push_relay import config
from push_relay.backends import Clients
from push_relay.cli import summarize
from push_relay.errors import ConfigError
from push_relay.ratelimit import ADMITTED, Rule, Verdict
from push_relay.ratelimit._clients import ClientAddress
from push_relay.ratelimit._memory import MemoryStore
from push_relay.ratelimit._redis import HASH_KEY_NAME, RedisStore
from push_relay.relay import Outcome
from push_relay.request import PushRequest
from push_relay.testing.ca import TestCA
from push_relay.testing.fcm_sim import FcmSimulator, device_token
from push_relay.testing.process import GatewayRig, RelayProcess
from push_relay.testing.redis_server import RedisServer
from push_relay.testing.relay import Answer, RelayStarter, RunningRelay

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NOW = 1_800_000_000.0
IDENTITY = "ECHOECHO"  # the gateway push's device target


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def limits(**keys: Any) -> str:
    def toml(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, str):
            return f'"{value}"'
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return str(value)

    lines = (f"{k} = {toml(v)}\n" for k, v in keys.items() if v is not None)
    return "[limits]\n" + "".join(lines)


def statuses(answers: list[Answer]) -> list[int]:
    return [answer.status for answer in answers]


class Recorder:
    """An observer as InfluxDB is one: told about every push that gets an outcome."""

    def __init__(self) -> None:
        self.seen: list[Outcome] = []

    def observe(self, push: PushRequest, outcome: Outcome) -> None:
        self.seen.append(outcome)


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# -- the algorithm, in both stores --------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., MemoryStore | RedisStore]]:
    """Builds the parametrized store with the given rules and the test's clock."""
    server = None
    stores: list[MemoryStore | RedisStore] = []
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis")
        server.start()

    def make(
        client: Rule | None, token: Rule | None, clock: Callable[[], float]
    ) -> MemoryStore | RedisStore:
        store: MemoryStore | RedisStore
        if server is None:
            store = MemoryStore(client, token, clock)
        else:
            store = RedisStore(server.url, client, token, timeout=1.0, clock=clock)
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.aclose()
        if server is not None:
            server.stop()


async def check(store: MemoryStore | RedisStore, client: str | None, target: str | None) -> Verdict:
    return await store.check(client, target)


async def test_a_key_admits_its_burst_then_one_per_interval(
    make_store: Callable[..., MemoryStore | RedisStore], clock: FakeClock
) -> None:
    store = make_store(None, Rule.per_minute(6, 3), clock)  # burst 3, then one every 10 s
    burst = [await check(store, None, "token-a") for _ in range(4)]
    assert [ADMITTED] * 3 + [Verdict("token", 10)] == burst
    clock.advance(9.5)
    assert Verdict("token", 1) == await check(store, None, "token-a")  # 0.5 s left: 1
    clock.advance(0.5)
    assert ADMITTED == await check(store, None, "token-a")
    assert Verdict("token", 10) == await check(store, None, "token-a")
    assert ADMITTED == await check(store, None, "token-b")  # another device counts alone
    clock.advance(30)  # a full refill, and no more than the burst
    assert [ADMITTED] * 3 + [Verdict("token", 10)] == [
        await check(store, None, "token-a") for _ in range(4)
    ]


async def test_retry_after_is_rounded_up_to_whole_seconds(
    make_store: Callable[..., MemoryStore | RedisStore], clock: FakeClock
) -> None:
    store = make_store(None, Rule.per_minute(7, 1), clock)  # one every 8.571428 s
    assert ADMITTED == await check(store, None, "t")
    assert Verdict("token", 9) == await check(store, None, "t")
    clock.advance(8.5)
    assert Verdict("token", 1) == await check(store, None, "t")


async def test_the_client_limit_is_checked_first_and_counts_every_request(
    make_store: Callable[..., MemoryStore | RedisStore], clock: FakeClock
) -> None:
    store = make_store(Rule.per_minute(60, 3), Rule.per_minute(60, 1), clock)
    answers = [await check(store, "192.0.2.1", "same-token") for _ in range(4)]
    # the 2nd and 3rd pass the client limit and fail the token's; the 4th fails the client's
    assert [ADMITTED, Verdict("token", 1), Verdict("token", 1), Verdict("client", 1)] == answers
    assert ADMITTED == await check(store, "192.0.2.2", "other-token")


async def test_concurrent_checks_of_one_turn_are_exact(
    make_store: Callable[..., MemoryStore | RedisStore], clock: FakeClock
) -> None:
    store = make_store(None, Rule.per_minute(60, 5), clock)
    verdicts = await asyncio.gather(*(store.check(None, f"t{i % 3}") for i in range(30)))
    for token in range(3):
        mine = verdicts[token::3]
        assert [ADMITTED] * 5 + [Verdict("token", 1)] * 5 == mine


async def test_the_memory_store_forgets_keys_that_hold_nothing_back(clock: FakeClock) -> None:
    store = MemoryStore(Rule.per_minute(60, 2), Rule.per_minute(60, 2), clock)
    for i in range(1000):
        assert ADMITTED == await store.check(f"client-{i % 500}", f"token-{i}")
    assert 1500 == len(store)
    clock.advance(3)  # every key is back to a full burst: nothing worth remembering
    for i in range(1000):
        await store.check(f"later-client-{i}", f"later-token-{i}")
    assert 2000 == len(store)  # only the later keys: each admission forgot two expired ones


# -- which client --------------------------------------------------------------------------------


def scope_of(peer: str, *forwarded: str) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"client": (peer, 40000), "headers": [(b"host", b"relay"), *headers]}


PROXIES = ("127.0.0.1/32", "10.0.0.0/8", "2001:db8:f::/48")


@pytest.mark.parametrize(
    ("trusted", "scope", "client"),
    [
        pytest.param((), scope_of("192.0.2.7", "198.51.100.1"), "192.0.2.7", id="no-proxies"),
        pytest.param(
            PROXIES, scope_of("192.0.2.7", "198.51.100.1"), "192.0.2.7", id="spoof-untrusted"
        ),
        pytest.param(PROXIES, scope_of("127.0.0.1"), "127.0.0.1", id="proxy-without-header"),
        pytest.param(
            PROXIES, scope_of("127.0.0.1", "198.51.100.1"), "198.51.100.1", id="one-proxy"
        ),
        pytest.param(
            PROXIES,
            scope_of("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3"),
            "198.51.100.1",
            id="chain-skips-trusted-and-ignores-the-clients-own",
        ),
        pytest.param(
            PROXIES,
            scope_of("127.0.0.1", "6.6.6.6", "198.51.100.1, 10.1.2.3"),
            "198.51.100.1",
            id="several-headers-joined",
        ),
        pytest.param(
            PROXIES,
            scope_of("127.0.0.1", "198.51.100.1, not-an-ip, 10.1.2.3"),
            "10.1.2.3",
            id="malformed-stops-at-the-last-trusted-hop",
        ),
        pytest.param(
            PROXIES, scope_of("127.0.0.1", "198.51.100.1,,  "), "198.51.100.1", id="empty-elements"
        ),
        pytest.param(
            PROXIES, scope_of("127.0.0.1", "198.51.100.1:5123"), "198.51.100.1", id="v4-with-port"
        ),
        pytest.param(
            PROXIES,
            scope_of("127.0.0.1", "[2001:db8::1]:443, 2001:db8:f::9"),
            "2001:db8::1",
            id="v6-bracketed-behind-v6-proxy",
        ),
        pytest.param(
            PROXIES, scope_of("::ffff:127.0.0.1", "198.51.100.1"), "198.51.100.1", id="mapped-peer"
        ),
        pytest.param(PROXIES, scope_of("127.0.0.1", "10.0.0.2"), "10.0.0.2", id="all-trusted"),
        pytest.param(PROXIES, {"client": None, "headers": []}, None, id="no-peer"),
    ],
)
def test_client_address(
    trusted: tuple[str, ...], scope: dict[str, Any], client: str | None
) -> None:
    resolve = ClientAddress(ipaddress.ip_network(n) for n in trusted)
    assert client == resolve(scope)


# -- configuration -------------------------------------------------------------------------------


def test_defaults_are_the_contracts(write_config: Callable[[str], Path]) -> None:
    cfg = config.load(write_config("[limits]\n"))
    assert cfg.limits is not None
    assert (0, 10, 0, 100, (), None, 100, True) == (
        cfg.limits.token_per_minute,
        cfg.limits.token_burst,
        cfg.limits.client_per_minute,
        cfg.limits.client_burst,
        cfg.limits.trusted_proxies,
        cfg.limits.redis_url,
        cfg.limits.redis_timeout_ms,
        cfg.limits.redis_fail_open,
    )
    assert not cfg.limits.active
    assert config.load(write_config("[server]\n")).limits is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("token_per_minute = -1", "limits.token_per_minute", id="negative-rate"),
        pytest.param("client_burst = 0", "limits.client_burst", id="zero-burst"),
        pytest.param("token_burst = 1.5", "limits.token_burst", id="float-burst"),
        pytest.param('trusted_proxies = ["10.0.0.0/33"]', "limits.trusted_proxies", id="bad-cidr"),
        pytest.param('trusted_proxies = "10.0.0.0/8"', "limits.trusted_proxies", id="not-a-list"),
        pytest.param('redis_url = "http://127.0.0.1:6379"', "limits.redis_url", id="bad-scheme"),
        pytest.param('redis_url = "redis://127.0.0.1:99999"', "limits.redis_url", id="bad-port"),
        pytest.param('redis_url = "unix://"', "limits.redis_url", id="unix-without-path"),
        pytest.param("redis_timeout_ms = 0", "limits.redis_timeout_ms", id="zero-timeout"),
        pytest.param('redis_fail_open = "yes"', "limits.redis_fail_open", id="not-a-bool"),
    ],
)
def test_a_bad_limits_key_is_a_one_line_error_naming_file_and_key(
    write_config: Callable[[str], Path], text: str, key: str
) -> None:
    path = write_config(f"[limits]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: [{key}]: ")
    assert "\n" not in message


# -- through the relay (in-process store) ----------------------------------------------------------


async def test_without_limits_the_push_path_has_no_limiter(
    start_relay: RelayStarter, gateway: GatewayRig
) -> None:
    async with start_relay(gateway.section) as relay:
        assert relay.runtime.limiter is None
        assert [204] * 30 == statuses([await relay.push(gateway.push()) for _ in range(30)])
    async with start_relay(gateway.section + limits(token_burst=1)) as relay:
        assert relay.runtime.limiter is None  # both limits off (per_minute 0)


async def test_a_device_over_its_limit_is_answered_429_and_nothing_is_sent(
    start_relay: RelayStarter, gateway: GatewayRig, clock: FakeClock
) -> None:
    toml = gateway.section + limits(token_per_minute=6, token_burst=3)
    async with start_relay(toml, clients=Clients(rate_clock=clock)) as relay:
        recorder = Recorder()
        relay.runtime.relay.observers.append(recorder)
        before = await scrape(relay.url)
        answers = [await relay.push(gateway.push()) for _ in range(5)]
        after = await scrape(relay.url)
        clock.advance(10)
        refilled = [await relay.push(gateway.push()) for _ in range(2)]

    assert [204, 204, 204, 429, 429] == statuses(answers)
    refused = answers[3]
    assert "Too many requests" == refused.text
    assert "text/plain; charset=utf-8" == refused.headers["content-type"]
    assert "10" == refused.headers["retry-after"]
    assert "*" == refused.headers["access-control-allow-origin"]
    assert [204, 429] == statuses(refilled)
    assert 4 == len(gateway.simulator.deliveries)
    assert 4 == len(recorder.seen)  # InfluxDB's view: a limited push writes no point
    limited = ("push_relay_rate_limited_total", {"scope": "token"})
    assert 2 == sample(after, limited[0], **limited[1]) - sample(before, limited[0], **limited[1])
    labels = {"backend": "threemagateway", "outcome": "429", "reason": "rate_limited"}
    assert 2 == sample(after, "push_relay_requests_total", **labels) - sample(
        before, "push_relay_requests_total", **labels
    )


async def test_invalid_requests_do_not_consume_the_limit(
    start_relay: RelayStarter, gateway: GatewayRig, clock: FakeClock
) -> None:
    toml = gateway.section + limits(
        token_per_minute=1, token_burst=2, client_per_minute=1, client_burst=2
    )
    async with start_relay(toml, clients=Clients(rate_clock=clock)) as relay:
        invalid = gateway.push() | {"version": "x"}
        refused = [await relay.push(invalid) for _ in range(5)]
        answers = [await relay.push(gateway.push()) for _ in range(3)]
    assert [400] * 5 == statuses(refused)
    assert [204, 204, 429] == statuses(answers)


async def test_the_client_limit_ignores_a_spoofed_forwarded_for(
    start_relay: RelayStarter, gateway: GatewayRig, clock: FakeClock
) -> None:
    toml = gateway.section + limits(client_per_minute=60, client_burst=3)
    async with start_relay(toml, clients=Clients(rate_clock=clock)) as relay:
        answers = [
            await relay.push(gateway.push(), headers={"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(5)
        ]
    assert [204, 204, 204, 429, 429] == statuses(answers)
    assert "1" == answers[3].headers["retry-after"]


async def test_behind_a_trusted_proxy_each_forwarded_client_counts_alone(
    start_relay: RelayStarter, gateway: GatewayRig, clock: FakeClock
) -> None:
    toml = gateway.section + limits(
        client_per_minute=60, client_burst=2, trusted_proxies=["127.0.0.0/8"]
    )
    async with start_relay(toml, clients=Clients(rate_clock=clock)) as relay:

        async def from_client(address: str, spoof: str = "") -> int:
            forwarded = f"{spoof}, {address}" if spoof else address
            answer = await relay.push(gateway.push(), headers={"X-Forwarded-For": forwarded})
            return answer.status

        first = [await from_client("198.51.100.1", spoof=f"6.6.6.{i}") for i in range(3)]
        second = [await from_client("198.51.100.2") for _ in range(3)]
    assert [204, 204, 429] == first  # what the client wrote left of its address is ignored
    assert [204, 204, 429] == second


async def test_a_limited_key_is_logged_once_a_minute_without_its_token(
    start_relay: RelayStarter,
    gateway: GatewayRig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="push_relay.limits")
    toml = gateway.section + limits(token_per_minute=1, token_burst=1)
    async with start_relay(toml, clients=Clients(rate_clock=clock)) as relay:
        answers = [await relay.push(gateway.push()) for _ in range(6)]
        clock.advance(59)
        answers.append(await relay.push(gateway.push()))
        clock.advance(1)  # a minute after the first line: refilled, then limited again
        answers += [await relay.push(gateway.push()) for _ in range(2)]
        device = relay.runtime.relay.hasher(IDENTITY)
    lines = [r.getMessage() for r in caplog.records if r.name == "push_relay.limits"]
    assert [204, 429, 429, 429, 429, 429, 429, 204, 429] == statuses(answers)
    assert 2 == len(lines), lines
    assert all(f"device={device}" in line and "scope=token" in line for line in lines)
    assert not [line for line in caplog.messages if IDENTITY in line]


# -- shared in Redis ------------------------------------------------------------------------------


def recipient(gateway: GatewayRig, identity: str) -> dict[str, str]:
    """A push to another Threema user the gateway knows: another device target."""
    key = gateway.simulator.add_recipient(identity)
    return gateway.push(identity=identity) | {"public_key": key}


async def redis_contents(server: RedisServer) -> dict[bytes, bytes]:
    """Every key in the server (SCAN over all of them) with its value."""
    client = Redis.from_url(server.url)
    try:
        return {key: await client.get(key) or b"" async for key in client.scan_iter(count=1000)}
    finally:
        await client.aclose()


async def test_redis_store_through_the_relay_keeps_only_hashes(
    start_relay: RelayStarter,
    gateway: GatewayRig,
    redis_server: RedisServer,
    clock: FakeClock,
) -> None:
    toml = gateway.section + limits(
        token_per_minute=6, token_burst=3, client_per_minute=600, redis_url=redis_server.url
    )
    async with start_relay(toml, clients=Clients(rate_clock=clock)) as relay:
        answers = [await relay.push(gateway.push()) for _ in range(4)]
        clock.advance(10)
        answers += [await relay.push(gateway.push()) for _ in range(2)]
        ready = await relay.request("GET", "/ready")
    stored = await redis_contents(redis_server)

    assert [204, 204, 204, 429, 204, 429] == statuses(answers)
    assert "10" == answers[3].headers["retry-after"]
    assert {"ok": True, "detail": "Redis reachable"} == json.loads(ready.text)["limits"]
    assert 3 == len(stored)  # the hash key, one device, one client
    assert HASH_KEY_NAME.encode() in stored
    everything = b" ".join(stored) + b" " + b" ".join(stored.values())
    for secret in (IDENTITY, "127.0.0.1", gateway.recipient_key):
        assert secret.encode() not in everything


@pytest.fixture
def shared_config(
    gateway: GatewayRig, redis_server: RedisServer, tmp_path: Path
) -> Callable[..., Path]:
    """A relay config file limited in the test's Redis (one push a minute after the burst)."""

    def write(name: str = "relay.toml", **keys: Any) -> Path:
        keys = {"token_per_minute": 1, "token_burst": 5, "redis_url": redis_server.url} | keys
        path = tmp_path / name
        path.write_text(f"[server]\nshutdown_grace_secs = 5\n\n{gateway.section}{limits(**keys)}")
        return path

    return write


async def post(session: aiohttp.ClientSession, url: str, form: dict[str, str]) -> int:
    async with session.post(url + "/push", data=form, headers=FORM) as response:
        await response.read()
        return response.status


async def test_two_workers_share_one_count_in_redis(
    shared_config: Callable[..., Path], gateway: GatewayRig, tmp_path: Path
) -> None:
    env = {"TMPDIR": str(tmp_path)}
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
    async with aiohttp.ClientSession(connector=connector) as fresh:
        shared = await RelayProcess.start(shared_config(), "--workers", "2", env=env)
        try:
            workers = set()
            for _ in range(200):
                async with fresh.get(shared.url + "/health") as response:
                    workers.add(response.headers["x-push-relay-worker"])
                if len(workers) == 2:
                    break
            answers = [await post(fresh, shared.url, gateway.push()) for _ in range(20)]
        finally:
            await shared.stop()
        # the same relay counting in each worker's memory admits more than one burst
        alone = await RelayProcess.start(
            shared_config("alone.toml", redis_url=None), "--workers", "2", env=env
        )
        try:
            separate = [await post(fresh, alone.url, gateway.push()) for _ in range(20)]
        finally:
            await alone.stop()
    assert 2 == len(workers)
    assert [204] * 5 + [429] * 15 == answers
    assert separate.count(204) > 5


async def test_two_instances_share_one_count_in_redis(
    shared_config: Callable[..., Path], gateway: GatewayRig
) -> None:
    first = await RelayProcess.start(shared_config("first.toml"))
    second = await RelayProcess.start(shared_config("second.toml"))
    try:
        assert first.url != second.url
        async with aiohttp.ClientSession() as session:
            answers = [
                await post(session, relay.url, gateway.push())
                for _ in range(6)
                for relay in (first, second)
            ]
    finally:
        await first.stop()
        await second.stop()
    assert [204] * 5 + [429] * 7 == answers


@pytest.fixture
async def fcm(test_ca: TestCA) -> AsyncIterator[FcmSimulator]:
    """FCM, whose devices any test can make up: a fresh device target per push."""
    simulator = FcmSimulator(test_ca)
    await simulator.start()
    yield simulator
    await simulator.stop()


def fcm_push(device: str) -> dict[str, str]:
    return {"type": "fcm", "token": device_token(device), "session": "websession", "version": "3"}


async def pushes_flowing(relay: RunningRelay, stop: asyncio.Event) -> list[tuple[Answer, float]]:
    """A push to a new device every few ms until `stop` (at most 2,000): the limit itself
    never refuses them, so every answer shows only how the store failed."""
    loop = asyncio.get_running_loop()
    answers: list[tuple[Answer, float]] = []
    while not stop.is_set() and len(answers) < 2000:
        started = loop.time()
        answer = await relay.push(fcm_push(f"flowing-{len(answers)}"))
        answers.append((answer, loop.time() - started))
        await asyncio.sleep(0.005)
    return answers


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110  # a simulator's request list has no event
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
@pytest.mark.parametrize("outage", ["stopped", "frozen"])
async def test_redis_outage_while_pushes_flow(
    start_relay: RelayStarter,
    fcm: FcmSimulator,
    redis_server: RedisServer,
    fail_open: bool,
    outage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    toml = fcm.config_toml() + limits(
        token_per_minute=1, token_burst=3, redis_url=redis_server.url, redis_fail_open=fail_open
    )
    async with start_relay(toml) as relay:
        before = await scrape(relay.url)
        stop = asyncio.Event()
        flowing = asyncio.create_task(pushes_flowing(relay, stop))
        await until(lambda: len(fcm.requests) >= 5)
        if outage == "stopped":
            redis_server.stop()
        else:
            redis_server.freeze()  # SIGSTOP: connections open, nothing answered
        try:
            await asyncio.sleep(0.5)
            ready = await relay.request("GET", "/ready")
            answered = len(fcm.requests)
            await asyncio.sleep(0.3)
            during_outage = len(fcm.requests) - answered
        finally:
            if outage == "stopped":
                redis_server.start()
            else:
                redis_server.thaw()
        await asyncio.sleep(0.3)  # the store asks Redis again one timeout after a failure
        stop.set()
        flowed = await flowing
        after = await scrape(relay.url)
        again = statuses([await relay.push(fcm_push("after-the-outage")) for _ in range(5)])

    answers = [answer for answer, _ in flowed]
    failed = [answer for answer in answers if answer.status != 204]
    assert 204 == answers[0].status
    assert all(seconds < 5 for _, seconds in flowed)  # bounded by the timeout, never stuck
    assert False is json.loads(ready.text)["limits"]["ok"]
    if fail_open:
        assert not failed  # unlimited, but served
        assert during_outage > 0
        assert 200 == ready.status
    else:
        assert failed
        assert {(503, "Push not successful", "1")} == {
            (a.status, a.text, a.headers["retry-after"]) for a in failed
        }
        assert 0 == during_outage
        assert 503 == ready.status
    errors = "push_relay_rate_limit_errors_total"
    assert sample(after, errors) > sample(before, errors)
    closed = {"backend": "fcm", "outcome": "503", "reason": "limits_unavailable"}
    refused = "push_relay_requests_total"
    assert len(failed) == sample(after, refused, **closed) - sample(before, refused, **closed)
    warnings = [r for r in caplog.records if "rate-limit store (Redis) failed" in r.getMessage()]
    assert 1 == len(warnings)  # at most one every 10 s
    assert [204, 204, 204, 429, 429] == again


async def test_redis_restarted_keeps_the_agreed_hash_key(
    start_relay: RelayStarter, fcm: FcmSimulator, redis_server: RedisServer
) -> None:
    toml = fcm.config_toml() + limits(token_per_minute=1, token_burst=3, redis_url=redis_server.url)
    async with start_relay(toml) as relay:
        stop = asyncio.Event()
        flowing = asyncio.create_task(pushes_flowing(relay, stop))
        await until(lambda: len(fcm.requests) >= 5)
        key = (await redis_contents(redis_server))[HASH_KEY_NAME.encode()]
        redis_server.stop()
        redis_server.start()  # empty: no persistence
        await asyncio.sleep(0.5)
        stop.set()
        flowed = await flowing
        again = statuses([await relay.push(fcm_push("after-the-restart")) for _ in range(5)])
        # the relay put back the key every instance had agreed on
        assert key == (await redis_contents(redis_server))[HASH_KEY_NAME.encode()]
    assert {204} == {answer.status for answer, _ in flowed}
    assert [204, 204, 204, 429, 429] == again


async def test_checks_of_one_loop_turn_share_one_round_trip(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    store = RedisStore(redis_server.url, None, Rule.per_minute(60, 1), timeout=1.0, clock=clock)
    admin = Redis.from_url(redis_server.url)
    try:
        await store.check(None, "warm-up")  # loads the script and agrees on the hash key
        await admin.config_resetstat()
        verdicts = await asyncio.gather(*(store.check(None, f"t{i % 300}") for i in range(600)))
        calls = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
    finally:
        await admin.aclose()
        await store.aclose()
    assert [ADMITTED] * 300 + [Verdict("token", 1)] * 300 == verdicts
    assert 3 == calls  # 600 checks in script calls of up to 256, sent as one pipeline


def test_a_missing_redis_server_fails_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AssertionError, match="apt-get install redis-server"):
        RedisServer(tmp_path / "redis")


async def test_ready_lists_no_limits_entry_without_redis(
    start_relay: RelayStarter, gateway: GatewayRig
) -> None:
    async with start_relay(gateway.section + limits(token_per_minute=10)) as relay:
        ready = await relay.request("GET", "/ready")
    assert 200 == ready.status
    assert {"ready", "backends"} == set(json.loads(ready.text))


def test_check_config_summarizes_the_limits_without_credentials(
    write_config: Callable[[str], Path],
) -> None:
    url = "redis://:redis-password@127.0.0.1:6380/2"
    path = write_config(
        limits(token_per_minute=12, client_per_minute=600, redis_url=url, trusted_proxies=["::1"])
    )
    summary = summarize(config.load(path))
    assert (
        "  limits: 12/min per device (burst 10), 600/min per client (burst 100), "
        "1 trusted proxy networks, shared in Redis at 127.0.0.1:6380 (fails open)"
    ) in summary.splitlines()
    assert "redis-password" not in summary

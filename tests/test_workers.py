"""`--workers N`: processes sharing one port, summed metrics, supervision, shared auth tokens."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from push_relay.auth import SharedTokenStore, Token, TokenCache
from push_relay.testing.apns_auth import generate_key
from push_relay.testing.apns_sim import ApnsSimulator
from push_relay.testing.ca import TestCA
from push_relay.testing.hms_sim import HmsSimulator
from push_relay.testing.ports import free_port
from push_relay.testing.process import GatewayRig, RelayProcess
from push_relay.workers import MAX_RESTARTS

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
DELIVERED = ("push_relay_requests_total", "threemagateway", "204", "delivered")
APP = "104455555"
SECRET = "hms-client-secret-for-workers"


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A client opening a new connection per request, so the kernel spreads them."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def worker_pid(session: aiohttp.ClientSession, relay: RelayProcess) -> int:
    async with session.get(relay.url + "/health") as response:
        assert 200 == response.status
        return int(response.headers["x-push-relay-worker"])


async def pids_seen(session: aiohttp.ClientSession, relay: RelayProcess, want: int) -> set[int]:
    pids: set[int] = set()
    for _ in range(200):
        pids.add(await worker_pid(session, relay))
        if len(pids) >= want:
            break
    return pids


async def counter(
    session: aiohttp.ClientSession, relay: RelayProcess, key: tuple[str, ...]
) -> float:
    name, backend, outcome, reason = key
    async with session.get(relay.url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == name and (
                labels.get("backend"),
                labels.get("outcome"),
                labels.get("reason"),
            ) == (backend, outcome, reason):
                return sample.value
    return 0.0


async def push(session: aiohttp.ClientSession, relay: RelayProcess, form: dict[str, str]) -> int:
    async with session.post(relay.url + "/push", data=form, headers=FORM) as response:
        await response.read()
        return response.status


@pytest.fixture
async def two_workers(gateway: GatewayRig, tmp_path: Path) -> AsyncIterator[RelayProcess]:
    config = tmp_path / "relay.toml"
    config.write_text(f"[server]\nshutdown_grace_secs = 5\n\n{gateway.section}")
    relay = await RelayProcess.start(config, "--workers", "2", env={"TMPDIR": str(tmp_path)})
    try:
        yield relay
    finally:
        await relay.stop()


async def test_both_workers_serve_and_metrics_sum_over_them(
    two_workers: RelayProcess, gateway: GatewayRig, fresh: aiohttp.ClientSession
) -> None:
    pids = await pids_seen(fresh, two_workers, 2)
    statuses = await asyncio.gather(*(push(fresh, two_workers, gateway.push()) for _ in range(30)))

    assert 2 == len(pids)
    assert two_workers.process.pid not in pids  # the parent only supervises
    assert [204] * 30 == statuses
    # whichever worker answers /metrics, it reports the sum over both
    for _ in range(6):
        assert 30 == await counter(fresh, two_workers, DELIVERED)


async def test_a_crashed_worker_is_restarted_and_its_counts_are_kept(
    two_workers: RelayProcess, gateway: GatewayRig, fresh: aiohttp.ClientSession
) -> None:
    # the killed worker must not leave half-open upstream connections in this test process
    gateway.simulator.keep_alive = False
    for _ in range(10):
        assert 204 == await push(fresh, two_workers, gateway.push())
    before = await pids_seen(fresh, two_workers, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)  # a worker of the relay this test started

    async with asyncio.timeout(15):
        after: set[int] = set()
        while len(after - before) == 0:
            after |= await pids_seen(fresh, two_workers, 2)
    assert victim not in after
    assert 10 == await counter(fresh, two_workers, DELIVERED)
    assert "exited unexpectedly" in two_workers.logs()


async def test_sigterm_drains_every_worker_exits_0_and_removes_the_state_dir(
    two_workers: RelayProcess, gateway: GatewayRig, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gateway.simulator.hold()
    pushes = [asyncio.create_task(push(fresh, two_workers, gateway.push())) for _ in range(10)]
    await gateway.simulator.wait_arrived(10)
    two_workers.send_signal(signal.SIGTERM)
    gateway.simulator.release()  # while the workers drain

    assert [204] * 10 == await asyncio.gather(*pushes)
    assert 0 == await two_workers.wait()
    assert [] == [p for p in os.listdir(tmp_path) if p.startswith("push-relay-")]


async def test_workers_share_one_access_token(
    test_ca: TestCA, tmp_path: Path, fresh: aiohttp.ClientSession
) -> None:
    hms = HmsSimulator(test_ca, token_delay=0.2)
    hms.add_app(APP, SECRET)
    await hms.start()
    config = tmp_path / "relay.toml"
    config.write_text(hms.config_toml(APP))
    relay = await RelayProcess.start(config, "--workers", "2")
    try:
        assert 2 == len(await pids_seen(fresh, relay, 2))
        form = {"type": "hms", "appid": APP, "token": "device", "session": "s", "version": "3"}
        statuses = await asyncio.gather(*(push(fresh, relay, form) for _ in range(40)))
        relay.send_signal(signal.SIGTERM)
        assert 0 == await relay.wait()
    finally:
        relay.kill()
        await hms.stop()
    assert [204] * 40 == statuses
    assert 40 == len(hms.deliveries)
    assert 1 == hms.token_requests


async def test_token_caches_sharing_a_store_fetch_once(tmp_path: Path) -> None:
    """Two workers' caches (here in one process) agree on one token, fetched once."""
    store = SharedTokenStore(tmp_path / "tokens")
    first, second = TokenCache(store=store), TokenCache(store=store)
    fetches = 0

    async def fetch() -> Token:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.05)
        return Token(f"token-{fetches}", refresh_at=2e9)

    tokens = await asyncio.gather(first.get("hms:a", fetch), second.get("hms:a", fetch))
    assert ["token-1", "token-1"] == [token.value for token in tokens]
    assert 1 == fetches

    second.invalidate("hms:a", "token-1")  # rejected upstream: both must fetch anew
    assert "token-2" == (await second.get("hms:a", fetch)).value
    first.invalidate("hms:a", "token-1")  # a stale rejection keeps the sibling's fresh token
    assert "token-2" == (await first.get("hms:a", fetch)).value
    assert 2 == fetches
    assert 0o700 == (tmp_path / "tokens").stat().st_mode & 0o777


async def test_workers_share_one_apns_provider_token(
    test_ca: TestCA, tmp_path: Path, fresh: aiohttp.ClientSession
) -> None:
    """APNs refuses a key's provider token changing more than once per 20 minutes
    (TooManyProviderTokenUpdates): every worker must present the same JWT."""
    key = generate_key(tmp_path)
    apns = ApnsSimulator(test_ca, key)
    await apns.start()
    config = tmp_path / "relay.toml"
    config.write_text(key.config_toml(apns.url, apns.url))
    relay = await RelayProcess.start(config, "--workers", "3")
    try:
        assert 3 == len(await pids_seen(fresh, relay, 3))
        form = {"type": "apns", "token": "ab" * 32, "bundleid": "ch.threema.iapp"}
        form |= {"endpoint": "p", "session": "s", "version": "3"}
        statuses = await asyncio.gather(*(push(fresh, relay, form) for _ in range(60)))
        assert 0 == await relay.stop()
    finally:
        relay.kill()
        await apns.stop()
    assert [204] * 60 == statuses
    assert 1 == len({r.headers["authorization"] for r in apns.requests})
    assert 0 == apns.tokens.updates


async def test_a_worker_crashing_again_and_again_stops_the_relay_with_status_1(
    two_workers: RelayProcess, fresh: aiohttp.ClientSession
) -> None:
    """Restarts are rate-limited: a relay that cannot keep a worker up says so by exiting."""
    killed: set[int] = set()
    while two_workers.process.poll() is None and len(killed) <= MAX_RESTARTS:
        pids = await pids_seen(fresh, two_workers, 2)
        victim = min(pids - killed)
        os.kill(victim, signal.SIGKILL)  # a worker of the relay this test started
        killed.add(victim)
    assert 1 == await two_workers.wait()
    assert f"{MAX_RESTARTS} restarts within" in two_workers.logs()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_admin_listen_serves_metrics_and_ready_apart_from_push(
    gateway: GatewayRig, tmp_path: Path, fresh: aiohttp.ClientSession, workers: str
) -> None:
    admin = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nadmin_listen = "{admin[7:]}"\n\n{gateway.section}')
    relay = await RelayProcess.start(config, "--workers", workers, env={"TMPDIR": str(tmp_path)})
    try:
        assert 204 == await push(fresh, relay, gateway.push())
        async with fresh.post(admin + "/push", data=gateway.push(), headers=FORM) as response:
            assert 404 == response.status
        statuses = {}
        for base in (relay.url, admin):
            for path in ("/metrics", "/ready", "/health"):
                async with fresh.get(base + path) as response:
                    statuses[base == admin, path] = response.status
        async with fresh.get(admin + "/metrics") as response:
            assert "push_relay_requests_total" in await response.text()
    finally:
        await relay.stop()
    assert {
        (False, "/metrics"): 404,
        (False, "/ready"): 404,
        (False, "/health"): 200,
        (True, "/metrics"): 200,
        (True, "/ready"): 200,
        (True, "/health"): 200,
    } == statuses

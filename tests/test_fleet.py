"""A fleet: three relay instances (own processes, own ports) behind a real HAProxy, configured
by deploy/haproxy/push-relay.cfg, counting rate limits in one real `redis-server`. Pushes
spread over all three, a device's limit holds exactly across them, an instance stopped under
load loses no push, and a reload rolled across the fleet fails none."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import wait_until
from push_load import FORM, PushLoad
from push_relay.testing.ca import TestCA
from push_relay.testing.hms_sim import HmsSimulator
from push_relay.testing.ports import free_port
from push_relay.testing.process import GatewayRig, RelayProcess, start_gateway
from push_relay.testing.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "deploy" / "haproxy" / "push-relay.cfg"
INSTANCES = 3
HMS_APP = "104477777"
# limits generous enough for the load tests; behind HAProxy every test client is 127.0.0.1
GENEROUS_LIMITS = "token_per_minute = 60000\ntoken_burst = 10000\nclient_per_minute = 60000\n"


def require(binary: str, package: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{binary} is missing: install it with `apt-get install {package}`")
    return path


def render_haproxy(port: int, pem: Path, instances: list[str]) -> str:
    """The recipe with its placeholders replaced: our port, certificate and instances."""
    text = RECIPE.read_text()
    servers = "".join(f"    server relay{i} {a}\n" for i, a in enumerate(instances, 1))
    replacements = {
        "maxconn 20000": "maxconn 1000",  # within this machine's open-file limit
        "check inter 1s": "check inter 100ms",  # a test need not wait seconds for checks
        "bind *:443": f"bind 127.0.0.1:{port}",
        "/etc/haproxy/certs/push-relay.pem": str(pem),
        "    server relay1 127.0.0.1:3001\n"
        "    server relay2 127.0.0.1:3002\n"
        "    server relay3 127.0.0.1:3003\n": servers,
    }
    for placeholder, value in replacements.items():
        assert placeholder in text, f"placeholder {placeholder!r} no longer in the recipe"
        text = text.replace(placeholder, value)
    return text


@dataclass
class Fleet:
    relays: list[RelayProcess]
    url: str  # HAProxy's
    config: Path  # shared by every instance
    ca: TestCA

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ca.client_context()))


@pytest.fixture
async def gateway_rig(test_ca: TestCA, tmp_path: Path) -> AsyncIterator[GatewayRig]:
    """The gateway simulator, answering after 50 ms: pushes are in flight when a test acts."""
    rig = await start_gateway(test_ca, tmp_path, delay=0.05)
    yield rig
    await rig.simulator.stop()


@pytest.fixture
def limits() -> str:
    """The `[limits]` keys of the fleet besides Redis and the proxy (a test may override)."""
    return GENEROUS_LIMITS


@pytest.fixture
async def fleet(
    gateway_rig: GatewayRig, redis_server: RedisServer, limits: str, test_ca: TestCA, tmp_path: Path
) -> AsyncIterator[Fleet]:
    haproxy = require("haproxy", "haproxy")
    config = tmp_path / "relay.toml"
    config.write_text(
        '[server]\nshutdown_grace_secs = 5\nlog_hash_key = "fleet"\n\n'
        f'[limits]\n{limits}redis_url = "{redis_server.url}"\n'
        'trusted_proxies = ["127.0.0.1/32"]\n\n' + gateway_rig.section
    )
    relays: list[RelayProcess] = []
    process: subprocess.Popen[bytes] | None = None
    try:
        # one name (and so one log file) per instance, one config file for all
        names = [tmp_path / f"relay{i}.toml" for i in range(1, INSTANCES + 1)]
        for name in names:
            name.symlink_to(config)
        started = await asyncio.gather(
            *(RelayProcess.start(name) for name in names), return_exceptions=True
        )
        relays.extend(r for r in started if isinstance(r, RelayProcess))  # stopped below
        for result in started:
            if isinstance(result, BaseException):
                raise result
        pem = tmp_path / "haproxy.pem"
        pem.write_bytes(test_ca.cert_pem + test_ca.key_pem)
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render_haproxy(port, pem, [r.url.removeprefix("http://") for r in relays]))
        # spawning returns at once; HAProxy runs on its own while we await its first answer
        with (tmp_path / "haproxy.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220
                [haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT
            )
        fleet = Fleet(relays, f"https://127.0.0.1:{port}", config, test_ca)
        await wait_all_up(fleet, process)
        yield fleet
    finally:
        if process is not None:
            process.terminate()  # the HAProxy this test started, by its pid
            await asyncio.to_thread(process.wait, 10)
        for relay in relays:
            await relay.stop()


async def wait_all_up(fleet: Fleet, process: subprocess.Popen[bytes]) -> None:
    """Until HAProxy answers /health, and its checks have had time to see every instance."""
    async with fleet.client() as session:

        async def healthy() -> bool:
            if process.poll() is not None:
                log = fleet.config.with_name("haproxy.log").read_text()
                raise AssertionError(f"haproxy exited: {log}")
            try:
                async with session.get(fleet.url + "/health") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(healthy, "HAProxy serving")
    await asyncio.sleep(0.3)  # `rise 2` checks, 100 ms apart, count from start-up


def pushes_relayed(relay: RelayProcess) -> int:
    return relay.logs().count("outcome=204")


async def relayed_by_each(fleet: Fleet, total: int) -> list[int]:
    """Pushes relayed per instance, by their logs (written at the end of a loop iteration,
    so possibly just after the answer): waits until `total` are logged."""

    def counts() -> list[int]:
        return [pushes_relayed(relay) for relay in fleet.relays]

    await wait_until(lambda: sum(counts()) >= total, f"{total} pushes logged")
    return counts()


async def test_pushes_spread_over_every_instance(fleet: Fleet, gateway_rig: GatewayRig) -> None:
    async with fleet.client() as session:
        for _ in range(3 * INSTANCES):
            async with session.post(
                fleet.url + "/push", data=gateway_rig.push(), headers=FORM
            ) as r:
                assert 204 == r.status

    assert [3] * INSTANCES == await relayed_by_each(fleet, 3 * INSTANCES)


@pytest.mark.parametrize("limits", ["token_per_minute = 1\ntoken_burst = 5\n"])
async def test_a_devices_limit_holds_exactly_across_the_fleet(
    fleet: Fleet, gateway_rig: GatewayRig
) -> None:
    """Round robin sends the pushes of one device to every instance; one count in Redis
    admits its burst of 5 and refuses the rest, whichever instance they reach."""
    answers: list[tuple[int, str | None]] = []
    async with fleet.client() as session:
        for _ in range(15):
            form = gateway_rig.push()
            async with session.post(fleet.url + "/push", data=form, headers=FORM) as r:
                await r.read()
                answers.append((r.status, r.headers.get("Retry-After")))
        answered = [await outcomes(session, relay) for relay in fleet.relays]

    assert [(204, None)] * 5 == answers[:5]
    assert {429} == {status for status, _ in answers[5:]}
    assert all(int(after or 0) >= 1 for _, after in answers[5:])
    assert 5 == len(gateway_rig.simulator.deliveries)
    assert all(counts["429"] > 0 for counts in answered)  # every instance refused some
    assert 5 == sum(counts["204"] for counts in answered)


async def outcomes(session: aiohttp.ClientSession, relay: RelayProcess) -> dict[str, float]:
    """The instance's own answers to gateway pushes, by status (its /metrics, not HAProxy's)."""
    async with session.get(relay.url + "/metrics") as response:
        text = await response.text()
    counts = {"204": 0.0, "429": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "push_relay_requests_total" and sample.labels["outcome"] in counts:
                counts[sample.labels["outcome"]] += sample.value
    return counts


async def test_an_instance_stopped_under_load_loses_no_push(
    fleet: Fleet, gateway_rig: GatewayRig
) -> None:
    stopped = fleet.relays[1]
    async with PushLoad(fleet.url, [gateway_rig.push], fleet.client) as load:
        await gateway_rig.simulator.wait_arrived(len(load.statuses) + 4)  # pushes in flight
        stopped.send_signal(signal.SIGTERM)
        assert 0 == await stopped.wait()
        await load.wait_for(60)  # the other two carry on alone

    assert [] == load.failures()
    # every push answered 204 reached the gateway, the stopped instance's last ones included
    assert len(load.statuses) == len(gateway_rig.simulator.deliveries)
    assert pushes_relayed(stopped) > 0


async def test_a_reload_rolled_across_the_fleet_fails_no_push(
    fleet: Fleet, gateway_rig: GatewayRig, test_ca: TestCA
) -> None:
    hms = HmsSimulator(test_ca)
    hms.add_app(HMS_APP, "hms-secret-fleet")
    await hms.start()
    try:
        async with PushLoad(fleet.url, [gateway_rig.push], fleet.client) as load:
            fleet.config.write_text(fleet.config.read_text() + "\n" + hms.config_toml(HMS_APP))
            for relay in fleet.relays:  # one instance at a time, as an operator would
                relay.send_signal(signal.SIGHUP)
                await reload_done(relay)
                await load.wait_for(10)
        async with fleet.client() as session:
            statuses = [await push_hms(session, fleet) for _ in range(2 * INSTANCES)]
    finally:
        await hms.stop()

    assert [] == load.failures()
    assert [204] * (2 * INSTANCES) == statuses  # whichever instance HAProxy picked
    assert all(f"hms.{HMS_APP} (added)" in relay.logs() for relay in fleet.relays)


async def reload_done(relay: RelayProcess) -> None:
    await wait_until(lambda: "now serves" in relay.logs(), "the reload done")


async def push_hms(session: aiohttp.ClientSession, fleet: Fleet) -> int:
    form = {"type": "hms", "token": "t", "session": "s", "version": "3", "appid": HMS_APP}
    async with session.post(fleet.url + "/push", data=form, headers=FORM) as response:
        await response.read()
        return response.status

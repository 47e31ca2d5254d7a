"""Reload on SIGHUP (contract §12 "Reload"): under a steady load of pushes, a new config serves
new pushes, an invalid one is refused while the old one keeps serving, and no push is refused
or fails, with one process and with `--workers 2`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jwt
import pytest

from helpers import wait_until
from push_load import FORM, PushLoad
from push_relay.config import Config, HmsConfig, ServerConfig
from push_relay.logs import TokenHasher
from push_relay.reload import changed_sections, keep_hash_key, with_hash_key
from push_relay.testing.apns_auth import ApnsKey, generate_key
from push_relay.testing.apns_sim import ApnsSimulator
from push_relay.testing.ca import TestCA
from push_relay.testing.fcm_sim import FcmSimulator, device_token
from push_relay.testing.hms_sim import HmsSimulator
from push_relay.testing.ports import free_port
from push_relay.testing.process import RelayProcess

APNS_DEVICE = "ab" * 32
HMS_APP = "104455555"
NEW_HMS_APP = "104466666"
MODES = [pytest.param((), id="one-process"), pytest.param(("--workers", "2"), id="workers-2")]


@dataclass
class Services:
    fcm: FcmSimulator
    apns: ApnsSimulator
    apns_key: ApnsKey
    hms: HmsSimulator
    workdir: Path
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.workdir / "relay.toml"

    def toml(self, *, project_id: str | None = None, hms_apps: tuple[str, ...] = (HMS_APP,)) -> str:
        fcm = self.fcm.config_toml(max_retries=0)
        if project_id is not None:
            fcm = fcm.replace(f'"{self.fcm.project_id}"', f'"{project_id}"')
        apns = self.apns_key.config_toml(self.apns.url, self.apns.url)
        hms = "".join(self.hms.config_toml(app) for app in hms_apps)
        return f"[server]\nshutdown_grace_secs = 5\n\n{fcm}\n{apns}\n{hms}"

    def write(self, text: str) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config)  # a reload never reads a half-written file


@pytest.fixture
async def services(test_ca: TestCA, tmp_path: Path) -> AsyncIterator[Services]:
    key = generate_key(tmp_path)
    fcm = FcmSimulator(test_ca)
    apns = ApnsSimulator(test_ca, key)
    hms = HmsSimulator(test_ca)
    hms.add_app(HMS_APP, "hms-secret-one")
    hms.add_app(NEW_HMS_APP, "hms-secret-two")
    started: list[FcmSimulator | ApnsSimulator | HmsSimulator] = []
    try:
        for sim in (fcm, apns, hms):
            await sim.start()
            started.append(sim)
        services = Services(fcm, apns, key, hms, tmp_path)
        services.write(services.toml())
        yield services
    finally:
        for sim in started:
            await sim.stop()


def fcm_push() -> dict[str, str]:
    return {"type": "fcm", "token": device_token("reload"), "session": "s", "version": "3"}


def apns_push() -> dict[str, str]:
    return {
        "type": "apns",
        "token": APNS_DEVICE,
        "session": "s",
        "version": "3",
        "bundleid": "com.example.app",
        "endpoint": "s",
    }


def hms_push(app: str = HMS_APP) -> dict[str, str]:
    return {"type": "hms", "token": "hms-device", "session": "s", "version": "3", "appid": app}


@pytest.fixture(params=MODES)
async def relay(request: pytest.FixtureRequest, services: Services) -> AsyncIterator[RelayProcess]:
    args: tuple[str, ...] = request.param
    env = {"TMPDIR": str(services.workdir)}
    pid_file = str(services.workdir / "relay.pid")
    relay = await RelayProcess.start(services.config, "--pid-file", pid_file, *args, env=env)
    try:
        yield relay
    finally:
        assert 0 == await relay.stop()  # a reload, even a refused one, never changes it


async def reloaded(relay: RelayProcess) -> str:
    """Send SIGHUP and wait for the relay's log line that the reload ended; returns it."""
    seen = len(reload_lines(relay))
    relay.send_signal(signal.SIGHUP)
    return await reload_ended(relay, seen)


def reload_lines(relay: RelayProcess) -> list[str]:
    return [line for line in relay.logs().splitlines() if "reload" in line]


async def reload_ended(relay: RelayProcess, seen: int = 0) -> str:
    """The first line after the `seen` reload lines saying a reload ended (or was refused)."""

    def ended() -> list[str]:
        return [x for x in reload_lines(relay)[seen:] if "now serves" in x or "refused" in x]

    await wait_until(lambda: bool(ended()), "a reload ended")
    return ended()[0]


def kids(apns: ApnsSimulator, since: int) -> set[str]:
    return {
        jwt.get_unverified_header(r.headers["authorization"].split()[1])["kid"]
        for r in apns.requests[since:]
    }


def projects(fcm: FcmSimulator, since: int) -> set[str]:
    return {r.path.split("/")[3] for r in fcm.requests[since:]}


async def test_a_new_fcm_project_serves_new_pushes(relay: RelayProcess, services: Services) -> None:
    new_project = "push-relay-moved"
    services.fcm.allow_project(new_project)
    async with PushLoad(relay.url, [fcm_push, apns_push]) as load:
        services.write(services.toml(project_id=new_project))
        line = await reloaded(relay)
        await load.wait_for(20)  # pushes in flight at the swap end on the old runtime
        after = len(services.fcm.requests)
        await load.wait_for(40)

    assert "changed: fcm;" in line or line.endswith("changed: fcm")
    assert {new_project} == projects(services.fcm, after)
    assert [] == load.failures()


async def test_a_rotated_apns_key_signs_new_pushes(relay: RelayProcess, services: Services) -> None:
    new_key = generate_key(services.workdir, team_id=services.apns_key.team_id)
    services.apns.add_key(new_key)  # both keys are valid while the rotation is under way
    async with PushLoad(relay.url, [apns_push, fcm_push]) as load:
        services.apns_key = new_key
        services.write(services.toml())
        line = await reloaded(relay)
        await load.wait_for(20)  # pushes in flight at the swap end on the old runtime
        after = len(services.apns.requests)
        await load.wait_for(40)

    assert "changed: apns" in line
    assert new_key.key_id not in line and "BEGIN" not in line  # names, never values
    assert {new_key.key_id} == kids(services.apns, after)
    assert [] == load.failures()


async def test_an_added_hms_app_starts_to_deliver(relay: RelayProcess, services: Services) -> None:
    async with PushLoad(relay.url, [fcm_push, apns_push, hms_push]) as load:
        before = await push(relay, hms_push(NEW_HMS_APP))
        services.write(services.toml(hms_apps=(HMS_APP, NEW_HMS_APP)))
        line = await reloaded(relay)
        after = await push(relay, hms_push(NEW_HMS_APP))
        await load.wait_for(40)

    assert (400, 204) == (before, after)
    assert f"hms.{NEW_HMS_APP} (added)" in line
    assert [] == load.failures()


async def test_a_broken_config_is_refused_and_the_old_one_serves(
    relay: RelayProcess, services: Services
) -> None:
    good = services.config.read_text()
    async with PushLoad(relay.url, [fcm_push, apns_push, hms_push]) as load:
        services.write(good.replace("max_retries = 0", "max_retries = 300"))
        line = await reloaded(relay)
        await load.wait_for(40)

    assert "reload refused" in line and f"{services.config}" in line and "max_retries" in line
    assert 1 == sum("reload refused" in x for x in relay.logs().splitlines())
    assert relay.process.poll() is None
    assert [] == load.failures()


async def test_push_relay_reload_checks_the_config_before_signalling(
    relay: RelayProcess, services: Services
) -> None:
    pid_file = services.workdir / "relay.pid"
    command = [sys.executable, "-m", "push_relay", "reload", "--pid-file", str(pid_file)]
    services.write("[fcm]\nproject_id = 1\n")
    refused = await asyncio.to_thread(run, [*command, "-c", str(services.config)])
    services.write(services.toml(hms_apps=(HMS_APP, NEW_HMS_APP)))
    sent = await asyncio.to_thread(run, [*command, "-c", str(services.config)])

    assert 2 == refused.returncode
    assert "config error" in refused.stderr and "fcm" in refused.stderr
    assert 0 == sent.returncode, sent.stderr
    assert "now serves" in await reload_ended(relay)  # the bad config never reached the relay
    assert 204 == await push(relay, hms_push(NEW_HMS_APP))


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def push(relay: RelayProcess, form: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(relay.url + "/push", data=form, headers=FORM) as response,
    ):
        await response.read()
        return response.status


async def test_server_settings_that_shape_the_listener_name_the_restart_they_need(
    relay: RelayProcess, services: Services
) -> None:
    """One process keeps its listener, so new timeouts wait for a restart; new workers
    start with them."""
    services.write(services.toml().replace("[server]\n", "[server]\nbody_timeout_secs = 3\n"))
    line = await reloaded(relay)

    one_process = "--workers" not in relay.process.args
    assert "changed: server" in line
    assert one_process == ("needs a restart to apply: server.body_timeout_secs" in line)


async def test_sigterm_during_a_reload_still_drains_and_exits_0(
    relay: RelayProcess, services: Services
) -> None:
    services.write(services.toml(hms_apps=(HMS_APP, NEW_HMS_APP)))
    relay.send_signal(signal.SIGHUP)
    relay.send_signal(signal.SIGTERM)

    assert 0 == await relay.wait()


def test_changed_sections_name_sections_and_apps_never_values() -> None:
    old = Config("relay.toml", hms={"1": HmsConfig("1", "1", "s1"), "2": HmsConfig("2", "2", "s")})
    new = Config(
        "relay.toml",
        server=ServerConfig(max_in_flight=5),
        hms={"1": HmsConfig("1", "1", "s2"), "3": HmsConfig("3", "3", "s")},
    )

    assert ["server", "hms.1", "hms.2 (removed)", "hms.3 (added)"] == changed_sections(old, new)
    assert [] == changed_sections(old, old)


def test_a_reload_keeps_the_drawn_log_hash_key_unless_the_config_sets_one() -> None:
    drawn = with_hash_key(Config("relay.toml"))
    configured = Config("relay.toml", server=ServerConfig(log_hash_key="mine"))

    assert (
        drawn.server.log_hash_key == keep_hash_key(drawn, Config("relay.toml")).server.log_hash_key
    )
    assert "mine" == keep_hash_key(drawn, configured).server.log_hash_key
    assert "server" not in changed_sections(drawn, keep_hash_key(drawn, Config("relay.toml")))


@pytest.mark.parametrize("args", MODES)
async def test_the_admin_listener_keeps_its_role_across_a_reload(
    args: tuple[str, ...], services: Services
) -> None:
    admin = f"127.0.0.1:{free_port()}"
    toml = services.toml().replace("[server]\n", f'[server]\nadmin_listen = "{admin}"\n')
    services.write(toml)
    relay = await RelayProcess.start(services.config, *args, env={"TMPDIR": str(services.workdir)})
    try:
        services.write(toml.replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 4"))
        assert "now serves" in await reloaded(relay)
        async with aiohttp.ClientSession() as session:
            statuses = [
                await status(session, f"http://{admin}/metrics"),
                await status(session, f"http://{admin}/push", "POST"),
                await status(session, relay.url + "/metrics"),
            ]
    finally:
        assert 0 == await relay.stop()

    assert [200, 404, 404] == statuses


async def test_workers_started_by_a_reload_serve_the_sockets_they_were_given(
    services: Services,
) -> None:
    """`admin_listen` added by a reload needs a restart: the new workers serve on, without
    binding an admin socket of their own (a second worker would find it taken and die)."""
    relay = await RelayProcess.start(
        services.config, "--workers", "2", env={"TMPDIR": str(services.workdir)}
    )
    try:
        admin = f"127.0.0.1:{free_port()}"
        services.write(
            services.toml().replace("[server]\n", f'[server]\nadmin_listen = "{admin}"\n')
        )
        line = await reloaded(relay)
        pushes = [await push(relay, fcm_push()) for _ in range(10)]
        async with aiohttp.ClientSession() as session:
            metrics = await status(session, relay.url + "/metrics")
        logs = relay.logs()
    finally:
        assert 0 == await relay.stop()

    assert "server.admin_listen" in line.partition("needs a restart")[2]
    assert [204] * 10 == pushes
    assert 200 == metrics  # still served where it was: the admin listener is not there yet
    assert "too many" not in logs and "cannot listen" not in logs


async def test_the_protocols_own_answers_follow_a_reloaded_cors_setting(
    services: Services,
) -> None:
    """`cors_origins` applies at once, also to the 431 the server protocol writes itself."""
    toml = services.toml().replace("[server]\n", "[server]\nmax_header_bytes = 2000\n")
    services.write(toml)
    relay = await RelayProcess.start(services.config, env={"TMPDIR": str(services.workdir)})
    try:
        before = await head_too_large(relay)
        restricted = '[server]\ncors_origins = ["https://web.example"]\n'
        services.write(toml.replace("[server]\n", restricted))
        assert "now serves" in await reloaded(relay)
        after = await head_too_large(relay)
    finally:
        assert 0 == await relay.stop()

    assert before.startswith(b"HTTP/1.1 431 ")
    assert after.startswith(b"HTTP/1.1 431 ")
    assert b"access-control-allow-origin: *\r\n" in before
    assert b"access-control-allow-origin" not in after


async def head_too_large(relay: RelayProcess) -> bytes:
    """The answer to a request head of 3000 bytes (over a 2000-byte limit)."""
    host, _, port = relay.url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /push HTTP/1.1\r\nHost: r\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def status(session: aiohttp.ClientSession, url: str, method: str = "GET") -> int:
    async with session.request(method, url, data=b"", headers=FORM) as response:
        await response.read()
        return response.status


async def test_a_reload_frees_no_rate_limited_device(services: Services) -> None:
    """[limits] unchanged: the running limiter, and its counts, serve on (one process; with
    `--workers N` the counts survive a reload when they are kept in Redis)."""
    limits = "[limits]\ntoken_per_minute = 1\ntoken_burst = 3\n"
    services.write(services.toml() + limits)
    relay = await RelayProcess.start(services.config)
    try:
        before = [await push(relay, fcm_push()) for _ in range(3)]
        services.write(services.toml(hms_apps=(HMS_APP, NEW_HMS_APP)) + limits)
        line = await reloaded(relay)
        after = await push(relay, fcm_push())
    finally:
        assert 0 == await relay.stop()

    assert "limits" not in line
    assert ([204] * 3, 429) == (before, after)


async def test_after_a_reload_a_limited_device_is_logged_with_the_new_log_hash(
    services: Services,
) -> None:
    """The counts carry over, the hashing does not: a reload that changes `log_hash_key`
    names a rate-limited device by the same hash as its push lines."""
    limits = "[limits]\ntoken_per_minute = 1\ntoken_burst = 1\n"
    keyed = services.toml().replace("[server]\n", '[server]\nlog_hash_key = "{}"\n')
    services.write(keyed.format("before") + limits)
    relay = await RelayProcess.start(services.config)
    try:
        assert 204 == await push(relay, fcm_push())
        services.write(keyed.format("after") + limits)
        await reloaded(relay)
        assert 429 == await push(relay, fcm_push())
        logs = relay.logs()
    finally:
        assert 0 == await relay.stop()

    expected = TokenHasher("after")(device_token("reload"))
    [limited] = [line for line in logs.splitlines() if "rate limited" in line]
    assert f"device={expected}" in limited

"""Our HTTP/2 client (and the relay through it) against five independent HTTP/2 servers.

nginx, nghttpd, nghttpx, h2o and Apache httpd (mod_http2) run on loopback with TLS + ALPN h2,
100 concurrent streams per connection and a 1 s idle timeout, answering like APNs and FCM
(see `interop_servers.py`). Each test states one behaviour the relay depends on in production:
queueing behind the stream limit on one connection, graceful reloads (GOAWAY) losing nothing,
reconnecting after a crash, surviving the server's idle close, and flow control for bodies
larger than the window. A missing server fails with its `apt-get install` command.

Each test prints one `interop:` line (server, scenario, requests sent / failed, connections):
`pytest tests/test_http2_interop.py -s | grep interop:` gives the README's table figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from interop_configs import APNS_PATH, DEVICE, FCM_PATH, IDLE_TIMEOUT, MAX_STREAMS
from interop_servers import Server, advertised_settings
from push_relay.http2 import H2Client, H2ConnectionError, H2Error, H2Response
from push_relay.testing.apns_auth import generate_key
from push_relay.testing.ca import TestCA
from push_relay.testing.relay import RelayStarter

SERVERS = ["nginx", "nghttpd", "nghttpx", "h2o", "apache"]
RELOADABLE = [name for name in SERVERS if name != "nghttpd"]  # nghttpd can only be restarted
IDLE_CLOSING = [  # nghttpd never closes an idle connection
    "nginx",
    "nghttpx",
    "h2o",
    "apache",
]
APNS_HEADERS = [("apns-topic", "com.example.app"), ("apns-push-type", "background")]
FCM_HEADERS = [("content-type", "application/json"), ("authorization", "Bearer interop")]
MAX_LOAD = 50_000  # requests: every load stops by itself at this bound (h2o switches
# workers a second after its SIGHUP: some 20,000 requests at full speed on this machine)
LOAD_TIMEOUT = 30.0


@pytest.fixture
def server(request: pytest.FixtureRequest, test_ca: TestCA, tmp_path: Path) -> Iterator[Server]:
    running = Server(request.param, test_ca, tmp_path / request.param)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
async def client(server: Server, test_ca: TestCA) -> AsyncIterator[H2Client]:
    h2 = H2Client(server.url, test_ca.client_context(["h2"]))
    yield h2
    await h2.aclose()


async def push(client: H2Client, n: int) -> H2Response:
    """The n-th push: APNs and FCM shapes alternate."""
    if n % 2:
        return await client.request("POST", APNS_PATH, APNS_HEADERS, b'{"aps":{}}')
    return await client.request("POST", FCM_PATH, FCM_HEADERS, b'{"message":{"token":"t"}}')


def answered_like_the_service(server: Server, n: int, response: H2Response) -> bool:
    if response.status != 200:
        return False
    if n % 2:  # nghttpd serves a static file: no apns-id header
        return server.name == "nghttpd" or "apns-id" in response.headers
    name: str = json.loads(response.body)["name"]
    return "projects/p/messages/1" == name


def report(server: Server, scenario: str, sent: int, failed: int, connections: int) -> None:
    print(f"interop: {server.version} | {scenario} | {sent} sent, {failed} failed | {connections}")


@dataclass
class Load:
    """A bounded load: `concurrency` workers push until `done(load)` or `MAX_LOAD` pushes."""

    server: Server
    client: H2Client
    started: int = 0
    answered: int = 0
    failures: list[BaseException] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every answer

    @property
    def finished(self) -> int:
        return self.answered + len(self.failures)

    async def run_with(
        self, action: Callable[[], Coroutine[None, None, None]], done: Callable[[], bool]
    ) -> None:
        """Push with twice MAX_STREAMS workers, run `action` meanwhile; until `done()`."""
        self.gate.set()
        async with asyncio.timeout(LOAD_TIMEOUT), asyncio.TaskGroup() as tasks:
            tasks.create_task(action())
            for _ in range(2 * MAX_STREAMS):
                tasks.create_task(self._worker(done))

    async def _worker(self, done: Callable[[], bool]) -> None:
        while self.started < MAX_LOAD and not done():
            await self.gate.wait()  # closed while the server is down (restart scenario)
            self.started += 1
            n = self.started
            try:
                response = await push(self.client, n)
            except H2Error as err:
                self.failures.append(err)
                continue
            if not answered_like_the_service(self.server, n, response):
                self.failures.append(AssertionError(f"push {n}: {response}"))
                continue
            self.answered += 1
            self.progress.set()

    async def answered_at_least(self, count: int) -> None:
        while self.answered < count:
            self.progress.clear()
            await self.progress.wait()


async def logged(server: Server, requests: int) -> None:
    """Until the server's log shows `requests` requests (logs are written after the answer)."""
    async with asyncio.timeout(10):
        while server.requests() < requests:  # noqa: ASYNC110  # another process writes it
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_1000_concurrent_requests_queue_behind_100_streams_on_one_connection(
    server: Server, client: H2Client
) -> None:
    assert MAX_STREAMS == advertised_settings(server)[0x3]  # SETTINGS_MAX_CONCURRENT_STREAMS

    responses = await asyncio.gather(*(push(client, n) for n in range(1000)))

    assert all(answered_like_the_service(server, n, r) for n, r in enumerate(responses))
    await logged(server, 1000)
    assert (1, 1, 1000) == (client.connections_opened, server.connections(), server.requests())
    report(server, "1,000 concurrent", 1000, 0, server.connections())


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_1000_concurrent_pushes_through_the_relay_share_one_connection(
    server: Server, start_relay: RelayStarter, tmp_path: Path
) -> None:
    """The relay's APNs backend (sandbox endpoint) in front of the server: all 204, one
    upstream connection."""
    key = generate_key(tmp_path)
    fields = {
        "type": "apns",
        "token": DEVICE,
        "session": "123deadbeef",
        "version": "3",
        "bundleid": "com.example.app",
        "endpoint": "s",
    }
    async with start_relay(key.config_toml("https://127.0.0.1:9", server.url)) as relay:
        answers = await asyncio.gather(*(relay.push(fields) for _ in range(1000)))

    assert [204] * 1000 == [answer.status for answer in answers]
    await logged(server, 1000)
    assert (1, 1000) == (server.connections(), server.requests())
    report(server, "1,000 concurrent via relay", 1000, 0, server.connections())


@pytest.mark.parametrize("server", RELOADABLE, indirect=True)
async def test_a_graceful_reload_under_load_fails_no_request(
    server: Server, client: H2Client
) -> None:
    """The old workers' GOAWAY moves the load to a new connection without losing a request."""
    load = Load(server, client)
    reloaded_at: list[int] = []

    async def reload_once_loaded() -> None:
        await load.answered_at_least(500)
        reloaded_at.append(load.answered)
        server.reload()

    def moved_on() -> bool:  # 500 answers since the reload, and a second connection opened
        return (
            bool(reloaded_at)
            and client.connections_opened >= 2
            and load.answered >= reloaded_at[0] + 500
        )

    await load.run_with(reload_once_loaded, moved_on)

    report(server, "graceful reload", load.started, len(load.failures), server.connections())
    assert ([], load.started) == (load.failures, load.answered)
    assert 2 <= client.connections_opened
    await logged(server, load.answered)
    assert client.connections_opened == server.connections()


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_after_a_crash_the_client_reconnects_and_only_requests_in_flight_fail(
    server: Server, client: H2Client
) -> None:
    load = Load(server, client)
    in_flight_at_kill: list[int] = []
    finished_at_restart: list[int] = []

    async def restart_once_loaded() -> None:
        await load.answered_at_least(500)
        load.gate.clear()  # no new request while the server is down
        in_flight_at_kill.append(load.started - load.finished)
        await asyncio.to_thread(server.restart)  # SIGKILL master and workers, start again
        finished_at_restart.append(load.finished)
        load.gate.set()

    def recovered() -> bool:  # 500 answers after the restart
        return bool(finished_at_restart) and load.answered >= finished_at_restart[0] + 500

    await load.run_with(restart_once_loaded, recovered)

    report(server, "restart", load.started, len(load.failures), server.connections())
    assert all(isinstance(failure, H2ConnectionError) for failure in load.failures), load.failures
    assert len(load.failures) <= in_flight_at_kill[0]
    assert load.started == load.finished
    assert 2 == client.connections_opened == server.connections()


@pytest.mark.parametrize("server", IDLE_CLOSING, indirect=True)
async def test_pushes_at_the_edge_of_the_idle_timeout_do_not_fail(
    server: Server, test_ca: TestCA
) -> None:
    """Clients each idle for a little less or a little more than the server's idle timeout
    (one connection each, all at once), then push three at once: every push is answered."""
    # dense around the nominal edge, where a close and a push cross; sparse further before it,
    # where the edge lands when the server's timer is coarse (Apache: up to 100 ms early) or
    # this busy client reads the first answer late
    before = [IDLE_TIMEOUT - 0.3 + step * 0.01 for step in range(28)]
    edge = [IDLE_TIMEOUT + step * 0.00025 for step in range(-100, 100)]
    offsets = [*before, *edge, IDLE_TIMEOUT + 0.5]

    async def idle_then_push(idle: float) -> tuple[int, list[H2Response | BaseException]]:
        client = H2Client(server.url, test_ca.client_context(["h2"]))
        try:
            await push(client, 1)
            await asyncio.sleep(idle)
            burst = await asyncio.gather(
                *(push(client, n) for n in range(3)), return_exceptions=True
            )
            return client.connections_opened, burst
        finally:
            await client.aclose()

    results = await asyncio.gather(*(idle_then_push(idle) for idle in offsets))

    failures = [r for _, burst in results for r in burst if not isinstance(r, H2Response)]
    reconnected = [opened == 2 for opened, _ in results]
    sent = len(offsets) * 4
    report(server, "idle edge", sent, len(failures), len(offsets) + sum(reconnected))
    assert [] == failures
    # the pushes straddled the edge: sent on the idle connection first, on a new one at last
    assert not reconnected[0], f"{server.name} closed a connection idle for {offsets[0]} s"
    assert reconnected[-1], f"{server.name} kept a connection idle for {offsets[-1]} s"


@pytest.mark.parametrize("server", SERVERS, indirect=True)
async def test_bodies_larger_than_the_flow_control_window_arrive_intact(
    server: Server, client: H2Client
) -> None:
    # every connection starts with a 64 KiB window (RFC 9113 §6.9.2) whatever the SETTINGS say
    # of streams (h2o: 16 MiB): these bodies cannot be sent without the server's WINDOW_UPDATEs
    stream_window = advertised_settings(server).get(0x4, 65_535)  # SETTINGS_INITIAL_WINDOW_SIZE
    bodies = [os.urandom(256 * 1024) for _ in range(4)]
    assert all(len(body) > min(65_535, stream_window) for body in bodies)

    responses = await asyncio.gather(
        *(client.request("POST", APNS_PATH, APNS_HEADERS, body) for body in bodies)
    )

    assert [200] * len(bodies) == [r.status for r in responses]
    if server.name == "nghttpd":  # no back end to hash them: its frame log counts the bytes
        assert [len(body) for body in bodies] == server.received_body_lengths()
    else:
        sent = [(str(len(b)), hashlib.sha256(b).hexdigest()) for b in bodies]
        received = [(r.headers["x-body-length"], r.headers["x-body-sha256"]) for r in responses]
        assert sent == received
    report(server, "4 bodies of 256 KiB", len(bodies), 0, client.connections_opened)

"""Push statistics in a REAL InfluxDB 1.x (`influxd`, started by the fixtures).

The relay writes `started` once and one `push` point per validated push, in batches from a
background task: pushes never wait for InfluxDB, whether it is up, down or hung.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from helpers import wait_until
from influx_server import ADMIN_PASSWORD, InfluxServer
from push_relay.backends import Clients, Readiness
from push_relay.config import InfluxConfig
from push_relay.influxdb import InfluxSink, escape_tag
from push_relay.relay import Outcome
from push_relay.request import ApnsTarget, FcmTarget, GatewayTarget, HmsTarget, PushRequest
from push_relay.testing.ca import TestCA
from push_relay.testing.hms_sim import HmsSimulator
from push_relay.testing.relay import RunningRelay

pytestmark = pytest.mark.influxdb

GW_KEY = "ab" * 32
PUSHES = {  # one valid request per push type, keyed by the InfluxDB `type` tag
    "fcm": {"type": "fcm", "token": "t"},
    "apns": {"type": "apns", "token": "t", "bundleid": "ch.threema.app", "endpoint": "s"},
    "hms": {"type": "hms", "token": "t", "appid": "app-1"},
    "threemagateway": {"type": "threema-gateway", "identity": "ECHOECHO", "public_key": GW_KEY},
}
TARGETS = (FcmTarget, ApnsTarget, HmsTarget, GatewayTarget)


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One server for the tests that do not stop it; each test uses its own database."""
    server = InfluxServer(tmp_path_factory.mktemp("influxdb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """A server this test may stop, pause and restart; it is NOT started yet."""
    server = InfluxServer(tmp_path / "influxdb")
    server.root.mkdir()
    yield server
    server.stop()


@pytest.fixture
def db() -> str:
    return f"pushstats_{secrets.token_hex(4)}"


def fast_clients() -> Clients:
    """Retries against a down InfluxDB every few milliseconds, not seconds."""
    return Clients(backoff_base=0.001)


def form(kind: str, version: int) -> dict[str, str]:
    return PUSHES[kind] | {"session": "s", "version": str(version)}


async def rows(influx: InfluxServer, q: str, db: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(influx.rows, q, db)


async def wait_rows(
    influx: InfluxServer, q: str, db: str, count: int, within: float = 10.0
) -> list[dict[str, Any]]:
    """Poll until the query returns `count` rows (no more: a surplus fails at once)."""
    deadline = time.monotonic() + within
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if db in await asyncio.to_thread(influx.databases):
            found = await rows(influx, q, db)
            assert len(found) <= count, found
            if len(found) == count:
                return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} rows for {q!r} within {within} s, got {found}")


def influx_sink(relay: RunningRelay) -> InfluxSink:
    [sink] = [o for o in relay.runtime.observers if isinstance(o, InfluxSink)]
    return sink


def dropped_total() -> float:
    return REGISTRY.get_sample_value("push_relay_influxdb_dropped_total") or 0.0


class Delivers:
    """A push service that accepts everything, standing in for backends under test elsewhere."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, push: PushRequest) -> None:
        return None

    async def check_ready(self) -> dict[str, Readiness]:
        return {self.name: Readiness(True, "ok")}

    async def aclose(self) -> None:
        return None


# -- through the real relay -----------------------------------------------------------------


async def test_database_is_created_and_started_point_written(
    start_relay: Any, influx: InfluxServer, db: str
) -> None:
    assert db not in influx.databases()
    async with start_relay(influx.config_toml(db)):
        [started] = await wait_rows(influx, "SELECT * FROM started", db, 1)
    assert db in influx.databases()
    assert socket.gethostname() == started["host"]
    assert 1 == started["value"]
    assert abs(time.time_ns() - started["time"]) < 60e9


async def test_every_push_type_and_both_outcomes_are_recorded(
    start_relay: Any, influx: InfluxServer, db: str
) -> None:
    """Unconfigured backends fail (success=false); working ones deliver (success=true)."""
    async with start_relay(influx.config_toml(db)) as relay:
        for kind in PUSHES:
            assert 400 == (await relay.push(form(kind, 3))).status
        relay.runtime.relay.backends.update({t: Delivers(t.__name__) for t in TARGETS})
        for kind in PUSHES:
            assert 204 == (await relay.push(form(kind, 4))).status
    # the relay has stopped: whatever was still queued has been flushed
    points = await rows(influx, "SELECT * FROM push", db)
    expected = {(kind, "3", "false") for kind in PUSHES} | {(kind, "4", "true") for kind in PUSHES}
    assert expected == {(p["type"], p["version"], p["success"]) for p in points}
    assert 8 == len(points)
    assert {socket.gethostname()} == {p["host"] for p in points}
    assert {1} == {p["value"] for p in points}


async def test_real_hms_backend_records_delivered_and_unknown_app(
    start_relay: Any, influx: InfluxServer, db: str, test_ca: TestCA
) -> None:
    """Through the HMS backend and its simulator: a delivered push is success=true, a push
    for an app id that is not configured still writes its point, with success=false."""
    sim = HmsSimulator(test_ca)
    sim.add_app("104455555", "client-secret")
    await sim.start()
    hms = sim.config_toml("104455555")
    try:
        async with start_relay(influx.config_toml(db) + hms) as relay:
            delivered = await relay.push(form("hms", 11) | {"appid": "104455555"})
            unknown = await relay.push(form("hms", 12) | {"appid": "999"})
    finally:
        await sim.stop()
    assert (204, 400) == (delivered.status, unknown.status)
    points = await rows(influx, "SELECT * FROM push", db)
    assert [("hms", "11", "true"), ("hms", "12", "false")] == [
        (p["type"], p["version"], p["success"]) for p in points
    ]


async def test_validation_failures_write_no_point(
    start_relay: Any, influx: InfluxServer, db: str
) -> None:
    async with start_relay(influx.config_toml(db)) as relay:
        assert 400 == (await relay.push({"token": "t", "session": "s", "version": "x"})).status
        assert 400 == (await relay.push(form("fcm", 5))).status
    points = await rows(influx, "SELECT * FROM push", db)
    assert [("fcm", "5", "false")] == [(p["type"], p["version"], p["success"]) for p in points]


async def test_pushes_with_equal_tags_are_all_kept(
    start_relay: Any, influx: InfluxServer, db: str
) -> None:
    """Batched points carry unique timestamps, so none overwrites another in InfluxDB."""
    async with start_relay(influx.config_toml(db)) as relay:
        for _ in range(50):
            await relay.push(form("fcm", 7))
    [count] = await rows(influx, "SELECT count(value) FROM push", db)
    assert 50 == count["count"]


async def test_shutdown_flushes_queued_points(
    start_relay: Any, influx: InfluxServer, db: str
) -> None:
    async with start_relay(influx.config_toml(db)) as relay:
        await wait_rows(influx, "SELECT * FROM started", db, 1)
        await asyncio.gather(*(relay.push(form("apns", 9)) for _ in range(30)))
        queued = influx_sink(relay).queued
    [count] = await rows(influx, "SELECT count(value) FROM push", db)
    assert 30 == count["count"], f"{queued} points were queued at shutdown"


async def test_pushes_never_wait_for_a_down_or_hung_influxdb_and_writing_resumes(
    start_relay: Any, own_influx: InfluxServer, db: str
) -> None:
    influx = own_influx
    async with start_relay(influx.config_toml(db), clients=fast_clients()) as relay:
        sink = influx_sink(relay)
        assert 1 == sink.queued, "start-up waited for the down InfluxDB"  # `started`, unwritten
        sent = await pushes_answered(relay, version=1)  # connection refused
        assert 1 + sent == sink.queued

        await asyncio.to_thread(influx.start)
        await wait_rows(influx, "SELECT * FROM started", db, 1)
        await wait_rows(influx, "SELECT * FROM push WHERE version = '1'", db, sent)
        await wait_until(lambda: 0 == sink.queued, "the written points taken off the queue")

        influx.pause()  # hung: a write gets no answer (until it times out after 10 s)
        try:
            writes = sink.write_requests
            await relay.push(form("hms", 2))  # a point to write
            await wait_until(lambda: sink.write_requests > writes, "a write sent to the hung one")
            writes = sink.write_requests
            sent = 1 + await pushes_answered(relay, version=2)
            # all answered while that one write was still waiting: it has not been retried
            assert (writes, sent) == (sink.write_requests, sink.queued)
        finally:
            influx.resume()
        await wait_rows(influx, "SELECT * FROM push WHERE version = '2'", db, sent)

        await asyncio.to_thread(influx.stop)  # down again, then back: writing resumes
        sent = await pushes_answered(relay, version=3)
        await asyncio.to_thread(influx.start)
        await wait_rows(influx, "SELECT * FROM push WHERE version = '3'", db, sent)


async def pushes_answered(relay: RunningRelay, version: int, count: int = 20) -> int:
    """Push `count` times (no HMS backend: each is answered 400 and counted); returns `count`."""
    for _ in range(count):
        assert 400 == (await relay.push(form("hms", version))).status
    return count


async def test_wrong_credentials_are_logged_without_the_password(
    start_relay: Any, influx: InfluxServer, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="push_relay.influxdb")
    config = influx.config_toml(db, password="not-the-password")
    async with start_relay(config, clients=fast_clients()) as relay:
        assert 400 == (await relay.push(form("fcm", 1))).status
        await wait_until(lambda: "HTTP 401" in caplog.text, "the refused write logged")
        assert "not-the-password" not in repr(influx_sink(relay))
    assert db not in influx.databases()
    assert "not-the-password" not in caplog.text
    assert ADMIN_PASSWORD not in caplog.text


# -- the sink on its own (queue bound, timestamps, escaping) ---------------------------------


def push(version: int) -> PushRequest:
    return PushRequest(FcmTarget("t"), "s", version, None, 90, None)


@asynccontextmanager
async def sink_for(
    influx: InfluxServer, db: str, clock: float | None = None, **options: Any
) -> AsyncIterator[InfluxSink]:
    clients = Clients(backoff_base=0.001, clock=(lambda: clock) if clock else time.time)
    config = InfluxConfig(influx.url, "admin", ADMIN_PASSWORD, db)
    sink = InfluxSink(config, clients, **options)
    sink.start()
    try:
        yield sink
    finally:
        await sink.stop(5.0)
        await clients.aclose()


async def test_full_queue_drops_the_oldest_points_and_counts_them(
    own_influx: InfluxServer, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="push_relay.influxdb")
    before = dropped_total()
    options = {"clock": 1_700_000_000.0, "max_points": 10, "worker_slot": 7}
    async with sink_for(own_influx, db, **options) as sink:
        for version in range(25):  # with `started`: 26 points for 10 places
            sink.observe(push(version), Outcome(204, "delivered"))
        assert (10, 16) == (sink.queued, sink.dropped)
        assert 16 == dropped_total() - before
        # several failed writes: the drop is logged once, not each time
        failed = sink.write_requests
        await wait_until(lambda: failed + 3 <= sink.write_requests, "three more failed writes")
        sink.observe(push(25), Outcome(204, "delivered"))
        await asyncio.to_thread(own_influx.start)
        points = await wait_rows(own_influx, "SELECT * FROM push", db, 10)
    assert [str(v) for v in range(16, 26)] == [p["version"] for p in points]
    # explicit timestamps: each point keeps its own time, not the time of the late write
    # unique per point (1 µs apart) and per worker (the slot in the nanosecond digits)
    first = 1_700_000_000 * 10**9 + 7
    assert [first + n * 1000 for n in range(17, 27)] == [p["time"] for p in points]
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert ["influxdb: dropped 16 point(s) (queue full: InfluxDB slow or unreachable)"] == drops[:1]
    assert ["influxdb: dropped 1 point(s) (queue full: InfluxDB slow or unreachable)"] == drops[1:]


async def test_stop_writes_what_is_queued(influx: InfluxServer, db: str) -> None:
    async with sink_for(influx, db, flush_interval=60.0) as sink:
        await wait_rows(influx, "SELECT * FROM started", db, 1)
        for version in range(5):
            sink.observe(push(version), Outcome(502, "upstream_error"))
        assert 5 == sink.queued
    points = await rows(influx, "SELECT * FROM push", db)
    assert [("false", str(v)) for v in range(5)] == [(p["success"], p["version"]) for p in points]


async def test_workers_pushing_at_the_same_instant_keep_both_points(
    influx: InfluxServer, db: str
) -> None:
    """Same host, same tags, same clock reading: the worker slot keeps the points apart."""
    async with (
        sink_for(influx, db, clock=1_700_000_000.0, worker_slot=1) as first,
        sink_for(influx, db, clock=1_700_000_000.0, worker_slot=2) as second,
    ):
        first.observe(push(1), Outcome(204, "delivered"))
        second.observe(push(1), Outcome(204, "delivered"))
    [count] = await rows(influx, "SELECT count(value) FROM push", db)
    assert 2 == count["count"]


async def test_stop_gives_up_after_its_timeout(own_influx: InfluxServer, db: str) -> None:
    async with sink_for(own_influx, db) as sink:
        sink.observe(push(1), Outcome(204, "delivered"))
        # InfluxDB is down: without its timeout, stop would retry for ever
        async with asyncio.timeout(30):
            await sink.stop(0.3)
        assert (0, 2) == (sink.queued, sink.dropped)  # `started` and the push


async def test_escaped_host_is_stored_verbatim(influx: InfluxServer, db: str) -> None:
    host = "edge 1,dc=eu"
    async with sink_for(influx, db, host=host) as sink:
        sink.observe(push(1), Outcome(204, "delivered"))
    points = await rows(influx, "SELECT * FROM push", db)
    assert [host] == [p["host"] for p in points]
    [started] = await rows(influx, "SELECT * FROM started", db)
    assert host == started["host"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("relay-1.example.com", "relay-1.example.com", id="plain"),
        pytest.param("a b", r"a\ b", id="space"),
        pytest.param("a,b", r"a\,b", id="comma"),
        pytest.param("a=b", r"a\=b", id="equals"),
        pytest.param(r"a\b", r"a\b", id="backslash-kept-literally"),
        pytest.param("a\\", "a/", id="trailing-backslash-unwritable"),
        pytest.param("a\\,b", r"a/\,b", id="backslash-before-comma-unwritable"),
        pytest.param("a\nb", r"a\ b", id="newline"),
    ],
)
def test_escape_tag(value: str, expected: str) -> None:
    assert expected == escape_tag(value)

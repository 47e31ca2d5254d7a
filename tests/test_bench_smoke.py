"""Smoke variant of `make bench`: the benchmark's own tools drive the real relay against
nginx (TLS + HTTP/2) for a few seconds, and every push must be answered 204.

Figures are not asserted here (they belong to bench/README.md); what is asserted is that the
benchmark still measures what it claims: realistic FCM and APNs pushes, all delivered, over
one upstream connection per push service. nginx and wrk are required: without them these
tests fail naming the Debian packages to install.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from push_relay.testing.ca import TestCA
from push_relay.testing.redis_server import RedisServer
from push_relay.testing.relay import RelayStarter

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
# the benchmark's modules live beside its scripts, not in the package
import measure  # noqa: E402
import shapes  # noqa: E402
from limits_rows import limits_config  # noqa: E402
from nginx_upstream import Nginx, require_tools, start_nginx  # noqa: E402
from relay_process import relay_config  # noqa: E402

PUSHES_PER_SERVICE = 250


@pytest.fixture
def nginx(test_ca: TestCA, tmp_path: Path) -> Iterator[Nginx]:
    require_tools("nginx", "wrk")  # raises, naming the packages: never a skip
    upstream = start_nginx(test_ca, tmp_path / "nginx", log_requests=True)
    yield upstream
    upstream.stop()


def _bodies(tmp_path: Path, kind: str, count: int) -> list[str]:
    path = shapes.write_bodies(tmp_path / f"{kind}.txt", kind, count)
    return path.read_text().splitlines()


def _upstream_requests(nginx: Nginx) -> list[list[str]]:
    """nginx's access log (flushed when nginx stops): connection, protocol, method, uri, status."""
    nginx.stop()
    return [line.split() for line in nginx.access_log.read_text().splitlines()]


async def test_500_concurrent_pushes_are_all_delivered_over_one_connection_per_service(
    start_relay: RelayStarter, nginx: Nginx, tmp_path: Path
) -> None:
    bodies = _bodies(tmp_path, "fcm", PUSHES_PER_SERVICE)
    bodies += _bodies(tmp_path, "apns", PUSHES_PER_SERVICE)
    async with start_relay(relay_config(nginx, tmp_path)) as relay:
        answers = await asyncio.gather(*(relay.push(body) for body in bodies))

    assert [204] * len(bodies) == [answer.status for answer in answers]
    pushes = [r for r in _upstream_requests(nginx) if r[3] != "/token" and r[1] == "HTTP/2.0"]
    assert len(bodies) == len(pushes)
    assert {"200"} == {r[4] for r in pushes}
    fcm = {r[0] for r in pushes if r[3] == shapes.FCM_SEND_PATH}
    apns = {r[0] for r in pushes if r[3].startswith(shapes.APNS_DEVICE_PATH)}
    assert (1, 1) == (len(fcm), len(apns))


async def _run_tool(command: list[str]) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    return measure.parse_result(command, process.returncode, stdout.decode(), stderr.decode())


async def test_wrk_closed_loop_gets_only_204_from_the_relay(
    start_relay: RelayStarter, nginx: Nginx, tmp_path: Path
) -> None:
    bodies = shapes.write_bodies(tmp_path / "fcm.txt", "fcm", 100)
    async with start_relay(relay_config(nginx, tmp_path, ("fcm",))) as relay:
        command = measure.wrk_command(
            relay.url + "/push", bodies, expect=204, duration=1, connections=8
        )
        result = await _run_tool(command)

    assert 0 == result["unexpected_status"]
    assert {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0} == result["errors"]
    assert result["requests"] == result["answered"]
    assert measure.all_expected(result)


async def test_fixed_rate_load_is_all_answered_204_on_the_apns_path(
    start_relay: RelayStarter, nginx: Nginx, tmp_path: Path
) -> None:
    bodies = shapes.write_bodies(tmp_path / "apns.txt", "apns", 100)
    async with start_relay(relay_config(nginx, tmp_path, ("apns",))) as relay:
        command = measure.fixed_rate_command(
            relay.url + "/push", bodies, rate=400, expect=204, duration=1, cafile=None
        )
        result = await _run_tool(command)

    assert {"204": 400} == result["statuses"]
    assert 0 == result["unanswered"]
    assert 0 == result["lost_connections"]
    assert measure.all_expected(result)


async def test_the_limits_rows_relay_everything_and_count_in_redis(
    start_relay: RelayStarter, nginx: Nginx, tmp_path: Path
) -> None:
    """The bench's `[limits]` are on (every push checked in Redis) and refuse nothing."""
    bodies = shapes.write_bodies(tmp_path / "fcm.txt", "fcm", 100)
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        toml = limits_config(relay_config(nginx, tmp_path, ("fcm",)), redis)
        async with start_relay(toml) as relay:
            command = measure.wrk_command(
                relay.url + "/push", bodies, expect=204, duration=1, connections=8
            )
            result = await _run_tool(command)
        client = Redis.from_url(redis.url)
        calls = (await client.info("commandstats"))["cmdstat_evalsha"]["calls"]
        await client.aclose()
    finally:
        redis.stop()

    assert measure.all_expected(result)
    assert 0 == result["unexpected_status"]
    assert 0 < calls <= result["requests"]  # batched: at most one script call per push

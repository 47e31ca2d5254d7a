"""Rows of `make bench` with `[limits]` on: the in-process store and a real Redis.

Limits are set far above what the run sends (1,000 devices round-robin from one client), so
nothing is refused and every answer must still be 204: what is measured is the cost of
checking. Both scopes are on (the most work per push); with Redis, a `redis-server` started
here (loopback, nothing persisted) is shared by the relay's worker and stopped by its PID.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import measure
import procstats
from nginx_upstream import Nginx
from relay_process import start_relay

from push_relay.testing.ports import free_port
from push_relay.testing.redis_server import RedisServer

STORES = ("memory", "redis")
LIMITS = (
    "[limits]\n"
    "token_per_minute = 60000\ntoken_burst = 1000\n"
    "client_per_minute = 6000000\nclient_burst = 100000\n"
)


def limits_config(base: str, redis: RedisServer | None) -> str:
    section = LIMITS if redis is None else LIMITS + f'redis_url = "{redis.url}"\n'
    return base + "\n" + section


def limits_figures(
    store: str,
    nginx: Nginx,
    bodies: dict[str, Path],
    base_config: str,
    workdir: Path,
    env: dict[str, str],
    args: Any,
    stack: ExitStack,
) -> dict[str, Any]:
    """Peak throughput of a one-worker relay with limits counted in `store`."""
    redis = None
    if store == "redis":
        redis = RedisServer(workdir / "redis")
        redis.start()
        stack.callback(redis.stop)
    config_file = workdir / f"config-limits-{store}.toml"
    config_file.write_text(limits_config(base_config, redis))
    relay = start_relay(
        config_file, free_port(), workdir, workers=None, log_level=args.relay_log_level, env=env
    )
    groups = {"relay": relay.pids, "nginx": nginx.pids}
    if redis is not None and redis.process is not None:
        redis_pid = redis.process.pid
        groups["redis"] = lambda: [redis_pid]
    paths: dict[str, dict[str, Any]] = {}
    try:
        for path in bodies:  # warm-up: tokens fetched, connections open
            warm = measure.wrk(
                relay.url + "/push",
                bodies[path],
                expect=204,
                duration=1,
                connections=8,
                groups=groups,
            )
            if not measure.all_expected(warm.result):
                raise RuntimeError(f"warm-up with limits ({store}) failed: {warm.result}")
        paths = measure.peaks(relay.url, bodies, groups, args)
        rss = procstats.rss_mb(relay.process.pid)
    finally:
        relay.stop()
        if redis is not None:
            redis.stop()
    return {"store": store, "paths": paths, "rss_mb": rss}

"""The Redis store: one count shared by every worker and every instance that uses the server.

Cost. At 10,000 pushes/s a round trip per push is too many, so the checks of the pushes that
arrive in one event-loop turn are collected and sent together: one script call (`EVALSHA`)
per `BATCH` pushes, all calls in one pipeline, and at most one pipeline in flight per worker;
checks arriving meanwhile wait for the next one, so batches grow with the load.

Keys. Tokens and addresses are stored only as keyed BLAKE2b hashes. The hash key lives in
Redis itself (`HASH_KEY_NAME`): the script installs the caller's candidate when there is none
(`SET NX`) and otherwise tells a caller with another key which one to use, so instances agree
with no configuration, and again after Redis lost its data.

Failures. Every call is bounded by `redis_timeout_ms`. A failed call answers its checks
`UNAVAILABLE` (the limiter applies `redis_fail_open`), counts in
`push_relay_rate_limit_errors_total`, warns at most every `WARN_EVERY_SECS`, and Redis is not
asked again for one more timeout's length, so a server that is down costs no connection
attempt per push.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from push_relay import metrics
from push_relay.backends import Readiness
from push_relay.ratelimit._gcra import (
    ADMITTED,
    MICROS,
    UNAVAILABLE,
    KeyedDigest,
    Rule,
    Verdict,
)
from push_relay.ratelimit._gcra import retry_after as whole_seconds
from push_relay.ratelimit._script import SCRIPT

log = logging.getLogger("push_relay.limits")

PREFIX = "push-relay:limits:"
HASH_KEY_NAME = PREFIX + "hash-key"
BATCH = 256  # pushes per script call: keeps each call short for the server's other clients
WARN_EVERY_SECS = 10.0

Check = tuple[str | None, str | None, "asyncio.Future[Verdict]"]


class RedisStore:
    """GCRA state in a Redis (or Valkey) server, checked in batches."""

    shared = True

    def __init__(
        self,
        url: str,
        client: Rule | None,
        token: Rule | None,
        *,
        timeout: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # one immediate retry replaces a connection that went stale (Redis restarted);
            # the overall bound of every call is asyncio.timeout(timeout), retries included
            retry=Retry(NoBackoff(), 1),
            max_connections=8,
        )
        self.timeout = timeout
        self._clock = clock  # None: Redis's own clock, the same for every instance
        rules = {"client": client, "token": token}
        self._scopes = [(name, rule) for name, rule in rules.items() if rule is not None]
        self._rule_args = [str(n) for _, r in self._scopes for n in (r.interval, r.tolerance)]
        # a candidate until Redis names the agreed one
        self._digest = KeyedDigest(os.urandom(32).hex().encode())
        self._sha = ""
        self._pending: list[Check] = []
        self._scheduled = False
        self._flushing: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._warned_at: float | None = None
        self.last_error: str | None = None

    def check(self, client: str | None, target: str | None) -> asyncio.Future[Verdict]:
        """The verdict for one push, answered with the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        self._pending.append((client, target, future))
        if not self._scheduled and self._flushing is None:
            self._scheduled = True
            loop.call_soon(self._flush_pending)
        return future

    def _flush_pending(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            self._flushing = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushing.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing = None
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_pending)

    async def _flush(self, batch: list[Check]) -> None:
        verdicts: Sequence[Verdict] = [UNAVAILABLE] * len(batch)
        loop = asyncio.get_running_loop()
        try:
            if loop.time() >= self._retry_at:
                async with asyncio.timeout(self.timeout):
                    verdicts = await self._ask([(c, t) for c, t, _ in batch])
                self.last_error = None
        except (RedisError, OSError, TimeoutError) as err:
            self._failed(loop.time(), err)
        except Exception as err:  # a bug here must not leave pushes waiting for ever
            log.exception("rate-limit check failed")
            self._failed(loop.time(), err)
        finally:
            for (_, _, future), verdict in zip(batch, verdicts, strict=True):
                if not future.done():
                    future.set_result(verdict)

    def _failed(self, now: float, err: BaseException) -> None:
        self.last_error = type(err).__name__
        self._retry_at = now + self.timeout
        metrics.RATE_LIMIT_ERRORS.inc()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_SECS:
            self._warned_at = now
            log.warning("rate-limit store (Redis) failed: %s: %s", self.last_error, err)

    async def _ask(self, checks: list[tuple[str | None, str | None]]) -> list[Verdict]:
        """One pipelined round trip (plus one to load the script or adopt the agreed key)."""
        for _ in range(3):
            if not self._sha:
                self._sha = await self._redis.script_load(SCRIPT)
            pipe = self._redis.pipeline(transaction=False)
            now = "" if self._clock is None else str(int(self._clock() * MICROS))
            args: list[bytes | str] = [
                self._digest.key,
                now,
                str(len(self._scopes)),
                *self._rule_args,
            ]
            for start in range(0, len(checks), BATCH):
                keys = self._keys(checks[start : start + BATCH])
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            if any(isinstance(r, NoScriptError) for r in replies):
                self._sha = ""  # Redis restarted or flushed its scripts
                continue
            errors = [r for r in replies if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            if any(r[0] == 0 for r in replies):
                self._digest = KeyedDigest(next(r[1] for r in replies if r[0] == 0))
                continue
            return [self._verdict(r[i], r[i + 1]) for r in replies for i in range(1, len(r), 2)]
        raise RedisError("the rate-limit script did not settle on a hash key")

    def _keys(self, checks: list[tuple[str | None, str | None]]) -> list[str]:
        keys = [HASH_KEY_NAME]
        digest = self._digest
        for client, target in checks:
            for name, _ in self._scopes:
                value = client if name == "client" else target
                if value is None:
                    keys.append("")
                else:
                    keys.append(f"{PREFIX}{name[0]}:{digest(value).hex()}")
        return keys

    def _verdict(self, refused: int, wait: int) -> Verdict:
        if refused == 0:
            return ADMITTED
        return Verdict(self._scopes[refused - 1][0], whole_seconds(wait))

    async def readiness(self) -> Readiness:
        """Whether Redis answers a PING within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as err:
            return Readiness(False, f"Redis unreachable: {type(err).__name__}")
        return Readiness(True, "Redis reachable")

    async def aclose(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
        for _, _, future in self._pending:
            if not future.done():
                future.set_result(UNAVAILABLE)
        self._pending.clear()
        await self._redis.aclose()

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
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from push_relay import metrics
from push_relay.backends import Readiness
from push_relay.logs import KeyedDigest
from push_relay.ratelimit import _resp as resp
from push_relay.ratelimit._gcra import (
    ADMITTED,
    MICROS,
    UNAVAILABLE,
    Rule,
    Verdict,
)
from push_relay.ratelimit._gcra import retry_after as whole_seconds
from push_relay.ratelimit._script import SCRIPT

log = logging.getLogger("push_relay.limits")

PREFIX = "push-relay:limits:"
HASH_KEY_NAME = PREFIX + "hash-key"
HASH_KEY = resp.bulk(HASH_KEY_NAME.encode())
KEY_HEX = 32  # hex characters of a key's hash (16 bytes)
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
        # every call is bounded by asyncio.timeout(timeout), which also covers connecting;
        # redis-py's own per-read timeouts and retries would only add cost under that bound
        self._redis = Redis.from_url(
            url, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), max_connections=4
        )
        # the checks' own connection: one batch in flight at a time, no pool bookkeeping
        pool = self._redis.connection_pool
        self._connection: Connection = pool.make_connection()  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self._clock = clock  # None: Redis's own clock, the same for every instance
        rules = {"client": client, "token": token}
        scopes = [(name, rule) for name, rule in rules.items() if rule is not None]
        self._scope_names = [name for name, _ in scopes]
        # (the RESP head of its keys, whether it counts clients) per scope, in script order
        self._scopes = [
            (resp.key_head(f"{PREFIX}{name[0]}:", KEY_HEX), name == "client") for name, _ in scopes
        ]
        self._rule_args = [b"%d" % len(scopes)]
        self._rule_args += [b"%d" % n for _, r in scopes for n in (r.interval, r.tolerance)]
        # a candidate until Redis names the agreed one
        self._digest = KeyedDigest(os.urandom(32).hex().encode())
        self._sha = hashlib.sha1(SCRIPT.encode()).hexdigest().encode()  # EVALSHA's name
        self._pending: list[Check] = []
        self._scheduled = False
        self._flushing: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._warned_at: float | None = None

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
        self._retry_at = now + self.timeout
        metrics.RATE_LIMIT_ERRORS.inc()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_SECS:
            self._warned_at = now
            log.warning("rate-limit store (Redis) failed: %s: %s", type(err).__name__, err)

    async def _ask(self, checks: list[tuple[str | None, str | None]]) -> list[Verdict]:
        """One round trip (plus one to load the script or adopt the agreed key)."""
        for _ in range(3):
            replies = await self._round_trip(self._commands(checks))
            if any(isinstance(r, NoScriptError) for r in replies):
                # Redis restarted or flushed its scripts
                await self._round_trip([resp.command(b"SCRIPT", b"LOAD", SCRIPT.encode())])
                continue
            errors = [r for r in replies if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            if any(r[0] == 0 for r in replies):
                self._digest = KeyedDigest(next(r[1] for r in replies if r[0] == 0))
                continue
            return [self._verdict(r[i], r[i + 1]) for r in replies for i in range(1, len(r), 2)]
        raise RedisError("the rate-limit script did not settle on a hash key")

    def _commands(self, checks: list[tuple[str | None, str | None]]) -> list[bytes]:
        """`EVALSHA` per `BATCH` checks, packed by hand: redis-py's general packing of each
        argument cost more than everything else a check does."""
        now = b"" if self._clock is None else b"%d" % int(self._clock() * MICROS)
        args = [self._digest.key, now, *self._rule_args]
        digest = self._digest
        commands = []
        for start in range(0, len(checks), BATCH):
            keys = [HASH_KEY]
            for client, target in checks[start : start + BATCH]:
                for prefix, is_client in self._scopes:
                    value = client if is_client else target
                    keys.append(
                        resp.EMPTY
                        if value is None
                        else prefix + digest(value).hex().encode() + b"\r\n"
                    )
            commands.append(resp.evalsha(self._sha, keys, args))
        return commands

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        """Send `commands` at once on the store's own connection; every reply, in order (an
        error reply as its exception). A connection that Redis closed since its last use is
        replaced once."""
        connection = self._connection
        stale = connection.is_connected
        while True:
            try:
                await connection.send_packed_command(b"".join(commands), check_health=False)
                return [await _reply(connection) for _ in commands]
            except RedisConnectionError:
                await connection.disconnect(nowait=True)
                if not stale:
                    raise
                stale = False
            except BaseException:  # a timeout mid-reply: the connection's state is unknown
                await connection.disconnect(nowait=True)
                raise

    def _verdict(self, refused: int, wait: int) -> Verdict:
        if refused == 0:
            return ADMITTED
        return Verdict(self._scope_names[refused - 1], whole_seconds(wait))

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
        await self._connection.disconnect()
        await self._redis.aclose()


async def _reply(connection: Connection) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as err:
        return err

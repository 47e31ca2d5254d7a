"""The rate limiter the push path consults: client limit first, then the device target's."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from prometheus_client import Counter

from push_relay import metrics
from push_relay.backends import TYPE_NAMES, Readiness
from push_relay.config.limits import LimitsConfig
from push_relay.logs import TokenHasher
from push_relay.ratelimit._clients import ClientAddress
from push_relay.ratelimit._gcra import ADMITTED, UNAVAILABLE, Rule, Verdict
from push_relay.ratelimit._memory import MemoryStore
from push_relay.request import PushRequest

log = logging.getLogger("push_relay.limits")

LOG_EVERY_SECS = 60.0  # a limited key is logged at most this often


class Store(Protocol):
    shared: bool  # counted for every worker and instance (Redis), not in this process

    def check(self, client: str | None, target: str | None) -> Awaitable[Verdict]: ...

    async def readiness(self) -> Readiness: ...

    async def aclose(self) -> None: ...


class RateLimiter:
    """Decides whether a validated push may go on; counts and logs the pushes it refuses."""

    def __init__(
        self,
        config: LimitsConfig,
        store: Store,
        hasher: TokenHasher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.fail_open = config.redis_fail_open
        self._by_client = config.client_per_minute > 0
        self._by_token = config.token_per_minute > 0
        self._client_address = ClientAddress(config.trusted_proxies)
        self._hasher = hasher
        self._clock = clock
        self._logged: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._requests: dict[tuple[str, str], Counter] = {}

    async def check(self, scope: Mapping[str, Any], push: PushRequest) -> Verdict:
        """ADMITTED, or why not: `refused` is "client" or "token" (429) or "unavailable" (503)."""
        client = self._client_address(scope) if self._by_client else None
        target = push.device if self._by_token else None
        verdict = await self.store.check(client, target)
        if verdict.refused is None or (verdict is UNAVAILABLE and self.fail_open):
            return ADMITTED
        return self._refused(verdict, push, client, target)

    def _refused(
        self, verdict: Verdict, push: PushRequest, client: str | None, target: str | None
    ) -> Verdict:
        kind = TYPE_NAMES[type(push.target)]
        if verdict is UNAVAILABLE:
            self._count(kind, "503", "limits_unavailable")
            return verdict
        # a store refuses only a scope it was given a key for
        scope, who = ("client", client) if verdict.refused == "client" else ("token", target)
        assert who is not None
        metrics.RATE_LIMITED.labels(scope).inc()
        self._count(kind, "429", "rate_limited")
        if scope == "token":
            who = self._hasher(who)
        self._log_once(scope, who, kind, verdict.retry_after)
        return verdict

    def _count(self, kind: str, status: str, reason: str) -> None:
        child = self._requests.get((kind, status))
        if child is None:
            child = self._requests[kind, status] = metrics.REQUESTS.labels(kind, status, reason)
        child.inc()

    def _log_once(self, scope: str, who: str, kind: str, retry_after: int) -> None:
        now = self._clock()
        logged = self._logged
        while logged:  # forget keys logged long enough ago (bounded memory)
            oldest, at = next(iter(logged.items()))
            if now - at < LOG_EVERY_SECS:
                break
            del logged[oldest]
        if (scope, who) in logged:
            return
        logged[scope, who] = now
        what = f"client={who}" if scope == "client" else f"type={kind} device={who}"
        log.warning(
            "rate limited: scope=%s %s retry_after=%d (logged once a minute per key)",
            scope,
            what,
            retry_after,
        )

    async def readiness(self) -> Readiness | None:
        """The shared store's state for `/ready`; None when limits are counted in-process."""
        if not self.store.shared:
            return None
        state = await self.store.readiness()
        if state.ok:
            return state
        effect = "pushes pass unlimited" if self.fail_open else "pushes are refused (503)"
        return Readiness(False, f"{state.detail}; {effect}")

    async def aclose(self) -> None:
        await self.store.aclose()


def build_limiter(
    config: LimitsConfig, hasher: TokenHasher, clock: Callable[[], float] | None = None
) -> RateLimiter:
    """The limiter for `[limits]`; `clock` (seconds) replaces the store's own, for tests."""
    client = None
    if config.client_per_minute > 0:
        client = Rule.per_minute(config.client_per_minute, config.client_burst)
    token = None
    if config.token_per_minute > 0:
        token = Rule.per_minute(config.token_per_minute, config.token_burst)
    store: Store
    if config.redis_url is None:
        store = MemoryStore(client, token, clock)
    else:
        # imported only when configured: redis-py costs ~20 MiB per worker
        from push_relay.ratelimit._redis import RedisStore

        timeout = config.redis_timeout_ms / 1000
        store = RedisStore(config.redis_url, client, token, timeout=timeout, clock=clock)
    return RateLimiter(config, store, hasher, clock or time.monotonic)

"""Readiness: can every configured backend authenticate right now (and, with a shared
rate-limit store, does it answer)?

Checks may cost an upstream round trip (an OAuth token fetch), so results are cached for a
few seconds and concurrent `/ready` requests share one check; each backend's check is bounded
by a timeout so a hanging upstream cannot hang `/ready`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from push_relay.backends import Readiness
from push_relay.relay import Relay

CACHE_SECS = 3.0
CHECK_TIMEOUT_SECS = 2.0


class ReadinessProbe:
    """Cached readiness of every configured backend, by its `/ready` name."""

    def __init__(
        self,
        relay: Relay,
        names: Sequence[str],
        *,
        cache_secs: float = CACHE_SECS,
        timeout: float = CHECK_TIMEOUT_SECS,
        clock: Callable[[], float] = time.monotonic,
        limits: Callable[[], Awaitable[Readiness | None]] | None = None,
    ) -> None:
        self.relay = relay
        self.limits = limits
        self.limits_state: Readiness | None = None  # as of the last check
        self.names = list(names)  # e.g. fcm, apns, hms:<app>, threemagateway
        self.cache_secs = cache_secs
        self.timeout = timeout
        self.clock = clock
        self._cached: dict[str, Readiness] | None = None
        self._cached_at = 0.0
        self._pending: asyncio.Task[dict[str, Readiness]] | None = None

    async def states(self) -> dict[str, Readiness]:
        if self._cached is not None and self.clock() - self._cached_at < self.cache_secs:
            return self._cached
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_task(self._check())
        # shielded: a client hanging up must not cancel the check the others wait for
        return await asyncio.shield(self._pending)

    async def _check(self) -> dict[str, Readiness]:
        try:
            if self.limits is None:
                reported = await self.relay.check_ready(self.timeout)
            else:
                reported, self.limits_state = await asyncio.gather(
                    self.relay.check_ready(self.timeout), self.limits()
                )
            states = {name: _state_of(name, reported) for name in self.names}
            self._cached, self._cached_at = states, self.clock()
            return states
        finally:
            self._pending = None


def _state_of(name: str, reported: dict[str, Readiness]) -> Readiness:
    """A backend's own report for `name` (`hms:<app>`), else the failure reported for its
    type (`hms`, when the check of all HMS apps timed out or failed)."""
    state = reported.get(name) or reported.get(name.partition(":")[0])
    return state or Readiness(False, "backend gave no readiness report")


def starting(names: Sequence[str]) -> dict[str, Readiness]:
    return {name: Readiness(False, "starting") for name in names}

"""One worker's running state, with an explicit lifecycle: start → serve → stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from push_relay.auth import TokenCache
from push_relay.backends import Clients, build_backends
from push_relay.config import Config
from push_relay.influxdb import InfluxSink
from push_relay.logs import TokenHasher
from push_relay.ratelimit import RateLimiter, build_limiter
from push_relay.relay import PushObserver, Relay

log = logging.getLogger("push_relay")

INFLUX_FLUSH_SECS = 5.0  # shutdown waits at most this long to write queued statistics

RuntimeFactory = Callable[[Config], Awaitable["Runtime"]]


@dataclass
class Runtime:
    config: Config
    clients: Clients
    relay: Relay
    observers: list[PushObserver] = field(default_factory=list)
    limiter: RateLimiter | None = None  # None: no `[limits]`, nothing to consult per push

    @classmethod
    async def start(cls, config: Config, clients: Clients | None = None) -> Runtime:
        """Build backends and sinks; nothing talks to a push service until the first push."""
        clients = clients or Clients()
        observers: list[PushObserver] = []
        influx = InfluxSink(config.influxdb, clients) if config.influxdb else None
        if influx is not None:
            observers.append(influx)
        relay = Relay(
            build_backends(config, clients),
            observers=observers,
            hasher=TokenHasher(config.server.log_hash_key),
            max_in_flight=config.server.max_in_flight,
        )
        limiter = None
        if config.limits is not None and config.limits.active:
            limiter = build_limiter(config.limits, relay.hasher, clients.rate_clock)
        runtime = cls(config, clients, relay, observers, limiter)
        if influx is not None:
            influx.start()  # writes in the background: InfluxDB being down never blocks start-up
        log.info("backends configured: %s", ", ".join(config.backend_names()) or "none")
        return runtime

    def keep_limiter(self, old: Runtime) -> None:
        """Take over `old`'s rate-limit store, and so its counts (a reload that left
        `[limits]` unchanged); `old` closes this runtime's unused one when it stops. The
        limiter itself stays this runtime's: it hashes with this runtime's log key."""
        if self.limiter is not None and old.limiter is not None:
            self.limiter.store, old.limiter.store = old.limiter.store, self.limiter.store

    async def stop(self) -> None:
        """Let in-flight pushes finish (bounded by the grace period), then close everything."""
        grace = self.config.server.shutdown_grace_secs
        if not await self.relay.wait_idle(grace):
            log.warning(
                "shutdown: %d pushes still in flight after %.0f s", self.relay.in_flight, grace
            )
        await self.relay.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        for observer in self.observers:
            if isinstance(observer, InfluxSink):
                await observer.stop(INFLUX_FLUSH_SECS)
        await self.clients.aclose()
        await asyncio.sleep(0)


def runtimes_sharing_tokens() -> RuntimeFactory:
    """Starts runtimes that share one auth token cache, so a runtime started by a reload
    keeps the tokens of unchanged credentials: APNs refuses provider tokens that change more
    often than every 20 minutes, and OAuth endpoints rate-limit. Tokens are cached by
    credential, so a changed key or account gets tokens of its own."""
    tokens = TokenCache()

    async def start(config: Config) -> Runtime:
        return await Runtime.start(config, Clients(tokens=tokens))

    return start

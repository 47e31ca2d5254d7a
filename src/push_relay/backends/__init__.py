"""The backend interface and the table from request target to backend.

A backend is built from its config section and the shared `Clients`, and answers `send(push)`
by returning (delivered) or raising `PushFailed`. Each module under `backends/` is one push
service with the same shape: a pure `classify(status, headers, body) -> Verdict` that says what
the service's answer means, and the backend class that acts on it. `build_backends` is the only
place that knows them all.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from push_relay import tls
from push_relay.auth import TokenCache
from push_relay.config import Config
from push_relay.errors import FailureKind, PushFailed
from push_relay.http2 import H2Client
from push_relay.request import ApnsTarget, FcmTarget, GatewayTarget, HmsTarget, PushRequest, Target


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a push service's answer means for the push; every backend's `classify` gives one."""

    kind: FailureKind | None  # None: delivered; else whose fault the failure is
    reason: str  # low-cardinality label for metrics and logs
    detail: str = ""  # for the log line: status, codes, ids; never tokens or free text
    retry: bool = False  # transient, and the backend tries again (FCM; the others never)
    retry_after: float | None = None  # seconds the service asked to wait (`Retry-After`)
    renew_auth: bool = False  # the service refused our auth token: get a new one

    @property
    def delivered(self) -> bool:
        return self.kind is None

    def failure(self, upstream_status: int, note: str = "") -> PushFailed:
        """The error to raise for this (failed) verdict; `note` is added to its detail."""
        kind = self.kind or FailureKind.INTERNAL
        detail = f"{self.detail}; {note}" if note else self.detail
        return PushFailed(kind, self.reason, detail, upstream_status=upstream_status)


DELIVERED = Verdict(None, "delivered")
"""The verdict of an answer that carries nothing worth logging (built once, not per push)."""

Classify = Callable[[int, Mapping[str, str], bytes], Verdict]
"""`classify(status, headers, body)`: pure, no I/O; headers with lower-case names."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a backend can authenticate right now, for `/ready`."""

    ok: bool
    detail: str


class Backend(Protocol):
    """One push service."""

    name: str  # metric label and InfluxDB `type`: fcm, apns, hms, threemagateway

    async def send(self, push: PushRequest) -> None:
        """Deliver `push`, or raise `PushFailed` saying whose fault it is."""
        ...

    async def check_ready(self) -> dict[str, Readiness]:
        """Readiness per configured backend instance (e.g. one per HMS app)."""
        ...

    async def aclose(self) -> None:
        """Close connections; pending sends have finished or been cancelled."""
        ...


@dataclass
class Clients:
    """What backends share within one worker: HTTP/1.1 session, TLS contexts, auth tokens
    and the clock.

    Tests pass their own clock and backoff base so that retries run in milliseconds; the
    token cache follows the same clock. `rate_clock` replaces the rate limiter's own clock
    (monotonic in-process, the server's with Redis) so tests can refill without sleeping.
    """

    clock: Callable[[], float] = time.time
    rate_clock: Callable[[], float] | None = None
    backoff_base: float = 1.0  # seconds; FCM waits backoff_base * 2^n between retries
    ssl_context: ssl.SSLContext = field(default_factory=tls.client_context)
    h2_ssl_context: ssl.SSLContext = field(default_factory=lambda: tls.client_context(["h2"]))
    tokens: TokenCache = field(default=None)  # type: ignore[assignment]  # set below
    _http: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = TokenCache(self.clock)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The worker's one keep-alive HTTP/1.1 session (created on first use, in the loop)."""
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=1000, ttl_dns_cache=300)
            self._http = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._http

    def h2_client(self, origin: str) -> H2Client:
        """An HTTP/2 client for `origin`: TLS for https://; http:// (allowed on loopback only)
        is plaintext h2c, never TLS."""
        return H2Client(origin, self.h2_ssl_context if origin.startswith("https://") else None)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            # lets the connector's transports finish closing before the loop goes away
            await asyncio.sleep(0)


BackendTable = dict[type[Target], Backend]


def build_backends(config: Config, clients: Clients) -> BackendTable:
    """One backend per configured push service, keyed by the request target it serves."""
    table: BackendTable = {}
    if config.fcm is not None:
        from push_relay.backends.fcm import FcmBackend

        table[FcmTarget] = FcmBackend(config.fcm, clients)
    if config.apns is not None:
        from push_relay.backends.apns import ApnsBackend

        table[ApnsTarget] = ApnsBackend(config.apns, clients)
    if config.hms:
        from push_relay.backends.hms import HmsBackend

        table[HmsTarget] = HmsBackend(config.hms, clients)
    if config.threema_gateway is not None:
        from push_relay.backends.threema_gateway import GatewayBackend

        table[GatewayTarget] = GatewayBackend(config.threema_gateway, clients)
    return table


TYPE_NAMES: dict[type[Target], str] = {
    FcmTarget: "fcm",
    ApnsTarget: "apns",
    HmsTarget: "hms",
    GatewayTarget: "threemagateway",
}

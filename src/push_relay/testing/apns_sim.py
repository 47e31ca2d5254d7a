"""A simulated APNs: HTTP/2 over TLS, token authentication and APNs' own error answers.

It checks what the real service checks (the provider token's signature, key id, team, age and
update rate; topic, push type, priority, expiration, collapse id, device token, payload size)
and answers with APNs' status codes and `{"reason": ...}` bodies. Each device token can be
scripted (`sim.script.set(token, Step(reason="Unregistered"))`), every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from push_relay.testing.apns_auth import ApnsKey, ProviderTokens, Rejected, generate_key
from push_relay.testing.ca import TestCA
from push_relay.testing.h2server import H2Drop, H2Reply, H2Request, H2SimServer
from push_relay.testing.script import Script

if TYPE_CHECKING:
    from push_relay.sandbox import SandboxPart

# APNs' documented reasons, by the status each one comes with.
_REASONS_BY_STATUS = {
    400: "BadCollapseId BadDeviceToken BadExpirationDate BadMessageId BadPriority BadTopic "
    "DeviceTokenNotForTopic DuplicateHeaders IdleTimeout InvalidPushType MissingDeviceToken "
    "MissingTopic PayloadEmpty TopicDisallowed",
    403: "BadCertificate BadCertificateEnvironment ExpiredProviderToken Forbidden "
    "InvalidProviderToken MissingProviderToken UnrelatedKeyIdInToken BadEnvironmentKeyIdInToken",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "ExpiredToken Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyProviderTokenUpdates TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable Shutdown",
}
REASON_STATUS = {r: status for status, rs in _REASONS_BY_STATUS.items() for r in rs.split()}
_PUSH_TYPE_NAMES = (
    "alert background complication controls fileprovider liveactivity location mdm pushtotalk "
    "voip widgets"
)
PUSH_TYPES = frozenset(_PUSH_TYPE_NAMES.split())
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_PATH = re.compile(r"/3/device/([^/?]*)")


def check_notification(request: H2Request) -> tuple[str, dict[str, Any]]:
    """The device token and decoded payload of a valid push; otherwise raise `Rejected`."""
    headers = request.headers
    topic = headers.get("apns-topic")
    if not topic:
        raise Rejected("MissingTopic")
    push_type = headers.get("apns-push-type", "alert")
    if push_type not in PUSH_TYPES:
        raise Rejected("InvalidPushType")
    if headers.get("apns-priority", "10") not in ("1", "5", "10"):
        raise Rejected("BadPriority")
    if not _DIGITS.fullmatch(headers.get("apns-expiration", "0")):
        raise Rejected("BadExpirationDate")
    if len(headers.get("apns-collapse-id", "").encode()) > MAX_COLLAPSE_ID:
        raise Rejected("BadCollapseId")
    match = _PATH.fullmatch(request.path)
    device_token = match.group(1) if match else ""
    if not device_token:
        raise Rejected("MissingDeviceToken")
    if not _DEVICE_TOKEN.fullmatch(device_token):
        raise Rejected("BadDeviceToken")
    limit = MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD
    if not request.body:
        raise Rejected("PayloadEmpty")
    if len(request.body) > limit:
        raise Rejected("PayloadTooLarge")
    try:
        payload = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        # APNs documents no reason for a malformed payload; this one is the simulator's own
        raise Rejected("BadPayload")
    return device_token, payload


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted answer for a device token: a reason instead of delivery, a delay
    before answering, no answer until `until` is set, or dropping the connection without an
    answer."""

    reason: str | None = None
    delay: float = 0.0
    drop: bool = False
    until: asyncio.Event | None = None  # held open until the test sets it


UNREGISTERED = Step(reason="Unregistered")
SERVICE_UNAVAILABLE = Step(reason="ServiceUnavailable")
TOO_MANY_REQUESTS = Step(reason="TooManyRequests")
DROP = Step(drop=True)


@dataclass(frozen=True, slots=True)
class ApnsRequest:
    """One request as the simulator received it, and how it answered."""

    path: str
    device_token: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any] | None  # decoded JSON, when it was valid
    status: int
    reason: str | None
    apns_id: str
    connection_id: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """A push the device would show."""

    device_token: str
    topic: str
    push_type: str
    payload: dict[str, Any]
    apns_id: str


class ApnsSimulator:
    """APNs on 127.0.0.1 over HTTP/2 with TLS (plaintext h2c when `ca` is None); `start()`
    returns its URL. `answer_delay` holds every answer back that many seconds."""

    def __init__(
        self,
        ca: TestCA | None,
        key: ApnsKey,
        *,
        clock: Callable[[], float] = time.time,
        max_concurrent_streams: int = 1000,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.tokens = ProviderTokens(key, clock)
        self.clock = clock
        self.script: Script[Step] = Script()
        self.requests: list[ApnsRequest] = []
        self.deliveries: list[Delivery] = []
        self.on_delivery = on_delivery
        self.answer_delay = 0.0
        self.server = H2SimServer(self._handle, ca, max_concurrent_streams=max_concurrent_streams)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def connections_accepted(self) -> int:
        return self.server.connections_accepted

    async def start(self) -> str:
        await self.server.start()
        return self.url

    async def stop(self) -> None:
        await self.server.stop()

    def add_key(self, key: ApnsKey) -> None:
        """Accept provider tokens signed with `key` too (a key rotation in progress)."""
        self.tokens.add_key(key)

    def goaway_after(self, streams: int) -> None:
        """Send GOAWAY on each connection after it has carried `streams` requests."""
        self.server.goaway_after(streams)

    def drop_connections(self) -> None:
        """Abort every open connection now, as a network failure would."""
        self.server.drop_connections()

    async def _handle(self, request: H2Request) -> H2Reply | H2Drop:
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4())
        try:
            if request.method != "POST":
                raise Rejected("MethodNotAllowed")
            if not _PATH.fullmatch(request.path):
                raise Rejected("BadPath")
            self.tokens.check(request.headers.get("authorization"))
            device_token, payload = check_notification(request)
        except Rejected as rejected:
            return self._answer(request, apns_id, "", None, rejected.reason)
        step = self.script.next(device_token) or Step()
        if step.until is not None:
            await step.until.wait()
        if step.delay or self.answer_delay:
            await asyncio.sleep(step.delay or self.answer_delay)
        if step.drop:
            self._record(request, apns_id, device_token, payload, 0, "dropped")
            return H2Drop()
        return self._answer(request, apns_id, device_token, payload, step.reason)

    def _answer(
        self,
        request: H2Request,
        apns_id: str,
        device_token: str,
        payload: dict[str, Any] | None,
        reason: str | None,
    ) -> H2Reply:
        if reason is None and payload is not None:
            self._record(request, apns_id, device_token, payload, 200, None)
            self._deliver(request, device_token, payload, apns_id)
            return H2Reply(200, [("apns-id", apns_id)])
        reason = reason or "InternalServerError"
        status = REASON_STATUS.get(reason, 400)
        self._record(request, apns_id, device_token, payload, status, reason)
        body: dict[str, Any] = {"reason": reason}
        if status == 410:  # when APNs learned the token was no longer valid, in ms
            body["timestamp"] = int(self.clock() * 1000)
        compact = json.dumps(body, separators=(",", ":")).encode()
        return H2Reply(status, [("apns-id", apns_id)], compact)

    def _record(
        self,
        request: H2Request,
        apns_id: str,
        device_token: str,
        payload: dict[str, Any] | None,
        status: int,
        reason: str | None,
    ) -> None:
        recorded = ApnsRequest(
            request.path,
            device_token,
            request.headers,
            request.body,
            payload,
            status,
            reason,
            apns_id,
            request.connection_id,
        )
        self.requests.append(recorded)

    def _deliver(
        self, request: H2Request, device_token: str, payload: dict[str, Any], apns_id: str
    ) -> None:
        delivery = Delivery(
            device_token,
            request.headers.get("apns-topic", ""),
            request.headers.get("apns-push-type", "alert"),
            payload,
            apns_id,
        )
        self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)


SANDBOX_DEVICE = "0123456789abcdef" * 4
SANDBOX_RATE_LIMITED_DEVICE = "fedcba9876543210" * 4


def describe_delivery(delivery: Delivery) -> str:
    """One line saying what the device would show or do."""
    aps = delivery.payload.get("aps")
    alert = aps.get("alert") if isinstance(aps, dict) else None
    if isinstance(alert, dict):
        shown = f"shows {json.dumps(alert.get('body'))}"
    else:
        shown = "wakes up silently"
    data = json.dumps(delivery.payload.get("3mw"), separators=(",", ":"))
    return (
        f"APNs device {delivery.device_token[:8]}… ({delivery.topic}, {delivery.push_type}) "
        f"{shown}; 3mw={data}"
    )


async def sandbox_part(ca: TestCA, workdir: Path) -> SandboxPart:
    """The sandbox's APNs: one simulator serving both endpoints, with a generated key."""
    from push_relay.sandbox import Example, SandboxPart, log

    key = generate_key(workdir)
    sim = ApnsSimulator(ca, key, on_delivery=lambda d: log.info("%s", describe_delivery(d)))
    url = await sim.start()
    form = "type=apns&token={}&session=123deadbeef&version=3&bundleid=com.example.app&endpoint=s"
    return SandboxPart(
        "APNs",
        key.config_toml(url, url),
        [Example(form.format(SANDBOX_DEVICE))],
        sim.stop,
        rate_limit_body=form.format(SANDBOX_RATE_LIMITED_DEVICE),
    )

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
import secrets
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from push_relay.testing.ca import TestCA
from push_relay.testing.h2server import H2Drop, H2Reply, H2Request, H2SimServer
from push_relay.testing.script import Script

if TYPE_CHECKING:
    from push_relay.sandbox import SandboxPart

# APNs' documented reasons and the status each one comes with.
REASON_STATUS: dict[str, int] = {
    "BadCollapseId": 400,
    "BadDeviceToken": 400,
    "BadExpirationDate": 400,
    "BadMessageId": 400,
    "BadPriority": 400,
    "BadTopic": 400,
    "DeviceTokenNotForTopic": 400,
    "DuplicateHeaders": 400,
    "IdleTimeout": 400,
    "InvalidPushType": 400,
    "MissingDeviceToken": 400,
    "MissingTopic": 400,
    "PayloadEmpty": 400,
    "TopicDisallowed": 400,
    "BadCertificate": 403,
    "BadCertificateEnvironment": 403,
    "ExpiredProviderToken": 403,
    "Forbidden": 403,
    "InvalidProviderToken": 403,
    "MissingProviderToken": 403,
    "UnrelatedKeyIdInToken": 403,
    "BadEnvironmentKeyIdInToken": 403,
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "complication",
        "controls",
        "fileprovider",
        "liveactivity",
        "location",
        "mdm",
        "pushtotalk",
        "voip",
        "widgets",
    }
)
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
TOKEN_MAX_AGE = 3600.0
TOKEN_UPDATE_INTERVAL = 20 * 60.0
_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_PATH = re.compile(r"/3/device/([^/?]*)")


class Rejected(Exception):
    """The request breaks an APNs rule; `reason` is APNs' word for it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ApnsKey:
    """A generated `.p8` signing key with its key id and team id."""

    path: Path
    key_id: str
    team_id: str
    pem: bytes = field(repr=False)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_private_key(self.pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.public_key()

    def config_toml(self, production: str, sandbox: str) -> str:
        """An `[apns]` section for this key and the given endpoints."""
        return (
            f"[apns]\nkeyfile = {json.dumps(str(self.path))}\n"
            f'key_id = "{self.key_id}"\nteam_id = "{self.team_id}"\n'
            f'production_endpoint = "{production}"\nsandbox_endpoint = "{sandbox}"\n'
        )


def generate_key(directory: Path, key_id: str | None = None, team_id: str | None = None) -> ApnsKey:
    """Write a new P-256 PKCS#8 key as `AuthKey_<key id>.p8` (Apple's naming) in `directory`."""
    alphabet = string.ascii_uppercase + string.digits
    key_id = key_id or "".join(secrets.choice(alphabet) for _ in range(10))
    team_id = team_id or "".join(secrets.choice(alphabet) for _ in range(10))
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / f"AuthKey_{key_id}.p8"
    path.write_bytes(pem)
    path.chmod(0o600)
    return ApnsKey(path, key_id, team_id, pem)


class ProviderTokens:
    """APNs' view of provider tokens: signature, key id, team, age and update rate."""

    def __init__(self, key: ApnsKey, clock: Callable[[], float]) -> None:
        self.key = key
        self.clock = clock
        self._public_key = key.public_key()
        self._current: str | None = None
        self._current_since = 0.0
        self.updates = 0  # how often the key changed tokens

    def check(self, authorization: str | None) -> None:
        """Raise `Rejected` unless `authorization` carries an acceptable provider token."""
        if not authorization:
            raise Rejected("MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Rejected("InvalidProviderToken")
        claims = self._verified_claims(token)
        now = self.clock()
        iat = claims["iat"]
        if iat > now + 60:  # from the future: not a token APNs would have accepted either
            raise Rejected("InvalidProviderToken")
        if now - iat > TOKEN_MAX_AGE:
            raise Rejected("ExpiredProviderToken")
        self._note_use(token, now)

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self.key.key_id:
                raise Rejected("InvalidProviderToken")
            claims: dict[str, Any] = jwt.decode(
                token,
                self._public_key,
                algorithms=["ES256"],
                # APNs judges the age by its own clock (`self.clock`), not PyJWT's
                options={"verify_iat": False, "require": ["iss", "iat"]},
            )
        except jwt.PyJWTError:
            raise Rejected("InvalidProviderToken") from None
        if claims["iss"] != self.key.team_id or not isinstance(claims["iat"], int):
            raise Rejected("InvalidProviderToken")
        return claims

    def _note_use(self, token: str, now: float) -> None:
        if token == self._current:
            return
        if self._current is not None and now - self._current_since < TOKEN_UPDATE_INTERVAL:
            raise Rejected("TooManyProviderTokenUpdates")
        if self._current is not None:
            self.updates += 1
        self._current, self._current_since = token, now


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
    before answering, or dropping the connection without an answer."""

    reason: str | None = None
    delay: float = 0.0
    drop: bool = False


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
    """APNs on 127.0.0.1 over HTTP/2 with TLS; `start()` returns its URL."""

    def __init__(
        self,
        ca: TestCA,
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

    def goaway_after(self, streams: int) -> None:
        """Send GOAWAY on each connection after it has carried `streams` requests."""
        self.server.goaway_after(streams)

    def drop_connections(self) -> None:
        """Abort every open connection now, as a network failure would."""
        self.server.drop_connections()

    async def _handle(self, request: H2Request) -> H2Reply | H2Drop:
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4())
        device_token, payload, reason = "", None, None
        try:
            if request.method != "POST":
                raise Rejected("MethodNotAllowed")
            if not _PATH.fullmatch(request.path):
                raise Rejected("BadPath")
            self.tokens.check(request.headers.get("authorization"))
            device_token, payload = check_notification(request)
        except Rejected as rejected:
            reason = rejected.reason
        step = self.script.next(device_token) if reason is None else None
        if step is not None and step.delay:
            await asyncio.sleep(step.delay)
        if step is not None and step.drop:
            self._record(request, device_token, payload, 0, "dropped", apns_id)
            return H2Drop()
        if step is not None and step.reason:
            reason = step.reason
        if reason is not None:
            status = REASON_STATUS.get(reason, 400)
            self._record(request, device_token, payload, status, reason, apns_id)
            return self._error(status, reason, apns_id)
        assert payload is not None
        self._record(request, device_token, payload, 200, None, apns_id)
        self._deliver(request, device_token, payload, apns_id)
        return H2Reply(200, [("apns-id", apns_id)])

    def _error(self, status: int, reason: str, apns_id: str) -> H2Reply:
        body: dict[str, Any] = {"reason": reason}
        if status == 410:  # when APNs learned the token was no longer valid, in ms
            body["timestamp"] = int(self.clock() * 1000)
        return H2Reply(status, [("apns-id", apns_id)], json.dumps(body).encode())

    def _record(
        self,
        request: H2Request,
        device_token: str,
        payload: dict[str, Any] | None,
        status: int,
        reason: str | None,
        apns_id: str,
    ) -> None:
        self.requests.append(
            ApnsRequest(
                request.path,
                device_token,
                dict(request.headers),
                request.body,
                payload,
                status,
                reason,
                apns_id,
                request.connection_id,
            )
        )

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
    from push_relay.sandbox import SandboxPart, log

    key = generate_key(workdir)
    sim = ApnsSimulator(ca, key, on_delivery=lambda d: log.info("%s", describe_delivery(d)))
    url = await sim.start()
    example = urlencode(
        {
            "type": "apns",
            "token": SANDBOX_DEVICE,
            "session": "123deadbeef",
            "version": "3",
            "bundleid": "com.example.app",
            "endpoint": "s",
        }
    )
    return SandboxPart("APNs", key.config_toml(url, url), [example], sim.stop)

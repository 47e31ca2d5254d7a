"""A simulated Firebase Cloud Messaging (HTTP v1) with its Google OAuth token endpoint.

`messages:send` runs over TLS + HTTP/2 (`H2SimServer`) and behaves like FCM: an unknown or
expired bearer token is 401 UNAUTHENTICATED, a message FCM would refuse is 400
INVALID_ARGUMENT (token present and well-formed, data values strings, ttl `\\d+s`, priority
NORMAL/HIGH, no unknown fields), another project is 403 PERMISSION_DENIED, and a delivery is
200 `{"name": "projects/<id>/messages/<n>"}`. Error bodies are Google's
`{"error": {"code", "message", "status", "details"}}`. Per device token, `script.set(token,
UNAVAILABLE, UNAVAILABLE, Step())` scripts answers (the last one sticks); `requests` records
every message received.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from push_relay.testing.ca import TestCA
from push_relay.testing.google_oauth import GoogleOAuth, ServiceAccount, generate_service_account
from push_relay.testing.h2server import H2Drop, H2Reply, H2Request, H2SimServer
from push_relay.testing.script import Script

if TYPE_CHECKING:
    from push_relay.sandbox import SandboxPart

_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_DEVICE_TOKEN = re.compile(r"[A-Za-z0-9_-]{11,}:APA91b[A-Za-z0-9_-]{20,}", re.ASCII)
_TTL = re.compile(r"[0-9]{1,11}(\.[0-9]{1,9})?s", re.ASCII)
_MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options"}
_TARGETS = {"token", "topic", "condition"}
_ANDROID_FIELDS = {"collapse_key", "priority", "ttl", "restricted_package_name", "data"}
_ANDROID_FIELDS |= {"notification", "fcm_options", "direct_boot_ok"}
_RESERVED_KEYS = {"from", "notification", "message_type"}
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def device_token(name: str) -> str:
    """A well-formed FCM registration token (152 characters), stable for `name`."""
    digest = hashlib.sha512(name.encode()).digest()
    text = base64.urlsafe_b64encode(digest * 2).decode().rstrip("=")
    return f"{text[:22]}:APA91b{text[22:145]}"


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted answer: an error (`status`, FCM `error_status`, optional FcmError code),
    an invalid success body (`raw`), a delay before answering, no answer until `until` is
    set, or a dropped connection."""

    status: int = 200
    error_status: str = ""
    message: str = ""
    error_code: str | None = None
    retry_after: str | None = None
    raw: bytes | None = None
    delay: float = 0.0
    drop: bool = False
    until: asyncio.Event | None = None  # held open until the test sets it


DELIVER = Step()
UNREGISTERED = Step(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
UNAVAILABLE = Step(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")
INTERNAL = Step(500, "INTERNAL", "Internal error encountered.", "INTERNAL")
SENDER_ID_MISMATCH = Step(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
BAD_SUCCESS_BODY = Step(raw=b'{"message_id": 1}')
DROP = Step(drop=True)


def quota_exceeded(retry_after: str | None = None) -> Step:
    """429 as FCM answers when a device or project is over its message rate."""
    message = "Quota exceeded for quota metric 'Send requests'."
    return Step(429, "RESOURCE_EXHAUSTED", message, "QUOTA_EXCEEDED", retry_after)


@dataclass(frozen=True, slots=True)
class FcmRequest:
    """One `messages:send` request as received, with the answer's status."""

    path: str
    headers: dict[str, str]
    body: bytes
    message: dict[str, Any] | None  # the decoded `message`, when the JSON was an object
    status: int
    connection_id: int


@dataclass(frozen=True, slots=True)
class FcmDelivery:
    """A message FCM accepted, as the app on the device gets it."""

    token: str
    data: dict[str, str]
    android: dict[str, Any]
    name: str


class FcmSimulator:
    """FCM v1 on an HTTP/2 port and Google OAuth on an HTTP/1.1 port, both TLS on 127.0.0.1."""

    def __init__(
        self,
        ca: TestCA,
        account: ServiceAccount | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_concurrent_streams: int = 1000,
        on_delivery: Callable[[FcmDelivery], None] | None = None,
    ) -> None:
        self.account = account or generate_service_account()
        self.project_id = self.account.project_id
        self.projects = {self.project_id}  # the account may send to each of these
        self.oauth = GoogleOAuth(ca, clock=clock)
        self.oauth.add_account(self.account)
        self.server = H2SimServer(self._handle, ca, max_concurrent_streams=max_concurrent_streams)
        self.script: Script[Step] = Script()
        self.requests: list[FcmRequest] = []
        self.deliveries: list[FcmDelivery] = []
        self.on_delivery = on_delivery
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> str:
        await self.oauth.start()
        await self.server.start()
        return self.url

    async def stop(self) -> None:
        await self.server.stop()
        await self.oauth.stop()

    def config_toml(self, *, max_retries: int = 3, endpoint: str | None = None) -> str:
        """An `[fcm]` section for this simulator and account."""
        return (
            "[fcm]\n"
            f'service_account_key_base64 = "{self.account.key_base64(self.oauth.token_uri)}"\n'
            f'project_id = "{self.project_id}"\n'
            f"max_retries = {max_retries}\n"
            f'endpoint = "{endpoint or self.url}"\n'
        )

    def allow_project(self, project_id: str) -> None:
        """Let the account send to another project too (it was granted access there)."""
        self.projects.add(project_id)

    @property
    def token_requests(self) -> int:
        return len(self.oauth.grants)

    def requests_for(self, token: str) -> list[FcmRequest]:
        return [r for r in self.requests if r.message and r.message.get("token") == token]

    async def _handle(self, request: H2Request) -> H2Reply | H2Drop:
        body: Any = None
        try:
            project_id = self._check_request(request)
            body = json.loads(request.body) if request.body else None
        except _Error as error:
            return self._answer(request, None, error.reply())
        except (UnicodeDecodeError, json.JSONDecodeError):
            reply = _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
            return self._answer(request, None, reply)
        message = body.get("message") if isinstance(body, dict) else None
        message = message if isinstance(message, dict) else None
        problem = _message_problem(body)
        if problem:
            return self._answer(request, message, _error(400, "INVALID_ARGUMENT", problem))
        assert message is not None
        step = self.script.next(message["token"]) or DELIVER
        if step.until is not None:
            await step.until.wait()
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.drop:
            self._record(request, message, 0)
            return H2Drop()
        if step.raw is not None:
            return self._answer(request, message, H2Reply(step.status, [], step.raw))
        if step.status != 200:
            reply = _error(step.status, step.error_status, step.message, step.error_code)
            if step.retry_after is not None:
                reply = H2Reply(reply.status, [("retry-after", step.retry_after)], reply.body)
            return self._answer(request, message, reply)
        name = f"projects/{project_id}/messages/{next(self._ids)}"
        self._deliver(message, name)
        return self._answer(request, message, _json(200, {"name": name}))

    def _check_request(self, request: H2Request) -> str:
        match = _PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            raise _Error(404, "NOT_FOUND", "The requested URL was not found on this server.")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not self.oauth.token_valid(auth[7:]):
            raise _Error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        if match.group(1) not in self.projects:
            raise _Error(403, "PERMISSION_DENIED", "Permission denied on resource project.")
        return match.group(1)

    def _answer(
        self, request: H2Request, message: dict[str, Any] | None, reply: H2Reply
    ) -> H2Reply:
        self._record(request, message, reply.status)
        return reply

    def _record(self, request: H2Request, message: dict[str, Any] | None, status: int) -> None:
        self.requests.append(
            FcmRequest(
                request.path, request.headers, request.body, message, status, request.connection_id
            )
        )

    def _deliver(self, message: dict[str, Any], name: str) -> None:
        delivery = FcmDelivery(
            message["token"], message.get("data", {}), message.get("android", {}), name
        )
        self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)


def _message_problem(body: Any) -> str | None:
    """What FCM would refuse in this request body (its INVALID_ARGUMENT message), or None."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        return 'Invalid JSON payload received. Unknown name or missing "message".'
    unknown = set(body) - {"message", "validate_only"}
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}".'
    message: dict[str, Any] = body["message"]
    unknown = set(message) - _MESSAGE_FIELDS - _TARGETS
    if unknown:
        return f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'message'."
    if len(_TARGETS & set(message)) != 1 or "token" not in message:
        return "Exactly one of token, topic or condition must be set (this simulator: token)."
    token = message["token"]
    if not isinstance(token, str) or not _DEVICE_TOKEN.fullmatch(token):
        return "The registration token is not a valid FCM registration token"
    data = message.get("data", {})
    if not isinstance(data, dict):
        return "Invalid value at 'message.data' (type.googleapis.com/google.protobuf.Struct)"
    for key, value in data.items():
        if not isinstance(value, str):
            return f"Invalid value at 'message.data[{key}].value' (TYPE_STRING), {value}"
        if key in _RESERVED_KEYS or key.startswith(("google.", "gcm.")):
            return f"Invalid data payload key: {key}"
    return _android_problem(message.get("android", {}))


def _android_problem(android: Any) -> str | None:
    if not isinstance(android, dict):
        return "Invalid value at 'message.android' (type.googleapis.com/AndroidConfig)"
    unknown = set(android) - _ANDROID_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        return f"Invalid JSON payload received. Unknown name \"{name}\" at 'message.android'."
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        priority = android.get("priority")
        return f"Invalid value at 'message.android.priority' (AndroidMessagePriority), {priority}"
    ttl = android.get("ttl", "0s")
    if not isinstance(ttl, str) or not _TTL.fullmatch(ttl):
        return f"Invalid value at 'message.android.ttl' (type.googleapis.com/Duration), {ttl}"
    if not isinstance(android.get("collapse_key", ""), str):
        return "Invalid value at 'message.android.collapse_key' (TYPE_STRING)"
    return None


class _Error(Exception):
    def __init__(self, status: int, error_status: str, message: str) -> None:
        self.status, self.error_status, self.message = status, error_status, message

    def reply(self) -> H2Reply:
        return _error(self.status, self.error_status, self.message)


def _error(status: int, error_status: str, message: str, error_code: str | None = None) -> H2Reply:
    error: dict[str, Any] = {"code": status, "message": message, "status": error_status}
    code = error_code or (error_status if status == 400 else None)
    if code:
        error["details"] = [{"@type": _FCM_ERROR, "errorCode": code}]
    return _json(status, {"error": error})


def _json(status: int, body: dict[str, Any]) -> H2Reply:
    headers = [("content-type", "application/json; charset=UTF-8")]
    return H2Reply(status, headers, json.dumps(body, indent=2).encode())


SANDBOX_DEVICE = device_token("push-relay sandbox phone")
SANDBOX_UNREGISTERED = device_token("push-relay sandbox phone, app uninstalled")


async def sandbox_part(ca: TestCA, workdir: Path) -> SandboxPart:
    """The sandbox's FCM, with a freshly generated service account."""
    from push_relay.sandbox import Example, SandboxPart, log

    def show(delivery: FcmDelivery) -> None:
        data = json.dumps(delivery.data, separators=(",", ":"))
        log.info("FCM device %s… receives data message %s", delivery.token[:8], data)

    sim = FcmSimulator(ca, generate_service_account("push-relay-sandbox"), on_delivery=show)
    sim.script.set(SANDBOX_UNREGISTERED, UNREGISTERED)
    await sim.start()
    examples = [
        Example(f"type=fcm&token={SANDBOX_DEVICE}&session=123deadbeef&version=3"),
        Example(
            f"type=fcm&token={SANDBOX_UNREGISTERED}&session=123deadbeef&version=3",
            400,
            "an unregistered token (the app is gone; FCM answers 404 UNREGISTERED)",
        ),
    ]
    return SandboxPart("FCM", sim.config_toml(), examples, sim.stop)

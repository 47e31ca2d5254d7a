"""A simulated Huawei Push Kit: OAuth2 token endpoint and `messages:send`, over TLS on loopback.

Like the real service it checks client credentials, issues expiring access tokens, refuses
unknown or expired bearer tokens (HTTP 401, code 80200003), validates the message (HTTP 400,
code 80100003) and answers `{"code": "80000000", "msg": "Success", "requestId": ...}`.
Behaviour per device token is scriptable with `script.set(token, HmsReply...)`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from push_relay.testing.ca import TestCA
from push_relay.testing.http1 import HttpSimulator
from push_relay.testing.script import Script

if TYPE_CHECKING:
    from push_relay.sandbox import SandboxPart

MESSAGE_FIELDS = {"data", "notification", "android", "apns", "webpush", "token", "topic"}
MESSAGE_FIELDS |= {"condition"}
ANDROID_FIELDS = {"collapse_key", "urgency", "category", "ttl", "bi_tag", "fast_app_target"}
ANDROID_FIELDS |= {"data", "notification", "receipt_id"}
URGENCIES = {"HIGH", "NORMAL"}
CATEGORIES = {"PLAY_VOICE", "VOIP", "IM", "FINANCE", "WORK", "USER_ACCOUNT", "SUBSCRIPTION"}
CATEGORIES |= {"DEVICE_REMINDER", "MAIL", "EXPRESS", "TRAVEL", "HEALTH", "MARKETING"}
_TTL = re.compile(r"[0-9]+(\.[0-9]{1,9})?s", re.ASCII)
MAX_TOKENS = 1000


@dataclass(frozen=True, slots=True)
class HmsReply:
    """One scripted answer of `messages:send`. `raw` replaces the JSON body when given;
    `msg=None` lets the simulator write Huawei's message (listing illegal tokens)."""

    status: int = 200
    code: str = "80000000"
    msg: str | None = "Success"
    raw: bytes | None = None


SUCCESS = HmsReply()
PARTIAL_SUCCESS = HmsReply(code="80100000", msg=None)
ALL_TOKENS_INVALID = HmsReply(code="80300007", msg=None)
INTERNAL_ERROR = HmsReply(code="81000001", msg="Internal error")
AUTH_ERROR = HmsReply(code="80200001", msg="Oauth authentication error")
TOKEN_EXPIRED = HmsReply(code="80200003", msg="Oauth Token expired")
GARBAGE = HmsReply(raw=b"<html>not json</html>")


def http_error(status: int) -> HmsReply:
    """An answer with a non-200 status (e.g. 500, 502, 503 flow control)."""
    return HmsReply(status=status, code="81000001", msg="Internal error")


@dataclass(frozen=True, slots=True)
class TokenReply:
    """A scripted answer of the token endpoint, for one client id."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class HmsDelivery:
    """A message Push Kit accepted, as the app on the device gets it."""

    client_id: str
    token: str
    data: str  # the data message exactly as the app receives it
    android: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Issued:
    client_id: str
    expires_at: float


class HmsSimulator(HttpSimulator):
    """Push Kit for the apps registered with `add_app(client_id, secret)`."""

    def __init__(
        self,
        ca: TestCA | None = None,
        *,
        clock: Callable[[], float] = time.time,
        expires_in: int = 3600,
        token_delay: float = 0.0,
    ) -> None:
        super().__init__(ca)
        self.clock = clock
        self.expires_in = expires_in
        self.token_delay = token_delay  # simulated latency of the token endpoint
        self.apps: dict[str, str] = {}
        self.script: Script[HmsReply] = Script()
        self.token_script: Script[TokenReply] = Script()
        self.deliveries: list[HmsDelivery] = []
        self.on_delivery: Callable[[HmsDelivery], None] | None = None
        self._issued: dict[str, _Issued] = {}
        self._ids = itertools.count(1)

    def add_app(self, client_id: str, client_secret: str) -> None:
        self.apps[client_id] = client_secret

    def config_toml(self, app_id: str, *, secret: str | None = None) -> str:
        """An `[hms.<app_id>]` section for the app added as `app_id` (its client id too),
        with the secret it was added with unless `secret` is given."""
        return (
            f"[hms.{app_id}]\n"
            f'client_id = "{app_id}"\n'
            f'client_secret = "{self.apps[app_id] if secret is None else secret}"\n'
            f'login_endpoint = "{self.url}"\n'
            f'push_endpoint = "{self.url}"\n'
        )

    def revoke_tokens(self) -> None:
        """Forget every issued access token: the next push with one gets 401/80200003."""
        self._issued.clear()

    @property
    def token_requests(self) -> int:
        return len(self.requests_to("/oauth2/v3/token"))

    def push_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests_to("/messages:send")]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/oauth2/v3/token", self._token),
            web.post("/v1/{client_id}/messages:send", self._send),
        ]

    # -- OAuth2 ---------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        await self.record(request)
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        scripted = self.token_script.next(client_id)
        if scripted is not None:
            return web.Response(
                status=scripted.status, body=scripted.body, content_type="application/json"
            )
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(1102, 20001, "unsupported grant_type")
        if client_id not in self.apps:
            return _oauth_error(1101, 20006, "invalid client_id")
        if form.get("client_secret") != self.apps[client_id]:
            return _oauth_error(1101, 12304, "invalid client_secret")
        access_token = "CgB6e3x9" + secrets.token_urlsafe(48)
        self._issued[access_token] = _Issued(client_id, self.clock() + self.expires_in)
        body = {"access_token": access_token, "expires_in": self.expires_in, "token_type": "Bearer"}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    # -- messages:send --------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        recorded = await self.record(request)
        client_id = request.match_info["client_id"]
        auth = recorded.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:]:
            return self._result("80200001", "Oauth authentication error", 401)
        issued = self._issued.get(auth[7:])
        if issued is None or self.clock() >= issued.expires_at:
            return self._result("80200003", "Oauth Token expired", 401)
        if issued.client_id != client_id:
            return self._result("80200001", "Oauth authentication error", 401)
        if not recorded.headers.get("content-type", "").startswith("application/json"):
            return self._result("80100003", "Illegal payload, content type must be JSON", 400)
        try:
            body = json.loads(recorded.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self._result("80100003", "Illegal payload, body is not JSON", 400)
        problem = _message_problem(body)
        if problem:
            return self._result("80100003", f"Illegal payload, {problem}", 400)
        message = body["message"]
        token: str = message["token"][0]
        reply = self.script.next(token) or (ALL_TOKENS_INVALID if not token else SUCCESS)
        if reply.code == SUCCESS.code and reply.status == 200 and reply.raw is None:
            self._deliver(client_id, token, message)
        return self._reply(reply, message["token"])

    def _deliver(self, client_id: str, token: str, message: dict[str, Any]) -> None:
        delivery = HmsDelivery(client_id, token, message.get("data", ""), message["android"])
        self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)

    def _reply(self, reply: HmsReply, tokens: list[str]) -> web.Response:
        if reply.raw is not None:
            return web.Response(status=reply.status, body=reply.raw)
        msg = reply.msg
        if msg is None:  # Huawei lists the refused tokens in `msg`
            failed = {"success": 0, "failure": len(tokens), "illegal_tokens": tokens}
            msg = json.dumps(failed)
        return self._result(reply.code, msg, reply.status)

    def _result(self, code: str, msg: str, status: int = 200) -> web.Response:
        request_id = f"{int(self.clock() * 1000)}{next(self._ids):08d}"
        return web.json_response({"code": code, "msg": msg, "requestId": request_id}, status=status)


def _oauth_error(error: int, sub_error: int, description: str) -> web.Response:
    body = {"error": error, "sub_error": sub_error, "error_description": description}
    return web.json_response(body, status=400)


def _message_problem(body: Any) -> str | None:
    """What Push Kit would refuse about this request body, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        return "message must be an object"
    extra = set(body) - {"message", "validate_only"}
    if extra:
        return f"unknown field {sorted(extra)[0]}"
    message: dict[str, Any] = body["message"]
    unknown = set(message) - MESSAGE_FIELDS
    if unknown:
        return f"unknown field message.{sorted(unknown)[0]}"
    if "data" in message and not isinstance(message["data"], str):
        return "message.data must be a string"
    tokens = message.get("token")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return "message.token must be a list of strings"
    if not 1 <= len(tokens) <= MAX_TOKENS:
        return f"token count should be within 1 and {MAX_TOKENS}"
    android = message.get("android", {})
    if not isinstance(android, dict):
        return "message.android must be an object"
    return _android_problem(android)


def _android_problem(android: dict[str, Any]) -> str | None:
    unknown = set(android) - ANDROID_FIELDS
    if unknown:
        return f"unknown field android.{sorted(unknown)[0]}"
    if "urgency" in android and android["urgency"] not in URGENCIES:
        return "android.urgency must be HIGH or NORMAL"
    if "category" in android and android["category"] not in CATEGORIES:
        return "android.category is invalid"
    if android.get("category") == "VOIP" and android.get("urgency") != "HIGH":
        return "android.category VOIP needs urgency HIGH"
    ttl = android.get("ttl")
    if ttl is not None and not (isinstance(ttl, str) and _TTL.fullmatch(ttl)):
        return "android.ttl must look like '86400s'"
    return None


SANDBOX_APP_ID = "123456"  # the seed README's example app id


async def sandbox_part(ca: TestCA, workdir: Path) -> SandboxPart:
    """`push-relay sandbox`: one `[hms.<app-id>]` app with generated credentials."""
    from push_relay.sandbox import Example, SandboxPart, log

    app_id = SANDBOX_APP_ID
    secret = secrets.token_hex(32)
    simulator = HmsSimulator(ca)
    simulator.add_app(app_id, secret)

    def show(delivery: HmsDelivery) -> None:
        log.info(
            "HMS app %s received (urgency %s, ttl %s) data message: %s",
            delivery.client_id,
            delivery.android.get("urgency"),
            delivery.android.get("ttl"),
            delivery.data,
        )

    simulator.on_delivery = show
    await simulator.start()
    config = simulator.config_toml(app_id)
    token = "sandbox" + secrets.token_hex(16)
    example = f"type=hms&appid={app_id}&token={token}&session=123deadbeef&version=3"
    return SandboxPart("HMS Push Kit", config, [Example(example)], simulator.stop)

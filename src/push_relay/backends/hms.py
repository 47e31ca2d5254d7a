"""Huawei Push Kit (HMS): one OAuth2 client-credentials context per configured app.

The request's `appid` picks the `[hms.<app-id>]` section. Access tokens come from the shared
`TokenCache` (one fetch for any number of concurrent pushes) and are renewed 180 s before they
expire. Messages go to `POST {push}/v1/<client_id>/messages:send`; `classify` maps Huawei's
answer (HTTP status, then the result `code` of a 200 body) to whose fault a failure is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from push_relay import metrics
from push_relay.auth import Token, credential_key
from push_relay.backends import DELIVERED, Clients, Readiness, Verdict
from push_relay.backends._body import read_body
from push_relay.backends._json import json_object, to_json
from push_relay.config import HmsConfig
from push_relay.errors import FailureKind, PushFailed
from push_relay.payload import ThreemaPayload
from push_relay.request import HmsTarget, PushRequest

log = logging.getLogger("push_relay.backends.hms")

REQUEST_TIMEOUT = 10.0  # seconds, for the token request and for each push
RENEW_BEFORE_EXPIRY = 180  # seconds, as the original

SUCCESS = "80000000"
INVALID_TOKEN_CODES = frozenset({"80100000", "80300007"})  # some / all tokens invalid
INTERNAL_ERROR_CODE = "81000001"
AUTH_ERROR_CODES = frozenset({"80200001", "80200003"})  # authentication error / token expired
# connect, TLS, reset, timeout: the original answers 400 for a send and 500 for a token fetch
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Map a `messages:send` answer to a verdict (contract §7 and §11).

    Only the result code is ever quoted: Huawei's `msg` can list the device tokens.
    """
    if status == 400:
        return Verdict(FailureKind.CLIENT, "bad_request", _code_detail(body))
    if status in (500, 502):
        return Verdict(FailureKind.UPSTREAM, "upstream_error", _code_detail(body))
    if status == 503:
        return Verdict(FailureKind.UPSTREAM, "upstream_unavailable", _code_detail(body))
    if status != 200:
        # 401 still answers 500 as the original does, but the refused token is not reused
        return Verdict(
            FailureKind.INTERNAL,
            "unexpected_status",
            _code_detail(body),
            renew_auth=status == 401,
        )
    code = _result_code(body)
    if code is None:
        return Verdict(FailureKind.INTERNAL, "bad_response", "200 body is not HMS result JSON")
    if code == SUCCESS:
        return DELIVERED
    if code in INVALID_TOKEN_CODES:
        return Verdict(FailureKind.CLIENT, "invalid_token", f"code {code}")
    if code == INTERNAL_ERROR_CODE:
        return Verdict(FailureKind.UPSTREAM, "upstream_error", f"code {code}")
    if code in AUTH_ERROR_CODES:
        return Verdict(FailureKind.UPSTREAM, "auth_rejected", f"code {code}", renew_auth=True)
    return Verdict(FailureKind.INTERNAL, "unexpected_code", f"code {code}")


def _result_code(body: bytes) -> str | None:
    """The `code` of a well-formed result (string `code`, `msg` and `requestId`), else None."""
    data = json_object(body)
    if data is None:
        return None
    if not all(isinstance(data.get(key), str) for key in ("code", "msg", "requestId")):
        return None
    code: str = data["code"]
    return code


def _code_detail(body: bytes) -> str:
    data = json_object(body)
    code = data.get("code") if data else None
    return f"code {code}" if isinstance(code, str | int) else ""


def parse_token(status: int, body: bytes, now: float) -> Token:
    """Turn the token endpoint's answer into a cached `Token`, or raise `PushFailed` (500)."""
    if status != 200:
        detail = _oauth_error(body)
        raise PushFailed(
            FailureKind.INTERNAL,
            "auth_failed",
            f"token endpoint answered {status}{detail}",
            upstream_status=status,
        )
    data = json_object(body) or {}
    access_token = data.get("access_token")
    expires_in = data.get("expires_in")
    if not isinstance(access_token, str) or type(expires_in) is not int:
        raise PushFailed(
            FailureKind.INTERNAL,
            "auth_failed",
            "token response lacks access_token or expires_in",
            upstream_status=status,
        )
    # a token living 180 s or less is used for this push only
    refresh_at = now + max(expires_in - RENEW_BEFORE_EXPIRY, 0)
    return Token(access_token, refresh_at, issued_at=now)


def _oauth_error(body: bytes) -> str:
    data = json_object(body)
    if not data:
        return ""
    parts = [f"{key} {data[key]}" for key in ("error", "sub_error") if key in data]
    description = data.get("error_description")
    if isinstance(description, str):
        parts.append(repr(description[:100]))
    return f" ({', '.join(parts)})" if parts else ""


def message_body(push: PushRequest, token: str, high_priority: bool, now: float) -> bytes:
    """The exact `messages:send` JSON of contract §7 (collapse_key is not used by HMS)."""
    android: dict[str, str] = {"urgency": "HIGH" if high_priority else "NORMAL"}
    if high_priority:
        android["category"] = "VOIP"
    android["ttl"] = f"{push.ttl}s"
    message = {
        "data": to_json(ThreemaPayload.for_push(push, now).as_numbers()),
        "android": android,
        "token": [token],
    }
    return to_json({"message": message}).encode()


class HmsBackend:
    """Sends `type=hms` pushes, one OAuth context per `[hms.<app-id>]` section."""

    name = "hms"

    def __init__(
        self,
        configs: dict[str, HmsConfig],
        clients: Clients,
        *,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.configs = dict(configs)
        self.clients = clients
        self._token_keys = {app_id: _token_key(c) for app_id, c in self.configs.items()}
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, push: PushRequest) -> None:
        target = push.target
        assert isinstance(target, HmsTarget)
        config = self.configs.get(target.app_id)
        if config is None:
            detail = f"no [hms.<app-id>] section for appid {target.app_id[:64]!r}"
            raise PushFailed(FailureKind.CLIENT, "unknown_app", detail)
        body = message_body(push, target.token, config.high_priority, self.clients.clock())
        key = self._token_keys[config.app_id]
        token = self.clients.tokens.valid(key) or await self._token(config, key)
        url = f"{config.push_endpoint}/v1/{config.client_id}/messages:send"
        headers = {
            "Authorization": f"Bearer {token.value}",
            "Content-Type": "application/json; charset=UTF-8",
        }
        try:
            status, answer_headers, answer = await self._post(url, data=body, headers=headers)
        except TRANSPORT_ERRORS as err:
            raise PushFailed(
                FailureKind.CLIENT, "send_error", f"could not send: {type(err).__name__}"
            ) from None
        verdict = classify(status, answer_headers, answer)
        if verdict.renew_auth:
            self.clients.tokens.invalidate(key, token.value)
        if not verdict.delivered:
            raise verdict.failure(status)

    async def _token(self, config: HmsConfig, key: str) -> Token:
        async def fetch() -> Token:
            try:
                token = await self._fetch_token(config)
            except PushFailed:
                metrics.auth_refreshed(self.name, False)
                raise
            metrics.auth_refreshed(self.name, True)
            log.info("hms: obtained an access token for app %s", config.app_id)
            return token

        return await self.clients.tokens.get(key, fetch)

    async def _fetch_token(self, config: HmsConfig) -> Token:
        form = {
            "grant_type": "client_credentials",
            "client_id": config.client_id,
            "client_secret": config.client_secret,
        }
        url = f"{config.login_endpoint}/oauth2/v3/token"
        try:
            status, _, answer = await self._post(url, data=form)
        except TRANSPORT_ERRORS as err:
            raise PushFailed(
                FailureKind.INTERNAL, "auth_failed", f"token request failed: {type(err).__name__}"
            ) from None
        return parse_token(status, answer, self.clients.clock())

    async def _post(self, url: str, **kwargs: Any) -> tuple[int, Mapping[str, str], bytes]:
        async with self.clients.http.post(url, timeout=self.timeout, **kwargs) as response:
            return response.status, response.headers, await read_body(response)

    async def check_ready(self) -> dict[str, Readiness]:
        """Ready when an access token can be obtained (a cached one counts)."""
        states: dict[str, Readiness] = {}
        for app_id, config in self.configs.items():
            try:
                await self._token(config, self._token_keys[config.app_id])
            except PushFailed as failure:
                states[f"hms:{app_id}"] = Readiness(False, failure.detail)
            else:
                states[f"hms:{app_id}"] = Readiness(True, "access token available")
        return states

    async def aclose(self) -> None:
        """Nothing of its own to close: the HTTP session belongs to `Clients`."""


def _token_key(config: HmsConfig) -> str:
    return credential_key(
        f"hms:{config.app_id}", config.client_id, config.client_secret, config.login_endpoint
    )

"""APNs: token-authenticated pushes over one HTTP/2 connection per endpoint.

The provider token is an ES256 JWT signed with the team's `.p8` key. Apple rejects tokens
older than an hour and answers `TooManyProviderTokenUpdates` to a key that changes tokens more
often than every 20 minutes, so a token is reused for 55 minutes and only renewed early after
an `ExpiredProviderToken` answer, and then only if it is at least 20 minutes old.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jwt

from push_relay import metrics
from push_relay.auth import Token, credential_key
from push_relay.backends import Clients, Readiness, Verdict
from push_relay.backends._json import json_object, to_json
from push_relay.config import ApnsConfig, load_signing_key
from push_relay.errors import FailureKind, PushFailed
from push_relay.http2 import H2Client, H2Error, H2InvalidHeaderError, H2TimeoutError
from push_relay.logs import escape
from push_relay.payload import ThreemaPayload
from push_relay.request import ApnsTarget, PushRequest

log = logging.getLogger("push_relay.apns")

TOKEN_LIFETIME = 55 * 60  # seconds a provider token is reused; APNs accepts up to an hour
MIN_TOKEN_INTERVAL = 20 * 60  # APNs refuses a key changing tokens more often than this
REQUEST_TIMEOUT = 20.0

ALERT_APS: dict[str, Any] = {
    "alert": {"body": "Threema Web Wakeup"},
    "sound": "default",
    "mutable-content": 1,
}
VOIP_APS: dict[str, Any] = {"content-available": 1, "mutable-content": 0}

# The reasons that are the client's fault (its token, bundle id or environment): 400.
CLIENT_REASONS: dict[str, str] = {
    "BadDeviceToken": "bad_token",
    "ExpiredToken": "bad_token",
    "Unregistered": "unregistered",
    "BadEnvironmentKeyIdInToken": "bad_environment",
    "UnrelatedKeyIdInToken": "bad_topic",
    "BadExpirationDate": "bad_expiration",
    "BadTopic": "bad_topic",
    "DeviceTokenNotForTopic": "bad_topic",
    "TopicDisallowed": "bad_topic",
}
EXPIRED_PROVIDER_TOKEN = "ExpiredProviderToken"


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Map an APNs answer to a `Verdict` (pure; no I/O)."""
    apns_id = headers.get("apns-id") or "-"
    if status == 200:
        return Verdict(None, "delivered", f"apns-id={apns_id}")
    apns_reason = _reason(body)
    detail = f"reason={apns_reason or '-'} apns-id={apns_id}"
    label = CLIENT_REASONS.get(apns_reason)
    if label is not None:
        return Verdict(FailureKind.CLIENT, label, detail)
    if status == 429:
        label = "rate_limited"
    elif status >= 500:
        label = "upstream_unavailable"
    elif status == 403:
        label = "auth_rejected"  # provider token refused: a relay/config problem
    else:
        label = "upstream_refused"
    expired = apns_reason == EXPIRED_PROVIDER_TOKEN
    return Verdict(FailureKind.UPSTREAM, label, detail, renew_auth=expired)


def _reason(body: bytes) -> str:
    reason = (json_object(body) or {}).get("reason")
    return reason if isinstance(reason, str) else ""


# The body up to the varying `3mw` object: the same bytes json.dumps gives for the whole body.
_ALERT_START = f'{{"aps":{to_json(ALERT_APS)},"3mw":'
_VOIP_START = f'{{"aps":{to_json(VOIP_APS)},"3mw":'
_ALERT_TYPE = ("apns-push-type", "alert")
_VOIP_TYPE = ("apns-push-type", "voip")
_PRIORITY = ("apns-priority", "10")


def build_request(push: PushRequest, now: float) -> tuple[str, list[tuple[str, str]], bytes]:
    """Path, headers (without authorization) and body of the APNs request for `push`."""
    target = push.target
    assert isinstance(target, ApnsTarget)
    voip = target.is_voip
    headers = [
        ("apns-topic", target.bundle_id),
        _VOIP_TYPE if voip else _ALERT_TYPE,
        _PRIORITY,
        ("apns-expiration", "0" if push.ttl == 0 else str(int(now) + push.ttl)),
    ]
    if push.collapse_key is not None:
        headers.append(("apns-collapse-id", push.collapse_key))
    payload = to_json(ThreemaPayload.for_push(push, now).as_numbers())
    body = f"{_VOIP_START if voip else _ALERT_START}{payload}}}"
    return f"/3/device/{target.token}", headers, body.encode()


class ApnsBackend:
    """Sends pushes to APNs production or sandbox, as each request's `endpoint` says."""

    name = "apns"

    def __init__(self, config: ApnsConfig, clients: Clients) -> None:
        self._config = config
        self._clients = clients
        self._key = load_signing_key(config.signing_key, config.keyfile)
        key = config.signing_key.decode("ascii", "replace")
        self._token_key = credential_key("apns", config.key_id, config.team_id, key)
        self._connections: dict[str, H2Client] = {}
        self._auth_token: str | None = None
        self._auth = ("authorization", "")  # for `_auth_token`

    @property
    def connections_opened(self) -> int:
        """TLS connections opened to APNs so far, over all endpoints."""
        return sum(c.connections_opened for c in self._connections.values())

    async def send(self, push: PushRequest) -> None:
        target = push.target
        assert isinstance(target, ApnsTarget)
        path, headers, body = build_request(push, self._clients.clock())
        token = self._clients.tokens.valid(self._token_key) or await self._provider_token()
        status, verdict = await self._post(target, path, headers, body, token)
        if verdict.renew_auth and self._may_renew(token):
            log.info("apns: provider token expired early; renewing it and retrying once")
            self._clients.tokens.invalidate(self._token_key, token.value)
            token = await self._provider_token()
            status, verdict = await self._post(target, path, headers, body, token)
        if not verdict.delivered:
            raise verdict.failure(status)
        if log.isEnabledFor(logging.DEBUG):  # no escaping per push when nobody reads it
            log.debug("apns: delivered %s", escape(verdict.detail))

    async def _post(
        self,
        target: ApnsTarget,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        token: Token,
    ) -> tuple[int, Verdict]:
        client = self._client(target.endpoint)
        if token.value != self._auth_token:  # the header is built once per provider token
            self._auth_token = token.value
            self._auth = ("authorization", f"bearer {token.value}")
        headers = [self._auth, *headers]
        try:
            response = await client.request("POST", path, headers, body, REQUEST_TIMEOUT)
        except H2TimeoutError:
            raise PushFailed(FailureKind.UPSTREAM, "timeout", "no answer within 20 s") from None
        except H2InvalidHeaderError as err:  # nothing was sent; the connection is unharmed
            raise PushFailed(FailureKind.INTERNAL, "invalid_header", str(err)) from None
        except (H2Error, OSError) as err:  # refused, reset or lost connections
            raise PushFailed(FailureKind.UPSTREAM, "connection_failed", _describe(err)) from None
        return response.status, classify(response.status, response.headers, response.body)

    def _may_renew(self, token: Token) -> bool:
        return self._clients.clock() - token.issued_at >= MIN_TOKEN_INTERVAL

    def _client(self, endpoint: str) -> H2Client:
        origin = (
            self._config.production_endpoint if endpoint == "p" else self._config.sandbox_endpoint
        )
        client = self._connections.get(origin)
        if client is None:
            client = self._clients.h2_client(origin)
            self._connections[origin] = client
        return client

    async def _provider_token(self) -> Token:
        return await self._clients.tokens.get(self._token_key, self._sign)

    async def _sign(self) -> Token:
        now = self._clients.clock()
        claims = {"iss": self._config.team_id, "iat": int(now)}
        try:
            value = jwt.encode(
                claims, self._key, algorithm="ES256", headers={"kid": self._config.key_id}
            )
        except (ValueError, TypeError, jwt.PyJWTError) as err:
            metrics.auth_refreshed(self.name, False)
            raise PushFailed(FailureKind.INTERNAL, "auth_failed", _describe(err)) from None
        metrics.auth_refreshed(self.name, True)
        return Token(value, refresh_at=now + TOKEN_LIFETIME, issued_at=now)

    async def check_ready(self) -> dict[str, Readiness]:
        try:
            await self._provider_token()
        except PushFailed as failure:
            return {self.name: Readiness(False, f"cannot sign a provider token: {failure.detail}")}
        return {self.name: Readiness(True, "provider token signed")}

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for client in connections:
            await client.aclose()


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

"""Firebase Cloud Messaging, HTTP v1 API (contract §4 and §11).

An OAuth2 access token comes from the service account with the JWT-bearer grant against the
key's own `token_uri`; it is cached in the shared `TokenCache` (one fetch for any number of
concurrent pushes) and renewed a minute before it expires. Pushes go over one multiplexed
HTTP/2 connection. `classify` maps FCM's answer to whose fault a failure is and whether it is
worth retrying; 429 and 5xx are retried after `Retry-After` or an exponential backoff, but
never past the push's own ttl.

Every wait is `clients.backoff_base` times its nominal length in seconds (1 in production),
so tests run a whole retry schedule in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization

from push_relay import metrics
from push_relay.auth import Token, credential_key
from push_relay.backends import DELIVERED, Clients, Readiness, Verdict
from push_relay.backends._body import read_body
from push_relay.backends._json import json_object, to_json
from push_relay.config import FcmConfig, ServiceAccount
from push_relay.errors import FailureKind, PushFailed
from push_relay.http2 import H2Error, H2InvalidHeaderError
from push_relay.logs import escape
from push_relay.payload import ThreemaPayload
from push_relay.request import FcmTarget, PushRequest

log = logging.getLogger("push_relay.backends.fcm")

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REQUEST_TIMEOUT = 10.0  # seconds per messages:send request
ASSERTION_LIFETIME = 3600  # seconds, the most Google accepts
REFRESH_BEFORE_EXPIRY = 60.0  # seconds
UNPARSABLE_RETRY_AFTER = 60.0  # seconds, e.g. for an HTTP-date
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_CONTENT_TYPE = ("content-type", "application/json; charset=UTF-8")


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Map a `messages:send` answer to a verdict (contract §4)."""
    if 200 <= status < 300:
        name = (json_object(body) or {}).get("name")
        if isinstance(name, str):
            return DELIVERED
        return Verdict(FailureKind.INTERNAL, "bad_response", f"{status} body has no message name")
    detail = _error_detail(status, body)
    if status in (400, 402):
        return Verdict(FailureKind.CLIENT, "bad_request", detail)
    if status == 404:
        return Verdict(FailureKind.CLIENT, "bad_token", detail)
    if status == 401:  # our access token was refused: the original answers 400
        return Verdict(FailureKind.CLIENT, "unauthorized", detail, renew_auth=True)
    if status == 429 or status >= 500:
        reason = "rate_limited" if status == 429 else "upstream_unavailable"
        return Verdict(FailureKind.UPSTREAM, reason, detail, True, retry_after(headers))
    return Verdict(FailureKind.UPSTREAM, "upstream_refused", detail)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by `Retry-After`: None when absent, 60 when not a number."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    return float(value) if _DIGITS.fullmatch(value) else UNPARSABLE_RETRY_AFTER


def backoff(attempt: int, rng: random.Random) -> float:
    """Nominal seconds before retry `attempt` (0, 1, ...): 2^n, uniform jitter in ±8 %."""
    return float(2**attempt) * rng.uniform(0.92, 1.08)


def _error_detail(status: int, body: bytes) -> str:
    """`<status> <FCM status>[/<FcmError code>]`; FCM's free-text message is never quoted."""
    error = (json_object(body) or {}).get("error")
    if not isinstance(error, dict):
        return str(status)
    parts = [str(status)]
    if isinstance(error.get("status"), str):
        parts.append(error["status"][:40])
    for item in error.get("details") or []:
        if isinstance(item, dict) and isinstance(item.get("errorCode"), str):
            parts[-1] += f"/{item['errorCode'][:40]}"
            break
    return " ".join(parts)


def message_body(push: PushRequest, now: float) -> bytes:
    """The exact request JSON of contract §4; built once, so every retry sends these bytes.

    Spliced from constant pieces and the JSON of the varying values: the same bytes as
    `json.dumps` of the whole message (compact, not ASCII-escaped), in 60 % of the time.
    """
    target = push.target
    assert isinstance(target, FcmTarget)
    data = to_json(ThreemaPayload.for_push(push, now).as_strings())
    collapse = push.collapse_key
    android = "" if collapse is None else f'"collapse_key":{to_json(collapse)},'
    return (
        f'{{"message":{{"token":{to_json(target.token)},"data":{data},'
        f'"android":{{{android}"priority":"HIGH","ttl":"{push.ttl}s"}}}}}}'
    ).encode()


class FcmBackend:
    """Sends `type=fcm` (and `gcm`) pushes."""

    name = "fcm"

    def __init__(
        self, config: FcmConfig, clients: Clients, *, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.clients = clients
        self.rng = rng or random.Random()  # backoff jitter
        endpoint = urlsplit(config.endpoint)
        origin = f"{endpoint.scheme}://{endpoint.netloc}"
        self.h2 = clients.h2_client(origin)
        self.path = f"{endpoint.path}/v1/projects/{config.project_id}/messages:send"
        self.signer = _Signer(config.service_account)
        self.token_key = token_key(config)
        self.auth_error: str | None = None  # the last token failure logged
        self._headers_token: str | None = None
        self._headers: list[tuple[str, str]] = []  # of the request, for that token

    async def send(self, push: PushRequest) -> None:
        body = message_body(push, self.clients.clock())
        started = self.clients.clock()
        waited = 0.0  # nominal seconds slept so far
        attempt = 0
        while True:
            token = self.clients.tokens.valid(self.token_key) or await self._token()
            try:  # awaited here rather than in a helper: one coroutine less to resume per answer
                response = await self.h2.request(
                    "POST", self.path, self._request_headers(token), body, REQUEST_TIMEOUT
                )
            except H2InvalidHeaderError as err:  # nothing was sent; the connection is unharmed
                raise PushFailed(FailureKind.INTERNAL, "invalid_header", str(err)) from None
            except H2Error as err:  # connect, reset, timeout: the original answers 400
                raise PushFailed(FailureKind.CLIENT, "connection_failed", str(err)) from None
            status = response.status
            verdict = classify(status, response.headers, response.body)
            if verdict.delivered:
                return
            if verdict.renew_auth:  # the next push fetches another token
                self.clients.tokens.invalidate(self.token_key, token.value)
            spent = max(waited, self.clients.clock() - started)
            wait = self._retry_wait(push, status, verdict, attempt, spent)
            await asyncio.sleep(wait * self.clients.backoff_base)
            waited += wait
            attempt += 1
            metrics.UPSTREAM_RETRIES.labels(self.name).inc()

    def _retry_wait(
        self, push: PushRequest, status: int, verdict: Verdict, attempt: int, spent: float
    ) -> float:
        """Nominal seconds before retrying a failed attempt, or the `PushFailed` to raise.

        `spent` is the clock's time since the first attempt, or the nominal waits when the
        clock says less (a test clock that stands still while sleeps are scaled down by
        backoff_base).
        """
        if not verdict.retry:
            raise verdict.failure(status)
        if attempt == self.config.max_retries:
            note = f"gave up after {self.config.max_retries + 1} requests"
            raise verdict.failure(status, note)
        wait = verdict.retry_after
        if wait is None:
            wait = backoff(attempt, self.rng)
        if spent + wait > push.ttl:  # no retry that would end after the ttl: nobody waits
            raise verdict.failure(status, f"next retry in {wait:.1f} s would pass the ttl")
        return wait

    def _request_headers(self, token: Token) -> list[tuple[str, str]]:
        if token.value != self._headers_token:  # built once per access token
            self._headers_token = token.value
            self._headers = [("authorization", f"Bearer {token.value}"), _CONTENT_TYPE]
        return self._headers

    async def _token(self) -> Token:
        return await self.clients.tokens.get(self.token_key, self._fetch_token)

    async def _fetch_token(self) -> Token:
        try:
            token = await self._request_token()
        except PushFailed as failure:
            metrics.auth_refreshed(self.name, False)
            # once per reason: a failing token endpoint would otherwise log every push
            if failure.detail != self.auth_error:
                self.auth_error = failure.detail
                log.error("fcm: cannot obtain an access token: %s", escape(failure.detail))
            raise
        metrics.auth_refreshed(self.name, True)
        self.auth_error = None
        log.info("fcm: obtained an access token for %s", self.config.service_account.client_email)
        return token

    async def _request_token(self) -> Token:
        account = self.config.service_account
        now = self.clients.clock()
        assertion = await asyncio.to_thread(self.signer.assertion, now)
        form = {"grant_type": GRANT_TYPE, "assertion": assertion}
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_secs)
        try:
            async with self.clients.http.post(account.token_uri, data=form, timeout=timeout) as r:
                status, answer = r.status, await read_body(r)
        except (aiohttp.ClientError, TimeoutError) as err:
            detail = f"token request failed: {type(err).__name__}"
            raise PushFailed(FailureKind.INTERNAL, "auth_failed", detail) from None
        return parse_token(status, answer, now)

    async def check_ready(self) -> dict[str, Readiness]:
        """Ready when an access token can be obtained (a cached one counts)."""
        try:
            await self._token()
        except PushFailed as failure:
            return {self.name: Readiness(False, failure.detail)}
        return {self.name: Readiness(True, "access token available")}

    async def aclose(self) -> None:
        await self.h2.aclose()


def parse_token(status: int, body: bytes, now: float) -> Token:
    """The token endpoint's answer as a cached `Token`, or `PushFailed` (500, `auth_failed`)."""
    data = json_object(body) or {}
    if status != 200:
        error = data.get("error")
        reason = f" ({error[:40]})" if isinstance(error, str) else ""
        detail = f"token endpoint answered {status}{reason}"
        raise PushFailed(FailureKind.INTERNAL, "auth_failed", detail, upstream_status=status)
    access_token, expires_in = data.get("access_token"), data.get("expires_in")
    if not isinstance(access_token, str) or type(expires_in) is not int:
        detail = "token response lacks access_token or expires_in"
        raise PushFailed(FailureKind.INTERNAL, "auth_failed", detail, upstream_status=status)
    return Token(access_token, now + max(expires_in - REFRESH_BEFORE_EXPIRY, 0), issued_at=now)


class _Signer:
    """Signs the JWT-bearer assertion; runs in a worker thread (RSA signing takes ~1 ms)."""

    def __init__(self, account: ServiceAccount) -> None:
        self.account = account
        self._key: Any = None

    def __repr__(self) -> str:
        return f"_Signer({self.account.client_email!r})"

    def assertion(self, now: float) -> str:
        if self._key is None:
            try:
                self._key = serialization.load_pem_private_key(
                    self.account.private_key.encode(), password=None
                )
            except (ValueError, TypeError):
                raise PushFailed(
                    FailureKind.INTERNAL,
                    "auth_failed",
                    "the service account's private_key is not a usable PEM key",
                ) from None
        issued = int(now)
        claims = {
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
        }
        headers = {"kid": self.account.private_key_id} if self.account.private_key_id else None
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)


def token_key(config: FcmConfig) -> str:
    """The token cache key of the config's service account."""
    account = config.service_account
    return credential_key("fcm", account.client_email, account.private_key)

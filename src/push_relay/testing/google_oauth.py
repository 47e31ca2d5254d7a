"""A simulated Google OAuth 2.0 token endpoint for service accounts (JWT-bearer grant).

Like `oauth2.googleapis.com/token` it verifies the RS256 assertion with the service account's
public key (signature, `iss`, `scope`, `aud` == the token URI, `iat`/`exp` at most an hour
apart and around now), answers Google's `invalid_grant` / `invalid_scope` errors, and issues
opaque access tokens that expire. `generate_service_account()` makes an account to use.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from push_relay.testing.ca import TestCA
from push_relay.testing.http1 import HttpSimulator

TOKEN_PATH = "/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_LIFETIME = 3600  # seconds between iat and exp that Google accepts
CLOCK_SKEW = 300  # seconds of iat in the future that are tolerated


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A Google service account: its RSA key pair and the fields of its JSON key file."""

    project_id: str
    client_email: str
    private_key_id: str
    private_key_pem: str = field(repr=False)

    def public_key(self) -> rsa.RSAPublicKey:
        key = serialization.load_pem_private_key(self.private_key_pem.encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.public_key()

    def key_json(self, token_uri: str) -> dict[str, str]:
        """The downloadable key file, pointing at `token_uri`."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": str(int.from_bytes(self.private_key_id.encode()[:8], "big")),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }

    def key_base64(self, token_uri: str) -> str:
        """`[fcm] service_account_key_base64`: standard padded base64 of the key file."""
        return base64.b64encode(json.dumps(self.key_json(token_uri)).encode()).decode()


def generate_service_account(project_id: str = "push-relay-test") -> ServiceAccount:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return ServiceAccount(
        project_id=project_id,
        client_email=f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com",
        private_key_id=secrets.token_hex(20),
        private_key_pem=pem,
    )


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """One token request the endpoint received, with its decoded assertion when valid."""

    claims: dict[str, Any] | None
    header: dict[str, Any] | None
    status: int


class GoogleOAuth(HttpSimulator):
    """The token endpoint at `{url}/token`, for the accounts added with `add_account`."""

    def __init__(
        self,
        ca: TestCA | None = None,
        *,
        clock: Callable[[], float] = time.time,
        expires_in: int = 3599,
    ) -> None:
        super().__init__(ca)
        self.clock = clock
        self.expires_in = expires_in
        self.delay = 0.0  # latency of every token request (to overlap concurrent pushes)
        self.failure: tuple[int, dict[str, Any]] | None = None  # answer every request so
        self.grants: list[TokenGrant] = []
        self._accounts: dict[str, rsa.RSAPublicKey] = {}
        self._issued: dict[str, float] = {}  # access token -> expiry

    @property
    def token_uri(self) -> str:
        return self.url + TOKEN_PATH

    def add_account(self, account: ServiceAccount) -> None:
        self._accounts[account.client_email] = account.public_key()

    def token_valid(self, access_token: str) -> bool:
        expires_at = self._issued.get(access_token)
        return expires_at is not None and self.clock() < expires_at

    def revoke_tokens(self) -> None:
        """Forget every issued access token, as if they had been revoked."""
        self._issued.clear()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(TOKEN_PATH, self._token)]

    async def _token(self, request: web.Request) -> web.Response:
        await self.record(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failure is not None:
            status, body = self.failure
            self.grants.append(TokenGrant(None, None, status))
            return web.json_response(body, status=status)
        form = await request.post()
        if form.get("grant_type") != GRANT_TYPE:
            return self._refuse("unsupported_grant_type", "Invalid grant_type.")
        try:
            header, claims = self._verify(str(form.get("assertion", "")))
        except _Refused as refused:
            return self._refuse(refused.error, refused.description)
        access_token = "ya29.c." + secrets.token_urlsafe(96)
        self._issued[access_token] = self.clock() + self.expires_in
        self.grants.append(TokenGrant(claims, header, 200))
        body = {"access_token": access_token, "expires_in": self.expires_in, "token_type": "Bearer"}
        return web.json_response(body, headers={"Cache-Control": "no-cache, no-store"})

    def _verify(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Refused("invalid_grant", "Invalid JWT: not a well-formed token.") from None
        public_key = self._accounts.get(str(unverified.get("iss")))
        if public_key is None:
            raise _Refused("invalid_grant", "Invalid grant: account not found")
        try:
            # times are checked below against the simulator's clock, not the machine's
            claims: dict[str, Any] = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.PyJWTError:
            raise _Refused("invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("aud") != self.token_uri:
            raise _Refused("invalid_grant", "Invalid JWT: Failed audience check.")
        scopes = str(claims.get("scope", "")).split()
        if FCM_SCOPE not in scopes:
            raise _Refused("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        iat, exp, now = claims.get("iat"), claims.get("exp"), self.clock()
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise _Refused("invalid_grant", "Invalid JWT: iat and exp are required.")
        if exp - iat > MAX_LIFETIME or exp <= now or iat > now + CLOCK_SKEW:
            raise _Refused(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        return header, claims

    def _refuse(self, error: str, description: str) -> web.Response:
        self.grants.append(TokenGrant(None, None, 400))
        body = {"error": error, "error_description": description}
        return web.json_response(body, status=400)


class _Refused(Exception):
    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description

"""The provider-token side of the simulated APNs: generated `.p8` keys, and APNs' checks of
the JWT (signature, key id, team, age) and of how often a key changes tokens.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

TOKEN_MAX_AGE = 3600.0
TOKEN_UPDATE_INTERVAL = 20 * 60.0


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
    """APNs' view of provider tokens: signature, key id, team, age and update rate.

    A team may hold more than one active key (that is how a key is rotated without
    downtime): `add_key` makes another one valid; the update rate is counted per key.
    """

    def __init__(self, key: ApnsKey, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._public_keys = {key.key_id: (key, key.public_key())}
        self._current: dict[str, tuple[str, float]] = {}  # key id -> token, since
        self.updates = 0  # how often a key changed tokens

    def add_key(self, key: ApnsKey) -> None:
        self._public_keys[key.key_id] = (key, key.public_key())

    def check(self, authorization: str | None) -> None:
        """Raise `Rejected` unless `authorization` carries an acceptable provider token."""
        if not authorization:
            raise Rejected("MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Rejected("InvalidProviderToken")
        key_id, claims = self._verified_claims(token)
        now = self.clock()
        iat = claims["iat"]
        if iat > now + 60:  # from the future: not a token APNs would have accepted either
            raise Rejected("InvalidProviderToken")
        if now - iat > TOKEN_MAX_AGE:
            raise Rejected("ExpiredProviderToken")
        self._note_use(key_id, token, now)

    def _verified_claims(self, token: str) -> tuple[str, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
            known = self._public_keys.get(header.get("kid", ""))
            if header.get("alg") != "ES256" or known is None:
                raise Rejected("InvalidProviderToken")
            key, public_key = known
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                # APNs judges the age by its own clock (`self.clock`), not PyJWT's
                options={"verify_iat": False, "require": ["iss", "iat"]},
            )
        except jwt.PyJWTError:
            raise Rejected("InvalidProviderToken") from None
        if claims["iss"] != key.team_id or not isinstance(claims["iat"], int):
            raise Rejected("InvalidProviderToken")
        return key.key_id, claims

    def _note_use(self, key_id: str, token: str, now: float) -> None:
        current, since = self._current.get(key_id, (None, 0.0))
        if token == current:
            return
        if current is not None and now - since < TOKEN_UPDATE_INTERVAL:
            raise Rejected("TooManyProviderTokenUpdates")
        if current is not None:
            self.updates += 1
        self._current[key_id] = (token, now)

"""`[apns]`: Apple Push Notification service with a token-based (`.p8`) key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from push_relay.config._reader import Reader
from push_relay.errors import ConfigError

APNS_PRODUCTION_ENDPOINT = "https://api.push.apple.com"
APNS_SANDBOX_ENDPOINT = "https://api.sandbox.push.apple.com"


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    keyfile: str
    signing_key: bytes = field(repr=False)  # the PKCS#8 PEM read from `keyfile`
    key_id: str
    team_id: str
    production_endpoint: str = APNS_PRODUCTION_ENDPOINT
    sandbox_endpoint: str = APNS_SANDBOX_ENDPOINT


def read_apns(r: Reader, s: dict[str, Any]) -> ApnsConfig:
    known = {"keyfile", "key_id", "team_id", "production_endpoint", "sandbox_endpoint"}
    r.warn_unknown(s, known, "apns")
    keyfile = r.require(s, "apns", "keyfile", str)
    apns = ApnsConfig(
        keyfile=keyfile,
        signing_key=r.read_file("apns.keyfile", keyfile),
        key_id=r.require(s, "apns", "key_id", str),
        team_id=r.require(s, "apns", "team_id", str),
        production_endpoint=r.url(
            s, "apns", "production_endpoint", APNS_PRODUCTION_ENDPOINT, upstream=True
        ),
        sandbox_endpoint=r.url(s, "apns", "sandbox_endpoint", APNS_SANDBOX_ENDPOINT, upstream=True),
    )
    load_signing_key(apns.signing_key, keyfile, r.path)  # a bad key fails check-config
    return apns


def load_signing_key(
    pem: bytes, keyfile: str, config_path: str | None = None
) -> ec.EllipticCurvePrivateKey:
    """The P-256 key of a PKCS#8 PEM `.p8` file, or a `ConfigError` naming the file."""

    def error(problem: str) -> ConfigError:
        message = f"{keyfile}: {problem}" if config_path else problem
        return ConfigError(config_path or keyfile, message, "apns.keyfile")

    if b"-----BEGIN PRIVATE KEY-----" not in pem:
        raise error("not a PKCS#8 PEM private key (expected '-----BEGIN PRIVATE KEY-----')")
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise error("the private key cannot be decoded") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise error("not a P-256 (ES256) key")
    return key

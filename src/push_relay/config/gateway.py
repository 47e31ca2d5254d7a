"""`[threema_gateway]`: the Threema Gateway (end-to-end encrypted messages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from push_relay.config._reader import Reader


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    base_url: str
    identity: str
    secret: str = field(repr=False)
    private_key_file: str
    private_key: bytes = field(repr=False)  # 32 raw bytes


def read_gateway(r: Reader, s: dict[str, Any]) -> GatewayConfig:
    known = {"base_url", "identity", "secret", "private_key_file"}
    r.warn_unknown(s, known, "threema_gateway")
    key_file = r.require(s, "threema_gateway", "private_key_file", str)
    return GatewayConfig(
        base_url=r.url(s, "threema_gateway", "base_url", None, upstream=True),
        identity=r.require(s, "threema_gateway", "identity", str),
        secret=r.require(s, "threema_gateway", "secret", str),
        private_key_file=key_file,
        private_key=_private_key(r, key_file),
    )


def _private_key(r: Reader, key_file: str) -> bytes:
    """The 32 raw bytes of a `private:<64 hex>` key file (one trailing newline allowed)."""
    key = "threema_gateway.private_key_file"
    raw = r.read_file(key, key_file)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise r.error(key, f"{key_file}: not a text key file") from None
    if text.endswith("\n"):
        text = text[:-1]
    if not text.startswith("private:"):
        raise r.error(key, f"{key_file}: key must start with 'private:'")
    hex_key = text.removeprefix("private:")
    try:
        private_key = bytes.fromhex(hex_key)
    except ValueError:
        raise r.error(key, f"{key_file}: key is not valid hex") from None
    if len(hex_key) != 64 or len(private_key) != 32:
        raise r.error(key, f"{key_file}: key must be 64 hex characters (32 bytes)")
    return private_key

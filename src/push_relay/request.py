"""The push request: form parsing and validation into an immutable `PushRequest`.

Validation order and error bodies follow the original relay exactly: type, then the
target's own parameters, then session, version, ttl and finally the APNs extras.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_to_bytes

from push_relay.errors import InvalidRequest

DEFAULT_TTL = 90
MAX_APNS_COLLAPSE_ID_BYTES = 64

# Rust's `u16::from_str` / `u32::from_str`: ASCII digits with an optional leading `+`.
_UNSIGNED = re.compile(r"\+?[0-9]+", re.ASCII)
# Rust's `trim()` strips the Unicode White_Space property; Python's bare `strip()` also strips
# the separators U+001C..U+001F, which Rust keeps.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_ESCAPED_SEPARATOR = re.compile(rb"%(?:26|3[dD])")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
# An RFC 3986 path segment without percent escapes: what an APNs device token may hold, since
# it becomes part of the request path (`/3/device/<token>`).
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class FcmTarget:
    token: str


@dataclass(frozen=True, slots=True)
class ApnsTarget:
    token: str
    bundle_id: str
    endpoint: Literal["p", "s"]

    @property
    def is_voip(self) -> bool:
        return self.bundle_id.endswith(".voip")


@dataclass(frozen=True, slots=True)
class HmsTarget:
    token: str
    app_id: str


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    identity: str
    public_key: bytes  # 32 bytes

    def __repr__(self) -> str:
        return f"GatewayTarget(identity={self.identity!r})"


Target = FcmTarget | ApnsTarget | HmsTarget | GatewayTarget


@dataclass(frozen=True, slots=True)
class PushRequest:
    """A validated push, ready for its backend."""

    target: Target
    session: str
    version: int
    affiliation: str | None
    ttl: int
    collapse_key: str | None  # already prefixed: `relay.<key>`

    @property
    def device(self) -> str:
        """What identifies the device pushed to: the token, or the gateway's Threema ID."""
        target = self.target
        return target.identity if isinstance(target, GatewayTarget) else target.token

    def __repr__(self) -> str:  # never the device token
        return (
            f"PushRequest(type={type(self.target).__name__}, session={self.session[:10]!r}, "
            f"version={self.version}, ttl={self.ttl})"
        )


def parse_form(body: bytes) -> dict[str, str]:
    """Decode an application/x-www-form-urlencoded body; the first occurrence of a key wins.

    `+` is a space, malformed escapes stay literal and invalid UTF-8 is replaced, as the
    original's form decoder does. A pair without `=` has an empty value.
    """
    if b"%" not in body and b"+" not in body:
        return _parse_plain(body.decode("utf-8", errors="replace"))
    if not _ESCAPED_SEPARATOR.search(body):
        # No escape decodes to `&` or `=`, so unescaping the whole body first yields the same
        # pairs as unescaping each part (FCM tokens carry `%3A`: this is their common path).
        return _parse_plain(_decode(body))
    params: dict[str, str] = {}
    for pair in body.split(b"&"):
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        name = _decode(key)
        if name not in params:
            params[name] = _decode(value)
    return params


def _parse_plain(text: str) -> dict[str, str]:
    # The hot path (hex tokens and sessions need no escapes): one decode for the whole body.
    # `&` and `=` are ASCII and never inside a UTF-8 sequence, so splitting the decoded text
    # gives the same pairs, and the same replacement characters, as decoding each part.
    params: dict[str, str] = {}
    for pair in text.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            params.setdefault(key, value)
    return params


def _decode(raw: bytes) -> str:
    if b"%" in raw or b"+" in raw:
        raw = unquote_to_bytes(raw.replace(b"+", b" "))
    return raw.decode("utf-8", errors="replace")


def parse_unsigned(text: str, bits: int) -> int:
    """Parse like Rust's unsigned `from_str` after `trim()`; raise `InvalidRequest` otherwise."""
    text = text.strip(_RUST_WHITESPACE)
    if not _UNSIGNED.fullmatch(text):
        raise InvalidRequest(InvalidRequest.INVALID)
    # leading zeros are fine, as in Rust; too many digits must be refused before `int()`,
    # which raises ValueError beyond 4300 digits
    significant = text.removeprefix("+").lstrip("0")
    if len(significant) > len(str(1 << bits)):
        raise InvalidRequest(InvalidRequest.INVALID)
    value = int(significant or "0")
    if value >= 1 << bits:
        raise InvalidRequest(InvalidRequest.INVALID)
    return value


def validate(params: dict[str, str]) -> PushRequest:
    """Turn decoded form parameters into a `PushRequest` or raise `InvalidRequest`."""
    if not params:
        raise InvalidRequest(InvalidRequest.MISSING)
    push_type = params.get("type", "fcm")
    target: Target
    if push_type in ("fcm", "gcm"):
        target = FcmTarget(_required(params, "token"))
    elif push_type == "apns":
        # bundleid and endpoint are checked last, as the original does
        target = ApnsTarget(_required(params, "token"), "", "p")
    elif push_type == "hms":
        target = HmsTarget(_required(params, "token"), _required(params, "appid"))
    elif push_type == "threema-gateway":
        target = _gateway_target(params)
    else:
        raise InvalidRequest(InvalidRequest.INVALID)

    session = _required(params, "session")
    version = parse_unsigned(_required(params, "version"), 16)
    ttl_text = params.get("ttl")
    ttl = DEFAULT_TTL if ttl_text is None else parse_unsigned(ttl_text, 32)
    collapse = params.get("collapse_key")
    collapse_key = None if collapse is None else f"relay.{collapse}"

    if isinstance(target, ApnsTarget):
        target = _apns_target(params, target.token, collapse_key)
    return PushRequest(
        target=target,
        session=session,
        version=version,
        affiliation=params.get("affiliation"),
        ttl=ttl,
        collapse_key=collapse_key,
    )


def _required(params: dict[str, str], key: str) -> str:
    value = params.get(key)
    if value is None:
        raise InvalidRequest(InvalidRequest.MISSING)
    return value


def _gateway_target(params: dict[str, str]) -> GatewayTarget:
    identity = _required(params, "identity")
    if len(identity.encode()) != 8 or identity.startswith("*"):
        raise InvalidRequest(InvalidRequest.INVALID)
    public_key = _required(params, "public_key")
    if not _HEX_KEY.fullmatch(public_key):
        raise InvalidRequest(InvalidRequest.INVALID)
    return GatewayTarget(identity, bytes.fromhex(public_key))


def _apns_target(params: dict[str, str], token: str, collapse_key: str | None) -> ApnsTarget:
    bundle_id = _required(params, "bundleid")
    endpoint = _required(params, "endpoint")
    if endpoint not in ("p", "s"):
        raise InvalidRequest(InvalidRequest.INVALID)
    # these become HTTP/2 fields of the connection every APNs push shares: a CR, LF, NUL or
    # space there makes APNs reset the whole connection, failing everyone's pushes in flight
    if not (_path_segment(token) and _visible(bundle_id)):
        raise InvalidRequest(InvalidRequest.INVALID)
    # visible ASCII, so its length in characters is its length in bytes
    if collapse_key is not None and not (
        _visible(collapse_key) and len(collapse_key) <= MAX_APNS_COLLAPSE_ID_BYTES
    ):
        raise InvalidRequest(InvalidRequest.INVALID)
    return ApnsTarget(token, bundle_id, "p" if endpoint == "p" else "s")


def _path_segment(token: str) -> bool:
    # hex device tokens take the first test; the regex only sees unusual ones
    return (token.isalnum() and token.isascii()) or _PATH_SEGMENT.fullmatch(token) is not None


def _visible(value: str) -> bool:
    """Only visible ASCII (0x21-0x7E); empty is fine."""
    return value.isascii() and value.isprintable() and " " not in value

"""`[fcm]`: Firebase Cloud Messaging (HTTP v1) with a Google service account."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from push_relay.config._reader import Reader

FCM_ENDPOINT = "https://fcm.googleapis.com"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The parts of a Google service-account key the relay uses."""

    client_email: str
    private_key: str = field(repr=False)
    private_key_id: str
    token_uri: str


@dataclass(frozen=True, slots=True)
class FcmConfig:
    service_account: ServiceAccount
    project_id: str
    max_retries: int
    timeout_secs: float = 60.0
    endpoint: str = FCM_ENDPOINT


_KNOWN = {"service_account_key_base64", "project_id", "max_retries", "timeout_secs", "endpoint"}


def read_fcm(r: Reader, s: dict[str, Any]) -> FcmConfig:
    r.warn_unknown(s, _KNOWN, "fcm")
    project_id = r.require(s, "fcm", "project_id", (str, int))
    max_retries = r.require(s, "fcm", "max_retries", int)
    if not 0 <= max_retries <= 255:
        raise r.error("fcm.max_retries", f"must be between 0 and 255, not {max_retries}")
    return FcmConfig(
        service_account=_service_account(r, r.require(s, "fcm", "service_account_key_base64", str)),
        project_id=str(project_id),
        max_retries=max_retries,
        timeout_secs=r.seconds(s, "fcm", "timeout_secs", 60.0),
        endpoint=r.url(s, "fcm", "endpoint", FCM_ENDPOINT, upstream=True),
    )


def _service_account(r: Reader, encoded: str) -> ServiceAccount:
    key = "fcm.service_account_key_base64"
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise r.error(key, "is not valid (padded, standard) base64") from None
    try:
        info = json.loads(decoded)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise r.error(key, "does not decode to a service-account JSON document") from None
    if not isinstance(info, dict):
        raise r.error(key, "does not decode to a service-account JSON object")
    fields = ("client_email", "private_key", "token_uri")
    missing = [f for f in fields if not isinstance(info.get(f), str)]
    if missing:
        raise r.error(key, f"service account lacks {', '.join(missing)}")
    token_uri = info["token_uri"]
    r.check_url(key, token_uri, upstream=True, what="token_uri ")
    return ServiceAccount(
        client_email=info["client_email"],
        private_key=info["private_key"],
        private_key_id=str(info.get("private_key_id", "")),
        token_uri=token_uri,
    )

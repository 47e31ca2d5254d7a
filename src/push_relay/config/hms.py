"""`[hms.<app_id>]`: Huawei Push Kit, one section per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from push_relay.config._reader import Reader

HMS_LOGIN_ENDPOINT = "https://oauth-login.cloud.huawei.com"
HMS_PUSH_ENDPOINT = "https://push-api.cloud.huawei.com"


@dataclass(frozen=True, slots=True)
class HmsConfig:
    app_id: str
    client_id: str
    client_secret: str = field(repr=False)
    high_priority: bool = False
    login_endpoint: str = HMS_LOGIN_ENDPOINT
    push_endpoint: str = HMS_PUSH_ENDPOINT


def read_hms(r: Reader, app_id: str, s: dict[str, Any] | None) -> HmsConfig:
    section = f"hms.{app_id}"
    if s is None:
        raise r.error(section, "must be a table")
    known = {"client_id", "client_secret", "high_priority", "login_endpoint", "push_endpoint"}
    r.warn_unknown(s, known, section)
    return HmsConfig(
        app_id=app_id,
        client_id=r.require(s, section, "client_id", str),
        client_secret=r.require(s, section, "client_secret", str),
        high_priority=r.get(s, section, "high_priority", bool, False),
        login_endpoint=r.url(s, section, "login_endpoint", HMS_LOGIN_ENDPOINT, upstream=True),
        push_endpoint=r.url(s, section, "push_endpoint", HMS_PUSH_ENDPOINT, upstream=True),
    )

"""The TOML configuration, read once at start-up into frozen, typed sections.

Every section is optional. A defect (missing file, bad TOML, a wrong type, a missing required
key, an unreadable key file) raises `ConfigError` naming the file and the key; unknown keys
only produce warnings, so a typo is noticed without taking the relay down.

One module per section (`server`, `fcm`, `apns`, `hms`, `gateway`, `influxdb`, `limits`), each
with its dataclass and its reader; `_reader.Reader` holds the typed access they share.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from push_relay.config._reader import Reader
from push_relay.config.apns import (
    APNS_PRODUCTION_ENDPOINT,
    APNS_SANDBOX_ENDPOINT,
    ApnsConfig,
    load_signing_key,
    read_apns,
)
from push_relay.config.fcm import FCM_ENDPOINT, FcmConfig, ServiceAccount, read_fcm
from push_relay.config.gateway import GatewayConfig, read_gateway
from push_relay.config.hms import HMS_LOGIN_ENDPOINT, HMS_PUSH_ENDPOINT, HmsConfig, read_hms
from push_relay.config.influxdb import InfluxConfig, read_influx
from push_relay.config.limits import LimitsConfig, read_limits
from push_relay.config.server import ServerConfig, read_server
from push_relay.errors import ConfigError

__all__ = [
    "APNS_PRODUCTION_ENDPOINT",
    "APNS_SANDBOX_ENDPOINT",
    "FCM_ENDPOINT",
    "HMS_LOGIN_ENDPOINT",
    "HMS_PUSH_ENDPOINT",
    "ApnsConfig",
    "Config",
    "FcmConfig",
    "GatewayConfig",
    "HmsConfig",
    "InfluxConfig",
    "LimitsConfig",
    "ServerConfig",
    "ServiceAccount",
    "load",
    "load_signing_key",
]

_SECTIONS = {"server", "fcm", "apns", "hms", "threema_gateway", "influxdb", "limits"}


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    server: ServerConfig = field(default_factory=ServerConfig)
    fcm: FcmConfig | None = None
    apns: ApnsConfig | None = None
    hms: dict[str, HmsConfig] = field(default_factory=dict)
    threema_gateway: GatewayConfig | None = None
    influxdb: InfluxConfig | None = None
    limits: LimitsConfig | None = None
    warnings: tuple[str, ...] = ()

    def backend_names(self) -> list[str]:
        """The configured backends, by the name used in metrics and `/ready`."""
        names = []
        if self.fcm:
            names.append("fcm")
        if self.apns:
            names.append("apns")
        names.extend(f"hms:{app_id}" for app_id in self.hms)
        if self.threema_gateway:
            names.append("threemagateway")
        return names


def load(path: str | Path) -> Config:
    """Read and validate the config file at `path`."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, "file not found (give another with -c/--config)") from None
    except OSError as err:
        raise ConfigError(name, f"cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(name, f"not valid UTF-8 at byte {err.start}") from None
    empty = ConfigError(name, "Config is empty → Server has nothing to do")
    if not text.strip():
        raise empty
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(name, f"not valid TOML: {err}") from None
    if not data:  # only comments: as empty as a blank file
        raise empty
    return _build(Reader(name, Path(path).parent), data)


def _build(r: Reader, data: dict[str, Any]) -> Config:
    r.warn_unknown(data, _SECTIONS, "")
    hms = r.table(data, "hms", "")
    return Config(
        path=r.path,
        server=read_server(r, r.table(data, "server", "") or {}),
        fcm=r.optional(data, "fcm", read_fcm),
        apns=r.optional(data, "apns", read_apns),
        hms={app: read_hms(r, app, r.table(hms, app, "hms")) for app in hms or {}},
        threema_gateway=r.optional(data, "threema_gateway", read_gateway),
        influxdb=r.optional(data, "influxdb", read_influx),
        limits=r.optional(data, "limits", read_limits),
        warnings=tuple(r.warnings),
    )

"""The TOML configuration, read once at start-up into frozen, typed sections.

Every section is optional. A defect (missing file, bad TOML, a wrong type, a missing required
key, an unreadable key file) raises `ConfigError` naming the file and the key; unknown keys
only produce warnings, so a typo is noticed without taking the relay down.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from push_relay.errors import ConfigError

FCM_ENDPOINT = "https://fcm.googleapis.com"
APNS_PRODUCTION_ENDPOINT = "https://api.push.apple.com"
APNS_SANDBOX_ENDPOINT = "https://api.sandbox.push.apple.com"
HMS_LOGIN_ENDPOINT = "https://oauth-login.cloud.huawei.com"
HMS_PUSH_ENDPOINT = "https://push-api.cloud.huawei.com"

T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    keyfile: str
    signing_key: bytes = field(repr=False)  # the PKCS#8 PEM read from `keyfile`
    key_id: str
    team_id: str
    production_endpoint: str = APNS_PRODUCTION_ENDPOINT
    sandbox_endpoint: str = APNS_SANDBOX_ENDPOINT


@dataclass(frozen=True, slots=True)
class HmsConfig:
    app_id: str
    client_id: str
    client_secret: str = field(repr=False)
    high_priority: bool = False
    login_endpoint: str = HMS_LOGIN_ENDPOINT
    push_endpoint: str = HMS_PUSH_ENDPOINT


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    base_url: str
    identity: str
    secret: str = field(repr=False)
    private_key_file: str
    private_key: bytes = field(repr=False)  # 32 raw bytes


@dataclass(frozen=True, slots=True)
class InfluxConfig:
    connection_string: str
    user: str
    password: str = field(repr=False)
    db: str


@dataclass(frozen=True, slots=True)
class ServerConfig:
    cors_origins: tuple[str, ...] = ("*",)
    max_in_flight: int = 10_000
    header_timeout_secs: float = 10.0
    body_timeout_secs: float = 10.0
    shutdown_grace_secs: float = 30.0
    log_hash_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    server: ServerConfig = ServerConfig()
    fcm: FcmConfig | None = None
    apns: ApnsConfig | None = None
    hms: dict[str, HmsConfig] = field(default_factory=dict)
    threema_gateway: GatewayConfig | None = None
    influxdb: InfluxConfig | None = None
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
    return _Reader(name, Path(path).parent).config(data)


class _Reader:
    """Walks the parsed TOML, checking types and collecting unknown-key warnings."""

    def __init__(self, path: str, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir
        self.warnings: list[str] = []

    def config(self, data: dict[str, Any]) -> Config:
        known = {"server", "fcm", "apns", "hms", "threema_gateway", "influxdb"}
        self._warn_unknown(data, known, "")
        hms = self._table(data, "hms", "")
        return Config(
            path=self.path,
            server=self._server(self._table(data, "server", "")),
            fcm=self._optional(data, "fcm", self._fcm),
            apns=self._optional(data, "apns", self._apns),
            hms={app: self._hms(app, self._table(hms, app, "hms")) for app in hms or {}},
            threema_gateway=self._optional(data, "threema_gateway", self._gateway),
            influxdb=self._optional(data, "influxdb", self._influx),
            warnings=tuple(self.warnings),
        )

    # -- sections ---------------------------------------------------------------------------

    def _server(self, s: dict[str, Any] | None) -> ServerConfig:
        s = s or {}
        d = ServerConfig()
        self._warn_unknown(s, set(ServerConfig.__dataclass_fields__), "server")
        origins = self._get(s, "server", "cors_origins", list, list(d.cors_origins))
        if not all(isinstance(o, str) for o in origins):
            raise self._error("server.cors_origins", "must be a list of strings")
        return ServerConfig(
            cors_origins=tuple(origins),
            max_in_flight=self._positive_int(s, "server", "max_in_flight", d.max_in_flight),
            header_timeout_secs=self._seconds(s, "server", "header_timeout_secs", 10.0),
            body_timeout_secs=self._seconds(s, "server", "body_timeout_secs", 10.0),
            shutdown_grace_secs=self._seconds(s, "server", "shutdown_grace_secs", 30.0, zero=True),
            log_hash_key=self._get(s, "server", "log_hash_key", str, None),
        )

    def _fcm(self, s: dict[str, Any]) -> FcmConfig:
        self._warn_unknown(
            s,
            {"service_account_key_base64", "project_id", "max_retries", "timeout_secs", "endpoint"},
            "fcm",
        )
        project_id = self._require(s, "fcm", "project_id", (str, int))
        max_retries = self._require(s, "fcm", "max_retries", int)
        if not 0 <= max_retries <= 255:
            raise self._error("fcm.max_retries", f"must be between 0 and 255, not {max_retries}")
        return FcmConfig(
            service_account=self._service_account(
                self._require(s, "fcm", "service_account_key_base64", str)
            ),
            project_id=str(project_id),
            max_retries=max_retries,
            timeout_secs=self._seconds(s, "fcm", "timeout_secs", 60.0),
            endpoint=self._url(s, "fcm", "endpoint", FCM_ENDPOINT),
        )

    def _service_account(self, encoded: str) -> ServiceAccount:
        key = "fcm.service_account_key_base64"
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise self._error(key, "is not valid (padded, standard) base64") from None
        try:
            info = json.loads(decoded)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._error(key, "does not decode to a service-account JSON document") from None
        if not isinstance(info, dict):
            raise self._error(key, "does not decode to a service-account JSON object")
        fields = ("client_email", "private_key", "token_uri")
        missing = [f for f in fields if not isinstance(info.get(f), str)]
        if missing:
            raise self._error(key, f"service account lacks {', '.join(missing)}")
        return ServiceAccount(
            client_email=info["client_email"],
            private_key=info["private_key"],
            private_key_id=str(info.get("private_key_id", "")),
            token_uri=info["token_uri"],
        )

    def _apns(self, s: dict[str, Any]) -> ApnsConfig:
        known = {"keyfile", "key_id", "team_id", "production_endpoint", "sandbox_endpoint"}
        self._warn_unknown(s, known, "apns")
        keyfile = self._require(s, "apns", "keyfile", str)
        apns = ApnsConfig(
            keyfile=keyfile,
            signing_key=self._read_file("apns.keyfile", keyfile),
            key_id=self._require(s, "apns", "key_id", str),
            team_id=self._require(s, "apns", "team_id", str),
            production_endpoint=self._url(
                s, "apns", "production_endpoint", APNS_PRODUCTION_ENDPOINT
            ),
            sandbox_endpoint=self._url(s, "apns", "sandbox_endpoint", APNS_SANDBOX_ENDPOINT),
        )
        from push_relay.backends.apns import load_signing_key  # backends import this module

        load_signing_key(apns.signing_key, keyfile, self.path)  # a bad key fails check-config
        return apns

    def _hms(self, app_id: str, s: dict[str, Any] | None) -> HmsConfig:
        section = f"hms.{app_id}"
        if s is None:
            raise self._error(section, "must be a table")
        known = {"client_id", "client_secret", "high_priority", "login_endpoint", "push_endpoint"}
        self._warn_unknown(s, known, section)
        return HmsConfig(
            app_id=app_id,
            client_id=self._require(s, section, "client_id", str),
            client_secret=self._require(s, section, "client_secret", str),
            high_priority=self._get(s, section, "high_priority", bool, False),
            login_endpoint=self._url(s, section, "login_endpoint", HMS_LOGIN_ENDPOINT),
            push_endpoint=self._url(s, section, "push_endpoint", HMS_PUSH_ENDPOINT),
        )

    def _gateway(self, s: dict[str, Any]) -> GatewayConfig:
        known = {"base_url", "identity", "secret", "private_key_file"}
        self._warn_unknown(s, known, "threema_gateway")
        key_file = self._require(s, "threema_gateway", "private_key_file", str)
        return GatewayConfig(
            base_url=self._url(s, "threema_gateway", "base_url", None),
            identity=self._require(s, "threema_gateway", "identity", str),
            secret=self._require(s, "threema_gateway", "secret", str),
            private_key_file=key_file,
            private_key=self._gateway_key(key_file),
        )

    def _gateway_key(self, key_file: str) -> bytes:
        key = "threema_gateway.private_key_file"
        raw = self._read_file(key, key_file)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise self._error(key, f"{key_file}: not a text key file") from None
        if text.endswith("\n"):
            text = text[:-1]
        if not text.startswith("private:"):
            raise self._error(key, f"{key_file}: key must start with 'private:'")
        hex_key = text.removeprefix("private:")
        try:
            private_key = bytes.fromhex(hex_key)
        except ValueError:
            raise self._error(key, f"{key_file}: key is not valid hex") from None
        if len(hex_key) != 64 or len(private_key) != 32:
            raise self._error(key, f"{key_file}: key must be 64 hex characters (32 bytes)")
        return private_key

    def _influx(self, s: dict[str, Any]) -> InfluxConfig:
        self._warn_unknown(s, {"connection_string", "user", "pass", "db"}, "influxdb")
        return InfluxConfig(
            connection_string=self._url(s, "influxdb", "connection_string", None),
            user=self._require(s, "influxdb", "user", str),
            password=self._require(s, "influxdb", "pass", str),
            db=self._require(s, "influxdb", "db", str),
        )

    # -- typed access -----------------------------------------------------------------------

    def _optional(
        self, data: dict[str, Any], name: str, build: Callable[[dict[str, Any]], T]
    ) -> T | None:
        section = self._table(data, name, "")
        return None if section is None else build(section)

    def _table(self, data: dict[str, Any] | None, name: str, parent: str) -> dict[str, Any] | None:
        if data is None or name not in data:
            return None
        value = data[name]
        if not isinstance(value, dict):
            raise self._error(f"{parent}.{name}" if parent else name, "must be a table")
        return value

    def _get(self, s: dict[str, Any], section: str, key: str, kind: Any, default: Any) -> Any:
        if key not in s:
            return default
        value = s[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints to Python; never accept one for the other
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds) and not (kind is bool and not isinstance(value, bool))
        if not ok:
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise self._error(f"{section}.{key}", f"must be {names}, not {_describe(value)}")
        return value

    def _require(self, s: dict[str, Any], section: str, key: str, kind: Any) -> Any:
        if key not in s:
            raise self._error(f"{section}.{key}", "is required but missing")
        return self._get(s, section, key, kind, None)

    def _seconds(
        self, s: dict[str, Any], section: str, key: str, default: float, zero: bool = False
    ) -> float:
        value = self._get(s, section, key, (int, float), default)
        # TOML allows inf and nan; neither is a usable timeout
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            bound = ">= 0" if zero else "> 0"
            raise self._error(f"{section}.{key}", f"must be a finite number {bound}, not {value}")
        return float(value)

    def _positive_int(self, s: dict[str, Any], section: str, key: str, default: int) -> int:
        value: int = self._get(s, section, key, int, default)
        if value <= 0:
            raise self._error(f"{section}.{key}", f"must be > 0, not {value}")
        return value

    def _url(self, s: dict[str, Any], section: str, key: str, default: str | None) -> str:
        if default is None:
            value: str = self._require(s, section, key, str)
        else:
            value = self._get(s, section, key, str, default)
        if not value.startswith(("https://", "http://")):
            raise self._error(f"{section}.{key}", f"must be an http(s):// URL, not {value!r}")
        return value.rstrip("/")

    def _read_file(self, key: str, name: str) -> bytes:
        path = Path(name)
        if not path.is_absolute() and not path.exists():
            path = self.base_dir / path  # also accept paths relative to the config file
        try:
            return path.read_bytes()
        except OSError as err:
            raise self._error(key, f"cannot read {name}: {err.strerror or err}") from None

    def _warn_unknown(self, s: dict[str, Any], known: set[str], section: str) -> None:
        for key in s:
            if key not in known:
                where = f"{section}.{key}" if section else key
                self.warnings.append(f"{self.path}: unknown key [{where}] is ignored")

    def _error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, message, key)


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
}


def _describe(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if type(value) is kind:
            return name
    return "a table" if isinstance(value, dict) else type(value).__name__

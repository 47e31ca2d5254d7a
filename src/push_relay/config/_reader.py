"""Typed access to the parsed TOML, shared by the section readers.

Each accessor raises `ConfigError` naming the file and the `section.key`; unknown keys are
collected as warnings instead.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from push_relay.errors import ConfigError

T = TypeVar("T")

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
}


class Reader:
    """Walks the parsed TOML of one file, checking types and collecting unknown-key warnings."""

    def __init__(self, path: str, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir
        self.warnings: list[str] = []

    def optional(
        self, data: dict[str, Any], name: str, build: Callable[[Reader, dict[str, Any]], T]
    ) -> T | None:
        section = self.table(data, name, "")
        return None if section is None else build(self, section)

    def table(self, data: dict[str, Any] | None, name: str, parent: str) -> dict[str, Any] | None:
        if data is None or name not in data:
            return None
        value = data[name]
        if not isinstance(value, dict):
            raise self.error(f"{parent}.{name}" if parent else name, "must be a table")
        return value

    def get(self, s: dict[str, Any], section: str, key: str, kind: Any, default: Any) -> Any:
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
            raise self.error(f"{section}.{key}", f"must be {names}, not {_describe(value)}")
        return value

    def require(self, s: dict[str, Any], section: str, key: str, kind: Any) -> Any:
        if key not in s:
            raise self.error(f"{section}.{key}", "is required but missing")
        return self.get(s, section, key, kind, None)

    def seconds(
        self, s: dict[str, Any], section: str, key: str, default: float, zero: bool = False
    ) -> float:
        value = self.get(s, section, key, (int, float), default)
        # TOML allows inf and nan; neither is a usable timeout
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            bound = ">= 0" if zero else "> 0"
            raise self.error(f"{section}.{key}", f"must be a finite number {bound}, not {value}")
        return float(value)

    def positive_int(self, s: dict[str, Any], section: str, key: str, default: int) -> int:
        value: int = self.get(s, section, key, int, default)
        if value <= 0:
            raise self.error(f"{section}.{key}", f"must be > 0, not {value}")
        return value

    def url(
        self, s: dict[str, Any], section: str, key: str, default: str | None, *, upstream: bool
    ) -> str:
        """An http(s):// URL without trailing `/`; an `upstream` (a push service or token
        endpoint, which receives credentials) may be plain http:// only on loopback."""
        if default is None:
            value: str = self.require(s, section, key, str)
        else:
            value = self.get(s, section, key, str, default)
        self.check_url(f"{section}.{key}", value, upstream=upstream)
        return value.rstrip("/")

    def check_url(self, key: str, value: str, *, upstream: bool, what: str = "") -> None:
        """`value` is an http(s):// URL, and an `upstream` one is http:// only on loopback;
        `what` names a value that is not the key's own (e.g. a field of its JSON)."""
        if not value.startswith(("https://", "http://")):
            raise self.error(key, f"{what}must be an http(s):// URL, not {value!r}")
        if upstream and not secure_enough(value):
            raise self.error(key, f"{what}{value!r}: {PLAIN_HTTP}")

    def read_file(self, key: str, name: str) -> bytes:
        path = Path(name)
        if not path.is_absolute() and not path.exists():
            path = self.base_dir / path  # also accept paths relative to the config file
        try:
            return path.read_bytes()
        except OSError as err:
            raise self.error(key, f"cannot read {name}: {err.strerror or err}") from None

    def warn_unknown(self, s: dict[str, Any], known: set[str], section: str) -> None:
        for key in s:
            if key not in known:
                where = f"{section}.{key}" if section else key
                self.warnings.append(f"{self.path}: unknown key [{where}] is ignored")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, message, key)


PLAIN_HTTP = "http:// would send credentials in clear; only loopback hosts may use it"


def secure_enough(url: str) -> bool:
    """An upstream URL is https://, or http:// to a loopback host (a local simulator)."""
    return not url.startswith("http://") or is_loopback_url(url)


def is_loopback_url(url: str) -> bool:
    """True when `url`'s host is 127.0.0.0/8, ::1 or localhost."""
    try:
        host = urlsplit(url).hostname
    except ValueError:  # e.g. an unbalanced `[` in the host
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if type(value) is kind:
            return name
    return "a table" if isinstance(value, dict) else type(value).__name__

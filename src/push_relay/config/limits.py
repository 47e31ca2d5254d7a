"""`[limits]`: rate limits per device target and per client address (absent: no limits)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from push_relay.config._reader import Reader

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    token_per_minute: int = 0  # 0: no limit per device target
    token_burst: int = 10
    client_per_minute: int = 0  # 0: no limit per client address
    client_burst: int = 100
    trusted_proxies: tuple[Network, ...] = ()
    redis_url: str | None = None  # None: each worker counts alone, in memory
    redis_timeout_ms: int = 100
    redis_fail_open: bool = True

    @property
    def active(self) -> bool:
        """Whether any limit applies; when not, the push path never consults a limiter."""
        return self.token_per_minute > 0 or self.client_per_minute > 0

    def describe(self) -> str:
        """One line for `check-config`, without the Redis URL's credentials."""
        parts = []
        if self.token_per_minute:
            parts.append(f"{self.token_per_minute}/min per device (burst {self.token_burst})")
        if self.client_per_minute:
            parts.append(f"{self.client_per_minute}/min per client (burst {self.client_burst})")
        if self.trusted_proxies:
            parts.append(f"{len(self.trusted_proxies)} trusted proxy networks")
        if self.redis_url is None:
            parts.append("counted per worker")
        else:
            url = urlsplit(self.redis_url)
            where = url.path if url.scheme == "unix" else f"{url.hostname}:{url.port or 6379}"
            mode = "open" if self.redis_fail_open else "closed"
            parts.append(f"shared in Redis at {where} (fails {mode})")
        return ", ".join(parts) if self.active else "none (both limits are 0)"


def read_limits(r: Reader, s: dict[str, Any]) -> LimitsConfig:
    d = LimitsConfig()
    r.warn_unknown(s, set(LimitsConfig.__dataclass_fields__), "limits")
    return LimitsConfig(
        token_per_minute=_count(r, s, "token_per_minute", d.token_per_minute, 0),
        token_burst=_count(r, s, "token_burst", d.token_burst, 1),
        client_per_minute=_count(r, s, "client_per_minute", d.client_per_minute, 0),
        client_burst=_count(r, s, "client_burst", d.client_burst, 1),
        trusted_proxies=_networks(r, r.get(s, "limits", "trusted_proxies", list, [])),
        redis_url=_redis_url(r, r.get(s, "limits", "redis_url", str, None)),
        redis_timeout_ms=_count(r, s, "redis_timeout_ms", d.redis_timeout_ms, 1),
        redis_fail_open=r.get(s, "limits", "redis_fail_open", bool, d.redis_fail_open),
    )


def _count(r: Reader, s: dict[str, Any], key: str, default: int, least: int) -> int:
    value: int = r.get(s, "limits", key, int, default)
    if value < least:
        raise r.error(f"limits.{key}", f"must be >= {least}, not {value}")
    return value


def _networks(r: Reader, values: list[Any]) -> tuple[Network, ...]:
    networks = []
    for value in values:
        if not isinstance(value, str):
            raise r.error("limits.trusted_proxies", "must be a list of strings (CIDRs)")
        try:
            # host bits may be set (`10.1.2.3/8`): the operator means the network
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise r.error(
                "limits.trusted_proxies", f"{value!r} is not an IP address or CIDR"
            ) from None
    return tuple(networks)


def _redis_url(r: Reader, url: str | None) -> str | None:
    if url is None:
        return None
    scheme, _, rest = url.partition("://")
    if scheme not in REDIS_SCHEMES or not rest:
        raise r.error(
            "limits.redis_url", f"must be a redis://, rediss:// or unix:// URL, not {url!r}"
        )
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError as err:
        raise r.error("limits.redis_url", f"{url!r} is not a valid URL: {err}") from None
    if scheme == "unix" and not parts.path:
        raise r.error("limits.redis_url", f"{url!r} names no socket path")
    if scheme != "unix" and not parts.hostname:
        raise r.error("limits.redis_url", f"{url!r} names no host")
    return url

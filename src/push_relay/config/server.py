"""`[server]`: relay-level settings (all optional)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from push_relay.address import ListenAddressError, parse_listen
from push_relay.config._reader import Reader


@dataclass(frozen=True, slots=True)
class ServerConfig:
    cors_origins: tuple[str, ...] = ("*",)
    max_in_flight: int = 10_000
    header_timeout_secs: float = 10.0
    body_timeout_secs: float = 10.0
    shutdown_grace_secs: float = 30.0
    log_hash_key: str | None = field(default=None, repr=False)
    max_header_bytes: int = 16_384  # request line, header lines and the blank line
    max_headers: int = 100
    max_connections: int = 10_000  # per worker
    admin_listen: tuple[str, int] | None = None  # where /metrics and /ready answer instead


def read_server(r: Reader, s: dict[str, Any]) -> ServerConfig:
    d = ServerConfig()
    r.warn_unknown(s, set(ServerConfig.__dataclass_fields__), "server")
    origins = r.get(s, "server", "cors_origins", list, list(d.cors_origins))
    if not all(isinstance(o, str) for o in origins):
        raise r.error("server.cors_origins", "must be a list of strings")
    return ServerConfig(
        cors_origins=tuple(origins),
        max_in_flight=r.positive_int(s, "server", "max_in_flight", d.max_in_flight),
        header_timeout_secs=r.seconds(s, "server", "header_timeout_secs", d.header_timeout_secs),
        body_timeout_secs=r.seconds(s, "server", "body_timeout_secs", d.body_timeout_secs),
        shutdown_grace_secs=r.seconds(
            s, "server", "shutdown_grace_secs", d.shutdown_grace_secs, zero=True
        ),
        log_hash_key=r.get(s, "server", "log_hash_key", str, None),
        max_header_bytes=r.positive_int(s, "server", "max_header_bytes", d.max_header_bytes),
        max_headers=r.positive_int(s, "server", "max_headers", d.max_headers),
        max_connections=r.positive_int(s, "server", "max_connections", d.max_connections),
        admin_listen=_admin_listen(r, s),
    )


def _admin_listen(r: Reader, s: dict[str, Any]) -> tuple[str, int] | None:
    value = r.get(s, "server", "admin_listen", str, None)
    if value is None:
        return None
    try:
        return parse_listen(value)
    except ListenAddressError as err:
        raise r.error("server.admin_listen", str(err)) from None

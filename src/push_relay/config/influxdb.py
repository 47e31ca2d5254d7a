"""`[influxdb]`: optional push statistics written to InfluxDB 1.x."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from push_relay.config._reader import Reader


@dataclass(frozen=True, slots=True)
class InfluxConfig:
    connection_string: str
    user: str
    password: str = field(repr=False)
    db: str


def read_influx(r: Reader, s: dict[str, Any]) -> InfluxConfig:
    r.warn_unknown(s, {"connection_string", "user", "pass", "db"}, "influxdb")
    return InfluxConfig(
        connection_string=r.url(s, "influxdb", "connection_string", None, upstream=False),
        user=r.require(s, "influxdb", "user", str),
        password=r.require(s, "influxdb", "pass", str),
        db=r.require(s, "influxdb", "db", str),
    )

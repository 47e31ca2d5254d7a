"""Prometheus metrics, defined once. Every name carries the `push_relay_` prefix.

With `--workers N` the supervisor sets `PROMETHEUS_MULTIPROC_DIR` to a private directory
before this module is first imported; prometheus-client then keeps every worker's values in
memory-mapped files there, and `/metrics`, whichever worker answers it, sums them all.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# the classic text format every Prometheus version reads (and what generate_latest writes)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

REQUESTS = Counter(
    "push_relay_requests",
    "Push requests answered, by backend, HTTP status answered and low-cardinality reason.",
    ["backend", "outcome", "reason"],
)
UPSTREAM_SECONDS = Histogram(
    "push_relay_upstream_seconds",
    "Time spent relaying one push to its push service, retries included.",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_RETRIES = Counter(
    "push_relay_upstream_retries",
    "Requests to a push service that were retries of a transient failure.",
    ["backend"],
)
IN_FLIGHT = Gauge(
    "push_relay_in_flight",
    "Pushes being relayed right now.",
    multiprocess_mode="livesum",
)
AUTH_REFRESHES = Counter(
    "push_relay_auth_refreshes",
    "Upstream auth tokens obtained or signed, by backend and result (ok/error).",
    ["backend", "result"],
)
INFLUXDB_QUEUE_DEPTH = Gauge(
    "push_relay_influxdb_queue_depth",
    "Points waiting to be written to InfluxDB.",
    multiprocess_mode="livesum",
)
INFLUXDB_DROPPED = Counter(
    "push_relay_influxdb_dropped",
    "Points dropped because InfluxDB could not keep up or was unreachable.",
)
RATE_LIMITED = Counter(
    "push_relay_rate_limited",
    "Pushes refused with 429 by a rate limit, by scope (token: device target, client: address).",
    ["scope"],
)
RATE_LIMIT_ERRORS = Counter(
    "push_relay_rate_limit_errors",
    "Calls to the shared rate-limit store (Redis) that failed or timed out.",
)
for _scope in ("token", "client"):
    RATE_LIMITED.labels(_scope)


def auth_refreshed(backend: str, ok: bool) -> None:
    AUTH_REFRESHES.labels(backend, "ok" if ok else "error").inc()


def _exposition_registry() -> CollectorRegistry:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


_REGISTRY = _exposition_registry()


def render() -> bytes:
    """The Prometheus text exposition: this process's metrics, or all workers' summed."""
    return generate_latest(_REGISTRY)

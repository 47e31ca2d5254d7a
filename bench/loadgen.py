"""Open-loop load at a fixed rate, for latency figures (wrk2 is not packaged in Debian).

Requests are released on a fixed schedule whatever the server does, over a pool of
keep-alive HTTP/1.1 connections; a request that finds no idle connection queues here and its
wait counts in its latency, so a stalling server cannot hide its stalls by slowing the load
(the "coordinated omission" wrk's closed loop suffers from). Every latency is recorded and
percentiles are exact (a few hundred thousand floats at most), which is what HdrHistogram
approximates.

Two latencies are kept per request: from the moment the generator released it (`latency`),
and from its ideal slot on the schedule (`schedule_latency`, which also counts the
generator's own timer slack of up to ~1 ms under uvloop's millisecond timers).

Prints one line `BENCH-JSON {...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from collections import Counter, deque
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop


class _Connection(asyncio.Protocol):
    def __init__(self, load: Load) -> None:
        self.load = load
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.released = 0.0
        self.scheduled = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.load.completed(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)

    def send(self, request: bytes, released: float, scheduled: float) -> None:
        assert self.transport is not None
        self.released = released
        self.scheduled = scheduled
        self.transport.write(request)


class Load:
    """Dispatches requests to idle connections and records how each one ended."""

    def __init__(self) -> None:
        # first in, first out: every connection stays busy enough that the server's
        # keep-alive timeout never closes it
        self.idle: deque[_Connection] = deque()
        self.waiting: deque[tuple[bytes, float, float]] = deque()
        self.latencies: list[float] = []
        self.schedule_latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.outstanding = 0
        self.lost_connections = 0
        self.all_answered = asyncio.Event()

    def dispatch(self, request: bytes, released: float, scheduled: float) -> None:
        self.outstanding += 1
        self.all_answered.clear()
        if self.idle:
            self.idle.popleft().send(request, released, scheduled)
        else:
            self.waiting.append((request, released, scheduled))

    def completed(self, conn: _Connection, status: int) -> None:
        now = time.perf_counter()
        self.latencies.append(now - conn.released)
        self.schedule_latencies.append(now - conn.scheduled)
        self.statuses[status] += 1
        self.outstanding -= 1
        if self.waiting:
            conn.send(*self.waiting.popleft())
        else:
            self.idle.append(conn)
            if self.outstanding == 0:
                self.all_answered.set()

    def lost(self, conn: _Connection) -> None:
        self.lost_connections += 1
        if conn in self.idle:
            self.idle.remove(conn)


def _requests(url: str, bodies: list[str], content_type: str) -> list[bytes]:
    parts = urlsplit(url)
    head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    return [
        (
            f"{head}Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        for body in bodies
    ]


async def _connect(load: Load, url: str, count: int, cafile: str | None) -> None:
    parts = urlsplit(url)
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        context.set_alpn_protocols(["http/1.1"])
    loop = asyncio.get_running_loop()
    for _ in range(count):
        _, protocol = await loop.create_connection(
            lambda: _Connection(load), parts.hostname, parts.port, ssl=context
        )
        load.idle.append(protocol)


async def run(args: argparse.Namespace, requests: list[bytes]) -> dict[str, object]:
    load = Load()
    await _connect(load, args.url, args.connections, args.cafile)
    total = int(args.rate * args.duration)
    start = time.perf_counter()
    released = 0
    while released < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * args.rate) + 1)
        while released < due:
            load.dispatch(requests[released % len(requests)], now, start + released / args.rate)
            released += 1
        # uvloop's timers tick in milliseconds: a shorter sleep would spin and steal the CPU
        # the server under test needs; what falls due meanwhile is released next tick
        await asyncio.sleep(max(0.001, start + released / args.rate - time.perf_counter()))
    elapsed = time.perf_counter() - start
    try:
        async with asyncio.timeout(args.drain_timeout):
            await load.all_answered.wait()
    except TimeoutError:
        pass
    return _summary(load, released, elapsed, args.expect)


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 3)

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "p999": rank(99.9)} | {
        "max": round(ordered[-1] * 1000, 3)
    }


def _summary(load: Load, released: int, elapsed: float, expect: int) -> dict[str, object]:
    answered = sum(load.statuses.values())
    return {
        "released": released,
        "answered": answered,
        "unanswered": released - answered,
        "unexpected_status": answered - load.statuses[expect],
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "lost_connections": load.lost_connections,
        "offered_rate": round(released / elapsed, 1),
        "latency_ms": _percentiles(load.latencies),
        "schedule_latency_ms": _percentiles(load.schedule_latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Fixed-rate open-loop HTTP/1.1 load.")
    parser.add_argument("--url", required=True, help="http(s)://127.0.0.1:PORT/path")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load")
    parser.add_argument("--bodies", required=True, help="file with one request body per line")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--expect", type=int, default=204, help="the status every answer has")
    parser.add_argument("--cafile", default=None, help="CA to trust for https")
    parser.add_argument("--content-type", default="application/x-www-form-urlencoded")
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    args = parser.parse_args()
    bodies = Path(args.bodies).read_text().splitlines()
    requests = _requests(args.url, bodies, args.content_type)
    print("BENCH-JSON " + json.dumps(uvloop.run(run(args, requests))), flush=True)


if __name__ == "__main__":
    main()

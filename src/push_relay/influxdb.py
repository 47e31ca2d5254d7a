"""Push statistics for InfluxDB 1.x, written in the background so pushes never wait for it.

Same points as the original relay: `started,host=<h> value=1` once per worker at start-up and
`push,host=<h>,type=<t>,version=<v>,success=<true|false> value=1` per validated push. Unlike
the original, a push only appends its point to a bounded in-memory queue; a background task
writes batches (every `flush_interval` seconds or `batch_size` points). While InfluxDB is slow or
down the queue keeps the newest `max_points` points, counts the dropped oldest ones and retries
with backoff; `stop()` flushes what is left, bounded in time.

Every point carries its own timestamp, so a batch written late keeps the push time. InfluxDB
keeps only one point per series and timestamp, so two pushes with equal tags must never share
one: each worker counts in whole microseconds (one more than its last point at least) and puts
its own number, derived from its PID, in the nanosecond digits. The same property makes a
retried batch (written, but the answer lost) harmless: it overwrites itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import itertools
import logging
import math
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable

import aiohttp

from push_relay import metrics
from push_relay.backends import TYPE_NAMES, Clients
from push_relay.backends._body import read_body
from push_relay.config import InfluxConfig
from push_relay.logs import escape
from push_relay.relay import Outcome
from push_relay.request import PushRequest

log = logging.getLogger("push_relay.influxdb")

REQUEST_TIMEOUT_SECS = 10.0
MAX_BACKOFF_STEPS = 5  # backoff doubles up to 2^5 = 32 times backoff_base (32 s by default)
DROP_LOG_INTERVAL_SECS = 60.0

# Line protocol escapes these three in tag values with a backslash. A backslash before any
# other character is taken literally; one at the end or right before an escaped character
# cannot be written at all, so it becomes `/` (host names never contain one in practice).
_TAG_SPECIAL = re.compile(r"([, =])")
_UNWRITABLE_BACKSLASH = re.compile(r"\\(?=[, =]|$)")


def escape_tag(value: str) -> str:
    """A tag value in line protocol; newlines, which it cannot carry, become spaces."""
    value = value.replace("\r", " ").replace("\n", " ")
    return _TAG_SPECIAL.sub(r"\\\1", _UNWRITABLE_BACKSLASH.sub("/", value))


def started_line(host: str, timestamp_ns: int) -> str:
    return f"started,host={escape_tag(host)} value=1 {timestamp_ns}"


def push_line(host: str, push: PushRequest, success: bool, timestamp_ns: int) -> str:
    kind = TYPE_NAMES[type(push.target)]
    return (
        f"push,host={escape_tag(host)},type={kind},version={push.version},"
        f"success={'true' if success else 'false'} value=1 {timestamp_ns}"
    )


class _Result(enum.Enum):
    WRITTEN = "written"
    REFUSED = "refused"  # InfluxDB will never take these points
    RETRY = "retry"
    DENIED = "denied"  # wrong credentials or rights: retried, but not while shutting down

    @property
    def done(self) -> bool:
        return self in (_Result.WRITTEN, _Result.REFUSED)


def _quote_identifier(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class InfluxSink:
    """A `PushObserver` that records every push in InfluxDB without ever blocking it."""

    def __init__(
        self,
        config: InfluxConfig,
        clients: Clients,
        *,
        host: str | None = None,
        max_points: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        worker_slot: int | None = None,
    ) -> None:
        self._config = config
        self._clients = clients
        self._clock: Callable[[], float] = clients.clock
        self.host = host or socket.gethostname() or "unknown"
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._base = config.connection_string.rstrip("/")
        credentials = f"{config.user}:{config.password}".encode()
        self._headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        self._queue: deque[str] = deque(maxlen=max_points)
        self._last_us = 0
        self._slot = os.getpid() % 1000 if worker_slot is None else worker_slot % 1000
        self.dropped = 0  # points lost since start, for tests and the shutdown log
        self.write_requests = 0  # sent so far, answered or not: tests wait on it
        self._dropped_unreported = 0
        self._last_drop_report = -math.inf
        self._batch_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never the password
        return f"InfluxSink(url={self._base!r}, db={self._config.db!r}, queued={self.queued})"

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- producing points (called by the relay; must return at once) ------------------------

    def start(self) -> None:
        """Queue the `started` point and begin writing in the background; never blocks."""
        self._enqueue(started_line(self.host, self._timestamp()))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="influxdb-writer")

    def observe(self, push: PushRequest, outcome: Outcome) -> None:
        self._enqueue(push_line(self.host, push, outcome.success, self._timestamp()))

    def _timestamp(self) -> int:
        """Nanoseconds, unique across this host's workers (see the module docstring)."""
        self._last_us = max(int(self._clock() * 1e6), self._last_us + 1)
        return self._last_us * 1000 + self._slot

    def _enqueue(self, line: str) -> None:
        if len(self._queue) == self._queue.maxlen:
            self._count_drops(1)  # the deque drops the oldest point on append
        self._queue.append(line)
        metrics.INFLUXDB_QUEUE_DEPTH.set(len(self._queue))
        if len(self._queue) >= self.batch_size:
            self._batch_ready.set()

    def _count_drops(self, count: int) -> None:
        self.dropped += count
        self._dropped_unreported += count
        metrics.INFLUXDB_DROPPED.inc(count)

    def _report_drops(self, *, force: bool = False) -> None:
        now = time.monotonic()
        due = force or now - self._last_drop_report >= DROP_LOG_INTERVAL_SECS
        if self._dropped_unreported and due:
            log.warning(
                "influxdb: dropped %d point(s) (queue full: InfluxDB slow or unreachable)",
                self._dropped_unreported,
            )
            self._dropped_unreported = 0
            self._last_drop_report = now

    # -- writing ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            if (await self._write_batch()).done:
                failures = 0
                await self._wait_for_batch()
            else:
                failures += 1
                await asyncio.sleep(self._backoff(failures))
            self._report_drops()

    def _backoff(self, failures: int) -> float:
        return float(self._clients.backoff_base * 2 ** min(failures - 1, MAX_BACKOFF_STEPS))

    async def _wait_for_batch(self) -> None:
        """Until a full batch is queued or `flush_interval` has passed."""
        if len(self._queue) >= self.batch_size:
            return
        self._batch_ready.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.flush_interval):
                await self._batch_ready.wait()

    async def _write_batch(self) -> _Result:
        """Write the oldest queued points; unless the result is `done`, retry them later.

        The points stay queued until InfluxDB has answered; any that the queue dropped
        meanwhile (it drops from the same end) are not popped twice.
        """
        batch = list(itertools.islice(self._queue, self.batch_size))
        if not batch:
            return _Result.WRITTEN
        dropped_before = self.dropped
        result = await self._write("\n".join(batch).encode())
        if not result.done:
            return result
        done = len(batch) - (self.dropped - dropped_before)
        for _ in range(min(done, len(self._queue))):
            self._queue.popleft()
        metrics.INFLUXDB_QUEUE_DEPTH.set(len(self._queue))
        if result is _Result.REFUSED:
            self._count_drops(max(done, 0))
        return result

    async def _write(self, body: bytes) -> _Result:
        try:
            status, text = await self._post_write(body)
            if status == 404 and "database not found" in text:
                if not await self._create_database():
                    return _Result.RETRY
                status, text = await self._post_write(body)
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("influxdb: write failed: %s", _describe(err))
            return _Result.RETRY
        if status == 204:
            return _Result.WRITTEN
        if status == 400:
            # InfluxDB refused the points themselves (e.g. a field type conflict): retrying
            # cannot help, so the batch is dropped rather than blocking the queue forever.
            log.error("influxdb: write refused, batch dropped: HTTP 400 %s", escape(text, 300))
            return _Result.REFUSED
        log.warning("influxdb: write failed: HTTP %d %s", status, escape(text, 300))
        return _Result.DENIED if status in (401, 403) else _Result.RETRY

    async def _post_write(self, body: bytes) -> tuple[int, str]:
        self.write_requests += 1
        async with self._clients.http.post(
            f"{self._base}/write",
            params={"db": self._config.db, "precision": "ns"},
            data=body,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS),
        ) as answer:
            return answer.status, _text(await read_body(answer))

    async def _create_database(self) -> bool:
        log.info("influxdb: creating database %r", self._config.db)
        async with self._clients.http.post(
            f"{self._base}/query",
            data={"q": f"CREATE DATABASE {_quote_identifier(self._config.db)}"},
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS),
        ) as answer:
            text = _text(await read_body(answer))
        # /query answers 200 even when the statement failed; the error is in the body
        if answer.status != 200 or '"error"' in text:
            log.warning(
                "influxdb: CREATE DATABASE failed: HTTP %d %s", answer.status, escape(text, 300)
            )
            return False
        return True

    # -- shutdown ---------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline, not a wait
        """Stop the writer and flush what is queued, giving up after `timeout` seconds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._flush()
        if self._queue:
            log.warning(
                "influxdb: %d points not written at shutdown (InfluxDB slow or unreachable)",
                len(self._queue),
            )
            metrics.INFLUXDB_DROPPED.inc(len(self._queue))
            self.dropped += len(self._queue)
            self._queue.clear()
            metrics.INFLUXDB_QUEUE_DEPTH.set(0)
        self._report_drops(force=True)

    async def _flush(self) -> None:
        failures = 0
        while self._queue:
            result = await self._write_batch()
            if result is _Result.DENIED:
                return  # credentials will not change in the seconds left
            if result.done:
                failures = 0
            else:
                failures += 1
                await asyncio.sleep(self._backoff(failures))


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT_SECS:.0f} s"
    return str(err) or type(err).__name__

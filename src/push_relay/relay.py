"""The relay proper: hands a validated push to its backend and records the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Histogram

from push_relay import logs, metrics
from push_relay.backends import TYPE_NAMES, Backend, BackendTable, Readiness
from push_relay.errors import FailureKind, PushFailed
from push_relay.logs import TokenHasher
from push_relay.request import HmsTarget, PushRequest, Target

log = logging.getLogger("push_relay.push")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one push ended: the status answered and why."""

    status: int  # 204, 400, 500, 502 or 503
    reason: str  # "delivered" or the failure's reason
    upstream_status: int | None = None
    detail: str = ""
    duration: float = 0.0

    @property
    def success(self) -> bool:
        return self.status == 204


class PushObserver(Protocol):
    """Told about every validated push once it has an outcome; must return at once."""

    def observe(self, push: PushRequest, outcome: Outcome) -> None: ...


class Relay:
    """Routes pushes to backends, caps concurrency and reports each outcome."""

    def __init__(
        self,
        backends: BackendTable,
        *,
        observers: Sequence[PushObserver] = (),
        hasher: TokenHasher | None = None,
        max_in_flight: int = 10_000,
    ) -> None:
        self.backends = backends
        self.observers = list(observers)
        self.hasher = hasher or TokenHasher()
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # metric children resolved once per label set, not on every push
        self._requests: dict[tuple[str, int, str], Counter] = {}
        self._upstream: dict[str, Histogram] = {}

    async def push(self, push: PushRequest) -> Outcome:
        """Relay one push; never raises for a push service's failure."""
        kind = TYPE_NAMES[type(push.target)]
        backend = self.backends.get(type(push.target))
        if self.in_flight >= self.max_in_flight:
            outcome = Outcome(503, "overloaded", detail="too many pushes in flight")
        elif backend is None:
            outcome = Outcome(400, "not_configured", detail="backend not configured")
        else:
            # sent from here, not from a helper coroutine: one frame less to resume per answer
            started = time.perf_counter()
            self.in_flight += 1
            self._idle.clear()
            metrics.IN_FLIGHT.inc()
            failure: PushFailed | None = None
            try:
                await backend.send(push)
            except PushFailed as err:
                failure = err
            except Exception as err:  # a bug in a backend must not drop the client's answer
                log.exception("backend %s crashed", backend.name)
                failure = PushFailed(FailureKind.INTERNAL, "internal_error", type(err).__name__)
            finally:
                self.in_flight -= 1
                metrics.IN_FLIGHT.dec()
                if self.in_flight == 0:
                    self._idle.set()
            duration = time.perf_counter() - started
            if failure is None:
                outcome = Outcome(204, "delivered", duration=duration)
            else:
                status, reason = failure.status, failure.reason
                outcome = Outcome(status, reason, failure.upstream_status, failure.detail, duration)
            self._upstream_seconds(kind).observe(duration)
        self._report(kind, push, outcome)
        return outcome

    def _upstream_seconds(self, kind: str) -> Histogram:
        child = self._upstream.get(kind)
        if child is None:
            child = self._upstream[kind] = metrics.UPSTREAM_SECONDS.labels(kind)
        return child

    def _requests_counter(self, kind: str, status: int, reason: str) -> Counter:
        key = (kind, status, reason)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = metrics.REQUESTS.labels(kind, str(status), reason)
        return child

    def _report(self, kind: str, push: PushRequest, outcome: Outcome) -> None:
        self._requests_counter(kind, outcome.status, outcome.reason).inc()
        for observer in self.observers:
            observer.observe(push, outcome)
        # failures that are not the client's are worth a warning
        level = logging.INFO if outcome.status in (204, 400) else logging.WARNING
        if log.isEnabledFor(level):
            self._log(level, kind, push, outcome)

    def _log(self, level: int, kind: str, push: PushRequest, outcome: Outcome) -> None:
        target = push.target
        secret = push.device
        # an upstream's error text may echo what it was sent: never let the token through
        detail = outcome.detail.replace(secret, "<token>") if secret else outcome.detail
        app = target.app_id if isinstance(target, HmsTarget) else None
        token_hash = self.hasher(secret)
        session = push.session[:10]
        extra = None
        if logs.structured():  # JSON escapes for itself; the values are only cut
            extra = {
                "push_type": kind,
                "app": app and app[: logs.MAX_VALUE_CHARS],
                "outcome": outcome.status,
                "reason": outcome.reason,
                "upstream_status": outcome.upstream_status,
                "duration_ms": round(outcome.duration * 1000, 1),
                "session": session,
                "token_hash": token_hash,
                "detail": detail[: logs.MAX_VALUE_CHARS],
            }
        upstream = "-" if outcome.upstream_status is None else outcome.upstream_status
        # the message is formatted here, once; makeRecord + handle is log.log() without its
        # stack walk. What came from the request or the upstream is escaped: it can neither
        # start a line of its own nor pass for another field.
        message = (
            f"push type={kind}{f' app={logs.escape(app)}' if app else ''} "
            f"outcome={outcome.status} reason={outcome.reason} upstream_status={upstream} "
            f"duration_ms={outcome.duration * 1000:.1f} session={logs.escape(session)} "
            f"device={token_hash}"
        )
        if detail:
            message += ' detail="' + logs.escape(detail) + '"'
        direct = None if extra else logs.direct_text_handler(log)
        if direct is not None:
            handler, formatter = direct
            handler.write_line(
                level, formatter.line(logging.getLevelName(level), log.name, message)
            )
            return
        record = log.makeRecord(log.name, level, __file__, 0, message, (), None, extra=extra)
        log.handle(record)

    async def check_ready(self, timeout: float = 2.0) -> dict[str, Readiness]:  # noqa: ASYNC109
        """Every backend's readiness, checked concurrently, each bounded by `timeout`.

        A backend that hangs or fails is reported under its type name (`fcm`, `hms`, ...).
        """
        checks = [self._check_one(t, b, timeout) for t, b in self.backends.items()]
        states: dict[str, Readiness] = {}
        for result in await asyncio.gather(*checks):
            states.update(result)
        return states

    async def _check_one(
        self,
        target: type[Target],
        backend: Backend,
        timeout: float,  # noqa: ASYNC109
    ) -> dict[str, Readiness]:
        try:
            async with asyncio.timeout(timeout):
                return await backend.check_ready()
        except TimeoutError:
            return {TYPE_NAMES[target]: Readiness(False, f"check timed out after {timeout:g} s")}
        except Exception as err:
            log.warning("readiness check of %s failed: %s", backend.name, type(err).__name__)
            return {TYPE_NAMES[target]: Readiness(False, f"check failed: {type(err).__name__}")}

    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until no push is in flight; False when `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()

"""The relay proper: hands a validated push to its backend and records the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from push_relay import metrics
from push_relay.backends import TYPE_NAMES, Backend, BackendTable, Readiness
from push_relay.errors import FailureKind, PushFailed
from push_relay.logs import TokenHasher
from push_relay.request import GatewayTarget, HmsTarget, PushRequest

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

    async def push(self, push: PushRequest) -> Outcome:
        """Relay one push; never raises for a push service's failure."""
        started = time.perf_counter()
        backend = self.backends.get(type(push.target))
        if self.in_flight >= self.max_in_flight:
            outcome = Outcome(503, "overloaded", detail="too many pushes in flight")
        elif backend is None:
            outcome = Outcome(400, "not_configured", detail="backend not configured")
        else:
            outcome = await self._send(backend, push, started)
        self._report(push, outcome)
        return outcome

    async def _send(self, backend: Backend, push: PushRequest, started: float) -> Outcome:
        self.in_flight += 1
        self._idle.clear()
        metrics.IN_FLIGHT.inc()
        try:
            await backend.send(push)
            outcome = Outcome(204, "delivered", duration=time.perf_counter() - started)
        except PushFailed as failure:
            outcome = Outcome(
                failure.status,
                failure.reason,
                failure.upstream_status,
                failure.detail,
                time.perf_counter() - started,
            )
        except Exception as err:  # a bug in a backend must not drop the client's answer
            log.exception("backend %s crashed", backend.name)
            outcome = Outcome(
                FailureKind.INTERNAL.status, "internal_error", detail=type(err).__name__
            )
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()
            if self.in_flight == 0:
                self._idle.set()
        metrics.UPSTREAM_SECONDS.labels(backend.name).observe(outcome.duration)
        return outcome

    def _report(self, push: PushRequest, outcome: Outcome) -> None:
        kind = TYPE_NAMES[type(push.target)]
        metrics.REQUESTS.labels(kind, str(outcome.status), outcome.reason).inc()
        for observer in self.observers:
            observer.observe(push, outcome)
        if log.isEnabledFor(logging.INFO):
            self._log(kind, push, outcome)

    def _log(self, kind: str, push: PushRequest, outcome: Outcome) -> None:
        target = push.target
        device = target.identity if isinstance(target, GatewayTarget) else self.hasher(target.token)
        upstream = outcome.upstream_status if outcome.upstream_status is not None else "-"
        level = logging.INFO if outcome.status in (204, 400) else logging.WARNING
        extra = {
            "push_type": kind,
            "outcome": outcome.status,
            "reason": outcome.reason,
            "upstream_status": outcome.upstream_status,
            "duration_ms": round(outcome.duration * 1000, 1),
            "session": push.session[:10],
            "token_hash": device,
        }
        app = f" app={target.app_id}" if isinstance(target, HmsTarget) else ""
        detail = f" detail={outcome.detail!r}" if outcome.detail else ""
        log.log(
            level,
            "push type=%s%s outcome=%s reason=%s upstream_status=%s duration_ms=%.1f "
            "session=%s device=%s%s",
            kind,
            app,
            outcome.status,
            outcome.reason,
            upstream,
            outcome.duration * 1000,
            push.session[:10],
            device,
            detail,
            extra=extra,
        )

    async def check_ready(self) -> dict[str, Readiness]:
        states: dict[str, Readiness] = {}
        for backend in self.backends.values():
            states.update(await backend.check_ready())
        return states

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

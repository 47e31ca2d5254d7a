"""The generic cell rate algorithm (GCRA), shared by both stores.

A key holds one number, its theoretical arrival time (TAT). A push at `now` is admitted when
`TAT - tolerance <= now`; the TAT then moves to `max(TAT, now) + interval`. With
`interval = 60 / per_minute` s and `tolerance = (burst - 1) * interval`, a fresh key admits
`burst` pushes at once and then one more every `interval`. Times are integer microseconds so
that both stores (Python here, Lua in Redis) compute exactly the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Rule:
    """One scope's limit, in microseconds."""

    interval: int
    tolerance: int

    @classmethod
    def per_minute(cls, per_minute: int, burst: int) -> Rule:
        interval = max(1, round(60 * MICROS / per_minute))
        return cls(interval, (burst - 1) * interval)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A store's answer for one push: admitted, refused by a scope, or no answer at all."""

    refused: str | None  # None (admitted), "client", "token", or "unavailable"
    retry_after: int = 0  # whole seconds until the next push would be admitted (>= 1)


ADMITTED = Verdict(None)
UNAVAILABLE = Verdict("unavailable", 1)


def retry_after(wait_us: int) -> int:
    """Whole seconds, rounded up, never 0: a client retrying sooner would be refused again."""
    return max(1, -(-wait_us // MICROS))

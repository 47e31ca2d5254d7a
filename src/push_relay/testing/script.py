"""Per-device-token scripted behaviour for simulators."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Script(Generic[T]):
    """What a simulator does for a given token: a queue of behaviours, the last one sticky.

    `script.set("tok", Fail503, Fail503, Ok)` answers 503 twice, then Ok for ever after.
    Tokens with no script get `None`, i.e. the simulator's normal behaviour.
    """

    def __init__(self) -> None:
        self._steps: dict[str, deque[T]] = {}

    def set(self, token: str, *steps: T) -> None:
        if not steps:
            raise ValueError("a script needs at least one step")
        self._steps[token] = deque(steps)

    def clear(self, token: str | None = None) -> None:
        if token is None:
            self._steps.clear()
        else:
            self._steps.pop(token, None)

    def next(self, token: str) -> T | None:
        steps = self._steps.get(token)
        if not steps:
            return None
        return steps.popleft() if len(steps) > 1 else steps[0]

"""The in-process store: each worker counts alone (the default, no Redis)."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

from push_relay.backends import Readiness
from push_relay.logs import KeyedDigest
from push_relay.ratelimit._gcra import ADMITTED, MICROS, Rule, Verdict, retry_after

Table = OrderedDict[bytes, int]


class MemoryStore:
    """GCRA state per hashed key, in this process.

    Each table is kept in order of last admission. A key admitted at `t` holds nothing back
    after `t + tolerance + interval`, so the oldest entries are the first to expire; every
    admission forgets up to two of them, which bounds memory by the admission rate without
    ever scanning a table.
    """

    shared = False

    def __init__(
        self,
        client: Rule | None,
        token: Rule | None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._token = token
        self._clock = clock or time.monotonic
        self._digest = KeyedDigest(os.urandom(32))
        self._clients: Table = OrderedDict()
        self._tokens: Table = OrderedDict()

    async def check(self, client: str | None, target: str | None) -> Verdict:
        now = int(self._clock() * MICROS)
        if client is not None and self._client is not None:
            wait = _take(self._clients, self._client, self._digest(client), now)
            if wait:
                return Verdict("client", retry_after(wait))
        if target is not None and self._token is not None:
            wait = _take(self._tokens, self._token, self._digest(target), now)
            if wait:
                return Verdict("token", retry_after(wait))
        return ADMITTED

    async def readiness(self) -> Readiness:
        return Readiness(True, "counted in this process")

    def __len__(self) -> int:
        """Keys remembered, over both scopes."""
        return len(self._clients) + len(self._tokens)

    async def aclose(self) -> None:
        self._clients.clear()
        self._tokens.clear()


def _take(table: Table, rule: Rule, key: bytes, now: int) -> int:
    """Admit (0) or the microseconds until `key` would be admitted."""
    tat = table.get(key, now)
    if tat < now:
        tat = now
    wait = tat - rule.tolerance - now
    if wait > 0:
        return wait
    table[key] = tat + rule.interval
    table.move_to_end(key)
    for _ in range(2):
        oldest = next(iter(table))
        if table[oldest] > now:
            break
        del table[oldest]
    return 0

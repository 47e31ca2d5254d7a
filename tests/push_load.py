"""A steady load of pushes for tests that change the relay under it (reload, fleet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PACE_SECS = 0.01  # between two pushes of one client: a steady load, not a benchmark


class PushLoad:
    """Four clients pushing in a paced loop over keep-alive connections, recording every
    answer; each stops at the end of the block, after `limit` pushes in all or `seconds`.
    Client i sends forms[i], forms[i + 1], ... in turn."""

    def __init__(
        self,
        url: str,
        forms: list[Callable[[], dict[str, str]]],
        session: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        limit: int = 20_000,
        seconds: float = 60.0,
    ) -> None:
        self.url = url
        self.forms = forms
        self.statuses: list[int | str] = []
        self._new_session = session
        self._limit = limit
        self._seconds = seconds
        self._stop = asyncio.Event()
        self._answered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> PushLoad:
        self._session = self._new_session()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(4)]
        await self.wait_for(20)  # the load is flowing before anything changes
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def wait_for(self, more: int) -> None:
        """Until `more` further pushes have been answered."""
        target = len(self.statuses) + more
        async with asyncio.timeout(30):
            while len(self.statuses) < target:
                self._answered.clear()
                await self._answered.wait()

    async def _client(self, index: int) -> None:
        deadline = time.monotonic() + self._seconds
        n = index
        while not self._stop.is_set() and len(self.statuses) < self._limit:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(PACE_SECS)
            form = self.forms[n % len(self.forms)]()
            n += 1
            try:
                async with self._session.post(self.url + "/push", data=form, headers=FORM) as r:
                    await r.read()
                    self.statuses.append(r.status)
            except aiohttp.ClientError as err:  # refused or reset: a failed push
                self.statuses.append(type(err).__name__)
            self._answered.set()

    def failures(self) -> list[int | str]:
        return [s for s in self.statuses if s != 204]

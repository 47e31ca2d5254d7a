"""Upstream auth tokens (OAuth access tokens, APNs provider JWTs), cached with single flight.

Every backend gets its tokens through `TokenCache.get(key, fetch)`: while a token is valid it
is returned at once; when it is missing or due, exactly one `fetch()` runs and every concurrent
caller waits for its result, so a burst of pushes never causes a burst of token requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    refresh_at: float  # clock time from which a new token should be fetched
    issued_at: float = 0.0


Fetch = Callable[[], Awaitable[Token]]


class TokenCache:
    """Tokens by key (e.g. `fcm`, `hms:<app-id>`, `apns:<key-id>`), refreshed on demand."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._tokens: dict[str, Token] = {}
        self._pending: dict[str, asyncio.Future[Token]] = {}

    def peek(self, key: str) -> Token | None:
        """The cached token, valid or not, without fetching."""
        return self._tokens.get(key)

    async def get(self, key: str, fetch: Fetch) -> Token:
        """A valid token for `key`; fetches (once, for all waiters) when there is none."""
        token = self._tokens.get(key)
        if token is not None and self.clock() < token.refresh_at:
            return token
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[key] = pending
            try:
                token = await fetch()
            except BaseException as err:
                pending.set_exception(err)
                pending.exception()  # waiters get it; nobody else needs to retrieve it
                raise
            else:
                self._tokens[key] = token
                pending.set_result(token)
            finally:
                del self._pending[key]
            return token
        return await asyncio.shield(pending)

    def invalidate(self, key: str, value: str | None = None) -> None:
        """Forget the token for `key` (only if it is still `value`, when given)."""
        token = self._tokens.get(key)
        if token is not None and (value is None or token.value == value):
            del self._tokens[key]

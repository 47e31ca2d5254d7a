"""Upstream auth tokens (OAuth access tokens, APNs provider JWTs), cached with single flight.

Every backend gets its tokens through `TokenCache.get(key, fetch)`: while a token is valid it
is returned at once; when it is missing or due, exactly one `fetch()` runs and every concurrent
caller waits for its result, so a burst of pushes never causes a burst of token requests.

With `--workers N` the cache of each worker is backed by a `SharedTokenStore` (see
`push_relay.workers` for the whole design): a token one worker fetched or signed is written to
a file in the relay's private state directory, and the other workers adopt it instead of
fetching their own. A cross-process `fcntl` lock per key makes the fetch single-flight across
workers too, so N workers cause as much auth traffic as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    refresh_at: float  # clock time from which a new token should be fetched
    issued_at: float = 0.0


Fetch = Callable[[], Awaitable[Token]]


def credential_key(kind: str, *credential: str) -> str:
    """The cache key of the tokens one credential obtains, e.g. `fcm:<digest>`.

    It changes with the credential, so after a reload with a new key or account no worker
    adopts a token the old credential obtained; the digest keeps secrets out of the key.
    """
    digest = hashlib.sha256("\0".join(credential).encode()).hexdigest()[:16]
    return f"{kind}:{digest}"


class SharedTokenStore:
    """Tokens shared between the worker processes of one relay, one file per key.

    Files are written atomically (write, then rename), so readers take no lock; the lock
    only serializes fetchers. The directory is private to the relay's user (mode 0700).
    """

    def __init__(self, directory: str | Path, lock_timeout: float = 30.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout

    def _path(self, key: str, suffix: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + suffix)

    def read(self, key: str) -> Token | None:
        try:
            data = json.loads(self._path(key, ".json").read_bytes())
            return Token(data["value"], float(data["refresh_at"]), float(data["issued_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or torn by a crash: fetch a fresh one

    def write(self, key: str, token: Token) -> None:
        path = self._path(key, ".json")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        data = {"value": token.value, "refresh_at": token.refresh_at, "issued_at": token.issued_at}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(data, file)
        os.replace(tmp, path)

    def remove(self, key: str, value: str) -> None:
        """Forget the shared token for `key` if it still is `value`."""
        token = self.read(key)
        if token is not None and token.value == value:
            with contextlib.suppress(FileNotFoundError):
                self._path(key, ".json").unlink()

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Hold the cross-process lock for `key` without blocking the event loop.

        After `lock_timeout` the caller proceeds anyway: a hung fetch in another worker must
        not stop this one from ever getting a token (the lock dies with its holder's process).
        """
        fd = os.open(self._path(key, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.lock_timeout
            locked = False
            delay = 0.002
            while not locked and loop.time() < deadline:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except BlockingIOError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


class TokenCache:
    """Tokens by key (e.g. `fcm`, `hms:<app-id>`, `apns:<key-id>`), refreshed on demand."""

    def __init__(
        self, clock: Callable[[], float] = time.time, store: SharedTokenStore | None = None
    ) -> None:
        self.clock = clock
        self.store = store
        self._tokens: dict[str, Token] = {}
        self._pending: dict[str, asyncio.Future[Token]] = {}

    def _fresh(self, token: Token | None) -> Token | None:
        return token if token is not None and self.clock() < token.refresh_at else None

    def valid(self, key: str) -> Token | None:
        """The cached token while it is not due for refresh; no fetch, no coroutine (the hot
        path of every push)."""
        return self._fresh(self._tokens.get(key))

    async def get(self, key: str, fetch: Fetch) -> Token:
        """A valid token for `key`; fetches (once, for all waiters) when there is none."""
        token = self.valid(key)
        if token is not None:
            return token
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[key] = pending
            try:
                token = await self._obtain(key, fetch)
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

    async def _obtain(self, key: str, fetch: Fetch) -> Token:
        store = self.store
        if store is None:
            return await fetch()
        token = self._fresh(store.read(key))
        if token is not None:
            return token  # another worker fetched it
        async with store.lock(key):
            token = self._fresh(store.read(key))
            if token is not None:
                return token  # fetched by the worker that held the lock before us
            token = await fetch()
            store.write(key, token)
            return token

    def invalidate(self, key: str, value: str | None = None) -> None:
        """Forget the token for `key` (only if it is still `value`, when given)."""
        token = self._tokens.get(key)
        if token is not None and (value is None or token.value == value):
            del self._tokens[key]
        stale = value if value is not None else (token.value if token is not None else None)
        if self.store is not None and stale is not None:
            # only the token this worker saw fail: another may already have a fresh one
            self.store.remove(key, stale)

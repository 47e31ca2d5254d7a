"""Reload on SIGHUP: read and check the config again, then serve new pushes with it.

- **Check.** The file is read and every backend is built from it, exactly as at start-up
  (one process builds its new runtime; the supervisor and `push-relay reload -c` call
  `load_checked`). A defect is one error line naming the file and key; the relay keeps
  serving with the config it has, and nothing else happens.
- **One process.** The app builds a new `Runtime` (backends, upstream clients, sinks) and swaps
  it in at once; pushes in flight finish on the old runtime, whose connections are then closed
  (`PushRelayApp.use_config`).
- **`--workers N`.** The supervisor checks the config, then replaces its workers one at a time:
  a new worker starts on the same listening socket, and only once it serves is its predecessor
  told to drain (`push_relay.workers`).
- **Log.** When the new config serves, one line names the sections that changed (never
  values) and the settings that only a restart applies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from push_relay import config
from push_relay.config import Config, ServerConfig
from push_relay.errors import ConfigError

if TYPE_CHECKING:  # the supervisor uses this module without loading the app
    from push_relay.app import PushRelayApp

log = logging.getLogger("push_relay")

_NOT_SECTIONS = {"path", "warnings"}
REFUSED = "reload refused, the previous config still serves"


def load_checked(path: str) -> Config:
    """The config at `path`, validated as start-up does (backends built, key files parsed);
    `ConfigError` naming the file (and key) otherwise. Runs its own event loop."""
    cfg = config.load(path)
    try:
        asyncio.run(_build_backends(cfg))
    except Exception as err:  # a backend refused its section: still one line, no traceback
        raise ConfigError(path, str(err)) from None
    return cfg


async def _build_backends(cfg: Config) -> None:
    from push_relay.backends import Clients, build_backends

    clients = Clients()
    try:
        for backend in build_backends(cfg, clients).values():
            await backend.aclose()
    finally:
        await clients.aclose()


def with_hash_key(cfg: Config, key: str | None = None) -> Config:
    """`cfg` with a log hash key when it sets none: `key`, or a random one drawn once per
    relay so that a device hashes the same in every worker and across reloads."""
    if cfg.server.log_hash_key is not None:
        return cfg
    server = dataclasses.replace(cfg.server, log_hash_key=key or secrets.token_hex(32))
    return dataclasses.replace(cfg, server=server)


def keep_hash_key(old: Config, new: Config) -> Config:
    """`new`, keeping the log hash key drawn for `old` when `new` sets none, so a device's
    hash in the log stays the same across a reload."""
    drawn = old.server.log_hash_key
    return new if drawn is None else with_hash_key(new, drawn)


def changed_sections(old: Config, new: Config) -> list[str]:
    """Names of the sections that differ, e.g. `fcm`, `hms.<app> (added)`; never values."""
    changes: list[str] = []
    for f in dataclasses.fields(Config):
        if f.name in _NOT_SECTIONS:
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(_changed_apps(f.name, before, after))
        elif before != after:
            if before is None or after is None:
                changes.append(f"{f.name} ({'added' if before is None else 'removed'})")
            else:
                changes.append(f.name)
    return changes


def _changed_apps(section: str, before: dict[str, object], after: dict[str, object]) -> list[str]:
    changes = []
    for app in sorted(before.keys() | after.keys()):
        if app not in before:
            changes.append(f"{section}.{app} (added)")
        elif app not in after:
            changes.append(f"{section}.{app} (removed)")
        elif before[app] != after[app]:
            changes.append(f"{section}.{app}")
    return changes


def changed_keys(old: object, new: object, section: str, keys: Iterable[str]) -> list[str]:
    """Which of `keys` differ between two versions of a section (e.g. `server.admin_listen`)."""
    return [f"{section}.{key}" for key in keys if getattr(old, key) != getattr(new, key)]


def log_reloaded(old: Config, new: Config, restart_only: Iterable[str] = ()) -> None:
    """The one line that says a reload finished and what it changed."""
    changes = changed_sections(old, new)
    text = ", ".join(changes) if changes else "nothing (connections renewed)"
    pending = list(restart_only)
    if pending:
        text += f"; needs a restart to apply: {', '.join(pending)}"
    log.info("reload: %s now serves; changed: %s", new.path, text)


# `[server]` keys a running process applies on reload; the others shape its listener
# (timeouts, limits, admin address) and take effect at the next start (or, with
# `--workers N`, with the new workers)
LIVE_SERVER_KEYS = frozenset({"cors_origins", "max_in_flight", "log_hash_key"})


class Reloader:
    """Reloads one process's app on request; requests during a reload coalesce into one more."""

    def __init__(self, app: PushRelayApp) -> None:
        self.app = app
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """Start a reload now, or right after the one that is running (from a signal)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            await self.reload()

    async def reload(self) -> None:
        """Reload once; a refused config is one error line, and the old one serves on."""
        old = self.app.config
        if self.app.runtime is None or self.app.draining:
            log.warning("reload: ignored while the relay is starting or stopping")
            return
        try:
            # reading the file blocks for a moment at most; key files are small
            new = keep_hash_key(old, config.load(old.path))
            await self.app.use_config(new)
        except Exception as err:  # also a backend refusing its section, as at start-up
            log_refused(err, old.path)
            return
        log_warnings(new)
        pending = changed_keys(old.server, new.server, "server", _restart_only_server_keys())
        log_reloaded(old, new, pending)


def log_refused(err: Exception, path: str) -> None:
    """The one error line of a refused reload."""
    text = str(err) if isinstance(err, ConfigError) else f"{path}: {err}"
    log.error("%s: config error: %s", REFUSED, text)


def log_warnings(cfg: Config) -> None:
    for warning in cfg.warnings:
        log.warning("%s", warning)


def _restart_only_server_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(ServerConfig) if f.name not in LIVE_SERVER_KEYS]

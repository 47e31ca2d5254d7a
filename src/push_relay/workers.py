"""`--workers N`: N worker processes behind one port, supervised by the parent.

Design
------
- **Sockets.** The parent binds one listening socket per worker on the same address with
  `SO_REUSEPORT`, so the kernel spreads connections evenly; each worker (forked) serves its own
  socket with its own event loop and its own upstream connections. The parent keeps every
  socket open, so connections that arrive while a crashed worker restarts wait in its backlog
  instead of being refused.
- **Supervision.** A worker that exits without being asked to is restarted, at most
  `MAX_RESTARTS` times per `RESTART_WINDOW_SECS`; beyond that the relay is considered broken,
  every worker is stopped and the parent exits 1. On SIGTERM/SIGINT the parent closes the
  listening sockets, forwards SIGTERM to every worker, waits for each to drain (each bounded by
  `[server] shutdown_grace_secs`) and exits 0.
- **Reload.** On SIGHUP the parent reads and checks the config again (an invalid one is one
  error line; the workers keep serving). A valid one replaces the workers one at a time
  (`push_relay.rollout`): a new worker serves the slot's socket before its predecessor drains
  (SIGUSR2: as SIGTERM, but a kept-alive client gets a moment for a request already sent), so
  no connection is refused and no request reset. Workers themselves ignore SIGHUP.
- **State directory.** The parent creates a private directory (mode 0700) that is removed at
  exit; it holds `metrics/` (`PROMETHEUS_MULTIPROC_DIR`: each worker's counters in
  memory-mapped files, summed by whichever worker answers `/metrics`; a dead worker's live
  gauges are dropped with `mark_process_dead`) and `tokens/`.
- **Auth tokens.** Workers must not multiply auth traffic (APNs answers
  `TooManyProviderTokenUpdates` when provider tokens churn; OAuth endpoints rate-limit). Each
  worker's `TokenCache` is backed by a `SharedTokenStore` in `tokens/`: before fetching or
  signing a token, a worker takes a per-key `fcntl` lock, re-reads the store and adopts a
  token another worker already obtained; only when there is none (or it is due) does it fetch,
  then writes it for the others. So N workers fetch an OAuth token, or sign an APNs JWT, as
  often as one worker would. A token rejected upstream is removed from the store only if it
  is still the rejected one, so a worker cannot throw away a sibling's fresh token.
- **Log hashes.** Without `[server] log_hash_key`, the parent draws one random key for all its
  workers so a device hashes the same whichever worker relays its push.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from push_relay import reload
from push_relay.address import bind
from push_relay.config import Config
from push_relay.errors import ConfigError
from push_relay.rollout import RETIRE_SIGNAL, Rollout

if TYPE_CHECKING:  # imported lazily at run time: metrics must not load before the state dir
    from push_relay.app import PushRelayApp

log = logging.getLogger("push_relay.workers")

MAX_RESTARTS = 5
RESTART_WINDOW_SECS = 60.0
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}
ROLLOUT_TICK_SECS = 0.02  # how often a rollout looks whether the new worker serves yet
# [server] keys the supervisor itself uses once, at start-up
SUPERVISOR_SERVER_KEYS = ("admin_listen",)
PR_SET_PDEATHSIG = 1


def create_state_dir() -> Path:
    """The relay's private state directory; call before anything imports the metrics."""
    path = Path(tempfile.mkdtemp(prefix="push-relay-"))
    (path / "metrics").mkdir()
    (path / "tokens").mkdir(mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path / "metrics")
    return path


def remove_state_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets sharing one address through SO_REUSEPORT."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = bind(host, port, reuse_port=True)
            sockets.append(sock)
            port = sock.getsockname()[1]  # with port 0, the others follow the first
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Supervisor:
    """Forks, watches and stops the workers; `run()` returns the parent's exit status."""

    def __init__(self, config: Config, host: str, port: int, count: int, state: Path) -> None:
        self.config = config  # its log hash key is drawn already (`cli`), for every worker
        self.host = host
        self.state = state
        self.sockets = bind_sockets(host, port, count)
        self.port: int = self.sockets[0].getsockname()[1]
        admin = config.server.admin_listen
        try:
            # one admin socket per worker too: whichever answers /metrics sums them all
            self.admin_sockets = [] if admin is None else bind_sockets(*admin, count)
        except OSError:
            for sock in self.sockets:
                sock.close()
            raise
        self.workers: dict[int, int] = {}  # pid -> slot
        self.rollout: Rollout | None = None
        self.restarts: collections.deque[float] = collections.deque()
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for slot in range(len(self.sockets)):
                self.spawn(slot)
            log.info("%d workers serving on %s:%d", len(self.sockets), self.host, self.port)
            while self.workers or (self.rollout and self.rollout.retiring):
                tick = 1.0 if self.rollout is None else ROLLOUT_TICK_SECS
                info = signal.sigtimedwait(SIGNALS, tick)
                if info is not None and info.si_signo == signal.SIGHUP:
                    self._reload()
                elif info is not None and info.si_signo != signal.SIGCHLD:
                    self._stop(f"received {signal.Signals(info.si_signo).name}")
                self._reap()
                self._roll()
        finally:
            for sock in [*self.sockets, *self.admin_sockets]:
                sock.close()
            if self.rollout is not None:
                self.rollout.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        return self.status

    def spawn(self, slot: int) -> int:
        """Fork a worker serving `slot`'s socket with the current config; returns its pid."""
        ready_read, ready_write = os.pipe()  # the worker writes one byte once it serves
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            status = 1
            try:
                os.close(ready_read)
                status = self._work(slot, ready_write)
            except BaseException:
                log.exception("worker crashed")
            finally:
                os._exit(status)
        os.close(ready_write)
        self.workers[pid] = slot
        if self.rollout is not None:
            os.set_blocking(ready_read, False)
            self.rollout.watch(pid, ready_read)
        else:
            os.close(ready_read)
        log.info("worker %d started (pid %d)", slot, pid)
        return pid

    def retire(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, RETIRE_SIGNAL)

    def _work(self, slot: int, ready: int) -> int:
        _stop_with_parent()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the supervisor's business
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        mine = [self.sockets[slot], *self.admin_sockets[slot : slot + 1]]
        for sock in [*self.sockets, *self.admin_sockets]:
            if sock not in mine:
                sock.close()
        from push_relay.server import serve

        def started() -> None:
            with contextlib.suppress(OSError):  # nobody waits for it: not a reload
                os.write(ready, b"1")
            os.close(ready)

        app = worker_app(self.config, self.state / "tokens")
        return serve(app, self.host, self.port, *mine, on_started=started)

    def _reload(self) -> None:
        if self.stopping:
            return
        try:
            new = reload.keep_hash_key(self.config, reload.load_checked(self.config.path))
        except ConfigError as err:
            reload.log_refused(err, self.config.path)
            return
        reload.log_warnings(new)
        log.info("reload: replacing %d workers one at a time", len(self.sockets))
        if self.rollout is None:
            self.rollout = Rollout(self, self.config, len(self.sockets))
        else:
            self.rollout.restart(len(self.sockets))
        self.config = new

    def _roll(self) -> None:
        rollout = self.rollout
        if rollout is None or self.stopping:
            return
        rollout.advance()
        if rollout.done:
            rollout.close()
            self.rollout = None
            old = rollout.previous
            pending = reload.changed_keys(
                old.server, self.config.server, "server", SUPERVISOR_SERVER_KEYS
            )
            reload.log_reloaded(old, self.config, pending)

    def _reap(self) -> None:
        # also when no current worker is left: a retired one may still be draining, and the
        # run loop waits for it
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child at all
                self.workers.clear()
                if self.rollout is not None:
                    self.rollout.retiring.clear()
                return
            if pid == 0:
                return
            slot = self.workers.pop(pid, None)
            _mark_dead(pid)
            if self.rollout is not None and self.rollout.exited(pid):
                log.info("worker (pid %d) drained and exited", pid)
                continue
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                log.info("worker %d (pid %d) exited with status %d", slot, pid, code)
                # a worker still starting up has no handler yet: SIGTERM simply ends it
                if code not in (0, -signal.SIGTERM):
                    self.status = 1
            else:
                self._restart(slot, pid, code)

    def _restart(self, slot: int, pid: int, code: int) -> None:
        log.error("worker %d (pid %d) exited unexpectedly with status %d", slot, pid, code)
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_SECS:
            self.restarts.popleft()
        if len(self.restarts) >= MAX_RESTARTS:
            log.error(
                "%d restarts within %.0f s: giving up", len(self.restarts), RESTART_WINDOW_SECS
            )
            self.status = 1
            self._stop("too many worker restarts")
            return
        self.restarts.append(now)
        new_pid = self.spawn(slot)
        if self.rollout is not None:
            self.rollout.replaced(pid, new_pid)

    def _stop(self, why: str) -> None:
        if not self.stopping:
            log.info("%s: draining %d workers", why, len(self.workers))
            self.stopping = True
            for sock in [*self.sockets, *self.admin_sockets]:  # refused, not left waiting
                sock.close()
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def worker_app(config: Config, token_dir: Path) -> PushRelayApp:
    """The app of one worker: its runtime shares auth tokens with its siblings."""
    from push_relay.app import PushRelayApp
    from push_relay.auth import SharedTokenStore, TokenCache
    from push_relay.backends import Clients
    from push_relay.runtime import Runtime

    store = SharedTokenStore(token_dir)

    async def start_runtime(cfg: Config) -> Runtime:
        return await Runtime.start(cfg, Clients(tokens=TokenCache(store=store)))

    return PushRelayApp(config, runtime_factory=start_runtime)


def _stop_with_parent() -> None:
    """Have the kernel send SIGTERM (drain) to this worker if the supervisor dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def run_workers(config: Config, host: str, port: int, count: int, state: Path) -> int:
    try:
        supervisor = Supervisor(config, host, port, count, state)
    except OSError as err:  # `bind` names the address
        log.error("%s", err.strerror or err)
        return 1
    return supervisor.run()

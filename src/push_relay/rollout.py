"""Replacing the workers of `--workers N` one at a time, for a reload (SIGHUP).

For each slot in turn: a new worker is forked with the new config and serves the slot's
listening socket (which the supervisor keeps open, so it never stops listening); once the new
worker reports that it serves, its predecessor is told to drain (`RETIRE_SIGNAL`: as SIGTERM,
but a kept-alive client gets a moment for a request it is sending) and the next slot waits
until the predecessor has exited. At any moment every slot has a worker accepting
connections, and the relay runs at most N + 1 workers.
"""

from __future__ import annotations

import collections
import os
import signal
from dataclasses import dataclass, field
from typing import Protocol

from push_relay.config import Config

# tells a worker to drain because a successor serves its socket (`push_relay.server`)
RETIRE_SIGNAL = signal.SIGUSR2


class Workers(Protocol):
    """What a rollout needs from the supervisor."""

    workers: dict[int, int]  # pid -> slot, the workers serving (not those draining)

    def spawn(self, slot: int) -> int:
        """Fork a worker for `slot` with the current config; returns its pid."""
        ...

    def retire(self, pid: int) -> None:
        """Tell worker `pid` to drain: a successor serves its socket."""
        ...


@dataclass
class Step:
    slot: int
    new_pid: int
    serving: bool = False  # new_pid said it serves
    old_pids: list[int] = field(default_factory=list)  # then told to drain


class Rollout:
    """One reload in progress; `advance()` is called by the supervisor's loop."""

    def __init__(self, supervisor: Workers, previous: Config, slots: int) -> None:
        self.supervisor = supervisor
        self.previous = previous  # the config being replaced, for the log line
        self.pending = collections.deque(range(slots))
        self.step: Step | None = None
        self.retiring: set[int] = set()
        self.ready_fds: dict[int, int] = {}  # pid -> read end of its "serving" pipe

    @property
    def done(self) -> bool:
        return self.step is None and not self.pending

    def restart(self, slots: int) -> None:
        """A newer config arrived: every slot is replaced again (the current step goes on)."""
        self.pending = collections.deque(range(slots))

    def advance(self) -> None:
        """Move the rollout on as far as it can go without waiting."""
        while True:
            if self.step is None:
                if not self.pending:
                    return
                slot = self.pending.popleft()
                self.step = Step(slot, self.supervisor.spawn(slot))
            step = self.step
            if not step.serving:
                if not self._serving(step.new_pid):
                    return
                step.serving = True
                step.old_pids = self._retire(step.slot, step.new_pid)
            if any(pid in self.retiring for pid in step.old_pids):
                return  # drain one predecessor at a time
            self.step = None

    def replaced(self, pid: int, new_pid: int) -> None:
        """Worker `pid` of the current step died before serving; `new_pid` takes its place."""
        if self.step is not None and self.step.new_pid == pid:
            self.step.new_pid = new_pid
        self._forget(pid)

    def exited(self, pid: int) -> bool:
        """Note that `pid` exited; True if it was a worker this rollout told to drain."""
        self._forget(pid)
        if pid in self.retiring:
            self.retiring.discard(pid)
            return True
        return False

    def watch(self, pid: int, ready_fd: int) -> None:
        """`ready_fd` (non-blocking) will carry one byte once worker `pid` serves."""
        self.ready_fds[pid] = ready_fd

    def close(self) -> None:
        for pid in list(self.ready_fds):
            self._forget(pid)

    def _serving(self, pid: int) -> bool:
        fd = self.ready_fds.get(pid)
        if fd is None:
            return False
        try:
            said = os.read(fd, 1)
        except BlockingIOError:
            return False
        if not said:  # exited without serving: the supervisor restarts it
            return False
        self._forget(pid)
        return True

    def _retire(self, slot: int, successor: int) -> list[int]:
        workers = self.supervisor.workers
        old = [pid for pid, s in workers.items() if s == slot and pid != successor]
        for pid in old:
            del workers[pid]
            self.retiring.add(pid)
            self.supervisor.retire(pid)
        return old

    def _forget(self, pid: int) -> None:
        fd = self.ready_fds.pop(pid, None)
        if fd is not None:
            os.close(fd)

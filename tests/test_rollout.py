"""The order of a `--workers N` reload (push_relay.rollout), against a stand-in supervisor:
a slot's predecessor drains only once its successor serves, and one slot at a time."""

from __future__ import annotations

import itertools
import os

from push_relay.config import Config
from push_relay.rollout import Rollout


class FakeSupervisor:
    """Spawns pretend workers: each gets a real "serving" pipe the test writes to."""

    def __init__(self, slots: int) -> None:
        self._pids = itertools.count(100)
        self.workers: dict[int, int] = {next(self._pids): slot for slot in range(slots)}
        self.retired: list[int] = []
        self.spawned: list[int] = []
        self.rollout: Rollout | None = None
        self._ready: dict[int, int] = {}  # pid -> write end

    def spawn(self, slot: int) -> int:
        pid = next(self._pids)
        read, write = os.pipe()
        os.set_blocking(read, False)
        self.workers[pid] = slot
        self.spawned.append(pid)
        self._ready[pid] = write
        assert self.rollout is not None
        self.rollout.watch(pid, read)
        return pid

    def retire(self, pid: int) -> None:
        self.retired.append(pid)

    def serves(self, pid: int) -> None:
        os.write(self._ready.pop(pid), b"1")

    def dies(self, pid: int) -> None:
        os.close(self._ready.pop(pid))
        self.workers.pop(pid, None)

    def close(self) -> None:
        for fd in self._ready.values():
            os.close(fd)


def start(slots: int) -> tuple[FakeSupervisor, Rollout]:
    supervisor = FakeSupervisor(slots)
    rollout = Rollout(supervisor, Config("relay.toml"), slots)
    supervisor.rollout = rollout
    return supervisor, rollout


def test_a_predecessor_drains_only_once_its_successor_serves_one_slot_at_a_time() -> None:
    supervisor, rollout = start(2)  # workers 100 (slot 0) and 101 (slot 1)
    try:
        rollout.advance()
        assert ([102], []) == (supervisor.spawned, supervisor.retired)

        supervisor.serves(102)
        rollout.advance()
        assert ([102], [100]) == (supervisor.spawned, supervisor.retired)  # slot 1 waits

        assert rollout.exited(100)
        rollout.advance()
        assert [102, 103] == supervisor.spawned
        supervisor.serves(103)
        rollout.advance()
        assert [100, 101] == supervisor.retired
        assert not rollout.done

        assert rollout.exited(101)
        rollout.advance()
        assert rollout.done
        assert {102: 0, 103: 1} == supervisor.workers
    finally:
        rollout.close()
        supervisor.close()


def test_a_successor_that_dies_before_serving_leaves_its_predecessor_serving() -> None:
    supervisor, rollout = start(1)
    try:
        rollout.advance()
        supervisor.dies(101)
        rollout.advance()
        assert [] == supervisor.retired

        rollout.replaced(101, supervisor.spawn(0))  # the supervisor restarts the slot
        supervisor.serves(102)
        rollout.advance()
        assert [100] == supervisor.retired
        assert not rollout.exited(101)  # not one this rollout told to drain
    finally:
        rollout.close()
        supervisor.close()


def test_a_newer_config_during_a_rollout_replaces_every_slot_again() -> None:
    supervisor, rollout = start(2)
    try:
        rollout.advance()
        supervisor.serves(102)
        rollout.advance()
        rollout.restart(2)
        rollout.exited(100)
        rollout.advance()

        assert [102, 103] == supervisor.spawned  # slot 0 again, with the newest config
        supervisor.serves(103)
        rollout.advance()
        assert [100, 102] == supervisor.retired
    finally:
        rollout.close()
        supervisor.close()

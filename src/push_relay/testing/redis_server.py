"""A real `redis-server` on a free loopback port, for the rate-limit tests and the benchmark.

Nothing is persisted (`--save '' --appendonly no`), its files live in a directory of the
caller's, and it is stopped by its PID. It can be frozen (SIGSTOP) and thawed, stopped and
started again on the same port, as an operator's Redis might be.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from push_relay.testing import child
from push_relay.testing.ports import free_port

MISSING = "redis-server is not installed: apt-get install redis-server"


class RedisServer:
    """One `redis-server` process; `start()` (again after `stop()`) on the same port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError(MISSING)
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        command += ["--protected-mode", "no", "--loglevel", "warning"]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10.0
        while not self._answers_ping():
            if self.process.poll() is not None:
                log_text = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited at start-up:\n{log_text}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        assert self.process is not None
        child.freeze(self.process)

    def thaw(self) -> None:
        assert self.process is not None
        child.thaw(self.process)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, should it be frozen), SIGKILL if it does not exit."""
        process, self.process = self.process, None
        if process is not None:
            child.stop(process)

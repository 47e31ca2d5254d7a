"""Stopping and freezing a server process the tests started (this PID only)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (after SIGCONT: a frozen process cannot handle it), SIGKILL if it is still
    there after `timeout` seconds."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGCONT)
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def freeze(process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP: its connections stay open, nothing is answered."""
    os.kill(process.pid, signal.SIGSTOP)


def thaw(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGCONT)

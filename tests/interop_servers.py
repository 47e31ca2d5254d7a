"""The interop servers as processes: start on a free loopback port, wait until TLS + h2 is
accepted, reload, kill, restart on the same port; and what their logs say.

Each server runs as our own process group (config, logs and PID file in a temp dir, never the
system service), so a kill takes its master and workers at once. Configurations are in
`interop_configs.py`; the back end behind the proxies is `interop_backend.py`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from interop_configs import TOOLS, command
from push_relay.testing.ca import TestCA
from push_relay.testing.ports import free_port

BACKEND = Path(__file__).with_name("interop_backend.py")

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, no flags, stream 0


_STARTED = "--- started\n"  # written to a server's own log before each start
_NGHTTPD_REQUEST = r"^\[id=(\d+)\].* recv HEADERS frame"
_NGHTTPD_DATA = r"^\[id=(\d+)\].* recv DATA frame <length=(\d+), flags=\w+, stream_id=(\d+)>"


class ToolMissing(AssertionError):
    """A server binary is not installed: the message is the command that installs it."""


def require(name: str) -> None:
    binary, package = TOOLS[name]
    if shutil.which(binary) is None:
        raise ToolMissing(f"{binary} is missing: run `apt-get install -y {package}`")


def version(name: str) -> str:
    """The server's own version line (`nginx -v`, `apache2 -v`, ...)."""
    require(name)
    binary = TOOLS[name][0]
    flag = "-v" if name in ("nginx", "apache") else "--version"
    out = subprocess.run([binary, flag], capture_output=True, text=True, check=False, timeout=10)
    return (out.stdout + out.stderr).strip().splitlines()[0]


@dataclass
class Server:
    """One server (and its back end), stopped and started again by `restart()` on its port."""

    name: str
    ca: TestCA
    directory: Path
    port: int = field(default_factory=free_port)
    backend_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    backend: subprocess.Popen[bytes] | None = None
    version: str = ""  # the server's own version line, known once started

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / ("server.log" if self.name == "nghttpd" else "access.log")

    def start(self) -> None:
        self.version = version(self.name)  # fails first, naming the package, if it is missing
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.name != "nghttpd" and self.backend is None:
            self.backend = _spawn(
                [sys.executable, str(BACKEND), str(self.backend_port)],
                self.directory / "backend.log",
            )
            _wait_accepting(self.backend, self.backend_port, None, self.directory / "backend.log")
        self._start_server()

    def stop(self) -> None:
        """Kill the server's process group and the back end (nothing of theirs is kept)."""
        for process in (self.process, self.backend):
            if process is not None:
                _kill_group(process)

    def kill(self) -> None:
        """SIGKILL the whole server (master and workers) at once, as a crash would."""
        assert self.process is not None
        _kill_group(self.process)

    def restart(self) -> None:
        """Kill the server and start it again on the same port (the back end keeps running)."""
        self.kill()
        self._start_server()

    @property
    def can_reload(self) -> bool:
        return self.name != "nghttpd"  # nghttpd has no reload: only a restart

    def reload(self) -> None:
        """The server's own graceful reload: new workers, old ones drain after a GOAWAY."""
        assert self.process is not None and self.can_reload
        # nginx, nghttpx and h2o's master (start_server) reload on SIGHUP, Apache on SIGUSR1
        self.process.send_signal(signal.SIGUSR1 if self.name == "apache" else signal.SIGHUP)

    def connections(self) -> int:
        """How many TCP connections carried the requests the server logged."""
        if self.name == "nghttpd":  # connection ids restart at 1 in each process: count per run
            runs = self.log.read_text().split(_STARTED)
            return sum(len(set(re.findall(_NGHTTPD_REQUEST, run, re.MULTILINE))) for run in runs)
        return len(set(re.findall(r"^(\d+) ", self.log.read_text(), re.MULTILINE)))

    def requests(self) -> int:
        """How many requests the server logged (nghttpd: request HEADERS it received)."""
        text = self.log.read_text()
        if self.name == "nghttpd":
            return text.count("recv HEADERS frame")
        return sum(1 for line in text.splitlines() if line.split()[1:2] == ["200"])

    def received_body_lengths(self) -> list[int]:
        """nghttpd only: the DATA bytes of each request stream it received, in stream order."""
        totals: dict[tuple[int, int], int] = {}
        for conn, length, stream in re.findall(_NGHTTPD_DATA, self.log.read_text(), re.MULTILINE):
            key = (int(conn), int(stream))
            totals[key] = totals.get(key, 0) + int(length)
        return [totals[key] for key in sorted(totals)]

    def _start_server(self) -> None:
        argv = command(self.name, self.directory, self.ca, self.port, self.backend_port)
        output = self.directory / "server.log"
        self.process = _spawn(argv, output)
        _wait_accepting(self.process, self.port, self.ca, output)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        out.write(_STARTED.encode())
        out.flush()
        # its own session: stopping the group stops the master and every worker it forked
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by `process` (one we started) and wait until all of it
    is dead: gone, or a zombie (its sockets closed) that the init process reaps in its time."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while _live_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that are not yet dead (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, split after its ')'
            state, _, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except OSError:
            continue  # exited while we looked
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _wait_accepting(
    process: subprocess.Popen[bytes], port: int, ca: TestCA | None, log: Path
) -> None:
    """Until a connection (with a TLS handshake agreeing on h2, given a CA) succeeds."""
    context = ca.client_context(["h2"]) if ca is not None else None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise AssertionError(f"{_name(process)} exited with {process.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if context is None:
                    return
                with context.wrap_socket(sock, server_hostname="localhost") as tls:
                    if tls.selected_alpn_protocol() == "h2":
                        return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{_name(process)} did not accept on 127.0.0.1:{port}; see {log}")


def _name(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    return str(args[0] if isinstance(args, list) else args)


def advertised_settings(server: Server) -> dict[int, int]:
    """The SETTINGS the server sends first on a new connection (read off the wire)."""
    context = server.ca.client_context(["h2"])
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        tls.sendall(_PREFACE + _EMPTY_SETTINGS)
        buffer = b""
        for _ in range(16):  # SETTINGS must be the server's first frame; allow some slack
            while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3]):
                chunk = tls.recv(65536)
                if not chunk:
                    raise AssertionError(f"{server.name} closed before sending SETTINGS")
                buffer += chunk
            length, kind, flags = int.from_bytes(buffer[:3]), buffer[3], buffer[4]
            payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
            if kind == 0x4 and not flags & 0x1:  # SETTINGS, not an ACK
                return {
                    int.from_bytes(payload[i : i + 2]): int.from_bytes(payload[i + 2 : i + 6])
                    for i in range(0, length, 6)
                }
    raise AssertionError(f"{server.name} sent no SETTINGS in its first 16 frames")

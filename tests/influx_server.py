"""A real InfluxDB 1.x server (`influxd`) on free loopback ports, for the statistics tests.

Each server gets a temporary data/meta/wal directory and a generated config with auth on and
everything not needed (reporting, UDP, graphite, monitor store, ...) off. The admin user is
created over `/query`, which InfluxDB allows while auth is on and no user exists yet. Tests
can stop, pause (SIGSTOP: a hung server) and restart it by PID mid-test.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from push_relay.testing import child
from push_relay.testing.ports import free_port

ADMIN = "admin"
ADMIN_PASSWORD = "s3cret-influx-pw"

_CONFIG = """\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  index-version = "inmem"

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = true
  log-enabled = false
  pprof-enabled = false
  https-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[ifql]
  enabled = false

[continuous_queries]
  enabled = false
"""


def influxd_binary() -> str:
    """The `influxd` binary; its absence fails the test run loudly, never skips it."""
    binary = shutil.which("influxd")
    if binary is None:
        pytest.fail(
            "influxd not found: these tests need a real InfluxDB 1.x "
            "(the Debian package influxdb: `make deps` installs it)",
            pytrace=False,
        )
    return binary


@dataclass
class InfluxServer:
    """One `influxd` process with its own directory and ports."""

    root: Path
    binary: str = field(default_factory=influxd_binary)
    http_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config_toml(self, db: str, user: str = ADMIN, password: str = ADMIN_PASSWORD) -> str:
        """The relay's `[influxdb]` section pointing at this server."""
        return (
            f'[influxdb]\nconnection_string = "{self.url}"\nuser = "{user}"\n'
            f'pass = "{password}"\ndb = "{db}"\n'
        )

    # -- process control (by PID) -----------------------------------------------------------

    def start(self) -> None:
        """Start `influxd` and wait until it answers; creates the admin user the first time."""
        config = self.root / "influxdb.conf"
        config.write_text(
            _CONFIG.format(root=self.root, http_port=self.http_port, rpc_port=self.rpc_port)
        )
        log = (self.root / "influxd.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "run", "-config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self._wait_ready()
        if not (self.root / "admin-created").exists():
            self.query(f"CREATE USER {ADMIN} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES")
            (self.root / "admin-created").touch()

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self.process is None:
            return
        process, self.process = self.process, None
        child.stop(process)

    def pause(self) -> None:
        """Freeze the server: connections are accepted by the kernel but never answered."""
        assert self.process is not None
        child.freeze(self.process)

    def resume(self) -> None:
        assert self.process is not None
        child.thaw(self.process)

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.root / "influxd.log").read_text(errors="replace")
                pytest.fail(f"influxd exited with {self.process.returncode}:\n{log[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:
                    if answer.status == 204:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()  # a fixture that fails in set-up is never torn down
        pytest.fail(f"influxd did not answer /ping within {timeout} s")

    # -- InfluxQL ---------------------------------------------------------------------------

    def query(self, q: str, db: str | None = None, epoch: str | None = None) -> dict[str, Any]:
        """Run one InfluxQL statement as the admin; returns its first result."""
        params = {"q": q} | ({"db": db} if db else {}) | ({"epoch": epoch} if epoch else {})
        credentials = base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"{self.url}/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={"Authorization": f"Basic {credentials}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            body = json.loads(answer.read())
        result: dict[str, Any] = body["results"][0]
        if "error" in result:
            raise AssertionError(f"InfluxQL {q!r} failed: {result['error']}")
        return result

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """Rows of a SELECT/SHOW as dicts (tags of GROUP BY merged in); times in ns."""
        result = self.query(q, db, epoch="ns")
        rows = []
        for series in result.get("series", []):
            for values in series.get("values", []):
                rows.append(
                    dict(zip(series["columns"], values, strict=True)) | series.get("tags", {})
                )
        return rows

    def databases(self) -> set[str]:
        result = self.query("SHOW DATABASES")
        return {row[0] for series in result.get("series", []) for row in series.get("values", [])}

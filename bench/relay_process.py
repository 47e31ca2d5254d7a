"""The relay under test: its generated config, and the `push-relay` process serving it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import procstats
from nginx_upstream import Nginx

from push_relay.testing.apns_auth import generate_key
from push_relay.testing.google_oauth import generate_service_account

PUSH_RELAY = Path(sys.executable).with_name("push-relay")


def relay_config(nginx: Nginx, directory: Path, paths: tuple[str, ...] = ("fcm", "apns")) -> str:
    """TOML sending FCM and APNs (both environments) to nginx, with freshly generated keys."""
    sections = []
    if "fcm" in paths:
        account = generate_service_account("bench")
        sections.append(f"""\
[fcm]
service_account_key_base64 = "{account.key_base64(nginx.token_uri)}"
project_id = "bench"
max_retries = 3
endpoint = "{nginx.url}"
""")
    if "apns" in paths:
        key = generate_key(directory, key_id="BENCHKEY01", team_id="BENCHTEAM1")
        sections.append(key.config_toml(nginx.url, nginx.url))
    return "\n".join(sections)


def supports_workers() -> bool:
    """Whether this relay's CLI has `--workers` (added by the ops work)."""
    help_text = subprocess.run(
        [str(PUSH_RELAY), "--help"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    return "--workers" in help_text


@dataclass
class RelayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The relay's processes: the main one and any worker it forked."""
        return [self.process.pid, *procstats.children(self.process.pid)]

    def workers(self) -> list[int]:
        """The processes serving pushes: the forked workers, else the main process."""
        return procstats.children(self.process.pid) or [self.process.pid]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL whatever of it is left, by PID."""
        workers = procstats.children(self.process.pid)
        procstats.terminate(self.process, timeout)
        for pid in workers:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                continue


def start_relay(
    config_file: Path,
    port: int,
    directory: Path,
    *,
    workers: int | None = None,
    log_level: str = "info",
    env: dict[str, str] | None = None,
) -> RelayProcess:
    """Start `push-relay` and wait until every worker answers /health."""
    command = [str(PUSH_RELAY), "-c", str(config_file), "-l", f"127.0.0.1:{port}"]
    command += ["--log-level", log_level]
    if workers is not None:
        command += ["--workers", str(workers)]
    log_file = directory / f"relay-{workers or 1}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
    relay = RelayProcess(process, port, log_file)
    try:
        _wait_healthy(relay, workers or 1)
    except BaseException:
        relay.stop()
        raise
    return relay


def _wait_healthy(relay: RelayProcess, workers: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if relay.process.poll() is not None:
            raise RuntimeError(
                f"push-relay exited with {relay.process.returncode}: "
                + relay.log_file.read_text()[-2000:]
            )
        try:
            with urllib.request.urlopen(relay.url + "/health", timeout=2) as answer:
                started = workers == 1 or len(procstats.children(relay.process.pid)) >= workers
                if answer.status == 200 and started:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"push-relay did not answer /health within {timeout:.0f} s")

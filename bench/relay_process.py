"""The relay under test: its generated config, and the `push-relay` process serving it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import procstats
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from nginx_upstream import Nginx

PUSH_RELAY = Path(sys.executable).with_name("push-relay")


def _service_account(token_uri: str) -> str:
    """A Google service-account key (fresh RSA key) whose token endpoint is nginx."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "bench",
        "private_key_id": "bench-key-1",
        "private_key": pem,
        "client_email": "relay@bench.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }
    return base64.b64encode(json.dumps(account).encode()).decode()


def _apns_key(directory: Path) -> Path:
    """A P-256 PKCS#8 `.p8` key, as Apple issues for provider tokens."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "AuthKey_BENCHKEY01.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def relay_config(nginx: Nginx, directory: Path, paths: tuple[str, ...] = ("fcm", "apns")) -> str:
    """TOML sending FCM and APNs (both environments) to nginx."""
    sections = []
    if "fcm" in paths:
        sections.append(f"""\
[fcm]
service_account_key_base64 = "{_service_account(nginx.token_uri)}"
project_id = "bench"
max_retries = 3
endpoint = "{nginx.url}"
""")
    if "apns" in paths:
        sections.append(f"""\
[apns]
keyfile = "{_apns_key(directory)}"
key_id = "BENCHKEY01"
team_id = "BENCHTEAM1"
production_endpoint = "{nginx.url}"
sandbox_endpoint = "{nginx.url}"
""")
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
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

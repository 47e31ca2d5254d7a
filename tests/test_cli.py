"""The `push-relay` command as an operator meets it: a real process, its exit code and stderr.

Config errors exit 2 with exactly one line on stderr naming the file (and the key), for both
`push-relay -c FILE` and `push-relay check-config -c FILE` (contract §10).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from push_relay import __version__
from push_relay.testing.ports import free_port

GW_HEX = "ab" * 32


def push_relay(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "push_relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- config errors: exit 2, one line naming file and key -------------------------------------

CONFIG_ERRORS = [
    pytest.param(None, None, "file not found", id="missing-file"),
    pytest.param(b"", None, "Config is empty", id="empty-file"),
    pytest.param(b"[fcm\n", None, "not valid TOML", id="invalid-toml"),
    pytest.param(b"[server]\nx = '\xff'\n", None, "not valid UTF-8", id="not-utf8"),
    pytest.param(
        b'[hms.app]\nclient_id = 5\nclient_secret = "s"\n',
        "hms.app.client_id",
        "must be a string",
        id="wrong-type",
    ),
    pytest.param(
        b'[apns]\nkeyfile = "k.p8"\nteam_id = "T"\n', "apns.key_id", "required", id="missing-key"
    ),
    pytest.param(
        b'[apns]\nkeyfile = "k.p8"\nkey_id = "K"\nteam_id = "T"\n',
        "apns.keyfile",
        "k.p8",
        id="apns-keyfile-not-a-key",
    ),
    pytest.param(
        b'[threema_gateway]\nbase_url = "https://msgapi.threema.ch"\nidentity = "*3MAPUSH"\n'
        b'secret = "s"\nprivate_key_file = "gw.key"\n',
        "threema_gateway.private_key_file",
        "must start with 'private:'",
        id="bad-gateway-key-file",
    ),
    pytest.param(
        b'[hms.app]\nclient_id = "c"\nclient_secret = "s"\n'
        b'login_endpoint = "http://oauth-login.cloud.huawei.com"\n',
        "hms.app.login_endpoint",
        "in clear",
        id="plain-http-upstream-off-loopback",
    ),
]


@pytest.mark.parametrize("command", [[], ["check-config"]], ids=["run", "check-config"])
@pytest.mark.parametrize(("content", "key", "fragment"), CONFIG_ERRORS)
def test_config_error_exits_2_with_one_line(
    tmp_path: Path, command: list[str], content: bytes | None, key: str | None, fragment: str
) -> None:
    path = tmp_path / "relay.toml"
    if content is not None:
        path.write_bytes(content)
    (tmp_path / "gw.key").write_text(GW_HEX)  # no `private:` prefix
    (tmp_path / "k.p8").write_text("unused")

    listen = [] if command else ["-l", f"127.0.0.1:{free_port()}"]
    result = push_relay(*command, "-c", str(path), *listen)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert fragment in lines[0]
    if key is not None:
        assert f"[{key}]" in lines[0]
    assert result.stdout == ""


def test_default_config_file_is_config_toml(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "push_relay", "check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert [line.split(" (")[0] for line in result.stderr.splitlines()] == [
        "push-relay: config error: config.toml: file not found"
    ]


# -- check-config on a good config -----------------------------------------------------------


def test_check_config_summarizes_a_good_config(tmp_path: Path) -> None:
    (tmp_path / "gw.key").write_text(f"private:{GW_HEX}\n")
    path = tmp_path / "relay.toml"
    path.write_text(
        '[hms.app-1]\nclient_id = "client-1"\nclient_secret = "hms-secret"\n'
        "high_priority = true\n"
        '[threema_gateway]\nbase_url = "https://msgapi.threema.ch"\nidentity = "*3MAPUSH"\n'
        'secret = "gateway-secret"\nprivate_key_file = "gw.key"\n'
        '[influxdb]\nconnection_string = "http://127.0.0.1:8086"\nuser = "u"\n'
        'pass = "influx-pass"\ndb = "pushes"\n'
    )

    result = push_relay("check-config", "-c", str(path))

    assert result.returncode == 0, result.stderr
    assert f"{path}: OK" == result.stdout.splitlines()[0]
    assert "hms: app app-1, client client-1, high priority" in result.stdout
    assert "threema_gateway: *3MAPUSH via https://msgapi.threema.ch" in result.stdout
    assert "influxdb: http://127.0.0.1:8086 db pushes" in result.stdout
    for secret in ("hms-secret", "gateway-secret", "influx-pass", GW_HEX):
        assert secret not in result.stdout + result.stderr
    assert result.stderr == ""


def test_check_config_without_backends_says_so(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[server]\n")
    result = push_relay("check-config", "-c", str(path))
    assert result.returncode == 0
    assert "no push backend configured" in result.stdout


def test_unknown_keys_warn_on_stderr_and_check_passes(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[server]\ncors_origin = ["*"]\n[apn]\nkeyfile = "x"\n')

    result = push_relay("check-config", "-c", str(path))

    assert result.returncode == 0
    expected = {
        f"push_relay: {path}: unknown key [server.cors_origin] is ignored",
        f"push_relay: {path}: unknown key [apn] is ignored",
    }
    assert expected == {line.split(" WARNING ", 1)[-1] for line in result.stderr.splitlines()}


# -- other command-line errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    [
        pytest.param("3000", id="no-host"),
        pytest.param("127.0.0.1:", id="no-port"),
        pytest.param("127.0.0.1:70000", id="port-out-of-range"),
        pytest.param("example.com:3000", id="host-name"),
        pytest.param("::1:3000", id="ipv6-without-brackets"),
    ],
)
def test_bad_listen_address_is_a_clear_error(tmp_path: Path, listen: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[server]\n")
    try:
        result = push_relay("-c", str(path), "-l", listen, timeout=5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"push-relay accepted -l {listen!r} and started serving") from None
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"push-relay: invalid listen address {listen!r}")
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = push_relay("--version")
    assert result.returncode == 0
    assert f"push-relay {__version__}" == result.stdout.strip()


# -- a started relay -------------------------------------------------------------------------


@pytest.fixture
def started_relay(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`push-relay -c FILE -l 127.0.0.1:PORT` as a child process; stopped by PID afterwards."""
    path = tmp_path / "relay.toml"
    path.write_text("[server]\nmax_in_flght = 5\n")
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "push_relay", "-c", str(path), "-l", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOG_LEVEL": "info"},
    )
    try:
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _wait_until_listening(process: subprocess.Popen[str], address: str) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "push-relay exited before it listened"
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"push-relay did not listen on {address} within 20 s")


def test_started_relay_answers_on_its_listen_address_and_stops_on_sigterm(
    started_relay: tuple[subprocess.Popen[str], str],
) -> None:
    process, address = started_relay
    _wait_until_listening(process, address)

    assert _get(f"http://{address}/health") == (200, "ok")
    request = urllib.request.Request(
        f"http://{address}/push",
        data=b"token=t&session=s&version=3",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as err:
        assert (err.code, err.read()) == (400, b"Push not successful")
    else:
        raise AssertionError("a push without any backend configured must answer 400")

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "unknown key [server.max_in_flght] is ignored" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("admin_host", ["127.0.0.1", "0.0.0.0"])
def test_admin_listener_on_the_public_address_is_a_config_error(
    tmp_path: Path, workers: str, admin_host: str
) -> None:
    # with --workers both sockets share the port through SO_REUSEPORT: /push would be
    # answered 404 for every connection the kernel hands to the admin socket
    port = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(f'[server]\nadmin_listen = "{admin_host}:{port}"\n')
    result = push_relay("-c", str(path), "-l", f"127.0.0.1:{port}", "--workers", workers)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert 1 == len(lines), result.stderr
    assert str(path) in lines[0]
    assert "[server.admin_listen]" in lines[0]


def test_address_in_use_exits_1_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[server]\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = push_relay("-c", str(path), "-l", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr

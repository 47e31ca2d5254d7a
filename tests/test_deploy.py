"""The deployment recipes in deploy/ work as written: nginx in front of two relays (real nginx,
throw-away certificate), the systemd unit (`systemd-analyze verify`), the Containerfile (every
path and command it names exists; no container runtime here) and the Prometheus and Grafana
files (every expression names a metric the relay exports)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from prometheus_client.metrics import MetricWrapperBase
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from helpers import wait_until
from push_relay import metrics
from push_relay.testing.ca import TestCA
from push_relay.testing.ports import free_port
from push_relay.testing.process import GatewayRig, RelayProcess
from test_browser import CALL_WAKE_UP, CHROMEDRIVER, CHROMIUM, FLAGS, PageHandler

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ORIGIN = "https://web.threema.ch"
# what Threema Web's fetch() sends: a form body built with URLSearchParams
BROWSER_FORM = "application/x-www-form-urlencoded;charset=UTF-8"
METRIC_NAME = re.compile(r"\bpush_relay_[a-z_]+\b")


def require(binary: str, package: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"{binary} is missing: install the Debian package with `apt-get install {package}`"
        )
    return path


# -- nginx ----------------------------------------------------------------------------------


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    url: str
    directory: Path

    def errors(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")


def render_nginx(port: int, cert: Path, key: Path, upstreams: list[str]) -> str:
    """deploy/nginx/push-relay.conf with its placeholders replaced for this machine."""
    text = (DEPLOY / "nginx" / "push-relay.conf").read_text()
    replacements = {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{port} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "/etc/ssl/push-relay/fullchain.pem": str(cert),
        "/etc/ssl/push-relay/privkey.pem": str(key),
        "127.0.0.1:3001": upstreams[0],
        "127.0.0.1:3002": upstreams[1],
    }
    for placeholder, value in replacements.items():
        assert placeholder in text, f"placeholder {placeholder!r} no longer in the recipe"
        text = text.replace(placeholder, value)
    return text


def nginx_main_conf(directory: Path, include: Path) -> str:
    """A minimal nginx.conf of our own around the recipe (as /etc/nginx/nginx.conf would be)."""
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {include};
}}
"""


@pytest.fixture
def limits() -> str:
    """The relays' `[limits]` besides `trusted_proxies` (a test may override)."""
    return ""


@pytest.fixture
async def two_relays(
    gateway: GatewayRig, limits: str, tmp_path: Path
) -> AsyncIterator[list[RelayProcess]]:
    relays: list[RelayProcess] = []
    try:
        for name in ("one", "two"):
            config = tmp_path / f"relay-{name}.toml"
            config.write_text(
                "[server]\nshutdown_grace_secs = 5\n\n"
                f'[limits]\n{limits}trusted_proxies = ["127.0.0.1/32"]\n\n' + gateway.section
            )
            relays.append(await RelayProcess.start(config))
        yield relays
    finally:
        for relay in relays:
            await relay.stop()


@pytest.fixture
async def nginx(
    two_relays: list[RelayProcess], test_ca: TestCA, tmp_path: Path
) -> AsyncIterator[Nginx]:
    binary = require("nginx", "nginx")
    directory = tmp_path / "nginx"
    directory.mkdir()
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(test_ca.cert_pem)
    key.write_bytes(test_ca.key_pem)
    port = free_port()
    upstreams = [relay.url.removeprefix("http://") for relay in two_relays]
    site = directory / "push-relay.conf"
    site.write_text(render_nginx(port, cert, key, upstreams))
    main = directory / "nginx.conf"
    main.write_text(nginx_main_conf(directory, site))
    # spawning returns at once; nginx runs on its own while we await its first answer
    process = subprocess.Popen(  # noqa: ASYNC220
        [binary, "-p", str(directory), "-c", str(main)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = Nginx(process, f"https://127.0.0.1:{port}", directory)
    try:
        await wait_serving(server, test_ca)
        yield server
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful stop of the nginx this test started
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), 10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


async def wait_serving(server: Nginx, ca: TestCA) -> None:
    async with aiohttp.ClientSession() as session:

        async def serving() -> bool:
            if server.process.poll() is not None:
                raise AssertionError(f"nginx exited: {server.errors()}")
            try:
                async with session.get(server.url + "/health", ssl=ca.client_context()) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(serving, "nginx serving")


async def request(
    server: Nginx, ca: TestCA, method: str, path: str, body: str = "", **headers: str
) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.url + path, data=body, headers=headers, ssl=ca.client_context()
        ) as r,
    ):
        await r.read()
        return r.status, {k.lower(): v for k, v in r.headers.items()}


async def test_nginx_terminates_tls_and_spreads_pushes_over_both_relays(
    nginx: Nginx, two_relays: list[RelayProcess], gateway: GatewayRig, test_ca: TestCA
) -> None:
    form = "&".join(f"{k}={v}" for k, v in gateway.push().items())
    headers = {"Content-Type": BROWSER_FORM, "Origin": ORIGIN}
    answers = [await request(nginx, test_ca, "POST", "/push", form, **headers) for _ in range(8)]

    assert [204] * 8 == [status for status, _ in answers]
    assert all(h.get("access-control-allow-origin") == "*" for _, h in answers)
    assert all("outcome=204" in relay.logs() for relay in two_relays)


# no Redis: each relay counts alone; round robin brings each three pushes, its burst admits two
@pytest.mark.parametrize("limits", ["client_per_minute = 1\nclient_burst = 2\n"])
async def test_nginx_replaces_a_clients_own_x_forwarded_for(
    nginx: Nginx, two_relays: list[RelayProcess], gateway: GatewayRig, test_ca: TestCA
) -> None:
    """Pushes claiming to come from other addresses are all counted as the one client nginx
    saw, so nobody escapes the per-client limit by writing the header themselves."""
    form = "&".join(f"{k}={v}" for k, v in gateway.push().items())
    statuses = []
    for n in range(6):  # round robin: three per relay
        headers = {"Content-Type": BROWSER_FORM, "X-Forwarded-For": f"198.51.100.{n}"}
        statuses.append((await request(nginx, test_ca, "POST", "/push", form, **headers))[0])

    assert [204, 204, 204, 204, 429, 429] == statuses


async def test_nginx_passes_the_cors_preflight(nginx: Nginx, test_ca: TestCA) -> None:
    status, headers = await request(
        nginx,
        test_ca,
        "OPTIONS",
        "/push",
        Origin=ORIGIN,
        **{"Access-Control-Request-Method": "POST"},
    )

    assert 204 == status
    assert "POST" in headers["access-control-allow-methods"]


@pytest.mark.parametrize("path", ["/metrics", "/ready", "/", "/push/../metrics"])
async def test_nginx_hides_everything_but_push_and_health(
    nginx: Nginx, test_ca: TestCA, path: str
) -> None:
    assert 404 == (await request(nginx, test_ca, "GET", path))[0]
    assert 200 == (await request(nginx, test_ca, "GET", "/health"))[0]


async def test_nginx_refuses_a_body_beyond_the_relays_4_kib(
    nginx: Nginx, gateway: GatewayRig, test_ca: TestCA
) -> None:
    form = "&".join(f"{k}={v}" for k, v in gateway.push().items())
    big = form + "&padding=" + "x" * 4096
    status, _ = await request(
        nginx, test_ca, "POST", "/push", big, **{"Content-Type": BROWSER_FORM}
    )

    assert 413 == status


@pytest.fixture
def chromium(test_ca: TestCA) -> Iterator[webdriver.Chrome]:
    """Headless Chromium on a page of another origin, trusting exactly the test certificate
    (by its public key), as a browser trusts a relay's real certificate."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("chromium missing: apt-get install chromium chromium-driver", pytrace=False)
    spki = (
        x509.load_pem_x509_certificate(test_ca.cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    pin = base64.b64encode(digest.finalize()).decode()
    page = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    thread = threading.Thread(target=page.serve_forever, daemon=True)
    thread.start()
    profile = tempfile.mkdtemp(prefix="push-relay-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = [f"--user-data-dir={profile}", f"--ignore-certificate-errors-spki-list={pin}"]
    for flag in [*FLAGS, *flags]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_script_timeout(30)
        driver.get(f"http://localhost:{page.server_address[1]}/")
        yield driver
    finally:
        driver.quit()
        page.shutdown()
        page.server_close()
        thread.join(timeout=5)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
async def test_chromium_fetch_over_https_through_nginx_reads_204(
    chromium: webdriver.Chrome, nginx: Nginx, gateway: GatewayRig
) -> None:
    """Threema Web's wake-up `fetch`, from another origin, over TLS (HTTP/2) through nginx."""
    result = await asyncio.to_thread(
        chromium.execute_async_script, CALL_WAKE_UP, nginx.url + "/push", gateway.push()
    )

    assert {"status": 204, "body": ""} == result
    assert " HTTP/2.0" in (nginx.directory / "access.log").read_text()


# -- systemd --------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "push-relay.service"
INSTALLED_BINARY = "/opt/push-relay/.venv/bin/push-relay"


def unit_keys(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> values, as systemd reads a unit (comments skipped, keys repeatable)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return keys


def test_systemd_unit_verifies_with_the_installed_binary(tmp_path: Path) -> None:
    analyze = require("systemd-analyze", "systemd")
    binary = Path(sys.executable).parent / "push-relay"  # the console script of this checkout
    assert binary.exists()
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    unit = tmp_path / "push-relay.service"
    unit.write_text(text.replace(INSTALLED_BINARY, str(binary)))

    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )

    assert (0, "") == (result.returncode, (result.stdout + result.stderr).strip())


def test_systemd_unit_is_hardened_reloads_with_sighup_and_outwaits_the_drain() -> None:
    keys = unit_keys(UNIT.read_text())
    service = {k.removeprefix("Service."): v for k, v in keys.items() if k.startswith("Service.")}

    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
    }.items():
        assert [value] == service[key], key
    assert "AF_INET AF_INET6 AF_UNIX" == service["RestrictAddressFamilies"][0]
    # ExecReload: `push-relay reload` checks the config, then sends SIGHUP to the main pid
    reload_cmd = service["ExecReload"][0].split()
    assert [INSTALLED_BINARY, "reload"] == reload_cmd[:2] and "$MAINPID" in reload_cmd
    shutdown_grace = 30
    assert int(service["TimeoutStopSec"][0]) > shutdown_grace


def test_push_relay_reload_understands_the_units_arguments() -> None:
    """The ExecReload line, parsed by the real CLI (a pid nobody has: it fails to signal)."""
    service = unit_keys(UNIT.read_text())
    args = service["Service.ExecReload"][0].split()[1:]
    args = [a if a != "$MAINPID" else "999999999" for a in args]
    args = [a for a in args if a != "--config" and not a.endswith("config.toml")]
    result = subprocess.run(
        [sys.executable, "-m", "push_relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 1 == result.returncode
    assert "cannot signal pid 999999999" in result.stderr


# -- container ------------------------------------------------------------------------------

CONTAINERFILE = DEPLOY / "container" / "Containerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_containerfile_names_only_what_the_project_has() -> None:
    """Untested here (no container runtime): every file it copies from the build context
    exists, its entrypoint is the project's console script, and the health check probes
    /health on the port it exposes."""
    steps = instructions(CONTAINERFILE.read_text())
    copied = [
        path
        for word, args in steps
        if word == "COPY" and not args.startswith("--from")
        for path in args.split()[:-1]
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    healthcheck = dict(steps)["HEALTHCHECK"]
    exposed = dict(steps)["EXPOSE"]
    command = json.loads(dict(steps)["CMD"])

    assert copied and all((ROOT / path).exists() for path in copied), copied
    assert "src" in copied and "uv.lock" in copied
    assert any(word == "RUN" and "uv sync --locked" in args for word, args in steps)
    assert [next(iter(project["project"]["scripts"]))] == entrypoint
    assert f"127.0.0.1:{exposed}/health" in healthcheck
    assert any(word == "USER" and not args.startswith(("0", "root")) for word, args in steps)
    assert command[command.index("--listen") + 1].endswith(f":{exposed}")


# -- Prometheus and Grafana -----------------------------------------------------------------


def exported_metrics() -> set[str]:
    """Every sample name the relay's /metrics can show (read from push_relay.metrics)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "push-relay.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_expression_names_an_exported_metric() -> None:
    exported = exported_metrics()
    expressions = dashboard_expressions()

    assert expressions
    for expr in expressions:
        named = set(METRIC_NAME.findall(expr))
        assert named and named <= exported, expr


def test_the_dashboard_shows_pushes_latency_load_and_statistics() -> None:
    shown = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}

    assert {
        "push_relay_requests_total",
        "push_relay_upstream_seconds_bucket",
        "push_relay_in_flight",
        "push_relay_rate_limited_total",
        "push_relay_influxdb_queue_depth",
    } <= shown


def test_prometheus_examples_name_only_exported_metrics() -> None:
    exported = exported_metrics()
    text = "".join(path.read_text() for path in sorted((DEPLOY / "prometheus").glob("*.yml")))
    named = set(METRIC_NAME.findall(text))

    assert named and named <= exported, named - exported
    assert "push-relay-alerts.yml" in (DEPLOY / "prometheus" / "prometheus.yml").read_text()

"""nginx on 127.0.0.1 as an instant FCM/APNs upstream: TLS + HTTP/2, answers in microseconds.

The relay must be the bottleneck, so nginx answers every push from its config (`return`)
without touching a disk or a backend. One long-lived connection must carry the whole load,
hence the raised stream and keep-alive limits. nginx runs as our own master process
(`daemon off`, prefix and logs in a temp dir), never as the system service.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import procstats
from shapes import APNS_DEVICE_PATH

from push_relay.testing.ca import TestCA
from push_relay.testing.ports import free_port

FCM_NAME = "projects/bench/messages/1"
APNS_ID = "8B4F6A5E-3C2D-4E1F-9A0B-7C6D5E4F3A2B"
TOKEN_PATH = "/token"
STATUS_PATH = "/nginx_status"
# Google's token endpoint answers a JWT-bearer grant like this; tokens live an hour
TOKEN_RESPONSE = {"access_token": "ya29.bench-token", "expires_in": 3599, "token_type": "Bearer"}

_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$connection $server_protocol $request_method $uri $status';
    access_log {access_log};
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 1000;
    http2_recv_buffer_size 1m;
    client_body_buffer_size 16k;
    server {{
        listen 127.0.0.1:{port} ssl http2 reuseport;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location ~ "^/v1/projects/[^/]+/messages:send$" {{
            default_type application/json;
            return 200 '{{"name":"{fcm_name}"}}';
        }}
        location ^~ {apns_prefix} {{
            add_header apns-id {apns_id} always;
            return 200 '';
        }}
        location / {{ return 404; }}
    }}
    # tokens and nginx's counters on their own port, so that connections to the push port
    # are the relay's push connections only
    server {{
        listen 127.0.0.1:{aux_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = {token_path} {{
            default_type application/json;
            return 200 '{token_response}';
        }}
        location = {status_path} {{ stub_status; }}
        location / {{ return 404; }}
    }}
}}
"""


class ToolMissing(RuntimeError):
    pass


_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "ss": "iproute2"}


def require_tools(*names: str) -> None:
    """Fail loudly (never skip) when a Debian package the benchmark needs is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        packages = " ".join(_PACKAGES.get(n, n) for n in missing)
        raise ToolMissing(
            f"the benchmark needs {', '.join(missing)}: install the Debian packages "
            f"with `apt-get install -y {packages}`"
        )


@dataclass
class Nginx:
    """A running nginx master (and its worker) serving the FCM and APNs shapes."""

    directory: Path
    port: int  # pushes (FCM and APNs shapes), HTTP/2 or HTTP/1.1
    aux_port: int  # the OAuth token endpoint and nginx's status counters
    process: subprocess.Popen[bytes]
    ca: TestCA

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"https://127.0.0.1:{self.aux_port}{TOKEN_PATH}"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def pids(self) -> list[int]:
        """The master and its workers (all of nginx's CPU)."""
        return [self.process.pid, *procstats.children(self.process.pid)]

    def accepted_connections(self) -> int:
        """nginx's `accepts` counter: every TCP connection it has accepted so far."""
        context = ssl.create_default_context(cafile=str(self.ca.ca_file))
        url = f"https://127.0.0.1:{self.aux_port}{STATUS_PATH}"
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            lines = answer.read().decode().splitlines()
        # "Active connections: N" / "server accepts handled requests" / " A H R" / ...
        return int(lines[2].split()[0])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the master (it stops its workers), SIGKILL if it lingers."""
        procstats.terminate(self.process, timeout)


def start_nginx(ca: TestCA, directory: Path, *, log_requests: bool = False) -> Nginx:
    """Start nginx on a free loopback port; returns once it accepts TLS connections."""
    require_tools("nginx")
    directory.mkdir(parents=True, exist_ok=True)
    port, aux_port = free_port(), free_port()
    while aux_port == port:
        aux_port = free_port()
    access_log = f"{directory}/access.log bench buffer=64k flush=100ms" if log_requests else "off"
    conf = _CONF.format(
        dir=directory,
        port=port,
        aux_port=aux_port,
        access_log=access_log,
        cert=ca.directory / "server.pem",
        key=ca.directory / "server-key.pem",
        fcm_name=FCM_NAME,
        apns_prefix=APNS_DEVICE_PATH,
        apns_id=APNS_ID,
        token_path=TOKEN_PATH,
        token_response=json.dumps(TOKEN_RESPONSE, separators=(",", ":")),
        status_path=STATUS_PATH,
    )
    conf_file = directory / "nginx.conf"
    conf_file.write_text(conf)
    with (directory / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            ["nginx", "-p", f"{directory}/", "-c", str(conf_file), "-e", f"{directory}/error.log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    nginx = Nginx(directory, port, aux_port, process, ca)
    try:
        _wait_listening(nginx)
    except BaseException:
        nginx.stop()
        raise
    return nginx


def _wait_listening(nginx: Nginx, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            detail = (nginx.directory / "stderr.log").read_text()
            raise RuntimeError(f"nginx exited at start-up: {detail}".strip())
        try:
            nginx.accepted_connections()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nginx did not listen on {nginx.url} within {timeout:.0f} s")

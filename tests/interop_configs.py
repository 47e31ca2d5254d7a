"""How each interop server is configured: TLS + ALPN h2 on loopback, 100 streams per
connection, a 1 s idle timeout, and answers like APNs and FCM.

nghttpd serves them from static files (it answers a POST with the file at its path); nginx,
nghttpx, h2o and Apache proxy every request to `interop_backend.py` over HTTP/1.1. Each logs one
line per request beginning with the client's port, from which the tests count connections.
"""

from __future__ import annotations

from pathlib import Path

from push_relay.testing.ca import TestCA

MAX_STREAMS = 100  # SETTINGS_MAX_CONCURRENT_STREAMS of every server
IDLE_TIMEOUT = 1.0  # seconds; short, so that the idle scenario stays short
DEVICE = "a" * 64  # the APNs device token nghttpd has a file for
APNS_PATH = f"/3/device/{DEVICE}"
FCM_PATH = "/v1/projects/p/messages:send"
FCM_ANSWER = '{"name": "projects/p/messages/1"}'
APACHE_MODULES = Path("/usr/lib/apache2/modules")

# name → (binary, Debian package)
TOOLS = {
    "nginx": ("nginx", "nginx"),
    "nghttpd": ("nghttpd", "nghttp2-server"),
    "nghttpx": ("nghttpx", "nghttp2-proxy"),
    "h2o": ("h2o", "h2o"),
    "apache": ("apache2", "apache2"),
}

_NGINX = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format interop '$remote_port $status $request_length';
    access_log {dir}/access.log interop;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout {idle_ms}ms;
    keepalive_requests 1000000;  # else a GOAWAY after 1,000 requests, unlike APNs and FCM
    http2_max_concurrent_streams {streams};
    client_max_body_size 4m;
    client_body_buffer_size 4m;  # in memory: workers run as nobody, the temp dir is root's
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

_NGHTTPX = """\
frontend=127.0.0.1,{port}
backend=127.0.0.1,{backend};;proto=http/1.1
private-key-file={key}
certificate-file={cert}
workers=1
frontend-http2-max-concurrent-streams={streams}
# nghttpx's idle timeout for HTTP/2 clients (it closes the connection without a GOAWAY)
frontend-http2-read-timeout={idle_ms}ms
backend-connections-per-host=100
accesslog-file={dir}/access.log
accesslog-format=$remote_port $status
errorlog-file={dir}/error.log
pid-file={dir}/nghttpx.pid
no-ocsp=yes
"""

_H2O = """\
listen:
  port: {port}
  host: 127.0.0.1
  ssl:
    certificate-file: {cert}
    key-file: {key}
num-threads: 1
pid-file: {dir}/h2o.pid
error-log: {dir}/error.log
http2-max-concurrent-requests-per-connection: {streams}
http2-idle-timeout: {idle_s}
access-log:
  path: {dir}/access.log
  format: "%{{remote}}p %s"
hosts:
  default:
    paths:
      /:
        proxy.reverse.url: http://127.0.0.1:{backend}/
"""

_APACHE = """\
ServerRoot {dir}
ServerName localhost
PidFile {dir}/httpd.pid
DefaultRuntimeDir {dir}
Mutex file:{dir} default
User www-data
Group www-data
ErrorLog {dir}/error.log
# the reload test reads mod_http2's GOAWAY frames (debug level) from this log
LogLevel warn http2:debug
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so
LoadModule ssl_module {modules}/mod_ssl.so
LoadModule http2_module {modules}/mod_http2.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
# one child with threads enough for the idle test's 200 simultaneous connections (with fewer,
# the event MPM closes idle connections at once), and room for a second child during a reload
StartServers 1
ServerLimit 2
ThreadLimit 256
ThreadsPerChild 256
MaxRequestWorkers 512
MinSpareThreads 25
MaxSpareThreads 512
LogFormat "%{{remote}}p %>s" interop
CustomLog {dir}/access.log interop
Listen 127.0.0.1:{port}
Protocols h2
KeepAlive On
KeepAliveTimeout {idle_ms}ms
MaxKeepAliveRequests 0
H2MaxSessionStreams {streams}
SSLEngine on
SSLCertificateFile {cert}
SSLCertificateKeyFile {key}
ProxyPass / http://127.0.0.1:{backend}/
"""


def command(name: str, d: Path, ca: TestCA, port: int, backend_port: int) -> list[str]:
    """Write server `name`'s configuration into directory `d`; the command that runs it in the
    foreground (its master process leads the workers it forks)."""
    values = {
        "dir": d,
        "port": port,
        "backend": backend_port,
        "cert": ca.directory / "server.pem",
        "key": ca.directory / "server-key.pem",
        "streams": MAX_STREAMS,
        "idle_ms": round(IDLE_TIMEOUT * 1000),
        "idle_s": round(IDLE_TIMEOUT),
        "modules": APACHE_MODULES,
    }
    if name == "nginx":
        conf = _write(d / "nginx.conf", _NGINX.format(**values))
        return ["nginx", "-p", f"{d}/", "-c", str(conf), "-e", f"{d}/error.log"]
    if name == "nghttpx":
        return ["nghttpx", f"--conf={_write(d / 'nghttpx.conf', _NGHTTPX.format(**values))}"]
    if name == "h2o":
        return ["h2o", "-m", "master", "-c", str(_write(d / "h2o.yaml", _H2O.format(**values)))]
    if name == "apache":
        conf = _write(d / "httpd.conf", _APACHE.format(**values))
        return ["apache2", "-f", str(conf), "-D", "FOREGROUND"]
    htdocs = d / "htdocs"
    _write(htdocs / APNS_PATH.lstrip("/"), "")
    _write(htdocs / FCM_PATH.lstrip("/"), FCM_ANSWER)
    return [
        "nghttpd", "-v", "-a", "127.0.0.1", "-d", str(htdocs), "-m", str(MAX_STREAMS),
        "-n", "1", str(port), str(values["key"]), str(values["cert"]),
    ]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

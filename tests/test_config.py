"""Config loading (contract §1, §9 to §11): what starts, what fails, and what only warns.

Every failure is a `ConfigError` whose one-line message names the file and, where there is
one, the key. Key files referenced by the config are written next to it and referenced by a
relative path, which the loader resolves against the config file's directory.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from push_relay import config
from push_relay.config import Config
from push_relay.errors import ConfigError

GW_HEX = "0123456789abcdef" * 4


def _pkcs8(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def service_account_b64() -> str:
    """A well-formed service-account key, as Google's console hands it out, base64-encoded."""
    info = {
        "type": "service_account",
        "project_id": "relay-test",
        "private_key_id": "0123abcd",
        "private_key": _pkcs8(rsa.generate_private_key(65537, 2048)).decode(),
        "client_email": "relay@relay-test.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return base64.b64encode(json.dumps(info).encode()).decode()


@pytest.fixture(scope="module")
def apns_key() -> bytes:
    return _pkcs8(ec.generate_private_key(ec.SECP256R1()))


LoadConfig = Callable[[str], Config]


@pytest.fixture
def load(
    tmp_path: Path,
    write_config: Callable[[str], Path],
    service_account_b64: str,
    apns_key: bytes,
) -> LoadConfig:
    """Write `text` (with `{sa}` replaced by a valid service account) next to valid key files
    `apns.p8` and `gateway.key`, and load it."""
    (tmp_path / "apns.p8").write_bytes(apns_key)
    (tmp_path / "gateway.key").write_text(f"private:{GW_HEX}\n")

    def load_text(text: str) -> Config:
        return config.load(write_config(text.replace("{sa}", service_account_b64)))

    return load_text


# -- valid sections, overridable key by key --------------------------------------------------

SECTIONS: dict[str, dict[str, str]] = {
    "fcm": {
        "service_account_key_base64": '"{sa}"',
        "project_id": '"relay-test"',
        "max_retries": "6",
    },
    "apns": {"keyfile": '"apns.p8"', "key_id": '"AB123456XY"', "team_id": '"CD987654YZ"'},
    "hms.app-id-1": {"client_id": '"client-1"', "client_secret": '"hms-secret"'},
    "threema_gateway": {
        "base_url": '"https://msgapi.threema.ch"',
        "identity": '"*3MAPUSH"',
        "secret": '"gateway-secret"',
        "private_key_file": '"gateway.key"',
    },
    "influxdb": {
        "connection_string": '"http://127.0.0.1:8086"',
        "user": '"foo"',
        "pass": '"influx-pass"',
        "db": '"baz"',
    },
    "server": {},
}


def section(name: str, **overrides: str | None) -> str:
    """A valid `[name]` section; an override gives a key's TOML value, None drops the key."""
    keys: dict[str, str | None] = {**SECTIONS[name], **overrides}
    lines = [f"[{name}]"] + [f"{k} = {v}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"


ALL_SECTIONS = "".join(section(name) for name in SECTIONS)


# -- a good config ---------------------------------------------------------------------------


def test_every_section_loads_with_its_defaults(load: LoadConfig) -> None:
    cfg = load(ALL_SECTIONS)
    assert cfg.fcm is not None and cfg.apns is not None and cfg.threema_gateway is not None
    assert cfg.influxdb is not None
    assert cfg.fcm.project_id == "relay-test"
    assert cfg.fcm.max_retries == 6
    assert cfg.fcm.timeout_secs == 60.0
    assert cfg.fcm.endpoint == "https://fcm.googleapis.com"
    assert cfg.fcm.service_account.client_email == "relay@relay-test.iam.gserviceaccount.com"
    assert cfg.fcm.service_account.token_uri == "https://oauth2.googleapis.com/token"
    assert cfg.apns.production_endpoint == "https://api.push.apple.com"
    assert cfg.apns.sandbox_endpoint == "https://api.sandbox.push.apple.com"
    assert cfg.apns.signing_key.startswith(b"-----BEGIN PRIVATE KEY-----")
    hms = cfg.hms["app-id-1"]
    assert (hms.client_id, hms.high_priority) == ("client-1", False)
    assert hms.login_endpoint == "https://oauth-login.cloud.huawei.com"
    assert hms.push_endpoint == "https://push-api.cloud.huawei.com"
    assert bytes.fromhex(GW_HEX) == cfg.threema_gateway.private_key
    assert cfg.threema_gateway.identity == "*3MAPUSH"
    assert (cfg.influxdb.connection_string, cfg.influxdb.db) == ("http://127.0.0.1:8086", "baz")
    assert cfg.server.cors_origins == ("*",)
    assert (
        cfg.server.max_in_flight,
        cfg.server.header_timeout_secs,
        cfg.server.body_timeout_secs,
        cfg.server.shutdown_grace_secs,
    ) == (10_000, 10.0, 10.0, 30.0)
    assert (
        cfg.server.max_header_bytes,
        cfg.server.max_headers,
        cfg.server.max_connections,
        cfg.server.admin_listen,
    ) == (16_384, 100, 10_000, None)
    assert cfg.backend_names() == ["fcm", "apns", "hms:app-id-1", "threemagateway"]
    assert cfg.warnings == ()


def test_every_section_is_optional(load: LoadConfig) -> None:
    cfg = load("[server]\n")
    assert (
        cfg.fcm,
        cfg.apns,
        cfg.hms,
        cfg.threema_gateway,
        cfg.influxdb,
    ) == (None, None, {}, None, None)
    assert cfg.backend_names() == []


def test_secrets_stay_out_of_reprs(load: LoadConfig) -> None:
    cfg = load(ALL_SECTIONS + 'log_hash_key = "hash-key-secret"\n')
    text = repr(cfg)
    for secret in ("hms-secret", "gateway-secret", "influx-pass", "hash-key-secret", "PRIVATE"):
        assert secret not in text


def test_several_hms_apps(load: LoadConfig) -> None:
    text = section("hms.app-id-1") + '[hms.app-id-2]\nclient_id = "c2"\nclient_secret = "s2"\n'
    text += "high_priority = true\n"
    cfg = load(text)
    assert list(cfg.hms) == ["app-id-1", "app-id-2"]
    assert cfg.hms["app-id-2"].high_priority


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param('"relay-test"', "relay-test", id="string"),
        pytest.param("12345654321", "12345654321", id="integer-as-in-the-original-readme"),
    ],
)
def test_fcm_project_id_string_or_integer(load: LoadConfig, value: str, expected: str) -> None:
    cfg = load(section("fcm", project_id=value))
    assert cfg.fcm is not None
    assert expected == cfg.fcm.project_id


@pytest.mark.parametrize("retries", [0, 255])
def test_fcm_max_retries_bounds_accepted(load: LoadConfig, retries: int) -> None:
    cfg = load(section("fcm", max_retries=str(retries)))
    assert cfg.fcm is not None
    assert retries == cfg.fcm.max_retries


def test_endpoint_overrides_accepted_with_http_and_trailing_slash(load: LoadConfig) -> None:
    cfg = load(
        section("fcm", endpoint='"http://127.0.0.1:8001/"', timeout_secs="2.5")
        + section(
            "apns",
            production_endpoint='"https://127.0.0.1:8002"',
            sandbox_endpoint='"http://127.0.0.1:8003"',
        )
        + section(
            "hms.app-id-1",
            login_endpoint='"http://127.0.0.1:8004"',
            push_endpoint='"https://localhost:8005/"',
        )
        + section("threema_gateway", base_url='"http://127.0.0.1:8006/"')
    )
    assert cfg.fcm is not None and cfg.apns is not None and cfg.threema_gateway is not None
    assert (cfg.fcm.endpoint, cfg.fcm.timeout_secs) == ("http://127.0.0.1:8001", 2.5)
    assert cfg.apns.production_endpoint == "https://127.0.0.1:8002"
    assert cfg.apns.sandbox_endpoint == "http://127.0.0.1:8003"
    assert cfg.hms["app-id-1"].login_endpoint == "http://127.0.0.1:8004"
    assert cfg.hms["app-id-1"].push_endpoint == "https://localhost:8005"
    assert cfg.threema_gateway.base_url == "http://127.0.0.1:8006"
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8001",
        "http://127.255.0.9",
        "http://[::1]:8001",
        "http://localhost:8001/",
        "https://fcm.googleapis.com",
        "https://10.0.0.1:8443",
    ],
)
def test_plain_http_upstreams_only_on_loopback(load: LoadConfig, url: str) -> None:
    cfg = load(section("fcm", endpoint=f'"{url}"') + section("apns", sandbox_endpoint=f'"{url}"'))
    assert cfg.fcm is not None and cfg.apns is not None
    assert url.rstrip("/") == cfg.fcm.endpoint == cfg.apns.sandbox_endpoint


def test_influxdb_keeps_plain_http_anywhere(load: LoadConfig) -> None:
    cfg = load(section("influxdb", connection_string='"http://influx.example.com:8086"'))
    assert cfg.influxdb is not None
    assert "http://influx.example.com:8086" == cfg.influxdb.connection_string


def test_server_settings(load: LoadConfig) -> None:
    cfg = load(
        section(
            "server",
            cors_origins='["https://web.threema.ch", "http://localhost:8080"]',
            max_in_flight="50",
            header_timeout_secs="2",
            body_timeout_secs="0.5",
            shutdown_grace_secs="0",
            log_hash_key='"k"',
            max_header_bytes="8192",
            max_headers="20",
            max_connections="500",
            admin_listen='"[::1]:9100"',
        )
    )
    assert (
        cfg.server.max_header_bytes,
        cfg.server.max_headers,
        cfg.server.max_connections,
        cfg.server.admin_listen,
    ) == (8192, 20, 500, ("::1", 9100))
    assert cfg.server.cors_origins == ("https://web.threema.ch", "http://localhost:8080")
    assert (
        cfg.server.max_in_flight,
        cfg.server.header_timeout_secs,
        cfg.server.body_timeout_secs,
        cfg.server.shutdown_grace_secs,
    ) == (50, 2.0, 0.5, 0.0)


def test_key_file_path_may_be_absolute(load: LoadConfig, tmp_path: Path) -> None:
    absolute = tmp_path / "apns.p8"
    cfg = load(section("apns", keyfile=json.dumps(str(absolute))))
    assert cfg.apns is not None
    assert absolute.read_bytes() == cfg.apns.signing_key


# -- the file itself -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) == caught.value.path
    assert "file not found" in str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    """A directory cannot be read as a file (and, unlike chmod, this holds for root too)."""
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path)
    assert f"{tmp_path}: cannot read" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="zero-bytes"),
        pytest.param(b"  \n\t\n", id="whitespace"),
        pytest.param(b"# just a comment\n\n# and another\n", id="comments-only"),
    ],
)
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert f"{path}: Config is empty → Server has nothing to do" == str(caught.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"[fcm\n", "not valid TOML", id="unclosed-table"),
        pytest.param(b"[apns]\nkey_id = AB12\n", "not valid TOML", id="bare-string-value"),
        pytest.param(b"[server]\n[server]\n", "not valid TOML", id="duplicate-table"),
        pytest.param(b'[server]\nlog_hash_key = "\xff"\n', "not valid UTF-8", id="latin-1"),
        pytest.param(b"\xfe\xff\x00[", "not valid UTF-8", id="utf-16"),
    ],
)
def test_unparsable_file(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {fragment}")
    assert "\n" not in message


# -- wrong, missing or out-of-range keys -----------------------------------------------------

ERRORS = [
    # wrong types, one per section
    pytest.param(section("fcm", max_retries='"6"'), "fcm.max_retries", "must be an integer"),
    pytest.param(section("fcm", max_retries="true"), "fcm.max_retries", "must be an integer"),
    pytest.param(section("fcm", project_id="1.5"), "fcm.project_id", "a string or an integer"),
    pytest.param(section("fcm", timeout_secs='"60"'), "fcm.timeout_secs", "must be"),
    pytest.param(section("fcm", endpoint="443"), "fcm.endpoint", "must be a string"),
    pytest.param(section("apns", key_id="12"), "apns.key_id", "must be a string, not an integer"),
    pytest.param(section("apns", keyfile="[]"), "apns.keyfile", "must be a string"),
    pytest.param(section("hms.app-id-1", client_id="7"), "hms.app-id-1.client_id", "string"),
    pytest.param(
        section("hms.app-id-1", high_priority='"yes"'),
        "hms.app-id-1.high_priority",
        "must be a boolean",
        id="hms-high-priority-string",
    ),
    pytest.param(
        section("hms.app-id-1", high_priority="1"),
        "hms.app-id-1.high_priority",
        "must be a boolean",
        id="hms-high-priority-integer",
    ),
    pytest.param("hms = 5\n", "hms", "must be a table", id="hms-not-a-table"),
    pytest.param('[hms]\napp = "x"\n', "hms.app", "must be a table", id="hms-app-not-a-table"),
    pytest.param('fcm = "x"\n', "fcm", "must be a table", id="fcm-not-a-table"),
    pytest.param(
        section("threema_gateway", identity="false"), "threema_gateway.identity", "string"
    ),
    pytest.param(section("influxdb", db="1"), "influxdb.db", "must be a string"),
    pytest.param(section("influxdb", user="{}"), "influxdb.user", "must be a string, not a table"),
    pytest.param(section("server", cors_origins='"*"'), "server.cors_origins", "must be a list"),
    pytest.param(
        section("server", cors_origins='["*", 1]'), "server.cors_origins", "list of strings"
    ),
    pytest.param(section("server", max_in_flight="0"), "server.max_in_flight", "> 0"),
    pytest.param(section("server", max_in_flight="1.5"), "server.max_in_flight", "integer"),
    pytest.param(section("server", header_timeout_secs="0"), "server.header_timeout_secs", "> 0"),
    pytest.param(section("server", body_timeout_secs="-1"), "server.body_timeout_secs", "> 0"),
    pytest.param(section("server", body_timeout_secs="nan"), "server.body_timeout_secs", "finite"),
    pytest.param(
        section("server", shutdown_grace_secs="inf"), "server.shutdown_grace_secs", "finite"
    ),
    pytest.param(section("server", shutdown_grace_secs="-1"), "server.shutdown_grace_secs", ">= 0"),
    pytest.param(section("server", log_hash_key="1"), "server.log_hash_key", "must be a string"),
    pytest.param(section("server", max_header_bytes="0"), "server.max_header_bytes", "> 0"),
    pytest.param(section("server", max_headers='"100"'), "server.max_headers", "integer"),
    pytest.param(section("server", max_connections="-1"), "server.max_connections", "> 0"),
    pytest.param(section("server", admin_listen="9100"), "server.admin_listen", "a string"),
    pytest.param(
        section("server", admin_listen='"metrics.local:9100"'),
        "server.admin_listen",
        "not an IP address",
        id="admin-listen-hostname",
    ),
    pytest.param(
        section("server", admin_listen='"127.0.0.1"'),
        "server.admin_listen",
        "expected IP:PORT",
        id="admin-listen-without-port",
    ),
    # missing required keys
    pytest.param(section("fcm", project_id=None), "fcm.project_id", "required"),
    pytest.param(section("fcm", max_retries=None), "fcm.max_retries", "required"),
    pytest.param(
        section("fcm", service_account_key_base64=None),
        "fcm.service_account_key_base64",
        "required",
        id="fcm-service-account-missing",
    ),
    pytest.param(section("apns", keyfile=None), "apns.keyfile", "required"),
    pytest.param(section("apns", key_id=None), "apns.key_id", "required"),
    pytest.param(section("apns", team_id=None), "apns.team_id", "required"),
    pytest.param(section("hms.app-id-1", client_id=None), "hms.app-id-1.client_id", "required"),
    pytest.param(
        section("hms.app-id-1", client_secret=None), "hms.app-id-1.client_secret", "required"
    ),
    pytest.param(section("threema_gateway", secret=None), "threema_gateway.secret", "required"),
    pytest.param(section("threema_gateway", identity=None), "threema_gateway.identity", "required"),
    pytest.param(section("threema_gateway", base_url=None), "threema_gateway.base_url", "required"),
    pytest.param(
        section("threema_gateway", private_key_file=None),
        "threema_gateway.private_key_file",
        "required",
        id="gateway-key-file-missing",
    ),
    pytest.param(section("influxdb", db=None), "influxdb.db", "required"),
    pytest.param(
        section("influxdb", **{"pass": None}), "influxdb.pass", "required", id="influx-pass"
    ),
    pytest.param(
        section("influxdb", connection_string=None), "influxdb.connection_string", "required"
    ),
    pytest.param("[fcm]\n", "fcm.project_id", "required", id="empty-fcm-section"),
    # ranges and formats
    pytest.param(section("fcm", max_retries="256"), "fcm.max_retries", "between 0 and 255"),
    pytest.param(section("fcm", max_retries="-1"), "fcm.max_retries", "between 0 and 255"),
    pytest.param(section("fcm", timeout_secs="0"), "fcm.timeout_secs", "> 0"),
    pytest.param(section("fcm", timeout_secs="-0.5"), "fcm.timeout_secs", "> 0"),
    pytest.param(section("fcm", endpoint='"fcm.googleapis.com"'), "fcm.endpoint", "http(s)://"),
    pytest.param(
        section("apns", sandbox_endpoint='"ftp://x"'), "apns.sandbox_endpoint", "http(s)://"
    ),
    pytest.param(
        section("hms.app-id-1", push_endpoint='"push-api"'), "hms.app-id-1.push_endpoint", "http"
    ),
    pytest.param(
        section("threema_gateway", base_url='"msgapi.threema.ch"'),
        "threema_gateway.base_url",
        "http(s)://",
        id="gateway-base-url-without-scheme",
    ),
    pytest.param(
        section("influxdb", connection_string='"127.0.0.1:8086"'),
        "influxdb.connection_string",
        "http(s)://",
        id="influx-without-scheme",
    ),
    # plain http:// to a push service or token endpoint: only on loopback
    *[
        pytest.param(
            section(name, **{key: f'"{url}"'}),
            f"{name}.{key}",
            "in clear",
            id=f"plain-http-{name}-{key}-{host}",
        )
        for name, key in [
            ("fcm", "endpoint"),
            ("apns", "production_endpoint"),
            ("apns", "sandbox_endpoint"),
            ("hms.app-id-1", "login_endpoint"),
            ("hms.app-id-1", "push_endpoint"),
            ("threema_gateway", "base_url"),
        ]
        for host, url in [
            ("remote", "http://fcm.googleapis.com"),
            ("private-ip", "http://10.0.0.1:8080"),
            ("localhost-lookalike", "http://localhost.example.com"),
            ("userinfo-trick", "http://127.0.0.1@evil.example"),
            ("unspecified", "http://0.0.0.0:80"),
        ]
    ],
    # key files
    pytest.param(section("apns", keyfile='"missing.p8"'), "apns.keyfile", "cannot read missing.p8"),
    pytest.param(section("apns", keyfile='"."'), "apns.keyfile", "cannot read ."),
    pytest.param(
        section("threema_gateway", private_key_file='"nope.key"'),
        "threema_gateway.private_key_file",
        "cannot read nope.key",
        id="gateway-key-file-unreadable",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), ERRORS)
def test_config_error_names_file_and_key(
    load: LoadConfig, tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text)
    err = caught.value
    assert key == err.key
    assert fragment in err.message
    message = str(err)
    assert message.startswith(f"{tmp_path / 'config.toml'}: [{key}]: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"", "PKCS#8 PEM", id="empty"),
        pytest.param(b"AuthKey", "PKCS#8 PEM", id="not-pem"),
        pytest.param(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "cannot be decoded",
            id="garbage-inside",
        ),
        pytest.param(_pkcs8(ec.generate_private_key(ec.SECP384R1())), "P-256", id="wrong-curve"),
    ],
)
def test_bad_apns_key_file(load: LoadConfig, tmp_path: Path, content: bytes, fragment: str) -> None:
    (tmp_path / "bad.p8").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(section("apns", keyfile='"bad.p8"'))
    assert caught.value.key == "apns.keyfile"
    assert "bad.p8" in caught.value.message
    assert fragment in caught.value.message


# -- the FCM service account -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("not base64!", "base64", id="not-base64"),
        pytest.param(_b64(b'{"a": 1}').rstrip("="), "base64", id="padding-missing"),
        pytest.param(
            base64.urlsafe_b64encode(b'{"x": "\xfb\xff"}').decode(), "base64", id="url-safe"
        ),
        pytest.param(
            "aHR0cHM6Ly93d3cueW91dHViZS5jb20vd2F0Y2g/dj1kUXc0dzlXZ1hjUQo=",
            "service-account JSON",
            id="original-readme-placeholder",
        ),
        pytest.param(_b64(b"\xff\xfe"), "service-account JSON", id="not-utf8"),
        pytest.param(_b64(b"[1, 2]"), "JSON object", id="json-array"),
        pytest.param(
            _b64(b'{"client_email": "a@b", "token_uri": "https://t"}'),
            "lacks private_key",
            id="no-private-key",
        ),
        pytest.param(
            _b64(b'{"private_key": "k", "token_uri": 5, "client_email": "a@b"}'),
            "lacks token_uri",
            id="token-uri-not-a-string",
        ),
        pytest.param(
            _b64(
                b'{"private_key": "k", "token_uri": "http://oauth2.googleapis.com/token", '
                b'"client_email": "a@b"}'
            ),
            "in clear",
            id="token-uri-plain-http-remote",
        ),
        pytest.param(
            _b64(b'{"private_key": "k", "token_uri": "ftp://x/token", "client_email": "a@b"}'),
            "http(s)://",
            id="token-uri-not-http",
        ),
    ],
)
def test_bad_service_account(load: LoadConfig, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(section("fcm", service_account_key_base64=json.dumps(value)))
    assert caught.value.key == "fcm.service_account_key_base64"
    assert fragment in caught.value.message


# -- the Threema Gateway private key file ----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(f"private:{GW_HEX}", id="no-newline"),
        pytest.param(f"private:{GW_HEX}\n", id="one-trailing-newline"),
        pytest.param(f"private:{GW_HEX.upper()}", id="upper-case-hex"),
    ],
)
def test_gateway_key_file_accepted(load: LoadConfig, tmp_path: Path, content: str) -> None:
    (tmp_path / "other.key").write_text(content)
    cfg = load(section("threema_gateway", private_key_file='"other.key"'))
    assert cfg.threema_gateway is not None
    assert bytes.fromhex(GW_HEX) == cfg.threema_gateway.private_key


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(GW_HEX.encode(), "must start with 'private:'", id="prefix-missing"),
        pytest.param(f"public:{GW_HEX}".encode(), "must start with 'private:'", id="public-key"),
        pytest.param(f" private:{GW_HEX}".encode(), "must start with 'private:'", id="leading-sp"),
        pytest.param(f"private:{GW_HEX[:-2]}zz".encode(), "not valid hex", id="bad-hex"),
        pytest.param(f"private:{GW_HEX[:-1]}".encode(), "not valid hex", id="odd-length"),
        pytest.param(f"private:{GW_HEX[:-2]}".encode(), "64 hex", id="31-bytes"),
        pytest.param(f"private:{GW_HEX}00".encode(), "64 hex", id="33-bytes"),
        pytest.param(f"private:{GW_HEX}\n\n".encode(), "hex", id="two-newlines"),
        pytest.param(f"private:{GW_HEX}\r\n".encode(), "hex", id="crlf"),
        pytest.param(
            f"private:{GW_HEX[:32]} {GW_HEX[32:62]} ".encode(), "64 hex", id="spaces-inside"
        ),
        pytest.param(b"private:\xff" + GW_HEX.encode(), "not a text key file", id="binary"),
        pytest.param(b"", "must start with 'private:'", id="empty-file"),
    ],
)
def test_bad_gateway_key_file(
    load: LoadConfig, tmp_path: Path, content: bytes, fragment: str
) -> None:
    (tmp_path / "bad.key").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(section("threema_gateway", private_key_file='"bad.key"'))
    assert caught.value.key == "threema_gateway.private_key_file"
    assert "bad.key" in caught.value.message  # names the key file, not only the config
    assert fragment in caught.value.message


# -- unknown keys warn, naming file and key --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        pytest.param(section("fcm", max_retry="3"), ["fcm.max_retry"], id="typo-in-fcm"),
        pytest.param(section("apns", keyid='"x"'), ["apns.keyid"], id="typo-in-apns"),
        pytest.param(
            section("hms.app-id-1", client_secrte='"x"'),
            ["hms.app-id-1.client_secrte"],
            id="typo-in-hms",
        ),
        pytest.param(
            section("threema_gateway", base_uri='"x"'), ["threema_gateway.base_uri"], id="gateway"
        ),
        pytest.param(section("influxdb", password='"x"'), ["influxdb.password"], id="influx"),
        pytest.param(
            section("server", cors_origin='["*"]', workers="4"),
            ["server.cors_origin", "server.workers"],
            id="two-in-server",
        ),
        pytest.param('[apn]\nkeyfile = "k"\n', ["apn"], id="unknown-section"),
        pytest.param("debug = true\n[server]\n", ["debug"], id="unknown-top-level-key"),
        pytest.param('[gcm]\napi_key = "old"\n', ["gcm"], id="section-of-older-versions"),
    ],
)
def test_unknown_keys_warn_but_load(
    load: LoadConfig, tmp_path: Path, text: str, keys: list[str]
) -> None:
    cfg = load(text)
    path = tmp_path / "config.toml"
    assert [f"{path}: unknown key [{key}] is ignored" for key in keys] == list(cfg.warnings)

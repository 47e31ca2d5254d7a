"""Every validation rule of the /push front end, through the real HTTP server.

With no backend configured, a request that passes validation answers 400
`Push not successful`, so each row shows whether validation let it through.
"""

from __future__ import annotations

import pytest

from push_relay.testing.relay import FORM, RelayStarter, RunningRelay

GW_KEY = "ab" * 32
NOT_OK = "Push not successful"
MISSING = "Missing parameters"
INVALID = "Invalid parameters"
# what must never reach an HTTP/2 field of the shared APNs connection
BAD_FIELD_CHARS = [
    ("cr-lf", "%0D%0Ax-evil:%201"),
    ("nul", "%00"),
    ("space", "%20"),
    ("tab", "%09"),
    ("del", "%7F"),
    ("non-ascii", "%C3%A4"),
    ("u2028", "%E2%80%A8"),
]

CASES = [
    # -- type -------------------------------------------------------------------------------
    pytest.param("token=t&session=s&version=3", NOT_OK, id="type-defaults-to-fcm"),
    pytest.param("type=gcm&token=t&session=s&version=3", NOT_OK, id="gcm-alias"),
    pytest.param("type=fcm&token=t&session=s&version=3", NOT_OK, id="fcm"),
    pytest.param("type=FCM&token=t&session=s&version=3", INVALID, id="type-case-sensitive"),
    pytest.param("type=&token=t&session=s&version=3", INVALID, id="type-empty"),
    pytest.param("type=wns&token=t&session=s&version=3", INVALID, id="type-unknown"),
    pytest.param("type=wns", INVALID, id="type-checked-before-missing-params"),
    pytest.param("", MISSING, id="empty-body"),
    pytest.param("&&", MISSING, id="only-separators"),
    # -- token / appid ----------------------------------------------------------------------
    pytest.param("session=s&version=3", MISSING, id="fcm-token-missing"),
    pytest.param("token=&session=s&version=3", NOT_OK, id="fcm-token-empty-accepted"),
    pytest.param("token&session=s&version=3", NOT_OK, id="pair-without-equals-is-empty"),
    pytest.param("type=hms&token=t&session=s&version=3", MISSING, id="hms-appid-missing"),
    pytest.param("type=hms&appid=a&session=s&version=3", MISSING, id="hms-token-missing"),
    pytest.param("type=hms&appid=a&token=t&session=s&version=3", NOT_OK, id="hms"),
    # -- threema gateway --------------------------------------------------------------------
    pytest.param(
        f"type=threema-gateway&session=s&version=3&public_key={GW_KEY}",
        MISSING,
        id="gw-identity-missing",
    ),
    pytest.param(
        f"type=threema-gateway&identity=ECHOECH&session=s&version=3&public_key={GW_KEY}",
        INVALID,
        id="gw-identity-7-chars",
    ),
    pytest.param(
        f"type=threema-gateway&identity=ECHOECHOX&session=s&version=3&public_key={GW_KEY}",
        INVALID,
        id="gw-identity-9-chars",
    ),
    pytest.param(
        f"type=threema-gateway&identity=*3MAPUSH&session=s&version=3&public_key={GW_KEY}",
        INVALID,
        id="gw-identity-star",
    ),
    pytest.param(
        f"type=threema-gateway&identity=%C3%A4ABCDE&session=s&version=3&public_key={GW_KEY}",
        INVALID,
        id="gw-identity-counted-in-utf8-bytes",
    ),
    pytest.param(
        "type=threema-gateway&identity=*BAD&session=s&version=3",
        INVALID,
        id="gw-identity-checked-before-public-key",
    ),
    pytest.param(
        "type=threema-gateway&identity=ECHOECHO&session=s&version=3",
        MISSING,
        id="gw-public-key-missing",
    ),
    pytest.param(
        "type=threema-gateway&identity=ECHOECHO&session=s&version=3&public_key=abcd",
        INVALID,
        id="gw-public-key-short",
    ),
    pytest.param(
        f"type=threema-gateway&identity=ECHOECHO&session=s&version=3&public_key={GW_KEY}00",
        INVALID,
        id="gw-public-key-long",
    ),
    pytest.param(
        "type=threema-gateway&identity=ECHOECHO&session=s&version=3&public_key=" + "zz" * 32,
        INVALID,
        id="gw-public-key-not-hex",
    ),
    pytest.param(
        "type=threema-gateway&identity=ECHOECHO&session=s&version=3&public_key=" + "AB" * 32,
        NOT_OK,
        id="gw-public-key-upper-hex",
    ),
    pytest.param(
        f"type=threema-gateway&identity=ECHOECHO&public_key={GW_KEY}&version=3",
        MISSING,
        id="gw-session-missing",
    ),
    # -- session / version ------------------------------------------------------------------
    pytest.param("token=t&version=3", MISSING, id="session-missing"),
    pytest.param("token=t&session=&version=3", NOT_OK, id="session-empty-accepted"),
    pytest.param("token=t&session=s", MISSING, id="version-missing"),
    pytest.param("token=t&session=s&version=", INVALID, id="version-empty"),
    pytest.param("token=t&session=s&version=x", INVALID, id="version-not-a-number"),
    pytest.param("token=t&session=s&version=-1", INVALID, id="version-negative"),
    pytest.param("token=t&session=s&version=65536", INVALID, id="version-too-big"),
    pytest.param("token=t&session=s&version=65535", NOT_OK, id="version-max"),
    pytest.param("token=t&session=s&version=%2B7", NOT_OK, id="version-plus-sign"),
    pytest.param("token=t&session=s&version=%2B", INVALID, id="version-lone-plus"),
    pytest.param("token=t&session=s&version=+7+", NOT_OK, id="version-trimmed"),
    pytest.param("token=t&session=s&version=%E2%80%837", NOT_OK, id="version-unicode-trim"),
    pytest.param("token=t&session=s&version=1_0", INVALID, id="version-underscore"),
    pytest.param("token=t&session=s&version=%EF%BC%97", INVALID, id="version-fullwidth"),
    pytest.param("token=t&session=s&version=007", NOT_OK, id="version-leading-zeros"),
    pytest.param("token=t&session=s&version=3.0", INVALID, id="version-decimal"),
    # -- ttl --------------------------------------------------------------------------------
    pytest.param("token=t&session=s&version=3&ttl=0", NOT_OK, id="ttl-zero"),
    pytest.param("token=t&session=s&version=3&ttl=4294967295", NOT_OK, id="ttl-max"),
    pytest.param("token=t&session=s&version=3&ttl=4294967296", INVALID, id="ttl-too-big"),
    pytest.param("token=t&session=s&version=3&ttl=", INVALID, id="ttl-empty"),
    pytest.param("token=t&session=s&version=3&ttl=-5", INVALID, id="ttl-negative"),
    pytest.param("token=t&session=s&version=x&ttl=x", INVALID, id="version-before-ttl"),
    # -- first occurrence wins --------------------------------------------------------------
    pytest.param("token=t&session=s&version=3&version=x", NOT_OK, id="first-version-wins"),
    pytest.param("type=wns&type=fcm&token=t&session=s&version=3", INVALID, id="first-type-wins"),
    # -- apns extras, checked last ----------------------------------------------------------
    pytest.param(
        "type=apns&session=s&version=3&bundleid=b&endpoint=s", MISSING, id="apns-token-missing"
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&endpoint=s", MISSING, id="apns-bundleid-missing"
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=b", MISSING, id="apns-endpoint-missing"
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=b&endpoint=x",
        INVALID,
        id="apns-endpoint-invalid",
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=b&endpoint=P",
        INVALID,
        id="apns-endpoint-case-sensitive",
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=x&bundleid=b", INVALID, id="apns-version-before-extras"
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=b&endpoint=p", NOT_OK, id="apns-production"
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=&endpoint=s",
        NOT_OK,
        id="apns-bundleid-empty-accepted",
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=b&endpoint=s&collapse_key=" + "k" * 58,
        NOT_OK,
        id="apns-collapse-id-64-bytes",
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=b&endpoint=s&collapse_key=" + "k" * 59,
        INVALID,
        id="apns-collapse-id-65-bytes",
    ),
    pytest.param(
        "token=t&session=s&version=3&collapse_key=" + "k" * 100,
        NOT_OK,
        id="fcm-long-collapse-key-accepted",
    ),
    # -- rule 9: values that become APNs header fields or the request path -------------------
    *[
        pytest.param(
            f"type=apns&token=t&session=s&version=3&bundleid=com.example{bad}&endpoint=s",
            INVALID,
            id=f"apns-bundleid-{name}",
        )
        for name, bad in BAD_FIELD_CHARS
    ],
    *[
        pytest.param(
            f"type=apns&token=t&session=s&version=3&bundleid=b&endpoint=s&collapse_key=k{bad}",
            INVALID,
            id=f"apns-collapse-key-{name}",
        )
        for name, bad in BAD_FIELD_CHARS
    ],
    *[
        pytest.param(
            f"type=apns&token=ab{bad}cd&session=s&version=3&bundleid=b&endpoint=s",
            INVALID,
            id=f"apns-token-{name}",
        )
        for name, bad in [*BAD_FIELD_CHARS, ("slash", "/"), ("query", "?"), ("percent", "%25")]
    ],
    pytest.param(
        "type=apns&token=aZ09-._~!$%26'()*%2B,;%3D:@&session=s&version=3&bundleid=b&endpoint=s",
        NOT_OK,
        id="apns-token-every-allowed-punctuation",
    ),
    pytest.param(
        "type=apns&token=&session=s&version=3&bundleid=b&endpoint=s",
        NOT_OK,
        id="apns-token-empty-accepted",
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=!~a.b&endpoint=s&collapse_key=%21%7E",
        NOT_OK,
        id="apns-visible-ascii-edges-accepted",
    ),
    pytest.param(
        "type=apns&token=t&session=s&version=3&bundleid=b%0A&endpoint=x",
        INVALID,
        id="apns-endpoint-checked-before-values",
    ),
    pytest.param(
        "type=apns&token=t%0A&session=s&version=3&bundleid=b&endpoint=s&collapse_key=" + "k" * 59,
        INVALID,
        id="apns-values-checked-before-collapse-length",
    ),
    pytest.param(
        "token=t%0A&session=s&version=3&collapse_key=a%0Db",
        NOT_OK,
        id="fcm-values-go-into-json-not-headers",
    ),
]


@pytest.mark.parametrize(("body", "expected"), CASES)
async def test_validation(relay: RunningRelay, body: str, expected: str) -> None:
    answer = await relay.push(body)
    assert answer.status == 400
    assert expected == answer.text
    if expected == NOT_OK:
        assert answer.headers["content-type"] == "text/plain"
    else:
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        pytest.param(None, "Missing content type", id="missing"),
        pytest.param("text/plain", "Invalid content type: text/plain", id="wrong"),
        pytest.param("application/json", "Invalid content type: application/json", id="json"),
        pytest.param(
            "Application/X-WWW-Form-Urlencoded",
            "Invalid content type: Application/X-WWW-Form-Urlencoded",
            id="prefix-is-case-sensitive",
        ),
        pytest.param(
            "application/x-www-form-urlencoded; charset=utf-8", NOT_OK, id="charset-suffix-ok"
        ),
        pytest.param("application/x-www-form-urlencodedfoo", NOT_OK, id="prefix-match"),
    ],
)
async def test_content_type(relay: RunningRelay, content_type: str | None, expected: str) -> None:
    answer = await relay.push("token=t&session=s&version=3", content_type=content_type)
    assert answer.status == 400
    assert expected == answer.text


async def test_non_visible_ascii_content_type_counts_as_missing(relay: RunningRelay) -> None:
    answer = await relay.push(
        "token=t&session=s&version=3", content_type="application/x-www-form-urlencoded\u00e9"
    )
    assert (answer.status, answer.text) == (400, "Missing content type")


async def test_query_string_is_ignored(relay: RunningRelay) -> None:
    answer = await relay.request(
        "POST",
        "/push?type=wns",
        body="token=t&session=s&version=3",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (answer.status, answer.text) == (400, NOT_OK)


@pytest.mark.parametrize("path", ["/", "/pus", "/push/", "/pushx", "/PUSH"])
async def test_other_paths_404_with_empty_body(relay: RunningRelay, path: str) -> None:
    answer = await relay.request("POST", path)
    assert (answer.status, answer.text) == (404, "")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_405(relay: RunningRelay, method: str) -> None:
    answer = await relay.request(method, "/push")
    assert (answer.status, answer.text) == (405, "")
    assert "POST" in answer.headers["allow"]
    # CORS headers on every /push answer, this one too
    assert "*" == answer.headers["access-control-allow-origin"]


async def test_body_over_4_kib_is_413(relay: RunningRelay) -> None:
    answer = await relay.push("token=t&session=s&version=3&x=" + "a" * 4096)
    assert answer.status == 413


async def test_body_of_exactly_4_kib_is_accepted(relay: RunningRelay) -> None:
    body = "token=t&session=s&version=3&x="
    answer = await relay.push(body + "a" * (4096 - len(body)))
    assert (answer.status, answer.text) == (400, NOT_OK)


async def test_cors_on_every_push_answer(relay: RunningRelay) -> None:
    for body in ("", "token=t&session=s&version=3"):
        answer = await relay.push(body, headers={"Origin": "https://web.threema.ch"})
        assert answer.headers["access-control-allow-origin"] == "*"


async def test_cors_preflight(relay: RunningRelay) -> None:
    answer = await relay.request(
        "OPTIONS",
        "/push",
        headers={
            "Origin": "https://web.threema.ch",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.headers["access-control-allow-methods"] == "POST"
    assert answer.headers["access-control-allow-headers"] == "Content-Type"
    assert "access-control-max-age" in answer.headers


async def test_cors_allow_list_echoes_allowed_origin_only(start_relay) -> None:  # type: ignore[no-untyped-def]
    async with start_relay('[server]\ncors_origins = ["https://web.threema.ch"]\n') as relay:
        allowed = await relay.push("", headers={"Origin": "https://web.threema.ch"})
        other = await relay.push("", headers={"Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://web.threema.ch"
    assert "access-control-allow-origin" not in other.headers


RESTRICTED = '[server]\ncors_origins = ["https://web.threema.ch"]\n'


async def test_foreign_origin_is_refused_403_when_origins_are_restricted(
    start_relay: RelayStarter,
) -> None:
    async with start_relay(RESTRICTED) as relay:
        answer = await relay.push(
            "token=t&session=s&version=3", headers={"Origin": "https://evil.example"}
        )
    assert (403, "Origin not allowed") == (answer.status, answer.text)
    assert "text/plain; charset=utf-8" == answer.headers["content-type"]
    assert "access-control-allow-origin" not in answer.headers


async def test_preflight_from_a_foreign_origin_is_refused_403_when_origins_are_restricted(
    start_relay: RelayStarter,
) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    async with start_relay(RESTRICTED) as relay:
        foreign = await relay.request(
            "OPTIONS", "/push", headers={**preflight, "Origin": "https://evil.example"}
        )
        listed = await relay.request(
            "OPTIONS", "/push", headers={**preflight, "Origin": "https://web.threema.ch"}
        )
    assert (403, "Origin not allowed") == (foreign.status, foreign.text)
    assert "text/plain; charset=utf-8" == foreign.headers["content-type"]
    assert not [name for name in foreign.headers if name.startswith("access-control-")]
    assert 204 == listed.status
    assert "https://web.threema.ch" == listed.headers["access-control-allow-origin"]
    assert "POST" == listed.headers["access-control-allow-methods"]


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        pytest.param("token=t", None, (400, "Missing content type"), id="content-type-first"),
        pytest.param("token=t", "text/plain", (400, "Invalid content type: text/plain"), id="ct"),
        pytest.param("", FORM, (403, "Origin not allowed"), id="before-missing-parameters"),
        pytest.param("type=wns", FORM, (403, "Origin not allowed"), id="before-invalid"),
        pytest.param("x=" + "a" * 5000, FORM, (403, "Origin not allowed"), id="before-413"),
    ],
)
async def test_origin_is_checked_after_content_type_before_everything_else(
    start_relay: RelayStarter, body: str, content_type: str | None, expected: tuple[int, str]
) -> None:
    async with start_relay(RESTRICTED) as relay:
        answer = await relay.push(
            body, content_type=content_type, headers={"Origin": "https://evil.example"}
        )
    assert expected == (answer.status, answer.text)


@pytest.mark.parametrize(
    ("toml", "origin"),
    [
        pytest.param(RESTRICTED, None, id="no-origin-header"),
        pytest.param(RESTRICTED, "https://web.threema.ch", id="listed-origin"),
        pytest.param("[server]\n", "https://evil.example", id="any-origin-by-default"),
        pytest.param('[server]\ncors_origins = ["*", "https://a"]\n', "https://b", id="star"),
    ],
)
async def test_origin_check_leaves_other_requests_alone(
    start_relay: RelayStarter, toml: str, origin: str | None
) -> None:
    async with start_relay(toml) as relay:
        headers = {} if origin is None else {"Origin": origin}
        answer = await relay.push("token=t&session=s&version=3", headers=headers)
    assert (400, NOT_OK) == (answer.status, answer.text)  # validated; no backend configured

"""Properties: whatever a client sends, the relay answers with a documented 4xx, never a 5xx or
an unhandled exception; and the pure form parser and validator keep their promises.

The HTTP properties run against one real relay per test function (no backend configured, so a
request that passes validation answers 400 `Push not successful`). The pure functions are the
oracle for what the server must answer: the front end may add nothing and lose nothing.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, quote_plus, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from push_relay.errors import InvalidRequest
from push_relay.request import (
    ApnsTarget,
    GatewayTarget,
    HmsTarget,
    PushRequest,
    parse_form,
    parse_unsigned,
    validate,
)
from push_relay.testing.relay import RunningRelay

FORM = "application/x-www-form-urlencoded"
NOT_OK = "Push not successful"
TOO_LARGE = "Request body too large"
MAX_BODY = 4096
VALIDATION_BODIES = {InvalidRequest.MISSING, InvalidRequest.INVALID}
DOCUMENTED_400 = {"Missing content type", NOT_OK, *VALIDATION_BODIES}

HTTP_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    # one relay serves every example of a test function on purpose: starting one per
    # example would only measure uvicorn's start-up
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PURE_SETTINGS = settings(max_examples=300, deadline=None)

# -- strategies ------------------------------------------------------------------------------

KEYS = [
    "type",
    "token",
    "session",
    "version",
    "affiliation",
    "ttl",
    "collapse_key",
    "bundleid",
    "endpoint",
    "appid",
    "identity",
    "public_key",
]
VALUES = [
    "fcm",
    "gcm",
    "apns",
    "hms",
    "threema-gateway",
    "FCM",
    "",
    "3",
    " 7 ",
    "+7",
    "+",
    "007",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "-1",
    "1_0",
    "\uff17",
    "\u2003" + "5",
    "ECHOECHO",
    "*3MAPUSH",
    "\u00e4ABCDEF",
    "ab" * 32,
    "AB" * 32,
    "zz" * 32,
    "p",
    "s",
    "k" * 58,
    "k" * 59,
    "x.voip",
]
# Percent-escapes that are malformed, truncated or decode to invalid UTF-8.
ODD_ESCAPES = ["%", "%z", "%zz", "%4", "%ff", "%C3", "%C3%28", "+", "%2B", "%26", "%3D", "="]

keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
values = st.one_of(st.sampled_from(VALUES), st.text(max_size=40))


@st.composite
def encoded_pair(draw: st.DrawFn) -> str:
    key, value = draw(keys), draw(values)
    style = draw(st.sampled_from(["plus", "percent", "raw", "no-equals", "odd"]))
    if style == "plus":
        return f"{quote_plus(key)}={quote_plus(value)}"
    if style == "percent":
        return f"{quote(key, safe='')}={quote(value, safe='')}"
    if style == "no-equals":
        return quote_plus(key)
    if style == "odd":
        return f"{quote_plus(key)}={quote_plus(value)}{draw(st.sampled_from(ODD_ESCAPES))}"
    return f"{key}={value}"  # unescaped: `&`, `=`, `%` and non-ASCII pass through as they are


form_bodies = st.lists(encoded_pair(), max_size=14).map(lambda pairs: "&".join(pairs).encode())
bodies = st.one_of(
    form_bodies,
    st.binary(max_size=200),
    st.binary(min_size=MAX_BODY - 8, max_size=MAX_BODY + 8),
)
# Header values an HTTP client can send: no CR/LF/NUL, Latin-1 for the odd byte.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
content_types = st.one_of(
    st.none(),
    st.just(FORM),
    st.just(FORM + "; charset=utf-8"),
    st.sampled_from(["text/plain", "application/json", "multipart/form-data", FORM.upper()]),
    header_text,
)


def expected_answer(content_type: str | None, body: bytes) -> tuple[int, str] | None:
    """What the relay must answer for a well-formed content type, from the pure functions;
    None when the content type is one the test does not predict exactly."""
    if content_type is None:
        return 400, "Missing content type"
    if not content_type.isascii():
        return None  # counts as missing or is rejected, depending on the client's encoding
    if not content_type.strip().startswith(FORM):
        return None
    if len(body) > MAX_BODY:
        return 413, TOO_LARGE
    try:
        validate(parse_form(body))
    except InvalidRequest as err:
        return err.status, err.body
    return 400, NOT_OK  # valid, but no backend is configured


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- through the real HTTP server ------------------------------------------------------------


@HTTP_SETTINGS
@given(content_type=content_types, body=bodies, origin=st.none() | header_text)
async def test_any_push_gets_a_documented_answer(
    relay: RunningRelay,
    caplog: pytest.LogCaptureFixture,
    content_type: str | None,
    body: bytes,
    origin: str | None,
) -> None:
    headers = {} if origin is None else {"Origin": origin}
    answer = await relay.push(body, content_type=content_type, headers=headers)

    assert answer.status < 500, answer
    expected = expected_answer(content_type, body)
    if expected is not None:
        assert expected == (answer.status, answer.text)
    elif answer.status == 400:
        assert answer.text in DOCUMENTED_400 or answer.text.startswith("Invalid content type: ")
    else:
        assert (answer.status, answer.text) == (413, TOO_LARGE)
    assert answer.headers["access-control-allow-origin"] == "*"
    assert no_errors_logged(caplog) == []


@HTTP_SETTINGS
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(["/push", "/push/", "/", "/pushx", "/PUSH", "/push?type=wns"]),
        st.text(
            alphabet=st.characters(
                min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?."
            ),
            max_size=20,
        ).map(lambda p: "/" + quote(p, safe="/")),
    ),
    body=form_bodies,
)
async def test_any_method_and_path_gets_an_answer_without_a_5xx(
    relay: RunningRelay, caplog: pytest.LogCaptureFixture, method: str, path: str, body: bytes
) -> None:
    answer = await relay.request(method, path, body=body, headers={"Content-Type": FORM})

    assert answer.status < 500, answer
    route = path.split("?", 1)[0]
    if route == "/push" and method == "POST":
        assert expected_answer(FORM, body) == (answer.status, answer.text)
    elif route == "/push":
        assert (204 if method == "OPTIONS" else 405) == answer.status
    elif route in ("/health", "/ready", "/metrics"):
        assert answer.status in (200, 405)
    else:
        assert (answer.status, answer.text) == (404, "")
    assert no_errors_logged(caplog) == []


# -- the pure functions ----------------------------------------------------------------------

pairs = st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=8)


@PURE_SETTINGS
@given(st.binary(max_size=300))
def test_parse_form_accepts_any_bytes(body: bytes) -> None:
    params = parse_form(body)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


@PURE_SETTINGS
@given(pairs)
def test_parse_form_inverts_urlencode(params: dict[str, str]) -> None:
    assert params == parse_form(urlencode(params).encode())


@PURE_SETTINGS
@given(pairs, pairs)
def test_parse_form_first_occurrence_wins(first: dict[str, str], later: dict[str, str]) -> None:
    body = "&".join(filter(None, [urlencode(first), urlencode(later)])).encode()
    assert {**later, **first} == parse_form(body)


# Unicode's White_Space property, which Rust's `trim()` uses (Python's `strip()` adds U+001C..1F)
RUST_WHITE_SPACE = "".join(
    chr(c)
    for c in [
        *range(0x09, 0x0E),
        0x20,
        0x85,
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
    ]
)


def rust_unsigned(text: str, bits: int) -> int | None:
    """Reference: Rust's `trim()` then `u16/u32::from_str`, written out by hand."""
    digits = text.strip(RUST_WHITE_SPACE)
    digits = digits.removeprefix("+")
    if not digits or any(c not in "0123456789" for c in digits):
        return None
    value = 0
    for digit in digits:  # Rust's checked multiply-and-add, one digit at a time
        value = value * 10 + ord(digit) - ord("0")
        if value >= 1 << bits:
            return None
    return value


number_texts = st.one_of(
    st.builds(
        lambda pre, plus, zeros, n, post: f"{pre}{plus}{zeros}{n}{post}",
        st.sampled_from(["", " ", "\t", "\n", "\u2003", "\u3000", "\u00a0", "\x1c", "\x1f"]),
        st.sampled_from(["", "+", "-", "++"]),
        st.sampled_from(["", "0", "000"]),
        st.integers(min_value=0, max_value=1 << 33),
        st.sampled_from(["", " ", "\r\n", "\u2028", "x", ".0", "_0"]),
    ),
    st.text(alphabet="0123456789+-_ .\t\u2003\uff17\u0667e", max_size=12),
)


@PURE_SETTINGS
@given(number_texts, st.sampled_from([16, 32]))
def test_numbers_parse_exactly_like_the_original(text: str, bits: int) -> None:
    expected = rust_unsigned(text, bits)
    if expected is None:
        with pytest.raises(InvalidRequest) as caught:
            parse_unsigned(text, bits)
        assert caught.value.body == InvalidRequest.INVALID
    else:
        assert expected == parse_unsigned(text, bits)


params_mixes = st.dictionaries(keys, values, max_size=12)


def check_invariants(params: dict[str, str], push: PushRequest) -> None:
    assert params["session"] == push.session
    assert params.get("affiliation") == push.affiliation
    assert 0 <= push.version < 1 << 16
    assert 0 <= push.ttl < 1 << 32
    if "ttl" not in params:
        assert push.ttl == 90
    if push.collapse_key is not None:
        assert f"relay.{params['collapse_key']}" == push.collapse_key
    target = push.target
    if isinstance(target, GatewayTarget):
        assert len(target.identity.encode()) == 8
        assert not target.identity.startswith("*")
        assert bytes.fromhex(params["public_key"]) == target.public_key
    elif isinstance(target, ApnsTarget):
        assert target.endpoint in ("p", "s")
        assert params["bundleid"] == target.bundle_id
        assert push.collapse_key is None or len(push.collapse_key.encode()) <= 64
    elif isinstance(target, HmsTarget):
        assert (params["token"], params["appid"]) == (target.token, target.app_id)
    else:
        assert params.get("type", "fcm") in ("fcm", "gcm")
        assert params["token"] == target.token


@PURE_SETTINGS
@given(params_mixes)
def test_validate_accepts_or_refuses_with_a_documented_body(params: dict[str, str]) -> None:
    try:
        push = validate(params)
    except InvalidRequest as err:
        assert (err.status, err.body in VALIDATION_BODIES) == (400, True)
        if params.get("type", "fcm") not in ("fcm", "gcm", "apns", "hms", "threema-gateway"):
            assert err.body == InvalidRequest.INVALID  # the type is checked first
        return
    check_invariants(params, push)


@PURE_SETTINGS
@given(
    params_mixes,
    st.sampled_from(["fcm", "gcm", "apns", "hms"]),
    st.sampled_from(["token", "session", "version"]),
)
def test_a_missing_required_key_is_missing_parameters_unless_an_earlier_rule_fails(
    params: dict[str, str], push_type: str, dropped: str
) -> None:
    """Everything checked before the dropped key is valid, so the answer must be MISSING."""
    valid = {
        "type": push_type,
        "token": "t",
        "appid": "a",
        "session": "s",
        "version": "3",
        "bundleid": "b",
        "endpoint": "s",
    }
    order = ["token", "session", "version"]
    earlier = order[: order.index(dropped)]
    mixed = {**params, **{k: valid[k] for k in ["type", "appid", *earlier]}}
    mixed.pop(dropped, None)
    with pytest.raises(InvalidRequest) as caught:
        validate(mixed)
    assert caught.value.body == InvalidRequest.MISSING


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0" * 5000 + "7", 7, id="thousands-of-leading-zeros"),
        pytest.param("+" + "0" * 5000, 0, id="plus-and-zeros"),
        pytest.param("9" * 5000, None, id="thousands-of-digits"),
    ],
)
def test_very_long_numbers_are_parsed_without_crashing(text: str, expected: int | None) -> None:
    """Python's int() refuses more than 4300 digits; Rust's parser counts only the value."""
    assert expected == rust_unsigned(text, 16)
    if expected is None:
        with pytest.raises(InvalidRequest):
            parse_unsigned(text, 16)
    else:
        assert expected == parse_unsigned(text, 16)


# -- through every simulated push service ----------------------------------------------------


@HTTP_SETTINGS
@given(
    data=st.data(),
    overrides=st.dictionaries(keys, values, max_size=3),
    dropped=st.sets(st.sampled_from(KEYS), max_size=1),
)
async def test_any_push_to_a_real_backend_is_answered_without_a_crash(
    relay_with_services: tuple[RunningRelay, list[dict[str, str]]],
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
    overrides: dict[str, str],
    dropped: set[str],
) -> None:
    """A working example for each backend, mixed with arbitrary keys and values, reaches the
    backend (with its real upstream round trip) and comes back as a documented answer."""
    relay, examples = relay_with_services
    assert examples, "no simulated push service: nothing reaches a backend"
    params = {**data.draw(st.sampled_from(examples)), **overrides}
    for key in dropped:
        params.pop(key, None)

    answer = await relay.push(params)

    event(f"answered {answer.status}")
    try:
        validate(params)
    except InvalidRequest as err:
        assert (400, err.body) == (answer.status, answer.text)
    else:
        assert answer.status in (204, 400, 500, 502), answer
        assert ("" if answer.status == 204 else NOT_OK) == answer.text
    assert no_errors_logged(caplog) == []

"""HPACK codecs for the HTTP/2 client: jh2's compiled `_hazmat` against pure-Python `hpack`.

Encodes a stream of APNs- and FCM-shaped requests and decodes a stream of their responses,
each through one codec state as on one connection (device token and expiry change per
request; the authorization repeats). Prints µs per header block; also the cost per request
of the client's RFC 9113 §8.2.1 field check (it checks only fields it has not sent before).

    uv run python bench/hpack_codecs.py [--blocks 20000]
"""

from __future__ import annotations

import argparse
import secrets
import time
import uuid
from collections.abc import Callable

import hpack
from jh2._hazmat import Decoder, Encoder  # type: ignore[import-untyped]

from push_relay._h2frames import check_field

JWT = "eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyM0RFRkcifQ." + "x" * 120 + "." + "y" * 86
Headers = list[tuple[str, str]]


def apns_request(i: int) -> Headers:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.push.apple.com"),
        (":path", f"/3/device/{secrets.token_hex(32)}"),
        ("authorization", f"bearer {JWT}"),
        ("apns-topic", "ch.threema.iapp"),
        ("apns-push-type", "alert"),
        ("apns-priority", "10"),
        ("apns-expiration", str(1_800_000_000 + i)),
        ("apns-collapse-id", "relay.abc"),
    ]


def fcm_request(i: int) -> Headers:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "fcm.googleapis.com"),
        (":path", "/v1/projects/threema-push/messages:send"),
        ("authorization", "Bearer ya29." + "t" * 200),
        ("content-type", "application/json"),
    ]


def apns_response(i: int) -> Headers:
    return [(":status", "200"), ("apns-id", str(uuid.uuid4())), ("apns-unique-id", str(i))]


def fcm_response(i: int) -> Headers:
    return [
        (":status", "200"),
        ("content-type", "application/json; charset=UTF-8"),
        ("vary", "Origin"),
        ("vary", "X-Origin"),
        ("vary", "Referer"),
        ("date", f"Tue, 01 Dec 2026 06:{i // 60 % 60:02}:{i % 60:02} GMT"),
        ("server", "ESF"),
        ("cache-control", "private"),
        ("x-xss-protection", "0"),
        ("x-frame-options", "SAMEORIGIN"),
        ("x-content-type-options", "nosniff"),
        ("alt-svc", 'h3=":443"; ma=2592000,h3-29=":443"; ma=2592000'),
    ]


def per_block(run: Callable[[], None], blocks: int) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / blocks * 1e6


def encode_jh2(requests: list[Headers]) -> Callable[[], None]:
    raw = [[(n.encode(), v.encode(), False) for n, v in r] for r in requests]

    def run() -> None:
        encoder = Encoder()
        for fields in raw:
            encoder.encode(fields)

    return run


def encode_hpack(requests: list[Headers]) -> Callable[[], None]:
    def run() -> None:
        encoder = hpack.Encoder()
        for fields in requests:
            encoder.encode(fields)

    return run


def decode_jh2(blocks: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        decoder = Decoder()
        for block in blocks:
            decoder.decode(block, raw=True)

    return run


def decode_hpack(blocks: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        decoder = hpack.Decoder()
        for block in blocks:
            decoder.decode(block, raw=True)

    return run


def field_check(requests: list[Headers], only_new: bool) -> Callable[[], None]:
    """The RFC 9113 §8.2.1 check on a request's new fields (token path, expiry) or on all."""
    picked = [
        [f for f in r if not only_new or f[0] in (":path", "apns-expiration")] for r in requests
    ]

    def run() -> None:
        for fields in picked:
            for name, value in fields:
                check_field(name, value)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20_000)
    n = parser.parse_args().blocks
    print(f"{'µs per header block':32} {'jh2._hazmat':>12} {'hpack':>8}")
    for name, make, answer in (
        ("APNs", apns_request, apns_response),
        ("FCM", fcm_request, fcm_response),
    ):
        requests = [make(i) for i in range(n)]
        encoder = hpack.Encoder()  # the server's, for the responses we decode
        responses = [bytes(encoder.encode(answer(i))) for i in range(n)]
        for what, jh2_run, hpack_run in (
            (f"{name} request, encode", encode_jh2(requests), encode_hpack(requests)),
            (f"{name} response, decode", decode_jh2(responses), decode_hpack(responses)),
        ):
            jh2_us, hpack_us = per_block(jh2_run, n), per_block(hpack_run, n)
            print(f"{what:32} {jh2_us:12.2f} {hpack_us:8.2f}")
    requests = [apns_request(i) for i in range(n)]
    new, every = (
        per_block(field_check(requests, True), n),
        per_block(field_check(requests, False), n),
    )
    print(
        f"§8.2.1 check per APNs request: {new:.2f} µs (its 2 new fields), {every:.2f} µs (all 10)"
    )


if __name__ == "__main__":
    main()

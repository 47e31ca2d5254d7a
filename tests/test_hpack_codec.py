"""The compiled HPACK codec the HTTP/2 client borrows from jh2's private `_hazmat` module.

`jh2._hazmat` is not a public API: these tests pin what `push_relay._h2frames` relies on
(RFC 7541 Appendix C vectors, the raw `(name, value, never_indexed)` tuples, never-indexed
fields, table-size updates, the header-list bound) so that a jh2 release that moves or
changes it fails here, by name, before it fails a push.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import hpack
import pytest

Fields = list[tuple[bytes, bytes, bool]]
MODULE = "jh2._hazmat"


@pytest.fixture(scope="module")
def hazmat() -> ModuleType:
    try:
        module = importlib.import_module(MODULE)
    except ImportError as err:
        pytest.fail(f"{MODULE} (the HPACK codec of push_relay._h2frames) is gone: {err}")
    missing = {"Decoder", "Encoder", "OversizedHeaderListError"} - set(dir(module))
    if missing:
        pytest.fail(f"{MODULE} (the HPACK codec of push_relay._h2frames) lacks {missing}")
    return module


def fields(*pairs: tuple[str, str]) -> Fields:
    return [(n.encode(), v.encode(), False) for n, v in pairs]


FIRST = fields(
    (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")
)
SECOND = [*FIRST, *fields(("cache-control", "no-cache"))]
THIRD = fields(
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
)
# RFC 7541 C.3 (no Huffman) and C.4 (Huffman): three requests on one connection
C3 = ["828684410f7777772e6578616d706c652e636f6d", "828684be58086e6f2d6361636865",
      "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"]  # fmt: skip
C4 = ["828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf",
      "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]  # fmt: skip


def fail(what: str, expected: object, got: object) -> str:
    return f"{MODULE} changed behaviour ({what}): expected {expected!r}, got {got!r}"


@pytest.mark.parametrize("vectors", [pytest.param(C3, id="C.3"), pytest.param(C4, id="C.4")])
def test_decoder_reads_the_rfc_7541_request_examples(
    hazmat: ModuleType, vectors: list[str]
) -> None:
    decoder = hazmat.Decoder()
    for block, expected in zip(vectors, [FIRST, SECOND, THIRD], strict=True):
        got = decoder.decode(bytes.fromhex(block), raw=True)
        assert expected == got, fail(f"decoding {block}", expected, got)


def test_decoder_reads_the_single_representations_of_c2(hazmat: ModuleType) -> None:
    cases = [  # RFC 7541 C.2.1-C.2.4; a never-indexed field is marked as such (third item)
        ("400a637573746f6d2d6b65790d637573746f6d2d686561646572", b"custom-key", b"custom-header"),
        ("040c2f73616d706c652f70617468", b":path", b"/sample/path"),
        ("100870617373776f726406736563726574", b"password", b"secret"),
        ("82", b":method", b"GET"),
    ]
    for block, name, value in cases:
        got = hazmat.Decoder().decode(bytes.fromhex(block), raw=True)
        expected = [(name, value, name == b"password")]
        assert expected == got, fail(f"decoding {block}", expected, got)


def test_encoder_output_is_read_by_an_independent_decoder(hazmat: ModuleType) -> None:
    encoder, reference = hazmat.Encoder(), hpack.Decoder()
    for request in (FIRST, SECOND, THIRD, SECOND):
        block = bytes(encoder.encode(request))
        got = reference.decode(block, raw=True)
        expected = [(n, v) for n, v, _ in request]
        assert expected == got, fail("encoding a request", expected, got)


def test_encoder_indexes_and_huffman_codes_as_the_rfc_does(hazmat: ModuleType) -> None:
    """The client's header sizes (one byte per repeated field) rest on this."""
    encoder = hazmat.Encoder()
    for request, expected in zip((FIRST, SECOND), C4, strict=False):
        got = bytes(encoder.encode(request)).hex()
        assert expected == got, fail("encoding an RFC 7541 C.4 request", expected, got)


def test_never_indexed_fields_and_table_size_updates(hazmat: ModuleType) -> None:
    encoder = hazmat.Encoder()
    block = bytes(encoder.encode([(b"authorization", b"bearer x", True)]))
    assert 0x10 == block[0] & 0xF0, fail("never-indexed literal", "0x1_", hex(block[0]))
    encoder.header_table_size = 0
    block = bytes(encoder.encode(fields(("x-a", "b"))))
    assert 0x20 == block[0], fail("table size update to 0 first", "0x20", hex(block[0]))
    assert [(b"x-a", b"b")] == hpack.Decoder().decode(block, raw=True)


def test_header_list_bound_raises_its_own_error(hazmat: ModuleType) -> None:
    block = bytes(hazmat.Encoder().encode(fields(("x-big", "v" * 200))))
    with pytest.raises(hazmat.OversizedHeaderListError):
        hazmat.Decoder(max_header_list_size=100).decode(block, raw=True)

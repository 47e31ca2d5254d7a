"""HTTP/2 framing for the client (RFC 9113 §4 and §6): frame constants, builders, parsers.

Frames are built with `struct`, the constant ones once at import. Header blocks go through
the compiled HPACK codec of `jh2` (RFC 7541); malformed peer input raises `FrameError`
carrying the HTTP/2 error code the connection closes with.
"""

from __future__ import annotations

import struct
from typing import cast

# jh2 ships a stub for its compiled codec (_hazmat.pyi) but no py.typed marker
from jh2._hazmat import Decoder, Encoder, OversizedHeaderListError  # type: ignore[import-untyped]

from push_relay._h2errors import H2InvalidHeaderError

# Frame types (RFC 9113 §6)
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings (RFC 9113 §6.5.2)
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5

# Error codes (RFC 9113 §7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384  # we never raise SETTINGS_MAX_FRAME_SIZE: the largest we accept
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
RECEIVE_WINDOW = 16 * 1024 * 1024  # our receive windows: a response never waits for us
MAX_HEADER_LIST = 64 * 1024  # decoded response header list; also bounds CONTINUATION
MAX_CONTINUATIONS = 16  # per header block: 64 KiB fits in 5; more is a flood of tiny frames
MAX_BODY = 64 * 1024  # a response body (push services answer a few hundred bytes)
OUR_TABLE_SIZE = 4096  # the HPACK table we keep for our requests, at most

HEADER = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")

PREFACE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    + HEADER.pack(0, 12, SETTINGS, 0, 0)
    + _SETTING.pack(ENABLE_PUSH, 0)
    + _SETTING.pack(INITIAL_WINDOW_SIZE, RECEIVE_WINDOW)
    + HEADER.pack(0, 4, WINDOW_UPDATE, 0, 0)
    + _U32.pack(RECEIVE_WINDOW - DEFAULT_WINDOW)
)
SETTINGS_ACK = HEADER.pack(0, 0, SETTINGS, ACK, 0)


class FrameError(Exception):
    """A connection error with this HTTP/2 error code: the peer broke the protocol, or
    (`by_peer`) closed the connection with it."""

    def __init__(self, code: int, message: str, *, by_peer: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.by_peer = by_peer


def frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    return HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id)


def rst_stream(stream_id: int, code: int) -> bytes:
    return HEADER.pack(0, 4, RST_STREAM, 0, stream_id) + _U32.pack(code)


def window_update(stream_id: int, increment: int) -> bytes:
    return HEADER.pack(0, 4, WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)


def ping(payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(0, 8, PING, flags, 0) + payload


def goaway(last_stream_id: int, code: int) -> bytes:
    return HEADER.pack(0, 8, GOAWAY, 0, 0) + _GOAWAY.pack(last_stream_id, code)


def headers_frames(stream_id: int, block: bytes, end_stream: bool, max_size: int) -> list[bytes]:
    """HEADERS, plus CONTINUATION frames when the block is larger than one frame."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_size:
        return [frame_header(len(block), HEADERS, flags | END_HEADERS, stream_id), block]
    parts = [block[i : i + max_size] for i in range(0, len(block), max_size)]
    frames = [frame_header(len(parts[0]), HEADERS, flags, stream_id), parts[0]]
    for part in parts[1:-1]:
        frames += [frame_header(len(part), CONTINUATION, 0, stream_id), part]
    last = parts[-1]
    frames += [frame_header(len(last), CONTINUATION, END_HEADERS, stream_id), last]
    return frames


def u32(payload: bytes, frame_type: str) -> int:
    if len(payload) != 4:
        raise FrameError(FRAME_SIZE_ERROR, f"{frame_type} frame of {len(payload)} bytes")
    value: int = _U32.unpack(payload)[0]
    return value


def goaway_fields(payload: bytes) -> tuple[int, int]:
    """(last stream id, error code) of a GOAWAY payload; its debug data is ignored."""
    if len(payload) < 8:
        raise FrameError(FRAME_SIZE_ERROR, f"GOAWAY frame of {len(payload)} bytes")
    last, code = _GOAWAY.unpack_from(payload)
    return last & MAX_STREAM_ID, code


def settings_fields(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise FrameError(FRAME_SIZE_ERROR, f"SETTINGS frame of {len(payload)} bytes")
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def response_status(fields: list[tuple[bytes, bytes, bool]], stream_id: int) -> int:
    if not fields or fields[0][0] != b":status" or not fields[0][1].isdigit():
        raise FrameError(PROTOCOL_ERROR, f"response without :status on {stream_id}")
    return int(fields[0][1])


def response_headers(fields: list[tuple[bytes, bytes, bool]]) -> dict[str, str]:
    """The regular fields of a response head, by name."""
    try:
        return {n.decode(): v.decode() for n, v, _ in fields if n[:1] != b":"}
    except UnicodeDecodeError:
        raise FrameError(PROTOCOL_ERROR, "response header not UTF-8") from None


def unpad(flags: int, payload: bytes, priority: bool = False) -> bytes:
    """The fragment of a DATA or HEADERS payload without padding and priority fields."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise FrameError(PROTOCOL_ERROR, "padded frame without a pad length")
        start, end = 1, end - payload[0]
    if priority:
        start += 5
    if start > end:
        raise FrameError(PROTOCOL_ERROR, "padding or priority exceeds the frame")
    return payload[start:end]


# RFC 9113 §8.2.1: a name is lower-case token characters (RFC 9110 §5.6.2), or one of the
# request pseudo-headers; a value holds no NUL, CR or LF and neither starts nor ends with
# whitespace. Checked once per distinct field (the codec remembers the fields it sent), with
# str methods rather than a regex: a fraction of a µs per new field.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_PSEUDO = frozenset((":method", ":scheme", ":authority", ":path"))
_WS = frozenset((" ", "\t"))  # a set: `"" in _WS` is False, as an empty value is fine


def check_field(name: str, value: str) -> None:
    """Raise `H2InvalidHeaderError` for a field RFC 9113 §8.2.1 calls malformed."""
    if name not in _PSEUDO and not (name and _TOKEN.issuperset(name)):
        raise H2InvalidHeaderError(f"malformed request header name {name[:64]!r}")
    if "\n" in value or "\r" in value or "\0" in value or value[:1] in _WS or value[-1:] in _WS:
        raise H2InvalidHeaderError(f"malformed value of request header {name!r}")


class HeaderCodec:
    """One connection's HPACK state: our encoder, the peer's decoder.

    Header fields seen twice are indexed (the origin's authority, tokens, content types:
    one byte each from then on); the first occurrence of any value is sent never-indexed, so
    per-request values (paths with device tokens, expiry times) do not churn the table.
    """

    def __init__(self) -> None:
        self.encoder = Encoder()
        self.table_size = OUR_TABLE_SIZE  # HPACK's initial size, as the encoder starts with
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.seen: dict[tuple[str, str], tuple[bytes, bytes, bool]] = {}

    def field(self, name: str, value: str) -> tuple[bytes, bytes, bool]:
        key = (name, value)
        entry = self.seen.get(key)
        if entry is None or entry[2]:
            if entry is None:
                check_field(name, value)
            if len(self.seen) >= 1024:  # bounded: varying values would grow it forever
                self.seen.clear()
            entry = (name.encode(), value.encode(), entry is None)
            self.seen[key] = entry
        return entry

    def encode(self, fields: list[tuple[bytes, bytes, bool]]) -> bytes:
        block: bytes = self.encoder.encode(fields)
        return block

    def peer_table_size(self, size: int) -> None:
        size = min(size, OUR_TABLE_SIZE)
        if size != self.table_size:  # the encoder signals the change in its next block
            self.table_size = self.encoder.header_table_size = size

    def decode(self, block: bytes) -> list[tuple[bytes, bytes, bool]]:
        try:
            fields = self.decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise FrameError(PROTOCOL_ERROR, "response header list too large") from None
        except Exception as err:  # HPACKError and friends
            raise FrameError(COMPRESSION_ERROR, f"bad header block: {err}") from None
        except BaseException as err:  # the codec panics (a BaseException) on some bad blocks
            if type(err).__name__ != "PanicException":
                raise
            raise FrameError(COMPRESSION_ERROR, "malformed header block") from None
        return cast(list[tuple[bytes, bytes, bool]], fields)  # raw: bytes, not str

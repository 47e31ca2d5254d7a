"""Redis's wire format (RESP2) for the one command the store sends per batch, `EVALSHA`.

Keys are written with a precomputed head (`$<length>\\r\\n<prefix>`), so a key costs one
concatenation instead of an encoder call per argument.
"""

from __future__ import annotations

from collections.abc import Sequence

EMPTY = b"$0\r\n\r\n"  # an empty key name: the script skips that scope for that push


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


def key_head(prefix: str, suffix_length: int) -> bytes:
    """`$<length>\\r\\n<prefix>` for keys of `prefix` plus `suffix_length` more bytes."""
    encoded = prefix.encode()
    return b"$%d\r\n%s" % (len(encoded) + suffix_length, encoded)


def evalsha(sha: bytes, keys: Sequence[bytes], args: Sequence[bytes]) -> bytes:
    """`EVALSHA sha len(keys) keys... args...`; `keys` are already bulk strings."""
    head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(keys) + len(args))
    return head + bulk(sha) + bulk(b"%d" % len(keys)) + b"".join(keys) + b"".join(map(bulk, args))

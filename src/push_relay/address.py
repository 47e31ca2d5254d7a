"""The `-l/--listen IP:PORT` argument (kept free of heavy imports: the CLI parses it first)."""

from __future__ import annotations

import ipaddress


class ListenAddressError(ValueError):
    pass


def parse_listen(value: str) -> tuple[str, int]:
    """`IP:PORT` (IPv6 in brackets: `[::1]:3000`) into host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenAddressError(f"invalid listen address {value!r}: expected IP:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # `::1:3000` is ambiguous: an IPv6 address needs its brackets
        raise ListenAddressError(
            f"invalid listen address {value!r}: write an IPv6 address in brackets, [::1]:PORT"
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ListenAddressError(
                f"invalid listen address {value!r}: {host!r} is not an IP address"
            ) from None
    return host, int(port_text)

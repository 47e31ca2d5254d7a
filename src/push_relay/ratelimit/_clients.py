"""Which client a request comes from: the peer, or what trusted proxies say it is.

Only a peer inside `trusted_proxies` is believed about `X-Forwarded-For`. Each proxy appends
the address it received the request from, so the list is read from the right: every address
that is a trusted proxy is skipped, and the first one that is not is the client. Whatever the
client wrote into the header itself stands further left and is never reached. An entry that
is not an address stops the walk at the last trusted hop, so garbage cannot choose the key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from push_relay.config.limits import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_HOPS = 32  # proxies in a row; beyond that the furthest one seen stands for the client
CACHE_SIZE = 65_536  # addresses as written -> parsed; parsing one costs microseconds


class ClientAddress:
    """Callable on an ASGI scope; returns the client's address as text (None: unknown)."""

    def __init__(self, trusted_proxies: Iterable[Network]) -> None:
        self._trusted = tuple(trusted_proxies)
        # text -> (canonical text, trusted), or None when not an address; proxies and
        # repeating clients are looked up, not parsed again
        self._seen: dict[str, tuple[str, bool] | None] = {}

    def __call__(self, scope: Mapping[str, Any]) -> str | None:
        client = scope.get("client")
        if not client:
            return None
        peer: str = client[0]
        if not self._trusted:
            return peer
        known = self._lookup(peer)
        if known is None or not known[1]:
            return peer
        forwarded = [value for name, value in scope["headers"] if name == b"x-forwarded-for"]
        if not forwarded:
            return known[0]
        return self._walk(known[0], b",".join(forwarded).split(b","))

    def _walk(self, nearest: str, entries: list[bytes]) -> str:
        hops = 0
        for entry in reversed(entries):
            text = entry.strip()
            if not text:  # an empty list element (`a,,b`) is no hop
                continue
            known = self._lookup(text.decode("latin-1"))
            if known is None:
                return nearest
            if not known[1]:
                return known[0]
            nearest = known[0]
            hops += 1
            if hops >= MAX_HOPS:
                break
        return nearest

    def _lookup(self, text: str) -> tuple[str, bool] | None:
        try:
            return self._seen[text]
        except KeyError:
            pass
        address = parse_address(text)
        known = None
        if address is not None:
            known = str(address), any(address in network for network in self._trusted)
        if len(self._seen) >= CACHE_SIZE:
            self._seen.clear()
        self._seen[text] = known
        return known


def parse_address(text: str) -> Address | None:
    """An IP address as proxies write it: bare, `1.2.3.4:port` or `[v6]:port`."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if text.startswith("["):
            host = text[1 : text.find("]")]
        elif text.count(":") == 1:
            host = text.partition(":")[0]
        else:
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address

"""The `-l/--listen IP:PORT` argument and listening sockets (kept free of heavy imports: the
CLI parses the argument first)."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from push_relay.config import ServerConfig


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


def overlaps(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listen addresses would accept the same connections (same port, same or
    wildcard host). With `--workers N` both are bound with SO_REUSEPORT, which the kernel
    then allows: the two listeners would split one port's connections at random."""
    if a[1] != b[1] or a[1] == 0:
        return False
    ha, hb = (ipaddress.ip_address("127.0.0.1" if h == "localhost" else h) for h in (a[0], b[0]))
    return ha == hb or ha.is_unspecified or hb.is_unspecified


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on `host:port`; `reuse_port` lets siblings share the address."""
    host = "127.0.0.1" if host == "localhost" else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(err.errno, f"cannot listen on {where}: {err.strerror or err}") from None
    return sock


class Listener:
    """Recognizes connections accepted on one bound socket by their local address."""

    def __init__(self, bound: tuple[str, int]) -> None:
        self.host, self.port = bound[0], bound[1]
        # a wildcard socket accepts on every local address: the port alone tells
        self.any_host = ipaddress.ip_address(self.host).is_unspecified

    def accepted(self, local: tuple[str, int | None] | None) -> bool:
        """True when a connection whose local address is `local` came in on this socket."""
        return (
            local is not None and local[1] == self.port and (self.any_host or local[0] == self.host)
        )


def listening_sockets(
    server: ServerConfig,
    host: str,
    port: int,
    sock: socket.socket | None = None,
    admin_sock: socket.socket | None = None,
) -> tuple[list[socket.socket] | None, Listener | None]:
    """What to serve: the public socket, then the admin one, and the admin listener; no
    sockets (None) lets the server bind `host:port` itself.

    Sockets handed in (a worker of `--workers N`) decide alone: they were bound from the
    start-up config, and a worker started by a reload must serve what its supervisor holds,
    whatever the new config says of `admin_listen` (a change that needs a restart). One
    process binds both itself when `[server] admin_listen` is set."""
    if sock is None and server.admin_listen is not None:
        sock = bind(host, port)
        try:
            admin_sock = bind(*server.admin_listen)
        except OSError:
            sock.close()
            raise
    if sock is None:
        return None, None
    if admin_sock is None:
        return [sock], None
    return [sock, admin_sock], Listener(admin_sock.getsockname())

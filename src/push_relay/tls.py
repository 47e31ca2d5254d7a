"""Outgoing TLS: the system trust store, honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`."""

from __future__ import annotations

import os
import ssl


def client_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    """A verifying client context; OpenSSL's default paths follow `SSL_CERT_FILE`."""
    context = ssl.create_default_context()
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile:
        # explicit, so the variable also works where Python's OpenSSL ignores it
        context.load_verify_locations(cafile=cafile)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context

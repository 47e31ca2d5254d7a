"""Helpers shared by several test modules (fixtures shared by many live in conftest.py)."""

from __future__ import annotations

from push_relay.testing.ports import free_port


def closed_port_url() -> str:
    """An https URL on loopback where nothing listens: every connection is refused."""
    return f"https://127.0.0.1:{free_port()}"

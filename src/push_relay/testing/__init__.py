"""Simulated push services on loopback, for the tests and `push-relay sandbox`.

Each simulator behaves like its real service (auth checks, message validation, error bodies),
records what it received, and can be scripted per device token.
"""

from __future__ import annotations

from push_relay.testing.ca import TestCA
from push_relay.testing.http1 import HttpSimulator, RecordedRequest
from push_relay.testing.script import Script

__all__ = ["HttpSimulator", "RecordedRequest", "Script", "TestCA"]

"""Placeholder until this backend lands; it refuses to start rather than fail pushes."""

from __future__ import annotations

from push_relay.backends import Clients, Readiness
from push_relay.config import FcmConfig
from push_relay.request import PushRequest


class FcmBackend:
    name = "fcm"

    def __init__(self, config: FcmConfig, clients: Clients) -> None:
        raise NotImplementedError("backend fcm is not available yet")

    async def send(self, push: PushRequest) -> None:
        raise NotImplementedError

    async def check_ready(self) -> dict[str, Readiness]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

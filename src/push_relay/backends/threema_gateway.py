"""Placeholder until this backend lands; it refuses to start rather than fail pushes."""

from __future__ import annotations

from push_relay.backends import Clients, Readiness
from push_relay.config import GatewayConfig
from push_relay.request import PushRequest


class GatewayBackend:
    name = "threema_gateway"

    def __init__(self, config: GatewayConfig, clients: Clients) -> None:
        raise NotImplementedError("backend threema_gateway is not available yet")

    async def send(self, push: PushRequest) -> None:
        raise NotImplementedError

    async def check_ready(self) -> dict[str, Readiness]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

"""Threema Gateway: the wake-up as an end-to-end encrypted message to a Threema identity.

The payload is boxed with NaCl `crypto_box` (X25519 + XSalsa20-Poly1305) from the relay's
gateway identity to the recipient's public key and sent with `POST {base_url}/send_e2e`.
The gateway ignores `ttl` and `collapse_key`, as the original does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp
import nacl.exceptions
import nacl.utils
from nacl.public import Box, PrivateKey, PublicKey

from push_relay.backends import DELIVERED, Clients, Readiness, Verdict
from push_relay.backends._body import read_body
from push_relay.backends._json import to_json
from push_relay.config import GatewayConfig
from push_relay.errors import FailureKind, PushFailed
from push_relay.payload import ThreemaPayload
from push_relay.request import GatewayTarget, PushRequest

REQUEST_TIMEOUT = 10.0  # seconds
MESSAGE_TYPE = b"\xfe"  # the Threema Web wake-up message type
# PKCS#7-style padding of one byte: the sender is obvious anyway, so nothing is hidden by more
PADDING = b"\x01"

NonceSource = Callable[[int], bytes]


_REASONS = {
    400: "invalid_recipient",
    401: "bad_credentials",
    402: "no_credits",
    413: "message_too_long",
}


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Map a `send_e2e` answer to a `Verdict` (pure), contract §6.

    400 invalid recipient, 401 bad credentials, 402 no credits, 413 message too long are the
    gateway refusing for reasons that are not the client's; anything else is unexpected.
    The body (the message id on success) is not needed.
    """
    if status == 200:
        return DELIVERED
    detail = f"gateway answered {status}"
    reason = _REASONS.get(status)
    if reason is not None:
        return Verdict(FailureKind.UPSTREAM, reason, detail)
    return Verdict(FailureKind.INTERNAL, "unexpected_status", detail)


def plaintext(push: PushRequest, now: float) -> bytes:
    """What the phone decrypts: type byte, payload JSON (numeric wct/wcv), padding."""
    payload = to_json(ThreemaPayload.for_push(push, now).as_numbers())
    return MESSAGE_TYPE + payload.encode() + PADDING


class GatewayBackend:
    """Sends `type=threema-gateway` pushes through the configured gateway identity."""

    name = "threemagateway"

    def __init__(
        self,
        config: GatewayConfig,
        clients: Clients,
        *,
        nonce_source: NonceSource = nacl.utils.random,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.config = config
        self.clients = clients
        self._private_key = PrivateKey(config.private_key)
        self._nonce_source = nonce_source
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:  # never the secret or the key
        return f"GatewayBackend(identity={self.config.identity!r})"

    async def send(self, push: PushRequest) -> None:
        target = push.target
        assert isinstance(target, GatewayTarget)
        nonce, box = self._encrypt(target, plaintext(push, self.clients.clock()))
        form = {
            "secret": self.config.secret,
            "from": self.config.identity,
            "to": target.identity,
            "noPush": "1",
            "noDeliveryReceipts": "1",
            "nonce": nonce.hex(),
            "box": box.hex(),
        }
        url = f"{self.config.base_url}/send_e2e"
        try:
            async with self.clients.http.post(
                url, data=form, headers={"Accept": "application/json"}, timeout=self.timeout
            ) as response:
                status, headers = response.status, response.headers
                answer = await read_body(response)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise PushFailed(
                FailureKind.CLIENT, "send_error", f"could not send: {type(err).__name__}"
            ) from None
        verdict = classify(status, headers, answer)
        if not verdict.delivered:
            raise verdict.failure(status)

    def _encrypt(self, target: GatewayTarget, message: bytes) -> tuple[bytes, bytes]:
        try:
            box = Box(self._private_key, PublicKey(target.public_key))
        except nacl.exceptions.CryptoError:
            # a low-order point (e.g. all zeros): no shared key, the phone could never read it
            raise PushFailed(
                FailureKind.CLIENT, "invalid_public_key", "public_key is not usable"
            ) from None
        nonce = self._nonce_source(Box.NONCE_SIZE)
        return nonce, box.encrypt(message, nonce).ciphertext

    async def check_ready(self) -> dict[str, Readiness]:
        """The key was loaded and checked at start-up; nothing to fetch."""
        return {self.name: Readiness(True, f"key loaded for {self.config.identity}")}

    async def aclose(self) -> None:
        """Nothing of its own to close: the HTTP session belongs to `Clients`."""

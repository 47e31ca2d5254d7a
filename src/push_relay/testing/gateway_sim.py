"""A simulated Threema Gateway `send_e2e`, plus the phones of its recipients, over TLS.

Like the real gateway it checks the API identity and secret (401), the recipient (400), the
credits (402) and the box size (413), and answers 200 with a 16-hex message id. Unlike the real
gateway it also plays the recipient's phone: it DECRYPTS the box with the recipient's private
key and the relay's public key and checks the 0xFE type byte, the padding and the JSON. A box
the phone could not read is answered 400 (the real gateway would accept it and the wake-up
would silently be lost), so a test sees the defect; `undeliverable` says why.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nacl.exceptions
from aiohttp import web
from nacl.public import Box, PrivateKey, PublicKey

from push_relay.testing.ca import TestCA
from push_relay.testing.http1 import HttpSimulator
from push_relay.testing.script import Script

if TYPE_CHECKING:
    from push_relay.sandbox import SandboxPart

MAX_BOX_BYTES = 7000  # the gateway's limit on the encrypted message
WAKEUP_TYPE = 0xFE
_NONCE = re.compile(r"[0-9a-fA-F]{48}", re.ASCII)
_HEX = re.compile(r"([0-9a-fA-F]{2})+", re.ASCII)


@dataclass(frozen=True, slots=True)
class GatewayDelivery:
    """A wake-up as the recipient's phone decrypted it."""

    sender: str
    recipient: str
    message_id: str
    plaintext: bytes  # type byte + JSON + padding, exactly as decrypted
    payload: dict[str, Any]  # the JSON the phone reads
    form: dict[str, str]  # the other form fields (without secret, nonce and box)


def write_key_file(path: Path, key: PrivateKey | None = None) -> PrivateKey:
    """Write a gateway private key file (`private:<64 hex>`) as the relay's config wants it."""
    key = key or PrivateKey.generate()
    path.write_text(f"private:{bytes(key).hex()}\n")
    path.chmod(0o600)
    return key


class GatewaySimulator(HttpSimulator):
    """The gateway for one API identity, whose public key it knows (as the real one does)."""

    def __init__(
        self,
        ca: TestCA | None,
        *,
        identity: str,
        secret: str,
        identity_public_key: bytes,
        credits: int | None = None,
    ) -> None:
        super().__init__(ca)
        self.identity = identity
        self.secret = secret
        self.identity_public_key = PublicKey(identity_public_key)
        self.credits = credits  # None: unlimited
        self.recipients: dict[str, PrivateKey] = {}
        self.script: Script[int] = Script()  # per recipient identity: the status to answer
        self.deliveries: list[GatewayDelivery] = []
        self.undeliverable: list[str] = []
        self.on_delivery: Callable[[GatewayDelivery], None] | None = None

    def add_recipient(self, identity: str) -> str:
        """Register a Threema user with a fresh key pair; returns its public key as hex."""
        key = PrivateKey.generate()
        self.recipients[identity] = key
        return bytes(key.public_key).hex()

    def config_toml(self, private_key_file: Path) -> str:
        """The relay's `[threema_gateway]` section: this gateway, its identity and secret, and
        the file holding the identity's private key."""
        return (
            "[threema_gateway]\n"
            f'base_url = "{self.url}"\n'
            f'identity = "{self.identity}"\n'
            f'secret = "{self.secret}"\n'
            f'private_key_file = "{private_key_file}"\n'
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/send_e2e", self._send_e2e)]

    async def _send_e2e(self, request: web.Request) -> web.Response:
        await self.record(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        if form.get("from") != self.identity or form.get("secret") != self.secret:
            return _status(401, "API identity or secret incorrect")
        recipient = form.get("to", "")
        scripted = self.script.next(recipient)
        if scripted is not None:
            return _status(scripted, "scripted")
        if recipient not in self.recipients:
            return _status(400, "recipient identity invalid")
        if self.credits is not None and self.credits <= 0:
            return _status(402, "no credits remain")
        nonce, box = form.get("nonce", ""), form.get("box", "")
        if not _NONCE.fullmatch(nonce) or not _HEX.fullmatch(box):
            return _status(400, "nonce or box missing or not hex")
        if len(box) // 2 > MAX_BOX_BYTES:
            return _status(413, "message too long")
        return self._read_on_phone(form, recipient, bytes.fromhex(nonce), bytes.fromhex(box))

    def _read_on_phone(
        self, form: dict[str, str], recipient: str, nonce: bytes, box: bytes
    ) -> web.Response:
        try:
            plaintext = Box(self.recipients[recipient], self.identity_public_key).decrypt(
                box, nonce
            )
            payload = _wakeup_payload(plaintext)
        except (nacl.exceptions.CryptoError, ValueError) as err:
            self.undeliverable.append(f"{recipient}: {err}")
            return _status(400, f"the phone cannot read this message: {err}")
        if self.credits is not None:
            self.credits -= 1
        message_id = secrets.token_hex(8)
        hidden = {"secret", "nonce", "box"}
        delivery = GatewayDelivery(
            sender=form["from"],
            recipient=recipient,
            message_id=message_id,
            plaintext=plaintext,
            payload=payload,
            form={k: v for k, v in form.items() if k not in hidden},
        )
        self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)
        return web.Response(text=message_id, content_type="text/plain")


def _wakeup_payload(plaintext: bytes) -> dict[str, Any]:
    """Check type byte and PKCS#7-style padding as the Threema app does; return the JSON."""
    if not plaintext or plaintext[0] != WAKEUP_TYPE:
        raise ValueError("message type is not 0xFE")
    pad = plaintext[-1]
    if pad == 0 or pad > len(plaintext) - 1 or plaintext[-pad:] != bytes([pad]) * pad:
        raise ValueError("bad padding")
    try:
        payload = json.loads(plaintext[1:-pad].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("payload is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    return payload


def _status(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


async def sandbox_part(ca: TestCA, workdir: Path) -> SandboxPart:
    """`push-relay sandbox`: `*3MAPUSH` with a generated secret and key, recipient ECHOECHO."""
    from push_relay.sandbox import Example, SandboxPart, log

    key_file = workdir / "threema-gateway.key"
    key = write_key_file(key_file)
    secret = secrets.token_hex(16)
    simulator = GatewaySimulator(
        ca, identity="*3MAPUSH", secret=secret, identity_public_key=bytes(key.public_key)
    )
    public_key = simulator.add_recipient("ECHOECHO")

    def show(delivery: GatewayDelivery) -> None:
        log.info(
            "Threema Gateway message %s from %s to %s decrypts to: %s",
            delivery.message_id,
            delivery.sender,
            delivery.recipient,
            delivery.plaintext[1 : -delivery.plaintext[-1]].decode(),
        )

    simulator.on_delivery = show
    await simulator.start()
    config = simulator.config_toml(key_file)
    example = (
        "type=threema-gateway&session=123deadbeef&version=3"
        f"&identity=ECHOECHO&public_key={public_key}"
    )
    return SandboxPart("Threema Gateway", config, [Example(example)], simulator.stop)
